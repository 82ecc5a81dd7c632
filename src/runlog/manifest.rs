//! `manifest.json`: what a run is made of (data set, models, judges, the
//! evaluation's settings), typed and versioned.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::shard::Shard;
use super::store;
use crate::core::error::{Error, Result};

/// The manifest format this build writes and reads (see docs/run-directory.md).
pub const SCHEMA: &str = "anjeon.manifest/1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: String,
    pub anjeon_version: String,
    pub git_revision: String,
    pub created_at: String,
    pub invocations: Vec<Invocation>,
    pub dataset: DatasetInfo,
    pub responses: ResponsesInfo,
    /// Models that generated responses (role, name, file hashes, template hash, settings).
    #[serde(default)]
    pub models: Vec<serde_json::Value>,
    pub judges: Vec<JudgeInfo>,
    pub config: Config,
    pub seed: u64,
    /// The shard this directory holds (`--shard`); absent for a whole run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    /// The shard directories `anjeon merge` made this one from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<String>,
}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Invocation {
    pub at: String,
    pub argv: Vec<String>,
}
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatasetInfo {
    pub spec: String,
    pub sha256: String,
    pub files: Vec<FileInfo>,
    pub samples: usize,
}
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileInfo {
    pub path: String,
    pub sha256: String,
}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponsesInfo {
    pub source: String,
    pub sha256: Option<String>,
    pub models: Vec<String>,
}
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JudgeInfo {
    pub name: String,
    pub fingerprint: String,
    /// Hash of the judge's rules or prompt (refusal patterns for the detector).
    pub prompt_sha256: String,
    /// A model judge's weights, template and rubric files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<serde_json::Value>,
}

pub fn file_info(p: &Path) -> Result<FileInfo> {
    Ok(FileInfo {
        path: p.display().to_string(),
        sha256: store::sha256_hex(&crate::core::error::read_file(p)?),
    })
}

/// The evaluation's settings. `command` and `attacks` are what a later
/// command reads back (`score --from` rebuilds the attack variants from
/// them); `args` records every flag as given, for people and for
/// `anjeon merge`'s same-settings check, and is never read for meaning.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Config {
    /// `run` or `score`.
    pub command: String,
    /// The attack variants evaluated beside the data set's items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attacks: Option<AttackSpec>,
    /// The command's flags as given.
    #[serde(default)]
    pub args: serde_json::Value,
    /// How the data set was read (field mapping, language, limits).
    #[serde(default)]
    pub read_options: serde_json::Value,
    /// The resource limits of the run (`core::limits`; defaults for
    /// manifests written before they were recorded here).
    #[serde(default)]
    pub limits: crate::core::limits::Limits,
}

/// Which attack variants a run made, and from which seed (they are
/// deterministic given both).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttackSpec {
    /// The `--attacks` list (`all`, or names separated by commas).
    pub list: String,
    pub seed: u64,
}

impl Config {
    /// The attack variants of this run. Manifests written before `attacks`
    /// was a field of its own carry the list in the `run` command's flags.
    pub fn attacks(&self) -> Option<AttackSpec> {
        if let Some(a) = &self.attacks {
            return Some(a.clone());
        }
        match (self.command.as_str(), self.args["attacks"].as_str()) {
            ("run", Some(list)) => Some(AttackSpec {
                list: list.to_string(),
                seed: self.args["seed"].as_u64().unwrap_or(0),
            }),
            _ => None,
        }
    }

    /// The settings two shards of one run share: everything but where each
    /// wrote and which shard it was.
    pub fn shared(&self) -> Config {
        let mut c = self.clone();
        if let Some(a) = c.args.as_object_mut() {
            for k in ["out", "shard", "shards"] {
                a.remove(k);
            }
        }
        c
    }
}

impl Manifest {
    /// Read `manifest.json`; a file that does not parse, or one of a newer
    /// format, is a store error naming the file.
    pub fn read(path: &Path) -> Result<Manifest> {
        let bytes = crate::core::error::read_file(path)?;
        let bad = |e: serde_json::Error| Error::Store {
            path: path.to_path_buf(),
            line: e.line().max(1),
            msg: e.to_string(),
        };
        #[derive(Deserialize)]
        struct Head {
            schema: String,
        }
        let head: Head = serde_json::from_slice(&bytes).map_err(bad)?;
        if head.schema != SCHEMA {
            return Err(Error::Store {
                path: path.to_path_buf(),
                line: 1,
                msg: format!(
                    "manifest format {:?}; this anjeon reads {SCHEMA:?} (use the anjeon version that wrote it)",
                    head.schema
                ),
            });
        }
        let m: Manifest = serde_json::from_slice(&bytes).map_err(bad)?;
        Ok(m)
    }

    /// Write atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        store::write_atomic(
            path,
            &serde_json::to_vec_pretty(self).expect("a manifest serialises"),
        )
    }

    /// Record the current command line.
    pub fn push_invocation(&mut self) {
        self.invocations.push(Invocation::now());
    }

    /// The first 16 hex digits of the data set's hash, for messages.
    pub fn dataset_short(&self) -> &str {
        short(&self.dataset.sha256)
    }
}

impl Invocation {
    /// The current process's command line, now.
    pub fn now() -> Invocation {
        Invocation {
            at: crate::core::time::now_rfc3339(),
            argv: std::env::args().collect(),
        }
    }
}

/// At most the first 16 characters of a hash (an edited manifest may hold a shorter one).
pub fn short(hash: &str) -> &str {
    hash.get(..16).unwrap_or(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: serde_json::Value) -> Config {
        Config {
            command: "run".into(),
            attacks: None,
            args,
            read_options: serde_json::Value::Null,
            limits: Default::default(),
        }
    }

    #[test]
    fn attacks_come_from_the_typed_field_or_an_older_manifests_flags() {
        let old = config(serde_json::json!({"attacks": "all", "seed": 7, "out": "x"}));
        assert_eq!(
            old.attacks(),
            Some(AttackSpec {
                list: "all".into(),
                seed: 7
            })
        );
        let mut new = config(serde_json::json!({"attacks": "all", "seed": 7}));
        new.attacks = Some(AttackSpec {
            list: "program-execution".into(),
            seed: 3,
        });
        assert_eq!(new.attacks().unwrap().list, "program-execution");
        let mut score = config(serde_json::json!({"attacks": "all"}));
        score.command = "score".into();
        assert_eq!(score.attacks(), None);
    }

    #[test]
    fn shards_share_everything_but_where_they_wrote() {
        let a = config(serde_json::json!({"out": "a", "shard": "0/2", "seed": 1}));
        let b = config(serde_json::json!({"out": "b", "shard": "1/2", "seed": 1}));
        let c = config(serde_json::json!({"out": "b", "shard": "1/2", "seed": 2}));
        assert_eq!(a.shared(), b.shared());
        assert_ne!(a.shared(), c.shared());
    }

    #[test]
    fn a_short_or_newer_manifest_is_a_store_error_not_a_panic() {
        assert_eq!(short("abc"), "abc");
        let dir = std::env::temp_dir().join(format!("anjeon-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("manifest.json");
        std::fs::write(&p, br#"{"schema": "anjeon.manifest/9"}"#).unwrap();
        let e = Manifest::read(&p).unwrap_err();
        assert!(e.to_string().contains("anjeon.manifest/9"), "{e}");
        std::fs::write(&p, b"{").unwrap();
        assert!(matches!(
            Manifest::read(&p).unwrap_err(),
            Error::Store { .. }
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
