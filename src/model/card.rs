//! Model cards (`models/*.toml`): what a supported model is, where its files
//! come from, their hashes, its chat template source and generation defaults.

use serde::{Deserialize, Serialize};

use crate::core::error::{Error, Result};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Card {
    pub name: String,
    pub architecture: String,
    pub format: String,
    pub license: String,
    pub modalities: Vec<String>,
    /// `gguf` (the GGUF's `tokenizer.chat_template`), `tokenizer_config`, or `plain`.
    pub chat_template: String,
    /// `gguf` or `tokenizer.json`.
    pub tokenizer: String,
    /// The model file in the cache folder `models/<name>/`.
    pub file: String,
    pub sha256: String,
    /// Registry packages whose members, concatenated in order, make the file.
    pub parts: Vec<Part>,
    #[serde(default)]
    pub generation: GenerationDefaults,
    /// Further files taken whole from the parts' wheels (a config, a
    /// tokenizer), cached beside the model file and verified by sha256.
    #[serde(default)]
    pub extra: Vec<ExtraFile>,
    /// When the concatenated parts are an archive: the file above (`file`,
    /// `sha256`) and further files are unpacked from it.
    #[serde(default)]
    pub archive: Option<Archive>,
}

/// An archive that the parts assemble into (EmbeddingGemma's zip).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Archive {
    /// `zip` (the only kind).
    pub kind: String,
    /// sha256 of the assembled archive.
    pub sha256: String,
    /// The archive member that becomes the card's `file`.
    pub main: String,
    /// Further members, each cached under `file` and checked by sha256.
    pub unpack: Vec<Unpacked>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Unpacked {
    pub member: String,
    /// Path in the cache folder (may hold one folder level, as `2_Dense/config.json`).
    pub file: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExtraFile {
    /// File name in the cache folder.
    pub file: String,
    /// One of the card's part packages (the wheel it is in).
    pub package: String,
    pub member: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Part {
    pub package: String,
    pub version: String,
    pub member: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GenerationDefaults {
    #[serde(default = "default_max_new")]
    pub max_new_tokens: usize,
    #[serde(default)]
    pub temperature: f64,
    #[serde(default = "one")]
    pub repeat_penalty: f32,
}

fn default_max_new() -> usize {
    256
}
fn one() -> f32 {
    1.0
}

impl Default for GenerationDefaults {
    fn default() -> Self {
        GenerationDefaults {
            max_new_tokens: default_max_new(),
            temperature: 0.0,
            repeat_penalty: 1.0,
        }
    }
}

/// The cards compiled into the binary.
pub const BUNDLED: &[(&str, &str)] = &[
    (
        "smollm2-135m-instruct",
        include_str!("../../models/smollm2-135m-instruct.toml"),
    ),
    (
        "qwen2.5-coder-0.5b-instruct",
        include_str!("../../models/qwen2.5-coder-0.5b-instruct.toml"),
    ),
    (
        "qwen2.5-coder-1.5b-instruct",
        include_str!("../../models/qwen2.5-coder-1.5b-instruct.toml"),
    ),
    (
        "gemma-3-270m",
        include_str!("../../models/gemma-3-270m.toml"),
    ),
    (
        "whisper-base",
        include_str!("../../models/whisper-base.toml"),
    ),
    (
        "embeddinggemma-300m",
        include_str!("../../models/embeddinggemma-300m.toml"),
    ),
];

pub fn all() -> Vec<Card> {
    BUNDLED
        .iter()
        .map(|(n, t)| toml::from_str(t).unwrap_or_else(|e| panic!("bundled card {n} parses: {e}")))
        .collect()
}

pub fn find(name: &str) -> Option<Card> {
    all().into_iter().find(|c| c.name == name)
}

pub fn names() -> Vec<String> {
    BUNDLED.iter().map(|(n, _)| n.to_string()).collect()
}

/// Parse a card file given by the user.
pub fn from_file(path: &std::path::Path) -> Result<Card> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    toml::from_str(&text).map_err(|e| {
        Error::input(
            crate::core::error::Location::file(path),
            format!("bad model card: {e}"),
            "see models/*.toml for the layout",
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn bundled_cards_parse_and_match_their_names() {
        for (name, _) in super::BUNDLED {
            let c = super::find(name).unwrap();
            assert_eq!(&c.name, name);
            assert_eq!(c.sha256.len(), 64);
            assert!(!c.parts.is_empty());
            if let Some(a) = &c.archive {
                assert_eq!(a.kind, "zip");
                assert_eq!(a.sha256.len(), 64);
                assert!(a.unpack.iter().all(|u| u.sha256.len() == 64
                    && !u.file.contains("..")
                    && !u.file.starts_with('/')));
            }
        }
    }
}
