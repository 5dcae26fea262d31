//! The observation log: one SQLite file in WAL mode.
//!
//! [`ObservationLog`] is a plain synchronous handle. The server gives exactly one of them to
//! its writer thread (one writer, group commit: many requests' rows per transaction); readers
//! open their own handles. Rows are appended in transactions that commit before the caller is
//! told they are stored. Retention keeps at most a set number of rows per detector.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};

/// What can go wrong with the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open the observation log at {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the observation log has schema version {found}, newer than this build's {known}")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("observation log query failed")]
    Sqlite(#[from] rusqlite::Error),
}

/// How hard a commit holds on to its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// WAL with `synchronous=NORMAL`: a commit survives the process being killed; the last
    /// commits before a power cut may be lost. The default, as in most embedded deployments.
    #[default]
    Normal,
    /// WAL with `synchronous=FULL`: every commit is fsynced; survives a power cut.
    Full,
}

/// One scored reading, as the writer stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewObservation {
    pub id: i64,
    /// Shared by every row of a request: cloning it is a reference count.
    pub detector: Arc<str>,
    pub stream: String,
    /// The client's timestamp, Unix seconds, if it sent one.
    pub ts: Option<f64>,
    /// When the server received it, Unix seconds.
    pub received_at: f64,
    /// The raw reading, in schema order.
    pub features: Vec<f32>,
    /// None while a window or baseline was still filling.
    pub score: Option<f32>,
    pub threshold: Option<f32>,
    pub anomaly: Option<bool>,
    pub model_version: Arc<str>,
}

/// A stored observation, as readers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedObservation {
    pub id: i64,
    pub stream: String,
    pub features: Vec<f32>,
    pub score: Option<f32>,
    pub anomaly: Option<bool>,
    pub model_version: String,
}

/// A model decision worth keeping: a package accepted or refused, a version activated.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEvent {
    pub detector: String,
    pub at: f64,
    pub event: String,
    pub version: Option<String>,
    pub reason: Option<String>,
}

/// Schema migrations, applied in order; `PRAGMA user_version` counts how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: streams, observations and model events. Observations refer to their stream by an
    // integer, so the per-stream index compares integers, not text, on every insert.
    "CREATE TABLE streams (
        id INTEGER PRIMARY KEY,
        detector TEXT NOT NULL,
        name TEXT NOT NULL,
        UNIQUE (detector, name)
    );
    CREATE TABLE observations (
        id INTEGER PRIMARY KEY,
        stream_id INTEGER NOT NULL REFERENCES streams (id),
        ts REAL,
        received_at REAL NOT NULL,
        features BLOB NOT NULL,
        score REAL,
        threshold REAL,
        anomaly INTEGER,
        model_version TEXT NOT NULL,
        label TEXT
    );
    CREATE INDEX observations_by_stream ON observations (stream_id, id);
    CREATE TABLE model_events (
        id INTEGER PRIMARY KEY,
        detector TEXT NOT NULL,
        at REAL NOT NULL,
        event TEXT NOT NULL,
        version TEXT,
        reason TEXT
    );",
];

/// A handle on the log file.
#[derive(Debug)]
pub struct ObservationLog {
    conn: Connection,
    /// Stream ids by detector, then stream name: filled as streams are first written.
    stream_ids: HashMap<String, HashMap<String, i64>>,
}

const INSERT_OBSERVATION: &str = "INSERT INTO observations
    (id, stream_id, ts, received_at, features, score, threshold, anomaly, model_version)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// Columns bound per observation.
const COLUMNS: usize = 9;
/// Observations per multi-row INSERT.
const ROWS_PER_INSERT: usize = 16;

/// `INSERT … VALUES (…), (…), …` for `ROWS_PER_INSERT` rows.
fn insert_many_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let row = format!("({})", ["?"; COLUMNS].join(", "));
        format!(
            "INSERT INTO observations
             (id, stream_id, ts, received_at, features, score, threshold, anomaly, model_version)
             VALUES {}",
            vec![row; ROWS_PER_INSERT].join(", ")
        )
    })
}

/// The columns readers get, from `observations o JOIN streams s`.
const LOGGED_COLUMNS: &str = "o.id, s.name, o.features, o.score, o.anomaly, o.model_version";

impl ObservationLog {
    /// Opens (creating if needed) the log at `path` and brings its schema up to date.
    pub fn open(path: &Path, durability: Durability) -> Result<Self, LogError> {
        let open_error = |source| LogError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_error)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_error)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_error)?;
        let synchronous = match durability {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        };
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(open_error)?;
        // Checkpoints belong to a background thread (see `checkpoint`); this only bounds the
        // WAL if that thread falls behind. After a checkpoint the file is cut back to 64 MiB.
        conn.pragma_update(None, "wal_autocheckpoint", 16_384)
            .map_err(open_error)?;
        conn.pragma_update(None, "journal_size_limit", 64 << 20)
            .map_err(open_error)?;
        // 16 MiB of page cache (the default is 2 MiB): the hot end of the table and its index
        // stay in memory.
        conn.pragma_update(None, "cache_size", -16_384)
            .map_err(open_error)?;
        migrate(&mut conn)?;
        Ok(ObservationLog {
            conn,
            stream_ids: HashMap::new(),
        })
    }

    /// Copies committed WAL frames into the database without blocking the writer (SQLite's
    /// passive checkpoint); returns the frames in the WAL and those checkpointed.
    pub fn checkpoint(&self) -> Result<(i64, i64), LogError> {
        Ok(self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })?)
    }

    /// Appends observations in one transaction; returns once it has committed.
    pub fn append(&mut self, observations: &[NewObservation]) -> Result<(), LogError> {
        self.append_with_events(observations, &[])
    }

    /// Appends observations and model events in one transaction.
    pub fn append_with_events(
        &mut self,
        observations: &[NewObservation],
        events: &[ModelEvent],
    ) -> Result<(), LogError> {
        let tx = self.conn.transaction()?;
        {
            let mut insert_one = tx.prepare_cached(INSERT_OBSERVATION)?;
            let mut insert_many = tx.prepare_cached(insert_many_sql())?;
            let mut blob = Vec::new();
            for chunk in observations.chunks(ROWS_PER_INSERT) {
                // One statement per 16 rows: SQLite's per-statement work is paid once.
                let full = chunk.len() == ROWS_PER_INSERT;
                for (k, o) in chunk.iter().enumerate() {
                    let stream_id = match self
                        .stream_ids
                        .get(&*o.detector)
                        .and_then(|s| s.get(&o.stream))
                    {
                        Some(&id) => id,
                        None => {
                            let id = stream_id(&tx, &o.detector, &o.stream)?;
                            self.stream_ids
                                .entry(o.detector.to_string())
                                .or_default()
                                .insert(o.stream.clone(), id);
                            id
                        }
                    };
                    blob.clear();
                    blob.extend(o.features.iter().flat_map(|x| x.to_le_bytes()));
                    let model_version: &str = &o.model_version;
                    let values: [&dyn rusqlite::ToSql; COLUMNS] = [
                        &o.id,
                        &stream_id,
                        &o.ts,
                        &o.received_at,
                        &blob,
                        &o.score,
                        &o.threshold,
                        &o.anomaly,
                        &model_version,
                    ];
                    if full {
                        for (c, value) in values.iter().enumerate() {
                            // Binding copies the value (SQLITE_TRANSIENT), so `blob` can be reused.
                            insert_many.raw_bind_parameter(k * COLUMNS + c + 1, value)?;
                        }
                    } else {
                        insert_one.execute(&values[..])?;
                    }
                }
                if full {
                    insert_many.raw_execute()?;
                }
            }
            let mut insert_event = tx.prepare_cached(
                "INSERT INTO model_events (detector, at, event, version, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for e in events {
                insert_event.execute(params![e.detector, e.at, e.event, e.version, e.reason])?;
            }
        }
        match tx.commit() {
            Ok(()) => Ok(()),
            Err(err) => {
                // Ids of streams created in the failed transaction are gone with it.
                self.stream_ids.clear();
                Err(err.into())
            }
        }
    }

    /// The largest observation id stored, or 0.
    pub fn max_id(&self) -> Result<i64, LogError> {
        Ok(self
            .conn
            .query_row("SELECT coalesce(max(id), 0) FROM observations", [], |r| {
                r.get(0)
            })?)
    }

    /// Rows stored per detector.
    pub fn counts(&self) -> Result<HashMap<String, u64>, LogError> {
        let mut statement = self.conn.prepare(
            "SELECT s.detector, count(*) FROM observations o JOIN streams s ON s.id = o.stream_id
                 GROUP BY s.detector",
        )?;
        let rows =
            statement.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut counts = HashMap::new();
        for row in rows {
            let (detector, n) = row?;
            counts.insert(detector, n as u64);
        }
        Ok(counts)
    }

    /// Deletes a detector's `n` oldest rows; returns how many went. The caller knows how many
    /// rows a detector has (the writer counts them), so nothing here scans to count them.
    pub fn delete_oldest(&mut self, detector: &str, n: u64) -> Result<u64, LogError> {
        // Ids grow with time, so the oldest rows come first in primary-key order.
        // Find the id of the n-th oldest row, then delete a contiguous primary-key range up to
        // it: a range scan, not a seek per row. `+stream_id` keeps SQLite from using the
        // per-stream index, so it walks the primary key in order and stops after n rows.
        let cutoff: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM observations
                 WHERE +stream_id IN (SELECT id FROM streams WHERE detector = ?1)
                 ORDER BY id LIMIT 1 OFFSET ?2",
                params![detector, n.saturating_sub(1) as i64],
                |r| r.get(0),
            )
            .optional()?;
        let Some(cutoff) = cutoff else {
            return Ok(0);
        };
        let deleted = self.conn.execute(
            "DELETE FROM observations
             WHERE id <= ?2 AND +stream_id IN (SELECT id FROM streams WHERE detector = ?1)",
            params![detector, cutoff],
        )?;
        Ok(deleted as u64)
    }

    /// The last `per_stream` observations of every stream of a detector, oldest first within
    /// each stream (what rebuilds windows after a restart).
    pub fn recent_per_stream(
        &self,
        detector: &str,
        per_stream: usize,
    ) -> Result<Vec<LoggedObservation>, LogError> {
        let mut streams = self
            .conn
            .prepare("SELECT id FROM streams WHERE detector = ?1 ORDER BY name")?;
        let stream_ids: Vec<i64> = streams
            .query_map([detector], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut recent = self.conn.prepare(&format!(
            "SELECT * FROM (SELECT {LOGGED_COLUMNS} FROM observations o JOIN streams s ON s.id = o.stream_id
               WHERE o.stream_id = ?1 ORDER BY o.id DESC LIMIT ?2)
             ORDER BY id"
        ))?;
        let mut out = Vec::new();
        for stream_id in stream_ids {
            let rows = recent.query_map(params![stream_id, per_stream as i64], logged)?;
            for row in rows {
                out.push(row?);
            }
        }
        Ok(out)
    }

    /// The last `n` observations of a detector, oldest first.
    pub fn recent(&self, detector: &str, n: usize) -> Result<Vec<LoggedObservation>, LogError> {
        // Newest first along the primary key, stopping after n (see `delete_oldest`).
        let mut statement = self.conn.prepare(&format!(
            "SELECT {LOGGED_COLUMNS} FROM
               (SELECT * FROM observations
                WHERE +stream_id IN (SELECT id FROM streams WHERE detector = ?1)
                ORDER BY id DESC LIMIT ?2) o
             JOIN streams s ON s.id = o.stream_id
             ORDER BY o.id"
        ))?;
        let rows = statement.query_map(params![detector, n as i64], logged)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One observation by id.
    pub fn get(&self, id: i64) -> Result<Option<LoggedObservation>, LogError> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {LOGGED_COLUMNS} FROM observations o JOIN streams s ON s.id = o.stream_id
                     WHERE o.id = ?1"
                ),
                [id],
                logged,
            )
            .optional()?)
    }

    /// The model events of a detector, oldest first.
    pub fn events(&self, detector: &str) -> Result<Vec<ModelEvent>, LogError> {
        let mut statement = self.conn.prepare(
            "SELECT detector, at, event, version, reason FROM model_events
             WHERE detector = ?1 ORDER BY id",
        )?;
        let rows = statement.query_map([detector], |r| {
            Ok(ModelEvent {
                detector: r.get(0)?,
                at: r.get(1)?,
                event: r.get(2)?,
                version: r.get(3)?,
                reason: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Checks the file still takes writes (for readiness probes).
    pub fn check_writable(&self) -> Result<(), LogError> {
        self.conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")?;
        Ok(())
    }
}

/// The id of a stream, created if new.
fn stream_id(conn: &Connection, detector: &str, stream: &str) -> rusqlite::Result<i64> {
    conn.execute(
        "INSERT INTO streams (detector, name) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        params![detector, stream],
    )?;
    conn.query_row(
        "SELECT id FROM streams WHERE detector = ?1 AND name = ?2",
        params![detector, stream],
        |r| r.get(0),
    )
}

fn logged(row: &rusqlite::Row<'_>) -> rusqlite::Result<LoggedObservation> {
    let blob: Vec<u8> = row.get(2)?;
    Ok(LoggedObservation {
        id: row.get(0)?,
        stream: row.get(1)?,
        features: blob
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        score: row.get(3)?,
        anomaly: row.get(4)?,
        model_version: row.get(5)?,
    })
}

fn migrate(conn: &mut Connection) -> Result<(), LogError> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > known {
        return Err(LogError::SchemaTooNew { found, known });
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "observation log schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observation(id: i64, detector: &str, stream: &str, value: f32) -> NewObservation {
        NewObservation {
            id,
            detector: detector.into(),
            stream: stream.into(),
            ts: Some(1_700_000_000.0 + id as f64),
            received_at: 1_700_000_000.5,
            features: vec![value, -value],
            score: Some(value / 10.0),
            threshold: Some(1.0),
            anomaly: Some(false),
            model_version: "v1".into(),
        }
    }

    #[test]
    fn appended_rows_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let mut log = ObservationLog::open(&path, Durability::Normal).unwrap();
        let rows: Vec<_> = (1..=5)
            .map(|i| observation(i, "pump", "s1", i as f32))
            .collect();
        log.append(&rows).unwrap();
        drop(log);
        let log = ObservationLog::open(&path, Durability::Full).unwrap();
        assert_eq!(log.max_id().unwrap(), 5);
        let got = log.get(3).unwrap().unwrap();
        assert_eq!(got.features, vec![3.0, -3.0]);
        assert_eq!(got.score, Some(0.3));
        assert_eq!(log.counts().unwrap()["pump"], 5);
    }

    #[test]
    fn batches_of_any_size_are_stored_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ObservationLog::open(&dir.path().join("log.db"), Durability::Normal).unwrap();
        // 37 = two full multi-row statements and five single rows.
        let rows: Vec<_> = (1..=37)
            .map(|i| observation(i, "pump", if i % 3 == 0 { "a" } else { "b" }, i as f32))
            .collect();
        log.append(&rows).unwrap();
        let stored = log.recent("pump", 100).unwrap();
        assert_eq!(stored.len(), 37);
        for (row, got) in rows.iter().zip(&stored) {
            assert_eq!(
                (got.id, &got.stream, &got.features),
                (row.id, &row.stream, &row.features)
            );
            assert_eq!(got.score, row.score);
        }
    }

    #[test]
    fn recent_per_stream_returns_the_newest_of_each_stream_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ObservationLog::open(&dir.path().join("log.db"), Durability::Normal).unwrap();
        let rows: Vec<_> = (1..=10)
            .map(|i| observation(i, "pump", if i % 2 == 0 { "even" } else { "odd" }, i as f32))
            .chain([observation(11, "fan", "even", 99.0)])
            .collect();
        log.append(&rows).unwrap();
        let recent = log.recent_per_stream("pump", 2).unwrap();
        let ids: Vec<(String, i64)> = recent.iter().map(|o| (o.stream.clone(), o.id)).collect();
        assert_eq!(
            ids,
            vec![
                ("even".into(), 8),
                ("even".into(), 10),
                ("odd".into(), 7),
                ("odd".into(), 9)
            ]
        );
    }

    #[test]
    fn retention_deletes_the_oldest_rows_of_one_detector_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ObservationLog::open(&dir.path().join("log.db"), Durability::Normal).unwrap();
        let rows: Vec<_> = (1..=20)
            .map(|i| observation(i, if i % 4 == 0 { "fan" } else { "pump" }, "s", i as f32))
            .collect();
        log.append(&rows).unwrap();
        assert_eq!(log.delete_oldest("pump", 10).unwrap(), 10);
        let counts = log.counts().unwrap();
        assert_eq!(counts["pump"], 5);
        assert_eq!(counts["fan"], 5);
        let kept: Vec<i64> = log
            .recent("pump", 100)
            .unwrap()
            .iter()
            .map(|o| o.id)
            .collect();
        assert_eq!(kept, vec![14, 15, 17, 18, 19]);
    }

    #[test]
    fn a_log_from_a_newer_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        drop(ObservationLog::open(&path, Durability::Normal).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = ObservationLog::open(&path, Durability::Normal).unwrap_err();
        assert!(matches!(err, LogError::SchemaTooNew { found: 99, .. }));
    }

    #[test]
    fn model_events_are_recorded_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ObservationLog::open(&dir.path().join("log.db"), Durability::Normal).unwrap();
        let event = |name: &str| ModelEvent {
            detector: "pump".into(),
            at: 1.0,
            event: name.into(),
            version: Some("v1".into()),
            reason: None,
        };
        log.append_with_events(&[], &[event("accepted"), event("activated")])
            .unwrap();
        let events: Vec<String> = log
            .events("pump")
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(events, vec!["accepted", "activated"]);
    }
}
