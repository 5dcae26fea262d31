//! What a detector reads: its ordered feature names, its window, and the normalisation that
//! turns raw readings into model inputs.

use serde::{Deserialize, Serialize};

/// One named input of a detector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "FeatureDef")]
pub struct Feature {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// A feature is written either as its bare name or as `{"name", "unit"}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum FeatureDef {
    Name(String),
    Full { name: String, unit: Option<String> },
}

impl From<FeatureDef> for Feature {
    fn from(def: FeatureDef) -> Feature {
        match def {
            FeatureDef::Name(name) => Feature { name, unit: None },
            FeatureDef::Full { name, unit } => Feature { name, unit },
        }
    }
}

/// Ordered feature names and the window length W ≥ 1 (the last W readings of a stream form
/// one model input of `W × n_features` values, oldest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureSchema {
    pub features: Vec<Feature>,
    #[serde(default = "one")]
    pub window: usize,
}

fn one() -> usize {
    1
}

/// The most features a schema may have; a bound that keeps requests and rows small.
pub const MAX_FEATURES: usize = 1024;
/// The longest window a schema may have.
pub const MAX_WINDOW: usize = 1024;

impl FeatureSchema {
    /// A schema of plain names.
    pub fn new<S: Into<String>>(names: impl IntoIterator<Item = S>, window: usize) -> Self {
        let features = names
            .into_iter()
            .map(|name| Feature {
                name: name.into(),
                unit: None,
            })
            .collect();
        FeatureSchema { features, window }
    }

    /// Number of features per reading.
    pub fn n_features(&self) -> usize {
        self.features.len()
    }

    /// Number of values in one model input (`window × n_features`).
    pub fn input_width(&self) -> usize {
        self.window * self.features.len()
    }

    /// The position of a feature by name.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.features.iter().position(|f| f.name == name)
    }

    /// Checks the schema is usable; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.features.is_empty() {
            return Err("a detector needs at least one feature".into());
        }
        if self.features.len() > MAX_FEATURES {
            return Err(format!("at most {MAX_FEATURES} features are allowed"));
        }
        if self.window == 0 || self.window > MAX_WINDOW {
            return Err(format!("window must be between 1 and {MAX_WINDOW}"));
        }
        for (i, feature) in self.features.iter().enumerate() {
            if feature.name.is_empty() || feature.name.len() > 128 {
                return Err("feature names must be 1 to 128 bytes long".into());
            }
            if self.features[..i].iter().any(|f| f.name == feature.name) {
                return Err(format!("feature {:?} appears twice", feature.name));
            }
        }
        Ok(())
    }

    /// True when both schemas read the same features, in the same order, over the same window.
    pub fn same_inputs(&self, other: &FeatureSchema) -> bool {
        self.window == other.window
            && self.features.len() == other.features.len()
            && self
                .features
                .iter()
                .zip(&other.features)
                .all(|(a, b)| a.name == b.name)
    }
}

/// Per-feature affine normalisation: `(x − centre) / scale`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalisation {
    pub centre: Vec<f32>,
    pub scale: Vec<f32>,
}

impl Normalisation {
    /// The identity for `n` features.
    pub fn identity(n: usize) -> Self {
        Normalisation {
            centre: vec![0.0; n],
            scale: vec![1.0; n],
        }
    }

    /// Checks lengths and that every scale is finite and positive.
    pub fn validate(&self, n_features: usize) -> Result<(), String> {
        if self.centre.len() != n_features || self.scale.len() != n_features {
            return Err(format!(
                "normalisation has {} centres and {} scales for {n_features} features",
                self.centre.len(),
                self.scale.len()
            ));
        }
        if self.centre.iter().any(|c| !c.is_finite()) {
            return Err("normalisation centres must be finite".into());
        }
        if self.scale.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err("normalisation scales must be finite and positive".into());
        }
        Ok(())
    }

    /// Normalises raw rows in place; a row is a window of readings, each `centre.len()` wide.
    pub fn apply(&self, values: &mut [f32]) {
        let n = self.centre.len();
        for reading in values.chunks_exact_mut(n) {
            for ((x, c), s) in reading.iter_mut().zip(&self.centre).zip(&self.scale) {
                *x = (*x - c) / s;
            }
        }
    }
}
