//! `anjeon bench`: prefill and decode tokens/s and peak memory of a model.

use std::process::ExitCode;

use anjeon::model::{self, Requantize};

#[derive(clap::Args)]
pub struct BenchArgs {
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 256)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "off", value_parser = super::args::requantize())]
    requantize: Requantize,
    /// Sequences decoded together (aggregate decode tokens/s).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    batch: u64,
    #[arg(long)]
    json: bool,
}

pub fn run(a: BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(n) = a.threads {
        // candle's CPU kernels size their thread pools from this variable;
        // set before any pool starts (nothing has run yet).
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let t = std::time::Instant::now();
    let mut m = super::args::load_model(&a.model, &a.device, a.requantize)?;
    let load_s = t.elapsed().as_secs_f64();
    let requantized = m.files.iter().any(|(_, h)| h.ends_with("+q8_0"));
    let b = model::bench::run(
        &mut m,
        load_s,
        requantized,
        a.prompt_tokens,
        a.decode_tokens,
        a.batch as usize,
    )?;
    if a.json {
        anjeon::outln!("{}", serde_json::to_string_pretty(&b)?);
    } else {
        anjeon::outln!("{} ({}), {} threads, batch {}, kernels {}{}: prefill {:.1} tok/s ({} tokens), decode {:.1} tok/s ({} tokens), peak RSS {:.0} MiB (file {:.0} MiB), load {:.1} s",
            b.model, b.architecture, b.threads, b.batch, b.kernels, if b.requantized { ", Q8_0 re-quantized" } else { "" }, b.prefill_tok_s, b.prompt_tokens, b.decode_tok_s, b.decode_tokens, b.peak_rss_mb, b.model_file_mb, b.load_s);
    }
    Ok(ExitCode::SUCCESS)
}
