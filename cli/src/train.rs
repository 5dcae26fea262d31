//! `vigil train`: fit an autoencoder on recorded data and write a verified package.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use vigil_datasets::skab::{read_csv, read_skab, CsvSpec, Label, SkabFile};
use vigil_datasets::window::normal_runs;
use vigil_models::{FeatureSchema, ModelSpec, PackageBuilder};
use vigil_trainer::{fit, FitOptions, ThresholdMethod, TrainingData};

/// The layout of the training data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `;`-separated, a `datetime` column, sensors, optional `anomaly`/`changepoint` labels.
    Skab,
    /// `timestamp,value`, labels from the `windows.json` of the NAB data directory.
    Nab,
    /// Any delimited file: choose the timestamp, feature and label columns.
    Csv,
}

/// The architectures `vigil train` packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PackagedModel {
    /// Dense autoencoder over `--window` readings (default 1).
    Dense,
    /// 1-D convolutional autoencoder over `--window` readings (default 30).
    Conv,
}

/// How the threshold is calibrated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ThresholdKind {
    /// Peaks over threshold: a generalised Pareto tail, exceeded with probability --risk.
    Pot,
    /// The --quantile quantile of held-out normal scores.
    Quantile,
}

/// Arguments of `vigil train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// A data file, or a directory whose data files (searched recursively, in name order) are
    /// all used. Rows labelled anomalous are left out; windows never span them.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, value_enum)]
    pub format: Format,
    /// The detector the package is for.
    #[arg(long)]
    pub detector: String,
    /// Output directory (created; must not hold a package already).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = PackagedModel::Dense)]
    pub model: PackagedModel,
    /// Readings per model input [default: dense 1, conv 30].
    #[arg(long)]
    pub window: Option<usize>,
    /// Use only the first N rows of each file (SKAB's protocol fits on 400).
    #[arg(long)]
    pub rows: Option<usize>,
    /// The version name [default: the current UTC time].
    #[arg(long)]
    pub version: Option<String>,
    #[arg(long, default_value_t = 60)]
    pub max_epochs: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// How the threshold is calibrated (`vigil package --threshold` takes a number instead:
    /// there the threshold is given, here it is fitted).
    #[arg(long, value_enum, default_value_t = ThresholdKind::Pot)]
    pub threshold_method: ThresholdKind,
    /// POT: probability that a normal score exceeds the threshold.
    #[arg(long, default_value_t = 1e-3)]
    pub risk: f64,
    /// Quantile method: the quantile.
    #[arg(long, default_value_t = 0.995)]
    pub quantile: f64,
    /// Debouncing K,N,HOLD or K,N,HOLD,CLEAR recorded with the threshold (rise on K
    /// crossings in N readings, fall after HOLD quiet ones; back to normal after CLEAR).
    #[arg(long, value_delimiter = ',')]
    pub debounce: Option<Vec<usize>>,
    /// Sign the written package with this private key (from `vigil keygen`).
    #[arg(long)]
    pub sign_key: Option<PathBuf>,
    #[command(flatten)]
    pub csv: CsvArgs,
}

/// The columns of a generic CSV file (`--format csv`).
#[derive(Debug, clap::Args)]
pub struct CsvArgs {
    /// CSV: the field delimiter.
    #[arg(long, default_value = ",")]
    pub delimiter: char,
    /// CSV: the timestamp column.
    #[arg(long, default_value = "timestamp")]
    pub timestamp: String,
    /// CSV: feature columns, comma-separated [default: every other column].
    #[arg(long, value_delimiter = ',')]
    pub features: Option<Vec<String>>,
    /// CSV: a 0/1 column marking anomalous rows [eval: default `anomaly`].
    #[arg(long)]
    pub label: Option<String>,
    /// CSV: a 0/1 column marking changepoints [eval: default the label's rises and falls].
    #[arg(long)]
    pub changepoint: Option<String>,
}

impl CsvArgs {
    /// The spec `read_csv` takes; `label` names the anomaly column when `--label` does not.
    pub fn spec(&self, label: Option<&str>) -> anyhow::Result<CsvSpec> {
        let delimiter = u8::try_from(self.delimiter)
            .ok()
            .filter(u8::is_ascii)
            .context("the delimiter must be one ASCII character")?;
        let anomaly = self.label.as_deref().or(label);
        Ok(CsvSpec {
            delimiter,
            timestamp: self.timestamp.clone(),
            features: self.features.clone(),
            anomaly: anomaly.map_or(Label::Absent, |l| Label::Required(l.to_owned())),
            changepoint: self
                .changepoint
                .clone()
                .map_or(Label::Absent, Label::Required),
        })
    }
}

/// Rows of every file, appended, and the normal runs within them.
struct Loaded {
    features: Vec<String>,
    readings: Vec<f32>,
    runs: Vec<Range<usize>>,
    anomalous: Vec<Range<usize>>,
    files: Vec<String>,
}

pub(super) fn train(args: TrainArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        vigil_models::package::is_valid_name(&args.detector),
        "the detector name must be 1–64 characters of A–Z a–z 0–9 . _ -"
    );
    anyhow::ensure!(
        !args.out.join(vigil_models::MANIFEST_FILE).exists(),
        "{} already holds a package",
        args.out.display()
    );
    let sign_key = match &args.sign_key {
        Some(path) => Some(vigil_models::signature::read_private(path)?),
        None => None,
    };
    let loaded = load(&args)?;
    let (model, window) = match args.model {
        PackagedModel::Dense => {
            let window = args.window.unwrap_or(1);
            let hidden = vigil_trainer::default_dense_hidden(window * loaded.features.len());
            (ModelSpec::DenseAutoencoder { hidden }, window)
        }
        PackagedModel::Conv => (
            ModelSpec::ConvAutoencoder {
                channels: vec![16, 8, 16],
                kernel: 5,
            },
            args.window.unwrap_or(30),
        ),
    };
    let schema = FeatureSchema::new(loaded.features.clone(), window);
    schema.validate().map_err(|e| anyhow::anyhow!(e))?;
    let debounce = args
        .debounce
        .as_deref()
        .map(super::parse_debounce)
        .transpose()?;
    let options = FitOptions {
        model,
        max_epochs: args.max_epochs,
        threshold: match args.threshold_method {
            ThresholdKind::Pot => ThresholdMethod::Pot {
                initial_quantile: 0.98,
                risk: args.risk,
            },
            ThresholdKind::Quantile => ThresholdMethod::Quantile {
                quantile: args.quantile,
            },
        },
        debounce,
        seed: args.seed,
        ..FitOptions::default()
    };
    let provenance = serde_json::json!({
        "data": args.data.display().to_string(),
        "format": format!("{:?}", args.format).to_lowercase(),
        "files": loaded.files,
        "rows_per_file": args.rows,
        "normal_readings": loaded.runs.iter().map(|r| r.len()).sum::<usize>(),
        "host": hostname(),
    });
    let version = args
        .version
        .clone()
        .unwrap_or_else(PackageBuilder::timestamp_version);

    let bar = ProgressBar::new(options.max_epochs as u64);
    bar.set_style(
        ProgressStyle::with_template("training [{bar:30}] epoch {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    // Ctrl-C cancels between mini-batches, leaving nothing half-written.
    let cancel = Arc::new(AtomicBool::new(false));
    if let Err(err) = cancel_on_ctrl_c(Arc::clone(&cancel)) {
        tracing::warn!(%err, "Ctrl-C will not cancel training");
    }
    let fitted = fit(
        &args.detector,
        &version,
        &schema,
        TrainingData {
            readings: &loaded.readings,
            runs: &loaded.runs,
            anomalous: &loaded.anomalous,
        },
        &options,
        provenance,
        &cancel,
        &mut |epoch| {
            bar.set_position(epoch.epoch as u64);
            bar.set_message(match epoch.validation_loss {
                Some(v) => format!("loss {:.4}, validation {:.4}", epoch.train_loss, v),
                None => format!("loss {:.4}", epoch.train_loss),
            });
        },
    )
    .context("training failed")?;
    bar.finish_and_clear();
    vigil_models::package::write_dir(&args.out, &fitted.package.manifest, &fitted.package.weights)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    // What was written must verify from disk, exactly as the server will load it.
    let reloaded = vigil_models::LoadedPackage::load(&args.out)
        .map_err(|e| anyhow::anyhow!("the written package does not verify: {e}"))?;
    if let Some(key) = &sign_key {
        vigil_models::signature::sign_dir(&args.out, key)
            .with_context(|| format!("cannot sign {}", args.out.display()))?;
        println!(
            "signed with key {}",
            vigil_models::signature::key_id(&key.verifying_key())
        );
    }
    let r = &fitted.report;
    println!(
        "wrote {} to {}",
        reloaded.manifest().id(),
        args.out.display()
    );
    println!(
        "{} {}: {} training windows, {} validation windows; {} epochs (best {}{}); threshold {:.6} ({}, on {} windows, {:.2} % of them above)",
        reloaded.manifest().model.kind(),
        reloaded.manifest().id(),
        r.train_windows,
        r.validation_windows,
        r.epochs_run,
        r.best_epoch,
        if r.stopped_early { ", stopped early" } else { "" },
        r.threshold,
        reloaded.manifest().threshold.method,
        r.calibrated_on,
        100.0 * r.calibration_alarm_rate
    );
    if let Some(detected) = r.anomalous_detected {
        println!(
            "windows labelled anomalous in the data: {:.1} % above the threshold",
            100.0 * detected
        );
    }
    Ok(())
}

/// Sets `flag` on Ctrl-C (SIGINT), from a watcher thread with its own small runtime.
fn cancel_on_ctrl_c(flag: Arc<AtomicBool>) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("vigil-ctrlc".into())
        .spawn(move || {
            runtime.block_on(async {
                if tokio::signal::ctrl_c().await.is_ok() {
                    flag.store(true, std::sync::atomic::Ordering::Relaxed);
                    eprintln!("cancelling…");
                }
            })
        })?;
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

fn load(args: &TrainArgs) -> anyhow::Result<Loaded> {
    let files = data_files(&args.data)?;
    anyhow::ensure!(
        !files.is_empty(),
        "no data files under {}",
        args.data.display()
    );
    let mut loaded = Loaded {
        features: Vec::new(),
        readings: Vec::new(),
        runs: Vec::new(),
        anomalous: Vec::new(),
        files: Vec::new(),
    };
    for path in &files {
        let (table, labels) = read_one(path, args)?;
        if loaded.files.is_empty() {
            loaded.features = table.features.clone();
        } else {
            anyhow::ensure!(
                table.features == loaded.features,
                "{} has features {:?}, the first file {:?}",
                path.display(),
                table.features,
                loaded.features
            );
        }
        let n = args.rows.unwrap_or(usize::MAX).min(table.n_rows());
        let offset = loaded.readings.len() / table.features.len().max(1);
        let labels = labels.as_deref().map(|l| &l[..n]);
        loaded.runs.extend(
            normal_runs(n, labels, 2)
                .into_iter()
                .map(|r| r.start + offset..r.end + offset),
        );
        if let Some(labels) = labels {
            let flipped: Vec<u8> = labels.iter().map(|&l| u8::from(l == 0)).collect();
            loaded.anomalous.extend(
                normal_runs(n, Some(&flipped), 1)
                    .into_iter()
                    .map(|r| r.start + offset..r.end + offset),
            );
        }
        loaded
            .readings
            .extend_from_slice(&table.values[..n * table.features.len()]);
        loaded.files.push(path.display().to_string());
    }
    Ok(loaded)
}

fn read_one(path: &Path, args: &TrainArgs) -> anyhow::Result<(SkabFile, Option<Vec<u8>>)> {
    let read = read_table(path, args)?;
    super::warn_clock_steps(path, read.0.clock_steps);
    Ok(read)
}

fn read_table(path: &Path, args: &TrainArgs) -> anyhow::Result<(SkabFile, Option<Vec<u8>>)> {
    Ok(match args.format {
        Format::Skab => {
            let table = read_skab(path)?;
            let labels = table.anomaly.clone();
            (table, labels)
        }
        Format::Csv => {
            let table = read_csv(path, &args.csv.spec(None)?)?;
            let labels = table.anomaly.clone();
            (table, labels)
        }
        Format::Nab => {
            // windows.json sits in the data directory above the series' folder.
            let root = path
                .ancestors()
                .skip(1)
                .find(|dir| dir.join("windows.json").is_file())
                .with_context(|| format!("no windows.json above {}", path.display()))?;
            let relative = path
                .strip_prefix(root)
                .unwrap_or(path)
                .to_string_lossy()
                .replace('\\', "/");
            let series = vigil_datasets::nab::read_nab(root, &relative)?;
            let labels = Some(series.labels.clone());
            (
                SkabFile {
                    features: vec!["value".into()],
                    timestamps_ns: series.timestamps_ns,
                    values: series.values,
                    anomaly: None,
                    changepoint: None,
                    clock_steps: series.clock_steps,
                },
                labels,
            )
        }
    })
}

/// The data files: the path itself, or every `.csv` under it in name order.
fn data_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
        {
            let entry = entry?;
            let p = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "csv") {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok(files)
}
