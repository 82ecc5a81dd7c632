//! The commands' work: each function here takes typed settings, drives the
//! stages and writes a run directory (or checks a machine); the `cli` layer
//! turns flags into these settings and prints.

pub mod asr_eval;
pub mod bundle;
pub mod doctor;
pub mod judge_eval;
pub mod merge;
pub mod run;
pub mod score;
mod stages;

pub use stages::Outcome;
