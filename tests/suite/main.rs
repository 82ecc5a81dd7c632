//! The integration tests: one binary (one link of candle, FFmpeg and
//! parquet) with a module per area. Tests that run the real binary use
//! `common::bin`/`common::anjeon`; tests that need a bundled model read it
//! from the cache through `common::model_file` (see `.ci/run`).

mod common;

mod architecture;
mod attacks;
mod audio;
mod cli;
mod dataset;
mod embedding;
mod fuzz_regressions;
mod gemma4;
mod guard;
mod heads;
mod hub;
mod judge;
mod media;
mod metrics;
mod models;
mod report;
mod tekken;
mod vision;
mod voxtral;
mod whisper;
