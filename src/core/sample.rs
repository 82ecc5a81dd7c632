//! The data model shared by every pipeline stage: a benchmark sample, its
//! turns and media, and the human reference answers that come with it.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::core::error::{Error, Location, Result};

/// What the benchmark expects a safe model to do with the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expected {
    /// A harmful request: a safe model refuses or answers harmlessly.
    Harmful,
    /// A benign request: a safe model answers it (refusing is over-refusal).
    Benign,
}

impl Expected {
    pub fn parse(s: &str) -> Option<Expected> {
        match s.trim().to_ascii_lowercase().as_str() {
            "harmful" | "unsafe" | "harm" | "malicious" | "1" | "true" | "contrast" => {
                Some(Expected::Harmful)
            }
            "benign" | "safe" | "harmless" | "0" | "false" => Some(Expected::Benign),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Expected::Harmful => "harmful",
            Expected::Benign => "benign",
        }
    }
}

/// A category of a taxonomy (an AssurAI risk factor, a KSAFE-MM category,
/// an XSTest prompt type, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Category {
    /// Taxonomy id: `assurai`, `ksafe-mm`, `xstest`, `multijail`, ...
    pub taxonomy: String,
    /// Code within the taxonomy (`R03`, `Violence`, ...).
    pub code: String,
    pub name: String,
    /// The group or domain the category belongs to ("" when unknown).
    pub group: String,
}

impl Category {
    pub fn label(&self) -> String {
        if self.name.is_empty() || self.name == self.code {
            self.code.clone()
        } else {
            format!("{} {}", self.code, self.name)
        }
    }
}

/// Whether the sample is the plain query or an attack variant derived from one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Variant {
    Plain,
    Attack { strategy: String, base_id: String },
}

impl Variant {
    pub fn strategy(&self) -> &str {
        match self {
            Variant::Plain => "none",
            Variant::Attack { strategy, .. } => strategy,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Image,
    Audio,
    Video,
}

impl MediaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        }
    }
    pub fn parse(s: &str) -> Option<MediaKind> {
        match s.trim().to_ascii_lowercase().as_str() {
            "image" | "img" | "picture" => Some(MediaKind::Image),
            "audio" | "speech" | "sound" => Some(MediaKind::Audio),
            "video" | "movie" => Some(MediaKind::Video),
            _ => None,
        }
    }
    /// Guess the kind and media type from a file extension.
    pub fn from_extension(path: &std::path::Path) -> Option<(MediaKind, &'static str)> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "png" => (MediaKind::Image, "image/png"),
            "jpg" | "jpeg" => (MediaKind::Image, "image/jpeg"),
            "webp" => (MediaKind::Image, "image/webp"),
            "gif" => (MediaKind::Image, "image/gif"),
            "bmp" => (MediaKind::Image, "image/bmp"),
            "wav" => (MediaKind::Audio, "audio/wav"),
            "flac" => (MediaKind::Audio, "audio/flac"),
            "mp3" => (MediaKind::Audio, "audio/mpeg"),
            "ogg" | "oga" => (MediaKind::Audio, "audio/ogg"),
            "m4a" | "aac" => (MediaKind::Audio, "audio/mp4"),
            "mp4" | "m4v" => (MediaKind::Video, "video/mp4"),
            "webm" => (MediaKind::Video, "video/webm"),
            "mkv" => (MediaKind::Video, "video/x-matroska"),
            "avi" => (MediaKind::Video, "video/x-msvideo"),
            "mov" => (MediaKind::Video, "video/quicktime"),
            _ => return None,
        })
    }
}

/// Where a media part's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaSource {
    /// A file, resolved against the data set's folder; read lazily.
    Path(PathBuf),
    /// Bytes embedded in the data set (e.g. a parquet `{bytes, path}` struct).
    Bytes { data: Arc<[u8]>, name: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub kind: MediaKind,
    /// MIME type, e.g. `image/png` (`application/octet-stream` when unknown).
    pub mime: String,
    pub source: MediaSource,
}

impl Media {
    /// Load the bytes (reads the file for path sources).
    pub fn load(&self) -> Result<Arc<[u8]>> {
        match &self.source {
            MediaSource::Path(p) => std::fs::read(p).map(Arc::from).map_err(|e| Error::io(p, e)),
            MediaSource::Bytes { data, .. } => Ok(data.clone()),
        }
    }
    pub fn describe(&self) -> String {
        match &self.source {
            MediaSource::Path(p) => p.display().to_string(),
            MediaSource::Bytes { name, data } => format!("<embedded {} bytes: {name}>", data.len()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Media(Media),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub role: Role,
    pub parts: Vec<Part>,
}

/// XSTest's three response classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalClass {
    Compliance,
    Refusal,
    Partial,
}

impl RefusalClass {
    pub const ALL: [RefusalClass; 3] = [
        RefusalClass::Compliance,
        RefusalClass::Refusal,
        RefusalClass::Partial,
    ];
    pub fn parse(s: &str) -> Option<RefusalClass> {
        match s.trim().to_ascii_lowercase().as_str() {
            "compliance" | "1_full_compliance" | "full_compliance" | "comply" => {
                Some(RefusalClass::Compliance)
            }
            "refusal" | "2_full_refusal" | "full_refusal" | "refuse" => Some(RefusalClass::Refusal),
            "partial" | "3_partial_refusal" | "partial_refusal" => Some(RefusalClass::Partial),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalClass::Compliance => "compliance",
            RefusalClass::Refusal => "refusal",
            RefusalClass::Partial => "partial",
        }
    }
}

impl fmt::Display for RefusalClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Human labels attached to a reference answer. Benchmarks carry different
/// subsets, so each is optional; at least one is present.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HumanLabels {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk_score: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<RefusalClass>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub harmful: Option<bool>,
}

/// A model answer shipped with the benchmark, with human labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceAnswer {
    /// Which model or candidate produced it (`candidate_1`, `gpt4`, ...).
    pub model: String,
    pub text: String,
    pub labels: HumanLabels,
}

/// One benchmark item.
#[derive(Debug, Clone)]
pub struct Sample {
    pub id: String,
    pub benchmark: String,
    /// BCP-47-ish language code (`ko`, `en`).
    pub language: String,
    pub category: Option<Category>,
    pub prompt_type: Option<String>,
    pub variant: Variant,
    pub expected: Expected,
    pub turns: Vec<Turn>,
    pub references: Vec<ReferenceAnswer>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Where the sample was read from.
    pub origin: Location,
}

impl Sample {
    /// The modality of the sample: `text` if no media part, else the kind
    /// of the first media part.
    pub fn modality(&self) -> &'static str {
        self.media()
            .next()
            .map(|m| m.kind.as_str())
            .unwrap_or("text")
    }
    pub fn media(&self) -> impl Iterator<Item = &Media> {
        self.turns
            .iter()
            .flat_map(|t| t.parts.iter())
            .filter_map(|p| match p {
                Part::Media(m) => Some(m),
                Part::Text(_) => None,
            })
    }
    /// All user text joined by newlines.
    pub fn prompt_text(&self) -> String {
        let mut out = Vec::new();
        for t in self.turns.iter().filter(|t| t.role == Role::User) {
            for p in &t.parts {
                if let Part::Text(s) = p {
                    out.push(s.as_str());
                }
            }
        }
        out.join("\n")
    }
    /// A single-turn user sample.
    pub fn user_turn(text: Option<String>, media: Vec<Media>) -> Vec<Turn> {
        let mut parts: Vec<Part> = media.into_iter().map(Part::Media).collect();
        if let Some(t) = text {
            parts.push(Part::Text(t));
        }
        vec![Turn {
            role: Role::User,
            parts,
        }]
    }
    pub fn category_label(&self) -> String {
        self.category
            .as_ref()
            .map(|c| c.label())
            .unwrap_or_else(|| "unknown".into())
    }
    pub fn group_label(&self) -> String {
        match &self.category {
            Some(c) if !c.group.is_empty() => c.group.clone(),
            _ => "unknown".into(),
        }
    }
}
