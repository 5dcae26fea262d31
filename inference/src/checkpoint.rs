//! WAL checkpoints, kept off the commit path: the background thread that copies the WAL into
//! the database, and the hand-shake by which the log writer lets the WAL start again from its
//! beginning without ever running a checkpoint inside a commit.
//!
//! Why (the saturation tail of `vigil bench`, traced): SQLite restarts a WAL from its beginning
//! only when a write transaction begins while every frame has been copied into the database.
//! Under sustained load the writer never pauses, so a checkpoint on another connection never
//! catches up, the WAL grows to `wal_autocheckpoint` pages, and SQLite's commit hook then runs
//! a checkpoint on the writer's own connection: an `fsync` of tens of megabytes of WAL inside
//! `COMMIT`, with every request of the group (and all that queue behind it) waiting 20–55 ms.
//! (`perf record -e sched:sched_switch --call-graph dwarf` on the writer thread showed 97 % of
//! its off-CPU time in `fsync` under `sqlite3WalDefaultHook → walCheckpoint`.)
//!
//! So: the writer's connection never checkpoints (`wal_autocheckpoint` only as a far safety
//! bound); this thread checkpoints passively, every [`IDLE_PAUSE`], and back to back once the
//! WAL, at the pace it grows, would reach the writer's ask within [`LOOK_AHEAD`]; and once the
//! WAL passes [`WRAP_FRAMES`] the writer, between two transactions, waits for one pass that
//! began after its last commit ([`Checkpoints::wrap`]). That pass copies only the last few
//! milliseconds of frames, after which the writer's next transaction starts the WAL over. The
//! pause is bounded ([`MAX_WRAP_WAIT`]) and comes once per [`WRAP_FRAMES`] of WAL, not on
//! every commit.
//!
//! Three things keep that pause short (traced again under `wrk` at saturation, `strace -T` on
//! this thread: the pause was 8–32 ms on average, 10–50 ms at worst):
//! - SQLite syncs the database file only in the pass that copies the whole WAL, the one the
//!   writer waits for; that `fsync` then flushed every page copied since the last start-over
//!   (24 ms). This thread syncs the database after every pass that copied frames
//!   (`sync_copied`), so the waited pass flushes only its own pages (0.5 ms).
//! - A pass that is already running began before the writer's last commit, so it cannot leave
//!   the WAL fully copied; waiting for it and then for a new one doubled the pause. The writer
//!   waits only while no pass runs ([`Wrap::Deferred`] otherwise: it asks again after its next
//!   transaction, and the checkpointer rests between passes far longer than a commit takes).
//! - The waited pass first syncs the WAL written since the pass before it. When the rest
//!   between passes followed the WAL's size, the checkpointer rested half a second after each
//!   start-over (the WAL was small then), synced 55 MB in its next pass (74 ms), and the waited
//!   pass then synced what came during that one (16 ms). The rest now follows how soon the WAL
//!   will reach the ask ([`pause_after`]): passes run back to back through the last second
//!   before it, so the waited pass has about 10 ms of WAL to sync (1–2 ms in all).
//!
//! And the commit after the start-over stays short: SQLite cuts the WAL file back to
//! `journal_size_limit` in that commit, and at 64 MiB it cut 1–100 MB every time (the file
//! passes 64 MiB before the ask is answered), which took 0.5–38 ms. The writer's connection
//! keeps up to [`KEPT_WAL_BYTES`]; the commit then takes 0.2 ms (the WAL header's `fsync`).

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vigil_datasets::{Durability, ObservationLog};

/// The checkpointer thread's name (what `top -H` and `/proc/<pid>/task/*/comm` show, cut to
/// 15 bytes there).
pub const THREAD_NAME: &str = "vigil-checkpoint";

/// WAL size (pages) past which the writer asks for the WAL to start over: 64 MiB.
pub const WRAP_FRAMES: i64 = 16_384;
/// The writer's own connection checkpoints only past this (256 MiB): a safety bound for a
/// checkpointer that cannot keep up (a reader holding an old snapshot), never reached in
/// normal service.
pub const SAFETY_FRAMES: i64 = 4 * WRAP_FRAMES;
const _: () = assert!(SAFETY_FRAMES > WRAP_FRAMES);
/// The WAL file is cut back to this when it starts over, and only when it grew past it:
/// twice the size at which the writer asks (in SQLite's 4 KiB pages), so that a normal cycle
/// (the ask, plus what comes in until the pass it waits for) never cuts it and the commit
/// after a start-over stays short (see the module's documentation).
pub const KEPT_WAL_BYTES: i64 = 2 * WRAP_FRAMES * 4096;
/// Longest the writer waits for a pass before it goes on (the WAL then wraps next time).
pub const MAX_WRAP_WAIT: Duration = Duration::from_millis(50);
/// Pause between passes while the WAL is far from the writer's ask.
pub const IDLE_PAUSE: Duration = Duration::from_millis(500);
/// Pause between passes as the ask nears: short, so that a pass syncs and copies little.
pub const BUSY_PAUSE: Duration = Duration::from_millis(10);
/// How long before the WAL reaches the writer's ask the passes run back to back: two idle
/// pauses, so that the pass after a long one (which synced up to an idle pause of WAL) and
/// the few after it, each shorter than the last, are over before the ask.
pub const LOOK_AHEAD: Duration = Duration::from_secs(1);
const _: () = assert!(LOOK_AHEAD.as_millis() >= 2 * IDLE_PAUSE.as_millis());

/// How fast the WAL grew, in pages a second, between two passes `elapsed` apart that found
/// `before` and then `frames` pages (`-1`: a pass could not run). Unknown when the WAL started
/// over in between: when it did is not known, and a pace taken over the whole time would be
/// too slow (it left the checkpointer idle for half a second after every start-over).
pub fn growth(before: i64, frames: i64, elapsed: Duration) -> Option<f64> {
    (before >= 0 && frames >= before && !elapsed.is_zero())
        .then(|| (frames - before) as f64 / elapsed.as_secs_f64())
}

/// How long the checkpointer rests after a pass that found `frames` pages in the WAL (`-1`:
/// the pass could not run), growing by `per_second` pages (`None`: not known yet), when the
/// writer asks at `ask_at` pages: back to back once the WAL would reach the ask within
/// [`LOOK_AHEAD`], and until the pace is known (a box started under load reaches the ask
/// within the first idle pause).
pub fn pause_after(frames: i64, per_second: Option<f64>, ask_at: i64) -> Duration {
    if frames < 0 {
        return IDLE_PAUSE;
    }
    match per_second {
        Some(pace) if (frames as f64 + pace * LOOK_AHEAD.as_secs_f64()) < ask_at as f64 => {
            IDLE_PAUSE
        }
        _ => BUSY_PAUSE,
    }
}

/// The WAL size (pages) at which the writer next asks for the WAL to start over, after a pass
/// found `frames` pages: the limit while the WAL is under it (it started over, or never grew),
/// else where it was already (`next`), which an ask moves on ([`after_asking`]).
pub fn next_wrap_at(frames: i64, next: i64, limit: i64) -> i64 {
    if frames < limit {
        limit
    } else {
        next.max(limit)
    }
}

/// Where the next ask is due after asking at `frames` pages: once the WAL has grown by the
/// limit again. A WAL that could not start over (a reader holding an old snapshot keeps its
/// frames in use) is asked again after another `limit` pages, not after every pass.
pub fn after_asking(frames: i64, limit: i64) -> i64 {
    frames.saturating_add(limit)
}

/// What came of the writer's ask ([`Checkpoints::wrap`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrap {
    /// A pass that began after the writer's last commit finished: the WAL starts over with the
    /// writer's next transaction (unless a reader still holds old frames).
    Done,
    /// No pass finished within [`MAX_WRAP_WAIT`].
    TimedOut,
    /// A pass was running; the writer did not wait and asks again after its next transaction.
    Deferred,
}

/// What the checkpointer and the writer share.
#[derive(Debug, Default)]
struct State {
    /// Passes begun and finished.
    started: u64,
    finished: u64,
    /// WAL pages at the last pass.
    wal_frames: i64,
    /// The WAL size at which the writer asks next ([`next_wrap_at`]).
    wrap_at: i64,
    /// The writer waits for a pass: run one now.
    wanted: bool,
    stop: bool,
}

/// The checkpointer's side of the hand-shake; cheap to share.
#[derive(Debug, Default)]
pub struct Checkpoints {
    state: Mutex<State>,
    changed: Condvar,
    wrap_frames: i64,
}

impl Checkpoints {
    /// Whether the WAL has grown past the size at which it should start over.
    pub fn wants_wrap(&self) -> bool {
        let state = self.lock();
        state.wal_frames >= self.ask_at(&state)
    }

    /// Called by the writer between transactions when [`wants_wrap`](Self::wants_wrap):
    /// waits (at most [`MAX_WRAP_WAIT`]) for a pass that begins now, so that the writer's
    /// next transaction finds every frame copied and starts the WAL over. While a pass is
    /// running it waits for nothing ([`Wrap::Deferred`]): that pass began before the writer's
    /// last commit.
    pub fn wrap(&self) -> Wrap {
        let started = std::time::Instant::now();
        let mut state = self.lock();
        if state.started > state.finished {
            return Wrap::Deferred;
        }
        let target = state.started + 1;
        state.wanted = true;
        state.wrap_at = after_asking(state.wal_frames, self.wrap_frames);
        self.changed.notify_all();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, MAX_WRAP_WAIT, |s| s.finished < target && !s.stop)
            .unwrap_or_else(|e| e.into_inner());
        let done = state.finished >= target;
        metrics::histogram!("vigil_log_wal_wrap_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("vigil_log_wal_wraps_total", "outcome" => if done { "done" } else { "timed_out" })
            .increment(1);
        if done {
            Wrap::Done
        } else {
            Wrap::TimedOut
        }
    }

    /// The WAL size (pages) at which the writer asks for a start-over.
    fn ask_at(&self, state: &State) -> i64 {
        state.wrap_at.max(self.wrap_frames)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The checkpoint thread; stops (after a last pass) when dropped or [`stop`](Self::stop)ped.
#[derive(Debug)]
pub struct Checkpointer {
    shared: Arc<Checkpoints>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens its own connection to the log at `path` and starts checkpointing. `wrap_frames`
    /// is [`WRAP_FRAMES`] in service (tests use less).
    pub fn start(
        path: &Path,
        durability: Durability,
        wrap_frames: i64,
    ) -> anyhow::Result<Checkpointer> {
        let log = ObservationLog::open(path, durability)?;
        // Opened after the log, which creates the file; only ever synced.
        let db = std::fs::File::open(path)?;
        let shared = Arc::new(Checkpoints {
            wrap_frames,
            ..Checkpoints::default()
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || checkpoint_until_stopped(&log, &db, &thread_shared))?;
        Ok(Checkpointer {
            shared,
            thread: Some(thread),
        })
    }

    /// What the writer holds.
    pub fn shared(&self) -> Arc<Checkpoints> {
        self.shared.clone()
    }

    /// Stops the thread after a last pass and waits for it.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Flushes the database pages a pass copied (`copied` frames), so that SQLite's own sync in
/// the pass that lets the WAL start over, which the writer waits for, has only that pass's
/// pages left to write. Moves the disk's work earlier; adds none.
fn sync_copied(db: &std::fs::File, copied: i64) {
    if copied > 0 {
        if let Err(err) = db.sync_data() {
            tracing::debug!(error = %err, "syncing the copied pages failed");
        }
    }
}

fn checkpoint_until_stopped(log: &ObservationLog, db: &std::fs::File, shared: &Checkpoints) {
    let mut pause = IDLE_PAUSE;
    // When the last pass that ran began (the WAL pages it found are `wal_frames`), and the
    // WAL's pace, in pages a second, when last known.
    let mut last_began: Option<std::time::Instant> = None;
    let mut per_second = None;
    loop {
        let mut state = shared
            .changed
            .wait_timeout_while(shared.lock(), pause, |s| !s.wanted && !s.stop)
            .map(|(state, _)| state)
            .unwrap_or_else(|e| e.into_inner().0);
        if state.stop {
            break;
        }
        state.wanted = false;
        state.started += 1;
        let pass = state.started;
        drop(state);
        let began = std::time::Instant::now();
        let frames = match log.checkpoint() {
            Ok((frames, copied)) => {
                sync_copied(db, copied);
                frames
            }
            Err(err) => {
                tracing::debug!(error = format!("{err:#}"), "checkpoint skipped");
                -1
            }
        };
        let mut state = shared.lock();
        state.finished = pass;
        if let Some(pace) = last_began.and_then(|at| growth(state.wal_frames, frames, began - at)) {
            per_second = Some(pace);
        }
        if frames >= 0 {
            last_began = Some(began);
            state.wal_frames = frames;
            state.wrap_at = next_wrap_at(frames, state.wrap_at, shared.wrap_frames);
        }
        let ask_at = shared.ask_at(&state);
        drop(state);
        shared.changed.notify_all();
        pause = pause_after(frames, per_second, ask_at);
    }
    let _ = log.checkpoint();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_is_unknown_across_a_start_over() {
        let second = Duration::from_secs(1);
        assert_eq!(growth(100, 400, second), Some(300.0));
        assert_eq!(growth(100, 400, second / 2), Some(600.0));
        assert_eq!(growth(400, 400, second), Some(0.0));
        // Started over in between (16,000 pages, then 300): when is not known.
        assert_eq!(growth(16_000, 300, second), None);
        // A pass that could not run, before or now; no time between.
        assert_eq!(growth(-1, 300, second), None);
        assert_eq!(growth(100, -1, second), None);
        assert_eq!(growth(100, 400, Duration::ZERO), None);
    }

    #[test]
    fn the_passes_run_back_to_back_only_as_the_ask_nears() {
        let ask = WRAP_FRAMES;
        // Just started over, growing 27,000 pages a second (single readings at saturation):
        // the ask is 0.6 s away, within the look-ahead.
        assert_eq!(pause_after(300, Some(27_000.0), ask), BUSY_PAUSE);
        // Growing 2,000 pages a second: idle until a second before the ask.
        assert_eq!(pause_after(300, Some(2_000.0), ask), IDLE_PAUSE);
        assert_eq!(pause_after(ask - 2_001, Some(2_000.0), ask), IDLE_PAUSE);
        assert_eq!(pause_after(ask - 2_000, Some(2_000.0), ask), BUSY_PAUSE);
        // At or past the ask (a reader kept the WAL from starting over): back to back.
        assert_eq!(pause_after(ask, Some(0.0), ask), BUSY_PAUSE);
        // The pace not known yet (the first pass): soon again, to learn it.
        assert_eq!(pause_after(0, None, ask), BUSY_PAUSE);
        // A quiet WAL, or a pass that could not run.
        assert_eq!(pause_after(0, Some(0.0), ask), IDLE_PAUSE);
        assert_eq!(pause_after(-1, Some(1e9), ask), IDLE_PAUSE);
        assert_eq!(pause_after(-1, None, ask), IDLE_PAUSE);
    }

    #[test]
    fn a_wal_that_did_not_start_over_is_asked_again_only_after_growing_by_the_limit() {
        let limit = 100;
        // Under the limit: due at the limit.
        assert_eq!(next_wrap_at(0, 0, limit), limit);
        assert_eq!(next_wrap_at(99, 250, limit), limit);
        // Asked at 130 pages: not again at 131..229 (a reader held it), again at 230.
        let due = after_asking(130, limit);
        assert_eq!(due, 230);
        assert_eq!(next_wrap_at(180, due, limit), 230);
        assert_eq!(next_wrap_at(230, due, limit), 230);
        // Once it started over (a pass found it small), the limit again.
        assert_eq!(next_wrap_at(12, due, limit), limit);
    }

    /// A pass that is running began before the writer's last commit: waiting for it could
    /// not let the WAL start over, so the writer goes on; once no pass runs, it asks for one
    /// and waits (here no checkpointer answers, so the wait runs out).
    #[test]
    fn the_writer_waits_only_for_a_pass_that_begins_after_its_ask() {
        let checkpoints = Checkpoints {
            wrap_frames: 64,
            ..Checkpoints::default()
        };
        checkpoints.lock().wal_frames = 100;
        checkpoints.lock().started = 1;
        let asked = std::time::Instant::now();
        assert_eq!(checkpoints.wrap(), Wrap::Deferred);
        assert!(asked.elapsed() < MAX_WRAP_WAIT);
        assert!(
            !checkpoints.lock().wanted,
            "a deferred ask asks for no pass"
        );
        assert!(checkpoints.wants_wrap(), "and is made again");

        checkpoints.lock().finished = 1;
        assert_eq!(checkpoints.wrap(), Wrap::TimedOut);
        assert!(checkpoints.lock().wanted, "the ask wants a new pass");
        assert!(asked.elapsed() >= MAX_WRAP_WAIT);
    }

    fn rows(first_id: i64, n: usize) -> Vec<vigil_datasets::NewObservation> {
        (0..n)
            .map(|k| vigil_datasets::NewObservation {
                id: first_id + k as i64,
                detector: "d".into(),
                stream: format!("s{}", k % 3),
                ts: None,
                received_at: 1.0,
                features: vec![0.5; 32],
                score: Some(0.1),
                threshold: Some(1.0),
                anomaly: Some(false),
                alarm: Some(false),
                changepoint: Some(false),
                model_version: "v1".into(),
            })
            .collect()
    }

    /// Commits one after another, as under saturation, with the writer's connection never
    /// checkpointing: once the WAL has started over, it is reused from its beginning instead
    /// of growing with every commit.
    #[test]
    fn under_sustained_commits_the_wal_starts_over_and_stops_growing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let mut log = ObservationLog::open(&path, Durability::Normal).unwrap();
        log.set_autocheckpoint(0).unwrap();
        let checkpointer = Checkpointer::start(&path, Durability::Normal, 64).unwrap();
        let checkpoints = checkpointer.shared();
        let wal_bytes = || {
            std::fs::metadata(dir.path().join("log.db-wal"))
                .unwrap()
                .len()
        };
        let mut next_id = 1;
        // Commits `n` times (or until `wraps` wraps, when `n` is 0); returns commits and wraps.
        let mut commit = |n: usize, wraps: usize| {
            let (mut done, mut wrapped) = (0, 0);
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while (n == 0 && wrapped < wraps || done < n) && std::time::Instant::now() < deadline {
                log.append(&rows(next_id, 4)).unwrap();
                next_id += 4;
                done += 1;
                // About as many commits a second as a box under saturation makes.
                std::thread::sleep(Duration::from_micros(100));
                if checkpoints.wants_wrap() && checkpoints.wrap() == Wrap::Done {
                    wrapped += 1;
                }
            }
            (done, wrapped)
        };
        let (before, first) = commit(0, 1);
        assert_eq!(first, 1, "the WAL did not start over within a minute");
        let at_first_wrap = wal_bytes();
        // Every commit writes at least a page: as many commits again, appended, would grow
        // the file by at least `before` pages.
        let (_, more) = commit(before, 0);
        let after = wal_bytes();
        checkpointer.stop();
        assert!(
            more >= 1,
            "the WAL started over only once in {} commits",
            2 * before
        );
        assert!(
            after < at_first_wrap + before as u64 * 4096 / 2,
            "{at_first_wrap} bytes at the first wrap, {after} after {before} more commits"
        );
    }
}
