//! Where Vigil's data comes from.
//!
//! The observation log (every scored reading, in SQLite), recorded data sets (generic CSV,
//! SKAB and NAB files, strictly parsed), a seeded synthetic multi-sensor machine, windowing
//! for model inputs, and the detection metrics of the SKAB leaderboard. This crate knows
//! nothing about HTTP, async or models.

pub mod log;
pub mod metrics;
pub mod nab;
pub mod nab_official;
pub mod outbox;
pub mod skab;
pub mod synthetic;
pub mod window;

pub use log::{
    AlarmContribution, AlarmRecord, Durability, EventKind, LogError, LoggedObservation, ModelEvent,
    NewObservation, ObservationLog, ObservationPage, ObservationQuery, OperatorAction, Shelving,
    TrainingRunRecord,
};
pub use outbox::{OutboxClass, OutboxMessage, OutboxRow, OutboxStats};
