//! Data sets: reading benchmark files into [`Sample`]s, format detection,
//! validation and statistics.

pub mod mapped;
pub mod parquet_pages;
pub mod public;
pub mod record;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::core::error::{Error, Location, Result};
pub use crate::core::limits::Limits;
use crate::core::sample::{MediaKind, MediaSource, Sample};
pub use mapped::{FieldMap, Schema};

/// The formats anjeon reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Assurai,
    KsafeMm,
    Xstest,
    Multijail,
    Kosbi,
    Square,
    Figstep,
    Jsonl,
    Csv,
    /// A folder with a `dataset.toml` listing its parts.
    Manifest,
}

impl Format {
    pub const NAMES: &'static [&'static str] = &[
        "assurai",
        "ksafe-mm",
        "xstest",
        "multijail",
        "kosbi",
        "square",
        "figstep",
        "jsonl",
        "csv",
        "dataset",
    ];

    pub fn parse(s: &str) -> Option<Format> {
        Some(match s.to_ascii_lowercase().as_str() {
            "assurai" => Format::Assurai,
            "ksafe-mm" | "ksafe_mm" | "ksafemm" | "ksafe" => Format::KsafeMm,
            "xstest" => Format::Xstest,
            "multijail" => Format::Multijail,
            "kosbi" => Format::Kosbi,
            "square" => Format::Square,
            "figstep" => Format::Figstep,
            "jsonl" => Format::Jsonl,
            "csv" => Format::Csv,
            "dataset" | "manifest" => Format::Manifest,
            _ => return None,
        })
    }
}

/// Options that change how files are read.
#[derive(Debug, Clone, Serialize)]
pub struct ReadOptions {
    /// Language column for multi-language sets (MultiJail).
    pub lang: String,
    pub fields: FieldMap,
    /// The run's limits: a parquet column chunk's decompressed size (from
    /// its footer, checked before it is read), and the image checks of
    /// validation (the media stage's own).
    pub limits: Limits,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            lang: "ko".into(),
            fields: FieldMap::default(),
            limits: Limits::default(),
        }
    }
}

/// How to read a data set: the language, a field mapping (from a config
/// file and/or pairs) and the run's limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadSpec {
    /// Language column for multi-language sets (MultiJail: ko, en, zh, ...).
    pub lang: Option<String>,
    /// Map a logical field to a column: --field prompt=question (repeatable;
    /// overrides the config file).
    pub fields: Vec<String>,
    /// TOML config with `lang = "ko"` and a `[fields]` table (logical = "column").
    pub config: Option<PathBuf>,
    /// Resource limits (decompression, pixels, frames, audio, context).
    #[serde(default)]
    pub limits: Limits,
}

impl Default for ReadSpec {
    fn default() -> Self {
        ReadSpec {
            lang: None,
            fields: Vec::new(),
            config: None,
            limits: Limits::default(),
        }
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReadConfig {
    lang: Option<String>,
    #[serde(default)]
    fields: BTreeMap<String, String>,
}

impl ReadSpec {
    pub fn options(&self) -> Result<ReadOptions> {
        let cfg: ReadConfig = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
                toml::from_str(&text).map_err(|e| Error::input(Location::file(p), format!("bad config: {e}"), "the config holds `lang = \"ko\"` and a [fields] table like `prompt = \"question\"`"))?
            }
            None => ReadConfig::default(),
        };
        let mut pairs: Vec<String> = cfg.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.extend(self.fields.iter().cloned());
        let lang = self
            .lang
            .clone()
            .or(cfg.lang)
            .unwrap_or_else(|| "ko".into());
        Ok(ReadOptions {
            lang,
            fields: FieldMap::parse(&pairs)?,
            limits: self.limits.clone(),
        })
    }
}

/// A problem found while reading or validating.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub location: String,
    pub message: String,
}

impl Problem {
    fn from_error(e: &Error) -> Problem {
        match e {
            Error::Input { loc, msg, fix } => Problem {
                location: loc.to_string(),
                message: format!("{msg} (fix: {fix})"),
            },
            other => Problem {
                location: String::new(),
                message: other.to_string(),
            },
        }
    }
}

/// A loaded data set.
#[derive(Debug)]
pub struct Dataset {
    /// What the user passed (`FORMAT:PATH` or `PATH`).
    pub spec: String,
    /// Media paths must stay inside this folder.
    pub root: PathBuf,
    pub files: Vec<PathBuf>,
    pub samples: Vec<Sample>,
    /// Items that could not be read (each names file and line). The others load.
    pub problems: Vec<Problem>,
    /// sha256 over the data files' names and bytes.
    pub hash: String,
}

#[derive(serde::Deserialize)]
struct ManifestFile {
    #[serde(default)]
    name: String,
    part: Vec<ManifestPart>,
}
#[derive(serde::Deserialize)]
struct ManifestPart {
    format: String,
    path: String,
}

/// Split `FORMAT:PATH`. A prefix that is not a known format is part of the path.
pub fn parse_spec(spec: &str) -> Result<(Option<Format>, PathBuf)> {
    if let Some((f, p)) = spec.split_once(':') {
        if let Some(fmt) = Format::parse(f) {
            return Ok((Some(fmt), PathBuf::from(p)));
        }
        if !Path::new(spec).exists()
            && f.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && f.len() > 1
        {
            return Err(Error::Usage(format!(
                "unknown data set format {f:?} in {spec:?}; known: {}\n  fix: write FORMAT:PATH with one of the known formats, or the path alone to detect the format",
                Format::NAMES.join(", ")
            )));
        }
    }
    Ok((None, PathBuf::from(spec)))
}

/// Guess a file's format from its name and contents.
pub fn detect(path: &Path) -> Result<Format> {
    if path.is_dir() {
        if path.join("dataset.toml").exists() {
            return Ok(Format::Manifest);
        }
        return Err(Error::input(
            Location::file(path),
            "folder has no dataset.toml",
            "point at a data file, or add a dataset.toml listing the parts",
        ));
    }
    if !path.exists() {
        return Err(Error::input(
            Location::file(path),
            "no such file or folder",
            "check the path",
        ));
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let unknown = || {
        Error::input(
            Location::file(path),
            "cannot tell the data set format",
            format!(
                "prefix the path with a format, e.g. jsonl:{}; formats: {}",
                path.display(),
                Format::NAMES.join(", ")
            ),
        )
    };
    match ext.as_str() {
        "parquet" => {
            let cols = record::parquet_columns(path)?;
            let has = |c: &str| cols.iter().any(|x| x == c);
            // Each format's required column decides first (KSAFE-MM files
            // may carry reference risk scores too); then the optional ones.
            if has("risk") {
                Ok(Format::Assurai)
            } else if has("category") || has("image") {
                // KSAFE-MM: image + text; missing columns are reported by the reader.
                Ok(Format::KsafeMm)
            } else if has("ref_output_risk_score") {
                Ok(Format::Assurai)
            } else {
                Err(Error::input(
                    Location::file(path),
                    format!("cannot tell the data set format from the columns ({})", cols.join(", ")),
                    format!("prefix the path with a format, e.g. assurai:{} or ksafe-mm:{}, and map columns with --field", path.display(), path.display()),
                ))
            }
        }
        "jsonl" | "ndjson" => {
            // The first non-empty line decides; a line that is not UTF-8 is
            // the reader's to report, with its number.
            let bytes = crate::core::error::read_file(path)?;
            let text = String::from_utf8_lossy(&bytes);
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            let v: serde_json::Value =
                serde_json::from_str(first.trim_start_matches('\u{feff}')).unwrap_or_default();
            let has = |k: &str| v.get(k).is_some();
            Ok(if has("risk") || has("ref_output_risk_score") {
                Format::Assurai
            } else {
                Format::Jsonl
            })
        }
        "json" => {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                Error::input(
                    Location::file(path),
                    format!("malformed JSON: {e}"),
                    "fix the file",
                )
            })?;
            let first = v.get(0).cloned().unwrap_or_default();
            let has = |k: &str| first.get(k).is_some();
            if has("sentence_label") && has("context") {
                Ok(Format::Kosbi)
            } else if has("question") && (has("sensitive?") || has("acceptable?")) {
                Ok(Format::Square)
            } else {
                Err(unknown())
            }
        }
        "csv" => {
            let mut r = csv::Reader::from_path(path)
                .map_err(|e| Error::input(Location::file(path), e.to_string(), "check the file"))?;
            let h: Vec<String> = r
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|s| s.trim_start_matches('\u{feff}').to_string())
                        .collect()
                })
                .unwrap_or_default();
            let has = |k: &str| h.iter().any(|x| x == k);
            Ok(if has("focus") && has("label") && has("prompt") {
                Format::Xstest
            } else if has("ko") && has("en") && has("tags") {
                Format::Multijail
            } else if (has("category_id") && has("task_id")) || (h.len() == 1 && has("sentence")) {
                Format::Figstep
            } else {
                Format::Csv
            })
        }
        _ => Err(unknown()),
    }
}

fn hash_files(files: &[PathBuf], root: &Path) -> Result<String> {
    let mut h = Sha256::new();
    for f in files {
        let rel = f.strip_prefix(root).unwrap_or(f);
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(crate::core::error::read_file(f)?);
    }
    Ok(hex::encode(h.finalize()))
}

fn read_part(
    fmt: Format,
    path: &Path,
    opts: &ReadOptions,
    samples: &mut Vec<Sample>,
    bad: &mut Vec<Error>,
) -> Result<()> {
    let root = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let records = match fmt {
        Format::Assurai | Format::KsafeMm | Format::Jsonl => {
            let is_parquet = path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
            if is_parquet {
                let schema = match fmt {
                    Format::Assurai => Schema::Assurai,
                    Format::KsafeMm => Schema::KsafeMm,
                    _ => Schema::Generic,
                };
                mapped::check_columns(schema, &opts.fields, &record::parquet_columns(path)?, path)?;
                record::read_parquet(path, bad, opts.limits.max_decompressed_mb)?
            } else {
                record::read_jsonl(path, bad, opts.limits.max_record_bytes())?
            }
        }
        Format::Kosbi | Format::Square => record::read_json_array(path)?,
        Format::Xstest | Format::Multijail | Format::Figstep | Format::Csv => {
            record::read_csv(path, bad, opts.limits.max_record_bytes())?
        }
        Format::Manifest => unreachable!("manifests are expanded by load()"),
    };
    for rec in &records {
        let r = match fmt {
            Format::Assurai => mapped::map_record(rec, Schema::Assurai, &opts.fields, &root, "ko"),
            Format::KsafeMm => mapped::map_record(rec, Schema::KsafeMm, &opts.fields, &root, "ko"),
            Format::Jsonl | Format::Csv => {
                mapped::map_record(rec, Schema::Generic, &opts.fields, &root, "und")
            }
            Format::Xstest => public::xstest(rec),
            Format::Multijail => public::multijail(rec, &opts.lang),
            Format::Kosbi => public::kosbi(rec),
            Format::Square => public::square(rec),
            Format::Figstep => public::figstep(rec, &root),
            Format::Manifest => unreachable!(),
        };
        match r {
            Ok(mut s) => {
                if s.origin.item.is_none() {
                    s.origin.item = Some(s.id.clone());
                }
                samples.push(s)
            }
            Err(e @ Error::Usage(_)) => return Err(e),
            Err(e) => bad.push(e),
        }
    }
    Ok(())
}

/// Load a data set. Items that cannot be read are listed in `problems` and
/// the others are kept; a file that cannot be read at all is an error.
pub fn load(spec: &str, opts: &ReadOptions) -> Result<Dataset> {
    let (fmt, path) = parse_spec(spec)?;
    let fmt = match fmt {
        Some(f) => f,
        None => detect(&path)?,
    };
    let mut parts: Vec<(Format, PathBuf)> = Vec::new();
    let root;
    if fmt == Format::Manifest || path.is_dir() {
        let mf = if path.is_dir() {
            path.join("dataset.toml")
        } else {
            path.clone()
        };
        root = folder_of(&mf);
        let text = std::fs::read_to_string(&mf).map_err(|e| Error::io(&mf, e))?;
        let m: ManifestFile = toml::from_str(&text).map_err(|e| {
            Error::input(
                Location::file(&mf),
                format!("bad dataset.toml: {e}"),
                "see data/sample/dataset.toml for the layout",
            )
        })?;
        let _ = m.name;
        for p in m.part {
            let f = Format::parse(&p.format)
                .filter(|f| *f != Format::Manifest)
                .ok_or_else(|| {
                    Error::input(
                        Location::file(&mf),
                        format!("unknown part format {:?}", p.format),
                        format!("formats: {}", Format::NAMES.join(", ")),
                    )
                })?;
            parts.push((f, part_inside(&root, &mf, Path::new(&p.path))?));
        }
    } else {
        root = folder_of(&path);
        parts.push((fmt, path.clone()));
    }
    let mut samples = Vec::new();
    let mut bad = Vec::new();
    for (f, p) in &parts {
        read_part(*f, p, opts, &mut samples, &mut bad)?;
    }
    // Duplicate ids: the first one is kept.
    let mut seen: HashMap<String, Location> = HashMap::new();
    let mut kept = Vec::with_capacity(samples.len());
    for s in samples {
        if let Some(first) = seen.get(&s.id) {
            let first = Location {
                item: None,
                ..first.clone()
            };
            bad.push(Error::input(
                s.origin.clone(),
                format!("duplicate id {:?}: the first, at {first}, is kept", s.id),
                "give every item a unique id",
            ));
        } else {
            seen.insert(s.id.clone(), s.origin.clone());
            kept.push(s);
        }
    }
    if kept.is_empty() && bad.is_empty() {
        return Err(Error::input(
            Location::file(&path),
            "data set has no items",
            "point at a file that holds items",
        ));
    }
    let files: Vec<PathBuf> = parts.into_iter().map(|(_, p)| p).collect();
    let hash = hash_files(&files, &root)?;
    Ok(Dataset {
        spec: spec.to_string(),
        root,
        files,
        samples: kept,
        problems: bad.iter().map(Problem::from_error).collect(),
        hash,
    })
}

/// The folder a data file sits in, as given: a bare file name sits in `.`,
/// never in the empty path (whose canonical form fails, and against which
/// every path would count as inside).
fn folder_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A `dataset.toml` part, which must be a regular file inside the data
/// set's folder after symlinks are resolved.
fn part_inside(root: &Path, manifest: &Path, part: &Path) -> Result<PathBuf> {
    let root_c = root.canonicalize().map_err(|e| Error::io(root, e))?;
    let joined = root.join(part);
    let canon = joined.canonicalize().map_err(|e| Error::io(&joined, e))?;
    if !canon.starts_with(&root_c) {
        return Err(Error::input(
            Location::file(manifest),
            format!(
                "part {} resolves to {}, outside the data set's folder {}",
                part.display(),
                canon.display(),
                root_c.display()
            ),
            "keep every part inside the folder that holds dataset.toml",
        ));
    }
    if let Some(kind) = not_a_regular_file(&canon) {
        return Err(Error::input(
            Location::file(manifest),
            format!("part {} is {kind}, not a regular file", part.display()),
            "point the part at a data file",
        ));
    }
    Ok(joined)
}

/// What a path is when it is not a regular file (a FIFO would block a read
/// forever, a device never ends): `None` for a regular file.
fn not_a_regular_file(p: &Path) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let t = match std::fs::metadata(p) {
        Ok(m) => m.file_type(),
        Err(_) => return Some("unreadable"),
    };
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a folder")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_char_device() || t.is_block_device() {
        Some("a device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("a special file")
    }
}

impl Dataset {
    /// The data set's folder, canonical: media must resolve inside it.
    pub fn canonical_root(&self) -> Result<PathBuf> {
        self.root
            .canonicalize()
            .map_err(|e| Error::io(&self.root, e))
    }
}

/// Check every sample's media: exists, stays inside the data set's folder,
/// and (images) decodes. Returns one problem per bad item; read problems
/// from loading come first.
pub fn validate(ds: &Dataset, limits: &Limits) -> Vec<Problem> {
    let mut out = ds.problems.clone();
    let root = match ds.canonical_root() {
        Ok(r) => r,
        Err(e) => {
            out.push(Problem::from_error(&e));
            return out;
        }
    };
    for s in &ds.samples {
        if let Some(msg) = media_problem(s, &root, limits) {
            out.push(Problem {
                location: s.origin.to_string(),
                message: msg,
            });
        }
    }
    out
}

/// The first problem with a sample's media, if any. Used by validation and
/// by runs (the item fails with this reason; the others go on).
pub fn media_problem(s: &Sample, root: &Path, limits: &Limits) -> Option<String> {
    for m in s.media() {
        let bytes = match &m.source {
            MediaSource::Path(p) => {
                let canon = match p.canonicalize() {
                    Ok(c) => c,
                    Err(_) => return Some(format!("media file {} does not exist (fix: correct the path; paths are relative to the data file's folder)", p.display())),
                };
                if !canon.starts_with(root) {
                    return Some(format!("media path {} is outside the data set's folder {} (fix: keep media inside the data set's folder)", p.display(), root.display()));
                }
                if let Some(kind) = not_a_regular_file(&canon) {
                    return Some(format!("media path {} is {kind}, not a regular file (fix: point at an image, audio or video file)", p.display()));
                }
                if m.kind == MediaKind::Video {
                    // FFmpeg reads the file itself.
                    if let Err(e) = check_video(
                        crate::media::VideoSource::Path(&canon),
                        &m.describe(),
                        limits,
                    ) {
                        return Some(format!("video {e}"));
                    }
                    continue;
                }
                match std::fs::read(&canon) {
                    Ok(b) => b.into(),
                    Err(e) => return Some(format!("media file {}: {e}", p.display())),
                }
            }
            MediaSource::Bytes { data, .. } => data.clone(),
        };
        let name = m.describe();
        let problem = match m.kind {
            MediaKind::Image => check_image(&bytes, &name, limits)
                .err()
                .map(|e| format!("image {e}")),
            MediaKind::Audio => check_audio(&bytes, &name, limits)
                .err()
                .map(|e| format!("audio {e}")),
            MediaKind::Video => {
                check_video(crate::media::VideoSource::Bytes(&bytes), &name, limits)
                    .err()
                    .map(|e| format!("video {e}"))
            }
        };
        if problem.is_some() {
            return problem;
        }
    }
    None
}

/// One line `… (fix: …)` from an error whose display ends in `\n  fix: …`.
fn one_line(e: impl std::fmt::Display) -> String {
    let e = e.to_string();
    match e.split_once("\n  fix: ") {
        Some((msg, fix)) => format!("{msg} (fix: {fix})"),
        None => e,
    }
}

/// Decode an audio file as the audio stage does (its length limit
/// included), so that validation accepts what generation accepts.
pub fn check_audio(bytes: &[u8], name: &str, limits: &Limits) -> std::result::Result<f64, String> {
    let a = crate::audio::decode::decode_bytes(bytes, name, &limits.audio()).map_err(one_line)?;
    Ok(a.samples.len() as f64 / a.rate.max(1) as f64)
}

/// Decode a video as the media stage does (every frame through FFmpeg, the
/// first one kept), with its limits.
pub fn check_video(
    src: crate::media::VideoSource<'_>,
    name: &str,
    limits: &Limits,
) -> std::result::Result<usize, String> {
    let v = crate::media::decode_video_sampled(src, name, limits, &|n, _| (0..n.min(1)).collect())
        .map_err(one_line)?;
    Ok(v.total_frames)
}

/// Decode an image fully, with the media stage's own limits (pixels read
/// from the header before anything is allocated, decoder allocations), so
/// that what validation accepts the media stage accepts too.
/// The error is one line (`… (fix: …)`), as validation prints it.
pub fn check_image(
    bytes: &[u8],
    name: &str,
    limits: &Limits,
) -> std::result::Result<(u32, u32), String> {
    let img = crate::media::decode_image(bytes, name, limits).map_err(one_line)?;
    Ok((img.width(), img.height()))
}

/// Counts by grouping, as printed by `anjeon data stats --json`.
#[derive(Debug, Serialize)]
pub struct Stats {
    pub total: usize,
    pub by_benchmark: BTreeMap<String, usize>,
    pub by_modality: BTreeMap<String, usize>,
    pub by_risk_factor: BTreeMap<String, usize>,
    pub by_group: BTreeMap<String, usize>,
    pub by_language: BTreeMap<String, usize>,
    pub by_expected: BTreeMap<String, usize>,
    pub by_prompt_type: BTreeMap<String, usize>,
    pub by_attack: BTreeMap<String, usize>,
    pub with_reference_answers: usize,
    pub reference_answers: usize,
    pub problems: usize,
}

pub fn stats(ds: &Dataset) -> Stats {
    let mut st = Stats {
        total: ds.samples.len(),
        by_benchmark: BTreeMap::new(),
        by_modality: BTreeMap::new(),
        by_risk_factor: BTreeMap::new(),
        by_group: BTreeMap::new(),
        by_language: BTreeMap::new(),
        by_expected: BTreeMap::new(),
        by_prompt_type: BTreeMap::new(),
        by_attack: BTreeMap::new(),
        with_reference_answers: 0,
        reference_answers: 0,
        problems: ds.problems.len(),
    };
    for s in &ds.samples {
        *st.by_benchmark.entry(s.benchmark.clone()).or_default() += 1;
        *st.by_modality.entry(s.modality().to_string()).or_default() += 1;
        *st.by_risk_factor.entry(s.category_label()).or_default() += 1;
        *st.by_group.entry(s.group_label()).or_default() += 1;
        *st.by_language.entry(s.language.clone()).or_default() += 1;
        *st.by_expected
            .entry(s.expected.as_str().to_string())
            .or_default() += 1;
        *st.by_prompt_type
            .entry(s.prompt_type.clone().unwrap_or_else(|| "unknown".into()))
            .or_default() += 1;
        *st.by_attack
            .entry(s.variant.strategy().to_string())
            .or_default() += 1;
        if !s.references.is_empty() {
            st.with_reference_answers += 1;
        }
        st.reference_answers += s.references.len();
    }
    st
}
