//! The dense autoencoder: `input → hidden… → input`, ReLU between layers, scored by the mean
//! squared reconstruction error.
//!
//! Tensor names follow PyTorch's `nn.Linear` layout (`l1.weight` `[out, in]`, `l1.bias` `[out]`,
//! … `lN`), so weights trained in PyTorch load as they are. [`DenseAutoencoder::new`] is the one
//! constructor, used by the trainer (over a `VarMap`) and by the package loader (over the
//! verified weights). Serving goes through [`DenseScorer`], which computes the same function
//! with the fused kernel of `fused.rs` at every batch size: candle trains, the kernel
//! serves, and a test holds the two equal.

use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::fused::FusedNet;
use crate::score::Scores;

/// The shape of a dense autoencoder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenseConfig {
    /// Values per input row (`window × n_features`).
    pub input_dim: usize,
    /// Widths of the hidden layers, in order (ae-ref: `[64, 16, 64]`).
    pub hidden: Vec<usize>,
}

/// Largest width of any layer; keeps a hostile manifest from asking for gigabytes.
pub(crate) const MAX_LAYER_WIDTH: usize = 16_384;

impl DenseConfig {
    /// Checks that the configuration describes a model.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.input_dim == 0 || self.hidden.is_empty() {
            return Err(ModelError::Config(
                "a dense autoencoder needs inputs and at least one hidden layer",
            ));
        }
        let dims = std::iter::once(&self.input_dim).chain(&self.hidden);
        if dims.clone().any(|&d| d == 0 || d > MAX_LAYER_WIDTH) {
            return Err(ModelError::Config(
                "layer widths must be between 1 and 16384",
            ));
        }
        Ok(())
    }

    /// `(in, out)` of every linear layer, first to last.
    pub fn layer_dims(&self) -> Vec<(usize, usize)> {
        let mut dims = Vec::with_capacity(self.hidden.len() + 1);
        let mut previous = self.input_dim;
        for &width in self.hidden.iter().chain(std::iter::once(&self.input_dim)) {
            dims.push((previous, width));
            previous = width;
        }
        dims
    }

    /// The tensors a weights file must hold: name and shape.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.layer_dims()
            .iter()
            .enumerate()
            .flat_map(|(i, &(d_in, d_out))| {
                [
                    (format!("l{}.weight", i + 1), vec![d_out, d_in]),
                    (format!("l{}.bias", i + 1), vec![d_out]),
                ]
            })
            .collect()
    }

    /// Infers the configuration from tensor names and shapes (`l1.weight` … `lN.weight`).
    pub fn from_shapes<'a>(
        shapes: impl IntoIterator<Item = (&'a str, &'a [usize])>,
    ) -> Result<Self, ModelError> {
        let mut weights: Vec<(usize, usize, usize)> = Vec::new();
        for (name, shape) in shapes {
            let Some(index) = name
                .strip_prefix('l')
                .and_then(|rest| rest.strip_suffix(".weight"))
                .and_then(|i| i.parse::<usize>().ok())
            else {
                continue;
            };
            if let [d_out, d_in] = shape {
                weights.push((index, *d_in, *d_out));
            } else {
                return Err(ModelError::Config("a layer weight must be two-dimensional"));
            }
        }
        weights.sort_unstable();
        if weights.len() < 2 || weights.iter().enumerate().any(|(i, w)| w.0 != i + 1) {
            return Err(ModelError::Config(
                "weights must hold l1.weight … lN.weight, N ≥ 2, with no gaps",
            ));
        }
        let input_dim = weights[0].1;
        let hidden: Vec<usize> = weights[..weights.len() - 1].iter().map(|w| w.2).collect();
        let config = DenseConfig { input_dim, hidden };
        config.validate()?;
        Ok(config)
    }
}

/// The candle model. Training uses it directly; serving wraps it in a [`DenseScorer`].
#[derive(Debug, Clone)]
pub struct DenseAutoencoder {
    config: DenseConfig,
    layers: Vec<Linear>,
}

impl DenseAutoencoder {
    /// Builds the model from a `VarBuilder`: the same constructor for training and serving.
    pub fn new(config: &DenseConfig, vb: VarBuilder) -> Result<Self, ModelError> {
        config.validate()?;
        let layers = config
            .layer_dims()
            .iter()
            .enumerate()
            .map(|(i, &(d_in, d_out))| candle_nn::linear(d_in, d_out, vb.pp(format!("l{}", i + 1))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DenseAutoencoder {
            config: config.clone(),
            layers,
        })
    }

    /// The configuration this model was built with.
    pub fn config(&self) -> &DenseConfig {
        &self.config
    }

    /// The reconstruction of a `(rows, input_dim)` batch.
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let last = self.layers.len() - 1;
        let mut h = xs.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if i < last {
                h = h.relu()?;
            }
        }
        Ok(h)
    }

    /// Squared reconstruction errors, `(rows, input_dim)`.
    pub fn squared_errors(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        (self.forward(xs)? - xs)?.sqr()
    }

    /// Mean squared reconstruction error per row (the anomaly score), `(rows,)`.
    pub fn score_tensor(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.squared_errors(xs)?.mean(1)
    }

    /// The serving wrapper: the same function through the fused kernel.
    pub fn scorer(&self) -> Result<DenseScorer, ModelError> {
        let layers = self
            .layers
            .iter()
            .map(|layer| {
                let weight: Vec<f32> = layer.weight().flatten_all()?.to_vec1()?;
                let bias = match layer.bias() {
                    Some(b) => b.to_vec1()?,
                    None => vec![0.0; layer.weight().dims2()?.0],
                };
                Ok((weight, bias))
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(DenseScorer {
            net: FusedNet::new(self.config.input_dim, &layers),
        })
    }
}

/// Scores rows with a [`DenseAutoencoder`] through the fused kernel (which holds its own copy
/// of the weights, laid out for it); cheap to share between threads.
#[derive(Debug, Clone)]
pub struct DenseScorer {
    net: FusedNet,
}

impl DenseScorer {
    /// Values per input row.
    pub fn input_dim(&self) -> usize {
        self.net.input_dim()
    }

    /// Scores `rows` (row-major, `input_dim` values each, already normalised).
    pub fn score(&self, rows: &[f32]) -> Result<Scores, ModelError> {
        let width = self.input_dim();
        if !rows.len().is_multiple_of(width) {
            return Err(ModelError::Width {
                expected: width,
                got: rows.len() % width,
            });
        }
        let mut scores = Scores {
            width,
            scores: vec![0.0; rows.len() / width],
            terms: vec![0.0; rows.len()],
        };
        self.net
            .squared_errors(rows, &mut scores.terms, &mut scores.scores);
        Ok(scores)
    }
}

/// A freshly initialised dense model and the `VarMap` that owns its weights (for training);
/// see [`Architecture::initialised`](crate::architecture::Architecture::initialised).
pub fn initialised(
    config: &DenseConfig,
    seed: u64,
) -> Result<(candle_nn::VarMap, DenseAutoencoder), ModelError> {
    match crate::architecture::Architecture::Dense(config.clone()).initialised(seed)? {
        (varmap, crate::architecture::Autoencoder::Dense(model)) => Ok((varmap, model)),
        _ => Err(ModelError::Config(
            "a dense architecture built another model",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fused_kernel_and_candle_agree() {
        // ae-ref's shape and an odd one, at batch sizes on both sides of the kernel's block.
        for (config, seed) in [
            (
                DenseConfig {
                    input_dim: 32,
                    hidden: vec![64, 16, 64],
                },
                1,
            ),
            (
                DenseConfig {
                    input_dim: 6,
                    hidden: vec![5, 2, 5],
                },
                2,
            ),
        ] {
            let (_varmap, model) = initialised(&config, seed).unwrap();
            let scorer = model.scorer().unwrap();
            let width = config.input_dim;
            for n in [1usize, 7, 48, 50, 1000] {
                let rows: Vec<f32> = (0..width * n)
                    .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
                    .collect();
                let fused = scorer.score(&rows).unwrap();
                let xs = Tensor::from_slice(&rows, (n, width), &candle_core::Device::Cpu).unwrap();
                let terms: Vec<f32> = model
                    .squared_errors(&xs)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let candle = Scores::from_terms(terms, width);
                assert_eq!(fused.scores.len(), n);
                for (a, b) in fused.scores.iter().zip(&candle.scores) {
                    assert!((a - b).abs() <= 1e-5 * b.max(1.0), "{a} vs {b}");
                }
                for (a, b) in fused.terms.iter().zip(&candle.terms) {
                    assert!((a - b).abs() <= 1e-5 * b.max(1.0), "{a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn the_configuration_is_inferred_from_tensor_shapes() {
        let config = DenseConfig {
            input_dim: 32,
            hidden: vec![64, 16, 64],
        };
        let shapes = config.tensor_shapes();
        let inferred =
            DenseConfig::from_shapes(shapes.iter().map(|(n, s)| (n.as_str(), s.as_slice())))
                .unwrap();
        assert_eq!(inferred, config);
    }

    #[test]
    fn a_gap_in_layer_names_is_refused() {
        let shapes = [("l1.weight", &[4usize, 3][..]), ("l3.weight", &[3, 4][..])];
        assert!(DenseConfig::from_shapes(shapes).is_err());
    }
}
