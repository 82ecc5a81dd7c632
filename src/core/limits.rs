//! Resource limits, set in one place. Every limit has a default, a flag
//! that overrides it (the same name with dashes: `max_pixels` is
//! `--max-pixels`), and is recorded in the run's manifest
//! (`config.limits`). A limit an item hits is that item's failure, naming
//! the limit's flag; the other items go on.

use serde::{Deserialize, Serialize};

/// The limits of one run. The defaults are generous for real benchmarks and
/// small enough that a hostile file cannot exhaust a 16 GB machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Largest image or video frame in pixels, read from the header before
    /// anything is allocated (`--max-pixels`; default 50 MP).
    pub max_pixels: u64,
    /// Largest allocation an image decoder may make, in bytes (1 GiB).
    pub max_alloc: u64,
    /// Most frames kept from one video (`--max-frames`; default 2048).
    pub max_frames: usize,
    /// Most bytes of RGB frames kept from one video (`--max-video-mb`; 2 GiB).
    pub max_video_bytes: u64,
    /// Longest audio input in seconds (`--max-audio-seconds`; 10 minutes).
    pub max_audio_seconds: f64,
    /// Most MiB one parquet column chunk may decompress to, checked from its
    /// footer before it is read (`--max-decompressed-mb`; 4096).
    pub max_decompressed_mb: u64,
    /// Largest context a model may declare, in tokens (`--max-context`; 2^24):
    /// its rotary tables and caches are sized from it.
    pub max_context: u64,
    /// Largest record of a data or responses file, in MiB: a JSONL line, a
    /// CSV row (`--max-record-mb`; 64). A longer one is that line's error
    /// and is not kept in memory; the other lines are read.
    pub max_record_mb: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pixels: 50_000_000,
            max_alloc: 1 << 30,
            max_frames: 2048,
            max_video_bytes: 2 << 30,
            max_audio_seconds: 600.0,
            max_decompressed_mb: 4096,
            max_context: 1 << 24,
            max_record_mb: 64,
        }
    }
}

impl Limits {
    /// [`Limits::max_record_mb`] in bytes.
    pub fn max_record_bytes(&self) -> usize {
        usize::try_from(self.max_record_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
    }
    /// The flag that raises a limit, by the limit's field name.
    pub fn flag(field: &str) -> &'static str {
        match field {
            "max_pixels" => "--max-pixels",
            "max_frames" => "--max-frames",
            "max_video_bytes" => "--max-video-mb",
            "max_audio_seconds" => "--max-audio-seconds",
            "max_decompressed_mb" => "--max-decompressed-mb",
            "max_context" => "--max-context",
            "max_record_mb" => "--max-record-mb",
            _ => "(no flag; a fixed safety limit)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_but_the_allocator_has_a_flag_and_manifests_without_limits_read_as_defaults() {
        let v = serde_json::to_value(Limits::default()).unwrap();
        for k in v.as_object().unwrap().keys() {
            assert_eq!(Limits::flag(k).starts_with("--"), k != "max_alloc", "{k}");
        }
        let old: Limits = serde_json::from_str("{}").unwrap();
        assert_eq!(old, Limits::default());
        let some: Limits = serde_json::from_str(r#"{"max_pixels": 10}"#).unwrap();
        assert_eq!((some.max_pixels, some.max_frames), (10, 2048));
    }
}
