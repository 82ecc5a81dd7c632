//! The records of a run directory: the items as planned (`samples.jsonl`),
//! responses (`generations.jsonl`), judgments (`judgments.jsonl`) and the
//! plan (`plan.json`), with the keys that make them reusable.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::store::{self, Keyed};
use crate::core::sample::{ReferenceAnswer, Sample};
use crate::judge::{Judge, Verdict};

/// The facts about a sample that metrics and reports need, snapshotted into
/// the run directory (`samples.jsonl`) so a run can be re-reported alone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ItemInfo {
    pub id: String,
    pub benchmark: String,
    pub language: String,
    pub risk_factor: String,
    pub group: String,
    pub modality: String,
    pub prompt_type: String,
    pub attack: String,
    pub base_id: String,
    pub expected: crate::core::sample::Expected,
    pub prompt: String,
    pub media: Vec<String>,
    pub references: Vec<ReferenceAnswer>,
}

impl ItemInfo {
    pub fn of(s: &Sample, root: &Path) -> ItemInfo {
        let base_id = match &s.variant {
            crate::core::sample::Variant::Attack { base_id, .. } => base_id.clone(),
            crate::core::sample::Variant::Plain => String::new(),
        };
        ItemInfo {
            id: s.id.clone(),
            benchmark: s.benchmark.clone(),
            language: s.language.clone(),
            risk_factor: s.category_label(),
            group: s.group_label(),
            modality: s.modality().into(),
            prompt_type: s.prompt_type.clone().unwrap_or_else(|| "unknown".into()),
            attack: s.variant.strategy().into(),
            base_id,
            expected: s.expected,
            prompt: s.prompt_text(),
            media: s
                .media()
                .map(|m| match &m.source {
                    crate::core::sample::MediaSource::Path(p) => {
                        p.strip_prefix(root).unwrap_or(p).display().to_string()
                    }
                    crate::core::sample::MediaSource::Bytes { name, data } => {
                        format!("embedded:{name}:{}", store::sha256_hex(data))
                    }
                })
                .collect(),
            references: s.references.clone(),
        }
    }
}

impl Keyed for ItemInfo {
    fn key(&self) -> &str {
        &self.id
    }
}

/// A response to a sample: imported, taken from the references, or generated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerationRecord {
    pub key: String,
    pub sample_id: String,
    pub model: String,
    pub response: String,
    pub response_sha256: String,
    /// `imported:FILE`, `reference`, or `generated:MODEL`.
    pub source: String,
    /// Token counts and timings of a generated response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<GenStats>,
    /// How a spoken prompt reached a text-only target: the speech
    /// recogniser and its transcript (absent for text and direct media).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asr: Option<AsrRoute>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AsrRoute {
    /// `asr:MODEL`.
    pub route: String,
    pub transcript: String,
    /// Language forced (the item's) or detected.
    pub language: String,
    /// sha256 of the audio file(s).
    pub audio_sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenStats {
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub stop: crate::model::StopReason,
    pub prefill_s: f64,
    pub decode_s: f64,
    /// The generated token ids (for audits and re-decoding).
    #[serde(default)]
    pub tokens: Vec<u32>,
}

impl Keyed for GenerationRecord {
    fn key(&self) -> &str {
        &self.key
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JudgmentRecord {
    pub key: String,
    pub sample_id: String,
    pub model: String,
    pub response_sha256: String,
    pub judge: String,
    pub judge_fingerprint: String,
    pub verdict: Verdict,
    /// How a model judge reached the verdict (rubric, label probabilities, delimiter, flags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<crate::judge::model::Detail>,
}

impl JudgmentRecord {
    /// The record of `judge`'s verdict on a stored response.
    pub fn of(
        g: &GenerationRecord,
        judge: &Judge,
        fp: &str,
        key: String,
        j: crate::judge::Judged,
    ) -> JudgmentRecord {
        JudgmentRecord {
            key,
            sample_id: g.sample_id.clone(),
            model: g.model.clone(),
            response_sha256: g.response_sha256.clone(),
            judge: judge.name(),
            judge_fingerprint: fp.to_string(),
            verdict: j.verdict,
            detail: j.detail,
        }
    }
}

impl Keyed for JudgmentRecord {
    fn key(&self) -> &str {
        &self.key
    }
}

/// An item that could not be evaluated, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Failure {
    pub location: String,
    pub id: String,
    pub stage: String,
    pub reason: String,
}

impl Failure {
    /// A failure of one sample at a stage.
    pub fn item(s: &Sample, stage: &str, reason: String) -> Failure {
        Failure {
            location: s.origin.to_string(),
            id: s.id.clone(),
            stage: stage.into(),
            reason,
        }
    }
}

/// What this invocation evaluates: read by `anjeon report DIR`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub judge_fingerprints: Vec<String>,
    pub generations: Vec<String>,
    pub failures: Vec<Failure>,
    /// Items not run, with the reason (e.g. media items for a text-only target).
    #[serde(default)]
    pub skipped: Vec<Failure>,
    pub seed: u64,
    /// A shard's plan: each generation's place in the whole run's plan, so
    /// that `anjeon merge` restores the single run's order. Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub order: Vec<u64>,
}

pub fn judgment_key(judge_fp: &str, sample_id: &str, response_sha: &str) -> String {
    store::key_of(&["judgment", judge_fp, sample_id, response_sha])
}
