//! Where Vigil's data comes from.
//!
//! The observation log (every scored reading, in SQLite), recorded data sets (generic CSV,
//! SKAB and NAB files, strictly parsed), and the detection metrics of the SKAB leaderboard. The
//! synthetic generator joins them with issue 3. This crate knows nothing about HTTP, async
//! or models.

pub mod log;
pub mod metrics;
pub mod nab;
pub mod skab;

pub use log::{
    Durability, LogError, LoggedObservation, ModelEvent, NewObservation, ObservationLog,
};
