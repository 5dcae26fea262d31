//! `vigil synth`: recordings of the synthetic machine ([`vigil_datasets::synthetic`]) in
//! SKAB's layout, so that `vigil eval`, `vigil train` and `vigil replay` run on a machine no
//! default was chosen on, with every fault labelled.

use std::path::PathBuf;

use anyhow::Context;
use vigil_datasets::skab::write_skab;
use vigil_datasets::synthetic::{generate, MachineSpec};

/// Arguments of `vigil synth`.
#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// The directory to write `machine-SEED.csv` files to (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// How many machines, seeded `--seed`, `--seed + 1`, …
    #[arg(long, default_value_t = 4)]
    pub machines: u64,
    /// The first machine's seed (the same seed writes the same file, byte for byte).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Sensors per machine.
    #[arg(long, default_value_t = 6)]
    pub sensors: usize,
    /// Readings per machine, one a second.
    #[arg(long, default_value_t = 6000)]
    pub rows: usize,
    /// Fault-free readings at the start.
    #[arg(long, default_value_t = 600)]
    pub warm_up: usize,
    /// Faults per machine (spike, step, drift, stuck, oscillation in turn; fewer if they do
    /// not fit).
    #[arg(long, default_value_t = 10)]
    pub faults: usize,
    /// Each sensor's normal drift over the whole recording, in units of its noise.
    #[arg(long, default_value_t = 6.0)]
    pub drift: f64,
}

pub(crate) fn synth(args: SynthArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=10_000).contains(&args.machines)
            && (1..=256).contains(&args.sensors)
            && (1..=10_000_000).contains(&args.rows)
            && args.drift.is_finite(),
        "synth needs 1–10,000 machines of 1–256 sensors, 1–10,000,000 rows and a finite drift"
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    for seed in args.seed..args.seed + args.machines {
        let machine = generate(&MachineSpec {
            sensors: args.sensors,
            rows: args.rows,
            period_s: 1.0,
            warm_up: args.warm_up,
            faults: args.faults,
            drift: args.drift,
            seed,
        });
        let path = args.out.join(format!("machine-{seed}.csv"));
        write_skab(&path, &machine.table)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!(
            "{}: {} rows, {} faults",
            path.display(),
            machine.table.n_rows(),
            machine.faults.len()
        );
    }
    Ok(())
}
