//! The serving path of the dense autoencoder: every layer's product, bias and activation in one
//! pass, blocked for thin matrices, with the reconstruction error computed as the last layer's
//! rows come out.
//!
//! Why not candle here: ae-ref's layers are 32 → 64 → 16 → 64 → 32, so a general matrix
//! product spends its time packing operands and walking a batch through four separate
//! products, two bias passes and three activation passes, each a round trip through memory.
//! This kernel instead takes a block of rows (small enough that its activations stay in L1)
//! through every layer before the next block starts, and computes each layer as register
//! tiles of `R` rows × `C` vectors of outputs: the tile's accumulators start at the bias, take
//! one fused multiply-add per input value, and are clamped at zero before they are stored.
//!
//! Vector width is chosen at run time by [`pulp`] (AVX2 + FMA on x86-64 where the CPU has it,
//! NEON on aarch64, plain scalars otherwise) without any `unsafe` here. Output widths are padded
//! to a multiple of [`PAD`] lanes with zero weights and zero bias, so a tile never needs a
//! partial vector; padded outputs are zero and are never read by the next layer.
//!
//! The result is the same function as [`DenseAutoencoder::forward`](crate::DenseAutoencoder)
//! up to the order of floating-point additions (checked against candle in the tests).

use pulp::{Arch, Simd, WithSimd};

/// Output widths are padded to a multiple of this many `f32` (the widest vector pulp uses).
const PAD: usize = 16;

/// Rows taken through every layer together: their activations (`BLOCK × widest layer`) stay in
/// L1 for ae-ref's widths. A multiple of every tile height below (6, 8, 12 and 16), so that
/// only a batch's last block has rows left over for the shorter tiles.
const BLOCK: usize = 48;

/// One linear layer, stored for the kernel: weights input-major and padded.
#[derive(Debug, Clone)]
struct Layer {
    d_in: usize,
    /// The layer's width rounded up to [`PAD`].
    padded: usize,
    /// `w_t[k * padded + o]` = weight from input `k` to output `o`; zero for padded outputs.
    w_t: Vec<f32>,
    /// `padded` values; zero for padded outputs.
    bias: Vec<f32>,
    relu: bool,
}

/// A dense network ready for the fused kernel.
#[derive(Debug, Clone)]
pub(crate) struct FusedNet {
    input_dim: usize,
    layers: Vec<Layer>,
    /// The widest padded layer: the stride of the scratch buffers.
    widest: usize,
    arch: Arch,
}

impl FusedNet {
    /// Builds the network from PyTorch-layout layers (`weight[out][in]`, `bias[out]`), ReLU
    /// after every layer but the last. The last layer's width must equal `input_dim`.
    pub(crate) fn new(input_dim: usize, layers: &[(Vec<f32>, Vec<f32>)]) -> FusedNet {
        let mut d_in = input_dim;
        let last = layers.len().saturating_sub(1);
        let layers: Vec<Layer> = layers
            .iter()
            .enumerate()
            .map(|(i, (weight, bias))| {
                let d_out = bias.len();
                debug_assert_eq!(weight.len(), d_out * d_in);
                let padded = d_out.div_ceil(PAD) * PAD;
                let mut w_t = vec![0.0f32; d_in * padded];
                for (o, row) in weight.chunks_exact(d_in).enumerate() {
                    for (k, w) in row.iter().enumerate() {
                        w_t[k * padded + o] = *w;
                    }
                }
                let mut padded_bias = vec![0.0f32; padded];
                padded_bias[..d_out].copy_from_slice(bias);
                let layer = Layer {
                    d_in,
                    padded,
                    w_t,
                    bias: padded_bias,
                    relu: i < last,
                };
                d_in = d_out;
                layer
            })
            .collect();
        let widest = layers.iter().map(|l| l.padded).max().unwrap_or(PAD);
        FusedNet {
            input_dim,
            layers,
            widest,
            arch: Arch::new(),
        }
    }

    /// Values per row.
    pub(crate) fn input_dim(&self) -> usize {
        self.input_dim
    }

    /// For rows (row-major, `input_dim` values each): writes each row's squared reconstruction
    /// errors to `terms` (as long as `rows`) and their mean to `scores` (one per row).
    pub(crate) fn squared_errors(&self, rows: &[f32], terms: &mut [f32], scores: &mut [f32]) {
        assert!(terms.len() == rows.len() && scores.len() * self.input_dim == rows.len());
        self.arch.dispatch(Pass {
            net: self,
            rows,
            terms,
            scores,
        });
    }
}

/// One call of the kernel, as pulp's dispatch wants it.
struct Pass<'a> {
    net: &'a FusedNet,
    rows: &'a [f32],
    terms: &'a mut [f32],
    scores: &'a mut [f32],
}

impl WithSimd for Pass<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Self::Output {
        let net = self.net;
        let width = net.input_dim;
        let block_rows = BLOCK.min(self.rows.len() / width.max(1)).max(1);
        let mut a = vec![0.0f32; block_rows * net.widest];
        let mut b = vec![0.0f32; block_rows * net.widest];
        let blocks = self.rows.chunks(block_rows * width).zip(
            self.terms
                .chunks_mut(block_rows * width)
                .zip(self.scores.chunks_mut(block_rows)),
        );
        for (block, (terms, scores)) in blocks {
            let n = block.len() / width;
            // Layer 1 reads the rows themselves (stride `width`); the others read the scratch.
            let mut input: &[f32] = block;
            let mut stride = width;
            for layer in &net.layers {
                forward(simd, layer, input, stride, n, &mut b);
                std::mem::swap(&mut a, &mut b);
                input = &a;
                stride = layer.padded;
            }
            errors(simd, block, &a, stride, width, terms, scores);
        }
    }
}

/// Squared errors of a block's reconstruction (`recon`, rows of stride `stride`) against its
/// rows, written to `terms` (`width` per row); each row's mean written to `scores`.
#[inline(always)]
fn errors<S: Simd>(
    simd: S,
    block: &[f32],
    recon: &[f32],
    stride: usize,
    width: usize,
    terms: &mut [f32],
    scores: &mut [f32],
) {
    let rows = block.chunks_exact(width).zip(recon.chunks(stride));
    for ((row, out), (terms, score)) in rows.zip(terms.chunks_exact_mut(width).zip(scores)) {
        let (x, x_tail) = S::as_simd_f32s(row);
        let (y, y_tail) = S::as_simd_f32s(&out[..width]);
        let (t, t_tail) = S::as_mut_simd_f32s(terms);
        for ((t, x), y) in t.iter_mut().zip(x).zip(y) {
            let d = simd.sub_f32s(*y, *x);
            *t = simd.mul_f32s(d, d);
        }
        for ((t, x), y) in t_tail.iter_mut().zip(x_tail).zip(y_tail) {
            *t = (y - x) * (y - x);
        }
        *score = sum(terms) / width as f32;
    }
}

/// The sum of a row's terms in an order that does not depend on the vector width: eight
/// running sums (term `i` into sum `i mod 8`), added pairwise. Every other step of the kernel
/// rounds the same whatever the instruction set (each output accumulates its products in input
/// order, one fused multiply-add at a time), so with this the scores are identical bit for bit
/// on AVX-512, AVX2, NEON and plain scalars; eight independent sums also keep the additions
/// from waiting on each other (a single running sum was a third of the kernel's time).
#[inline(always)]
fn sum(terms: &[f32]) -> f32 {
    let mut partial = [0.0f32; 8];
    let (chunks, tail) = terms.as_chunks::<8>();
    for chunk in chunks {
        for (p, t) in partial.iter_mut().zip(chunk) {
            *p += t;
        }
    }
    for (p, t) in partial.iter_mut().zip(tail) {
        *p += t;
    }
    let [a, b, c, d, e, f, g, h] = partial;
    ((a + b) + (c + d)) + ((e + f) + (g + h))
}

/// One layer over `n` rows of `input` (stride `stride`) into `output` (stride `layer.padded`).
#[inline(always)]
fn forward<S: Simd>(
    simd: S,
    layer: &Layer,
    input: &[f32],
    stride: usize,
    n: usize,
    output: &mut [f32],
) {
    let lanes = S::F32_LANES;
    let vectors = layer.padded / lanes;
    let (w, _) = S::as_simd_f32s(&layer.w_t);
    let (bias, _) = S::as_simd_f32s(&layer.bias);
    let tiles = Tiles {
        input,
        stride,
        d_in: layer.d_in,
        w,
        w_stride: vectors,
        bias,
        out_stride: layer.padded,
        relu: layer.relu,
    };
    let mut c0 = 0;
    while c0 < vectors {
        // The widest tile that fits what is left of the row, with as many accumulators as the
        // registers hold beside the tile's weights and the broadcast input.
        c0 += if S::REGISTER_COUNT >= 32 {
            match vectors - c0 {
                1 => tiles.columns::<S, 16, 1>(simd, c0, n, output),
                2 => tiles.columns::<S, 12, 2>(simd, c0, n, output),
                3 => tiles.columns::<S, 8, 3>(simd, c0, n, output),
                _ => tiles.columns::<S, 6, 4>(simd, c0, n, output),
            }
        } else {
            match vectors - c0 {
                1 => tiles.columns::<S, 8, 1>(simd, c0, n, output),
                _ => tiles.columns::<S, 6, 2>(simd, c0, n, output),
            }
        };
    }
}

/// What every tile of one layer shares.
struct Tiles<'a, V> {
    input: &'a [f32],
    stride: usize,
    d_in: usize,
    w: &'a [V],
    /// Vectors per input in `w`.
    w_stride: usize,
    bias: &'a [V],
    out_stride: usize,
    relu: bool,
}

impl<V: Copy> Tiles<'_, V> {
    /// Output vectors `c0 .. c0 + C` of all `n` rows, `R` rows at a time (then fewer);
    /// returns `C`.
    #[inline(always)]
    fn columns<S: Simd<f32s = V>, const R: usize, const C: usize>(
        &self,
        simd: S,
        c0: usize,
        n: usize,
        output: &mut [f32],
    ) -> usize {
        let mut r0 = 0;
        while r0 + R <= n {
            self.tile::<S, R, C>(simd, r0, c0, output);
            r0 += R;
        }
        // A short batch, or the end of one: four rows, then one, at a time.
        while r0 + 4 <= n {
            self.tile::<S, 4, C>(simd, r0, c0, output);
            r0 += 4;
        }
        while r0 < n {
            self.tile::<S, 1, C>(simd, r0, c0, output);
            r0 += 1;
        }
        C
    }

    /// Rows `r0 .. r0 + R`, output vectors `c0 .. c0 + C`: bias, products, activation, store.
    #[inline(always)]
    fn tile<S: Simd<f32s = V>, const R: usize, const C: usize>(
        &self,
        simd: S,
        r0: usize,
        c0: usize,
        output: &mut [f32],
    ) {
        let bias: [V; C] = self.bias[c0..c0 + C].try_into().expect("C vectors");
        let mut acc = [bias; R];
        let rows: [&[f32]; R] =
            std::array::from_fn(|r| &self.input[(r0 + r) * self.stride..][..self.d_in]);
        for (k, w) in self.w.chunks_exact(self.w_stride).enumerate() {
            let w = &w[c0..c0 + C];
            for r in 0..R {
                let x = simd.splat_f32s(rows[r][k]);
                for c in 0..C {
                    acc[r][c] = simd.mul_add_f32s(x, w[c], acc[r][c]);
                }
            }
        }
        let zero = simd.splat_f32s(0.0);
        let lanes = S::F32_LANES;
        for (r, values) in acc.iter().enumerate() {
            let start = (r0 + r) * self.out_stride + c0 * lanes;
            let (out, _) = S::as_mut_simd_f32s(&mut output[start..start + C * lanes]);
            for (o, v) in out.iter_mut().zip(values) {
                *o = if self.relu {
                    simd.max_f32s(*v, zero)
                } else {
                    *v
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same network computed naively, in f64.
    fn reference(input_dim: usize, layers: &[(Vec<f32>, Vec<f32>)], row: &[f32]) -> Vec<f64> {
        let mut h: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        let mut d_in = input_dim;
        for (i, (w, b)) in layers.iter().enumerate() {
            let d_out = b.len();
            let mut out = vec![0.0f64; d_out];
            for o in 0..d_out {
                let mut s = b[o] as f64;
                for k in 0..d_in {
                    s += w[o * d_in + k] as f64 * h[k];
                }
                out[o] = if i + 1 < layers.len() { s.max(0.0) } else { s };
            }
            h = out;
            d_in = d_out;
        }
        h
    }

    fn layers(dims: &[usize], seed: u32) -> Vec<(Vec<f32>, Vec<f32>)> {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        dims.windows(2)
            .map(|d| {
                let w = (0..d[0] * d[1]).map(|_| next()).collect();
                let b = (0..d[1]).map(|_| next()).collect();
                (w, b)
            })
            .collect()
    }

    /// Terms and scores through one instruction set, or (`None`) through the run-time choice.
    fn run<S: Simd>(simd: Option<S>, net: &FusedNet, rows: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (mut terms, mut scores) =
            (vec![0.0; rows.len()], vec![0.0; rows.len() / net.input_dim]);
        match simd {
            None => net.squared_errors(rows, &mut terms, &mut scores),
            Some(simd) => Pass {
                net,
                rows,
                terms: &mut terms,
                scores: &mut scores,
            }
            .with_simd(simd),
        }
        (terms, scores)
    }

    #[test]
    fn odd_widths_and_every_tail_match_a_naive_network() {
        // Widths that are not multiples of any vector, and batches around the block and tile
        // sizes, so that every tile shape and every tail runs: through the instruction set this
        // CPU gets, through plain scalars (the 16-register tiles), and through AVX2 where the
        // CPU has it but was given AVX-512.
        for dims in [vec![5, 7, 3, 5], vec![33, 70, 17, 49, 33], vec![1, 1, 1]] {
            let net = FusedNet::new(dims[0], &layers(&dims, 7));
            let reference_layers = layers(&dims, 7);
            for n in [1usize, 2, 5, 47, 48, 49, 100] {
                let rows: Vec<f32> = (0..n * dims[0])
                    .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
                    .collect();
                let mut engines = vec![
                    run(None::<pulp::Scalar>, &net, &rows),
                    run(Some(pulp::Scalar::new()), &net, &rows),
                ];
                #[cfg(target_arch = "x86_64")]
                if let Some(v3) = pulp::x86::V3::try_new() {
                    engines.push(run(Some(v3), &net, &rows));
                }
                // The same bits through every instruction set.
                for (terms, scores) in &engines[1..] {
                    assert_eq!(
                        (terms, scores),
                        (&engines[0].0, &engines[0].1),
                        "{dims:?} n={n}"
                    );
                }
                for (terms, scores) in engines {
                    assert_eq!(scores.len(), n);
                    for (r, row) in rows.chunks_exact(dims[0]).enumerate() {
                        let recon = reference(dims[0], &reference_layers, row);
                        let mut total = 0.0f64;
                        for (j, (y, x)) in recon.iter().zip(row).enumerate() {
                            let term = (y - *x as f64).powi(2);
                            total += term;
                            let got = terms[r * dims[0] + j] as f64;
                            assert!((got - term).abs() <= 1e-4 * term.max(1.0), "{dims:?} n={n}");
                        }
                        let score = total / dims[0] as f64;
                        assert!((scores[r] as f64 - score).abs() <= 1e-4 * score.max(1.0));
                    }
                }
            }
        }
    }
}
