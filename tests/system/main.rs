//! System tests: the real `vigil` binary on 127.0.0.1, a real SQLite file, real packages.

mod alarms;
mod cli;
mod client;
mod dashboard;
mod disk;
mod durability;
mod errors;
mod events;
mod feedback;
mod hardening;
mod observations;
mod openapi;
mod packages;
mod serving;
mod signatures;
mod simulate;
mod swaps;
mod systemd;
mod telemetry;
mod tidy;
mod tuning;
mod uplink;
