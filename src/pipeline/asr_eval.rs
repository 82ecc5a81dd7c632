//! `anjeon audio eval`: transcribe a labelled speech set with the speech
//! recogniser and score it (WER, or CER for Korean, Japanese, Chinese).

use crate::audio::{
    self,
    wer::{char_errors, uses_cer, word_errors, EvalItem, EvalRow, EvalSummary},
};
use crate::core::error::Result;

/// Transcribe every item (language forced to the item's when `force_language`)
/// and score it.
pub fn evaluate(
    asr: &mut crate::model::whisper::Asr,
    items: &[EvalItem],
    force_language: bool,
    opts: &audio::DecodeOptions,
) -> Result<(Vec<EvalRow>, Vec<EvalSummary>)> {
    let mut rows = Vec::new();
    for it in items {
        let audio = audio::decode_file(&it.audio, opts)?;
        let t = asr.transcribe(&audio.samples, force_language.then_some(it.lang.as_str()))?;
        let (errors, units) = if uses_cer(&it.lang) {
            char_errors(&it.text, &t.text)
        } else {
            word_errors(&it.text, &t.text)
        };
        log::info!(
            "{} [{}→{}] {:.1} s in {:.2} s: {} ({errors}/{units})",
            it.id,
            it.lang,
            t.language,
            t.seconds,
            t.elapsed_s,
            t.text
        );
        rows.push(EvalRow {
            id: it.id.clone(),
            lang: it.lang.clone(),
            reference: it.text.clone(),
            hypothesis: t.text,
            detected_language: t.language,
            errors,
            units,
            audio_s: t.seconds,
            elapsed_s: t.elapsed_s,
        });
    }
    let mut langs: Vec<String> = rows.iter().map(|r| r.lang.clone()).collect();
    langs.sort();
    langs.dedup();
    let summary = langs
        .into_iter()
        .map(|lang| {
            let rs: Vec<&EvalRow> = rows.iter().filter(|r| r.lang == lang).collect();
            let e: usize = rs.iter().map(|r| r.errors).sum();
            let u: usize = rs.iter().map(|r| r.units).sum();
            let a: f64 = rs.iter().map(|r| r.audio_s).sum();
            let s: f64 = rs.iter().map(|r| r.elapsed_s).sum();
            EvalSummary {
                metric: if uses_cer(&lang) { "cer" } else { "wer" }.into(),
                rate: e as f64 / u.max(1) as f64,
                items: rs.len(),
                language_detected_right: rs
                    .iter()
                    .filter(|r| r.detected_language == r.lang)
                    .count(),
                real_time_factor: s / a.max(1e-9),
                lang,
            }
        })
        .collect();
    Ok((rows, summary))
}
