//! NAB series: a `timestamp,value` CSV and its labelled anomaly windows (`windows.json`, keyed
//! by the series' path relative to the data directory, e.g. `realKnownCause/x.csv`).

use std::path::Path;

use crate::skab::DataError;

/// One NAB series in memory, with per-row labels from its windows.
#[derive(Debug, Clone, PartialEq)]
pub struct NabSeries {
    /// Nanoseconds since the Unix epoch (the file's time read as UTC).
    pub timestamps_ns: Vec<i64>,
    pub values: Vec<f32>,
    /// Labelled windows, `[start, end]` inclusive, in nanoseconds.
    pub windows: Vec<(i64, i64)>,
    /// 1 where the row lies inside a window.
    pub labels: Vec<u8>,
    /// Rows whose timestamp repeats or steps back (kept in file order; see `skab::read_csv`).
    pub clock_steps: usize,
}

/// Reads the series `data_dir/relative` and its windows from `data_dir/windows.json`.
pub fn read_nab(data_dir: &Path, relative: &str) -> Result<NabSeries, DataError> {
    let path = data_dir.join(relative);
    let spec = crate::skab::CsvSpec {
        delimiter: b',',
        timestamp: "timestamp".into(),
        features: Some(vec!["value".into()]),
        anomaly: crate::skab::Label::Absent,
        changepoint: crate::skab::Label::Absent,
    };
    let table = crate::skab::read_csv(&path, &spec)?;
    // The spec reads exactly one feature column: `value`.
    let values = table.values;
    let clock_steps = table.clock_steps;

    let windows_path = data_dir.join("windows.json");
    let text = std::fs::read(&windows_path).map_err(|source| DataError::Io {
        path: windows_path.clone(),
        source,
    })?;
    let all: std::collections::HashMap<String, Vec<(String, String)>> =
        serde_json::from_slice(&text).map_err(|err| DataError::Windows {
            path: windows_path.clone(),
            message: err.to_string(),
        })?;
    let listed = all.get(relative).ok_or_else(|| DataError::Windows {
        path: windows_path.clone(),
        message: format!("no windows for {relative}"),
    })?;
    let mut windows = Vec::with_capacity(listed.len());
    for (start, end) in listed {
        let parse = |t: &String| {
            crate::skab::parse_datetime(t).ok_or_else(|| DataError::Windows {
                path: windows_path.clone(),
                message: format!("{t:?} is not a date-time"),
            })
        };
        windows.push((parse(start)?, parse(end)?));
    }
    let labels = table
        .timestamps_ns
        .iter()
        .map(|&t| u8::from(windows.iter().any(|&(a, b)| a <= t && t <= b)))
        .collect();
    Ok(NabSeries {
        timestamps_ns: table.timestamps_ns,
        values,
        windows,
        labels,
        clock_steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_series_load_with_labels_from_their_windows() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/nab");
        let series = read_nab(
            &dir,
            "realKnownCause/ambient_temperature_system_failure.csv",
        )
        .unwrap();
        assert_eq!(series.windows.len(), 2);
        assert_eq!(series.values.len(), series.timestamps_ns.len());
        assert!((series.values[0] - 69.88).abs() < 1e-2);
        let labelled = series.labels.iter().filter(|&&l| l == 1).count();
        assert!(
            labelled > 0 && labelled < series.labels.len() / 2,
            "{labelled}"
        );
        // Hourly data: a window of 15 days and 2 hours holds 363 rows if none is missing.
        let first = series.windows[0];
        let inside = series
            .timestamps_ns
            .iter()
            .filter(|&&t| first.0 <= t && t <= first.1)
            .count();
        assert!(inside > 300 && inside <= 363, "{inside}");
        let err = read_nab(&dir, "realKnownCause/missing.csv").unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }
}
