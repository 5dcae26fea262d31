//! A detector for rhythmic and bursty single-sensor streams: sequence novelty with an anomaly
//! likelihood.
//!
//! Window statistics fitted on a stream's first readings alarm at every daily or weekly swing
//! of a temperature, a CPU load or a request count, and miss a change of rhythm that stays
//! within the usual range. The published leaders on NAB share two ideas, which this detector
//! combines in a bounded, causal form:
//!
//! - **Sequence memory** (Numenta HTM, Ahmad et al. 2017; the Contextual Anomaly Detector,
//!   Smirnov 2016): remember which short sequences of (coarsely quantised) values the stream
//!   has produced, and call a reading novel in proportion to how many of the sequences ending
//!   at it were never seen. A rhythm, once seen, stops being novel however wide its swing; a
//!   spike, a new level or a broken rhythm is novel at once.
//! - **An anomaly likelihood** (Ahmad et al. 2017): novelty alone alarms constantly on a
//!   noisy stream, so the alarm asks instead whether the *recent* novelty is improbable given
//!   the stream's own history of novelty, and holds after it rises, so one event is one alarm.
//!
//! Per reading, at each of `scales` resolutions: the value is quantised into bins of a width
//! fitted on the first readings (`bins` across their 1 %–99 % range at the finest scale,
//! `scale_factor` times fewer at each coarser one; unbounded beyond the range). The
//! `order + 1` sequences ending at the reading — its bin alone, with the bin before it, … with
//! the `order` bins before it — are looked up in a memory of seen sequences and then stored. A
//! small wobble is novel only at the finest scale, a value far outside anything seen at every
//! scale, where novelty is otherwise rare. The memory is two hashed bit
//! sets of `2^memory_bits` bits: sequences go into the current one, a lookup asks both, and
//! when the current one has `1/8` of its bits set it becomes the previous one and a cleared
//! set the current. So memory is fixed, a look-up wrongly answers "seen" for fewer than 1 in 4
//! new sequences, and what the stream stopped doing is eventually forgotten — after as many
//! distinct sequences as the memory holds, not after a fixed time.
//!
//! At each scale the novelty count of the last `short` readings is compared with its own
//! distribution over the last `long` readings: z = (count − mean) / sd, the variance never
//! below the mean (a Poisson count's) as it would be with one more novel sequence in the
//! history (`short / long` more), so a history that was never novel is not judged by a
//! variance of zero. On such a stream one novel sequence is improbable and crosses (z =
//! √(long / short) ≈ 32 with the defaults): a stream that never surprised is surprising when it
//! does. The score is the largest z over the scales; a reading crosses when it exceeds
//! `threshold`, and the crossing goes through the usual debounce. A value repeated far longer
//! than in the fit (`FlatLine`, as in the adaptive detector) crosses by itself.
//!
//! The memory learns every reading, anomalous ones included, like the detectors it draws on: a
//! level the stream moves to and stays at stops being novel, and the alarm ends by itself.
//! Memory per stream: `2^(memory_bits − 2)` bytes for the two sets, `2 × long` bytes of counts
//! per scale (≈ 77 KB with the defaults).
//!
//! The defaults were chosen on NAB's 35 labelled development series, the procedure checked by
//! leaving one category out at a time (`docs/evaluation.md`, `docs/selection/sequence_defaults.py`).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use vigil_models::{Debounce, DebounceConfig, FlatLine};

use crate::online::{Step, StreamDetector};
use crate::TrainError;

/// Settings of [`SequenceDetector`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SequenceOptions {
    /// Quantisation bins across the 1 %–99 % range of the readings fitted on, at the finest
    /// scale; each of the `scales` scales has `scale_factor` times fewer.
    pub bins: usize,
    pub scales: usize,
    pub scale_factor: usize,
    /// The longest sequence looked up has this many readings before the current one.
    pub order: usize,
    /// Each of the two memory sets has `2^memory_bits` bits.
    pub memory_bits: u32,
    /// Readings whose novelty is summed and judged.
    pub short: usize,
    /// Readings whose novelty sums make the distribution it is judged against.
    pub long: usize,
    /// A reading crosses when its z exceeds this (4.5: a Gaussian tail of 3.4e-6).
    pub threshold: f64,
    pub debounce: DebounceConfig,
}

impl Default for SequenceOptions {
    fn default() -> Self {
        SequenceOptions {
            bins: 16,
            scales: 3,
            scale_factor: 4,
            order: 1,
            memory_bits: 16,
            short: 10,
            long: 10000,
            threshold: 4.5,
            debounce: DebounceConfig {
                k: 1,
                n: 1,
                hold: 120,
                clear: 5,
            },
        }
    }
}

impl SequenceOptions {
    /// The bins of each scale, finest first (never fewer than 1).
    fn scales(&self) -> impl Iterator<Item = usize> + '_ {
        let mut bins = self.bins.max(1);
        (0..self.scales.max(1)).map(move |_| {
            let these = bins;
            bins = (bins / self.scale_factor.max(2)).max(1);
            these
        })
    }

    /// Whether the settings are usable; the message names the bounds.
    pub fn check(&self) -> Result<(), String> {
        let ok = (1..=1024).contains(&self.bins)
            && (1..=8).contains(&self.scales)
            && self.scale_factor >= 2
            && self.order <= 16
            && (10..=24).contains(&self.memory_bits)
            && (1..=1000).contains(&self.short)
            && self.long > self.short
            && self.long <= 100_000
            && self.threshold.is_finite()
            && self.threshold > 0.0;
        if ok {
            Ok(())
        } else {
            Err("sequence needs 1 ≤ bins ≤ 1024, 1 ≤ scales ≤ 8, scale_factor ≥ 2, order ≤ 16, 10 ≤ memory_bits ≤ 24, 1 ≤ short ≤ 1000, short < long ≤ 100000, threshold > 0".into())
        }
    }

    /// Bytes one stream's detector holds once fitted (its memory and histories).
    pub fn stream_bytes(&self) -> usize {
        2 * (1usize << self.memory_bits) / 8
            + self.scales.max(1) * (2 * self.long + 10 * (self.order + self.short) + 128)
    }
}

/// Two generations of a hashed set of sequences (see the module's documentation).
#[derive(Debug, Clone)]
struct Memory {
    current: Vec<u64>,
    previous: Vec<u64>,
    set: usize,
    bits: u32,
}

impl Memory {
    fn new(bits: u32) -> Memory {
        let words = (1usize << bits) / 64;
        Memory {
            current: vec![0; words],
            previous: vec![0; words],
            set: 0,
            bits,
        }
    }

    /// Whether `hash` was seen (in either generation); stores it in the current one.
    fn seen_then_store(&mut self, hash: u64) -> bool {
        let index = (hash >> (64 - self.bits)) as usize;
        let (word, bit) = (index / 64, 1u64 << (index % 64));
        let seen = (self.current[word] | self.previous[word]) & bit != 0;
        if self.current[word] & bit == 0 {
            self.current[word] |= bit;
            self.set += 1;
            if self.set >= (1usize << self.bits) / 8 {
                std::mem::swap(&mut self.current, &mut self.previous);
                self.current.fill(0);
                self.set = 0;
            }
        }
        seen
    }
}

/// splitmix64's finaliser: a well-mixed 64-bit hash of `x`.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The mean and standard deviation that judge a novelty count: the history's mean, and its
/// variance but never less than a Poisson count's with one more novel sequence than was seen.
fn judged(sum: u64, sum_sq: u64, n: usize, short: usize) -> (f64, f64) {
    let n = n.max(1) as f64;
    let mean = sum as f64 / n;
    let variance = (sum_sq as f64 / n - mean * mean).max(0.0);
    let floor = mean + short as f64 / n;
    (mean, variance.max(floor).sqrt())
}

/// One resolution's view of the stream: its bins, context, and history of novelty.
#[derive(Debug, Clone)]
struct Scale {
    /// The value at the lower edge of bin 0, and the bins' width.
    origin: f64,
    width: f64,
    /// The last `order` bins, newest last.
    context: VecDeque<i64>,
    /// Novel sequences of each of the last `short` readings.
    recent: VecDeque<u16>,
    recent_sum: u64,
    /// Novelty counts (sums over `short` readings) of the last `long` readings.
    history: VecDeque<u16>,
    sum: u64,
    sum_sq: u64,
    /// Keeps this scale's sequences apart from the others' in the shared memory.
    salt: u64,
}

impl Scale {
    /// Learns `value` and returns the z of the novelty count of the last `short` readings
    /// against the history before it; with `record`, the count then joins the history.
    fn step(
        &mut self,
        value: f32,
        memory: &mut Memory,
        options: &SequenceOptions,
        record: bool,
    ) -> f64 {
        let bin = if value.is_finite() {
            ((f64::from(value) - self.origin) / self.width)
                .floor()
                .clamp(-1e15, 1e15) as i64
        } else {
            i64::MIN
        };
        let mut hash = mix(bin as u64 ^ self.salt);
        let mut novel = u16::from(!memory.seen_then_store(hash));
        for (k, &before) in self.context.iter().rev().enumerate() {
            hash = mix(hash ^ mix((before as u64).wrapping_add(k as u64 + 1)));
            novel += u16::from(!memory.seen_then_store(hash));
        }
        self.context.push_back(bin);
        if self.context.len() > options.order {
            self.context.pop_front();
        }
        self.recent.push_back(novel);
        self.recent_sum += u64::from(novel);
        if self.recent.len() > options.short.max(1) {
            self.recent_sum -= u64::from(self.recent.pop_front().unwrap_or(0));
        }
        let count = self.recent_sum;
        let (mean, sd) = judged(self.sum, self.sum_sq, self.history.len(), options.short);
        let z = (count as f64 - mean) / sd;
        if record {
            let stored = count.min(u64::from(u16::MAX)) as u16;
            self.history.push_back(stored);
            self.sum += u64::from(stored);
            self.sum_sq += u64::from(stored) * u64::from(stored);
            if self.history.len() > options.long {
                let old = u64::from(self.history.pop_front().unwrap_or(0));
                self.sum -= old;
                self.sum_sq -= old * old;
            }
        }
        z
    }
}

/// Sequence novelty with an anomaly likelihood, for one single-sensor stream.
#[derive(Debug, Clone)]
pub struct SequenceDetector {
    options: SequenceOptions,
    scales: Vec<Scale>,
    memory: Memory,
    /// A sensor stuck on one value far longer than it ever was in the fit crosses by itself,
    /// as in the adaptive detector: a stuck value is a sequence the memory may well know.
    flatline: FlatLine,
    debounce: Debounce,
}

impl SequenceDetector {
    /// Fits on `rows` (one value per reading, in time order): the bins' widths from their
    /// range, then every row is learnt; the novelty of the second half's rows starts the
    /// history (the first half's is the memory filling up).
    pub fn fit(
        rows: &[f32],
        n_features: usize,
        options: &SequenceOptions,
    ) -> Result<Self, TrainError> {
        if n_features != 1 {
            return Err(TrainError::Width {
                expected: 1,
                got: n_features,
            });
        }
        let finite: Vec<f64> = rows
            .iter()
            .filter(|v| v.is_finite())
            .map(|&v| f64::from(v))
            .collect();
        if finite.len() < 2 {
            return Err(TrainError::TooFewRows { needed: 2 });
        }
        let range = middle_range(&finite);
        let scales = options
            .scales()
            .enumerate()
            .map(|(i, bins)| {
                let (origin, width) = bin_edges(range, bins);
                Scale {
                    origin,
                    width,
                    context: VecDeque::with_capacity(options.order + 1),
                    recent: VecDeque::with_capacity(options.short + 1),
                    recent_sum: 0,
                    history: VecDeque::with_capacity(options.long + 1),
                    sum: 0,
                    sum_sq: 0,
                    salt: mix(0x5eed + i as u64),
                }
            })
            .collect();
        let mut detector = SequenceDetector {
            options: options.clone(),
            scales,
            memory: Memory::new(options.memory_bits.clamp(10, 24)),
            flatline: FlatLine::fit(rows, 1, options.short),
            debounce: Debounce::new(options.debounce),
        };
        for (i, &value) in rows.iter().enumerate() {
            detector.score(value, 2 * i >= rows.len());
        }
        Ok(detector)
    }

    /// Learns `value`; its score is the largest z over the scales.
    fn score(&mut self, value: f32, record: bool) -> f64 {
        let mut z = f64::NEG_INFINITY;
        for scale in &mut self.scales {
            z = z.max(scale.step(value, &mut self.memory, &self.options, record));
        }
        z
    }

    /// Whether the alarm is up after the last reading.
    pub fn alarm(&self) -> bool {
        self.debounce.alarm()
    }

    /// An operator says the present is normal: the alarm falls. What the memory holds stays
    /// (it has learnt the present already).
    pub fn rebaseline(&mut self) {
        self.debounce.reset();
    }
}

/// The 1 % and 99 % quantiles of `values` (not empty).
fn middle_range(values: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at =
        |q: f64| sorted[((q * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)];
    (at(0.01), at(0.99))
}

/// Bin 0's lower edge and the bins' width: `bins` bins across `(lo, hi)`; a range of zero (a
/// constant stream) gets a width of 0.1 % of its level (or 1e-6).
fn bin_edges((lo, hi): (f64, f64), bins: usize) -> (f64, f64) {
    let width = if hi > lo {
        (hi - lo) / bins as f64
    } else {
        (lo.abs() * 1e-3).max(1e-6)
    };
    (lo, width)
}

impl StreamDetector for SequenceDetector {
    fn step(&mut self, reading: &[f32]) -> Step {
        let value = reading.first().copied().unwrap_or(f32::NAN);
        let mut z = self.score(value, true);
        let threshold = self.options.threshold;
        if self.flatline.push(&[value]).is_some() {
            z = z.max(10.0 * threshold);
        }
        Step::debounced(z, threshold, self.debounce.step(z > threshold))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_judging_variance_is_never_below_a_poisson_count_with_one_more_novelty() {
        // A perfectly regular history: mean 0, variance 0.
        let (mean, sd) = judged(0, 0, 1000, 10);
        assert_eq!(mean, 0.0);
        assert!((sd - (10.0f64 / 1000.0).sqrt()).abs() < 1e-12);
        // A noisy one keeps its own variance.
        let (mean, sd) = judged(2000, 2000 * 2 + 1000 * 9, 1000, 10);
        assert!((mean - 2.0).abs() < 1e-12);
        assert!((sd - 3.0).abs() < 1e-9);
    }

    #[test]
    fn bins_span_the_middle_of_the_range_and_a_constant_stream_gets_a_small_width() {
        let values: Vec<f64> = (0..=100).map(f64::from).collect();
        let (origin, width) = bin_edges(middle_range(&values), 8);
        assert_eq!(origin, 1.0);
        assert!((width - 98.0 / 8.0).abs() < 1e-12);
        let (origin, width) = bin_edges(middle_range(&[5.0; 10]), 8);
        assert_eq!(origin, 5.0);
        assert!((width - 5e-3).abs() < 1e-12);
    }

    #[test]
    fn the_memory_answers_seen_only_for_what_was_stored_and_forgets_after_two_generations() {
        let mut memory = Memory::new(10);
        assert!(!memory.seen_then_store(mix(1)));
        assert!(memory.seen_then_store(mix(1)));
        // Store other sequences until the memory has turned over twice: 1 is remembered
        // through the first turn (it is in the previous generation), forgotten after the second.
        let mut turns = 0;
        let mut next = 2u64;
        while turns < 2 {
            let before = memory.set;
            memory.seen_then_store(mix(next << 20));
            next += 1;
            if memory.set < before {
                turns += 1;
                if turns == 1 {
                    let index = (mix(1) >> 54) as usize;
                    assert!(memory.previous[index / 64] & (1 << (index % 64)) != 0);
                }
            }
        }
        let index = (mix(1) >> 54) as usize;
        let remembered =
            (memory.current[index / 64] | memory.previous[index / 64]) & (1 << (index % 64)) != 0;
        // Unless a later sequence happened to share its bit.
        let shared = (2..next).any(|i| (mix(i << 20) >> 54) as usize == index);
        assert!(!remembered || shared);
    }

    fn seasonal(n: usize, period: usize, seed: u64) -> Vec<f32> {
        let mut rng = vigil_models::rng::XorShift::new(seed);
        (0..n)
            .map(|i| {
                let phase = std::f64::consts::TAU * (i % period) as f64 / period as f64;
                (10.0 + 5.0 * phase.sin()) as f32 + 0.2 * (rng.next_unit() - 0.5)
            })
            .collect()
    }

    /// Alarm rises in `steps`.
    fn rises(steps: &[Step]) -> usize {
        steps
            .windows(2)
            .filter(|w| w[1].alarm && !w[0].alarm)
            .count()
            + usize::from(steps.first().is_some_and(|s| s.alarm))
    }

    #[test]
    fn seasonal_streams_stay_quiet_and_injected_anomalies_within_their_range_alarm() {
        let period = 100;
        for seed in 1..=5 {
            let values = seasonal(7000, period, seed);
            let options = SequenceOptions::default();
            let mut detector = SequenceDetector::fit(&values[..750], 1, &options).expect("fits");
            let quiet: Vec<Step> = values[750..5000]
                .iter()
                .map(|&v| detector.step(&[v]))
                .collect();
            assert!(
                rises(&quiet) <= 1,
                "seed {seed}: {} alarms on the rhythm alone",
                rises(&quiet)
            );
            // Off rhythm, within the usual range: a drop from the top of the swing to its
            // bottom for three readings; later a swing that stops at its middle for a period
            // (a stuck sensor).
            let mut injected = values[5000..7000].to_vec();
            for v in &mut injected[25..28] {
                *v = 5.0;
            }
            for v in &mut injected[1000..1100] {
                *v = 10.0;
            }
            let steps: Vec<Step> = injected.iter().map(|&v| detector.step(&[v])).collect();
            let raised_in = |from: usize, to: usize| {
                (from..to).any(|i| steps[i].alarm && (i == 0 || !steps[i - 1].alarm))
            };
            assert!(
                raised_in(25, 45),
                "seed {seed}: the dip is caught within 20 readings"
            );
            assert!(
                raised_in(1000, 1060),
                "seed {seed}: the stuck swing is caught"
            );
            assert_eq!(rises(&steps), 2, "seed {seed}: nothing else alarms");
        }
    }
}
