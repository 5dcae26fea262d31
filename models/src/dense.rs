//! The dense autoencoder: `input → hidden… → input`, ReLU between layers, scored by the mean
//! squared reconstruction error.
//!
//! Tensor names follow PyTorch's `nn.Linear` layout (`l1.weight` `[out, in]`, `l1.bias` `[out]`,
//! … `lN`), so weights trained in PyTorch load as they are. [`DenseAutoencoder::new`] is the one
//! constructor, used by the trainer (over a `VarMap`) and by the package loader (over the
//! verified weights). Serving goes through [`DenseScorer`], which computes the same function
//! with plain loops for small batches, where candle's per-call overhead dominates, and with
//! candle for large ones.

use candle_core::{Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::error::ModelError;
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

    /// A serving wrapper with a fast path for small batches.
    pub fn scorer(&self) -> Result<DenseScorer, ModelError> {
        let layers = self
            .layers
            .iter()
            .map(|layer| {
                // Stored input-major (`[in][out]`), so one input value scales one contiguous
                // row of weights: the inner loop vectorises.
                let w_t: Vec<f32> = layer.weight().t()?.contiguous()?.flatten_all()?.to_vec1()?;
                let (d_out, d_in) = layer.weight().dims2()?;
                let bias = match layer.bias() {
                    Some(b) => b.to_vec1()?,
                    None => vec![0.0; d_out],
                };
                Ok(FastLayer {
                    d_in,
                    d_out,
                    w_t,
                    bias,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let max_width = layers
            .iter()
            .map(|l| l.d_out.max(l.d_in))
            .max()
            .unwrap_or(0);
        Ok(DenseScorer {
            model: self.clone(),
            layers,
            max_width,
        })
    }
}

#[derive(Debug, Clone)]
struct FastLayer {
    d_in: usize,
    d_out: usize,
    w_t: Vec<f32>,
    bias: Vec<f32>,
}

impl FastLayer {
    fn forward(&self, input: &[f32], output: &mut [f32], relu: bool) {
        let output = &mut output[..self.d_out];
        output.copy_from_slice(&self.bias);
        for (x, weights) in input[..self.d_in]
            .iter()
            .zip(self.w_t.chunks_exact(self.d_out))
        {
            for (o, w) in output.iter_mut().zip(weights) {
                *o += x * w;
            }
        }
        if relu {
            for o in output.iter_mut() {
                *o = o.max(0.0);
            }
        }
    }
}

/// Batches smaller than this are scored with plain loops, larger ones with candle.
pub const FAST_PATH_MAX_ROWS: usize = 8;

/// Scores rows with a [`DenseAutoencoder`]; cheap to share between threads.
#[derive(Debug, Clone)]
pub struct DenseScorer {
    model: DenseAutoencoder,
    layers: Vec<FastLayer>,
    max_width: usize,
}

impl DenseScorer {
    /// Values per input row.
    pub fn input_dim(&self) -> usize {
        self.model.config.input_dim
    }

    /// The underlying candle model.
    pub fn model(&self) -> &DenseAutoencoder {
        &self.model
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
        let n_rows = rows.len() / width;
        if n_rows < FAST_PATH_MAX_ROWS {
            Ok(self.score_loops(rows, n_rows))
        } else {
            self.score_candle(rows, n_rows)
        }
    }

    /// The small-batch path: plain loops, no allocation per layer.
    fn score_loops(&self, rows: &[f32], n_rows: usize) -> Scores {
        let width = self.input_dim();
        let mut scores = Scores::with_capacity(width, n_rows);
        let mut a = vec![0.0f32; self.max_width];
        let mut b = vec![0.0f32; self.max_width];
        let last = self.layers.len() - 1;
        for row in rows.chunks_exact(width) {
            a[..width].copy_from_slice(row);
            for (i, layer) in self.layers.iter().enumerate() {
                layer.forward(&a, &mut b, i < last);
                std::mem::swap(&mut a, &mut b);
            }
            let mut total = 0.0f32;
            for (reconstructed, x) in a[..width].iter().zip(row) {
                let term = (reconstructed - x) * (reconstructed - x);
                total += term;
                scores.terms.push(term);
            }
            scores.scores.push(total / width as f32);
        }
        scores
    }

    fn score_candle(&self, rows: &[f32], n_rows: usize) -> Result<Scores, ModelError> {
        let width = self.input_dim();
        let xs = Tensor::from_slice(rows, (n_rows, width), &Device::Cpu)?;
        let terms: Vec<f32> = self.model.squared_errors(&xs)?.flatten_all()?.to_vec1()?;
        Ok(Scores::from_terms(terms, width))
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
    fn the_fast_path_and_candle_agree() {
        let config = DenseConfig {
            input_dim: 6,
            hidden: vec![5, 2, 5],
        };
        let (_varmap, model) = initialised(&config, 1).unwrap();
        let scorer = model.scorer().unwrap();
        let rows: Vec<f32> = (0..6 * 20)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let big = scorer.score(&rows).unwrap();
        assert_eq!(big.scores.len(), 20);
        for (i, row) in rows.chunks_exact(6).enumerate() {
            let small = scorer.score(row).unwrap();
            assert!((small.scores[0] - big.scores[i]).abs() <= 1e-6 * big.scores[i].max(1.0));
            for (a, b) in small.terms.iter().zip(big.row_terms(i)) {
                assert!((a - b).abs() <= 1e-5);
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
