//! Configuration of `vigil serve`: embedded defaults, overridden by a TOML file, overridden by
//! `VIGIL_*` environment variables, overridden by flags. Parsed and checked once, before
//! anything is bound or opened.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::detector::DetectorOptions;
use vigil_models::FeatureSchema;

/// The port `vigil serve` listens on by default (on 127.0.0.1).
pub const DEFAULT_PORT: u16 = 8750;

/// How a scored observation is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AckMode {
    /// Reply only after the observation is committed to the log (the default).
    Commit,
    /// Reply once the observation is queued for the log: faster, but a crash can lose the
    /// last moments of acknowledged observations.
    Enqueue,
}

/// How hard a commit holds on to its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DurabilityArg {
    /// Survives the process being killed (SQLite WAL, synchronous=NORMAL).
    Normal,
    /// Survives a power cut too (synchronous=FULL): every commit is fsynced.
    Full,
}

/// Flags of `vigil serve`; each also reads a `VIGIL_*` environment variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (keys as the long flags, with underscores).
    #[arg(long, env = "VIGIL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8750].
    #[arg(long, env = "VIGIL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the observation log, model store and detector definitions
    /// [default: ./vigil-data].
    #[arg(long, env = "VIGIL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// File holding the admin bearer token (VIGIL_ADMIN_TOKEN takes precedence). Without
    /// either, a token is generated in DATA_DIR/admin.token on first start.
    #[arg(long, env = "VIGIL_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// File holding the token of the `read` scope (VIGIL_READ_TOKEN takes precedence):
    /// definitions, versions, runs, metrics. Without one, reading needs the admin token
    /// when the server listens beyond loopback, and nothing on loopback.
    #[arg(long, env = "VIGIL_READ_TOKEN_FILE")]
    pub read_token_file: Option<PathBuf>,
    /// File holding the token of the `score` scope (VIGIL_SCORE_TOKEN takes precedence): what
    /// device apps present. Without one, scoring needs the admin token when the server
    /// listens beyond loopback, and nothing on loopback.
    #[arg(long, env = "VIGIL_SCORE_TOKEN_FILE")]
    pub score_token_file: Option<PathBuf>,
    /// When a scored observation is acknowledged [default: commit].
    #[arg(long, env = "VIGIL_ACK", value_enum)]
    pub ack: Option<AckMode>,
    /// How durable a commit is [default: normal].
    #[arg(long, env = "VIGIL_DURABILITY", value_enum)]
    pub durability: Option<DurabilityArg>,
    /// Observations kept in the log per detector; the oldest go first [default: 1000000].
    #[arg(long, env = "VIGIL_RETENTION_ROWS")]
    pub retention_rows: Option<u64>,
    /// Largest request body accepted, in bytes (package uploads excepted) [default: 4194304].
    #[arg(long, env = "VIGIL_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Largest package upload accepted, in bytes [default: 268435456].
    #[arg(long, env = "VIGIL_MAX_PACKAGE_BYTES")]
    pub max_package_bytes: Option<usize>,
    /// Most observations in one score request [default: 4096].
    #[arg(long, env = "VIGIL_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// Most score requests in flight; more get 503 [default: 1024].
    #[arg(long, env = "VIGIL_MAX_INFLIGHT")]
    pub max_inflight: Option<usize>,
    /// Most observations waiting for the log writer; more get 503 [default: 65536].
    #[arg(long, env = "VIGIL_LOG_QUEUE")]
    pub log_queue: Option<usize>,
    /// Threads serving HTTP [default: the number of CPUs].
    #[arg(long, env = "VIGIL_WORKERS")]
    pub workers: Option<usize>,
    /// A public key trusted to sign packages: hex, or a file holding it. Repeat the flag or
    /// separate with commas. The box's own key (DATA_DIR/keys/box.pub) is always trusted.
    #[arg(
        long = "trusted-key",
        env = "VIGIL_TRUSTED_KEYS",
        value_delimiter = ','
    )]
    pub trusted_keys: Vec<String>,
    /// Seconds between re-verifications of the serving packages on disk; 0 turns it off
    /// [default: 600].
    #[arg(long, env = "VIGIL_REVERIFY_SECONDS")]
    pub reverify_seconds: Option<u64>,
    /// Versions kept per detector for rollback; older ones are removed on upload (never the
    /// active or serving one) [default: 5].
    #[arg(long, env = "VIGIL_KEEP_VERSIONS")]
    pub keep_versions: Option<usize>,
    /// Refuse packages that are not signed by a trusted key [default: false].
    #[arg(long, env = "VIGIL_REQUIRE_SIGNATURE", num_args = 0..=1, default_missing_value = "true")]
    pub require_signature: Option<bool>,
    /// Most open connections; beyond it a new one is refused at once with 503. Keep it under
    /// the process's file-descriptor limit [default: 1000].
    #[arg(long, env = "VIGIL_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds a request head may take to arrive, from the connection or its first byte
    /// [default: 10].
    #[arg(long, env = "VIGIL_HEADER_TIMEOUT_SECONDS")]
    pub header_timeout_seconds: Option<u64>,
    /// Seconds a request body (package uploads excepted) may take to arrive; also how long a
    /// response may wait for the client to read it [default: 30].
    #[arg(long, env = "VIGIL_BODY_TIMEOUT_SECONDS")]
    pub body_timeout_seconds: Option<u64>,
    /// Seconds a package upload's body may take to arrive [default: 600].
    #[arg(long, env = "VIGIL_UPLOAD_TIMEOUT_SECONDS")]
    pub upload_timeout_seconds: Option<u64>,
    /// Seconds a keep-alive connection may wait for its next request [default: 60].
    #[arg(long, env = "VIGIL_IDLE_TIMEOUT_SECONDS")]
    pub idle_timeout_seconds: Option<u64>,
    /// Free bytes kept on the data directory's file system: below it new observations are
    /// refused (503 log_unavailable) and the WAL is truncated [default: 33554432, 32 MiB].
    #[arg(long, env = "VIGIL_MIN_FREE_BYTES")]
    pub min_free_bytes: Option<u64>,
}

/// A detector declared in the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorDecl {
    pub name: String,
    #[serde(flatten)]
    pub schema: FeatureSchema,
    #[serde(default)]
    pub options: DetectorOptions,
}

impl DetectorDecl {
    /// The definition this declaration makes.
    pub fn spec(&self) -> crate::detector::DetectorSpec {
        crate::detector::DetectorSpec {
            name: self.name.clone(),
            schema: self.schema.clone(),
            options: self.options.clone(),
        }
    }
}

/// The TOML file: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    admin_token_file: Option<PathBuf>,
    read_token_file: Option<PathBuf>,
    score_token_file: Option<PathBuf>,
    ack: Option<AckMode>,
    durability: Option<DurabilityArg>,
    retention_rows: Option<u64>,
    max_body_bytes: Option<usize>,
    max_package_bytes: Option<usize>,
    max_batch: Option<usize>,
    max_inflight: Option<usize>,
    log_queue: Option<usize>,
    workers: Option<usize>,
    #[serde(default)]
    trusted_keys: Vec<String>,
    require_signature: Option<bool>,
    reverify_seconds: Option<u64>,
    keep_versions: Option<usize>,
    max_connections: Option<usize>,
    header_timeout_seconds: Option<u64>,
    body_timeout_seconds: Option<u64>,
    upload_timeout_seconds: Option<u64>,
    idle_timeout_seconds: Option<u64>,
    min_free_bytes: Option<u64>,
    #[serde(default)]
    detectors: Vec<DetectorDecl>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub admin_token: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    /// The `read` scope's token, if one is configured.
    pub read_token: Option<String>,
    /// The `score` scope's token, if one is configured.
    pub score_token: Option<String>,
    pub ack: AckMode,
    pub durability: vigil_datasets::Durability,
    pub retention_rows: u64,
    pub max_body_bytes: usize,
    pub max_package_bytes: usize,
    pub max_batch: usize,
    pub max_inflight: usize,
    pub log_queue: usize,
    pub workers: usize,
    /// Trusted signing keys as given (hex or files), file's and flags' together.
    pub trusted_keys: Vec<String>,
    pub require_signature: bool,
    pub reverify_seconds: u64,
    pub keep_versions: usize,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub upload_timeout: Duration,
    pub idle_timeout: Duration,
    pub min_free_bytes: u64,
    pub detectors: Vec<DetectorDecl>,
}

impl Config {
    /// Defaults for a data directory: what tests and benchmarks start from.
    pub fn for_data_dir(data_dir: &Path) -> Config {
        let args = ServeArgs {
            data_dir: Some(data_dir.to_owned()),
            ..ServeArgs::default()
        };
        Config::merge(args, FileConfig::default(), None)
    }

    /// The configuration a TOML file gives over the defaults, checked (what `--config`
    /// reads; the environment and flags are not consulted).
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        let file: FileConfig = toml::from_str(text).context("invalid config file")?;
        let config = Config::merge(ServeArgs::default(), file, None);
        config.check()?;
        for declared in &config.detectors {
            declared
                .spec()
                .validate()
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("detector {:?} in the config file", declared.name))?;
        }
        Ok(config)
    }

    /// Resolves flags and environment (already in `args`) over the file over the defaults.
    pub fn resolve(args: ServeArgs) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let env = |name: &str| std::env::var(name).ok().filter(|t| !t.trim().is_empty());
        let token = env("VIGIL_ADMIN_TOKEN");
        let read_file = args
            .read_token_file
            .clone()
            .or(file.read_token_file.clone());
        let score_file = args
            .score_token_file
            .clone()
            .or(file.score_token_file.clone());
        let mut config = Config::merge(args, file, token);
        config.read_token = match env("VIGIL_READ_TOKEN") {
            Some(token) => Some(token.trim().to_owned()),
            None => read_file.as_deref().map(read_token).transpose()?,
        };
        config.score_token = match env("VIGIL_SCORE_TOKEN") {
            Some(token) => Some(token.trim().to_owned()),
            None => score_file.as_deref().map(read_token).transpose()?,
        };
        config.check()?;
        Ok(config)
    }

    fn merge(args: ServeArgs, file: FileConfig, admin_token: Option<String>) -> Config {
        let durability = match args.durability.or(file.durability) {
            Some(DurabilityArg::Full) => vigil_datasets::Durability::Full,
            _ => vigil_datasets::Durability::Normal,
        };
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Config {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT))),
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("vigil-data")),
            admin_token,
            admin_token_file: args.admin_token_file.or(file.admin_token_file),
            read_token: None,
            score_token: None,
            ack: args.ack.or(file.ack).unwrap_or(AckMode::Commit),
            durability,
            retention_rows: args
                .retention_rows
                .or(file.retention_rows)
                .unwrap_or(1_000_000),
            max_body_bytes: args
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(4 << 20),
            max_package_bytes: args
                .max_package_bytes
                .or(file.max_package_bytes)
                .unwrap_or(256 << 20),
            max_batch: args.max_batch.or(file.max_batch).unwrap_or(4096),
            max_inflight: args.max_inflight.or(file.max_inflight).unwrap_or(1024),
            log_queue: args.log_queue.or(file.log_queue).unwrap_or(65_536),
            workers: args.workers.or(file.workers).unwrap_or(cpus),
            trusted_keys: file
                .trusted_keys
                .into_iter()
                .chain(args.trusted_keys)
                .filter(|k| !k.trim().is_empty())
                .collect(),
            require_signature: args
                .require_signature
                .or(file.require_signature)
                .unwrap_or(false),
            reverify_seconds: args
                .reverify_seconds
                .or(file.reverify_seconds)
                .unwrap_or(600),
            keep_versions: args.keep_versions.or(file.keep_versions).unwrap_or(5),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(1000),
            header_timeout: seconds(args.header_timeout_seconds, file.header_timeout_seconds, 10),
            body_timeout: seconds(args.body_timeout_seconds, file.body_timeout_seconds, 30),
            upload_timeout: seconds(
                args.upload_timeout_seconds,
                file.upload_timeout_seconds,
                600,
            ),
            idle_timeout: seconds(args.idle_timeout_seconds, file.idle_timeout_seconds, 60),
            min_free_bytes: args
                .min_free_bytes
                .or(file.min_free_bytes)
                .unwrap_or(32 << 20),
            detectors: file.detectors,
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.retention_rows > 0, "retention_rows must be positive");
        anyhow::ensure!(
            self.max_body_bytes >= 1024,
            "max_body_bytes must be at least 1024"
        );
        anyhow::ensure!(self.max_batch > 0, "max_batch must be positive");
        anyhow::ensure!(self.max_inflight > 0, "max_inflight must be positive");
        anyhow::ensure!(
            self.log_queue >= self.max_batch,
            "log_queue must hold at least one full batch (max_batch)"
        );
        anyhow::ensure!(self.workers > 0, "workers must be positive");
        let tokens = [&self.admin_token, &self.read_token, &self.score_token];
        let given: Vec<&String> = tokens.iter().filter_map(|t| t.as_ref()).collect();
        for (i, a) in given.iter().enumerate() {
            anyhow::ensure!(
                given[i + 1..].iter().all(|b| b != a),
                "the admin, read and score tokens must differ"
            );
        }
        anyhow::ensure!(self.max_connections > 0, "max_connections must be positive");
        for (name, timeout) in [
            ("header_timeout_seconds", self.header_timeout),
            ("body_timeout_seconds", self.body_timeout),
            ("upload_timeout_seconds", self.upload_timeout),
            ("idle_timeout_seconds", self.idle_timeout),
        ] {
            anyhow::ensure!(!timeout.is_zero(), "{name} must be positive");
        }
        anyhow::ensure!(
            self.keep_versions >= 2,
            "keep_versions must be at least 2 (one to serve, one to roll back to)"
        );
        Ok(())
    }
}

/// A token from its file, trimmed; an empty file is refused.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let token = text.trim().to_owned();
    anyhow::ensure!(
        !token.is_empty(),
        "the token file {} is empty",
        path.display()
    );
    Ok(token)
}

/// A timeout from the flag, else the file, else the default, in seconds.
fn seconds(flag: Option<u64>, file: Option<u64>, default: u64) -> Duration {
    Duration::from_secs(flag.or(file).unwrap_or(default))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let file: FileConfig = toml::from_str(
            r#"
            listen = "127.0.0.1:9000"
            retention_rows = 50
            max_batch = 8

            [[detectors]]
            name = "pump"
            features = ["a", "b"]
            window = 4
            "#,
        )
        .unwrap();
        let args = ServeArgs {
            retention_rows: Some(70),
            ..ServeArgs::default()
        };
        let config = Config::merge(args, file, None);
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.retention_rows, 70);
        assert_eq!(config.max_batch, 8);
        assert_eq!(config.max_inflight, 1024);
        assert_eq!(config.data_dir, PathBuf::from("vigil-data"));
        assert_eq!(config.detectors[0].schema.window, 4);
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        assert!(toml::from_str::<FileConfig>("listne = \"127.0.0.1:1\"").is_err());
    }
}
