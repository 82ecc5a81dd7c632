//! Word and character error rates, and the `anjeon audio eval` set reader.
//!
//! Normalisation (both sides): Unicode NFKC, lower case, every character that
//! is neither alphanumeric (Hangul counts) nor whitespace becomes a space,
//! runs of whitespace collapse to one space, trimmed. WER counts word edits
//! over the reference's words; CER counts character edits over the
//! reference's characters with the spaces removed (Korean spacing varies).
//! Corpus rates are total edits over total reference units.

use std::path::{Path, PathBuf};

use unicode_normalization::UnicodeNormalization;

use crate::core::error::{Error, Location, Result};

pub fn normalize(s: &str) -> String {
    let mapped: String = s
        .nfkc()
        .flat_map(|c| c.to_lowercase())
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() {
                c
            } else {
                ' '
            }
        })
        .collect();
    mapped.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Levenshtein distance between two sequences.
pub fn edit_distance<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, x) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(x != y))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// (word edits, reference words) after normalisation.
pub fn word_errors(reference: &str, hypothesis: &str) -> (usize, usize) {
    let r = normalize(reference);
    let h = normalize(hypothesis);
    let rw: Vec<&str> = r.split_whitespace().collect();
    let hw: Vec<&str> = h.split_whitespace().collect();
    (edit_distance(&rw, &hw), rw.len())
}

/// (character edits, reference characters) after normalisation, spaces removed.
pub fn char_errors(reference: &str, hypothesis: &str) -> (usize, usize) {
    let rc: Vec<char> = normalize(reference).chars().filter(|c| *c != ' ').collect();
    let hc: Vec<char> = normalize(hypothesis)
        .chars()
        .filter(|c| *c != ' ')
        .collect();
    (edit_distance(&rc, &hc), rc.len())
}

/// One reference clip of an evaluation set.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalItem {
    pub id: String,
    pub lang: String,
    pub text: String,
    pub audio: PathBuf,
}

/// Read a tab-separated `id, lang, text` file (a `#` line is a comment);
/// the audio of item `id` is `AUDIO_DIR/id.wav`.
pub fn read_set(refs: &Path, audio_dir: &Path) -> Result<Vec<EvalItem>> {
    let text = std::fs::read_to_string(refs).map_err(|e| Error::io(refs, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() != 3 {
            return Err(Error::input(
                Location::line(refs, i + 1),
                format!("{} columns, want 3 (id, lang, text)", cols.len()),
                "separate the columns with one tab",
            ));
        }
        out.push(EvalItem {
            id: cols[0].to_string(),
            lang: cols[1].to_string(),
            text: cols[2].to_string(),
            audio: audio_dir.join(format!("{}.wav", cols[0])),
        });
    }
    Ok(out)
}

/// One item's result in an evaluation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalRow {
    pub id: String,
    pub lang: String,
    pub reference: String,
    pub hypothesis: String,
    pub detected_language: String,
    /// Word edits / reference words (English) or character edits / characters.
    pub errors: usize,
    pub units: usize,
    pub audio_s: f64,
    pub elapsed_s: f64,
}

/// Corpus rates per language: WER for languages written with spaces between
/// words (here everything but ko, ja, zh), CER for ko, ja and zh.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalSummary {
    pub lang: String,
    /// `wer` or `cer`.
    pub metric: String,
    pub rate: f64,
    pub items: usize,
    pub language_detected_right: usize,
    /// Processing seconds / audio seconds.
    pub real_time_factor: f64,
}

pub fn uses_cer(lang: &str) -> bool {
    matches!(lang, "ko" | "ja" | "zh")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_and_rates() {
        assert_eq!(normalize("Hello, World!  It's"), "hello world it s");
        assert_eq!(normalize("안녕하세요. 오늘"), "안녕하세요 오늘");
        assert_eq!(word_errors("The cat sat.", "the cat sat"), (0, 3));
        assert_eq!(word_errors("the cat sat", "a cat sat down"), (2, 3));
        assert_eq!(char_errors("오늘 날씨", "오늘날시"), (1, 4));
        assert_eq!(edit_distance::<u8>(&[], &[1, 2]), 2);
    }
}
