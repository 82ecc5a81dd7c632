//! Core types at the bottom of the layers: items ([`sample`]), the risk
//! taxonomy, errors, hashing, seeded randomness, statistics, time and
//! progress bars. Nothing here imports a stage.

pub mod error;
pub mod fs;
pub mod guard;
pub mod hash;
pub mod limits;
pub mod progress;
pub mod rng;
pub mod sample;
pub mod stats;
pub mod taxonomy;
pub mod time;
