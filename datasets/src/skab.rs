//! Delimited data files: the generic reader ([`read_csv`] with a [`CsvSpec`] naming the
//! timestamp, feature and label columns) and SKAB's layout on top of it (`;`-separated, a
//! `datetime` column, eight sensors, and in labelled files `anomaly` and `changepoint` columns
//! of 0/1, also written 0.0/1.0).
//!
//! Loading is strict: a ragged row, a value that is not a number or a missing column is an
//! error naming the line, never a silent guess. A timestamp that repeats or steps back is not an
//! error — real clocks step (daylight saving, NTP), and NAB's own files hold such steps — but it
//! is never hidden either: rows stay in file order, nothing is dropped, and the steps are counted
//! ([`SkabFile::clock_steps`]) for the caller to report.

use std::path::{Path, PathBuf};

/// Why a data file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not valid CSV", path.display())]
    Csv {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    #[error("{}: no column {column:?}", path.display())]
    MissingColumn { path: PathBuf, column: String },
    #[error("{}, line {line}: {got} fields, the header has {expected}", path.display())]
    Ragged {
        path: PathBuf,
        line: u64,
        expected: usize,
        got: usize,
    },
    #[error("{}, line {line}: {column} is {value:?}, not a number", path.display())]
    BadNumber {
        path: PathBuf,
        line: u64,
        column: String,
        value: String,
    },
    #[error("{}, line {line}: {column} is {value:?}, not 0 or 1", path.display())]
    BadLabel {
        path: PathBuf,
        line: u64,
        column: String,
        value: String,
    },
    #[error("{}, line {line}: {value:?} is not a date-time", path.display())]
    BadTimestamp {
        path: PathBuf,
        line: u64,
        value: String,
    },
    #[error("{}: no data rows", path.display())]
    Empty { path: PathBuf },
    #[error("{}: {message}", path.display())]
    Windows { path: PathBuf, message: String },
}

/// One SKAB file in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct SkabFile {
    /// Sensor names, in file order.
    pub features: Vec<String>,
    /// Timestamps, nanoseconds since the Unix epoch (the file's local time read as UTC).
    pub timestamps_ns: Vec<i64>,
    /// Sensor values, row-major, `features.len()` per row.
    pub values: Vec<f32>,
    /// Per-row anomaly labels, when the file has them.
    pub anomaly: Option<Vec<u8>>,
    /// Per-row changepoint labels, when the file has them.
    pub changepoint: Option<Vec<u8>>,
    /// Rows whose timestamp repeats or steps back from the row before (kept, in file order).
    pub clock_steps: usize,
}

impl SkabFile {
    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.timestamps_ns.len()
    }

    /// The sensor values of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        let n = self.features.len();
        &self.values[i * n..(i + 1) * n]
    }
}

/// Parses `2020-03-09 10:14:33` (also with a `T`, and with fractional seconds).
pub(crate) fn parse_datetime(text: &str) -> Option<i64> {
    let text = text.trim();
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
        .iter()
        .find_map(|format| chrono::NaiveDateTime::parse_from_str(text, format).ok())
        .and_then(|t| t.and_utc().timestamp_nanos_opt())
}

/// Writes `file` in SKAB's layout (`;`-separated; `datetime` as `YYYY-MM-DD HH:MM:SS`, read
/// back as the same instant; the sensors; `anomaly` and `changepoint` when it has them). Values
/// are written in their shortest exact form, so [`read_skab`] reads back the same numbers.
pub fn write_skab(path: &Path, file: &SkabFile) -> std::io::Result<()> {
    use std::fmt::Write as _;
    let n = file.features.len();
    let mut text = String::from("datetime");
    for name in &file.features {
        text.push(';');
        text.push_str(name);
    }
    let labels = file.anomaly.as_ref().zip(file.changepoint.as_ref());
    if labels.is_some() {
        text.push_str(";anomaly;changepoint");
    }
    text.push('\n');
    for (i, &ns) in file.timestamps_ns.iter().enumerate() {
        let at = chrono::DateTime::from_timestamp_nanos(ns);
        let _ = write!(text, "{}", at.format("%Y-%m-%d %H:%M:%S%.f"));
        for value in &file.values[i * n..(i + 1) * n] {
            let _ = write!(text, ";{value}");
        }
        if let Some((anomaly, changepoint)) = labels {
            let _ = write!(text, ";{};{}", anomaly[i], changepoint[i]);
        }
        text.push('\n');
    }
    std::fs::write(path, text)
}

/// Reads a SKAB file.
pub fn read_skab(path: &Path) -> Result<SkabFile, DataError> {
    let spec = CsvSpec {
        delimiter: b';',
        timestamp: "datetime".into(),
        features: None,
        anomaly: Label::IfPresent("anomaly".into()),
        changepoint: Label::IfPresent("changepoint".into()),
    };
    read_csv(path, &spec)
}

/// A label column of a CSV file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Label {
    /// The file has none.
    Absent,
    /// Read it if the file has it.
    IfPresent(String),
    /// The file must have it.
    Required(String),
}

/// Which columns of a generic CSV file to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvSpec {
    pub delimiter: u8,
    /// The timestamp column.
    pub timestamp: String,
    /// Feature columns in order; `None` takes every column that is not a timestamp or label.
    pub features: Option<Vec<String>>,
    /// The 0/1 anomaly label column.
    pub anomaly: Label,
    /// The 0/1 changepoint label column.
    pub changepoint: Label,
}

/// Reads a delimited file with a timestamp column, numeric feature columns and optional 0/1
/// label columns (SKAB's layout is one case, NAB's another).
pub fn read_csv(path: &Path, spec: &CsvSpec) -> Result<SkabFile, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    let csv_error = |source| DataError::Csv {
        path: path.to_owned(),
        source,
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(spec.delimiter)
        .flexible(true)
        .from_reader(bytes.as_slice());
    let header: Vec<String> = reader
        .headers()
        .map_err(csv_error)?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    let column = |name: &str| header.iter().position(|h| h == name);
    let required = |name: &str| {
        column(name).ok_or_else(|| DataError::MissingColumn {
            path: path.to_owned(),
            column: name.into(),
        })
    };
    let time_column = required(&spec.timestamp)?;
    let label_columns: Vec<Option<usize>> = [&spec.anomaly, &spec.changepoint]
        .into_iter()
        .map(|label| match label {
            Label::Absent => Ok(None),
            Label::IfPresent(name) => Ok(column(name)),
            Label::Required(name) => required(name).map(Some),
        })
        .collect::<Result<_, _>>()?;
    let feature_columns: Vec<usize> = match &spec.features {
        Some(names) => names
            .iter()
            .map(|name| required(name))
            .collect::<Result<_, _>>()?,
        None => (0..header.len())
            .filter(|&i| i != time_column && !label_columns.contains(&Some(i)))
            .collect(),
    };
    let mut file = SkabFile {
        features: feature_columns.iter().map(|&i| header[i].clone()).collect(),
        timestamps_ns: Vec::new(),
        values: Vec::new(),
        anomaly: label_columns[0].map(|_| Vec::new()),
        changepoint: label_columns[1].map(|_| Vec::new()),
        clock_steps: 0,
    };
    for record in reader.records() {
        let record = record.map_err(csv_error)?;
        let line = record.position().map_or(0, |p| p.line());
        if record.len() != header.len() {
            return Err(DataError::Ragged {
                path: path.to_owned(),
                line,
                expected: header.len(),
                got: record.len(),
            });
        }
        let text = &record[time_column];
        let ts = parse_datetime(text).ok_or_else(|| DataError::BadTimestamp {
            path: path.to_owned(),
            line,
            value: text.to_owned(),
        })?;
        if file.timestamps_ns.last().is_some_and(|&last| ts <= last) {
            file.clock_steps += 1;
        }
        file.timestamps_ns.push(ts);
        for &i in &feature_columns {
            let value = record[i]
                .trim()
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite());
            file.values.push(value.ok_or_else(|| DataError::BadNumber {
                path: path.to_owned(),
                line,
                column: header[i].clone(),
                value: record[i].to_owned(),
            })?);
        }
        for (labels, column) in [
            (&mut file.anomaly, label_columns[0]),
            (&mut file.changepoint, label_columns[1]),
        ] {
            if let (Some(labels), Some(i)) = (labels.as_mut(), column) {
                let label = match record[i].trim() {
                    "0" | "0.0" => 0,
                    "1" | "1.0" => 1,
                    other => {
                        return Err(DataError::BadLabel {
                            path: path.to_owned(),
                            line,
                            column: header[i].clone(),
                            value: other.to_owned(),
                        })
                    }
                };
                labels.push(label);
            }
        }
    }
    if file.timestamps_ns.is_empty() {
        return Err(DataError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(file)
}

/// Every labelled file in SKAB's layout anywhere under `dir` (a `;`-separated CSV whose header
/// has a `datetime` and an `anomaly` column: SKAB's `other/`, `valve1/`, `valve2/`, the
/// Tennessee Eastman faults, recordings of one's own), as relative paths in the reference
/// scorer's order: by folder, then by file number. Hidden directories are skipped, and so are
/// files without labels (a normal run).
pub fn labelled_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    Layout::Skab.labelled_files(dir)
}

/// How the labelled files of an evaluation are laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// SKAB's: `;`-separated, `datetime`, the sensors, `anomaly` and optional `changepoint`.
    Skab,
    /// Any delimited file (`vigil train --format csv`'s spec). Its `anomaly` label names the
    /// column a file must have to be evaluated; without a `changepoint` column the true
    /// changepoints are the label's rises and falls.
    Csv(CsvSpec),
}

impl Layout {
    /// Every `.csv` file under `dir` (at any depth, hidden entries skipped) whose header has
    /// the timestamp and anomaly label columns, as relative paths ordered by folder, then by
    /// file number, then by name.
    pub fn labelled_files(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        let mut pending = vec![PathBuf::new()];
        while let Some(relative) = pending.pop() {
            for entry in std::fs::read_dir(dir.join(&relative))? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let path = relative.join(&name);
                if entry.file_type()?.is_dir() {
                    pending.push(path);
                } else if name.ends_with(".csv") && self.is_labelled(&dir.join(&path)) {
                    files.push(path);
                }
            }
        }
        let key = |p: &PathBuf| {
            let folder = p.parent().map(Path::to_owned).unwrap_or_default();
            let stem = p
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("")
                .to_owned();
            (folder, stem.parse::<u64>().unwrap_or(u64::MAX), stem)
        };
        files.sort_by_key(key);
        Ok(files)
    }

    /// Reads one labelled file; a CSV file without changepoint labels gets its anomaly
    /// label's rises and falls.
    pub fn read(&self, path: &Path) -> Result<SkabFile, DataError> {
        match self {
            Layout::Skab => read_skab(path),
            Layout::Csv(spec) => {
                let mut file = read_csv(path, spec)?;
                if file.changepoint.is_none() {
                    file.changepoint = file
                        .anomaly
                        .as_deref()
                        .map(crate::metrics::derive_changepoints);
                }
                Ok(file)
            }
        }
    }

    /// Whether a file's header has the columns this layout needs for an evaluation.
    fn is_labelled(&self, path: &Path) -> bool {
        use std::io::BufRead;
        let (delimiter, timestamp, label) = match self {
            Layout::Skab => (b';', "datetime", "anomaly"),
            Layout::Csv(spec) => match &spec.anomaly {
                Label::Required(name) | Label::IfPresent(name) => {
                    (spec.delimiter, spec.timestamp.as_str(), name.as_str())
                }
                Label::Absent => return false,
            },
        };
        let Ok(file) = std::fs::File::open(path) else {
            return false;
        };
        let mut header = String::new();
        if std::io::BufReader::new(file)
            .read_line(&mut header)
            .is_err()
        {
            return false;
        }
        let columns: Vec<&str> = header
            .trim_end()
            .split(char::from(delimiter))
            .map(|c| c.trim().trim_matches('"'))
            .collect();
        columns.contains(&timestamp) && columns.contains(&label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_skab() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/skab")
    }

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.csv");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn every_shared_file_loads_with_eight_sensors() {
        let dir = shared_skab();
        let files = labelled_files(&dir).unwrap();
        assert_eq!(files.len(), 20);
        // The reference scorer's order: folder name, then file number.
        assert_eq!(files[0], PathBuf::from("other/2.csv"));
        assert_eq!(files[8], PathBuf::from("valve1/0.csv"));
        assert_eq!(files[18], PathBuf::from("valve2/0.csv"));
        for rel in &files {
            let file = read_skab(&dir.join(rel)).unwrap();
            assert_eq!(file.features.len(), 8, "{}", rel.display());
            assert_eq!(file.values.len(), 8 * file.n_rows());
            assert_eq!(file.anomaly.as_ref().unwrap().len(), file.n_rows());
        }
        let free = read_skab(&dir.join("anomaly-free/anomaly-free-part1.csv")).unwrap();
        assert!(free.anomaly.is_none() && free.changepoint.is_none());
        assert_eq!(free.features[0], "Accelerometer1RMS");
        let first = read_skab(&dir.join("valve1/0.csv")).unwrap();
        assert_eq!(first.row(0)[2], 1.3302);
        assert_eq!(
            first.timestamps_ns[1] - first.timestamps_ns[0],
            1_000_000_000
        );
    }

    #[test]
    fn a_generic_csv_reads_the_chosen_columns() {
        let (_dir, path) = write(
            "time,noise,b,a,fault\n2024-01-01T00:00:00,9,2,1,0\n2024-01-01T00:00:10,9,4,3,1\n",
        );
        let spec = CsvSpec {
            delimiter: b',',
            timestamp: "time".into(),
            features: Some(vec!["a".into(), "b".into()]),
            anomaly: Label::Required("fault".into()),
            changepoint: Label::Absent,
        };
        let table = read_csv(&path, &spec).unwrap();
        assert_eq!(table.features, vec!["a", "b"]);
        assert_eq!(table.values, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(table.anomaly, Some(vec![0, 1]));
        assert_eq!(
            table.timestamps_ns[1] - table.timestamps_ns[0],
            10_000_000_000
        );
        let missing = CsvSpec {
            anomaly: Label::Required("label".into()),
            ..spec
        };
        let message = read_csv(&path, &missing).unwrap_err().to_string();
        assert!(message.contains("no column \"label\""), "{message}");
    }

    #[test]
    fn malformed_files_name_the_problem_and_the_line() {
        let header = "datetime;a;b;anomaly;changepoint\n";
        let ok_row = "2020-03-09 10:14:33;1;2;0;0\n";
        let cases = [
            (
                format!("{header}{ok_row}2020-03-09 10:14:34;1;0;0\n"),
                "3: 4 fields",
            ),
            (
                format!("{header}{ok_row}2020-03-09 10:14:34;1;x;0;0\n"),
                "b is \"x\"",
            ),
            (format!("{header}yesterday;1;2;0;0\n"), "not a date-time"),
            (
                format!("{header}{}", ok_row.replace(";0;0", ";2;0")),
                "not 0 or 1",
            ),
            ("a;b\n1;2\n".to_owned(), "no column \"datetime\""),
            (header.to_owned(), "no data rows"),
            (
                format!("{header}{}", ok_row.replace(";1;", ";NaN;")),
                "not a number",
            ),
        ];
        for (text, expected) in cases {
            let (_dir, path) = write(&text);
            let message = read_skab(&path).unwrap_err().to_string();
            assert!(
                message.contains(expected),
                "{message:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn a_written_file_reads_back_as_the_same_numbers_labels_and_instants() {
        let machine = crate::synthetic::generate(&crate::synthetic::MachineSpec {
            rows: 900,
            ..Default::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("machine.csv");
        write_skab(&path, &machine.table).unwrap();
        let back = read_skab(&path).unwrap();
        assert_eq!(back.features, machine.table.features);
        assert_eq!(back.timestamps_ns, machine.table.timestamps_ns);
        assert_eq!(back.values, machine.table.values);
        assert_eq!(back.anomaly, machine.table.anomaly);
        assert_eq!(back.changepoint, machine.table.changepoint);
        assert!(back.anomaly.as_ref().unwrap().contains(&1));
    }

    #[test]
    fn repeated_and_backward_timestamps_are_kept_in_file_order_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("steps.csv");
        std::fs::write(
            &path,
            "timestamp,value\n2014-03-30 01:00:00,1\n2014-03-30 02:00:00,2\n\
             2014-03-30 02:00:00,3\n2014-03-30 01:30:00,4\n2014-03-30 03:00:00,5\n",
        )
        .unwrap();
        let spec = CsvSpec {
            delimiter: b',',
            timestamp: "timestamp".into(),
            features: Some(vec!["value".into()]),
            anomaly: Label::Absent,
            changepoint: Label::Absent,
        };
        let table = read_csv(&path, &spec).unwrap();
        assert_eq!(table.values, vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(table.clock_steps, 2);
        assert!(table.timestamps_ns[3] < table.timestamps_ns[2]);
    }
}

#[cfg(test)]
mod discovery {
    use super::*;

    #[test]
    fn labelled_files_are_found_at_any_depth_and_the_rest_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let put = |relative: &str, text: &str| {
            let path = dir.path().join(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        let labelled = "datetime;a;anomaly;changepoint\n2020-01-01 00:00:00;1;0;0\n";
        put("plant/line2/10.csv", labelled);
        put("plant/line2/9.csv", labelled);
        put("top.csv", labelled);
        put("plant/normal.csv", "datetime;a\n2020-01-01 00:00:00;1\n");
        put("nab/series.csv", "timestamp,value\n2020-01-01 00:00:00,1\n");
        put(".hidden/1.csv", labelled);
        put("plant/notes.txt", labelled);
        let files = labelled_files(dir.path()).unwrap();
        assert_eq!(
            files,
            vec![
                PathBuf::from("top.csv"),
                PathBuf::from("plant/line2/9.csv"),
                PathBuf::from("plant/line2/10.csv"),
            ]
        );
    }

    #[test]
    fn the_tennessee_eastman_files_are_found_with_their_labelled_normal_run() {
        // Same layout as SKAB: eleven faults and a normal run labelled all normal.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/tep");
        let files = labelled_files(&dir).unwrap();
        assert_eq!(files.len(), 12, "{files:?}");
        assert_eq!(files[0], PathBuf::from("fault01.csv"));
        assert!(files.contains(&PathBuf::from("normal.csv")));
    }
}
