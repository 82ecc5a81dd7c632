//! Benchmarks whose field names vary between releases (AssurAI, KSAFE-MM)
//! and the generic `jsonl` / `csv` formats: a record's fields are mapped onto
//! a sample through a [`FieldMap`]. Unknown fields are kept in metadata.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use regex::Regex;
use serde_json::{Map, Value};

use super::record::Record;
use crate::core::error::{Error, Result};
use crate::core::sample::*;
use crate::core::taxonomy;

/// The benchmark schema a record is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    Assurai,
    KsafeMm,
    Generic,
}

impl Schema {
    fn benchmark(self) -> &'static str {
        match self {
            Schema::Assurai => "assurai",
            Schema::KsafeMm => "ksafe-mm",
            Schema::Generic => "custom",
        }
    }
}

/// Logical field -> names tried in the file, in order. A user mapping
/// (`--field prompt=my_column`) replaces the list for that field.
const DEFAULT_FIELDS: &[(&str, &[&str])] = &[
    ("id", &["id", "item_id", "uid", "qid", "idx"]),
    (
        "prompt",
        &[
            "prompt",
            "question",
            "query",
            "instruction",
            "input",
            "text",
            "user_input",
            "prompt_text",
        ],
    ),
    (
        "media",
        &[
            "media_path",
            "media",
            "image",
            "image_path",
            "video",
            "video_path",
            "audio",
            "audio_path",
            "file_path",
            "file_name",
        ],
    ),
    ("modality", &["modality", "media_type"]),
    (
        "risk",
        &["risk", "risk_code", "risk_factor", "risk_category"],
    ),
    ("category", &["category", "risk_category", "category_name"]),
    ("group", &["risk_group", "group", "domain"]),
    ("prompt_type", &["prompt_type", "type", "query_type"]),
    (
        "expected",
        &["expected", "label", "expected_behavior", "is_harmful"],
    ),
    (
        "strategy",
        &[
            "strategy",
            "jailbreak",
            "jailbreak_type",
            "attack",
            "attack_type",
            "variant",
        ],
    ),
    ("base_id", &["base_id", "source_id", "origin_id"]),
    ("language", &["language", "lang"]),
    (
        "scores",
        &["ref_output_risk_score", "risk_scores", "human_scores"],
    ),
    (
        "refusal_labels",
        &["ref_output_refusal_label", "refusal_labels"],
    ),
    ("subset", &["subset"]),
];

/// User overrides of field names.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct FieldMap(pub BTreeMap<String, String>);

impl FieldMap {
    pub const LOGICAL: &'static [&'static str] = &[
        "id",
        "prompt",
        "media",
        "modality",
        "risk",
        "category",
        "group",
        "prompt_type",
        "expected",
        "strategy",
        "base_id",
        "language",
        "scores",
        "refusal_labels",
        "subset",
    ];

    /// Parse `logical=column` pairs.
    pub fn parse(pairs: &[String]) -> Result<FieldMap> {
        let mut m = BTreeMap::new();
        for p in pairs {
            let (k, v) = p.split_once('=').ok_or_else(|| {
                Error::Usage(format!(
                    "--field {p:?}: expected LOGICAL=COLUMN, e.g. --field prompt=question"
                ))
            })?;
            if !Self::LOGICAL.contains(&k) {
                return Err(Error::Usage(format!(
                    "--field {p:?}: unknown field {k:?}; known: {}",
                    Self::LOGICAL.join(", ")
                )));
            }
            m.insert(k.to_string(), v.to_string());
        }
        Ok(FieldMap(m))
    }

    fn candidates<'a>(&'a self, logical: &str) -> Vec<&'a str> {
        if let Some(v) = self.0.get(logical) {
            return vec![v.as_str()];
        }
        DEFAULT_FIELDS
            .iter()
            .find(|(k, _)| *k == logical)
            .map(|(_, v)| v.to_vec())
            .unwrap_or_default()
    }

    /// The column a logical field resolves to among `columns`.
    pub fn resolve<'a>(&self, logical: &str, columns: &'a BTreeSet<String>) -> Option<&'a String> {
        self.candidates(logical)
            .into_iter()
            .find_map(|c| columns.get(c))
    }
}

/// Check that the columns needed by a schema exist (used for parquet files,
/// whose schema is known before any row is read).
pub fn check_columns(
    schema: Schema,
    fields: &FieldMap,
    columns: &[String],
    path: &Path,
) -> Result<()> {
    let set: BTreeSet<String> = columns.iter().cloned().collect();
    let mut required = vec!["prompt"];
    match schema {
        Schema::Assurai => required.push("risk"),
        Schema::KsafeMm => required.push("category"),
        Schema::Generic => {}
    }
    for logical in required {
        if fields.resolve(logical, &set).is_none() {
            let tried = fields.candidates(logical).join(", ");
            return Err(Error::Parquet {
                path: path.to_path_buf(),
                msg: format!(
                    "missing column for `{logical}` (tried: {tried}); columns are: {}",
                    columns.join(", ")
                ),
                fix: format!(
                    "name the column with --field {logical}=COLUMN (or a [fields] table in --config FILE)"
                ),
            });
        }
    }
    Ok(())
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => {
            let s = s.trim();
            (!s.is_empty()).then(|| s.to_string())
        }
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn sniff_image_mime(b: &[u8]) -> &'static str {
    if b.starts_with(b"\x89PNG") {
        "image/png"
    } else if b.starts_with(&[0xff, 0xd8]) {
        "image/jpeg"
    } else if b.starts_with(b"GIF8") {
        "image/gif"
    } else if b.len() > 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        "image/webp"
    } else if b.starts_with(b"BM") {
        "image/bmp"
    } else {
        "application/octet-stream"
    }
}

/// Turn a media value into media parts. `kind_hint` comes from a modality field.
fn media_from_value(
    rec: &Record,
    v: &Value,
    kind_hint: Option<MediaKind>,
    root: &Path,
    out: &mut Vec<Media>,
) -> Result<()> {
    match v {
        Value::Null => Ok(()),
        Value::String(s) if s.trim().is_empty() => Ok(()),
        Value::String(s) => {
            let rel = Path::new(s.trim());
            let by_ext = MediaKind::from_extension(rel);
            let kind = kind_hint.or(by_ext.map(|k| k.0)).ok_or_else(|| {
                Error::input(
                    rec.loc.clone(),
                    format!("cannot tell whether media {s:?} is an image, audio or video"),
                    "give the file a known extension or add a `modality` field",
                )
            })?;
            let mime = by_ext
                .map(|k| k.1)
                .unwrap_or("application/octet-stream")
                .to_string();
            out.push(Media {
                kind,
                mime,
                source: MediaSource::Path(root.join(rel)),
            });
            Ok(())
        }
        Value::Array(items) => {
            for it in items {
                media_from_value(rec, it, kind_hint, root, out)?;
            }
            Ok(())
        }
        Value::Object(o) => {
            // {"$blob": k} directly, or a Hugging Face {bytes, path} struct.
            let blob = rec
                .blob_of(v)
                .or_else(|| o.get("bytes").and_then(|b| rec.blob_of(b)));
            let name = o.get("path").and_then(as_text).unwrap_or_default();
            match blob {
                Some(data) if !data.is_empty() => {
                    let ext_kind = MediaKind::from_extension(Path::new(&name));
                    let kind = kind_hint
                        .or(ext_kind.map(|k| k.0))
                        .unwrap_or(MediaKind::Image);
                    let mime = match kind {
                        MediaKind::Image => sniff_image_mime(&data).to_string(),
                        _ => ext_kind
                            .map(|k| k.1)
                            .unwrap_or("application/octet-stream")
                            .to_string(),
                    };
                    out.push(Media {
                        kind,
                        mime,
                        source: MediaSource::Bytes { data, name },
                    });
                    Ok(())
                }
                _ if !name.is_empty() => {
                    media_from_value(rec, &Value::String(name), kind_hint, root, out)
                }
                _ => Ok(()),
            }
        }
        other => Err(Error::input(
            rec.loc.clone(),
            format!("unexpected media value {other}"),
            "media must be a path, a list of paths or a {bytes, path} struct",
        )),
    }
}

fn candidate_answer_re() -> &'static Regex {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^(?:candidate|response|answer)_?(\d+)(?:_answer)?$").unwrap())
}

fn int_list(v: &Value) -> Vec<Option<i64>> {
    match v {
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_i64()
                    .or_else(|| x.as_str().and_then(|s| s.trim().parse().ok()))
            })
            .collect(),
        Value::String(s) => {
            // "[1, 4, 2, 1]" or "1,4,2,1"
            s.trim_matches(['[', ']'])
                .split(',')
                .map(|x| x.trim().parse().ok())
                .collect()
        }
        _ => vec![],
    }
}

fn str_list(v: &Value) -> Vec<Option<String>> {
    match v {
        Value::Array(a) => a.iter().map(as_text).collect(),
        _ => vec![],
    }
}

/// Map one record onto a sample.
pub fn map_record(
    rec: &Record,
    schema: Schema,
    fields: &FieldMap,
    root: &Path,
    default_lang: &str,
) -> Result<Sample> {
    let columns: BTreeSet<String> = rec.fields.keys().cloned().collect();
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut get = |logical: &str| -> Option<&Value> {
        let col = fields.resolve(logical, &columns)?;
        used.insert(col.clone());
        rec.fields.get(col)
    };

    let id_value = get("id");
    if let Some(v @ (Value::Array(_) | Value::Object(_))) = id_value {
        let what = if v.is_array() { "a list" } else { "an object" };
        return Err(Error::input(
            rec.loc.clone(),
            format!("the item's id is {what} ({v})"),
            "give each item a string or number id (or map another column with --field id=COLUMN)",
        ));
    }
    let id = match id_value.and_then(as_text) {
        Some(id) => id,
        None => {
            // Stable fallback: file stem + row, for data sets without an id column.
            let stem = rec
                .loc
                .file
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("item");
            format!("{stem}-{}", rec.loc.line.unwrap_or(0))
        }
    };
    let loc = rec.loc.clone().with_item(&id);
    let prompt = get("prompt").and_then(as_text);
    let modality_raw = get("modality").and_then(as_text);
    let kind_hint = modality_raw.as_deref().and_then(MediaKind::parse);
    if let Some(m) = &modality_raw {
        if kind_hint.is_none() && !m.eq_ignore_ascii_case("text") {
            return Err(Error::input(
                loc,
                format!("unknown modality {m:?}"),
                "use text, image, audio or video",
            ));
        }
    }
    let mut media = Vec::new();
    if let Some(v) = get("media") {
        media_from_value(rec, v, kind_hint, root, &mut media).map_err(|e| match e {
            Error::Input { msg, fix, .. } => Error::input(loc.clone(), msg, fix),
            e => e,
        })?;
    }
    if let Some(k) = kind_hint {
        if media.is_empty() {
            return Err(Error::input(
                loc,
                format!("modality is {} but the item has no media", k.as_str()),
                "add the media path (see --field media=COLUMN)",
            ));
        }
    }
    if prompt.is_none() && media.is_empty() {
        return Err(Error::input(
            loc,
            "item has neither prompt text nor media",
            "map the prompt column with --field prompt=COLUMN",
        ));
    }

    let group = get("group").and_then(as_text);
    let category = match schema {
        Schema::Assurai => {
            let raw = get("risk").and_then(as_text).ok_or_else(|| {
                Error::input(
                    loc.clone(),
                    "item has no risk factor",
                    "AssurAI items need `risk` (R01..R35); map it with --field risk=COLUMN",
                )
            })?;
            Some(
                taxonomy::assurai_category(&raw, group.as_deref()).ok_or_else(|| {
                    Error::input(
                        loc.clone(),
                        format!("unknown risk code {raw:?}"),
                        "AssurAI risk codes are R01..R35, optionally followed by the name",
                    )
                })?,
            )
        }
        Schema::KsafeMm => {
            let raw = get("category").and_then(as_text).ok_or_else(|| {
                Error::input(
                    loc.clone(),
                    "item has no category",
                    "KSAFE-MM items need `category`; map it with --field category=COLUMN",
                )
            })?;
            Some(taxonomy::ksafe_category(&raw).ok_or_else(|| {
                let names: Vec<_> = taxonomy::get()
                    .ksafe
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect();
                Error::input(
                    loc.clone(),
                    format!("unknown KSAFE-MM category {raw:?}"),
                    format!("use one of: {}", names.join(", ")),
                )
            })?)
        }
        Schema::Generic => {
            let raw = get("risk").or_else(|| get("category")).and_then(as_text);
            raw.map(|r| {
                taxonomy::assurai_category(&r, group.as_deref())
                    .or_else(|| taxonomy::ksafe_category(&r))
                    .unwrap_or(Category {
                        taxonomy: "custom".into(),
                        code: r.clone(),
                        name: r,
                        group: group.clone().unwrap_or_default(),
                    })
            })
        }
    };

    let expected = match get("expected") {
        None | Some(Value::Null) => Expected::Harmful,
        Some(Value::Bool(b)) => {
            if *b {
                Expected::Harmful
            } else {
                Expected::Benign
            }
        }
        Some(v) => {
            let s = as_text(v).unwrap_or_default();
            Expected::parse(&s).ok_or_else(|| {
                Error::input(
                    loc.clone(),
                    format!("unknown expected behaviour {s:?}"),
                    "use harmful or benign (also: unsafe/safe)",
                )
            })?
        }
    };
    let variant = match get("strategy").and_then(as_text) {
        Some(s)
            if !["none", "plain", "original", "vanilla", "base"]
                .contains(&s.to_ascii_lowercase().as_str()) =>
        {
            let base_id = get("base_id").and_then(as_text).unwrap_or_default();
            Variant::Attack {
                strategy: s,
                base_id,
            }
        }
        _ => Variant::Plain,
    };
    let prompt_type = get("prompt_type").and_then(as_text);
    let language = get("language")
        .and_then(as_text)
        .unwrap_or_else(|| default_lang.to_string());
    let scores = get("scores").map(int_list).unwrap_or_default();
    let refusal_labels = get("refusal_labels").map(str_list).unwrap_or_default();

    // Candidate answers with their human labels.
    let mut answers: Vec<(u32, String, String)> = rec
        .fields
        .iter()
        .filter_map(|(k, v)| {
            let c = candidate_answer_re().captures(k)?;
            Some((c[1].parse().ok()?, k.clone(), as_text(v)?))
        })
        .collect();
    answers.sort();
    let mut references = Vec::new();
    for (n, key, text) in answers {
        let Some(idx) = (n as usize).checked_sub(1) else {
            return Err(Error::input(
                loc,
                format!("candidate answer field {key:?}: candidates are numbered from 1"),
                "number the candidate answer columns from 1 (candidate_1_…)",
            ));
        };
        used.insert(key);
        let risk_score = match scores.get(idx).copied().flatten() {
            Some(s) if (1..=5).contains(&s) => Some(s as u8),
            Some(s) => {
                return Err(Error::input(
                    loc,
                    format!("risk score {s} of candidate {n} is outside 1..5"),
                    "human risk scores are integers 1-5",
                ))
            }
            None => None,
        };
        let refusal = match refusal_labels.get(idx).cloned().flatten() {
            Some(l) => Some(RefusalClass::parse(&l).ok_or_else(|| {
                Error::input(
                    loc.clone(),
                    format!("unknown refusal label {l:?}"),
                    "use compliance, refusal or partial",
                )
            })?),
            None => None,
        };
        references.push(ReferenceAnswer {
            model: format!("candidate_{n}"),
            text,
            labels: HumanLabels {
                risk_score,
                refusal,
                harmful: risk_score.map(|s| s >= 4),
            },
        });
    }

    let metadata: Map<String, Value> = rec
        .fields
        .iter()
        .filter(|(k, _)| !used.contains(*k))
        .filter(|(_, v)| rec.blob_of(v).is_none())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    Ok(Sample {
        id,
        benchmark: schema.benchmark().to_string(),
        language,
        category,
        prompt_type,
        variant,
        expected,
        turns: Sample::user_turn(prompt, media),
        references,
        metadata,
        origin: rec.loc.clone(),
    })
}
