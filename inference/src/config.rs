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
    #[command(flatten)]
    pub mqtt: MqttArgs,
}

/// Flags of the MQTT uplink; each also reads a `VIGIL_MQTT_*` (or `VIGIL_BOX_ID`) variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MqttArgs {
    /// The site's MQTT broker, `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`; the uplink is off
    /// without it. Credentials go in VIGIL_MQTT_USERNAME and VIGIL_MQTT_PASSWORD (or
    /// --mqtt-password-file), never in the URL.
    #[arg(long, env = "VIGIL_MQTT_URL")]
    pub mqtt_url: Option<String>,
    /// This box's name on the broker [default: the box key's id].
    #[arg(long, env = "VIGIL_BOX_ID")]
    pub box_id: Option<String>,
    /// Topic prefix; `{box}` stands for the box id [default: vigil/{box}].
    #[arg(long, env = "VIGIL_MQTT_PREFIX")]
    pub mqtt_prefix: Option<String>,
    /// User name for the broker.
    #[arg(long, env = "VIGIL_MQTT_USERNAME")]
    pub mqtt_username: Option<String>,
    /// File holding the broker password (VIGIL_MQTT_PASSWORD takes precedence).
    #[arg(long, env = "VIGIL_MQTT_PASSWORD_FILE")]
    pub mqtt_password_file: Option<PathBuf>,
    /// CA certificates (PEM) that sign the broker's certificate, for mqtts [default: the
    /// system's roots].
    #[arg(long, env = "VIGIL_MQTT_CA_FILE")]
    pub mqtt_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mqtts, with --mqtt-key-file.
    #[arg(long, env = "VIGIL_MQTT_CERT_FILE")]
    pub mqtt_cert_file: Option<PathBuf>,
    /// Client private key (PEM) for mqtts.
    #[arg(long, env = "VIGIL_MQTT_KEY_FILE")]
    pub mqtt_key_file: Option<PathBuf>,
    /// Take readings from PREFIX/in/{detector} and answer on PREFIX/out/{detector}
    /// [default: false].
    #[arg(long, env = "VIGIL_MQTT_SUBSCRIBE", num_args = 0..=1, default_missing_value = "true")]
    pub mqtt_subscribe: Option<bool>,
    /// Which scored observations go to PREFIX/observations/{detector} [default: off].
    #[arg(long, env = "VIGIL_MQTT_OBSERVATIONS", value_enum)]
    pub mqtt_observations: Option<ObservationsUplink>,
    /// Bytes the outbox may hold while the broker is away; beyond it the oldest observation
    /// messages are dropped (and counted) [default: 67108864, 64 MiB].
    #[arg(long, env = "VIGIL_MQTT_OUTBOX_BYTES")]
    pub mqtt_outbox_bytes: Option<u64>,
    /// Bytes of alarm and model messages the outbox may hold; beyond it the oldest of them are
    /// dropped (and counted) [default: 1073741824, 1 GiB].
    #[arg(long, env = "VIGIL_MQTT_REPORT_OUTBOX_BYTES")]
    pub mqtt_report_outbox_bytes: Option<u64>,
    /// MQTT keep-alive in seconds: a broker gone silent is noticed within 1.5 times it
    /// [default: 30].
    #[arg(long, env = "VIGIL_MQTT_KEEP_ALIVE_SECONDS")]
    pub mqtt_keep_alive_seconds: Option<u64>,
}

/// Which scored observations the uplink publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ObservationsUplink {
    /// None (the default): alarms and model events only.
    Off,
    /// Those scored while their stream's alarm is up.
    Alarms,
    /// Every one.
    All,
}

/// The `[mqtt]` table of the TOML file (keys as the flags without `mqtt_`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MqttFile {
    url: Option<String>,
    box_id: Option<String>,
    prefix: Option<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    subscribe: Option<bool>,
    observations: Option<ObservationsUplink>,
    outbox_bytes: Option<u64>,
    report_outbox_bytes: Option<u64>,
    keep_alive_seconds: Option<u64>,
}

/// The broker's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl BrokerAddress {
    /// Parses `mqtt://HOST[:PORT]` (port 1883) or `mqtts://HOST[:PORT]` (8883).
    pub fn parse(text: &str) -> anyhow::Result<BrokerAddress> {
        let url = url::Url::parse(text).with_context(|| format!("invalid MQTT URL {text:?}"))?;
        let tls = match url.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => anyhow::bail!("MQTT URL {text:?}: scheme {other:?} is not mqtt or mqtts"),
        };
        anyhow::ensure!(
            url.username().is_empty() && url.password().is_none(),
            "MQTT URL {text:?}: put credentials in VIGIL_MQTT_USERNAME and VIGIL_MQTT_PASSWORD \
             (or the password file), not in the URL"
        );
        anyhow::ensure!(
            matches!(url.path(), "" | "/") && url.query().is_none() && url.fragment().is_none(),
            "MQTT URL {text:?}: only a host and a port are expected"
        );
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string(),
            None => anyhow::bail!("MQTT URL {text:?} names no host"),
        };
        Ok(BrokerAddress {
            host,
            port: url.port().unwrap_or(if tls { 8883 } else { 1883 }),
            tls,
        })
    }
}

/// The resolved uplink configuration.
#[derive(Clone)]
pub struct MqttConfig {
    pub broker: BrokerAddress,
    /// As given; the box key's id when `None` (resolved at start-up).
    pub box_id: Option<String>,
    /// With `{box}` not yet replaced.
    pub prefix: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub subscribe: bool,
    pub observations: ObservationsUplink,
    pub outbox_bytes: u64,
    pub report_outbox_bytes: u64,
    pub keep_alive: Duration,
}

impl std::fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("MqttConfig")
            .field("broker", &self.broker)
            .field("box_id", &self.box_id)
            .field("prefix", &self.prefix)
            .field("username", &self.username)
            .field("subscribe", &self.subscribe)
            .field("observations", &self.observations)
            .finish_non_exhaustive()
    }
}

/// Whether `name` may stand as one level of an MQTT topic: 1 to 64 bytes, none of `/`, `+`,
/// `#`, NUL or other control characters.
pub fn valid_topic_level(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name
            .chars()
            .any(|c| matches!(c, '/' | '+' | '#') || c.is_control())
}

impl MqttConfig {
    /// Flags and environment over the file; `None` when no broker is named. The password is
    /// read here (`VIGIL_MQTT_PASSWORD`, else the file).
    fn resolve(
        args: MqttArgs,
        file: MqttFile,
        password: Option<String>,
    ) -> anyhow::Result<Option<MqttConfig>> {
        let Some(url) = args.mqtt_url.or(file.url).filter(|u| !u.trim().is_empty()) else {
            return Ok(None);
        };
        let broker = BrokerAddress::parse(url.trim())?;
        let password = match password {
            Some(password) => Some(password),
            None => args
                .mqtt_password_file
                .or(file.password_file)
                .as_deref()
                .map(read_token)
                .transpose()?,
        };
        let config = MqttConfig {
            broker,
            box_id: args.box_id.or(file.box_id),
            prefix: args
                .mqtt_prefix
                .or(file.prefix)
                .unwrap_or_else(|| crate::uplink::DEFAULT_PREFIX.to_owned()),
            username: args.mqtt_username.or(file.username),
            password,
            ca_file: args.mqtt_ca_file.or(file.ca_file),
            cert_file: args.mqtt_cert_file.or(file.cert_file),
            key_file: args.mqtt_key_file.or(file.key_file),
            subscribe: args.mqtt_subscribe.or(file.subscribe).unwrap_or(false),
            observations: args
                .mqtt_observations
                .or(file.observations)
                .unwrap_or(ObservationsUplink::Off),
            outbox_bytes: args
                .mqtt_outbox_bytes
                .or(file.outbox_bytes)
                .unwrap_or(64 << 20),
            report_outbox_bytes: args
                .mqtt_report_outbox_bytes
                .or(file.report_outbox_bytes)
                .unwrap_or(1 << 30),
            keep_alive: seconds(args.mqtt_keep_alive_seconds, file.keep_alive_seconds, 30),
        };
        config.check()?;
        Ok(Some(config))
    }

    fn check(&self) -> anyhow::Result<()> {
        if let Some(id) = &self.box_id {
            anyhow::ensure!(
                valid_topic_level(id),
                "box_id {id:?} must be 1 to 64 bytes without '/', '+', '#' or control characters"
            );
        }
        let prefix = self.prefix.replace("{box}", "box");
        anyhow::ensure!(
            !prefix.is_empty()
                && !prefix.starts_with('/')
                && !prefix.ends_with('/')
                && prefix.split('/').all(valid_topic_level),
            "mqtt prefix {:?} must be topic levels joined by '/', without '+', '#' or empty levels",
            self.prefix
        );
        anyhow::ensure!(
            self.cert_file.is_some() == self.key_file.is_some(),
            "a client certificate needs its key, and a key its certificate"
        );
        anyhow::ensure!(
            self.broker.tls || (self.ca_file.is_none() && self.cert_file.is_none()),
            "CA and client certificate files need an mqtts:// URL"
        );
        anyhow::ensure!(
            self.report_outbox_bytes >= self.outbox_bytes,
            "the report outbox cap must be at least the outbox budget"
        );
        anyhow::ensure!(
            (5..=3600).contains(&self.keep_alive.as_secs()),
            "mqtt keep-alive must be 5 to 3600 seconds"
        );
        Ok(())
    }
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
    mqtt: MqttFile,
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
    /// The MQTT uplink, when a broker is named.
    pub mqtt: Option<MqttConfig>,
    pub detectors: Vec<DetectorDecl>,
}

impl Config {
    /// Defaults for a data directory: what tests and benchmarks start from.
    pub fn for_data_dir(data_dir: &Path) -> Config {
        let args = ServeArgs {
            data_dir: Some(data_dir.to_owned()),
            ..ServeArgs::default()
        };
        Config::merge(args, FileConfig::default(), None, None)
            .expect("the defaults are a valid configuration")
    }

    /// The configuration a TOML file gives over the defaults, checked (what `--config`
    /// reads; the environment and flags are not consulted).
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        let file: FileConfig = toml::from_str(text).context("invalid config file")?;
        let config = Config::merge(ServeArgs::default(), file, None, None)?;
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
        let mqtt_password = env("VIGIL_MQTT_PASSWORD");
        let mut config = Config::merge(args, file, token, mqtt_password)?;
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

    fn merge(
        args: ServeArgs,
        file: FileConfig,
        admin_token: Option<String>,
        mqtt_password: Option<String>,
    ) -> anyhow::Result<Config> {
        let mqtt = MqttConfig::resolve(args.mqtt, file.mqtt, mqtt_password)?;
        let durability = match args.durability.or(file.durability) {
            Some(DurabilityArg::Full) => vigil_datasets::Durability::Full,
            _ => vigil_datasets::Durability::Normal,
        };
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Config {
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
            mqtt,
            detectors: file.detectors,
        })
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
        let config = Config::merge(args, file, None, None).unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.retention_rows, 70);
        assert_eq!(config.max_batch, 8);
        assert_eq!(config.max_inflight, 1024);
        assert_eq!(config.data_dir, PathBuf::from("vigil-data"));
        assert_eq!(config.detectors[0].schema.window, 4);
    }

    #[test]
    fn the_mqtt_table_is_read_and_flags_win() {
        let file: FileConfig = toml::from_str(
            r#"
            [mqtt]
            url = "mqtts://broker.site:8884"
            box_id = "line-3"
            observations = "alarms"
            subscribe = true
            "#,
        )
        .unwrap();
        let args = ServeArgs {
            mqtt: MqttArgs {
                box_id: Some("line-4".into()),
                ..MqttArgs::default()
            },
            ..ServeArgs::default()
        };
        let config = Config::merge(args, file, None, Some("secret".into()))
            .unwrap()
            .mqtt
            .unwrap();
        assert_eq!(
            config.broker,
            BrokerAddress {
                host: "broker.site".into(),
                port: 8884,
                tls: true
            }
        );
        assert_eq!(config.box_id.as_deref(), Some("line-4"));
        assert_eq!(config.prefix, "vigil/{box}");
        assert_eq!(config.observations, ObservationsUplink::Alarms);
        assert!(config.subscribe);
        assert_eq!(config.password.as_deref(), Some("secret"));
        assert!(!format!("{config:?}").contains("secret"));
        assert!(Config::for_data_dir(Path::new("d")).mqtt.is_none());
    }

    #[test]
    fn broker_urls_name_a_host_and_nothing_secret() {
        let parse = BrokerAddress::parse;
        assert_eq!(parse("mqtt://127.0.0.1").unwrap().port, 1883);
        assert_eq!(parse("mqtts://[::1]").unwrap().host, "::1");
        assert_eq!(parse("mqtts://[::1]").unwrap().port, 8883);
        for bad in [
            "http://broker",
            "mqtt://user:pw@broker",
            "mqtt://broker/topic",
            "mqtt://",
            "broker:1883",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn box_ids_and_prefixes_are_plain_topic_levels() {
        let with = |box_id: Option<&str>, prefix: &str| {
            let args = MqttArgs {
                mqtt_url: Some("mqtt://b".into()),
                box_id: box_id.map(Into::into),
                mqtt_prefix: Some(prefix.into()),
                ..MqttArgs::default()
            };
            MqttConfig::resolve(args, MqttFile::default(), None)
        };
        assert!(with(Some("press-7"), "plant/{box}").is_ok());
        for (id, prefix) in [
            (Some("a/b"), "vigil/{box}"),
            (Some("a+"), "vigil/{box}"),
            (Some(""), "vigil/{box}"),
            (None, "vigil/#"),
            (None, "/vigil"),
            (None, "vigil//x"),
        ] {
            assert!(with(id, prefix).is_err(), "{id:?} {prefix}");
        }
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        assert!(toml::from_str::<FileConfig>("listne = \"127.0.0.1:1\"").is_err());
    }
}
