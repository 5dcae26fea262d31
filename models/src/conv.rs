//! The window-aware model: a 1-D convolutional autoencoder over the last `window` readings.
//!
//! The input row is the same as the dense model's (`window × n_features` values, reading-major:
//! the oldest reading's features first). Inside, the window becomes `n_features` channels of
//! `window` time steps; stride-1 convolutions with "same" padding map the channels through
//! `channels` and back, with ReLU between layers and none after the last. A convolution sees
//! `kernel` neighbouring readings, so the model learns how sensors move together *in time*
//! (a sensor that stops following its neighbours, a rhythm that changes), which a dense model
//! over one reading cannot. Tensor names follow PyTorch's `nn.Conv1d`: `c1.weight`
//! `[out, in, kernel]`, `c1.bias` `[out]`, … `cN`.

use candle_core::{Module, Tensor};
use candle_nn::{Conv1d, Conv1dConfig, VarBuilder};

use crate::dense::MAX_LAYER_WIDTH;
use crate::ModelError;

/// Longest kernel a package may ask for.
const MAX_KERNEL: usize = 63;

/// Shape of a convolutional autoencoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvConfig {
    /// Sensors per reading (input and output channels).
    pub n_features: usize,
    /// Readings per input row.
    pub window: usize,
    /// Channels of the hidden layers, in order (for example `[16, 4, 16]`).
    pub channels: Vec<usize>,
    /// Kernel length in readings (odd, so that padding keeps the length).
    pub kernel: usize,
}

impl ConvConfig {
    /// Checks that the configuration describes a model.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.n_features == 0 || self.window == 0 || self.channels.is_empty() {
            return Err(ModelError::Config(
                "a convolutional autoencoder needs features, a window and a hidden layer",
            ));
        }
        if self.kernel == 0 || self.kernel.is_multiple_of(2) || self.kernel > MAX_KERNEL {
            return Err(ModelError::Config("the kernel must be odd, 1 to 63"));
        }
        let widths = std::iter::once(&self.n_features).chain(&self.channels);
        if widths.clone().any(|&c| c == 0 || c > MAX_LAYER_WIDTH) {
            return Err(ModelError::Config(
                "channel counts must be between 1 and 16384",
            ));
        }
        Ok(())
    }

    /// Values per input row.
    pub fn input_dim(&self) -> usize {
        self.window * self.n_features
    }

    /// `(in, out)` channels of every convolution, first to last.
    pub fn layer_dims(&self) -> Vec<(usize, usize)> {
        let mut dims = Vec::with_capacity(self.channels.len() + 1);
        let mut previous = self.n_features;
        for &c in self
            .channels
            .iter()
            .chain(std::iter::once(&self.n_features))
        {
            dims.push((previous, c));
            previous = c;
        }
        dims
    }

    /// The tensors a weights file must hold: name and shape.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.layer_dims()
            .iter()
            .enumerate()
            .flat_map(|(i, &(c_in, c_out))| {
                [
                    (format!("c{}.weight", i + 1), vec![c_out, c_in, self.kernel]),
                    (format!("c{}.bias", i + 1), vec![c_out]),
                ]
            })
            .collect()
    }
}

/// The candle model: one constructor for training and serving.
#[derive(Debug, Clone)]
pub struct ConvAutoencoder {
    config: ConvConfig,
    layers: Vec<Conv1d>,
}

impl ConvAutoencoder {
    /// Builds the model from a `VarBuilder`.
    pub fn new(config: &ConvConfig, vb: VarBuilder) -> Result<Self, ModelError> {
        config.validate()?;
        let conv = Conv1dConfig {
            padding: config.kernel / 2,
            ..Default::default()
        };
        let layers = config
            .layer_dims()
            .iter()
            .enumerate()
            .map(|(i, &(c_in, c_out))| {
                candle_nn::conv1d(
                    c_in,
                    c_out,
                    config.kernel,
                    conv,
                    vb.pp(format!("c{}", i + 1)),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ConvAutoencoder {
            config: config.clone(),
            layers,
        })
    }

    pub fn config(&self) -> &ConvConfig {
        &self.config
    }

    /// The reconstruction of a `(rows, window × n_features)` batch, in the same layout.
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let rows = xs.dim(0)?;
        let (w, f) = (self.config.window, self.config.n_features);
        // (rows, window, features) → (rows, features, window): channels first.
        let mut h = xs.reshape((rows, w, f))?.transpose(1, 2)?.contiguous()?;
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if i < last {
                h = h.relu()?;
            }
        }
        h.transpose(1, 2)?.contiguous()?.reshape((rows, w * f))
    }

    /// Squared reconstruction errors, `(rows, window × n_features)`.
    pub fn squared_errors(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        (self.forward(xs)? - xs)?.sqr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::architecture::Architecture;

    #[test]
    fn the_layout_round_trips_and_a_kernel_of_one_sees_one_reading() {
        let config = ConvConfig {
            n_features: 3,
            window: 5,
            channels: vec![4, 2, 4],
            kernel: 1,
        };
        let (_varmap, built) = Architecture::Conv(config.clone()).initialised(3).unwrap();
        let crate::Autoencoder::Conv(model) = built else {
            panic!("a conv architecture built another model")
        };
        let rows: Vec<f32> = (0..2 * 15).map(|i| (i as f32 * 0.37).sin()).collect();
        let xs = Tensor::from_slice(&rows, (2, 15), &candle_core::Device::Cpu).unwrap();
        let errors = model.squared_errors(&xs).unwrap();
        assert_eq!(errors.dims(), &[2, 15]);
        // With kernel 1 every reading is reconstructed from itself alone: a reading equal to
        // another reading elsewhere reconstructs identically.
        let mut same = rows.clone();
        same[3..6].copy_from_slice(&rows[0..3]);
        let ys = Tensor::from_slice(&same, (2, 15), &candle_core::Device::Cpu).unwrap();
        let out: Vec<f32> = model
            .forward(&ys)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for k in 0..3 {
            assert!((out[k] - out[3 + k]).abs() < 1e-6);
        }
    }

    #[test]
    fn even_kernels_and_empty_layers_are_refused() {
        let mut config = ConvConfig {
            n_features: 2,
            window: 8,
            channels: vec![4],
            kernel: 4,
        };
        assert!(config.validate().is_err());
        config.kernel = 3;
        assert!(config.validate().is_ok());
        config.channels.clear();
        assert!(config.validate().is_err());
    }
}
