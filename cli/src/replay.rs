//! `vigil replay`: plays recorded SKAB-layout files through a running server, row by row and in
//! order, as the machine's device app would have sent them — optionally fitting the first model
//! on each file's first rows, feeding labels back as they become known and fine-tuning on the
//! box as it goes — and measures what the server answered with the same metrics as `vigil eval`.
//!
//! Without `--url` it starts a `vigil serve` of its own on 127.0.0.1 with a temporary data
//! directory. Each file gets its own detector (`PREFIX-<path>`), so runs never mix.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use vigil_datasets::metrics::{long_run, round2};
use vigil_datasets::skab::{labelled_files, read_skab, SkabFile};
use vigil_models::FeatureSchema;
use vigil_trainer::eval::{write_predictions, FileRun, Predictions, SkabRun};
use vigil_trainer::{default_dense_hidden, fit, FitOptions, TrainingData};

use crate::local::{Api, LocalServer};

/// Arguments of `vigil replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// A `;`-separated SKAB-layout file, or a directory whose labelled files (as `vigil eval`
    /// picks them: recursively, in name order) are each replayed into a detector of their own.
    #[arg(long)]
    pub data: PathBuf,
    /// A running server [default: start one on 127.0.0.1 with a temporary data directory].
    #[arg(long)]
    pub url: Option<String>,
    /// The admin token of the server at --url.
    #[arg(long, env = "VIGIL_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Detector names are `PREFIX-<file path>`; they must not exist yet.
    #[arg(long, default_value = "replay")]
    pub prefix: String,
    /// What serves: `auto` (as the server picks, and as `vigil eval` defaults to: the
    /// sequence detector for one sensor, adaptive window statistics for several), `adaptive`
    /// or `sequence`, the server's own statistical detector, which fits itself on each file's
    /// first --fit-rows rows; or `dense`, an autoencoder fitted here on those rows and uploaded.
    #[arg(long, value_enum, default_value_t = ReplayModel::Auto)]
    pub model: ReplayModel,
    /// The first N rows of each file (labels unused) are what the model is fitted on; they are
    /// sent first, unmeasured, and the rows after them are measured. 0 with `dense`: no model
    /// is uploaded and the statistical detector serves until the box trains one.
    #[arg(long, default_value_t = 400)]
    pub fit_rows: usize,
    /// Fine-tune on the box after every N replayed rows: request a run and wait for its
    /// decision before going on (deterministic). Without it (and without automatic training
    /// in --options) the weights stay as uploaded.
    #[arg(long)]
    pub train_every: Option<usize>,
    /// The detectors' options as JSON (as in `PUT /v1/detectors/{name}`), for example
    /// '{"training": {"after_observations": 500}, "alarm": {"k": 3, "n": 5, "hold": 10}}'.
    /// Unless it sets `training`, automatic training is off.
    #[arg(long)]
    pub options: Option<String>,
    /// Send each row's label (normal or anomaly) as feedback this many rows after it was scored.
    #[arg(long)]
    pub feedback_delay: Option<usize>,
    /// Readings per request.
    #[arg(long, default_value_t = 10)]
    pub batch: usize,
    /// Rows sent per second (0: as fast as the server answers).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Write every file's predictions here (`datetime,anomaly,changepoint,score`).
    #[arg(long)]
    pub predictions_out: Option<PathBuf>,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What serves during a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReplayModel {
    Auto,
    Dense,
    Adaptive,
    Sequence,
}

/// One file replayed: the rows scored and the training runs it caused.
struct Replayed {
    run: FileRun,
    labelled: bool,
    runs: Vec<Value>,
    /// Alarms the server ended by settling at a new level.
    settled: usize,
}

pub(super) fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch >= 1, "--batch must be at least 1");
    anyhow::ensure!(
        args.rate.is_finite() && args.rate >= 0.0,
        "--rate must be 0 or more"
    );
    anyhow::ensure!(
        args.train_every != Some(0),
        "--train-every must be positive"
    );
    let mut options: Value = match &args.options {
        Some(text) => serde_json::from_str(text).context("--options is not JSON")?,
        None => json!({}),
    };
    anyhow::ensure!(options.is_object(), "--options must be a JSON object");
    if options.get("training").is_none() {
        options["training"] = json!({ "enabled": false });
    }
    if let Some(kind) = match args.model {
        ReplayModel::Dense => None,
        ReplayModel::Auto => Some("auto"),
        ReplayModel::Adaptive => Some("adaptive"),
        ReplayModel::Sequence => Some("sequence"),
    } {
        anyhow::ensure!(args.fit_rows > 0, "--model {kind} needs --fit-rows");
        let stat = options
            .as_object_mut()
            .expect("checked above")
            .entry("statistical")
            .or_insert_with(|| json!({}));
        anyhow::ensure!(stat.is_object(), "statistical options must be an object");
        stat["kind"] = json!(kind);
        stat["fit_rows"] = json!(args.fit_rows);
    }
    let (files, root) = if args.data.is_dir() {
        let files = labelled_files(&args.data)
            .with_context(|| format!("cannot list {}", args.data.display()))?;
        anyhow::ensure!(
            !files.is_empty(),
            "no data files under {}",
            args.data.display()
        );
        (files, args.data.clone())
    } else {
        let name = args.data.file_name().context("--data names no file")?;
        let parent = args.data.parent().unwrap_or(Path::new("."));
        (vec![PathBuf::from(name)], parent.to_owned())
    };
    let local;
    let api = match &args.url {
        Some(url) => Api::new(url, args.token.clone()),
        None => {
            local = LocalServer::start(&[])?;
            local.api()
        }
    };
    api.wait_ready(Duration::from_secs(30))?;
    let started = Instant::now();
    let mut replayed = Vec::new();
    for relative in &files {
        let file = read_skab(&root.join(relative))?;
        super::warn_clock_steps(relative, file.clock_steps);
        let name = detector_name(&args.prefix, relative);
        let one = replay_file(&api, &args, &options, &name, relative, &file)
            .with_context(|| format!("replaying {}", relative.display()))?;
        if !args.json {
            eprintln!(
                "{}: {} rows, {} flagged, {} training runs",
                relative.display(),
                one.run.predicted.len(),
                one.run.predicted.iter().filter(|&&p| p == 1).count(),
                one.runs.len()
            );
        }
        replayed.push(one);
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(out) = &args.predictions_out {
        let runs: Vec<FileRun> = replayed.iter().map(|r| r.run.clone()).collect();
        write_predictions(out, &runs)?;
    }
    report(&args, &replayed, seconds);
    Ok(())
}

/// `PREFIX-valve1-3` for `valve1/3.csv`.
fn detector_name(prefix: &str, relative: &Path) -> String {
    let stem = relative.with_extension("");
    let path: String = stem
        .to_string_lossy()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = format!("{prefix}-{path}");
    name.chars().take(64).collect()
}

fn replay_file(
    api: &Api,
    args: &ReplayArgs,
    options: &Value,
    name: &str,
    relative: &Path,
    file: &SkabFile,
) -> anyhow::Result<Replayed> {
    let rows = file.n_rows();
    anyhow::ensure!(
        rows > args.fit_rows,
        "{rows} rows; --fit-rows {} leaves none to replay",
        args.fit_rows
    );
    let detector_path = format!("/v1/detectors/{name}");
    anyhow::ensure!(
        api.get(&detector_path).is_err(),
        "detector {name} exists already: choose another --prefix"
    );
    api.put_json(
        &detector_path,
        &json!({ "features": file.features, "options": options }),
    )?;
    if args.fit_rows > 0 && args.model == ReplayModel::Dense {
        let tar = fit_first_rows(name, relative, file, args.fit_rows)?;
        api.put_bytes(&format!("{detector_path}/versions"), &tar)?;
    }
    // The rows the first model was fitted on go through the server too (unmeasured), as the
    // box would have logged them: fine-tuning may learn from them, and the stream's state is warm.
    let scored = args.fit_rows..rows;
    for chunk_start in (0..args.fit_rows).step_by(args.batch) {
        let chunk = chunk_start..(chunk_start + args.batch).min(args.fit_rows);
        api.post(
            &format!("{detector_path}/score"),
            &json!({ "observations": observations(file, chunk) }),
        )?;
    }
    let mut predictions = Predictions::with_capacity(scored.len());
    let mut ids: Vec<i64> = Vec::with_capacity(scored.len());
    let mut fed_back = 0;
    let mut runs = Vec::new();
    let mut since_run = 0;
    let started = Instant::now();
    let mut sent = 0usize;
    let mut settled = 0usize;
    for chunk_start in scored.clone().step_by(args.batch) {
        let chunk = chunk_start..(chunk_start + args.batch).min(rows);
        if args.rate > 0.0 {
            let due = started + Duration::from_secs_f64(sent as f64 / args.rate);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let answer = api.post(
            &format!("{detector_path}/score"),
            &json!({ "observations": observations(file, chunk.clone()) }),
        )?;
        let results = answer["results"]
            .as_array()
            .context("the score answer has no results")?;
        anyhow::ensure!(
            results.len() == chunk.len(),
            "results do not match the rows"
        );
        for result in results {
            ids.push(result["id"].as_i64().context("a result has no id")?);
            settled += usize::from(result["settled"].as_bool() == Some(true));
            predictions.push(
                result["alarm"].as_bool() == Some(true),
                result["changepoint"].as_bool() == Some(true),
                result["score"].as_f64().unwrap_or(0.0),
            );
        }
        sent += chunk.len();
        since_run += chunk.len();

        if let (Some(delay), Some(labels)) = (args.feedback_delay, &file.anomaly) {
            let known = ids.len().saturating_sub(delay);
            if known > fed_back {
                let body: Vec<Value> = (fed_back..known)
                    .map(|k| {
                        let label = if labels[args.fit_rows + k] == 1 {
                            "anomaly"
                        } else {
                            "normal"
                        };
                        json!({ "id": ids[k], "label": label })
                    })
                    .collect();
                api.post(
                    &format!("{detector_path}/feedback"),
                    &json!({ "labels": body }),
                )?;
                fed_back = known;
            }
        }
        if let Some(every) = args.train_every {
            if since_run >= every {
                since_run = 0;
                runs.push(api.train_and_wait(name, Duration::from_secs(600))?);
            }
        }
    }
    if args.train_every.is_none() {
        // Automatic runs (--options) that happened meanwhile.
        if let Value::Array(listed) =
            api.get(&format!("{detector_path}/training-runs"))?["runs"].take()
        {
            runs = listed;
        }
    }
    Ok(Replayed {
        run: FileRun::new(file, relative, scored, predictions, 0),
        labelled: file.anomaly.is_some(),
        runs,
        settled,
    })
}

/// The score request body of rows `rows`.
fn observations(file: &SkabFile, rows: std::ops::Range<usize>) -> Vec<Value> {
    rows.map(|i| {
        json!({
            "stream": "replay",
            "ts": file.timestamps_ns[i] as f64 / 1e9,
            "features": file.row(i),
        })
    })
    .collect()
}

/// Fits the package `vigil train --rows N` would (dense autoencoder, default options) and
/// returns it as an upload archive.
fn fit_first_rows(
    name: &str,
    relative: &Path,
    file: &SkabFile,
    rows: usize,
) -> anyhow::Result<Vec<u8>> {
    let n = file.features.len();
    let schema = FeatureSchema::new(file.features.clone(), 1);
    let options = FitOptions {
        model: vigil_models::ModelSpec::DenseAutoencoder {
            hidden: default_dense_hidden(n),
        },
        ..FitOptions::default()
    };
    let fitted = fit(
        name,
        "replay-initial",
        &schema,
        TrainingData {
            readings: &file.values[..rows * n],
            runs: std::slice::from_ref(&(0..rows)),
            anomalous: &[],
        },
        &options,
        json!({ "data": relative.display().to_string(), "rows": rows, "source": "vigil replay" }),
        &AtomicBool::new(false),
        &mut |_| {},
    )?;
    Ok(vigil_models::package::archive(
        &fitted.package.manifest,
        &fitted.package.weights,
    ))
}

fn report(args: &ReplayArgs, replayed: &[Replayed], seconds: f64) {
    let labelled: Vec<FileRun> = replayed
        .iter()
        .filter(|r| r.labelled)
        .map(|r| r.run.clone())
        .collect();
    let unlabelled: Vec<u8> = replayed
        .iter()
        .filter(|r| !r.labelled)
        .flat_map(|r| r.run.predicted.iter().copied())
        .collect();
    let skab = (!labelled.is_empty()).then(|| SkabRun::score(labelled));
    let long = (!unlabelled.is_empty()).then(|| long_run(&unlabelled));
    let mut decisions = std::collections::BTreeMap::<String, usize>::new();
    let mut rejected = Vec::new();
    for run in replayed.iter().flat_map(|r| &r.runs) {
        let decision = run["decision"].as_str().unwrap_or("unknown").to_owned();
        if decision != "promoted" {
            rejected.push(json!({
                "detector": run["detector"],
                "decision": decision,
                "reason": run["reason"],
            }));
        }
        *decisions.entry(decision).or_default() += 1;
    }
    let rows: usize = replayed.iter().map(|r| r.run.predicted.len()).sum();
    let settled: usize = replayed.iter().map(|r| r.settled).sum();
    if args.json {
        let skab_json = skab.as_ref().map(super::eval::skab_json);
        let long_json = long.as_ref().map(|r| {
            json!({ "far": round2(r.far), "episodes": r.episodes, "rows": r.rows,
                    "longest_episode": r.longest_episode })
        });
        println!(
            "{}",
            json!({
                "files": replayed.len(),
                "rows": rows,
                "seconds": round2(seconds),
                "skab": skab_json,
                "long_run": long_json,
                "training_runs": decisions,
                "not_promoted": rejected,
                "settled": settled,
            })
        );
        return;
    }
    println!(
        "replayed {} files, {rows} rows in {seconds:.1} s",
        replayed.len()
    );
    if let Some(run) = &skab {
        let r = &run.report;
        println!(
            "labelled files: F1 {:.2}  FAR {:.2} %  MAR {:.2} %  NAB standard {:.2}  low-FP {:.2}  low-FN {:.2}  missed CPs {}/{}  FPs {}",
            r.f1, r.far, r.mar, r.nab_standard, r.nab_low_fp, r.nab_low_fn, r.missed_cps,
            r.true_cps, r.fps
        );
        super::eval::print_alarm_nab(&run.alarm_report);
    }
    if let Some(r) = &long {
        println!(
            "unlabelled files (all normal): false alarms {:.2} % of {} rows, {} episodes, longest {}",
            r.far, r.rows, r.episodes, r.longest_episode
        );
    }
    println!("alarms ended by settling at a new level: {settled}");
    if decisions.is_empty() {
        println!("training runs: none");
    } else {
        let counts: Vec<String> = decisions.iter().map(|(d, n)| format!("{n} {d}")).collect();
        println!("training runs: {}", counts.join(", "));
        for r in rejected.iter().take(10) {
            println!(
                "  {} {}: {}",
                r["detector"].as_str().unwrap_or(""),
                r["decision"].as_str().unwrap_or(""),
                r["reason"].as_str().unwrap_or("")
            );
        }
    }
}
