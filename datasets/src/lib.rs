//! Where Vigil's data comes from.
//!
//! Today that is the observation log: every scored reading, in SQLite. Recorded data sets
//! (SKAB, NAB, CSV) and the synthetic generator join it here. This crate knows nothing about
//! HTTP, async or models.

pub mod log;
pub mod metrics;
pub mod skab;

pub use log::{
    Durability, LogError, LoggedObservation, ModelEvent, NewObservation, ObservationLog,
};
