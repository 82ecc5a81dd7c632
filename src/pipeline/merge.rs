//! `merge`: one run directory from the shard directories of a sharded run,
//! with the report a single machine would have written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::error::{Error, Result};
use crate::report;
use crate::runlog::manifest::Manifest;
use crate::runlog::store::{self, RunDir};
use crate::runlog::{read_json, Failure, GenerationRecord, JudgmentRecord, Plan, Shard};

use super::stages::*;

/// `anjeon merge SHARD_DIR… --out DIR`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MergeSpec {
    /// The shards' --out directories (one per shard of one sharded run).
    pub dirs: Vec<PathBuf>,
    /// The merged run directory (new).
    pub out: PathBuf,
    /// Render the report even if shards are missing; the report lists them.
    pub allow_partial: bool,
}

/// One shard directory being merged.
struct ShardDir {
    dir: PathBuf,
    run: RunDir,
    manifest: Manifest,
    shard: Shard,
    plan: Plan,
    samples: Vec<u8>,
}

/// Merge the run directories of one sharded run into one run directory
/// whose report is the one a single machine would have written: the same
/// items, the same plan order (the data set's), sorted failures and skips.
/// Shards of different runs are refused, naming what differs; an item in
/// two shards or a missing shard (without `--allow-partial`) too.
pub fn merge(args: &MergeSpec) -> Result<Outcome> {
    let mut parts: Vec<ShardDir> = Vec::new();
    store::distinct_dirs(&args.dirs, "shard directory")?;
    for d in &args.dirs {
        if !d.join("plan.json").exists() {
            return Err(Error::Usage(format!(
                "{}: not a finished run directory (no plan.json)\n  fix: let that shard's `anjeon run` finish (run it again with the same --out to resume)",
                d.display()
            )));
        }
        let run = RunDir::open(d)?;
        let manifest = Manifest::read(&run.file("manifest.json"))?;
        let Some(shard) = manifest.shard else {
            return Err(Error::Usage(format!(
                "{}: not a shard (its run had no --shard)\n  fix: merge the directories of one sharded run",
                d.display()
            )));
        };
        let plan: Plan = read_json(&run.file("plan.json"))?;
        let samples = crate::core::error::read_file(&run.file("samples.jsonl"))?;
        parts.push(ShardDir {
            dir: d.clone(),
            run,
            manifest,
            shard,
            plan,
            samples,
        });
    }
    let first = &parts[0];
    // The settings that must be equal: everything but where each shard
    // wrote and which shard it was.
    let config_of = |m: &Manifest| m.config.shared();
    let target_of = |m: &Manifest| {
        m.models
            .iter()
            .map(|t| (t["fingerprint"].clone(), t["generation"].clone()))
            .collect::<Vec<_>>()
    };
    let mut held: std::collections::BTreeMap<u64, &Path> = std::collections::BTreeMap::new();
    for p in &parts {
        let differs = |what: &str| {
            Err(Error::Usage(format!(
                "{} and {}: {what} differs, so they are not shards of one run\n  fix: merge only the shard directories of one `anjeon run` configuration",
                first.dir.display(),
                p.dir.display()
            )))
        };
        if p.shard.count != first.shard.count {
            return differs("the shard count");
        }
        if p.manifest.dataset.sha256 != first.manifest.dataset.sha256 {
            return differs("the data set (sha256)");
        }
        if p.plan.seed != first.plan.seed {
            return differs("the seed");
        }
        if p.plan.judge_fingerprints != first.plan.judge_fingerprints {
            return differs("the judge (fingerprint)");
        }
        if target_of(&p.manifest) != target_of(&first.manifest) {
            return differs("the target model or its generation settings");
        }
        if config_of(&p.manifest) != config_of(&first.manifest) {
            return differs("the run's settings (manifest config)");
        }
        if p.samples != first.samples {
            return differs("the planned items (samples.jsonl)");
        }
        if let Some(other) = held.insert(p.shard.index, &p.dir) {
            return Err(Error::Usage(format!(
                "{} and {} both hold shard {}\n  fix: name each shard's directory once",
                other.display(),
                p.dir.display(),
                p.shard
            )));
        }
    }
    let count = first.shard.count;
    let missing: Vec<u64> = (0..count).filter(|i| !held.contains_key(i)).collect();
    if !missing.is_empty() && !args.allow_partial {
        return Err(Error::Usage(format!(
            "shards {} of {count} are missing\n  fix: run them (or wait for them) and merge all {count}; --allow-partial renders a report without them",
            missing.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
        )));
    }
    if args.out.join("plan.json").exists() {
        return Err(Error::Usage(format!(
            "{}: already holds a run\n  fix: merge into a new --out directory",
            args.out.display()
        )));
    }
    let out = RunDir::open(&args.out)?;
    store::write_atomic(&out.file("samples.jsonl"), &first.samples)?;
    let mut gens_out = out.stage::<GenerationRecord>("generations.jsonl")?;
    let mut judgments_out = out.stage::<JudgmentRecord>("judgments.jsonl")?;
    // Each shard's plan says where each of its generations stands in the
    // whole run's plan: sorting by it gives the single run's order.
    let mut planned: Vec<(u64, String)> = Vec::new();
    let mut owner: HashMap<String, &Path> = HashMap::new();
    let (mut failures, mut skipped) = (Vec::new(), Vec::new());
    for p in &parts {
        let gens = p.run.stage::<GenerationRecord>("generations.jsonl")?;
        let judgments = p.run.stage::<JudgmentRecord>("judgments.jsonl")?;
        for (n, k) in p.plan.generations.iter().enumerate() {
            let g = gens.get(k).ok_or_else(|| {
                Error::Usage(format!(
                    "{}: the plan lists generation {k} but generations.jsonl lacks it\n  fix: run that shard's `anjeon run` again with the same --out",
                    p.dir.display()
                ))
            })?;
            let other = *owner.entry(g.sample_id.clone()).or_insert(&p.dir);
            if other != p.dir.as_path() {
                return Err(Error::Usage(format!(
                    "item {:?} is in both {} and {}\n  fix: merge the shards of one run (each item belongs to one shard)",
                    g.sample_id,
                    other.display(),
                    p.dir.display()
                )));
            }
            let at = p.plan.order.get(n).copied().ok_or_else(|| {
                Error::Usage(format!(
                    "{}: plan.json does not say where its generations stand in the whole run\n  fix: run that shard's `anjeon run` or `anjeon score` again with the same --out",
                    p.dir.display()
                ))
            })?;
            planned.push((at, k.clone()));
            gens_out.append(g.clone())?;
        }
        for j in judgments.records() {
            judgments_out.append(j.clone())?;
        }
        failures.extend(p.plan.failures.iter().cloned());
        skipped.extend(p.plan.skipped.iter().cloned());
    }
    gens_out.sync()?;
    judgments_out.sync()?;
    drop((gens_out, judgments_out));
    for i in &missing {
        failures.push(Failure {
            location: "anjeon merge --allow-partial".into(),
            id: String::new(),
            stage: "merge".into(),
            reason: format!("shard {i}/{count} is missing: its items are not in this report"),
        });
    }
    planned.sort();
    failures.sort();
    failures.dedup();
    skipped.sort();
    skipped.dedup();
    let plan = Plan {
        judge_fingerprints: first.plan.judge_fingerprints.clone(),
        generations: planned.into_iter().map(|(_, k)| k).collect(),
        failures,
        skipped,
        seed: first.plan.seed,
        order: Vec::new(),
    };
    let mut manifest = first.manifest.clone();
    manifest.shard = None;
    manifest.merged_from = parts.iter().map(|p| p.dir.display().to_string()).collect();
    manifest.invocations = parts
        .iter()
        .flat_map(|p| p.manifest.invocations.iter().cloned())
        .collect();
    manifest.push_invocation();
    manifest.write(&out.file("manifest.json"))?;
    store::write_atomic(
        &out.file("plan.json"),
        &serde_json::to_vec_pretty(&plan).expect("serialise plan"),
    )?;
    let rep = report::render(&out)?;
    log::info!(
        "merged {} of {count} shards ({} responses) into {}",
        parts.len(),
        plan.generations.len(),
        out.path.display()
    );
    Ok(Outcome {
        report: rep,
        failures: plan.failures.len(),
        judged: 0,
        reused: plan.generations.len(),
    })
}
