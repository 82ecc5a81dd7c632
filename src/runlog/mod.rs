//! The run directory's format, owned in one place: the typed, versioned
//! [`manifest`], the [`records`] and plan, the append-only [`store`] and the
//! [`shard`] a directory holds. Writers (the pipeline) and readers (report,
//! `score --from`, `merge`) use these types; nothing else parses these
//! files. The format is documented in docs/run-directory.md.

pub mod manifest;
pub mod records;
pub mod shard;
pub mod store;

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

use crate::core::error::{Error, Result};
pub use manifest::Manifest;
pub use records::{
    judgment_key, AsrRoute, Failure, GenStats, GenerationRecord, ItemInfo, JudgmentRecord, Plan,
};
pub use shard::Shard;
pub use store::{RunDir, Stage};

/// Read a JSON file of the store (a parse error names the file).
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = crate::core::error::read_file(path)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Store {
        path: path.to_path_buf(),
        line: 1,
        msg: e.to_string(),
    })
}

/// Read `plan.json`.
pub fn read_plan(run: &RunDir) -> Result<Plan> {
    read_json(&run.file("plan.json"))
}

/// The stage of a failure that is a record `report` could not use (a torn
/// or edited run directory): such a report exits 1, not 0.
pub const UNUSABLE: &str = "report";

/// The planned records of one run directory, as `report` and `merge` read them.
pub struct Loaded {
    pub dir: std::path::PathBuf,
    pub plan: Plan,
    pub manifest: Manifest,
    pub items: Vec<ItemInfo>,
    /// The plan's generations that have every record they need, in plan order.
    pub gens: Vec<GenerationRecord>,
    pub judgments: Vec<JudgmentRecord>,
}

pub fn load_run(dir: &Path) -> Result<Loaded> {
    if !dir.join("plan.json").exists() {
        return Err(Error::Usage(format!("{}: not a run directory (no plan.json)\n  fix: point at the --out folder of `anjeon score` or `anjeon run`", dir.display())));
    }
    load_records(&RunDir::open(dir)?)
}

/// The planned records of a locked run directory.
pub fn load_records(run: &RunDir) -> Result<Loaded> {
    let plan: Plan = read_json(&run.file("plan.json"))?;
    let manifest = Manifest::read(&run.file("manifest.json"))?;
    let items_path = run.file("samples.jsonl");
    let text = std::fs::read_to_string(&items_path).map_err(|e| Error::io(&items_path, e))?;
    let items: Vec<ItemInfo> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Store {
                path: items_path.clone(),
                line: i + 1,
                msg: e.to_string(),
            })
        })
        .collect::<Result<_>>()?;
    let gens: Stage<GenerationRecord> = run.stage("generations.jsonl")?;
    let judgments: Stage<JudgmentRecord> = run.stage("judgments.jsonl")?;
    let mut plan = plan;
    let mut planned: Vec<GenerationRecord> = Vec::with_capacity(plan.generations.len());
    let mut unusable = Vec::new();
    let known: HashSet<&str> = items.iter().map(|i| i.id.as_str()).collect();
    let fp = plan.judge_fingerprints.first().cloned().unwrap_or_default();
    let fix = "run the same `anjeon run` or `anjeon score` command with this --out again: it recomputes what is missing";
    for k in &plan.generations {
        let Some(g) = gens.get(k) else {
            unusable.push(Failure {
                location: run.file("generations.jsonl").display().to_string(),
                id: k.clone(),
                stage: UNUSABLE.into(),
                reason: format!("the plan lists generation {k} but generations.jsonl has no such record (torn or edited run directory; fix: {fix})"),
            });
            continue;
        };
        if !known.contains(g.sample_id.as_str()) {
            unusable.push(Failure {
                location: items_path.display().to_string(),
                id: g.sample_id.clone(),
                stage: UNUSABLE.into(),
                reason: format!(
                    "generation {k} is for item {:?}, which samples.jsonl lacks (fix: {fix})",
                    g.sample_id
                ),
            });
            continue;
        }
        if !fp.is_empty()
            && judgments
                .get(&judgment_key(&fp, &g.sample_id, &g.response_sha256))
                .is_none()
        {
            unusable.push(Failure {
                location: run.file("judgments.jsonl").display().to_string(),
                id: g.sample_id.clone(),
                stage: UNUSABLE.into(),
                reason: format!("generation {k} has no judgment by the run's judge (fix: {fix})"),
            });
            continue;
        }
        planned.push(g.clone());
    }
    plan.failures.extend(unusable);
    Ok(Loaded {
        dir: run.path.clone(),
        plan,
        manifest,
        items,
        gens: planned,
        judgments: judgments.records().to_vec(),
    })
}
