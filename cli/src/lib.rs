//! The `vigil` command line: `serve` (the server is `vigil_inference`), the tools beside
//! it — `verify`, `keygen`, `sign`, `package`, `train`, `eval`, `replay`, `synth`, `export`,
//! `simulate`, `bench`, `healthcheck` — and a client of a running server (`client`:
//! `detectors`, `versions`, `upload`, `activate`, `label`, `runs`, `alarms`). The tools live here, apart from the server library, so that the crate that
//! serves carries no load generator, plotting or offline training.

mod bench;
pub mod client;
mod eval;
mod export;
pub mod loadgen;
pub mod local;
mod replay;
mod simulate;
mod synth;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vigil_models::{
    DenseConfig, FeatureSchema, LoadedPackage, ModelSpec, Normalisation, PackageBuilder, Threshold,
};

use vigil_inference::config::{Config, ServeArgs};
use vigil_inference::store::error_chain;

/// Vigil: anomaly detection that keeps watch beside the machine.
#[derive(Debug, Parser)]
#[command(name = "vigil", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as text or as one JSON object per line (on standard error).
    #[arg(long, global = true, value_enum, env = "VIGIL_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the scoring API (embedded defaults: 127.0.0.1:8750, ./vigil-data).
    Serve(ServeArgs),
    /// Verify a model package directory: prints its id and signer, or the check that failed.
    Verify {
        /// The package directory (manifest.json, weights.safetensors, manifest.sig if signed).
        dir: PathBuf,
        /// A trusted public key: hex or a key file (repeatable).
        #[arg(long = "trusted-key", value_delimiter = ',')]
        trusted_keys: Vec<String>,
        /// Fail unless the package is signed by a trusted key (`--require-signature` alone
        /// means true, as in `vigil serve`).
        #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
        require_signature: bool,
    },
    /// Make an ed25519 key pair for signing packages: PREFIX.key (owner-only) and PREFIX.pub.
    Keygen {
        /// Path prefix of the two files.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a package directory: writes DIR/manifest.sig over the exact manifest bytes.
    Sign {
        /// The package directory.
        dir: PathBuf,
        /// The private key file (from `vigil keygen`).
        #[arg(long)]
        key: PathBuf,
    },
    /// Build a verified package from weights trained elsewhere.
    Package(PackageArgs),
    /// Fit an autoencoder on recorded data and write a verified package.
    Train(train::TrainArgs),
    /// Measure a detector on recorded data: SKAB's leaderboard protocol, a long run, NAB series
    /// or the Tennessee Eastman report.
    Eval(eval::EvalArgs),
    /// Play recorded files through a server as a device would, with feedback and fine-tuning,
    /// and measure what it answered.
    Replay(replay::ReplayArgs),
    /// Write recordings of a synthetic machine with labelled faults, in SKAB's layout, for
    /// `eval`, `train` and `replay`.
    Synth(synth::SynthArgs),
    /// Stream a healthy synthetic machine's readings into a running server, then a fault,
    /// printing the answers: warming up, scored, the alarm, back to normal.
    Simulate(simulate::SimulateArgs),
    /// Write a detector's observations as they were answered (features, score, threshold,
    /// anomaly, alarm, changepoint, version, label) as CSV or JSON lines, from a data
    /// directory (read-only, also while the server runs) or a server's API.
    Export(export::ExportArgs),
    /// List, show, define or delete detectors on a running server.
    Detectors(client::DetectorsArgs),
    /// List or delete a detector's model versions on a running server.
    Versions(client::VersionsArgs),
    /// Upload a package directory to a running server (packed here; the manifest names the
    /// detector), verified there and, unless --no-activate, served.
    Upload(client::UploadArgs),
    /// Serve a published version (a rollback or roll-forward).
    Activate(client::ActivateArgs),
    /// Label observations normal or anomaly (feedback for training and settled alarms).
    Label(client::LabelArgs),
    /// A detector's training runs on the box (and, with --start, ask for one).
    Runs(client::RunsArgs),
    /// List alarm records, or acknowledge, shelve or unshelve one.
    Alarms(client::AlarmsArgs),
    /// Measure this box: scoring in process and over HTTP, while training, cold start, memory;
    /// writes report.json and report.md.
    Bench(bench::BenchArgs),
    /// Exit 0 if the server answers `GET /healthz` with 200 within two seconds, else 1: a
    /// container HEALTHCHECK that needs no shell and no curl.
    Healthcheck {
        /// The server [default: http://127.0.0.1:PORT, PORT from VIGIL_LISTEN, else 8750].
        #[arg(long)]
        url: Option<String>,
    },
}

/// `vigil healthcheck`: one `GET /healthz` on the loopback address the server listens on.
fn healthcheck(url: Option<String>) -> anyhow::Result<()> {
    let url = url.unwrap_or_else(|| {
        let port = std::env::var("VIGIL_LISTEN")
            .ok()
            .and_then(|l| l.parse::<std::net::SocketAddr>().ok())
            .map_or(vigil_inference::config::DEFAULT_PORT, |a| a.port());
        format!("http://127.0.0.1:{port}")
    });
    let api = crate::local::Api::with_timeout(&url, None, std::time::Duration::from_secs(2));
    api.get("/healthz")
        .with_context(|| format!("{}/healthz does not answer", url.trim_end_matches('/')))?;
    println!("ok");
    Ok(())
}

/// Says on stderr how many rows of `file` have a timestamp that repeats or steps back: they are
/// kept and scored in file order (real clocks step), but never silently.
pub(crate) fn warn_clock_steps(file: &std::path::Path, steps: usize) {
    if steps > 0 {
        eprintln!(
            "warning: {}: {steps} row(s) with a timestamp that repeats or steps back (a clock \
             step); kept in file order",
            file.display()
        );
    }
}

/// The detectors `train` and `eval` can fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelKind {
    /// As the server picks: `sequence` for a single sensor, `adaptive` for several.
    Auto,
    /// Window statistics (mean and spread of each sensor over a short window), debounced,
    /// refitted on the readings it judged normal.
    Adaptive,
    /// A dense autoencoder over single readings (or --window readings), debounced.
    Dense,
    /// A 1-D convolutional autoencoder over a window of readings, debounced.
    Conv,
    /// Sequence novelty with an anomaly likelihood, for single-sensor streams (rhythmic,
    /// bursty): learns every reading.
    Sequence,
}

/// `--debounce K,N,HOLD` or `K,N,HOLD,CLEAR` as a configuration (CLEAR defaults to 5).
pub(crate) fn parse_debounce(values: &[usize]) -> anyhow::Result<vigil_models::DebounceConfig> {
    anyhow::ensure!(
        values.len() == 3 || values.len() == 4,
        "--debounce takes K,N,HOLD or K,N,HOLD,CLEAR"
    );
    Ok(vigil_models::DebounceConfig {
        k: values[0],
        n: values[1],
        hold: values[2],
        clear: values
            .get(3)
            .copied()
            .unwrap_or(vigil_models::DebounceConfig::default().clear),
    })
}

/// Which detector, and how.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// The detector.
    #[arg(long, value_enum, default_value_t = ModelKind::Auto)]
    pub model: ModelKind,
    /// Seed of initialisation and mini-batch order (dense, conv).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Never refit on the stream: the detector stays as fitted on the first rows (an
    /// autoencoder also keeps its own input normalisation).
    #[arg(long)]
    pub frozen: bool,
    /// Readings per window [default: adaptive 10, dense 1, conv 30].
    #[arg(long)]
    pub window: Option<usize>,
    /// Adaptive: relative dead band on window means [default: 0.005].
    #[arg(long)]
    pub tolerance: Option<f64>,
    /// Adaptive: threshold = this × the 0.99 quantile of normal scores [default: 2.5].
    #[arg(long)]
    pub factor: Option<f64>,
    /// Adaptive: refit every N readings [default: 50].
    #[arg(long)]
    pub refit_every: Option<usize>,
    /// Adaptive: normal windows kept for refits [default: 400].
    #[arg(long)]
    pub history: Option<usize>,
    /// Adaptive: readings a window waits, alarm-free, before it is learnt [default: 60].
    #[arg(long)]
    pub guard: Option<usize>,
    /// Adaptive: refits move only the centre; spread and threshold stay as first fitted.
    #[arg(long, conflicts_with = "rescale_after")]
    pub centre_only: bool,
    /// Adaptive: refits also re-estimate spread and threshold from the detector's residuals
    /// once it has learnt this many normal windows [default: 800].
    #[arg(long)]
    pub rescale_after: Option<usize>,
    /// Adaptive: an alarm held this many readings, whose readings sat steady at one level
    /// all along, ends by adopting that level as normal (a `settled` decision); 0 never
    /// [default: 900].
    #[arg(long)]
    pub settle_after: Option<usize>,
    /// Alarm debouncing K,N,HOLD or K,N,HOLD,CLEAR: rise on K crossings in N readings, fall
    /// after HOLD quiet readings; a changepoint (back to normal) after CLEAR quiet ones
    /// [default: 5,10,30,5; sequence 1,1,120,5].
    #[arg(long, value_delimiter = ',')]
    pub debounce: Option<Vec<usize>>,
    /// Sequence: quantisation bins across the fitted readings' 1 %–99 % range, at the finest
    /// scale [default: 16].
    #[arg(long)]
    pub bins: Option<usize>,
    /// Sequence: scales, each with 4 times fewer bins than the one before [default: 3].
    #[arg(long)]
    pub scales: Option<usize>,
    /// Sequence: readings of context before the current one in the longest sequence
    /// [default: 1].
    #[arg(long)]
    pub order: Option<usize>,
    /// Sequence: readings whose novelty is judged together [default: 40].
    #[arg(long)]
    pub short: Option<usize>,
    /// Sequence: readings of novelty history it is judged against [default: 3000].
    #[arg(long)]
    pub long: Option<usize>,
    /// Sequence: crossing when the novelty's z exceeds this [default: 4.5].
    #[arg(long)]
    pub z: Option<f64>,
}

impl ModelArgs {
    fn debounce_config(&self) -> anyhow::Result<vigil_models::DebounceConfig> {
        Ok(match &self.debounce {
            Some(d) => parse_debounce(d)?,
            None => vigil_models::DebounceConfig::default(),
        })
    }

    fn adaptive_options(&self) -> anyhow::Result<vigil_trainer::online::AdaptiveOptions> {
        let mut options = vigil_trainer::online::AdaptiveOptions::default();
        let stats = &mut options.stats;
        stats.window = self.window.unwrap_or(stats.window);
        stats.tolerance = self.tolerance.unwrap_or(stats.tolerance);
        stats.factor = self.factor.unwrap_or(stats.factor);
        options.refit_every = self.refit_every.unwrap_or(options.refit_every);
        options.history = self.history.unwrap_or(options.history);
        options.guard = self.guard.unwrap_or(options.guard);
        options.debounce = self.debounce_config()?;
        options.rescale_after = self.rescale_after.unwrap_or(options.rescale_after);
        options.settle_after = self.settle_after.unwrap_or(options.settle_after);
        if self.centre_only {
            options.rescale_after = 0;
        }
        if self.frozen {
            options.refit_every = 0;
        }
        Ok(options)
    }

    fn sequence_options(&self) -> anyhow::Result<vigil_trainer::sequence::SequenceOptions> {
        let mut options = vigil_trainer::sequence::SequenceOptions::default();
        options.bins = self.bins.unwrap_or(options.bins);
        options.scales = self.scales.unwrap_or(options.scales);
        options.order = self.order.unwrap_or(options.order);
        options.short = self.short.unwrap_or(options.short);
        options.long = self.long.unwrap_or(options.long);
        options.threshold = self.z.unwrap_or(options.threshold);
        if let Some(d) = &self.debounce {
            options.debounce = parse_debounce(d)?;
        }
        options.check().map_err(anyhow::Error::msg)?;
        Ok(options)
    }

    /// An autoencoder's input normalisation follows the stream as the adaptive detector the
    /// adaptive flags describe tracks it (`--window` is the package's here, so that detector
    /// keeps its default window), unless `--frozen`.
    fn following(&self) -> anyhow::Result<Option<vigil_trainer::online::AdaptiveOptions>> {
        if self.frozen {
            return Ok(None);
        }
        let mut options = self.adaptive_options()?;
        options.stats.window = vigil_models::WindowStatsConfig::default().window;
        Ok(Some(options))
    }

    pub(crate) fn detector_choice(&self) -> anyhow::Result<vigil_trainer::eval::DetectorChoice> {
        use vigil_trainer::eval::DetectorChoice;
        Ok(match self.model {
            ModelKind::Adaptive => DetectorChoice::Adaptive(self.adaptive_options()?),
            ModelKind::Sequence => DetectorChoice::Sequence(self.sequence_options()?),
            ModelKind::Auto => {
                DetectorChoice::Auto(self.adaptive_options()?, self.sequence_options()?)
            }
            ModelKind::Dense | ModelKind::Conv => {
                let mut fit = vigil_trainer::FitOptions::default();
                let window = match self.model {
                    ModelKind::Conv => {
                        fit.model = vigil_models::ModelSpec::ConvAutoencoder {
                            channels: vec![16, 8, 16],
                            kernel: 5,
                        };
                        self.window.unwrap_or(30)
                    }
                    _ => {
                        // Sized to the data when the detector is fitted.
                        fit.model =
                            vigil_models::ModelSpec::DenseAutoencoder { hidden: Vec::new() };
                        self.window.unwrap_or(1)
                    }
                };
                fit.seed = self.seed;
                DetectorChoice::Autoencoder(vigil_trainer::online::AutoencoderOptions {
                    fit,
                    window,
                    debounce: self.debounce_config()?,
                    follow: self.following()?,
                })
            }
        })
    }
}

/// Arguments of `vigil package`.
#[derive(Debug, clap::Args)]
pub struct PackageArgs {
    /// Weights in safetensors, PyTorch `nn.Linear` names: l1.weight [out, in], l1.bias, … lN.
    #[arg(long)]
    pub weights: PathBuf,
    /// Feature names in input order, comma-separated.
    #[arg(long, value_delimiter = ',', required_unless_present = "features_file")]
    pub features: Vec<String>,
    /// A file with one feature name per line (instead of --features).
    #[arg(long, conflicts_with = "features")]
    pub features_file: Option<PathBuf>,
    /// Window length: the model reads the last W readings of a stream.
    #[arg(long, default_value_t = 1)]
    pub window: usize,
    /// The detector this package is for.
    #[arg(long)]
    pub detector: String,
    /// The version name [default: the current UTC time, 20261128T021200Z].
    #[arg(long)]
    pub version: Option<String>,
    /// The version this one derives from.
    #[arg(long)]
    pub parent: Option<String>,
    /// JSON file {"centre": [...], "scale": [...]} per feature [default: identity].
    #[arg(long)]
    pub normalisation: Option<PathBuf>,
    /// Scores above this are anomalies.
    #[arg(long)]
    pub threshold: f32,
    /// How the threshold was chosen, recorded in the manifest.
    #[arg(long, default_value = "fixed")]
    pub threshold_method: String,
    /// Output directory (created; must not hold a package already).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs the command line; the binary's `main`.
pub fn main() -> ExitCode {
    // candle splits even tiny matrix products across threads, which costs ~30× at batch 1
    // on a 2-core box; scoring and training are single-threaded unless the operator says so.
    // Set before any thread exists.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Verify {
            dir,
            trusted_keys,
            require_signature,
        } => return verify(&dir, &trusted_keys, require_signature),
        Command::Keygen { out } => keygen(&out),
        Command::Sign { dir, key } => sign(&dir, &key),
        Command::Package(args) => package(args),
        Command::Train(args) => train::train(args),
        Command::Eval(args) => eval::eval(args),
        Command::Replay(args) => replay::replay(args),
        Command::Synth(args) => synth::synth(args),
        Command::Export(args) => export::export(args),
        Command::Simulate(args) => simulate::simulate(args),
        Command::Detectors(args) => client::detectors(args),
        Command::Versions(args) => client::versions(args),
        Command::Upload(args) => client::upload(args),
        Command::Activate(args) => client::activate(args),
        Command::Label(args) => client::label(args),
        Command::Runs(args) => client::runs(args),
        Command::Alarms(args) => client::alarms(args),
        Command::Bench(args) => bench::bench(args),
        Command::Healthcheck { url } => healthcheck(url),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(client::exit_code(&err))
        }
    }
}

/// The name of the server's runtime threads (its workers and blocking threads), as
/// `top -H` shows them: what `vigil bench` counts as request handling.
const RUNTIME_THREAD_NAME: &str = "vigil-runtime";

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::resolve(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers)
        .thread_name(RUNTIME_THREAD_NAME)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listen = config.listen;
        let built = vigil_inference::build(config)?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let address = listener.local_addr()?;
        // A stable line on stdout: scripts and tests read the bound address from it.
        println!("vigil listening on http://{address}");
        tracing::info!(%address, "serving");
        vigil_inference::run(built, listener, shutdown_signal()).await
    })
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested: draining requests and the log");
}

fn verify(dir: &std::path::Path, trusted_keys: &[String], require_signature: bool) -> ExitCode {
    let mut policy = vigil_models::TrustPolicy {
        trusted: Vec::new(),
        require_signature,
    };
    for given in trusted_keys {
        match vigil_models::signature::parse_key(given) {
            Ok(key) => policy.trusted.push(key),
            Err(err) => {
                eprintln!("error: trusted key {given:?}: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    match LoadedPackage::load_with(dir, &policy) {
        Ok(package) => {
            let signer = match package.signature() {
                vigil_models::SignatureState::Unsigned => "unsigned".to_owned(),
                vigil_models::SignatureState::Trusted { key_id } => {
                    format!("signed by trusted key {key_id}")
                }
                vigil_models::SignatureState::Untrusted { key_id } => {
                    format!("signed by key {key_id}, not trusted")
                }
            };
            println!(
                "verified {} (manifest blake3 {}; {signer})",
                package.manifest().id(),
                package.manifest_digest()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            println!("refused {}: {}", err.reason(), error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

fn keygen(out: &std::path::Path) -> anyhow::Result<()> {
    let key = vigil_models::signature::generate()?;
    vigil_models::signature::write_key_pair(&key, out)?;
    println!(
        "wrote {} (private, owner-only) and {}; key id {}",
        out.with_extension("key").display(),
        out.with_extension("pub").display(),
        vigil_models::signature::key_id(&key.verifying_key())
    );
    Ok(())
}

fn sign(dir: &std::path::Path, key: &std::path::Path) -> anyhow::Result<()> {
    let key = vigil_models::signature::read_private(key)?;
    // Sign only what verifies: a signature vouches for a whole, working package.
    let package = LoadedPackage::load(dir)
        .map_err(|err| anyhow::anyhow!("refused {}: {}", err.reason(), error_chain(&err)))?;
    let path = dir.join(vigil_models::SIGNATURE_FILE);
    vigil_models::signature::sign_dir(dir, &key)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "signed {} with key {} ({})",
        package.manifest().id(),
        vigil_models::signature::key_id(&key.verifying_key()),
        path.display()
    );
    Ok(())
}

fn package(args: PackageArgs) -> anyhow::Result<()> {
    let features = match &args.features_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect(),
        None => args.features.clone(),
    };
    let schema = FeatureSchema::new(features, args.window);
    schema.validate().map_err(|e| anyhow::anyhow!(e))?;
    let normalisation = match &args.normalisation {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_slice::<Normalisation>(&bytes)
                .with_context(|| format!("invalid normalisation file {}", path.display()))?
        }
        None => Normalisation::identity(schema.n_features()),
    };
    let weights = std::fs::read(&args.weights)
        .with_context(|| format!("cannot read {}", args.weights.display()))?;
    let tensors = safetensors_shapes(&weights)?;
    let config = DenseConfig::from_shapes(tensors.iter().map(|(n, s)| (n.as_str(), s.as_slice())))?;
    anyhow::ensure!(
        config.input_dim == schema.input_width(),
        "the weights take {} inputs, but {} features × window {} = {}",
        config.input_dim,
        schema.n_features(),
        schema.window,
        schema.input_width()
    );
    let builder = PackageBuilder {
        detector: args.detector,
        version: args
            .version
            .unwrap_or_else(PackageBuilder::timestamp_version),
        parent: args.parent,
        model: ModelSpec::DenseAutoencoder {
            hidden: config.hidden,
        },
        schema,
        normalisation,
        threshold: Threshold {
            value: args.threshold,
            method: args.threshold_method,
            parameters: Default::default(),
        },
        training: serde_json::json!({ "source": "imported", "weights_file": args.weights.file_name().map(|n| n.to_string_lossy().into_owned()) }),
        evaluation: serde_json::Value::Null,
    };
    let built = builder
        .build(weights)
        .map_err(|err| anyhow::anyhow!("{}: {}", err.reason(), error_chain(&err)))?;
    anyhow::ensure!(
        !args.out.join(vigil_models::MANIFEST_FILE).exists(),
        "{} already holds a package",
        args.out.display()
    );
    vigil_models::package::write_dir(&args.out, &built.manifest, &built.weights)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "wrote {} to {}",
        built.loaded.manifest().id(),
        args.out.display()
    );
    Ok(())
}

/// Names and shapes of the tensors in a safetensors buffer.
fn safetensors_shapes(bytes: &[u8]) -> anyhow::Result<Vec<(String, Vec<usize>)>> {
    let (_, metadata) = safetensors::SafeTensors::read_metadata(bytes)
        .context("the weights are not safetensors")?;
    Ok(metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| (name, info.shape.clone()))
        .collect())
}
