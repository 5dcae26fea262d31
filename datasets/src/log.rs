//! The observation log: one SQLite file in WAL mode.
//!
//! [`ObservationLog`] is a plain synchronous handle. The server gives exactly one of them to
//! its writer thread (one writer, group commit: many requests' rows per transaction); readers
//! open their own handles. Rows are appended in transactions that commit before the caller is
//! told they are stored. Retention keeps at most a set number of rows per detector.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{params, Connection};

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

impl LogError {
    /// Why the log failed, in a word an operator and a script can act on: `disk_full`,
    /// `read_only`, `io_error`, `corrupt`, `busy`, `cannot_open`, `too_new` or `other`.
    pub fn cause(&self) -> &'static str {
        use rusqlite::ErrorCode;
        let code = match self {
            LogError::SchemaTooNew { .. } => return "too_new",
            LogError::Open { source, .. } | LogError::Sqlite(source) => source.sqlite_error_code(),
        };
        match code {
            Some(ErrorCode::DiskFull) => "disk_full",
            Some(ErrorCode::ReadOnly) => "read_only",
            Some(ErrorCode::SystemIoFailure) => "io_error",
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => "corrupt",
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => "busy",
            Some(ErrorCode::CannotOpen) => "cannot_open",
            _ => "other",
        }
    }
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
    /// The stream's debounced alarm after this reading, as answered.
    pub alarm: Option<bool>,
    /// The stream's condition changed at this reading, as answered.
    pub changepoint: Option<bool>,
    pub model_version: Arc<str>,
}

/// A stored observation, as readers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedObservation {
    pub id: i64,
    pub stream: String,
    pub features: Vec<f32>,
    pub score: Option<f32>,
    pub threshold: Option<f32>,
    pub anomaly: Option<bool>,
    /// As answered; `None` while warming up, and for rows written before they were stored.
    pub alarm: Option<bool>,
    pub changepoint: Option<bool>,
    pub model_version: String,
    /// The client's timestamp, Unix seconds, if it sent one.
    pub ts: Option<f64>,
    /// When the server received it, Unix seconds.
    pub received_at: f64,
}

/// Which observations [`ObservationLog::observations`] reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObservationQuery {
    pub detector: String,
    pub stream: Option<String>,
    /// Received at or after (Unix seconds, the server's clock).
    pub since: Option<f64>,
    /// Received before.
    pub until: Option<f64>,
    /// Ids greater than this.
    pub after_id: Option<i64>,
    pub limit: usize,
}

/// A page of observations in id order, the labels among them (`true` = anomaly), and whether
/// more follow.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObservationPage {
    pub observations: Vec<LoggedObservation>,
    pub labels: HashMap<i64, bool>,
    pub more: bool,
}

/// A model decision worth keeping: a package accepted or refused, a version activated.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEvent {
    pub detector: String,
    pub at: f64,
    pub event: EventKind,
    pub version: Option<String>,
    pub reason: Option<String>,
}

/// What happened to a detector's models, or to a stream's own detector. Stored by name
/// (`as_str`); the set is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A verified version was written to the store.
    Published,
    /// A version became the active (serving) one.
    Activated,
    /// A package or candidate was refused; the reason says why.
    Refused,
    /// The detector serves something other than its active version (or it failed to load).
    Degraded,
    /// An old version was removed to keep the last few.
    Pruned,
    /// An operator deleted a version (`version` names it) or the whole detector (no
    /// `version`: its definition, versions and observations are gone; its events stay).
    Deleted,
    /// A stream's detector ended an alarm by adopting the readings' new steady level as
    /// normal; the reason holds `{"stream", "observation"}` (the settling reading's id).
    Settled,
    /// An operator's `anomaly` label reversed a settlement: the old level is normal again and
    /// the alarm is up; the reason holds `{"stream", "observation"}` (the labelled id).
    Unsettled,
}

impl EventKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Published => "published",
            EventKind::Activated => "activated",
            EventKind::Refused => "refused",
            EventKind::Degraded => "degraded",
            EventKind::Pruned => "pruned",
            EventKind::Deleted => "deleted",
            EventKind::Settled => "settled",
            EventKind::Unsettled => "unsettled",
        }
    }

    /// The kind of a stored name.
    pub fn parse(name: &str) -> Option<EventKind> {
        [
            EventKind::Published,
            EventKind::Activated,
            EventKind::Refused,
            EventKind::Degraded,
            EventKind::Pruned,
            EventKind::Deleted,
            EventKind::Settled,
            EventKind::Unsettled,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == name)
    }
}

/// One training run on the box, as the `training_runs` table holds it. Trigger and decision
/// are the server's names for them; `figures` is a JSON object of what the gate measured.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingRunRecord {
    pub detector: String,
    pub trigger: String,
    pub started: f64,
    pub ended: f64,
    pub decision: String,
    pub reason: String,
    pub samples: u64,
    pub anomalous_samples: u64,
    pub version: Option<String>,
    pub parent: Option<String>,
    pub figures: String,
}

/// One alarm episode of one stream: from the reading at which its alarm rose to the one at
/// which it fell, with what an operator did about it (ISA-18.2: acknowledged, shelved). Kept in
/// the `alarms` table as JSON beside its id and detector, so that a field added later does not
/// need a migration.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AlarmRecord {
    /// The observation at which the alarm rose.
    pub id: i64,
    pub detector: String,
    pub stream: String,
    /// When it rose, Unix seconds (the server's clock).
    pub raised_at: f64,
    /// The version that served the raising reading.
    pub model_version: String,
    /// The highest score while it was up, the observation that had it, and the sensors'
    /// shares in that score (the answer's top contributions).
    pub peak_score: Option<f32>,
    pub peak_observation: i64,
    pub contributions: Vec<AlarmContribution>,
    /// The observation at which the alarm fell, when, and how: `cleared` (the readings were
    /// back to normal) or `settled` (the detector adopted their new steady level).
    pub ended_observation: Option<i64>,
    pub ended_at: Option<f64>,
    pub ended_by: Option<String>,
    pub acknowledged: Option<OperatorAction>,
    /// Shelved: kept out of the active list until `until`.
    pub shelved: Option<Shelving>,
}

/// A sensor's share in an alarm's peak score.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AlarmContribution {
    pub feature: String,
    pub share: f32,
}

/// Who did something to an alarm, when, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OperatorAction {
    pub at: f64,
    pub by: String,
    pub note: Option<String>,
}

/// An alarm shelved until a time.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Shelving {
    pub until: f64,
    #[serde(flatten)]
    pub action: OperatorAction,
}

/// Schema migrations, applied in order; `PRAGMA user_version` counts how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: streams, observation chunks and model events.
    //
    // Observations are stored in chunks: one row per stream and serving version per commit,
    // holding that commit's observations of the stream packed in a blob (see `Record`). Under
    // group commit one SQLite row then carries many observations, so the per-row costs of a
    // b-tree insert, its index entries, and later its retention delete are paid per chunk.
    "CREATE TABLE streams (
        id INTEGER PRIMARY KEY,
        detector TEXT NOT NULL,
        name TEXT NOT NULL,
        UNIQUE (detector, name)
    );
    CREATE TABLE observation_chunks (
        id INTEGER PRIMARY KEY,
        stream_id INTEGER NOT NULL REFERENCES streams (id),
        first_id INTEGER NOT NULL,
        last_id INTEGER NOT NULL,
        n INTEGER NOT NULL,
        n_features INTEGER NOT NULL,
        model_version TEXT NOT NULL,
        data BLOB NOT NULL
    );
    CREATE INDEX chunks_by_stream ON observation_chunks (stream_id, id);
    CREATE INDEX chunks_by_first_id ON observation_chunks (first_id);
    CREATE TABLE model_events (
        id INTEGER PRIMARY KEY,
        detector TEXT NOT NULL,
        at REAL NOT NULL,
        event TEXT NOT NULL,
        version TEXT,
        reason TEXT
    );",
    // 2: labels from feedback, one per observation (the latest wins).
    "CREATE TABLE labels (
        observation_id INTEGER PRIMARY KEY,
        detector TEXT NOT NULL,
        anomaly INTEGER NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX labels_by_detector ON labels (detector, observation_id);",
    // 3: training runs in a table of their own; earlier versions kept each as a model event
    // `training_<decision>` with the run as JSON in its reason: those move here.
    "CREATE TABLE training_runs (
        id INTEGER PRIMARY KEY,
        detector TEXT NOT NULL,
        trigger TEXT NOT NULL,
        started REAL NOT NULL,
        ended REAL NOT NULL,
        decision TEXT NOT NULL,
        reason TEXT NOT NULL,
        samples INTEGER NOT NULL,
        anomalous_samples INTEGER NOT NULL,
        version TEXT,
        parent TEXT,
        figures TEXT NOT NULL
    );
    CREATE INDEX training_runs_by_detector ON training_runs (detector, id);
    INSERT INTO training_runs (detector, trigger, started, ended, decision, reason, samples,
                               anomalous_samples, version, parent, figures)
        SELECT detector,
               coalesce(json_extract(reason, '$.trigger'), 'unknown'),
               coalesce(json_extract(reason, '$.started'), at),
               coalesce(json_extract(reason, '$.ended'), at),
               substr(event, 10),
               coalesce(json_extract(reason, '$.reason'), ''),
               coalesce(json_extract(reason, '$.samples'), 0),
               coalesce(json_extract(reason, '$.anomalous_samples'), 0),
               json_extract(reason, '$.version'),
               json_extract(reason, '$.parent'),
               coalesce(json(json_extract(reason, '$.figures')), '{}')
        FROM model_events
        WHERE event LIKE 'training\\_%' ESCAPE '\\' AND json_valid(reason)
        ORDER BY id;
    DELETE FROM model_events WHERE event LIKE 'training\\_%' ESCAPE '\\';",
    // 4: alarm records, one per alarm episode of a stream (see `AlarmRecord`); the id is the
    // observation at which the alarm rose.
    "CREATE TABLE alarms (
        id INTEGER PRIMARY KEY,
        detector TEXT NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX alarms_by_detector ON alarms (detector, id);",
    // 5: the uplink's outbox (see `crate::outbox`): messages waiting for the broker's
    // acknowledgement. AUTOINCREMENT: an id is never reused, so consumers can de-duplicate.
    "CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        class INTEGER NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        bytes INTEGER NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX outbox_by_class ON outbox (class, id);",
    // 6: what the log holds (observations per detector, the largest id) as of a chunk, so that
    // a start reads one row and the chunks after it, not every chunk (see `Totals`). Counted
    // once here, by a scan, for a log that predates it.
    "CREATE TABLE log_totals (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        through_chunk INTEGER NOT NULL,
        max_id INTEGER NOT NULL,
        counts TEXT NOT NULL
    );
    INSERT INTO log_totals (id, through_chunk, max_id, counts)
    SELECT 1,
           (SELECT coalesce(max(id), 0) FROM observation_chunks),
           (SELECT coalesce(max(last_id), 0) FROM observation_chunks),
           (SELECT json_group_object(detector, n) FROM (
               SELECT s.detector AS detector, sum(c.n) AS n
               FROM observation_chunks c JOIN streams s ON s.id = c.stream_id
               GROUP BY s.detector));",
];

/// Chunks a connection appends between two writes of the stored totals: what a start (or
/// any count) scans at most beyond the stored row, and what the write that stores them
/// scans (each 4,096th chunk's commit does that extra work).
const TOTALS_EVERY: u64 = 4_096;

/// What the log holds: observations per detector and the largest observation id ever
/// stored (ids are never handed out twice, even after the newest rows are deleted). Stored
/// in `log_totals` as of chunk `through`; chunks after it are counted on reading. Every
/// transaction that deletes chunks stores them again, as of the table's last chunk, so the
/// chunks after `through` were all appended since.
#[derive(Debug, Clone, Default, PartialEq)]
struct Totals {
    through: i64,
    max_id: i64,
    counts: HashMap<String, u64>,
}

impl Totals {
    /// The stored totals plus the chunks after them: exact, in a scan bounded by what was
    /// appended since they were stored. Call within one transaction (or read snapshot).
    fn read(conn: &Connection) -> Result<Totals, LogError> {
        let (through, max_id): (i64, i64) = conn.query_row(
            "SELECT through_chunk, max_id FROM log_totals WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut stored = conn.prepare_cached(
            "SELECT key, value FROM json_each((SELECT counts FROM log_totals WHERE id = 1))",
        )?;
        let counts = stored
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?
            .collect::<Result<_, _>>()?;
        let mut totals = Totals {
            through,
            max_id,
            counts,
        };
        // Along the primary key from `through` (a GROUP BY here would walk the per-stream
        // index, every chunk of the log), summed per stream, then named.
        let mut per_stream: HashMap<i64, u64> = HashMap::new();
        let mut tail = conn.prepare_cached(
            "SELECT id, stream_id, n, last_id FROM observation_chunks WHERE id > ?1 ORDER BY id",
        )?;
        let mut rows = tail.query([through])?;
        while let Some(row) = rows.next()? {
            let (chunk, stream, n, last_id): (i64, i64, i64, i64) =
                (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?);
            *per_stream.entry(stream).or_default() += n as u64;
            totals.max_id = totals.max_id.max(last_id);
            totals.through = chunk;
        }
        let mut detector_of = conn.prepare_cached("SELECT detector FROM streams WHERE id = ?1")?;
        for (stream, n) in per_stream {
            let detector: String = detector_of.query_row([stream], |r| r.get(0))?;
            *totals.counts.entry(detector).or_default() += n;
        }
        Ok(totals)
    }

    /// Stores the totals as of the table's last chunk (which they must count).
    fn write(&self, conn: &Connection) -> Result<(), LogError> {
        let through: i64 = conn.query_row(
            "SELECT coalesce(max(id), 0) FROM observation_chunks",
            [],
            |r| r.get(0),
        )?;
        let counts = serde_json::to_string(&self.counts).expect("a map of counts serialises");
        conn.execute(
            "UPDATE log_totals SET through_chunk = ?1, max_id = ?2, counts = ?3 WHERE id = 1",
            params![through, self.max_id, counts],
        )?;
        Ok(())
    }
}

/// A handle on the log file.
#[derive(Debug)]
pub struct ObservationLog {
    pub(crate) conn: Connection,
    /// Stream ids by detector, then stream name: filled as streams are first written.
    stream_ids: HashMap<String, HashMap<String, i64>>,
    /// Chunks this connection appended since it last stored the totals.
    appended: u64,
}

/// The packed form of one observation inside a chunk, little-endian:
/// `id i64 | ts f64 | received_at f64 | score f32 | threshold f32 | flags u8 | features f32…`.
/// A missing `ts`, `score` or `threshold` is NaN. `flags`: bits 0–1 `anomaly` (0 false, 1 true,
/// 2 none); bits 2–3 `alarm` and 4–5 `changepoint` (0 none — rows written before they were
/// stored have 0 there —, 1 false, 2 true).
struct Record;

/// A flag's two bits: 0 none, 1 false, 2 true.
fn flag_bits(flag: Option<bool>) -> u8 {
    match flag {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    }
}

fn flag_of(bits: u8) -> Option<bool> {
    match bits & 3 {
        1 => Some(false),
        2 => Some(true),
        _ => None,
    }
}

impl Record {
    const HEADER: usize = 8 + 8 + 8 + 4 + 4 + 1;

    fn size(n_features: usize) -> usize {
        Record::HEADER + 4 * n_features
    }

    fn write(o: &NewObservation, out: &mut Vec<u8>) {
        out.extend(o.id.to_le_bytes());
        out.extend(o.ts.unwrap_or(f64::NAN).to_le_bytes());
        out.extend(o.received_at.to_le_bytes());
        out.extend(o.score.unwrap_or(f32::NAN).to_le_bytes());
        out.extend(o.threshold.unwrap_or(f32::NAN).to_le_bytes());
        let anomaly = match o.anomaly {
            Some(false) => 0,
            Some(true) => 1,
            None => 2,
        };
        out.push(anomaly | flag_bits(o.alarm) << 2 | flag_bits(o.changepoint) << 4);
        out.extend(o.features.iter().flat_map(|x| x.to_le_bytes()));
    }

    fn read(bytes: &[u8], stream: &str, model_version: &str) -> LoggedObservation {
        let f64_at = |at: usize| f64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let f32_at = |at: usize| f32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let present = |x: f32| (!x.is_nan()).then_some(x);
        LoggedObservation {
            id: i64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes")),
            stream: stream.to_owned(),
            features: bytes[Record::HEADER..]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            score: present(f32_at(24)),
            threshold: present(f32_at(28)),
            anomaly: match bytes[32] & 3 {
                0 => Some(false),
                1 => Some(true),
                _ => None,
            },
            alarm: flag_of(bytes[32] >> 2),
            changepoint: flag_of(bytes[32] >> 4),
            model_version: model_version.to_owned(),
            ts: Some(f64_at(8)).filter(|t| !t.is_nan()),
            received_at: f64_at(16),
        }
    }
}

/// One chunk as read back.
struct Chunk {
    stream_id: i64,
    n_features: usize,
    model_version: String,
    data: Vec<u8>,
}

impl Chunk {
    /// The chunk's observations, oldest first.
    fn observations(
        &self,
        stream: &str,
    ) -> impl DoubleEndedIterator<Item = LoggedObservation> + '_ {
        let size = Record::size(self.n_features);
        let stream = stream.to_owned();
        self.data
            .chunks_exact(size)
            .map(move |bytes| Record::read(bytes, &stream, &self.model_version))
    }
}

const CHUNK_COLUMNS: &str = "stream_id, n_features, model_version, data";

fn chunk(row: &rusqlite::Row<'_>) -> rusqlite::Result<Chunk> {
    Ok(Chunk {
        stream_id: row.get(0)?,
        n_features: row.get::<_, i64>(1)? as usize,
        model_version: row.get(2)?,
        data: row.get(3)?,
    })
}

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
        // A connection that writes alone (tools, tests) checkpoints as SQLite does, at 16,384
        // pages (64 MiB). The server's writer moves checkpoints off its commits
        // (`set_autocheckpoint`, and `vigil_inference::checkpoint`). When the WAL starts over
        // its file is cut back to 64 MiB (the server's writer keeps more: `set_size_limit`);
        // on a small disk the free-space reserve truncates it (`checkpoint_truncate`).
        conn.pragma_update(None, "wal_autocheckpoint", 16_384)
            .map_err(open_error)?;
        conn.pragma_update(None, "journal_size_limit", 64 << 20)
            .map_err(open_error)?;
        // 4 MiB of page cache (the default is 2 MiB): the hot end of the table and its index
        // stay in memory (observations are packed per commit, so both are small); 16 MiB
        // bought no CPU and cost ~12 MiB of resident memory under load (vigil bench).
        conn.pragma_update(None, "cache_size", -4_096)
            .map_err(open_error)?;
        migrate(&mut conn)?;
        Ok(ObservationLog {
            conn,
            stream_ids: HashMap::new(),
            appended: 0,
        })
    }

    /// Opens the log at `path` to read only: no schema change, no write (a server may be
    /// writing it meanwhile; WAL readers do not block it). Refuses a log of a newer schema.
    pub fn open_reader(path: &Path) -> Result<Self, LogError> {
        let open_error = |source| LogError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_error)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_error)?;
        let known = MIGRATIONS.len() as i64;
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > known {
            return Err(LogError::SchemaTooNew { found, known });
        }
        Ok(ObservationLog {
            conn,
            stream_ids: HashMap::new(),
            appended: 0,
        })
    }

    /// After how many WAL pages a commit on this connection runs a checkpoint itself
    /// (`PRAGMA wal_autocheckpoint`; 0: never).
    pub fn set_autocheckpoint(&self, pages: i64) -> Result<(), LogError> {
        self.conn.pragma_update(None, "wal_autocheckpoint", pages)?;
        Ok(())
    }

    /// The size (bytes) the WAL file is cut back to when it starts over (`PRAGMA
    /// journal_size_limit`; 64 MiB unless set).
    pub fn set_size_limit(&self, bytes: i64) -> Result<(), LogError> {
        self.conn.pragma_update(None, "journal_size_limit", bytes)?;
        Ok(())
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

    /// Copies the whole WAL into the database and truncates it to nothing, waiting for
    /// readers: what frees disk space when it runs low.
    pub fn checkpoint_truncate(&self) -> Result<(), LogError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Commits a small write and takes it back: whether the file takes writes now (a full
    /// disk, a read-only remount and a failing device all fail it).
    pub fn probe(&mut self) -> Result<(), LogError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO model_events (detector, at, event) VALUES ('', 0, 'probe')",
            [],
        )?;
        tx.execute(
            "DELETE FROM model_events WHERE id = last_insert_rowid()",
            [],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Appends observations in one transaction; returns once it has committed.
    pub fn append(&mut self, observations: &[NewObservation]) -> Result<(), LogError> {
        self.append_with_events(observations, &[], &[])
    }

    /// Appends observations and model events, and writes alarm records (each replacing the
    /// stored one of its id), in one transaction.
    pub fn append_with_events(
        &mut self,
        observations: &[NewObservation],
        events: &[ModelEvent],
        alarms: &[AlarmRecord],
    ) -> Result<(), LogError> {
        self.append_with_outbox(observations, events, alarms, &[])
    }

    /// As [`ObservationLog::append_with_events`], with the uplink's messages that report them
    /// in the same transaction (`crate::outbox`).
    pub fn append_with_outbox(
        &mut self,
        observations: &[NewObservation],
        events: &[ModelEvent],
        alarms: &[AlarmRecord],
        outbox: &[crate::outbox::OutboxMessage],
    ) -> Result<(), LogError> {
        let tx = self.conn.transaction()?;
        {
            // Group by stream and serving version, keeping id order within each group.
            let mut groups: Vec<((i64, &str), Vec<&NewObservation>)> = Vec::new();
            for o in observations {
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
                let key = (stream_id, &*o.model_version);
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, group)) => group.push(o),
                    None => groups.push((key, vec![o])),
                }
            }
            let mut insert = tx.prepare_cached(
                "INSERT INTO observation_chunks
                 (stream_id, first_id, last_id, n, n_features, model_version, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut data = Vec::new();
            for ((stream_id, model_version), group) in groups {
                let n_features = group[0].features.len();
                data.clear();
                let mut first_id = i64::MAX;
                let mut last_id = i64::MIN;
                for o in group.iter().filter(|o| o.features.len() == n_features) {
                    Record::write(o, &mut data);
                    first_id = first_id.min(o.id);
                    last_id = last_id.max(o.id);
                }
                let n = data.len() / Record::size(n_features);
                self.appended += 1;
                insert.execute(params![
                    stream_id,
                    first_id,
                    last_id,
                    n as i64,
                    n_features as i64,
                    model_version,
                    data
                ])?;
            }
            let mut insert_event = tx.prepare_cached(
                "INSERT INTO model_events (detector, at, event, version, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for e in events {
                insert_event.execute(params![
                    e.detector,
                    e.at,
                    e.event.as_str(),
                    e.version,
                    e.reason
                ])?;
            }
            let mut put_alarm = tx.prepare_cached(
                "INSERT OR REPLACE INTO alarms (id, detector, record) VALUES (?1, ?2, ?3)",
            )?;
            for alarm in alarms {
                let record = serde_json::to_string(alarm).expect("an alarm record serialises");
                put_alarm.execute(params![alarm.id, alarm.detector, record])?;
            }
            crate::outbox::insert(&tx, outbox)?;
            if self.appended >= TOTALS_EVERY {
                Totals::read(&tx)?.write(&tx)?;
            }
        }
        match tx.commit() {
            Ok(()) => {
                if self.appended >= TOTALS_EVERY {
                    self.appended = 0;
                }
                Ok(())
            }
            Err(err) => {
                // Ids of streams created in the failed transaction are gone with it.
                self.stream_ids.clear();
                Err(err.into())
            }
        }
    }

    /// The latest `limit` alarm records of every detector, oldest first. A record that does not
    /// parse (written by a newer version, say) is skipped with a warning.
    pub fn alarms(&self, limit: usize) -> Result<Vec<AlarmRecord>, LogError> {
        let mut statement = self
            .conn
            .prepare("SELECT id, record FROM alarms ORDER BY id DESC LIMIT ?1")?;
        let rows = statement.query_map([limit as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut alarms = Vec::new();
        for row in rows {
            let (id, text) = row?;
            match serde_json::from_str(&text) {
                Ok(alarm) => alarms.push(alarm),
                Err(err) => tracing::warn!(id, error = %err, "skipping an unreadable alarm record"),
            }
        }
        alarms.reverse();
        Ok(alarms)
    }

    /// Deletes all but the latest `keep` alarm records.
    pub fn prune_alarms(&mut self, keep: usize) -> Result<u64, LogError> {
        let deleted = self.conn.execute(
            "DELETE FROM alarms WHERE id <= (SELECT id FROM alarms ORDER BY id DESC LIMIT 1 OFFSET ?1)",
            [keep as i64],
        )?;
        Ok(deleted as u64)
    }

    /// The largest observation id ever stored, or 0 (it does not go down when the newest
    /// observations are deleted, so ids are never handed out twice). Reads the stored totals
    /// and the chunks after them, never the whole log.
    pub fn max_id(&self) -> Result<i64, LogError> {
        let tx = self.conn.unchecked_transaction()?;
        Ok(Totals::read(&tx)?.max_id)
    }

    /// Observations stored per detector (detectors that have none may be missing, or 0).
    /// Reads the stored totals and the chunks after them, never the whole log.
    pub fn counts(&self) -> Result<HashMap<String, u64>, LogError> {
        let tx = self.conn.unchecked_transaction()?;
        Ok(Totals::read(&tx)?.counts)
    }

    /// The streams of a detector: id → name.
    fn streams(&self, detector: &str) -> Result<HashMap<i64, String>, LogError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT id, name FROM streams WHERE detector = ?1")?;
        let rows = statement.query_map([detector], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes at most `n` of a detector's oldest observations, whole chunks at a time (so
    /// possibly fewer); returns how many went. The caller knows how many a detector has (the
    /// writer counts them), so nothing here scans to count them.
    pub fn delete_oldest(&mut self, detector: &str, n: u64) -> Result<u64, LogError> {
        let tx = self.conn.transaction()?;
        let mut totals = Totals::read(&tx)?;
        // `+stream_id` keeps SQLite from using the per-stream index: it walks the primary key
        // (commit order) and stops as soon as enough chunks are found.
        let mut statement = tx.prepare_cached(
            "SELECT id, n FROM observation_chunks
             WHERE +stream_id IN (SELECT id FROM streams WHERE detector = ?1)
             ORDER BY id",
        )?;
        let mut rows = statement.query([detector])?;
        let mut cutoff = None;
        let mut total = 0u64;
        while let Some(row) = rows.next()? {
            let (chunk_id, size): (i64, i64) = (row.get(0)?, row.get(1)?);
            if total + size as u64 > n {
                break;
            }
            total += size as u64;
            cutoff = Some(chunk_id);
        }
        drop(rows);
        drop(statement);
        if let Some(cutoff) = cutoff {
            tx.execute(
                "DELETE FROM observation_chunks
                 WHERE id <= ?2 AND +stream_id IN (SELECT id FROM streams WHERE detector = ?1)",
                params![detector, cutoff],
            )?;
            let count = totals.counts.entry(detector.to_owned()).or_default();
            *count = count.saturating_sub(total);
            totals.write(&tx)?;
        }
        tx.commit()?;
        Ok(total)
    }

    /// Forgets a deleted detector in one transaction: its observations, streams, labels,
    /// training runs and alarm records (its model events stay, the history of what happened
    /// to it). Returns how many observations were deleted. A detector defined again under the
    /// same name starts from nothing.
    pub fn forget_detector(&mut self, detector: &str) -> Result<u64, LogError> {
        let tx = self.conn.transaction()?;
        let mut totals = Totals::read(&tx)?;
        let observations: i64 = tx.query_row(
            "SELECT coalesce(sum(n), 0) FROM observation_chunks
             WHERE stream_id IN (SELECT id FROM streams WHERE detector = ?1)",
            [detector],
            |row| row.get(0),
        )?;
        tx.execute(
            "DELETE FROM observation_chunks
             WHERE stream_id IN (SELECT id FROM streams WHERE detector = ?1)",
            [detector],
        )?;
        for table in ["streams", "labels", "training_runs", "alarms"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE detector = ?1"),
                [detector],
            )?;
        }
        totals.counts.remove(detector);
        totals.write(&tx)?;
        tx.commit()?;
        self.stream_ids.remove(detector);
        Ok(observations as u64)
    }

    /// The last `per_stream` observations of every stream of a detector, one stream at a
    /// time (streams in name order, oldest first within each) handed to `each`: what rebuilds
    /// windows and statistical detectors after a restart, holding one stream in memory.
    pub fn recent_per_stream(
        &self,
        detector: &str,
        per_stream: usize,
        mut each: impl FnMut(Vec<LoggedObservation>),
    ) -> Result<(), LogError> {
        let mut streams: Vec<(i64, String)> = self.streams(detector)?.into_iter().collect();
        streams.sort_by(|a, b| a.1.cmp(&b.1));
        let mut newest_first = self.conn.prepare(&format!(
            "SELECT {CHUNK_COLUMNS} FROM observation_chunks WHERE stream_id = ?1 ORDER BY id DESC"
        ))?;
        for (stream_id, name) in streams {
            let mut collected: Vec<LoggedObservation> = Vec::with_capacity(per_stream);
            let mut chunks = newest_first.query_map([stream_id], chunk)?;
            while collected.len() < per_stream {
                let Some(chunk) = chunks.next() else { break };
                let chunk = chunk?;
                collected.extend(
                    chunk
                        .observations(&name)
                        .rev()
                        .take(per_stream - collected.len()),
                );
            }
            collected.sort_by_key(|o| o.id);
            each(collected);
        }
        Ok(())
    }

    /// The last `n` observations of a detector in commit order, returned oldest (by id) first.
    pub fn recent(&self, detector: &str, n: usize) -> Result<Vec<LoggedObservation>, LogError> {
        let streams = self.streams(detector)?;
        // Newest chunks first along the primary key (see `delete_oldest`).
        let mut statement = self.conn.prepare(&format!(
            "SELECT {CHUNK_COLUMNS} FROM observation_chunks
             WHERE +stream_id IN (SELECT id FROM streams WHERE detector = ?1)
             ORDER BY id DESC"
        ))?;
        let mut chunks = statement.query_map([detector], chunk)?;
        let mut collected = Vec::new();
        // Chunks follow commit order, and ids follow it too except at commit boundaries (a
        // request may take its ids just before another's and commit just after): the result is
        // the n newest up to that overlap, which is what rebuilding a baseline needs.
        while collected.len() < n {
            let Some(chunk) = chunks.next() else { break };
            let chunk = chunk?;
            let name = streams.get(&chunk.stream_id).map_or("", String::as_str);
            collected.extend(chunk.observations(name));
        }
        collected.sort_by_key(|o: &LoggedObservation| o.id);
        let excess = collected.len().saturating_sub(n);
        collected.drain(..excess);
        Ok(collected)
    }

    /// A page of a detector's observations in id order (see [`ObservationQuery`]), with the
    /// labels among them. Chunks are read in order of their first id; as commits may overlap
    /// by a few ids, reading goes on until no later chunk can hold an id within the page.
    pub fn observations(&self, query: &ObservationQuery) -> Result<ObservationPage, LogError> {
        let limit = query.limit.max(1);
        let after = query.after_id.unwrap_or(i64::MIN);
        let mut statement = self.conn.prepare_cached(&format!(
            "SELECT c.{}, s.name, c.first_id FROM observation_chunks c
             JOIN streams s ON s.id = c.stream_id
             WHERE s.detector = ?1 AND (?2 IS NULL OR s.name = ?2) AND c.last_id > ?3
             ORDER BY c.first_id",
            CHUNK_COLUMNS.replace(", ", ", c.")
        ))?;
        let mut rows = statement.query(params![query.detector, query.stream, after])?;
        let mut page: Vec<LoggedObservation> = Vec::new();
        // The id past which a later chunk cannot matter: the (limit + 1)-th smallest so far.
        let mut bound = i64::MAX;
        while let Some(row) = rows.next()? {
            let first_id: i64 = row.get(5)?;
            if first_id > bound {
                break;
            }
            let found = chunk(row)?;
            let name: String = row.get(4)?;
            page.extend(found.observations(&name).filter(|o| {
                o.id > after
                    && query.since.is_none_or(|t| o.received_at >= t)
                    && query.until.is_none_or(|t| o.received_at < t)
            }));
            if page.len() > limit {
                page.sort_unstable_by_key(|o| o.id);
                page.truncate(limit + 1);
                bound = page[limit].id;
            }
        }
        page.sort_unstable_by_key(|o| o.id);
        let more = page.len() > limit;
        page.truncate(limit);
        let labels = match (page.first(), page.last()) {
            (Some(first), Some(last)) => {
                let mut statement = self.conn.prepare_cached(
                    "SELECT observation_id, anomaly FROM labels
                     WHERE detector = ?1 AND observation_id BETWEEN ?2 AND ?3",
                )?;
                let rows = statement
                    .query_map(params![query.detector, first.id, last.id], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?;
                rows.collect::<Result<_, _>>()?
            }
            _ => HashMap::new(),
        };
        Ok(ObservationPage {
            observations: page,
            labels,
            more,
        })
    }

    /// Every observation id of a detector, ascending.
    pub fn ids(&self, detector: &str) -> Result<Vec<i64>, LogError> {
        let mut ids: Vec<i64> = self
            .recent(detector, usize::MAX)?
            .into_iter()
            .map(|o| o.id)
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// One observation by id.
    pub fn get(&self, id: i64) -> Result<Option<LoggedObservation>, LogError> {
        Ok(self.find(id)?.map(|(_, o)| o))
    }

    /// Stores labels (`true` = anomaly) for observations of `detector`, all or none: if any id
    /// is not an observation of that detector, nothing is stored and those ids are returned.
    /// Stored, it returns the stream of each labelled observation, in the order given.
    pub fn label(
        &mut self,
        detector: &str,
        labels: &[(i64, bool)],
        at: f64,
    ) -> Result<Result<Vec<String>, Vec<i64>>, LogError> {
        let mut unknown = Vec::new();
        let mut streams = Vec::with_capacity(labels.len());
        for &(id, _) in labels {
            match self.find(id)? {
                Some((owner, observation)) if owner == detector => streams.push(observation.stream),
                _ => unknown.push(id),
            }
        }
        if !unknown.is_empty() {
            return Ok(Err(unknown));
        }
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR REPLACE INTO labels (observation_id, detector, anomaly, at)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for &(id, anomaly) in labels {
                insert.execute(params![id, detector, anomaly, at])?;
            }
        }
        tx.commit()?;
        Ok(Ok(streams))
    }

    /// The labels of a detector's observations, by id: `true` = anomaly.
    pub fn labels(&self, detector: &str) -> Result<Vec<(i64, bool)>, LogError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT observation_id, anomaly FROM labels WHERE detector = ?1
             ORDER BY observation_id",
        )?;
        let rows = statement.query_map([detector], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One observation by id, with the detector it belongs to.
    fn find(&self, id: i64) -> Result<Option<(String, LoggedObservation)>, LogError> {
        // Chunks that may hold `id` start at or before it; those of the same moment are few.
        let mut statement = self.conn.prepare_cached(&format!(
            "SELECT c.{}, s.name, s.detector FROM observation_chunks c JOIN streams s ON s.id = c.stream_id
             WHERE c.id IN (SELECT id FROM observation_chunks WHERE first_id <= ?1
                            ORDER BY first_id DESC LIMIT 1024)
               AND c.last_id >= ?1",
            CHUNK_COLUMNS.replace(", ", ", c.")
        ))?;
        let mut rows = statement.query([id])?;
        while let Some(row) = rows.next()? {
            let found = chunk(row)?;
            let name: String = row.get(4)?;
            let detector: String = row.get(5)?;
            let observation = found.observations(&name).find(|o| o.id == id);
            if let Some(observation) = observation {
                return Ok(Some((detector, observation)));
            }
        }
        Ok(None)
    }

    /// The model events of a detector, oldest first.
    pub fn events(&self, detector: &str) -> Result<Vec<ModelEvent>, LogError> {
        let mut statement = self.conn.prepare(
            "SELECT detector, at, event, version, reason FROM model_events
             WHERE detector = ?1 ORDER BY id",
        )?;
        let rows = statement.query_map([detector], |r| {
            let name: String = r.get(2)?;
            let Some(event) = EventKind::parse(&name) else {
                return Ok(None);
            };
            Ok(Some(ModelEvent {
                detector: r.get(0)?,
                at: r.get(1)?,
                event,
                version: r.get(3)?,
                reason: r.get(4)?,
            }))
        })?;
        // A name this build does not know (written by a newer one) is left out.
        let mut events = Vec::new();
        for row in rows {
            events.extend(row?);
        }
        Ok(events)
    }

    /// Records a finished training run, with the uplink's messages that report it, in one
    /// transaction.
    pub fn append_run(
        &mut self,
        run: &TrainingRunRecord,
        outbox: &[crate::outbox::OutboxMessage],
    ) -> Result<(), LogError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO training_runs (detector, trigger, started, ended, decision, reason,
                                        samples, anomalous_samples, version, parent, figures)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                run.detector,
                run.trigger,
                run.started,
                run.ended,
                run.decision,
                run.reason,
                run.samples as i64,
                run.anomalous_samples as i64,
                run.version,
                run.parent,
                run.figures
            ],
        )?;
        crate::outbox::insert(&tx, outbox)?;
        tx.commit()?;
        Ok(())
    }

    /// The latest `n` training runs of a detector, oldest first.
    pub fn runs(&self, detector: &str, n: usize) -> Result<Vec<TrainingRunRecord>, LogError> {
        let mut statement = self.conn.prepare(
            "SELECT detector, trigger, started, ended, decision, reason, samples,
                    anomalous_samples, version, parent, figures
             FROM training_runs WHERE detector = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows =
            statement.query_map(params![detector, n.min(i64::MAX as usize) as i64], |r| {
                Ok(TrainingRunRecord {
                    detector: r.get(0)?,
                    trigger: r.get(1)?,
                    started: r.get(2)?,
                    ended: r.get(3)?,
                    decision: r.get(4)?,
                    reason: r.get(5)?,
                    samples: r.get::<_, i64>(6)? as u64,
                    anomalous_samples: r.get::<_, i64>(7)? as u64,
                    version: r.get(8)?,
                    parent: r.get(9)?,
                    figures: r.get(10)?,
                })
            })?;
        let mut runs = rows.collect::<Result<Vec<_>, _>>()?;
        runs.reverse();
        Ok(runs)
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
            alarm: Some(false),
            changepoint: Some(false),
            model_version: "v1".into(),
        }
    }

    fn alarm(id: i64, detector: &str) -> AlarmRecord {
        AlarmRecord {
            id,
            detector: detector.into(),
            stream: "s1".into(),
            raised_at: 1_700_000_000.0,
            model_version: "v1".into(),
            peak_score: Some(3.5),
            peak_observation: id,
            contributions: vec![AlarmContribution {
                feature: "flow".into(),
                share: 0.75,
            }],
            ended_observation: None,
            ended_at: None,
            ended_by: None,
            acknowledged: None,
            shelved: None,
        }
    }

    /// When the WAL starts over, its file is cut back to the size limit, and only if it grew
    /// past it.
    #[test]
    fn the_wal_file_is_cut_back_only_past_its_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let wal = dir.path().join("log.db-wal");
        let mut log = ObservationLog::open(&path, Durability::Normal).unwrap();
        log.set_autocheckpoint(0).unwrap();
        log.set_size_limit(1 << 20).unwrap();
        let checkpointer = ObservationLog::open(&path, Durability::Normal).unwrap();
        let mut id = 0;
        // Grows the WAL file to `bytes`, copies the WAL, commits once more (which starts it
        // over); the file's size after.
        let mut cycle = |log: &mut ObservationLog, bytes: u64| {
            while std::fs::metadata(&wal).map_or(0, |m| m.len()) < bytes {
                id += 1;
                log.append(&[observation(id, "pump", "s1", 1.0)]).unwrap();
            }
            let (frames, copied) = checkpointer.checkpoint().unwrap();
            assert_eq!(frames, copied, "every frame copied");
            id += 1;
            log.append(&[observation(id, "pump", "s1", 1.0)]).unwrap();
            std::fs::metadata(&wal).unwrap().len()
        };
        let within = cycle(&mut log, 512 << 10);
        assert!(
            within >= 512 << 10,
            "cut back within the limit: {within} bytes"
        );
        let past = cycle(&mut log, 2 << 20);
        assert_eq!(past, 1 << 20, "not cut back to the limit");
    }

    #[test]
    fn alarm_records_commit_with_their_readings_replace_by_id_and_keep_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let mut log = ObservationLog::open(&path, Durability::Normal).unwrap();
        let raised = alarm(2, "pump");
        log.append_with_events(
            &[observation(2, "pump", "s1", 9.0)],
            &[],
            &[raised.clone(), alarm(1, "fan")],
        )
        .unwrap();
        let mut ended = raised.clone();
        ended.ended_observation = Some(7);
        ended.ended_by = Some("cleared".into());
        ended.acknowledged = Some(OperatorAction {
            at: 1_700_000_010.0,
            by: "alice".into(),
            note: Some("valve replaced".into()),
        });
        log.append_with_events(&[], &[], &[ended.clone()]).unwrap();
        drop(log);
        let mut log = ObservationLog::open(&path, Durability::Normal).unwrap();
        assert_eq!(
            log.alarms(10).unwrap(),
            vec![alarm(1, "fan"), ended.clone()]
        );
        assert_eq!(log.alarms(1).unwrap(), vec![ended]);
        for id in 3..=6 {
            log.append_with_events(&[], &[], &[alarm(id, "pump")])
                .unwrap();
        }
        assert_eq!(log.prune_alarms(3).unwrap(), 3);
        let ids: Vec<i64> = log.alarms(10).unwrap().iter().map(|a| a.id).collect();
        assert_eq!(ids, vec![4, 5, 6]);
        assert_eq!(log.prune_alarms(3).unwrap(), 0);
    }

    #[test]
    fn observations_read_back_as_answered_page_by_id_and_filter_by_stream_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let mut log = ObservationLog::open(&path, Durability::Normal).unwrap();
        // Two commits whose ids overlap (a request takes its ids before another's and commits
        // after it), two streams, and another detector.
        let row = |id: i64, stream: &str, at: f64| {
            let mut o = observation(id, "pump", stream, id as f32);
            o.received_at = at;
            o.alarm = Some(id % 3 == 0);
            o.changepoint = (id != 7).then_some(id % 4 == 0);
            o
        };
        let first: Vec<_> = [1, 2, 3, 5, 6].iter().map(|&i| row(i, "a", 10.0)).collect();
        let second: Vec<_> = [4, 7, 8].iter().map(|&i| row(i, "b", 20.0)).collect();
        log.append(&first).unwrap();
        log.append(&second).unwrap();
        log.append(&[observation(9, "fan", "a", 1.0)]).unwrap();
        log.label("pump", &[(4, true), (6, false)], 30.0)
            .unwrap()
            .unwrap();
        let reader = ObservationLog::open_reader(&path).unwrap();
        let query = |after: Option<i64>, limit: usize| ObservationQuery {
            detector: "pump".into(),
            after_id: after,
            limit,
            ..ObservationQuery::default()
        };
        let ids =
            |page: &ObservationPage| page.observations.iter().map(|o| o.id).collect::<Vec<_>>();
        let page = reader.observations(&query(None, 4)).unwrap();
        assert_eq!(ids(&page), vec![1, 2, 3, 4]);
        assert!(page.more);
        assert_eq!(page.labels, HashMap::from([(4, true)]));
        let third = &page.observations[2];
        assert_eq!(
            (third.alarm, third.changepoint, third.threshold),
            (Some(true), Some(false), Some(1.0))
        );
        assert_eq!(third.received_at, 10.0);
        let page = reader.observations(&query(Some(4), 4)).unwrap();
        assert_eq!(ids(&page), vec![5, 6, 7, 8]);
        assert!(!page.more);
        assert_eq!(page.observations[2].changepoint, None);
        assert_eq!(page.labels, HashMap::from([(6, false)]));
        let b = ObservationQuery {
            stream: Some("b".into()),
            ..query(None, 10)
        };
        assert_eq!(ids(&reader.observations(&b).unwrap()), vec![4, 7, 8]);
        let early = ObservationQuery {
            until: Some(15.0),
            ..query(None, 10)
        };
        assert_eq!(
            ids(&reader.observations(&early).unwrap()),
            vec![1, 2, 3, 5, 6]
        );
        let late = ObservationQuery {
            since: Some(15.0),
            ..query(None, 10)
        };
        assert_eq!(ids(&reader.observations(&late).unwrap()), vec![4, 7, 8]);
        // The reader writes nothing.
        assert!(reader.conn.execute("DELETE FROM labels", []).is_err());
    }

    #[test]
    fn rows_written_before_alarms_were_stored_read_as_unknown() {
        // The flags byte of an earlier version: the anomaly alone.
        let mut bytes = Vec::new();
        Record::write(&observation(1, "pump", "a", 1.0), &mut bytes);
        bytes[32] = 1;
        let read = Record::read(&bytes, "a", "v1");
        assert_eq!(
            (read.anomaly, read.alarm, read.changepoint),
            (Some(true), None, None)
        );
        bytes[32] = 2;
        assert_eq!(Record::read(&bytes, "a", "v1").anomaly, None);
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
    fn labels_are_stored_all_or_nothing_for_the_detector_that_owns_the_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let mut log = ObservationLog::open(&path, Durability::Normal).unwrap();
        let rows: Vec<_> = (1..=6)
            .map(|i| observation(i, if i <= 4 { "pump" } else { "fan" }, "s", i as f32))
            .collect();
        log.append(&rows).unwrap();
        // Stored, each with the stream of its observation.
        assert_eq!(
            log.label("pump", &[(2, true), (3, false)], 1.0).unwrap(),
            Ok(vec!["s".to_string(), "s".to_string()])
        );
        // 5 belongs to the fan, 99 to nobody: nothing of this request is stored.
        assert_eq!(
            log.label("pump", &[(4, true), (5, true), (99, false)], 2.0)
                .unwrap(),
            Err(vec![5, 99])
        );
        // The latest label of an observation wins.
        assert_eq!(
            log.label("pump", &[(3, true)], 3.0).unwrap(),
            Ok(vec!["s".to_string()])
        );
        drop(log);
        let log = ObservationLog::open(&path, Durability::Normal).unwrap();
        assert_eq!(log.labels("pump").unwrap(), vec![(2, true), (3, true)]);
        assert!(log.labels("fan").unwrap().is_empty());
    }

    #[test]
    fn a_forgotten_detector_leaves_only_its_events_and_other_detectors_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ObservationLog::open(&dir.path().join("log.db"), Durability::Normal).unwrap();
        let rows: Vec<_> = (1..=6)
            .map(|i| observation(i, if i <= 4 { "pump" } else { "fan" }, "s", i as f32))
            .collect();
        let event = |detector: &str| ModelEvent {
            detector: detector.into(),
            at: 1.0,
            event: EventKind::Published,
            version: Some("v1".into()),
            reason: None,
        };
        log.append_with_events(
            &rows,
            &[event("pump"), event("fan")],
            &[alarm(2, "pump"), alarm(5, "fan")],
        )
        .unwrap();
        log.label("pump", &[(2, true)], 1.0).unwrap().unwrap();
        log.label("fan", &[(5, true)], 1.0).unwrap().unwrap();

        assert_eq!(log.forget_detector("pump").unwrap(), 4);
        assert_eq!(log.counts().unwrap().get("pump"), None);
        assert!(log.labels("pump").unwrap().is_empty());
        assert!(log.streams("pump").unwrap().is_empty());
        let alarms: Vec<String> = log
            .alarms(100)
            .unwrap()
            .into_iter()
            .map(|a| a.detector)
            .collect();
        assert_eq!(alarms, vec!["fan".to_string()]);
        assert_eq!(log.events("pump").unwrap().len(), 1, "its history stays");
        // The fan is as it was.
        assert_eq!(log.counts().unwrap()["fan"], 2);
        assert_eq!(log.labels("fan").unwrap(), vec![(5, true)]);
        // A detector of the same name starts from nothing, with a stream of its own.
        log.append(&[observation(7, "pump", "s", 7.0)]).unwrap();
        let ids: Vec<i64> = log
            .recent("pump", 10)
            .unwrap()
            .iter()
            .map(|o| o.id)
            .collect();
        assert_eq!(ids, vec![7]);
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
        let mut ids: Vec<(String, i64)> = Vec::new();
        let mut batches = 0;
        log.recent_per_stream("pump", 2, |stream| {
            batches += 1;
            ids.extend(stream.iter().map(|o| (o.stream.clone(), o.id)));
        })
        .unwrap();
        assert_eq!(batches, 2, "one call per stream");
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
        // One commit per observation: a chunk each.
        for i in 1..=20 {
            log.append(&[observation(
                i,
                if i % 4 == 0 { "fan" } else { "pump" },
                "s",
                i as f32,
            )])
            .unwrap();
        }
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
    fn retention_deletes_whole_commits_and_never_more_than_asked() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ObservationLog::open(&dir.path().join("log.db"), Durability::Normal).unwrap();
        for commit in 0..4 {
            let rows: Vec<_> = (0..5)
                .map(|k| observation(commit * 5 + k + 1, "pump", "s", 1.0))
                .collect();
            log.append(&rows).unwrap();
        }
        assert_eq!(log.delete_oldest("pump", 7).unwrap(), 5);
        assert_eq!(log.counts().unwrap()["pump"], 15);
        assert_eq!(log.get(5).unwrap(), None);
        assert_eq!(log.get(6).unwrap().unwrap().id, 6);
    }

    /// What a scan of every chunk says the log holds: the reference the totals must equal.
    fn scanned(log: &ObservationLog) -> (i64, HashMap<String, u64>) {
        let max: i64 = log
            .conn
            .query_row(
                "SELECT coalesce(max(last_id), 0) FROM observation_chunks",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let mut statement = log
            .conn
            .prepare(
                "SELECT s.detector, sum(c.n) FROM observation_chunks c
                 JOIN streams s ON s.id = c.stream_id GROUP BY s.detector",
            )
            .unwrap();
        let counts = statement
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        (max, counts)
    }

    fn stored_through(log: &ObservationLog) -> i64 {
        log.conn
            .query_row("SELECT through_chunk FROM log_totals", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn totals_match_a_full_scan_through_appends_deletes_and_reopening_and_are_stored_as_they_grow()
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let mut log = ObservationLog::open(&path, Durability::Normal).unwrap();
        assert_eq!(
            (log.max_id().unwrap(), log.counts().unwrap()),
            scanned(&log)
        );
        // Three streams of two detectors, one chunk per stream and commit: past two stores.
        let mut id = 0;
        let commits = (2 * TOTALS_EVERY / 3 + 5) as usize;
        for _ in 0..commits {
            let batch: Vec<NewObservation> = [("pump", "a"), ("pump", "b"), ("fan", "a")]
                .iter()
                .map(|(detector, stream)| {
                    id += 1;
                    observation(id, detector, stream, 1.0)
                })
                .collect();
            log.append(&batch).unwrap();
        }
        let through = stored_through(&log);
        assert!(
            through >= TOTALS_EVERY as i64 && through < 3 * commits as i64,
            "the totals were stored as the log grew (through chunk {through})"
        );
        let want = scanned(&log);
        assert_eq!(want.1["pump"], 2 * commits as u64);
        assert_eq!((log.max_id().unwrap(), log.counts().unwrap()), want);

        assert_eq!(log.delete_oldest("pump", 100).unwrap(), 100);
        assert_eq!(
            (log.max_id().unwrap(), log.counts().unwrap()),
            scanned(&log)
        );
        drop(log);
        let mut log = ObservationLog::open(&path, Durability::Normal).unwrap();
        assert_eq!(
            (log.max_id().unwrap(), log.counts().unwrap()),
            scanned(&log)
        );

        // Forgetting the detector that holds the newest ids: the counts follow, the largest
        // id does not go down (ids are never handed out twice), and chunks appended after
        // the delete (which may reuse chunk ids) are counted.
        log.append(&[observation(id + 1, "new", "a", 1.0)]).unwrap();
        log.forget_detector("new").unwrap();
        let counts = log.counts().unwrap();
        assert!(!counts.contains_key("new"), "{counts:?}");
        assert_eq!(counts, scanned(&log).1);
        assert_eq!(log.max_id().unwrap(), id + 1);
        log.append(&[observation(id + 2, "fan", "a", 1.0)]).unwrap();
        assert_eq!(log.counts().unwrap(), scanned(&log).1);
        assert_eq!(log.max_id().unwrap(), id + 2);
    }

    #[test]
    fn a_log_from_before_the_stored_totals_is_counted_once_when_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        {
            let mut log = ObservationLog::open(&path, Durability::Normal).unwrap();
            log.append(&[
                observation(1, "pump", "a", 1.0),
                observation(2, "pump", "b", 1.0),
            ])
            .unwrap();
            log.append(&[observation(3, "fan", "a", 1.0)]).unwrap();
            // As schema 5 left it: no stored totals.
            log.conn
                .execute_batch("DROP TABLE log_totals; PRAGMA user_version = 5;")
                .unwrap();
        }
        let log = ObservationLog::open(&path, Durability::Normal).unwrap();
        assert_eq!(stored_through(&log), 3, "counted through the last chunk");
        assert_eq!(log.max_id().unwrap(), 3);
        assert_eq!(
            log.counts().unwrap(),
            HashMap::from([("pump".to_owned(), 2), ("fan".to_owned(), 1)])
        );
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
        let event = |kind: EventKind| ModelEvent {
            detector: "pump".into(),
            at: 1.0,
            event: kind,
            version: Some("v1".into()),
            reason: None,
        };
        log.append_with_events(
            &[],
            &[event(EventKind::Published), event(EventKind::Activated)],
            &[],
        )
        .unwrap();
        let events: Vec<EventKind> = log
            .events("pump")
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(events, vec![EventKind::Published, EventKind::Activated]);
        for kind in events {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
    }

    #[test]
    fn training_runs_kept_as_events_move_to_their_own_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        {
            // A log as the previous version left it: schema 2, a run inside an event.
            let mut conn = Connection::open(&path).unwrap();
            for (i, migration) in MIGRATIONS[..2].iter().enumerate() {
                let tx = conn.transaction().unwrap();
                tx.execute_batch(migration).unwrap();
                tx.pragma_update(None, "user_version", i as i64 + 1)
                    .unwrap();
                tx.commit().unwrap();
            }
            let run = serde_json::json!({
                "detector": "pump", "trigger": "on_demand", "started": 10.0, "ended": 12.5,
                "decision": "promoted", "reason": "fine", "samples": 300,
                "anomalous_samples": 4, "version": "ft-1", "parent": null,
                "figures": {"seed": 7}
            });
            conn.execute(
                "INSERT INTO model_events (detector, at, event, version, reason)
                 VALUES ('pump', 12.5, 'training_promoted', 'ft-1', ?1),
                        ('pump', 13.0, 'activated', 'ft-1', NULL)",
                [run.to_string()],
            )
            .unwrap();
        }
        let mut log = ObservationLog::open(&path, Durability::Normal).unwrap();
        let runs = log.runs("pump", 10).unwrap();
        assert_eq!(runs.len(), 1);
        let run = &runs[0];
        assert_eq!(
            (run.trigger.as_str(), run.decision.as_str(), run.samples),
            ("on_demand", "promoted", 300)
        );
        assert_eq!((run.started, run.ended), (10.0, 12.5));
        assert_eq!(run.version.as_deref(), Some("ft-1"));
        assert_eq!(run.parent, None);
        assert_eq!(run.figures, r#"{"seed":7}"#);
        let events = log.events("pump").unwrap();
        assert_eq!(events.len(), 1, "the run left model_events");
        assert_eq!(events[0].event, EventKind::Activated);

        let next = TrainingRunRecord {
            started: 20.0,
            ended: 21.0,
            decision: "rejected".into(),
            ..run.clone()
        };
        log.append_run(&next, &[]).unwrap();
        let runs = log.runs("pump", 1).unwrap();
        assert_eq!(runs, vec![next]);
    }
}
