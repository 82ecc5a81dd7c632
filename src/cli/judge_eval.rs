//! `anjeon judge-eval`: a judge's agreement with human labels.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use anjeon::judge::labels::Split;
use anjeon::judge::Judge;
use anjeon::pipeline::judge_eval as eval;

use super::args::JudgeArgs;

#[derive(clap::Args)]
pub struct JudgeEvalArgs {
    /// KIND:PATH with KIND xstest-completions, square-responses, kosbi, assurai or jsonl.
    #[arg(long)]
    labels: String,
    /// Also measure these judges on the same items (comma-separated, e.g.
    /// `refusal,head,ensemble,default`) and print them side by side with
    /// 95% bootstrap intervals, per language.
    #[arg(long, value_delimiter = ',')]
    compare: Vec<String>,
    #[command(flatten)]
    judge: JudgeArgs,
    /// cpu, cuda, cuda:N or metal (for a model judge).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Download the judge model if it is not cached.
    #[arg(long)]
    fetch: bool,
    #[arg(long, default_value = "all", value_parser = super::args::split())]
    split: Split,
    /// At most N items of the split (a deterministic pseudo-random subset).
    #[arg(long)]
    limit: Option<usize>,
    /// Append this text to every response (to measure how far an injected
    /// fake verdict such as "점수: 1" moves the judge).
    #[arg(long, value_name = "TEXT")]
    append: Option<String>,
    /// Write every item's verdict (with the judge's label probabilities) as JSON lines.
    #[arg(long, value_name = "FILE")]
    verdicts: Option<PathBuf>,
    /// Grid-search the refusal detector's thresholds on the dev split first.
    #[arg(long)]
    calibrate: bool,
    /// Print up to N disagreements with the human labels to stderr.
    #[arg(long, value_name = "N")]
    show_errors: Option<usize>,
    #[arg(long)]
    json: bool,
}

pub fn run(args: JudgeEvalArgs) -> anyhow::Result<ExitCode> {
    let JudgeEvalArgs {
        labels,
        compare,
        judge: judge_args,
        device,
        fetch,
        split,
        limit,
        append,
        verdicts,
        calibrate,
        show_errors,
        json,
    } = args;
    let judge_args = judge_args.spec();
    let mut items = eval::read_labels(&labels)?;
    if let Some(a) = &append {
        let a = a.replace("\\n", "\n");
        for l in &mut items {
            l.response.push_str(&a);
        }
    }
    // judge-eval reads no data set flags: the default limits.
    let load = |a: &anjeon::judge::JudgeSpec| {
        a.load(
            &device,
            fetch,
            anjeon::model::Requantize::Off,
            anjeon::core::limits::Limits::default().max_context,
        )
    };
    let mut judge = load(&judge_args)?;
    if let (true, Judge::Model(_)) = (calibrate, &judge) {
        // The harm threshold from the development split, then report on --split.
        let dev = eval::evaluate(&labels, &mut judge, &items, eval::Split::Dev, limit)?;
        match eval::calibrate_harm_threshold(&items, &dev.verdicts) {
            Some((t, f1, n)) => {
                log::info!("calibrated on the dev split (n={n}): harm threshold P(harmful) >= {t:.2} (dev macro-F1 {f1:.3}); put `threshold = {t:.2}` in harm.toml to keep it");
                if let Judge::Model(m) = &mut judge {
                    m.set_harm_threshold(t);
                }
            }
            None => log::warn!("--calibrate: no harmful/unharmful labels in the dev split; nothing to calibrate for a model judge"),
        }
    } else if calibrate {
        let (th, per_lang) = eval::calibrate_refusal(&items);
        for (lang, n, f1) in per_lang {
            let p = if lang == "ko" { th.ko } else { th.en };
            log::info!("calibrated on the dev split ({lang}, n={n}): partial_min_words={} compliance_min_words={} (dev macro-F1 {f1:.3})", p.partial_min_words, p.compliance_min_words);
        }
        judge = Judge::Refusal(anjeon::judge::refusal::RefusalDetector::with_thresholds(th));
    }
    if let Some(n) = show_errors {
        for (l, v) in eval::disagreements(&mut judge, &items, split, limit, n) {
            let resp: String = l.response.chars().take(400).collect();
            log::info!(
                "--- {} human={:?} judge={}\n{}\n",
                l.id,
                l.label,
                serde_json::to_string(&v)?,
                resp.replace('\n', " / ")
            );
        }
    }
    judge.persist_embeddings();
    let rep = eval::evaluate(&labels, &mut judge, &items, split, limit)?;
    if !compare.is_empty() {
        let mut reps = vec![rep];
        for spec in &compare {
            let mut a = judge_args.clone();
            a.judge = spec.clone();
            let mut j = load(&a)?;
            j.persist_embeddings();
            reps.push(eval::evaluate(&labels, &mut j, &items, split, limit)?);
        }
        if json {
            anjeon::outln!("{}", serde_json::to_string_pretty(&reps)?);
        } else {
            anjeon::outln!(
                "judges on {labels}, split {split:?} (95% bootstrap intervals, 1000 resamples)\n"
            );
            anjeon::outln!("| judge | language | label kind | n | accuracy | macro-F1 | Cohen's κ | unscored | items/s |\n|---|---|---|---:|---|---|---|---:|---:|");
            for r in &reps {
                for k in r
                    .by_language
                    .iter()
                    .map(|l| (l.language.as_str(), &l.report))
                    .chain(r.by_kind.iter().map(|k| ("all", k)))
                {
                    let (lang, k) = k;
                    let a = &k.agreement;
                    let c = &k.ci95;
                    anjeon::outln!(
                        "| {} | {lang} | {} | {} | {:.3} [{:.3}, {:.3}] | {:.3} [{:.3}, {:.3}] | {:.3} [{:.3}, {:.3}] | {} | {:.2} |",
                        r.judge, k.label_kind, a.n, a.accuracy, c.accuracy[0], c.accuracy[1], a.macro_f1, c.macro_f1[0], c.macro_f1[1], a.cohen_kappa, c.cohen_kappa[0], c.cohen_kappa[1], k.unscored, r.items_per_s
                    );
                }
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(p) = &verdicts {
        let mut out = String::new();
        for v in &rep.verdicts {
            out.push_str(&serde_json::to_string(v)?);
            out.push('\n');
        }
        std::fs::write(p, out).with_context(|| format!("writing {}", p.display()))?;
    }
    if json {
        anjeon::outln!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        anjeon::outln!(
            "judge {} ({}) on {labels}, split {:?}",
            rep.judge,
            rep.judge_fingerprint,
            rep.split
        );
        for k in &rep.by_kind {
            anjeon::outln!(
                "  {:<14} n={:<5} accuracy={:.3} macro-F1={:.3} kappa={:.3} unscored={}  [{}]",
                k.label_kind,
                k.items,
                k.agreement.accuracy,
                k.agreement.macro_f1,
                k.agreement.cohen_kappa,
                k.unscored,
                k.compared_as
            );
            anjeon::outln!(
                "    confusion (rows human, cols judge) {:?}: {:?}",
                k.agreement.labels,
                k.agreement.confusion
            );
        }
        anjeon::outln!("  {:.2} items/s", rep.items_per_s);
        if let Some(st) = &rep.judge_stats {
            anjeon::outln!(
                "  rubric prefix: {} tokens in {:.1} s; items: {} tokens computed, {} from the rubric cache, {:.1} s ({:.0}% of judge time on the rubric)",
                st.rubric_tokens, st.rubric_s, st.item_tokens, st.cached_tokens, st.item_s,
                100.0 * st.rubric_s / (st.rubric_s + st.item_s).max(1e-9)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
