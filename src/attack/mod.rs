//! Attack variants: jailbreak-style rewrites of benchmark items (code
//! wrapping, role-play, refusal suppression, prefix injection, payload
//! splitting, code-switching, base64, jamo) and typographic images
//! (FigStep-style numbered list, MM-SafetyBench-style key phrase).
//!
//! Each strategy is a versioned template file in `data/attacks/` (embedded in
//! the binary) with its source, Korean and English text and a `{request}`
//! placeholder. A variant of item `ID` is a new [`Sample`] with id
//! `ID~STRATEGY`, `Variant::Attack { strategy, base_id: ID }`, the same
//! category, language and expected behaviour, and no reference answers. Every
//! choice (which program language, which persona, where to cut the payload)
//! comes from the seed and the item id, so variants are reproducible and do
//! not depend on the order of items.

pub mod encode;
pub mod render;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::core::error::{Error, Location, Result};
use crate::core::sample::{Media, MediaKind, MediaSource, Part, Role, Sample, Variant};

/// The bundled templates: (file, contents), in `attacks list` order.
pub const BUILTIN: [(&str, &str); 10] = [
    (
        "data/attacks/program-execution.toml",
        include_str!("../../data/attacks/program-execution.toml"),
    ),
    (
        "data/attacks/role-play.toml",
        include_str!("../../data/attacks/role-play.toml"),
    ),
    (
        "data/attacks/refusal-suppression.toml",
        include_str!("../../data/attacks/refusal-suppression.toml"),
    ),
    (
        "data/attacks/prefix-injection.toml",
        include_str!("../../data/attacks/prefix-injection.toml"),
    ),
    (
        "data/attacks/payload-splitting.toml",
        include_str!("../../data/attacks/payload-splitting.toml"),
    ),
    (
        "data/attacks/code-switching.toml",
        include_str!("../../data/attacks/code-switching.toml"),
    ),
    (
        "data/attacks/base64.toml",
        include_str!("../../data/attacks/base64.toml"),
    ),
    (
        "data/attacks/jamo.toml",
        include_str!("../../data/attacks/jamo.toml"),
    ),
    (
        "data/attacks/typographic.toml",
        include_str!("../../data/attacks/typographic.toml"),
    ),
    (
        "data/attacks/key-phrase.toml",
        include_str!("../../data/attacks/key-phrase.toml"),
    ),
];

/// The placeholder every template must contain (in the prompt text for text
/// strategies, in the image text for image strategies).
pub const PLACEHOLDER: &str = "{request}";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    Text,
    Image,
}

impl Modality {
    pub fn as_str(self) -> &'static str {
        match self {
            Modality::Text => "text",
            Modality::Image => "image",
        }
    }
}

/// How the request is turned into what replaces `{request}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Transform {
    /// The request as is.
    #[default]
    None,
    /// Escaped for a double-quoted string literal (Python, C++, Go).
    StringLiteral,
    /// Cut into pieces assigned to `a`, `b`, `c` (`a = "…"` lines).
    Split,
    Base64,
    Jamo,
    /// Glossary terms swapped into the other language.
    CodeSwitch,
    /// Cut down to its key phrase (or the item's `key_phrase` metadata).
    KeyPhrase,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    name: String,
    version: u32,
    modality: Modality,
    source: String,
    description: String,
    #[serde(default)]
    transform: Transform,
    forms: Vec<Form>,
    #[serde(default)]
    glossary: BTreeMap<String, String>,
    #[serde(default)]
    key_phrase: encode::KeyPhraseRules,
}

/// One wording of a strategy (a program language, a persona, ...).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Form {
    pub id: String,
    /// The prompt for Korean items.
    pub ko: String,
    /// The prompt for other items.
    pub en: String,
    /// The text drawn into the image (image strategies).
    #[serde(default)]
    pub image_ko: Option<String>,
    #[serde(default)]
    pub image_en: Option<String>,
}

/// A parsed, checked strategy template.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub version: u32,
    pub modality: Modality,
    pub source: String,
    pub description: String,
    pub transform: Transform,
    pub forms: Vec<Form>,
    /// Korean term → English term (code-switching).
    pub glossary: Vec<(String, String)>,
    pub key_phrase: encode::KeyPhraseRules,
    /// The file it was read from.
    pub file: String,
    pub sha256: String,
}

impl Template {
    /// Parse and check a template; every error names `file`.
    pub fn parse(file: &str, text: &str) -> Result<Template> {
        let loc = || Location::file(file);
        let t: TemplateFile = toml::from_str(text).map_err(|e| {
            Error::input(
                loc(),
                format!("invalid attack template: {}", e.message()),
                "fix the TOML (see data/attacks/*.toml for the fields)",
            )
        })?;
        if t.name.trim().is_empty() || t.source.trim().is_empty() || t.version == 0 {
            return Err(Error::input(
                loc(),
                "attack template needs a name, a source and a version >= 1",
                "set `name`, `source` and `version`",
            ));
        }
        if t.forms.is_empty() {
            return Err(Error::input(
                loc(),
                format!("attack template {} has no [[forms]]", t.name),
                "add at least one [[forms]] table with id, ko and en",
            ));
        }
        for f in &t.forms {
            let texts: Vec<(&str, Option<&String>)> = match t.modality {
                Modality::Text => vec![("ko", Some(&f.ko)), ("en", Some(&f.en))],
                Modality::Image => vec![
                    ("image_ko", f.image_ko.as_ref()),
                    ("image_en", f.image_en.as_ref()),
                ],
            };
            for (field, s) in texts {
                let Some(s) = s else {
                    return Err(Error::input(
                        loc(),
                        format!(
                            "attack template {} form {:?} has no `{field}` (the text drawn into the image)",
                            t.name, f.id
                        ),
                        format!("add `{field}` with the {PLACEHOLDER} placeholder"),
                    ));
                };
                if !s.contains(PLACEHOLDER) {
                    return Err(Error::input(
                        loc(),
                        format!(
                            "attack template {} form {:?}: `{field}` has no {PLACEHOLDER} placeholder",
                            t.name, f.id
                        ),
                        format!("put {PLACEHOLDER} where the request goes in `{field}`"),
                    ));
                }
            }
            if t.modality == Modality::Text && (f.image_ko.is_some() || f.image_en.is_some()) {
                return Err(Error::input(
                    loc(),
                    format!(
                        "attack template {} form {:?}: image_ko/image_en need modality = \"image\"",
                        t.name, f.id
                    ),
                    "set modality = \"image\" or remove the image texts",
                ));
            }
        }
        if t.transform == Transform::CodeSwitch && t.glossary.is_empty() {
            return Err(Error::input(
                loc(),
                format!(
                    "attack template {} (code-switch) has an empty [glossary]",
                    t.name
                ),
                "add Korean = English term pairs under [glossary]",
            ));
        }
        Ok(Template {
            name: t.name,
            version: t.version,
            modality: t.modality,
            source: t.source,
            description: t.description,
            transform: t.transform,
            forms: t.forms,
            glossary: t.glossary.into_iter().collect(),
            key_phrase: t.key_phrase,
            file: file.to_string(),
            sha256: crate::core::hash::sha256_hex(text.as_bytes()),
        })
    }

    /// What replaces `{request}` for this item.
    fn payload(
        &self,
        sample: &Sample,
        request: &str,
        korean: bool,
        rng: &mut encode::Rng,
    ) -> String {
        match self.transform {
            Transform::None => request.to_string(),
            Transform::StringLiteral => encode::escape_literal(request),
            Transform::Split => {
                let n = request.chars().count();
                let parts = if n >= 12 { 3 } else { 2 };
                encode::split_assignments(&encode::split_pieces(request, parts, rng))
            }
            Transform::Base64 => encode::base64_encode(request),
            Transform::Jamo => encode::jamo_decompose(request),
            Transform::CodeSwitch => encode::code_switch(request, &self.glossary, korean),
            Transform::KeyPhrase => ["key_phrase", "keyphrase", "Key Phrase", "key phrase"]
                .iter()
                .find_map(|k| sample.metadata.get(*k).and_then(|v| v.as_str()))
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| encode::key_phrase(request, &self.key_phrase, korean)),
        }
    }

    /// The variant of one item: `None` when the strategy does not apply (an
    /// attack variant already, no user text, or an image strategy on an item
    /// that has media of its own); `Some(Err)` when it applies but fails (the
    /// image text is too long or has characters the font lacks).
    pub fn apply(&self, sample: &Sample, seed: u64) -> Option<Result<Sample>> {
        if sample.variant != Variant::Plain {
            return None;
        }
        if self.modality == Modality::Image && sample.media().next().is_some() {
            return None;
        }
        let turn_ix = sample.turns.iter().rposition(|t| t.role == Role::User)?;
        let request: Vec<&str> = sample.turns[turn_ix]
            .parts
            .iter()
            .filter_map(|p| match p {
                Part::Text(t) => Some(t.as_str()),
                Part::Media(_) => None,
            })
            .collect();
        let request = request.join("\n");
        let request = request.trim();
        if request.is_empty() {
            return None;
        }
        let id = variant_id(&sample.id, &self.name);
        let korean = sample.language.to_ascii_lowercase().starts_with("ko");
        let mut rng = encode::Rng::new(crate::core::stats::seed_of(&id, seed));
        let form = &self.forms[rng.below(self.forms.len())];
        let payload = self.payload(sample, request, korean, &mut rng);
        let prompt = if korean { &form.ko } else { &form.en };
        let mut metadata = sample.metadata.clone();
        let mut meta = |k: &str, v: serde_json::Value| {
            metadata.insert(k.to_string(), v);
        };
        meta("attack_template", self.file.clone().into());
        meta("attack_version", self.version.into());
        meta("attack_form", form.id.clone().into());
        let mut parts: Vec<Part> = Vec::new();
        match self.modality {
            Modality::Text => {
                // Media of the item stay with the rewritten text.
                parts.extend(
                    sample.turns[turn_ix]
                        .parts
                        .iter()
                        .filter(|p| matches!(p, Part::Media(_)))
                        .cloned(),
                );
                parts.push(Part::Text(prompt.replace(PLACEHOLDER, &payload)));
            }
            Modality::Image => {
                let image = if korean {
                    &form.image_ko
                } else {
                    &form.image_en
                };
                let image_text = image
                    .as_deref()
                    .expect("checked at parse")
                    .replace(PLACEHOLDER, &payload);
                let png = match render::render_png(&image_text, &render::Canvas::SQUARE) {
                    Ok(p) => p,
                    Err(e) => {
                        let fix = match e {
                            render::RenderError::MissingGlyphs(_) => {
                                "remove or replace those characters in the item, or use a text strategy for it"
                            }
                            render::RenderError::TooLong { .. } => {
                                "shorten the request, or use a text strategy for this item"
                            }
                            _ => "report this as a bug",
                        };
                        return Some(Err(Error::input(
                            sample.origin.clone().with_item(&id),
                            format!("attack {}: {e}", self.name),
                            fix,
                        )));
                    }
                };
                meta("attack_image_text", image_text.into());
                meta("attack_font", render::FONT_FILE.into());
                parts.push(Part::Media(Media {
                    kind: MediaKind::Image,
                    mime: "image/png".into(),
                    source: MediaSource::Bytes {
                        data: Arc::from(png),
                        name: format!("{id}.png"),
                    },
                }));
                parts.push(Part::Text(prompt.clone()));
            }
        }
        let mut turns = sample.turns.clone();
        turns[turn_ix].parts = parts;
        Some(Ok(Sample {
            id,
            benchmark: sample.benchmark.clone(),
            language: sample.language.clone(),
            category: sample.category.clone(),
            prompt_type: sample.prompt_type.clone(),
            variant: Variant::Attack {
                strategy: self.name.clone(),
                base_id: sample.id.clone(),
            },
            expected: sample.expected,
            turns,
            references: Vec::new(),
            metadata,
            origin: sample.origin.clone(),
        }))
    }
}

/// The id of an item's variant: `BASE~STRATEGY`.
pub fn variant_id(base_id: &str, strategy: &str) -> String {
    format!("{base_id}~{strategy}")
}

/// The request a judge reads for `sample`: for a variant made here (it has
/// `attack_template` metadata) the base item's prompt, when the base is
/// known; otherwise the sample's own prompt.
pub fn judged_request<S: std::hash::BuildHasher>(
    sample: &Sample,
    by_id: &std::collections::HashMap<&str, &Sample, S>,
) -> String {
    if let (Variant::Attack { base_id, .. }, true) = (
        &sample.variant,
        sample.metadata.contains_key("attack_template"),
    ) {
        if let Some(base) = by_id.get(base_id.as_str()) {
            return base.prompt_text();
        }
    }
    sample.prompt_text()
}

/// The bundled templates, parsed and checked.
pub fn builtin() -> Result<Vec<Template>> {
    BUILTIN
        .iter()
        .map(|(file, text)| Template::parse(file, text))
        .collect()
}

/// The templates named in `list` (comma-separated, in that order; `all` for
/// every bundled one). Unknown or repeated names are usage errors.
pub fn select(list: &str) -> Result<Vec<Template>> {
    let all = builtin()?;
    let names: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if names.is_empty() {
        return Err(Error::Usage(
            "--attacks: no strategy given\n  fix: name strategies (see `anjeon attacks list`) or `all`"
                .into(),
        ));
    }
    if names == ["all"] {
        return Ok(all);
    }
    let mut out: Vec<Template> = Vec::new();
    for n in names {
        let Some(t) = all.iter().find(|t| t.name == n) else {
            return Err(Error::Usage(format!(
                "unknown attack strategy {n:?}\n  fix: use `all` or some of: {}",
                all.iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        if out.iter().any(|o| o.name == n) {
            return Err(Error::Usage(format!(
                "attack strategy {n:?} is named twice\n  fix: name each strategy once"
            )));
        }
        out.push(t.clone());
    }
    Ok(out)
}

/// A variant that could not be made: where its base item came from, the
/// variant's id and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Unmade {
    pub location: String,
    pub id: String,
    pub reason: String,
}

/// The variants of `samples` under each template, strategy by strategy (in
/// the templates' order, items in their order), and the variants that could
/// not be made.
pub fn variants(
    samples: &[&Sample],
    templates: &[Template],
    seed: u64,
) -> (Vec<Sample>, Vec<Unmade>) {
    let mut out = Vec::new();
    let mut failures = Vec::new();
    for t in templates {
        for s in samples {
            match t.apply(s, seed) {
                None => {}
                Some(Ok(v)) => out.push(v),
                Some(Err(e)) => {
                    let reason = match &e {
                        Error::Input { msg, fix, .. } => format!("{msg} (fix: {fix})"),
                        other => other.to_string(),
                    };
                    failures.push(Unmade {
                        location: s.origin.to_string(),
                        id: variant_id(&s.id, &t.name),
                        reason,
                    });
                }
            }
        }
    }
    (out, failures)
}

/// `anjeon attacks list`: one line per strategy (or JSON).
pub fn list(json: bool) -> Result<String> {
    let all = builtin()?;
    if json {
        let v: Vec<serde_json::Value> = all
            .iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name, "version": t.version, "modality": t.modality.as_str(),
                    "forms": t.forms.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(),
                    "description": t.description, "source": t.source,
                    "file": t.file, "sha256": t.sha256,
                })
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&v).expect("serialise list") + "\n");
    }
    let mut out = format!(
        "{:<20} {:>7} {:<8} {}\n",
        "strategy", "version", "modality", "source"
    );
    for t in &all {
        out.push_str(&format!(
            "{:<20} {:>7} {:<8} {}\n",
            t.name,
            t.version,
            t.modality.as_str(),
            t.source
        ));
    }
    Ok(out)
}
