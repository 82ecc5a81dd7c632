//! Runs: the stages that fill a run directory. `score` takes responses that
//! already exist (a JSONL file, or the data set's own reference answers) and
//! judges them; generation with a model plugs in before the judge stage.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset;
use crate::error::{Error, Location, Result};
use crate::judge::{Judge, Verdict};
use crate::report;
use crate::sample::{ReferenceAnswer, Sample};
use crate::store::{self, Keyed, RunDir};

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct ScoreArgs {
    /// Data set: FORMAT:PATH or PATH (default: the bundled sample).
    #[arg(long, default_value = "data/sample")]
    pub dataset: String,
    /// JSONL of {"id", "response"[, "model"]}, or `reference` to score the
    /// data set's own human-labelled reference answers.
    #[arg(long)]
    pub responses: String,
    /// Model name for responses that do not name one.
    #[arg(long, default_value = "responses")]
    pub model: String,
    #[arg(long, default_value = "refusal")]
    pub judge: String,
    /// Run directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed for bootstrap intervals.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub read: dataset::ReadArgs,
    /// Stop after N responses (for a quick look).
    #[arg(long)]
    pub limit: Option<usize>,
}

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
    pub expected: crate::sample::Expected,
    pub prompt: String,
    pub media: Vec<String>,
    pub references: Vec<ReferenceAnswer>,
}

impl ItemInfo {
    pub fn of(s: &Sample, root: &Path) -> ItemInfo {
        let base_id = match &s.variant {
            crate::sample::Variant::Attack { base_id, .. } => base_id.clone(),
            crate::sample::Variant::Plain => String::new(),
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
                    crate::sample::MediaSource::Path(p) => {
                        p.strip_prefix(root).unwrap_or(p).display().to_string()
                    }
                    crate::sample::MediaSource::Bytes { name, data } => {
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
    /// `imported:FILE`, `reference`, or `generated`.
    pub source: String,
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

/// What this invocation evaluates: read by `anjeon report DIR`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub judge_fingerprints: Vec<String>,
    pub generations: Vec<String>,
    pub failures: Vec<Failure>,
    pub seed: u64,
}

pub fn judgment_key(judge_fp: &str, sample_id: &str, response_sha: &str) -> String {
    store::key_of(&["judgment", judge_fp, sample_id, response_sha])
}

pub struct Outcome {
    pub failures: usize,
    pub judged: usize,
    pub reused: usize,
}

struct Response {
    sample_id: String,
    model: String,
    text: String,
    source: String,
}

fn read_responses(
    args: &ScoreArgs,
    samples: &HashMap<&str, &Sample>,
    failures: &mut Vec<Failure>,
) -> Result<Vec<Response>> {
    let path = Path::new(&args.responses);
    let mut bad = Vec::new();
    let recs = crate::dataset::record::read_jsonl(path, &mut bad)?;
    for e in bad {
        let (location, reason) = match &e {
            Error::Input { loc, msg, fix } => (loc.to_string(), format!("{msg} (fix: {fix})")),
            other => (String::new(), other.to_string()),
        };
        failures.push(Failure {
            location,
            id: String::new(),
            stage: "responses".into(),
            reason,
        });
    }
    let source = format!("imported:{}", path.display());
    let mut out = Vec::new();
    for r in recs {
        let id = r.fields.get("id").and_then(|v| {
            v.as_str()
                .map(str::to_string)
                .or_else(|| v.as_i64().map(|n| n.to_string()))
        });
        let text = r.fields.get("response").and_then(|v| v.as_str());
        let (Some(id), Some(text)) = (id, text) else {
            failures.push(Failure { location: r.loc.to_string(), id: String::new(), stage: "responses".into(), reason: "line needs \"id\" and \"response\" (fix: write {\"id\": ..., \"response\": ...})".into() });
            continue;
        };
        if !samples.contains_key(id.as_str()) {
            failures.push(Failure { location: r.loc.to_string(), id: id.clone(), stage: "responses".into(), reason: format!("id {id:?} is not in the data set (fix: use the data set's ids; see `anjeon data stats`)") });
            continue;
        }
        let model = r
            .fields
            .get("model")
            .and_then(|v| v.as_str())
            .unwrap_or(&args.model)
            .to_string();
        out.push(Response {
            sample_id: id,
            model,
            text: text.to_string(),
            source: source.clone(),
        });
    }
    Ok(out)
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    schema: String,
    anjeon_version: String,
    git_revision: String,
    created_at: String,
    invocations: Vec<Invocation>,
    dataset: DatasetInfo,
    responses: ResponsesInfo,
    judges: Vec<JudgeInfo>,
    config: serde_json::Value,
    seed: u64,
}
#[derive(Serialize, Deserialize)]
struct Invocation {
    at: String,
    argv: Vec<String>,
}
#[derive(Serialize, Deserialize, PartialEq)]
struct DatasetInfo {
    spec: String,
    sha256: String,
    files: Vec<FileInfo>,
    samples: usize,
}
#[derive(Serialize, Deserialize, PartialEq)]
struct FileInfo {
    path: String,
    sha256: String,
}
#[derive(Serialize, Deserialize)]
struct ResponsesInfo {
    source: String,
    sha256: Option<String>,
    models: Vec<String>,
}
#[derive(Serialize, Deserialize, PartialEq)]
struct JudgeInfo {
    name: String,
    fingerprint: String,
    /// Hash of the judge's rules or prompt (refusal patterns for the detector).
    prompt_sha256: String,
}

fn file_info(p: &Path) -> Result<FileInfo> {
    Ok(FileInfo {
        path: p.display().to_string(),
        sha256: store::sha256_hex(&crate::error::read_file(p)?),
    })
}

pub fn score(args: &ScoreArgs) -> Result<Outcome> {
    let opts = args.read.options()?;
    let judge = Judge::from_arg(&args.judge)?;
    let ds = dataset::load(&args.dataset, &opts)?;
    let mut failures: Vec<Failure> = ds
        .problems
        .iter()
        .map(|p| Failure {
            location: p.location.clone(),
            id: String::new(),
            stage: "dataset".into(),
            reason: p.message.clone(),
        })
        .collect();
    let root = ds.root.canonicalize().unwrap_or_else(|_| ds.root.clone());
    let by_id: HashMap<&str, &Sample> = ds.samples.iter().map(|s| (s.id.as_str(), s)).collect();

    let mut responses = if args.responses == "reference" {
        ds.samples
            .iter()
            .flat_map(|s| {
                s.references.iter().map(move |r| Response {
                    sample_id: s.id.clone(),
                    model: r.model.clone(),
                    text: r.text.clone(),
                    source: "reference".into(),
                })
            })
            .collect::<Vec<_>>()
    } else {
        read_responses(args, &by_id, &mut failures)?
    };
    if responses.is_empty() && failures.is_empty() {
        return Err(Error::input(
            Location::file(&args.responses),
            "no responses to score",
            "give a JSONL file of {\"id\", \"response\"} or `reference`",
        ));
    }
    if let Some(n) = args.limit {
        responses.truncate(n);
    }
    // Items whose media are broken are failures; the others go on.
    let mut media_bad: HashMap<String, String> = HashMap::new();
    for s in &ds.samples {
        if let Some(m) = dataset::media_problem(s, &root) {
            failures.push(Failure {
                location: s.origin.to_string(),
                id: s.id.clone(),
                stage: "media".into(),
                reason: m.clone(),
            });
            media_bad.insert(s.id.clone(), m);
        }
    }
    responses.retain(|r| !media_bad.contains_key(&r.sample_id));

    let run = RunDir::open(&args.out)?;
    write_manifest(&run, args, &opts, &ds, &judge, &responses)?;

    // Snapshot of the items (deterministic: data set order).
    let mut snap = Vec::new();
    for s in &ds.samples {
        serde_json::to_writer(&mut snap, &ItemInfo::of(s, &root)).expect("serialise item");
        snap.push(b'\n');
    }
    store::write_atomic(&run.file("samples.jsonl"), &snap)?;

    let mut gens = run.stage::<GenerationRecord>("generations.jsonl")?;
    let mut judgments = run.stage::<JudgmentRecord>("judgments.jsonl")?;
    if gens.repaired_torn_tail || judgments.repaired_torn_tail {
        eprintln!("note: a torn record from an interrupted run was dropped and will be recomputed");
    }
    let fp = judge.fingerprint();
    let mut plan_keys = Vec::with_capacity(responses.len());
    let (mut judged, mut reused) = (0, 0);
    let pb = crate::progress::bar(responses.len() as u64, "judging");
    for r in &responses {
        let sha = store::sha256_hex(r.text.as_bytes());
        let gkey = store::key_of(&["generation", &r.source, &r.sample_id, &r.model, &sha]);
        gens.append(GenerationRecord {
            key: gkey.clone(),
            sample_id: r.sample_id.clone(),
            model: r.model.clone(),
            response: r.text.clone(),
            response_sha256: sha.clone(),
            source: r.source.clone(),
        })?;
        plan_keys.push(gkey);
        let jkey = judgment_key(&fp, &r.sample_id, &sha);
        if judgments.contains(&jkey) {
            reused += 1;
        } else {
            let prompt = by_id[r.sample_id.as_str()].prompt_text();
            let verdict = judge.judge(&prompt, &r.text);
            judgments.append(JudgmentRecord {
                key: jkey,
                sample_id: r.sample_id.clone(),
                model: r.model.clone(),
                response_sha256: sha,
                judge: judge.name().into(),
                judge_fingerprint: fp.clone(),
                verdict,
            })?;
            judged += 1;
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    gens.sync()?;
    judgments.sync()?;
    drop((gens, judgments));
    failures.sort();
    failures.dedup();
    let plan = Plan {
        judge_fingerprints: vec![fp],
        generations: plan_keys,
        failures,
        seed: args.seed,
    };
    store::write_atomic(
        &run.file("plan.json"),
        &serde_json::to_vec_pretty(&plan).expect("serialise plan"),
    )?;
    let rep = report::render(&run)?;
    eprintln!(
        "scored {} responses ({judged} judged, {reused} reused from the store); reports in {}",
        responses.len(),
        run.path.display()
    );
    report::print_headline(&rep);
    Ok(Outcome {
        failures: plan.failures.len(),
        judged,
        reused,
    })
}

fn write_manifest(
    run: &RunDir,
    args: &ScoreArgs,
    opts: &dataset::ReadOptions,
    ds: &dataset::Dataset,
    judge: &Judge,
    responses: &[Response],
) -> Result<()> {
    let path = run.file("manifest.json");
    let files = ds
        .files
        .iter()
        .map(|f| file_info(f))
        .collect::<Result<Vec<_>>>()?;
    let dataset = DatasetInfo {
        spec: ds.spec.clone(),
        sha256: ds.hash.clone(),
        files,
        samples: ds.samples.len(),
    };
    let mut models: Vec<String> = responses.iter().map(|r| r.model.clone()).collect();
    models.sort();
    models.dedup();
    let responses_info = ResponsesInfo {
        source: args.responses.clone(),
        sha256: if args.responses == "reference" {
            None
        } else {
            Some(file_info(Path::new(&args.responses))?.sha256)
        },
        models,
    };
    let prompt_sha256 = match judge {
        Judge::Refusal(d) => d.patterns_sha256().to_string(),
    };
    let judge_info = JudgeInfo {
        name: judge.name().into(),
        fingerprint: judge.fingerprint(),
        prompt_sha256,
    };
    let invocation = Invocation {
        at: store::now_rfc3339(),
        argv: std::env::args().collect(),
    };
    let manifest = match std::fs::read(&path) {
        Ok(bytes) => {
            let mut m: Manifest = serde_json::from_slice(&bytes).map_err(|e| Error::Store {
                path: path.clone(),
                line: 1,
                msg: e.to_string(),
            })?;
            if m.dataset.sha256 != dataset.sha256 {
                return Err(Error::Usage(format!(
                    "{}: this run directory was made from another data set (sha256 {} vs {} now)\n  fix: use a new --out directory for a different data set",
                    run.path.display(),
                    &m.dataset.sha256[..16],
                    &dataset.sha256[..16]
                )));
            }
            m.invocations.push(invocation);
            if !m.judges.contains(&judge_info) {
                m.judges.push(judge_info);
            }
            m.responses = responses_info;
            m
        }
        Err(_) => Manifest {
            schema: "anjeon.manifest/1".into(),
            anjeon_version: env!("CARGO_PKG_VERSION").into(),
            git_revision: option_env!("ANJEON_GIT_REV").unwrap_or("unknown").into(),
            created_at: invocation.at.clone(),
            invocations: vec![invocation],
            dataset,
            responses: responses_info,
            judges: vec![judge_info],
            config: serde_json::json!({ "command": "score", "args": args, "read_options": opts }),
            seed: args.seed,
        },
    };
    store::write_atomic(
        &path,
        &serde_json::to_vec_pretty(&manifest).expect("serialise manifest"),
    )
}
