//! `vigil export`: a detector's observations as they were answered, as CSV or JSON lines —
//! from a data directory (read-only, while the server runs or not) or from a server's API.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::Value;
use vigil_datasets::{ObservationLog, ObservationQuery};

use crate::local::Api;

/// Observations read per page.
const PAGE: usize = 5000;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Read the log of this data directory (read-only; the server may be running).
    #[arg(long, conflicts_with = "url", required_unless_present = "url")]
    data_dir: Option<PathBuf>,
    /// Read through this server's API (`GET /v1/detectors/{name}/observations`).
    #[arg(long, env = "VIGIL_URL")]
    url: Option<String>,
    /// A token of the server at --url that may read (read or admin).
    #[arg(long, env = "VIGIL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long)]
    detector: String,
    #[arg(long)]
    stream: Option<String>,
    /// Received at or after: Unix seconds or an RFC 3339 date-time.
    #[arg(long)]
    since: Option<String>,
    /// Received before: Unix seconds or an RFC 3339 date-time.
    #[arg(long)]
    until: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Csv)]
    format: Format,
    /// Write here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// A header, then one row per observation: id, stream, ts, received_at, each feature by
    /// name, score, threshold, anomaly, alarm, changepoint, model_version, label.
    Csv,
    /// One JSON object per line, as the API shows an observation.
    Jsonl,
}

/// A time given on the command line, in Unix seconds.
fn time(name: &str, text: &str) -> anyhow::Result<f64> {
    vigil_inference::api::unix_seconds_of(text)
        .with_context(|| format!("--{name} {text:?} is neither Unix seconds nor RFC 3339"))
}

/// Where pages of observations come from.
enum Source {
    Log(ObservationLog, ObservationQuery),
    Api(Api, String),
}

impl Source {
    /// The next page after `after_id`: rows as the API shows them, and the id to continue
    /// after (None on the last page).
    fn page(&mut self, after_id: Option<i64>) -> anyhow::Result<(Vec<Value>, Option<i64>)> {
        match self {
            Source::Log(log, query) => {
                query.after_id = after_id;
                let page = log.observations(query)?;
                let next = page
                    .more
                    .then(|| page.observations.last().map(|o| o.id))
                    .flatten();
                let rows = page
                    .observations
                    .iter()
                    .map(|o| {
                        vigil_inference::api::observation_json(o, page.labels.get(&o.id).copied())
                    })
                    .collect();
                Ok((rows, next))
            }
            Source::Api(api, path) => {
                let mut path = path.clone();
                if let Some(after) = after_id {
                    path += &format!("&after_id={after}");
                }
                let answer = api.get(&path)?;
                let rows = answer["observations"]
                    .as_array()
                    .cloned()
                    .context("the answer has no observations")?;
                Ok((rows, answer["next_after_id"].as_i64()))
            }
        }
    }
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The detector's feature names: from the server, or from the data directory's definition
/// (`detectors/NAME.json`); `None` if neither says.
fn feature_names(args: &ExportArgs, api: Option<&Api>) -> anyhow::Result<Option<Vec<String>>> {
    let names = |value: &Value| -> Option<Vec<String>> {
        let features = value["schema"]["features"]
            .as_array()
            .or_else(|| value["features"].as_array())?;
        features
            .iter()
            .map(|f| f["name"].as_str().or_else(|| f.as_str()).map(str::to_owned))
            .collect()
    };
    if let Some(api) = api {
        let shown = api.get(&format!("/v1/detectors/{}", encode(&args.detector)))?;
        return Ok(names(&shown));
    }
    let dir = args.data_dir.as_ref().context("--data-dir or --url")?;
    let definition = dir
        .join("detectors")
        .join(format!("{}.json", args.detector));
    Ok(std::fs::read(&definition)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .and_then(|value| names(&value)))
}

pub(super) fn export(args: ExportArgs) -> anyhow::Result<()> {
    let since = args
        .since
        .as_deref()
        .map(|t| time("since", t))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|t| time("until", t))
        .transpose()?;
    let (mut source, names) = match (&args.data_dir, &args.url) {
        (Some(dir), _) => {
            let path = dir.join(vigil_inference::LOG_FILE);
            anyhow::ensure!(path.exists(), "no observation log at {}", path.display());
            let log = ObservationLog::open_reader(&path)?;
            let query = ObservationQuery {
                detector: args.detector.clone(),
                stream: args.stream.clone(),
                since,
                until,
                after_id: None,
                limit: PAGE,
            };
            (Source::Log(log, query), feature_names(&args, None)?)
        }
        (None, Some(url)) => {
            let api = Api::new(url, args.token.clone());
            let names = feature_names(&args, Some(&api))?;
            let mut path = format!(
                "/v1/detectors/{}/observations?limit={PAGE}",
                encode(&args.detector)
            );
            for (key, value) in [
                ("stream", args.stream.clone()),
                ("since", since.map(|t| t.to_string())),
                ("until", until.map(|t| t.to_string())),
            ] {
                if let Some(value) = value {
                    path += &format!("&{key}={}", encode(&value));
                }
            }
            (Source::Api(api, path), names)
        }
        (None, None) => anyhow::bail!("say where to read: --data-dir DIR or --url URL"),
    };
    let out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot write {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut writer = Writer::new(args.format, out, names);
    let mut after = None;
    loop {
        let (rows, next) = source.page(after)?;
        for row in &rows {
            writer.row(row)?;
        }
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    writer.finish()
}

/// Writes rows in the chosen format.
struct Writer {
    format: Format,
    csv: Option<csv::Writer<Box<dyn Write>>>,
    lines: Option<Box<dyn Write>>,
    names: Option<Vec<String>>,
    header: bool,
}

const HEAD: [&str; 4] = ["id", "stream", "ts", "received_at"];
const TAIL: [&str; 7] = [
    "score",
    "threshold",
    "anomaly",
    "alarm",
    "changepoint",
    "model_version",
    "label",
];

impl Writer {
    fn new(format: Format, out: Box<dyn Write>, names: Option<Vec<String>>) -> Writer {
        match format {
            Format::Csv => Writer {
                format,
                csv: Some(csv::Writer::from_writer(out)),
                lines: None,
                names,
                header: false,
            },
            Format::Jsonl => Writer {
                format,
                csv: None,
                lines: Some(out),
                names,
                header: false,
            },
        }
    }

    fn row(&mut self, row: &Value) -> anyhow::Result<()> {
        if self.format == Format::Jsonl {
            let out = self.lines.as_mut().context("no output")?;
            serde_json::to_writer(&mut *out, row)?;
            out.write_all(b"\n")?;
            return Ok(());
        }
        let features = row["features"].as_array().cloned().unwrap_or_default();
        let csv = self.csv.as_mut().context("no output")?;
        if !self.header {
            // Named by the detector's schema when its width matches; else feature_0…
            let names: Vec<String> = match &self.names {
                Some(names) if names.len() == features.len() => names.clone(),
                _ => (0..features.len())
                    .map(|i| format!("feature_{i}"))
                    .collect(),
            };
            let header = HEAD
                .iter()
                .map(|s| s.to_string())
                .chain(names)
                .chain(TAIL.iter().map(|s| s.to_string()));
            csv.write_record(header)?;
            self.header = true;
        }
        let cell = |v: &Value| match v {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let record = HEAD
            .iter()
            .map(|k| cell(&row[*k]))
            .chain(features.iter().map(cell))
            .chain(TAIL.iter().map(|k| cell(&row[*k])));
        csv.write_record(record)?;
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        if let Some(mut csv) = self.csv {
            csv.flush()?;
        }
        if let Some(mut lines) = self.lines {
            lines.flush()?;
        }
        Ok(())
    }
}
