//! A synthetic multi-sensor machine with labelled faults, for tests and for owners who want to
//! see a detector work before they have recorded data of their own.
//!
//! The machine has a hidden load that follows a slow cycle plus a random walk; every sensor
//! reads an offset and a gain of that load, its own autocorrelated noise, and a slow drift of
//! its own (the ageing, warming and fouling that make a frozen detector alarm on a healthy
//! machine). After a fault-free warm-up, faults are injected one at a time, never overlapping,
//! each on one sensor:
//!
//! - **spike**: a few readings far off the sensor's value;
//! - **step**: the sensor's level jumps and stays there;
//! - **drift**: the level runs away linearly, far faster than the normal drift;
//! - **stuck**: the sensor repeats its last value;
//! - **oscillation**: a fast oscillation is added to the signal.
//!
//! Fault sizes are multiples of the sensor's normal spread over the warm-up (spike 8, step 5,
//! drift running to 10, oscillation amplitude 2).
//!
//! Every reading inside a fault is labelled `anomaly = 1`; the first reading of a fault and the
//! first after it carry `changepoint = 1` (SKAB's convention). The same seed gives the same
//! machine, bit for bit (ChaCha8).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::skab::SkabFile;

/// The kinds of fault the generator injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    Spike,
    Step,
    Drift,
    Stuck,
    Oscillation,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] = [
        FaultKind::Spike,
        FaultKind::Step,
        FaultKind::Drift,
        FaultKind::Stuck,
        FaultKind::Oscillation,
    ];
}

/// One injected fault.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Fault {
    pub kind: FaultKind,
    pub sensor: usize,
    /// First reading of the fault.
    pub start: usize,
    /// Readings it lasts.
    pub len: usize,
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineSpec {
    pub sensors: usize,
    pub rows: usize,
    /// Seconds between readings.
    pub period_s: f64,
    /// Readings at the start that are always fault-free (where a detector is fitted).
    pub warm_up: usize,
    /// Faults to inject (fewer if they do not fit).
    pub faults: usize,
    /// Normal drift of each sensor over the whole run, in units of its noise.
    pub drift: f64,
    pub seed: u64,
}

impl Default for MachineSpec {
    fn default() -> Self {
        MachineSpec {
            sensors: 6,
            rows: 6000,
            period_s: 1.0,
            warm_up: 600,
            faults: 10,
            drift: 6.0,
            seed: 1,
        }
    }
}

/// A generated recording: the readings as a table (labels included) and the faults.
#[derive(Debug, Clone)]
pub struct Machine {
    pub table: SkabFile,
    pub faults: Vec<Fault>,
}

/// Generates a recording. Timestamps start at 2026-01-01T00:00:00Z.
pub fn generate(spec: &MachineSpec) -> Machine {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let n = spec.sensors.max(1);
    let rows = spec.rows;
    let unit = Normal::new(0.0f64, 1.0).expect("a unit normal");

    // The hidden load: a duty cycle (5 min) plus a bounded random walk.
    let mut load = Vec::with_capacity(rows);
    let mut walk = 0.0f64;
    for t in 0..rows {
        walk = 0.995 * walk + 0.05 * unit.sample(&mut rng);
        let seconds = t as f64 * spec.period_s;
        load.push((seconds * std::f64::consts::TAU / 300.0).sin() + walk);
    }
    // Per sensor: offset, gain on the load, noise level, AR(1) noise, drift direction.
    let sensors: Vec<(f64, f64, f64, f64)> = (0..n)
        .map(|_| {
            let offset = rng.random_range(10.0..100.0);
            let gain = rng.random_range(0.5..3.0) * if rng.random_bool(0.5) { 1.0 } else { -1.0 };
            let noise = rng.random_range(0.1..0.4);
            let direction = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
            (offset, gain, noise, direction)
        })
        .collect();
    let mut values = vec![0.0f32; rows * n];
    let mut ar = vec![0.0f64; n];
    for t in 0..rows {
        let progress = t as f64 / rows.max(1) as f64;
        for (s, &(offset, gain, noise, direction)) in sensors.iter().enumerate() {
            ar[s] = 0.7 * ar[s] + noise * unit.sample(&mut rng);
            let drift = direction * spec.drift * noise * progress;
            values[t * n + s] = (offset + gain * load[t] + ar[s] + drift) as f32;
        }
    }

    // Fault sizes are in units of each sensor's normal spread (its standard deviation over
    // the warm-up): what an operator looking at that sensor would call large.
    let warm = spec.warm_up.clamp(2, rows.max(2)).min(rows);
    let spread: Vec<f64> = (0..n)
        .map(|s| {
            let column = (0..warm).map(|t| values[t * n + s] as f64);
            let mean = column.clone().sum::<f64>() / warm as f64;
            (column.map(|x| (x - mean).powi(2)).sum::<f64>() / warm as f64).sqrt()
        })
        .collect();
    // Faults: one at a time after the warm-up, with normal gaps between them.
    let mut anomaly = vec![0u8; rows];
    let mut changepoint = vec![0u8; rows];
    let mut faults = Vec::new();
    let mut cursor = spec.warm_up.min(rows);
    for i in 0..spec.faults {
        let gap = rng.random_range(150..400);
        let kind = FaultKind::ALL[i % FaultKind::ALL.len()];
        let len = match kind {
            FaultKind::Spike => rng.random_range(1..4),
            _ => rng.random_range(60..240),
        };
        let start = cursor + gap;
        if start + len + 1 >= rows {
            break;
        }
        let sensor = rng.random_range(0..n);
        let sd = spread[sensor];
        let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
        let stuck_at = values[(start - 1) * n + sensor];
        for k in 0..len {
            let v = &mut values[(start + k) * n + sensor];
            let shift = match kind {
                FaultKind::Spike => sign * 8.0 * sd,
                FaultKind::Step => sign * 5.0 * sd,
                FaultKind::Drift => sign * 10.0 * sd * (k + 1) as f64 / len as f64,
                FaultKind::Stuck => {
                    *v = stuck_at;
                    0.0
                }
                FaultKind::Oscillation => 3.0 * sd * (k as f64 * std::f64::consts::TAU / 6.0).sin(),
            };
            *v += shift as f32;
            anomaly[start + k] = 1;
        }
        changepoint[start] = 1;
        changepoint[start + len] = 1;
        faults.push(Fault {
            kind,
            sensor,
            start,
            len,
        });
        cursor = start + len;
    }

    const START_NS: i64 = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z
    let step_ns = (spec.period_s * 1e9).round() as i64;
    Machine {
        table: SkabFile {
            features: (0..n).map(|s| format!("sensor{}", s + 1)).collect(),
            timestamps_ns: (0..rows as i64).map(|t| START_NS + t * step_ns).collect(),
            clock_steps: 0,
            values,
            anomaly: Some(anomaly),
            changepoint: Some(changepoint),
        },
        faults,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_gives_one_machine_and_the_labels_cover_the_faults() {
        let spec = MachineSpec::default();
        let a = generate(&spec);
        let b = generate(&spec);
        assert_eq!(a.table.values, b.table.values);
        assert_eq!(a.faults, b.faults);
        let c = generate(&MachineSpec {
            seed: 2,
            ..spec.clone()
        });
        assert_ne!(a.table.values, c.table.values);

        let anomaly = a.table.anomaly.as_ref().unwrap();
        assert!(a.faults.len() >= 5, "only {} faults", a.faults.len());
        let kinds: std::collections::HashSet<_> = a.faults.iter().map(|f| f.kind).collect();
        assert_eq!(kinds.len(), 5, "every kind of fault appears");
        let labelled: usize = anomaly.iter().map(|&x| x as usize).sum();
        assert_eq!(labelled, a.faults.iter().map(|f| f.len).sum::<usize>());
        assert!(anomaly[..spec.warm_up].iter().all(|&x| x == 0));
        for f in &a.faults {
            assert_eq!(a.table.changepoint.as_ref().unwrap()[f.start], 1);
        }
        assert!(a.table.values.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn a_stuck_sensor_repeats_its_value() {
        let m = generate(&MachineSpec::default());
        let stuck = m
            .faults
            .iter()
            .find(|f| f.kind == FaultKind::Stuck)
            .unwrap();
        let n = m.table.features.len();
        let first = m.table.values[stuck.start * n + stuck.sensor];
        for k in 0..stuck.len {
            assert_eq!(m.table.values[(stuck.start + k) * n + stuck.sensor], first);
        }
    }
}
