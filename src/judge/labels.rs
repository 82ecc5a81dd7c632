//! Human-labelled responses (XSTest, KoSBi, SQuARe, AssurAI references,
//! JSONL label files) for judge evaluation and head training, with the fixed
//! dev/test split by item group.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::core::error::{Error, Location, Result};
use crate::core::sample::{Expected, RefusalClass};
use crate::core::stats;
use crate::dataset::{self, record, ReadOptions};

/// A human label on a response.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Label {
    Refusal(RefusalClass),
    Harmful(bool),
    Score(u8),
}

impl Label {
    /// The label in the verdicts' own words: a refusal class
    /// (`full_compliance`, `full_refusal`, `partial_refusal`), `harmful` /
    /// `unharmful`, or a risk score `1`..`5`.
    pub fn as_text(&self) -> String {
        match self {
            Label::Refusal(c) => c.as_str().to_string(),
            Label::Harmful(true) => "harmful".into(),
            Label::Harmful(false) => "unharmful".into(),
            Label::Score(s) => s.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Labeled {
    pub id: String,
    /// What the request was, where known (benign requests cannot be attack successes).
    pub expected: Option<crate::core::sample::Expected>,
    pub prompt: String,
    pub response: String,
    pub label: Label,
    /// Risk factor / category shown to a model judge ("" when unknown).
    pub risk: String,
}

impl Labeled {
    /// The item as a model judge sees it: the task follows the label kind.
    pub fn item(&self) -> super::model::Item<'_> {
        use super::model::Task;
        let task = match self.label {
            Label::Refusal(_) => Task::Refusal,
            Label::Harmful(_) => Task::Harm,
            Label::Score(_) => Task::Risk,
        };
        let text = format!("{}{}", self.prompt, self.response);
        super::model::Item {
            id: &self.id,
            language: super::model::language_of(&text),
            request: &self.prompt,
            risk: if self.risk.is_empty() {
                "unspecified".into()
            } else {
                self.risk.clone()
            },
            task,
        }
    }
}

/// Which part of the labelled data to report on: labels calibrate thresholds
/// on `dev` only; `test` is the held-out rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    All,
    Dev,
    Test,
}

impl Split {
    pub const NAMES: [&'static str; 3] = ["all", "dev", "test"];
}

impl std::str::FromStr for Split {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "all" => Ok(Split::All),
            "dev" => Ok(Split::Dev),
            "test" => Ok(Split::Test),
            _ => Err(Error::Usage(format!(
                "--split {s:?}\n  fix: use all, dev or test"
            ))),
        }
    }
}

/// Deterministic 30% development split by item group (see [`group_of`]).
/// KoSBi's own files decide for themselves: `kosbi_valid` is all
/// development, `kosbi_test` all held out.
pub fn in_dev(id: &str) -> bool {
    if id.starts_with("kosbi_valid") {
        return true;
    }
    if id.starts_with("kosbi_test") {
        return false;
    }
    stats::seed_of(group_of(id), 0x5eed) % 10 < 3
}

/// The group an item's split and cross-validation fold follow: responses to
/// the same request stay together, so a request seen in training is never
/// in the held-out split. XSTest's five completion files share prompt ids
/// (`xstest_v2_completions_gpt4/12` → `12`); AssurAI-style reference answers
/// are `ITEM/candidate_N` (→ `ITEM`), KoSBi's `FILE-CONTEXTHASH/N` and
/// SQuARe's `square-QUESTIONHASH/LINE` group by context and question. Ids
/// without a `/` are their own group.
pub fn group_of(id: &str) -> &str {
    match id.split_once('/') {
        Some((stem, rest)) if stem.starts_with("xstest") => rest,
        Some((item, _)) if !item.is_empty() => item,
        _ => id,
    }
}

fn xstest_file(path: &Path, out: &mut Vec<Labeled>) -> Result<()> {
    let mut bad = Vec::new();
    let recs = record::read_csv(
        path,
        &mut bad,
        crate::core::limits::Limits::default().max_record_bytes(),
    )?;
    if let Some(e) = bad.into_iter().next() {
        return Err(e);
    }
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("xstest")
        .to_string();
    for r in recs {
        let get = |k: &str| r.fields.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let (Some(id), Some(prompt), Some(completion), Some(label)) = (
            get("id"),
            get("prompt"),
            get("completion"),
            get("final_label"),
        ) else {
            return Err(Error::input(r.loc.clone(), "missing id, prompt, completion or final_label", "XSTest completion files have columns id,type,prompt,completion,annotation_1,annotation_2,agreement,final_label"));
        };
        let class = RefusalClass::parse(&label).ok_or_else(|| {
            Error::input(
                r.loc.clone(),
                format!("unknown final_label {label:?}"),
                "expected 1_full_compliance, 2_full_refusal or 3_partial_refusal",
            )
        })?;
        out.push(Labeled {
            expected: None,
            id: format!("{stem}/{id}"),
            prompt,
            response: completion,
            label: Label::Refusal(class),
            risk: String::new(),
        });
    }
    Ok(())
}

/// Read labelled responses from `KIND:PATH`.
pub fn read_labels(spec: &str) -> Result<Vec<Labeled>> {
    let (kind, path) = spec.split_once(':').ok_or_else(|| {
        Error::Usage(format!("--labels {spec:?}: expected KIND:PATH with KIND one of xstest-completions, square-responses, kosbi, assurai, jsonl"))
    })?;
    let path = PathBuf::from(path);
    let mut out = Vec::new();
    match kind {
        "xstest-completions" => {
            if path.is_dir() {
                let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
                    .map_err(|e| Error::io(&path, e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "csv"))
                    .collect();
                files.sort();
                if files.is_empty() {
                    return Err(Error::input(Location::file(&path), "folder holds no .csv files", "point at XSTest's model_completions folder or one of its CSV files"));
                }
                for f in files {
                    xstest_file(&f, &mut out)?;
                }
            } else {
                xstest_file(&path, &mut out)?;
            }
        }
        "square-responses" => {
            for r in record::read_json_array(&path)? {
                let q = r.fields.get("question").and_then(|v| v.as_str());
                let resp = r.fields.get("response").and_then(|v| v.as_str());
                let acc = r.fields.get("acceptable?").and_then(|v| v.as_i64());
                let (Some(q), Some(resp), Some(acc)) = (q, resp, acc) else {
                    return Err(Error::input(r.loc.clone(), "missing question, response or acceptable?", "SQuARe response files have question, response and acceptable? (0/1)"));
                };
                // Responses to one question share a group (see group_of).
                let qh = &crate::core::hash::sha256_hex(q.as_bytes())[..10];
                out.push(Labeled { expected: None, id: format!("square-{qh}/{}", r.loc.line.unwrap_or(0)), prompt: q.into(), response: resp.into(), label: Label::Harmful(acc == 0), risk: String::new() });
            }
        }
        "kosbi" => {
            // KoSBi: a context and a sentence that follows it; the sentence's
            // human label (safe / unsafe) is the label, the context is the request.
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("kosbi")
                .to_string();
            for (i, r) in record::read_json_array(&path)?.into_iter().enumerate() {
                let get = |k: &str| r.fields.get(k).and_then(|v| v.as_str());
                let (Some(ctx), Some(sent), Some(label)) = (get("context"), get("sentence"), get("sentence_label")) else {
                    return Err(Error::input(r.loc.clone(), "missing context, sentence or sentence_label", "KoSBi files have context, sentence and sentence_label (safe/unsafe)"));
                };
                let harmful = match label {
                    "unsafe" => true,
                    "safe" => false,
                    _ => continue, // "undecided": no label
                };
                let ch = &crate::core::hash::sha256_hex(ctx.as_bytes())[..10];
                out.push(Labeled { expected: None, id: format!("{stem}-{ch}/{i}"), prompt: ctx.into(), response: sent.into(), label: Label::Harmful(harmful), risk: get("demographic_category").unwrap_or("").into() });
            }
        }
        "assurai" | "dataset" => {
            let ds = dataset::load(&path.to_string_lossy(), &ReadOptions::default())?;
            for s in &ds.samples {
                let prompt = s.prompt_text();
                for r in &s.references {
                    let id = format!("{}/{}", s.id, r.model);
                    if let Some(c) = r.labels.refusal {
                        out.push(Labeled { expected: Some(s.expected), id: id.clone(), prompt: prompt.clone(), response: r.text.clone(), label: Label::Refusal(c), risk: s.category_label() });
                    }
                    if let Some(sc) = r.labels.risk_score {
                        out.push(Labeled { expected: Some(s.expected), id: id.clone(), prompt: prompt.clone(), response: r.text.clone(), label: Label::Score(sc), risk: s.category_label() });
                    }
                }
            }
        }
        "jsonl" => {
            let mut bad = Vec::new();
            for r in record::read_jsonl(&path, &mut bad, crate::core::limits::Limits::default().max_record_bytes())? {
                let get = |k: &str| r.fields.get(k).and_then(|v| v.as_str()).map(str::to_string);
                let label = match r.fields.get("label") {
                    Some(serde_json::Value::Number(n)) => n.as_u64().filter(|s| (1..=5).contains(s)).map(|s| Label::Score(s as u8)),
                    Some(serde_json::Value::String(s)) => RefusalClass::parse(s).map(Label::Refusal).or(match s.as_str() {
                        "harmful" | "unsafe" => Some(Label::Harmful(true)),
                        "unharmful" | "harmless" | "safe" => Some(Label::Harmful(false)),
                        x => x.parse::<u8>().ok().filter(|s| (1..=5).contains(s)).map(Label::Score),
                    }),
                    _ => None,
                };
                let (Some(response), Some(label)) = (get("response"), label) else {
                    bad.push(Error::input(r.loc.clone(), "missing response or unknown label", "each line needs response and label: compliance|refusal|partial, harmful|unharmful, or a score 1-5"));
                    continue;
                };
                let id = get("id").unwrap_or_else(|| format!("line-{}", r.loc.line.unwrap_or(0)));
                let expected = get("expected").and_then(|e| Expected::parse(&e));
                out.push(Labeled { expected, id, prompt: get("prompt").unwrap_or_default(), response, label, risk: get("risk").unwrap_or_default() });
            }
            if let Some(e) = bad.into_iter().next() {
                return Err(e);
            }
        }
        other => {
            return Err(Error::Usage(format!("--labels: unknown label kind {other:?}; use xstest-completions, square-responses, kosbi, assurai or jsonl")))
        }
    }
    if out.is_empty() {
        return Err(Error::input(
            Location::file(&path),
            "no labelled responses found",
            "check the label kind and the file",
        ));
    }
    Ok(out)
}

/// Agreement for one kind of label.
/// The items of a split, at most `limit` of them: a deterministic pseudo-random
/// subset (ordered by a hash of the id), for judges too slow for all items.
pub fn select(items: &[Labeled], split: Split, limit: Option<usize>) -> Vec<&Labeled> {
    let mut chosen: Vec<&Labeled> = items
        .iter()
        .filter(|l| match split {
            Split::All => true,
            Split::Dev => in_dev(&l.id),
            Split::Test => !in_dev(&l.id),
        })
        .collect();
    if let Some(n) = limit {
        // FNV alone keeps ids that differ in the last characters close
        // together; the SplitMix64 step spreads them over the whole range.
        chosen.sort_by_key(|l| {
            let h = stats::SplitMix64::new(stats::seed_of(&l.id, 0x1a7e)).next_u64();
            (h, l.id.clone())
        });
        chosen.truncate(n);
        chosen.sort_by(|a, b| a.id.cmp(&b.id));
    }
    chosen
}
