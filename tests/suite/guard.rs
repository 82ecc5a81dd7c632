//! Guard-model formats: prompt rendering against fixtures rendered from the
//! official chat templates (tests/fixtures/guard/make_fixtures.py), output
//! parsing, and the category mappings.

use std::path::Path;

use anjeon::judge::guard::{mapping, GuardFormat, GuardVerdict};

const FIXTURES: &str = "tests/fixtures/guard";

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(FIXTURES)
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn renders_match_official_template_fixtures() {
    let cases: serde_json::Value = serde_json::from_str(&fixture("cases.json")).unwrap();
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 35);
    for c in cases {
        let file = c["file"].as_str().unwrap();
        let format = GuardFormat::from_name(c["format"].as_str().unwrap()).unwrap();
        let prompt = c["prompt"].as_str().unwrap();
        let response = c["response"].as_str();
        let got = match c["policy"].as_str() {
            Some(p) => format.render_policy(prompt, response, p).unwrap(),
            None => format.render(prompt, response),
        };
        let want = fixture(file);
        assert!(
            got == want,
            "{file}: render differs\n--- got\n{got}\n--- want\n{want}"
        );
        // The fixtures never carry the BOS string (the tokenizer adds it).
        if !format.bos().is_empty() {
            assert!(!got.starts_with(format.bos()), "{file}");
        }
    }
}

#[test]
fn shieldgemma_default_policy_is_dangerous_content() {
    let f = GuardFormat::ShieldGemma;
    assert_eq!(
        f.render("질문", None),
        f.render_policy("질문", None, "dangerous_content").unwrap()
    );
    assert!(f.render_policy("질문", None, "S1").is_err());
    assert!(f
        .guideline("harassment", true)
        .unwrap()
        .starts_with("\"No Harassment\": The chatbot shall not generate content that"));
}

#[test]
fn kanana_messages_follow_model_card() {
    let m = GuardFormat::KananaSafeguard.messages("질문", None);
    assert_eq!(m.len(), 2);
    assert_eq!(
        (m[1].role.as_str(), m[1].content.as_str()),
        ("assistant", "")
    );
    assert!(!GuardFormat::KananaSafeguard.prompt_verified());
    assert_eq!(GuardFormat::LlamaGuard3.messages("q", None).len(), 1);
    assert_eq!(GuardFormat::Qwen3Guard.messages("q", Some("a")).len(), 2);
}

fn ok(f: GuardFormat, out: &str) -> GuardVerdict {
    f.parse(out)
        .unwrap_or_else(|e| panic!("{} should parse {out:?}: {e}", f.name()))
}

fn err(f: GuardFormat, out: &str) {
    match f.parse(out) {
        Ok(v) => panic!("{} must reject {out:?}, got {v:?}", f.name()),
        Err(e) => assert!(!e.is_empty()),
    }
}

#[test]
fn llama_guard_outputs() {
    for f in [
        GuardFormat::LlamaGuard3,
        GuardFormat::LlamaGuard3_1B,
        GuardFormat::LlamaGuard4,
    ] {
        for s in [
            "safe",
            "\n\nsafe",
            "\n\nsafe<|eot_id|>",
            "safe\n",
            " safe <|eot|>",
        ] {
            let v = ok(f, s);
            assert!(!v.unsafe_ && v.categories.is_empty() && v.refusal.is_none());
        }
        let v = ok(f, "\n\nunsafe\nS1,S10<|eot_id|>");
        assert!(v.unsafe_ && !v.controversial);
        assert_eq!(v.categories, ["S1", "S10"]);
        assert_eq!(ok(f, "unsafe\nS2, S11").categories, ["S2", "S11"]);
        assert_eq!(ok(f, "unsafe\nS9\n").categories, ["S9"]);
        assert_eq!(ok(f, "unsafe\nS3,S3").categories, ["S3"]);
        // LG4 was seen answering a bare "unsafe": unsafe without categories.
        let bare = ok(f, "\n\nunsafe");
        assert!(bare.unsafe_ && bare.categories.is_empty());
        for bad in [
            "",
            "  \n ",
            "<|eot_id|>",
            "Safe",
            "SAFE",
            "unsafe\nS15",
            "unsafe\nS0",
            "unsafe\nO1",
            "unsafe\nS1,",
            "unsafe\nviolent crimes",
            "safe\nS1",
            "unsafe\nS1\nS2",
            "The conversation is safe.",
            "safe, because the user asks a question",
            "unsafe S1",
        ] {
            err(f, bad);
        }
    }
    ok(GuardFormat::LlamaGuard3, "unsafe\nS14");
    ok(GuardFormat::LlamaGuard4, "unsafe\nS14");
    // The 1B template lists S1-S13 only.
    err(GuardFormat::LlamaGuard3_1B, "unsafe\nS14");
}

#[test]
fn kanana_outputs() {
    let f = GuardFormat::KananaSafeguard;
    assert!(!ok(f, "<SAFE>").unsafe_);
    assert!(!ok(f, " <SAFE>\n").unsafe_);
    assert!(!ok(f, "<SAFE><|eot_id|>").unsafe_);
    for (out, code) in [
        ("<UNSAFE-S4>", "S4"),
        ("<UNSAFE-S1>", "S1"),
        ("<UNSAFE-S7>\n", "S7"),
        ("<UNSAFE-I2>", "I2"),
        ("<UNSAFE-A1>", "A1"),
    ] {
        let v = ok(f, out);
        assert!(v.unsafe_);
        assert_eq!(v.categories, [code]);
    }
    for bad in [
        "",
        "SAFE",
        "safe",
        "<safe>",
        "UNSAFE-S4",
        "<UNSAFE>",
        "<UNSAFE-S8>",
        "<UNSAFE-S0>",
        "<UNSAFE-s4>",
        "<UNSAFE-S4",
        "<SAFE> <UNSAFE-S4>",
        "<SAFE>이 대화는 안전합니다",
        "이 발화는 안전합니다.",
    ] {
        err(f, bad);
    }
}

#[test]
fn qwen3guard_outputs() {
    let f = GuardFormat::Qwen3Guard;
    let v = ok(f, "Safety: Safe\nCategories: None");
    assert!(!v.unsafe_ && !v.controversial && v.categories.is_empty() && v.refusal.is_none());
    let v = ok(f, "Safety: Unsafe\nCategories: Violent\nRefusal: No");
    assert!(v.unsafe_ && !v.controversial);
    assert_eq!(v.categories, ["Violent"]);
    assert_eq!(v.refusal, Some(false));
    let v = ok(f, "Safety: Safe\nCategories: None\nRefusal: Yes<|im_end|>");
    assert_eq!(v.refusal, Some(true));
    let v = ok(
        f,
        "Safety: Unsafe\nCategories: Non-violent Illegal Acts, Jailbreak\n",
    );
    assert_eq!(v.categories, ["Non-violent Illegal Acts", "Jailbreak"]);
    let v = ok(
        f,
        "Safety: Controversial\nCategories: Politically Sensitive Topics",
    );
    assert!(!v.unsafe_ && v.controversial);
    assert_eq!(v.categories, ["Politically Sensitive Topics"]);
    let v = ok(
        f,
        "<think>\n\n</think>\n\nSafety: Unsafe\nCategories: PII\nRefusal: No",
    );
    assert_eq!(v.categories, ["PII"]);
    let v = ok(
        f,
        "Safety: Unsafe\r\nCategories: Suicide & Self-Harm,Copyright Violation\r\n",
    );
    assert_eq!(v.categories, ["Suicide & Self-Harm", "Copyright Violation"]);
    for bad in [
        "",
        "Safe",
        "Safety: Safe",
        "Safety: safe\nCategories: None",
        "Safety: Harmful\nCategories: Violent",
        "Safety: Unsafe\nCategories: Violence",
        "Safety: Unsafe\nCategories: violent",
        "Safety: Safe\nCategories: Violent",
        "Safety: Unsafe\nCategories: Violent\nRefusal: Maybe",
        "Safety: Unsafe\nCategories: Violent\nRefusal: No\nExplanation: ...",
        "Categories: None\nSafety: Safe",
        "The response is safe.",
        "Safety: Unsafe\nViolent",
    ] {
        err(f, bad);
    }
}

#[test]
fn shieldgemma_outputs() {
    let f = GuardFormat::ShieldGemma;
    assert_eq!(f.label_words(), Some(["Yes", "No"]));
    assert!(ok(f, "Yes").unsafe_);
    assert!(ok(f, " Yes\n\nThe human question asks for ...").unsafe_);
    assert!(ok(f, "Yes.").unsafe_);
    assert!(!ok(f, "No").unsafe_);
    assert!(!ok(f, "No, the prompt does not ...<end_of_turn>").unsafe_);
    for bad in [
        "",
        "yes",
        "no",
        "YES",
        "Nothing",
        "Yesterday",
        "Noted",
        "Maybe",
        "The answer is Yes",
    ] {
        err(f, bad);
    }
    let p = anjeon::judge::guard::label_probability(3.0, 1.0).unwrap();
    assert!(p > 0.88 && p < 0.89);
}

#[test]
fn label_words_only_for_scored_formats() {
    for f in GuardFormat::all() {
        assert_eq!(f.label_words().is_some(), *f == GuardFormat::ShieldGemma);
        assert!(f.max_new_tokens() >= 1);
    }
}

#[test]
fn parse_never_panics_or_defaults_to_safe() {
    let junk = [
        "",
        "\0",
        "\u{feff}",
        "<",
        ">",
        "<UNSAFE-",
        "Safety:",
        "Categories:",
        "unsafe\n,",
        "\n\n\n",
        "안전",
        "🙂",
        "<|eot_id|><|eot_id|>",
        "Yes",
        "safe",
        "<SAFE>",
    ];
    for f in GuardFormat::all() {
        for j in junk {
            let _ = f.parse(j);
            let _ = f.parse(&j.repeat(500));
        }
        // Empty is always an error, never safe.
        assert!(f.parse("").is_err());
        assert!(f.parse(&"x".repeat(10_000)).is_err());
    }
}

#[test]
fn names_and_detection() {
    for f in GuardFormat::all() {
        assert_eq!(GuardFormat::from_name(f.name()), Some(*f));
    }
    for (name, f) in [
        ("llama-guard-3", GuardFormat::LlamaGuard3),
        ("llama-guard-4", GuardFormat::LlamaGuard4),
        ("kanana-safeguard", GuardFormat::KananaSafeguard),
        ("qwen3guard", GuardFormat::Qwen3Guard),
        ("shieldgemma", GuardFormat::ShieldGemma),
        ("Llama_Guard_3", GuardFormat::LlamaGuard3),
    ] {
        assert_eq!(GuardFormat::from_name(name), Some(f), "{name}");
    }
    assert_eq!(GuardFormat::from_name("llama-guard-2"), None);
    for (model, want) in [
        (
            "meta-llama/Llama-Guard-3-8B",
            Some(GuardFormat::LlamaGuard3),
        ),
        (
            "meta-llama/Llama-Guard-3-8B-INT8",
            Some(GuardFormat::LlamaGuard3),
        ),
        ("llama-guard3:8b", Some(GuardFormat::LlamaGuard3)),
        (
            "Llama-Guard-3-8B-Q4_K_M.gguf",
            Some(GuardFormat::LlamaGuard3),
        ),
        (
            "meta-llama/Llama-Guard-3-1B",
            Some(GuardFormat::LlamaGuard3_1B),
        ),
        (
            "meta-llama/Llama-Guard-3-11B-Vision",
            Some(GuardFormat::LlamaGuard3_1B),
        ),
        (
            "meta-llama/Llama-Guard-4-12B",
            Some(GuardFormat::LlamaGuard4),
        ),
        (
            "kakaocorp/kanana-safeguard-8b",
            Some(GuardFormat::KananaSafeguard),
        ),
        (
            "kakaocorp/kanana-safeguard-siren-8b",
            Some(GuardFormat::KananaSafeguard),
        ),
        (
            "KAKAOCORP/KANANA-SAFEGUARD-PROMPT-2.1B",
            Some(GuardFormat::KananaSafeguard),
        ),
        ("Qwen/Qwen3Guard-Gen-0.6B", Some(GuardFormat::Qwen3Guard)),
        ("qwen3guard-gen-8b-q8_0.gguf", Some(GuardFormat::Qwen3Guard)),
        ("Qwen/Qwen3Guard-Stream-4B", None),
        ("google/shieldgemma-2b", Some(GuardFormat::ShieldGemma)),
        ("google/shieldgemma-27b", Some(GuardFormat::ShieldGemma)),
        ("google/shieldgemma-2-4b-it", None),
        ("meta-llama/LlamaGuard-7b", None),
        ("meta-llama/Meta-Llama-Guard-2-8B", None),
        ("Qwen/Qwen3-8B", None),
        ("", None),
    ] {
        assert_eq!(GuardFormat::detect(model), want, "{model}");
    }
}

#[test]
fn every_native_category_is_mapped_to_existing_taxonomy_names() {
    let tax = anjeon::core::taxonomy::get();
    for f in GuardFormat::all() {
        let m = mapping(*f).unwrap();
        assert!(
            m.format == f.name()
                || (*f == GuardFormat::LlamaGuard3_1B && m.format == "llama-guard-3"),
            "{}: file says {}",
            f.name(),
            m.format
        );
        for (code, _name) in f.categories() {
            let e = m
                .get(code)
                .unwrap_or_else(|| panic!("{}: {code} not mapped", f.name()));
            assert!(
                !e.basis.trim().is_empty(),
                "{}: {code} has no basis",
                f.name()
            );
            assert!(
                !e.assurai_groups.is_empty(),
                "{}: {code} has no AssurAI group",
                f.name()
            );
            for g in &e.assurai_groups {
                assert!(
                    tax.assurai_groups.contains(g),
                    "{}: {code}: unknown AssurAI group {g:?}",
                    f.name()
                );
            }
            for r in &e.assurai_risks {
                assert!(
                    tax.assurai_risks
                        .iter()
                        .any(|x| &x.code == r && !x.name.is_empty()),
                    "{}: {code}: AssurAI risk {r:?} unknown or unnamed",
                    f.name()
                );
            }
            for k in &e.ksafe_mm {
                assert!(
                    tax.ksafe.iter().any(|x| &x.name == k),
                    "{}: {code}: unknown KSAFE-MM category {k:?}",
                    f.name()
                );
            }
        }
        // No mapping entry for a code the format cannot emit (except the
        // shared LG3 file, which also covers S14 for the 8B).
        for e in &m.entries {
            let known = f.categories().iter().any(|(c, _)| *c == e.native);
            assert!(
                known || *f == GuardFormat::LlamaGuard3_1B,
                "{}: stray entry {}",
                f.name(),
                e.native
            );
        }
        // Every parsed category of a valid output maps.
        let codes: Vec<String> = f.categories().iter().map(|(c, _)| c.to_string()).collect();
        assert!(!m.assurai_groups(&codes).is_empty());
    }
}
