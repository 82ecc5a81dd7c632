//! `anjeon judge train`: a classifier head over EmbeddingGemma embeddings.

use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Subcommand)]
pub enum JudgeCmd {
    /// Train a classifier head over EmbeddingGemma embeddings on the
    /// development split of human labels; writes HEAD.safetensors and a
    /// training report (HEAD.json, and markdown on stdout).
    Train {
        /// KIND:PATH label sources (repeatable), as `judge-eval --labels`.
        #[arg(long, required = true)]
        labels: Vec<String>,
        /// refusal (compliance / refusal / partial) or harm (harmful yes/no).
        #[arg(long)]
        task: String,
        #[arg(long)]
        out: std::path::PathBuf,
        /// Head name (default: the file stem of --out).
        #[arg(long)]
        name: Option<String>,
        /// Features: lead (response, its first 64 tokens and the request),
        /// pair (request and response with their product), response (alone),
        /// or response-mid (the response's embedding and its mean-pooled
        /// hidden states after the encoder's 14th layer).
        #[arg(long, default_value = "lead")]
        features: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Cross-validation folds (grouped by request).
        #[arg(long, default_value_t = 5)]
        folds: usize,
        /// Responses are cut to this many tokens before embedding.
        #[arg(long, default_value_t = anjeon::judge::head::DEFAULT_MAX_TOKENS)]
        max_tokens: usize,
        /// Stack the head on the refusal detector's verdict (its class and
        /// evidence count become four more features).
        #[arg(long)]
        with_detector: bool,
        /// Download the embedder if it is not cached.
        #[arg(long)]
        fetch: bool,
    },
}

pub fn run(cmd: JudgeCmd) -> anyhow::Result<ExitCode> {
    let JudgeCmd::Train {
        labels,
        task,
        out,
        name,
        features,
        seed,
        folds,
        max_tokens,
        with_detector,
        fetch,
    } = cmd;
    use anjeon::judge::head;
    let task = match task.as_str() {
        "refusal" => anjeon::judge::model::Task::Refusal,
        "harm" => anjeon::judge::model::Task::Harm,
        other => anyhow::bail!(anjeon::Error::Usage(format!("--task {other:?}: use refusal or harm (no 1-5 risk head: too few human 1-5 labels here)"))),
    };
    let layout = head::Layout::parse(&features).ok_or_else(|| {
        anjeon::Error::Usage(format!(
            "--features {features:?}: use lead, pair, response or response-mid"
        ))
    })?;
    let card = anjeon::model::card::find("embeddinggemma-300m").expect("bundled card");
    if !anjeon::model::fetch::is_cached(&card) && fetch {
        anjeon::model::fetch::fetch(&card)?;
    }
    let dir = match std::env::var_os("ANJEON_EMBEDDER") {
        Some(d) => std::path::PathBuf::from(d),
        None => anjeon::model::fetch::model_path(&card)
            .parent()
            .expect("folder")
            .to_path_buf(),
    };
    let emb = anjeon::model::embeddinggemma::EmbeddingGemma::load(&dir, &candle_core::Device::Cpu)?;
    let req = head::TrainRequest {
        labels,
        task,
        layout,
        name: name.unwrap_or_else(|| {
            out.file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("head")
                .to_string()
        }),
        max_tokens,
        with_detector,
        opts: head::TrainOptions {
            seed,
            folds,
            ..Default::default()
        },
    };
    let h = head::train_head(&req, &emb)?;
    h.save(&out)?;
    let report = out.with_extension("json");
    std::fs::write(&report, serde_json::to_string_pretty(&h.spec)?)
        .with_context(|| format!("writing {}", report.display()))?;
    let t = &h.spec.training;
    anjeon::outln!(
        "# head {} ({} task, {} features)\n",
        h.spec.name,
        h.spec.task,
        features
    );
    anjeon::outln!(
        "trained on {} development-split examples from {}; classes {:?} = {:?}; languages {:?}",
        t.n,
        t.labels.join(", "),
        h.spec.classes,
        t.per_class,
        t.per_language
    );
    anjeon::outln!("chosen by {}-fold grouped cross-validation: L2 {}, class weights {}; temperature {:.1} (out-of-fold NLL {:.4} → {:.4})\n", t.folds, t.l2, t.class_weights, h.spec.temperature, t.oof_nll_before_temperature, t.oof_nll_after_temperature);
    anjeon::outln!("| language | n | accuracy | macro-F1 | Cohen's κ |\n|---|---:|---:|---:|---:|");
    for r in &t.cv {
        anjeon::outln!(
            "| {} | {} | {:.3} | {:.3} | {:.3} |",
            r.language,
            r.n,
            r.accuracy,
            r.macro_f1,
            r.cohen_kappa
        );
    }
    log::info!(
        "wrote {} (sha256 {}) and {}",
        out.display(),
        h.sha256,
        report.display()
    );
    Ok(ExitCode::SUCCESS)
}
