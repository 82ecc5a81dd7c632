//! anjeon (안전): offline AI-safety benchmarks for Korean, multimodal
//! generative AI. Pipeline: dataset → (attack variants) → media → target
//! model → judge → metrics → report; every stage writes to a run directory.

pub mod attack;
pub mod audio;
pub mod bundle;
pub mod dataset;
pub mod doctor;
pub mod error;
pub mod judge;
pub mod media;
pub mod metrics;
pub mod model;
pub mod progress;
pub mod report;
pub mod run;
pub mod sample;
pub mod shard;
pub mod store;
pub mod taxonomy;

pub use error::{Error, Result};
