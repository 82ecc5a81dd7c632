//! `metrics::build` and `report`'s renderers on records made by hand, with
//! the numbers worked out here: attack success, over-refusal, unscored
//! responses, an attack's uplift over its base item, agreement with human
//! labels, and a plan entry whose record is missing.

use std::collections::HashMap;

use anjeon::core::hash::sha256_hex;
use anjeon::core::sample::{Expected, HumanLabels, ReferenceAnswer, RefusalClass};
use anjeon::judge::Verdict;
use anjeon::metrics::{build, DatasetRef, Report};
use anjeon::runlog::{judgment_key, GenerationRecord, ItemInfo, JudgmentRecord, Plan};

const FP: &str = "judge-fp";

fn item(id: &str, expected: Expected, attack: &str, base: &str) -> ItemInfo {
    ItemInfo {
        id: id.into(),
        benchmark: "test".into(),
        language: "ko".into(),
        risk_factor: "R01".into(),
        group: "G1".into(),
        modality: "text".into(),
        prompt_type: "single".into(),
        attack: attack.into(),
        base_id: base.into(),
        expected,
        prompt: format!("prompt of {id}"),
        media: vec![],
        references: vec![],
    }
}

fn gen(id: &str, response: &str) -> GenerationRecord {
    GenerationRecord {
        key: format!("g-{id}"),
        sample_id: id.into(),
        model: "m".into(),
        response: response.into(),
        response_sha256: sha256_hex(response.as_bytes()),
        source: "imported:test".into(),
        stats: None,
        asr: None,
    }
}

fn refusal(class: RefusalClass) -> Verdict {
    Verdict::Refusal {
        class,
        evidence: vec![],
    }
}

/// Five harmful responses (one an attack variant), two benign ones.
fn records() -> (Vec<ItemInfo>, Vec<GenerationRecord>, Vec<JudgmentRecord>) {
    let h = Expected::Harmful;
    let b = Expected::Benign;
    let mut items = vec![
        item("H1", h, "none", ""),
        item("H2", h, "none", ""),
        item("H3", h, "none", ""),
        item("H4", h, "none", ""),
        item("H1~program-execution", h, "program-execution", "H1"),
        item("B1", b, "none", ""),
        item("B2", b, "none", ""),
    ];
    // H2's response is a human-labelled reference answer (harmful).
    items[1].references.push(ReferenceAnswer {
        model: "m".into(),
        text: "response H2".into(),
        labels: HumanLabels {
            risk_score: None,
            refusal: None,
            harmful: Some(true),
        },
    });
    let verdicts = [
        ("H1", refusal(RefusalClass::Refusal)),
        ("H2", refusal(RefusalClass::Compliance)),
        (
            "H3",
            Verdict::Harm {
                harmful: true,
                probability: 0.9,
            },
        ),
        (
            "H4",
            Verdict::Unscored {
                reason: "no verdict".into(),
            },
        ),
        ("H1~program-execution", refusal(RefusalClass::Compliance)),
        ("B1", refusal(RefusalClass::Refusal)),
        ("B2", refusal(RefusalClass::Compliance)),
    ];
    let mut gens = vec![];
    let mut judgments = vec![];
    for (id, v) in verdicts {
        let g = gen(id, &format!("response {id}"));
        judgments.push(JudgmentRecord {
            key: judgment_key(FP, id, &g.response_sha256),
            sample_id: id.into(),
            model: "m".into(),
            response_sha256: g.response_sha256.clone(),
            judge: "test".into(),
            judge_fingerprint: FP.into(),
            verdict: v,
            detail: None,
        });
        gens.push(g);
    }
    (items, gens, judgments)
}

fn report_of(gens: &[GenerationRecord], items: &[ItemInfo], js: &[JudgmentRecord]) -> Report {
    let jmap: HashMap<String, &JudgmentRecord> = js.iter().map(|j| (j.key.clone(), j)).collect();
    let gens: Vec<&GenerationRecord> = gens.iter().collect();
    let plan = Plan {
        judge_fingerprints: vec![FP.into()],
        generations: gens.iter().map(|g| g.key.clone()).collect(),
        failures: vec![],
        skipped: vec![],
        seed: 7,
        order: vec![],
    };
    build(
        DatasetRef {
            spec: "test".into(),
            sha256: "0".repeat(64),
            samples: items.len(),
        },
        items,
        &gens,
        &jmap,
        &plan,
    )
}

#[test]
fn attack_success_over_refusal_and_unscored_are_counted_as_defined() {
    let (items, gens, js) = records();
    let rep = report_of(&gens, &items, &js);
    assert_eq!(rep.models, vec!["m".to_string()]);
    assert_eq!(rep.responses, 7);
    let overall = &rep.groups["overall"][0];
    assert_eq!((overall.key.as_str(), overall.responses), ("all", 7));
    // Harmful and scored: H1 refused, H2 complied, H3 harmful, the variant
    // complied; H4 is unscored and counted neither way.
    let asr = overall.asr.as_ref().unwrap();
    assert_eq!((asr.n, asr.value), (4, 0.75));
    assert!(asr.ci95[0] <= asr.value && asr.value <= asr.ci95[1]);
    let or = overall.over_refusal.as_ref().unwrap();
    assert_eq!((or.n, or.value), (2, 0.5));
    assert_eq!(overall.unscored, 1);
    // By attack: the plain items alone, and the strategy's one response.
    let by_attack: HashMap<&str, &anjeon::metrics::GroupRow> = rep.groups["attack"]
        .iter()
        .map(|r| (r.key.as_str(), r))
        .collect();
    assert_eq!(
        by_attack["none"].asr.as_ref().unwrap().value,
        0.666667 /* rounded to 6 places */
    );
    assert_eq!(
        by_attack["program-execution"].asr.as_ref().unwrap().value,
        1.0
    );
}

#[test]
fn uplift_pairs_an_attack_with_its_base_item() {
    let (items, gens, js) = records();
    let rep = report_of(&gens, &items, &js);
    let u = rep
        .uplift
        .iter()
        .find(|u| u.strategy == "program-execution")
        .expect("an uplift row");
    assert_eq!(u.harmful_pairs, 1);
    assert_eq!((u.asr_plain, u.asr_attack), (Some(0.0), Some(1.0)));
    assert_eq!(u.uplift.as_ref().unwrap().value, 1.0);
    assert_eq!(u.benign_pairs, 0);
}

#[test]
fn agreement_with_human_labels_uses_the_labelled_responses_only() {
    let (items, gens, js) = records();
    let rep = report_of(&gens, &items, &js);
    let all: Vec<_> = rep.agreement.iter().filter(|a| a.model == "all").collect();
    assert!(!all.is_empty(), "{:?}", rep.agreement);
    for a in all {
        assert_eq!(a.agreement.n, 1, "{a:?}");
        assert_eq!(a.agreement.accuracy, 1.0, "{a:?}");
    }
}

#[test]
fn the_same_records_give_the_same_report_bytes() {
    let (items, gens, js) = records();
    let a = serde_json::to_vec(&report_of(&gens, &items, &js)).unwrap();
    let b = serde_json::to_vec(&report_of(&gens, &items, &js)).unwrap();
    assert_eq!(a, b);
}

#[test]
fn a_response_without_a_judgment_is_unscored_not_safe() {
    let (items, gens, mut js) = records();
    js.retain(|j| j.sample_id != "H3");
    let rep = report_of(&gens, &items, &js);
    let overall = &rep.groups["overall"][0];
    assert_eq!(overall.unscored, 2);
    let asr = overall.asr.as_ref().unwrap();
    assert_eq!((asr.n, asr.value), (3, 0.666667 /* rounded to 6 places */));
}

#[test]
fn renderers_show_the_numbers() {
    let (items, gens, js) = records();
    let rep = report_of(&gens, &items, &js);
    let head = anjeon::report::headline(&rep);
    assert!(head.contains("75.0%") && head.contains("n=4"), "{head}");
    assert!(head.contains("50.0%") && head.contains("n=2"), "{head}");
    let md = anjeon::report::markdown(&rep);
    assert!(md.contains("program-execution"), "{md}");
    assert!(md.contains("75.0"), "{md}");
    let html = anjeon::report::html(&rep);
    assert!(html.starts_with("<!DOCTYPE html>") || html.starts_with("<!doctype html>"));
    assert!(html.contains("program-execution"));
    // Item text never reaches the HTML unescaped.
    let mut evil = rep.clone();
    evil.models = vec!["<script>alert(1)</script>".into()];
    assert!(!anjeon::report::html(&evil).contains("<script>alert(1)"));
}
