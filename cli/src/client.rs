//! The API client in the binary: `vigil detectors`, `versions`, `upload`, `activate`,
//! `label`, `runs`, `alarms`. Each is one or two requests to a running server
//! (`--url`/`VIGIL_URL`), printed as a table for people or, with `--json`, as the server's
//! JSON answer for scripts. Exit codes (also for the other commands): see [`exit_code`].

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::local::{Api, ApiFailure};

/// Writes a line to standard output; a reader that went away (`vigil alarms | head`) ends
/// the command quietly, as it would end `ls`, rather than a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout().lock(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// As [`say!`], without the newline.
macro_rules! say_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if write!(std::io::stdout().lock(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// Exit status: the command did what it was asked.
pub const EXIT_OK: u8 = 0;
/// Exit status: something failed on this side (a file, a flag's value, packing).
pub const EXIT_FAILED: u8 = 1;
/// Exit status: the command line is not understood (clap's own).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: the server refused the request (4xx other than 404): fix the request.
pub const EXIT_REFUSED: u8 = 3;
/// Exit status: what the request names does not exist (404).
pub const EXIT_NOT_FOUND: u8 = 4;
/// Exit status: the server could not be reached, timed out or failed (5xx, including
/// `overloaded` and `log_unavailable`): worth retrying later.
pub const EXIT_UNAVAILABLE: u8 = 5;

/// The exit status for a command that failed with `err`.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if let Some(failure) = err.downcast_ref::<ApiFailure>() {
        return match failure.status {
            404 => EXIT_NOT_FOUND,
            400..=499 => EXIT_REFUSED,
            _ => EXIT_UNAVAILABLE,
        };
    }
    if err.chain().any(|cause| cause.is::<ureq::Error>()) {
        return EXIT_UNAVAILABLE;
    }
    EXIT_FAILED
}

/// Which server, and with which token.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The server.
    #[arg(
        long,
        global = true,
        env = "VIGIL_URL",
        default_value = "http://127.0.0.1:8750"
    )]
    pub url: String,
    /// The bearer token [default: from --token-file, else the data directory's admin.token
    /// if it can be read].
    #[arg(long, global = true, env = "VIGIL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the token.
    #[arg(
        long,
        global = true,
        env = "VIGIL_TOKEN_FILE",
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
    /// The server's data directory, whose generated admin.token is used when no token is
    /// given and --url is on this box (loopback).
    #[arg(
        long,
        global = true,
        env = "VIGIL_DATA_DIR",
        default_value = "vigil-data"
    )]
    pub data_dir: PathBuf,
}

impl Connection {
    /// The token to send: `--token`, else `--token-file`, else the data directory's
    /// `admin.token` if it exists, else none (reads on a loopback server need none).
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(token) = &self.token {
            return Ok(Some(token.trim().to_owned()));
        }
        if let Some(path) = &self.token_file {
            return vigil_inference::config::read_token(path).map(Some);
        }
        // This box's own admin token goes only to a server on this box.
        if !is_loopback_url(&self.url) {
            return Ok(None);
        }
        let generated = self.data_dir.join(vigil_inference::TOKEN_FILE);
        match std::fs::read_to_string(&generated) {
            Ok(text) => Ok(Some(text.trim().to_owned())),
            Err(_) => Ok(None),
        }
    }

    /// A client of the server with the token.
    pub fn api(&self) -> anyhow::Result<Api> {
        Ok(Api::new(&self.url, self.token()?))
    }
}

/// Whether `url` names a server on this box (`localhost`, 127.0.0.0/8 or `[::1]`).
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or("");
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Options every client command takes.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// Print the server's answer as JSON (for scripts) instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `vigil detectors …`
#[derive(Debug, Args)]
pub struct DetectorsArgs {
    #[command(subcommand)]
    command: DetectorsCommand,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Subcommand)]
enum DetectorsCommand {
    /// Every detector: features, what serves, state, streams, who defines it.
    List,
    /// One detector as the server describes it (JSON).
    Show { name: String },
    /// Create or change a detector from a JSON definition (as `PUT /v1/detectors/{name}`
    /// takes: features, window, options); FILE `-` reads standard input.
    Put { name: String, file: PathBuf },
    /// Delete a detector: its definition, model versions, observations, labels, training
    /// runs and alarm records (its model events stay).
    Delete { name: String },
}

/// `vigil versions …`
#[derive(Debug, Args)]
pub struct VersionsArgs {
    #[command(subcommand)]
    command: VersionsCommand,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Subcommand)]
enum VersionsCommand {
    /// A detector's published model versions, oldest first.
    List { detector: String },
    /// Delete a version that neither serves nor is the active one.
    Delete { detector: String, version: String },
}

/// `vigil upload DIR`
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// A package directory (manifest.json, weights.safetensors, manifest.sig if signed); the
    /// manifest names the detector.
    dir: PathBuf,
    /// Publish without serving it (activate later with `vigil activate`).
    #[arg(long)]
    no_activate: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// `vigil activate NAME VERSION`
#[derive(Debug, Args)]
pub struct ActivateArgs {
    detector: String,
    version: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// An operator's verdict on an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Verdict {
    Normal,
    Anomaly,
}

/// `vigil label NAME ID normal|anomaly`
#[derive(Debug, Args)]
pub struct LabelArgs {
    detector: String,
    /// Observation ids (as answers and `vigil export` show them), comma-separated.
    #[arg(value_delimiter = ',', required = true)]
    ids: Vec<i64>,
    #[arg(value_enum)]
    verdict: Verdict,
    #[command(flatten)]
    client: ClientArgs,
}

/// `vigil runs NAME`
#[derive(Debug, Args)]
pub struct RunsArgs {
    detector: String,
    /// Ask for a training run now (then list).
    #[arg(long)]
    start: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// `vigil alarms`
#[derive(Debug, Args)]
pub struct AlarmsArgs {
    #[arg(long)]
    detector: Option<String>,
    #[arg(long)]
    stream: Option<String>,
    /// unacknowledged, acknowledged, returned_unacknowledged, cleared, active (up and not
    /// shelved) or shelved.
    #[arg(long)]
    state: Option<String>,
    /// Raised at or after: Unix seconds or an RFC 3339 date-time.
    #[arg(long)]
    since: Option<String>,
    /// At most this many (the oldest first).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Acknowledge this alarm instead of listing.
    #[arg(long, conflicts_with_all = ["shelve", "unshelve"])]
    ack: Option<i64>,
    /// Shelve this alarm for --minutes instead of listing.
    #[arg(long, conflicts_with = "unshelve", requires = "minutes")]
    shelve: Option<i64>,
    /// Unshelve this alarm instead of listing.
    #[arg(long)]
    unshelve: Option<i64>,
    /// How long a shelving lasts (at most a week).
    #[arg(long)]
    minutes: Option<u64>,
    /// Who acts (recorded with the action) [default: the token's role].
    #[arg(long)]
    by: Option<String>,
    /// A note recorded with the action.
    #[arg(long)]
    note: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

/// Prints `answer` as JSON when asked, else runs `human`.
fn print(client: &ClientArgs, answer: &Value, human: impl FnOnce(&Value)) {
    if client.json {
        say!(
            "{}",
            serde_json::to_string_pretty(answer).unwrap_or_default()
        );
    } else {
        human(answer);
    }
}

/// A cell: a string as it is, null as `-`, anything else as JSON.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Prints rows under a header (see [`table`]).
fn show_table(header: &[&str], rows: &[Vec<String>]) {
    say_raw!("{}", table(header, rows));
}

/// Rows under a header, each column as wide as its widest cell, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, value) in widths.iter_mut().zip(row) {
            *width = (*width).max(value.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

pub(crate) fn detectors(args: DetectorsArgs) -> anyhow::Result<()> {
    let client = &args.client;
    let api = client.connection.api()?;
    match args.command {
        DetectorsCommand::List => {
            let answer = api.get("/v1/detectors")?;
            print(client, &answer, |answer| {
                let rows: Vec<Vec<String>> = answer["detectors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| {
                        let serving = &d["serving"];
                        let kind = match serving["kind"].as_str() {
                            Some("statistical") => cell(&serving["detector"]),
                            _ => cell(&serving["kind"]),
                        };
                        vec![
                            cell(&d["name"]),
                            d["features"].as_array().map_or(0, Vec::len).to_string(),
                            cell(&d["window"]),
                            kind,
                            cell(&serving["version"]),
                            cell(&d["state"]),
                            cell(&d["streams"]),
                            cell(&d["defined_by"]),
                        ]
                    })
                    .collect();
                show_table(
                    &[
                        "NAME",
                        "FEATURES",
                        "WINDOW",
                        "SERVES",
                        "VERSION",
                        "STATE",
                        "STREAMS",
                        "DEFINED_BY",
                    ],
                    &rows,
                );
            });
        }
        DetectorsCommand::Show { name } => {
            let answer = api.get(&format!("/v1/detectors/{name}"))?;
            say!("{}", serde_json::to_string_pretty(&answer)?);
        }
        DetectorsCommand::Put { name, file } => {
            let text = if file.as_os_str() == "-" {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text)?;
                text
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?
            };
            let definition: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let answer = api.put_json(&format!("/v1/detectors/{name}"), &definition)?;
            print(client, &answer, |answer| {
                say!("detector {} defined", cell(&answer["name"]))
            });
        }
        DetectorsCommand::Delete { name } => {
            let answer = api.delete(&format!("/v1/detectors/{name}"))?;
            print(client, &answer, |answer| {
                say!(
                    "detector {} deleted ({} observations)",
                    cell(&answer["deleted"]),
                    cell(&answer["observations"])
                )
            });
        }
    }
    Ok(())
}

pub(crate) fn versions(args: VersionsArgs) -> anyhow::Result<()> {
    let client = &args.client;
    let api = client.connection.api()?;
    match args.command {
        VersionsCommand::List { detector } => {
            let answer = api.get(&format!("/v1/detectors/{detector}/versions"))?;
            print(client, &answer, |answer| {
                let rows: Vec<Vec<String>> = answer["versions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| {
                        let flag = |key: &str, word: &str| {
                            if v[key] == json!(true) {
                                word.to_owned()
                            } else {
                                String::new()
                            }
                        };
                        vec![
                            cell(&v["version"]),
                            cell(&v["created_at"]),
                            cell(&v["parent"]),
                            [flag("active", "active"), flag("serving", "serving")]
                                .into_iter()
                                .filter(|s| !s.is_empty())
                                .collect::<Vec<_>>()
                                .join(","),
                        ]
                    })
                    .collect();
                show_table(&["VERSION", "CREATED_AT", "PARENT", "ROLE"], &rows);
            });
        }
        VersionsCommand::Delete { detector, version } => {
            let answer = api.delete(&format!("/v1/detectors/{detector}/versions/{version}"))?;
            print(client, &answer, |_| {
                say!("version {version} of {detector} deleted")
            });
        }
    }
    Ok(())
}

pub(crate) fn upload(args: UploadArgs) -> anyhow::Result<()> {
    let manifest_path = args.dir.join(vigil_models::MANIFEST_FILE);
    let manifest = vigil_models::Manifest::parse(
        &std::fs::read(&manifest_path)
            .with_context(|| format!("cannot read {}", manifest_path.display()))?,
    )
    .with_context(|| format!("{} is not a manifest", manifest_path.display()))?;
    let archive = vigil_models::package::archive_dir(&args.dir)
        .with_context(|| format!("cannot pack {}", args.dir.display()))?;
    let api = args.client.connection.api()?;
    let query = if args.no_activate {
        "?activate=false"
    } else {
        ""
    };
    let answer = api.put_bytes(
        &format!("/v1/detectors/{}/versions{query}", manifest.detector),
        &archive,
    )?;
    print(&args.client, &answer, |answer| {
        say!(
            "{}@{} {}",
            manifest.detector,
            manifest.version,
            if answer["active"] == json!(true) {
                "published and serving"
            } else {
                "published"
            }
        )
    });
    Ok(())
}

pub(crate) fn activate(args: ActivateArgs) -> anyhow::Result<()> {
    let api = args.client.connection.api()?;
    let answer = api.post(
        &format!("/v1/detectors/{}/activate", args.detector),
        &json!({ "version": args.version }),
    )?;
    print(&args.client, &answer, |_| {
        say!("{}@{} active", args.detector, args.version)
    });
    Ok(())
}

pub(crate) fn label(args: LabelArgs) -> anyhow::Result<()> {
    let api = args.client.connection.api()?;
    let verdict = match args.verdict {
        Verdict::Normal => "normal",
        Verdict::Anomaly => "anomaly",
    };
    let labels: Vec<Value> = args
        .ids
        .iter()
        .map(|id| json!({ "id": id, "label": verdict }))
        .collect();
    let answer = api.post(
        &format!("/v1/detectors/{}/feedback", args.detector),
        &json!({ "labels": labels }),
    )?;
    print(&args.client, &answer, |_| {
        say!("{} observation(s) labelled {verdict}", args.ids.len())
    });
    Ok(())
}

pub(crate) fn runs(args: RunsArgs) -> anyhow::Result<()> {
    let api = args.client.connection.api()?;
    if args.start {
        api.post(
            &format!("/v1/detectors/{}/train", args.detector),
            &json!({}),
        )?;
        if !args.client.json {
            say!("training run of {} started", args.detector);
        }
    }
    let answer = api.get(&format!("/v1/detectors/{}/training-runs", args.detector))?;
    print(&args.client, &answer, |answer| {
        let rows: Vec<Vec<String>> = answer["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|run| {
                vec![
                    time_of(&run["started"]),
                    cell(&run["trigger"]),
                    cell(&run["decision"]),
                    cell(&run["samples"]),
                    cell(&run["version"]),
                    cell(&run["reason"]),
                ]
            })
            .collect();
        show_table(
            &[
                "STARTED", "TRIGGER", "DECISION", "SAMPLES", "VERSION", "REASON",
            ],
            &rows,
        );
        if answer["running"] == json!(true) {
            say!("(a run is running)");
        }
    });
    Ok(())
}

/// Unix seconds as an RFC 3339 date-time (UTC, seconds).
fn time_of(value: &Value) -> String {
    value
        .as_f64()
        .and_then(|t| chrono::DateTime::from_timestamp(t.floor() as i64, 0))
        .map_or_else(
            || cell(value),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
}

pub(crate) fn alarms(args: AlarmsArgs) -> anyhow::Result<()> {
    let api = args.client.connection.api()?;
    let action = [
        (args.ack, "ack"),
        (args.shelve, "shelve"),
        (args.unshelve, "unshelve"),
    ]
    .into_iter()
    .find_map(|(id, verb)| id.map(|id| (id, verb)));
    if let Some((id, verb)) = action {
        let mut body = serde_json::Map::new();
        for (key, value) in [
            ("by", args.by.as_ref().map(|s| json!(s))),
            ("note", args.note.as_ref().map(|s| json!(s))),
            ("minutes", args.minutes.map(|m| json!(m))),
        ] {
            if let Some(value) = value {
                body.insert(key.into(), value);
            }
        }
        let answer = api.post(&format!("/v1/alarms/{id}/{verb}"), &Value::Object(body))?;
        print(&args.client, &answer, |answer| {
            say!("alarm {id}: {}", cell(&answer["state"]))
        });
        return Ok(());
    }
    let mut query = vec![format!("limit={}", args.limit)];
    for (key, value) in [
        ("detector", &args.detector),
        ("stream", &args.stream),
        ("state", &args.state),
        ("since", &args.since),
    ] {
        if let Some(value) = value {
            query.push(format!("{key}={}", encode(value)));
        }
    }
    let answer = api.get(&format!("/v1/alarms?{}", query.join("&")))?;
    print(&args.client, &answer, |answer| {
        let rows: Vec<Vec<String>> = answer["alarms"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                let top = a["contributions"]
                    .get(0)
                    .map_or_else(String::new, |c| cell(&c["feature"]));
                vec![
                    cell(&a["id"]),
                    cell(&a["detector"]),
                    cell(&a["stream"]),
                    time_of(&a["raised_at"]),
                    cell(&a["state"]),
                    if a["shelved_now"] == json!(true) {
                        "shelved".into()
                    } else {
                        String::new()
                    },
                    a["peak_score"]
                        .as_f64()
                        .map_or_else(|| cell(&a["peak_score"]), |p| format!("{p:.2}")),
                    top,
                ]
            })
            .collect();
        show_table(
            &[
                "ID",
                "DETECTOR",
                "STREAM",
                "RAISED_AT",
                "STATE",
                "SHELVED",
                "PEAK",
                "TOP",
            ],
            &rows,
        );
    });
    Ok(())
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_each_column_to_its_widest_cell() {
        let out = table(
            &["NAME", "N"],
            &[
                vec!["pump".into(), "12".into()],
                vec!["compressor".into(), "3".into()],
            ],
        );
        assert_eq!(out, "NAME        N\npump        12\ncompressor  3\n");
    }

    #[test]
    fn exit_codes_tell_refused_from_missing_from_unavailable() {
        let failure = |status| {
            anyhow::Error::from(ApiFailure {
                method: "GET",
                path: "/x".into(),
                status,
                body: String::new(),
            })
        };
        assert_eq!(exit_code(&failure(404)), EXIT_NOT_FOUND);
        assert_eq!(exit_code(&failure(409)), EXIT_REFUSED);
        assert_eq!(exit_code(&failure(401)), EXIT_REFUSED);
        assert_eq!(exit_code(&failure(503)), EXIT_UNAVAILABLE);
        assert_eq!(exit_code(&anyhow::anyhow!("a file")), EXIT_FAILED);
        assert_eq!(EXIT_OK, 0);
        assert_eq!(EXIT_USAGE, 2);
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encode("2026-11-30T10:00:00+01:00"),
            "2026-11-30T10%3A00%3A00%2B01%3A00"
        );
        assert_eq!(encode("pump-1_a.b~"), "pump-1_a.b~");
    }

    #[test]
    fn only_a_server_on_this_box_is_loopback() {
        for url in [
            "http://127.0.0.1:8750",
            "http://localhost:8750/",
            "http://[::1]:8750",
            "127.0.0.2:1",
            "http://user@127.0.0.1",
        ] {
            assert!(is_loopback_url(url), "{url}");
        }
        for url in [
            "http://10.0.0.5:8750",
            "http://box-17.plant:8750",
            "http://127.0.0.1.example.com",
            "http://[2001:db8::1]:8750",
        ] {
            assert!(!is_loopback_url(url), "{url}");
        }
    }

    #[test]
    fn a_token_given_wins_over_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin.token"), "generated\n").unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, " from-file \n").unwrap();
        let connection = |token: Option<&str>, token_file: Option<PathBuf>| Connection {
            url: "http://127.0.0.1:1".into(),
            token: token.map(str::to_owned),
            token_file,
            data_dir: dir.path().to_owned(),
        };
        assert_eq!(
            connection(Some("given"), None).token().unwrap().as_deref(),
            Some("given")
        );
        assert_eq!(
            connection(None, Some(file)).token().unwrap().as_deref(),
            Some("from-file")
        );
        assert_eq!(
            connection(None, None).token().unwrap().as_deref(),
            Some("generated")
        );
        let missing = Connection {
            data_dir: dir.path().join("elsewhere"),
            ..connection(None, None)
        };
        assert_eq!(missing.token().unwrap(), None);
        // This box's token never goes to another box.
        let remote = Connection {
            url: "http://10.0.0.5:8750".into(),
            ..connection(None, None)
        };
        assert_eq!(remote.token().unwrap(), None);
    }
}
