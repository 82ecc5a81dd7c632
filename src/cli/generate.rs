//! `anjeon generate`: one prompt through a model; only the text on stdout.

use std::process::ExitCode;

use anjeon::model::{self, Requantize};

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Model: bundled name, .gguf, Hugging Face folder, card, or hub id in the local cache.
    #[arg(long)]
    model: String,
    #[arg(long)]
    prompt: String,
    /// No chat template: the prompt as is (BOS as the tokenizer's settings say).
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long)]
    top_p: Option<f64>,
    /// Sample from the K most probable tokens (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    top_k: Option<u64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "off", value_parser = super::args::requantize())]
    requantize: Requantize,
}

pub fn run(a: GenerateArgs) -> anyhow::Result<ExitCode> {
    let mut m = super::args::load_model(&a.model, &a.device, a.requantize)?;
    let ids = if a.raw {
        m.tokenizer.encode_prompt(&a.prompt)?
    } else {
        m.encode_chat(&[model::Message::new("user", a.prompt)])?.1
    };
    let stop = if a.raw {
        vec![]
    } else {
        m.template.stop_strings()
    };
    let p = model::GenParams {
        max_new_tokens: a.max_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k.map(|k| k as usize),
        stop,
        ..Default::default()
    };
    let g = m.generate(&ids, &p, a.seed)?;
    anjeon::outln!("{}", g.text);
    log::info!(
        "{} prompt tokens, {} new ({:?}); prefill {:.1} tok/s, decode {:.1} tok/s",
        g.prompt_tokens,
        g.tokens.len(),
        g.stop,
        g.prompt_tokens as f64 / g.prefill_s.max(1e-9),
        g.tokens.len() as f64 / g.decode_s.max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}
