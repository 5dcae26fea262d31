//! The uplink's outbox: messages for the site's MQTT broker, stored in the log in the same
//! transaction as the observations, alarm changes and model events they report, and deleted
//! only once the broker has acknowledged them (store and forward).
//!
//! Two classes: reports (alarm transitions, model events and training-run decisions), which
//! are sent first and kept up to a large hard cap, and observation batches, which are sent
//! after every report and are the first dropped when the outbox is over its byte budget. Ids
//! come from `AUTOINCREMENT`, so they are never reused, even after every row was sent: a
//! consumer can drop the duplicates that at-least-once delivery allows by `(box, id)`.

use rusqlite::{params, Connection};

use crate::log::{LogError, ObservationLog};

/// What a message reports, which decides its order and what is dropped first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboxClass {
    /// Alarm transitions, model events, training-run decisions: sent first, kept longest.
    Report,
    /// Batches of scored observations: sent after every report, dropped first.
    Observations,
}

impl OutboxClass {
    /// Both classes, in the order they are sent.
    pub const ALL: [OutboxClass; 2] = [OutboxClass::Report, OutboxClass::Observations];

    fn code(self) -> i64 {
        match self {
            OutboxClass::Report => 0,
            OutboxClass::Observations => 1,
        }
    }

    fn of(code: i64) -> OutboxClass {
        if code == 0 {
            OutboxClass::Report
        } else {
            OutboxClass::Observations
        }
    }

    /// The class's position in per-class arrays ([`OutboxStats`]).
    pub fn index(self) -> usize {
        self.code() as usize
    }
}

/// A message to store for the uplink.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    pub class: OutboxClass,
    /// The topic below the uplink's prefix (`alarms`, `models`, `observations/pump`).
    pub topic: String,
    /// A JSON object.
    pub payload: Vec<u8>,
    /// When it was made (Unix seconds).
    pub created: f64,
}

impl OutboxMessage {
    /// What the message counts against the outbox's byte budget.
    pub fn bytes(&self) -> u64 {
        (self.topic.len() + self.payload.len()) as u64
    }
}

/// A stored message, with the id it is sent under.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub message: OutboxMessage,
}

/// Messages and bytes waiting, per class ([`OutboxClass::index`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub messages: [u64; 2],
    pub bytes: [u64; 2],
}

impl OutboxStats {
    /// Messages waiting in both classes.
    pub fn total_messages(&self) -> u64 {
        self.messages.iter().sum()
    }

    /// Bytes waiting in both classes.
    pub fn total_bytes(&self) -> u64 {
        self.bytes.iter().sum()
    }

    /// Counts a message of `class` and `bytes` (stored).
    pub fn add(&mut self, class: OutboxClass, bytes: u64) {
        self.messages[class.index()] += 1;
        self.bytes[class.index()] += bytes;
    }

    /// Takes away `messages` messages of `class` holding `bytes` (deleted).
    pub fn remove(&mut self, class: OutboxClass, messages: u64, bytes: u64) {
        let i = class.index();
        self.messages[i] = self.messages[i].saturating_sub(messages);
        self.bytes[i] = self.bytes[i].saturating_sub(bytes);
    }
}

/// Inserts `messages` in order, inside the caller's transaction.
pub(crate) fn insert(conn: &Connection, messages: &[OutboxMessage]) -> rusqlite::Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let mut insert = conn.prepare_cached(
        "INSERT INTO outbox (class, topic, payload, bytes, created) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for m in messages {
        insert.execute(params![
            m.class.code(),
            m.topic,
            m.payload,
            m.bytes() as i64,
            m.created
        ])?;
    }
    Ok(())
}

/// Rows deleted at a time when the outbox is trimmed to its budget.
const TRIM_CHUNK: i64 = 256;

impl ObservationLog {
    /// Messages and bytes waiting, per class (read once at start-up; the writer keeps count).
    pub fn outbox_stats(&self) -> Result<OutboxStats, LogError> {
        let mut statement = self.conn.prepare(
            "SELECT class, count(*), coalesce(sum(bytes), 0) FROM outbox GROUP BY class",
        )?;
        let rows = statement.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut stats = OutboxStats::default();
        for row in rows {
            let (class, n, bytes) = row?;
            let i = OutboxClass::of(class).index();
            stats.messages[i] += n as u64;
            stats.bytes[i] += bytes as u64;
        }
        Ok(stats)
    }

    /// At most `limit` messages of `class` with ids above `after`, oldest first.
    pub fn outbox_after(
        &self,
        class: OutboxClass,
        after: i64,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, LogError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT id, topic, payload, created FROM outbox
             WHERE class = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )?;
        let rows = statement.query_map(params![class.code(), after, limit as i64], |r| {
            Ok(OutboxRow {
                id: r.get(0)?,
                message: OutboxMessage {
                    class,
                    topic: r.get(1)?,
                    payload: r.get(2)?,
                    created: r.get(3)?,
                },
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// When the oldest message waiting was made, if any is.
    pub fn outbox_oldest(&self) -> Result<Option<f64>, LogError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT created FROM outbox ORDER BY id LIMIT 1")?;
        let mut rows = statement.query([])?;
        Ok(match rows.next()? {
            Some(row) => Some(row.get(0)?),
            None => None,
        })
    }

    /// Deletes the messages with these ids (the broker acknowledged them), in one
    /// transaction; returns the class and bytes of each one deleted (ids already gone are
    /// skipped).
    pub fn outbox_delete(&mut self, ids: &[i64]) -> Result<Vec<(OutboxClass, u64)>, LogError> {
        let tx = self.conn.transaction()?;
        let mut deleted = Vec::with_capacity(ids.len());
        {
            let mut delete =
                tx.prepare_cached("DELETE FROM outbox WHERE id = ?1 RETURNING class, bytes")?;
            for id in ids {
                let mut rows = delete.query([id])?;
                if let Some(row) = rows.next()? {
                    deleted.push((OutboxClass::of(row.get(0)?), row.get::<_, i64>(1)? as u64));
                }
            }
        }
        tx.commit()?;
        Ok(deleted)
    }

    /// Deletes the oldest messages of `class` until at least `free` bytes of it are gone (or
    /// none is left); returns how many messages and bytes went.
    pub fn outbox_drop_oldest(
        &mut self,
        class: OutboxClass,
        free: u64,
    ) -> Result<(u64, u64), LogError> {
        let (mut n, mut bytes) = (0u64, 0u64);
        while bytes < free {
            let mut statement = self.conn.prepare_cached(
                "DELETE FROM outbox WHERE id IN
                   (SELECT id FROM outbox WHERE class = ?1 ORDER BY id LIMIT ?2)
                 RETURNING bytes",
            )?;
            // Deleting whole chunks may free a little more than asked: at most one chunk.
            let freed: Vec<i64> = statement
                .query_map(params![class.code(), TRIM_CHUNK], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            if freed.is_empty() {
                break;
            }
            n += freed.len() as u64;
            bytes += freed.iter().map(|&b| b as u64).sum::<u64>();
        }
        Ok((n, bytes))
    }
}

/// How much of each class must go to bring the outbox within its limits: observations first
/// while the whole outbox is over `budget`; reports only beyond `hard_cap` (their own bytes).
/// Returns the bytes to free per class.
pub fn over_budget(stats: &OutboxStats, budget: u64, hard_cap: u64) -> [u64; 2] {
    let observations = OutboxClass::Observations.index();
    let reports = OutboxClass::Report.index();
    let over = stats.total_bytes().saturating_sub(budget);
    let mut free = [0; 2];
    free[observations] = over.min(stats.bytes[observations]);
    free[reports] = stats.bytes[reports].saturating_sub(hard_cap);
    free
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Durability;

    fn message(class: OutboxClass, topic: &str, n: usize) -> OutboxMessage {
        OutboxMessage {
            class,
            topic: topic.into(),
            payload: vec![b'x'; n],
            created: 1.0,
        }
    }

    #[test]
    fn messages_commit_with_observations_and_leave_when_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let mut log = ObservationLog::open(&path, Durability::Normal).unwrap();
        let sent = [
            message(OutboxClass::Observations, "observations/pump", 100),
            message(OutboxClass::Report, "alarms", 10),
            message(OutboxClass::Report, "models", 20),
        ];
        log.append_with_outbox(&[], &[], &[], &sent).unwrap();
        let stats = log.outbox_stats().unwrap();
        assert_eq!(stats.messages, [2, 1]);
        assert_eq!(stats.bytes, [6 + 10 + 6 + 20, 17 + 100]);
        // Reports in order, then observations; the reader sees them from its own connection.
        let reader = ObservationLog::open_reader(&path).unwrap();
        let reports = reader.outbox_after(OutboxClass::Report, 0, 10).unwrap();
        assert_eq!(
            reports
                .iter()
                .map(|r| r.message.topic.as_str())
                .collect::<Vec<_>>(),
            ["alarms", "models"]
        );
        let after_first = reader
            .outbox_after(OutboxClass::Report, reports[0].id, 10)
            .unwrap();
        assert_eq!(after_first.len(), 1);
        let observations = reader
            .outbox_after(OutboxClass::Observations, 0, 10)
            .unwrap();
        assert_eq!(observations[0].message, sent[0]);
        assert_eq!(reader.outbox_oldest().unwrap(), Some(1.0));

        let gone = log.outbox_delete(&[reports[0].id, 999]).unwrap();
        assert_eq!(gone, vec![(OutboxClass::Report, 16)]);
        assert_eq!(log.outbox_stats().unwrap().messages, [1, 1]);
    }

    #[test]
    fn ids_are_never_reused_after_the_outbox_empties() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ObservationLog::open(&dir.path().join("log.db"), Durability::Normal).unwrap();
        let m = message(OutboxClass::Report, "alarms", 1);
        log.append_with_outbox(&[], &[], &[], std::slice::from_ref(&m))
            .unwrap();
        let first = log.outbox_after(OutboxClass::Report, 0, 1).unwrap()[0].id;
        log.outbox_delete(&[first]).unwrap();
        log.append_with_outbox(&[], &[], &[], &[m]).unwrap();
        let second = log.outbox_after(OutboxClass::Report, 0, 1).unwrap()[0].id;
        assert!(second > first);
    }

    #[test]
    fn dropping_takes_the_oldest_of_one_class_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ObservationLog::open(&dir.path().join("log.db"), Durability::Normal).unwrap();
        let mut messages = Vec::new();
        for _ in 0..600 {
            messages.push(message(OutboxClass::Observations, "o", 9));
            messages.push(message(OutboxClass::Report, "r", 9));
        }
        log.append_with_outbox(&[], &[], &[], &messages).unwrap();
        let first_kept = log.outbox_after(OutboxClass::Observations, 0, 301).unwrap()[300].id;
        // 300 messages of 10 bytes: two chunks of 256 would free 5,120; one more is taken only
        // while short of the mark.
        let (n, bytes) = log
            .outbox_drop_oldest(OutboxClass::Observations, 2_000)
            .unwrap();
        assert_eq!((n, bytes), (256, 2_560));
        let left = log
            .outbox_after(OutboxClass::Observations, 0, 1000)
            .unwrap();
        assert_eq!(left.len(), 600 - 256);
        assert!(left[0].id < first_kept);
        assert_eq!(
            log.outbox_stats().unwrap().messages[0],
            600,
            "reports untouched"
        );
        let (n, _) = log
            .outbox_drop_oldest(OutboxClass::Observations, u64::MAX)
            .unwrap();
        assert_eq!(n, 600 - 256);
    }

    #[test]
    fn observations_go_before_reports_and_reports_only_beyond_the_hard_cap() {
        let stats = |reports: u64, observations: u64| OutboxStats {
            messages: [1, 1],
            bytes: [reports, observations],
        };
        assert_eq!(over_budget(&stats(10, 10), 100, 1000), [0, 0]);
        assert_eq!(over_budget(&stats(50, 80), 100, 1000), [0, 30]);
        // Reports alone over the budget: every observation goes, reports stay below the cap.
        assert_eq!(over_budget(&stats(500, 80), 100, 1000), [0, 80]);
        assert_eq!(over_budget(&stats(1500, 80), 100, 1000), [500, 80]);
    }
}
