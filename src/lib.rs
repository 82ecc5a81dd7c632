//! anjeon (안전): offline AI-safety benchmarks for Korean, multimodal
//! generative AI. Pipeline: dataset → (attack variants) → media → target
//! model → judge → metrics → report; every stage writes to a run directory.
//!
//! Modules are layers; each imports only from the layers above it in this
//! list (docs/architecture.md has the picture):
//! - [`core`]: items, taxonomy, errors, hashing, seeded randomness, statistics;
//! - stages: [`media`] and [`audio`] decoding, [`dataset`] readers,
//!   [`attack`] variants, the [`model`] engine, the [`judge`];
//! - [`runlog`]: the run directory's typed format (manifest, records, plan);
//! - [`metrics`]: what the records mean (ASR, over-refusal, uplift, agreement);
//! - [`report`]: renders metrics (JSON, Markdown, CSV, HTML);
//! - [`pipeline`]: the commands' work (run, score, merge, judge-eval, bundle, doctor).
//!
//! The `anjeon` binary's `cli` layer parses flags and prints.

pub mod core;

pub mod attack;
pub mod audio;
pub mod dataset;
pub mod judge;
pub mod media;
pub mod model;

pub mod runlog;

pub mod metrics;

pub mod report;

pub mod pipeline;

pub use crate::core::error::{Error, Result};
