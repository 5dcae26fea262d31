//! The autoencoder architectures a package can carry, behind one interface: what tensors they
//! need, how they are built from a `VarBuilder` (the same constructor for training and
//! serving), how a fresh one is initialised for training, and how they score.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::conv::{ConvAutoencoder, ConvConfig};
use crate::dense::{DenseAutoencoder, DenseConfig, DenseScorer};
use crate::package::ModelSpec;
use crate::rng::XorShift;
use crate::{FeatureSchema, ModelError, Scores};

/// An architecture with every dimension known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Architecture {
    Dense(DenseConfig),
    Conv(ConvConfig),
}

impl Architecture {
    /// The architecture a manifest's model spec describes for its schema.
    pub fn from_spec(spec: &ModelSpec, schema: &FeatureSchema) -> Self {
        match spec {
            ModelSpec::DenseAutoencoder { hidden } => Architecture::Dense(DenseConfig {
                input_dim: schema.input_width(),
                hidden: hidden.clone(),
            }),
            ModelSpec::ConvAutoencoder { channels, kernel } => Architecture::Conv(ConvConfig {
                n_features: schema.n_features(),
                window: schema.window,
                channels: channels.clone(),
                kernel: *kernel,
            }),
        }
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        match self {
            Architecture::Dense(c) => c.validate(),
            Architecture::Conv(c) => c.validate(),
        }
    }

    /// The tensors a weights file must hold, weight before bias, layer by layer.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        match self {
            Architecture::Dense(c) => c.tensor_shapes(),
            Architecture::Conv(c) => c.tensor_shapes(),
        }
    }

    /// Builds the model from weights.
    pub fn build(&self, vb: VarBuilder) -> Result<Autoencoder, ModelError> {
        Ok(match self {
            Architecture::Dense(c) => Autoencoder::Dense(DenseAutoencoder::new(c, vb)?),
            Architecture::Conv(c) => Autoencoder::Conv(ConvAutoencoder::new(c, vb)?),
        })
    }

    /// A freshly initialised model and the `VarMap` that owns its weights (for training).
    ///
    /// PyTorch's default initialisation for `nn.Linear` and `nn.Conv1d`: weights and biases
    /// U(−1/√fan_in, 1/√fan_in), fan_in = inputs × kernel, drawn from a seeded generator so
    /// that a fit is reproducible.
    pub fn initialised(&self, seed: u64) -> Result<(candle_nn::VarMap, Autoencoder), ModelError> {
        self.validate()?;
        let varmap = candle_nn::VarMap::new();
        let mut rng = XorShift::new(seed);
        {
            let mut vars = varmap
                .data()
                .lock()
                .map_err(|_| ModelError::Config("the VarMap lock is poisoned"))?;
            let mut bound = 1.0f32;
            for (name, shape) in self.tensor_shapes() {
                if name.ends_with(".weight") {
                    let fan_in: usize = shape[1..].iter().product();
                    bound = 1.0 / (fan_in as f32).sqrt();
                }
                let n: usize = shape.iter().product();
                let values: Vec<f32> = (0..n)
                    .map(|_| (rng.next_unit() * 2.0 - 1.0) * bound)
                    .collect();
                let tensor = Tensor::from_vec(values, shape, &Device::Cpu)?;
                vars.insert(name, candle_core::Var::from_tensor(&tensor)?);
            }
        }
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = self.build(vb)?;
        Ok((varmap, model))
    }
}

/// A built autoencoder of any architecture.
#[derive(Debug, Clone)]
pub enum Autoencoder {
    Dense(DenseAutoencoder),
    Conv(ConvAutoencoder),
}

impl Autoencoder {
    /// Squared reconstruction errors of a `(rows, input_dim)` batch, same shape.
    pub fn squared_errors(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Autoencoder::Dense(m) => m.squared_errors(xs),
            Autoencoder::Conv(m) => m.squared_errors(xs),
        }
    }

    /// Mean squared reconstruction error per row (the anomaly score), `(rows,)`.
    pub fn score_tensor(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.squared_errors(xs)?.mean(1)
    }

    /// The serving form.
    pub fn scorer(&self) -> Result<Scorer, ModelError> {
        Ok(match self {
            Autoencoder::Dense(m) => Scorer::Dense(m.scorer()?),
            Autoencoder::Conv(m) => Scorer::Conv(m.clone()),
        })
    }
}

/// The servable form of a model.
#[derive(Debug, Clone)]
pub enum Scorer {
    /// The fused kernel at every batch size.
    Dense(DenseScorer),
    /// candle throughout.
    Conv(ConvAutoencoder),
}

impl Scorer {
    /// Scores normalised rows (`input_dim` values each): mean squared reconstruction error,
    /// with the squared errors as the terms.
    pub fn score(&self, rows: &[f32]) -> Result<Scores, ModelError> {
        match self {
            Scorer::Dense(s) => s.score(rows),
            Scorer::Conv(m) => {
                let width = m.config().input_dim();
                if !rows.len().is_multiple_of(width) {
                    return Err(ModelError::Width {
                        expected: width,
                        got: rows.len() % width,
                    });
                }
                let n_rows = rows.len() / width;
                let xs = Tensor::from_slice(rows, (n_rows, width), &Device::Cpu)?;
                let terms: Vec<f32> = m.squared_errors(&xs)?.flatten_all()?.to_vec1()?;
                Ok(Scores::from_terms(terms, width))
            }
        }
    }
}
