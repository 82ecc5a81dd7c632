//! Shards: one run split over many machines (a Slurm array, a Kubernetes
//! Indexed Job) and merged back (`anjeon merge`). An item belongs to shard
//! `sha256(id) mod N`, so a shard's content depends neither on the order of
//! the data set nor on the other shards; attack variants stay with their
//! base item.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::core::error::{Error, Result};

/// Shard `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The shard an item id belongs to among `count`.
pub fn shard_of(id: &str, count: u64) -> u64 {
    let d = Sha256::digest(id.as_bytes());
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes")) % count.max(1)
}

impl Shard {
    /// `I/N` with `0 <= I < N`.
    pub fn parse(s: &str) -> Result<Shard> {
        let bad = |why: &str| {
            Error::Usage(format!(
                "--shard {s:?}: {why}\n  fix: write INDEX/COUNT with 0 <= INDEX < COUNT, e.g. --shard 0/4"
            ))
        };
        let (i, n) = s.split_once('/').ok_or_else(|| bad("not INDEX/COUNT"))?;
        let index: u64 = i.trim().parse().map_err(|_| bad("INDEX is not a number"))?;
        let count: u64 = n.trim().parse().map_err(|_| bad("COUNT is not a number"))?;
        Shard::new(index, count).map_err(|e| bad(&e))
    }

    fn new(index: u64, count: u64) -> std::result::Result<Shard, String> {
        if count == 0 {
            return Err("COUNT is 0".into());
        }
        if index >= count {
            return Err(format!("INDEX {index} is not below COUNT {count}"));
        }
        Ok(Shard { index, count })
    }

    /// Whether the item `id` is this shard's.
    pub fn owns(&self, id: &str) -> bool {
        shard_of(id, self.count) == self.index
    }

    /// The shard from `--shard I/N`, else from the scheduler's environment:
    /// Slurm array jobs (`SLURM_ARRAY_TASK_ID` − `SLURM_ARRAY_TASK_MIN` of
    /// `SLURM_ARRAY_TASK_COUNT`), or a Kubernetes Indexed Job
    /// (`JOB_COMPLETION_INDEX`, with `--shards N`). A flag and an environment
    /// that disagree are a usage error naming both. `None`: not sharded.
    pub fn resolve(
        flag: Option<&str>,
        shards: Option<u64>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Shard>> {
        let num = |k: &str| -> Result<Option<u64>> {
            match env(k) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| {
                    Error::Usage(format!(
                        "{k}={v:?} is not a number\n  fix: unset it, or pass --shard INDEX/COUNT"
                    ))
                }),
            }
        };
        let from_env = if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            let count = num("SLURM_ARRAY_TASK_COUNT")?.ok_or_else(|| {
                Error::Usage(
                    "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not\n  fix: pass --shard INDEX/COUNT".into(),
                )
            })?;
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let index = id.checked_sub(min).ok_or_else(|| {
                Error::Usage(format!(
                    "SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}\n  fix: pass --shard INDEX/COUNT"
                ))
            })?;
            let s = Shard::new(index, count).map_err(|e| {
                Error::Usage(format!(
                    "Slurm array task {id} (min {min}, count {count}): {e}\n  fix: submit the array as --array=0-{}, or pass --shard INDEX/COUNT",
                    count.saturating_sub(1)
                ))
            })?;
            Some(("Slurm's SLURM_ARRAY_TASK_*", s))
        } else if let Some(index) = num("JOB_COMPLETION_INDEX")? {
            match shards {
                Some(count) => {
                    let s = Shard::new(index, count).map_err(|e| {
                        Error::Usage(format!(
                            "JOB_COMPLETION_INDEX {index} with --shards {count}: {e}\n  fix: set the Job's completions to --shards"
                        ))
                    })?;
                    Some(("Kubernetes' JOB_COMPLETION_INDEX", s))
                }
                None if flag.is_none() => {
                    return Err(Error::Usage(
                        "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but --shards is not\n  fix: pass --shards N with N the Job's completions".into(),
                    ))
                }
                None => None,
            }
        } else {
            None
        };
        let from_flag = flag.map(Shard::parse).transpose()?;
        if let (Some(f), Some(c)) = (from_flag, shards) {
            if f.count != c {
                return Err(Error::Usage(format!(
                    "--shard {f} and --shards {c} disagree\n  fix: pass one of them"
                )));
            }
        }
        match (from_flag, from_env) {
            (Some(f), Some((name, e))) if f != e => Err(Error::Usage(format!(
                "--shard {f} and {name} (shard {e}) disagree\n  fix: drop the flag, or unset the environment"
            ))),
            (Some(f), _) => Ok(Some(f)),
            (None, Some((_, e))) => Ok(Some(e)),
            (None, None) => match shards {
                Some(_) => Err(Error::Usage(
                    "--shards N needs JOB_COMPLETION_INDEX (a Kubernetes Indexed Job)\n  fix: pass --shard INDEX/COUNT instead".into(),
                )),
                None => Ok(None),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(kv: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| kv.iter().find(|(x, _)| *x == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn shards_come_from_the_flag_or_the_scheduler_and_must_agree() {
        let none = env(&[]);
        assert_eq!(Shard::resolve(None, None, &none).unwrap(), None);
        assert_eq!(
            Shard::resolve(Some("2/4"), None, &none).unwrap(),
            Some(Shard { index: 2, count: 4 })
        );
        for bad in ["4/4", "1/0", "x/2", "3"] {
            let e = Shard::resolve(Some(bad), None, &none)
                .unwrap_err()
                .to_string();
            assert!(e.contains("--shard") && e.contains("fix:"), "{bad}: {e}");
        }
        // Slurm arrays that start at 1 (--array=1-4).
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
        ]);
        assert_eq!(
            Shard::resolve(None, None, &slurm).unwrap(),
            Some(Shard { index: 2, count: 4 })
        );
        assert!(Shard::resolve(Some("2/4"), None, &slurm).is_ok());
        let e = Shard::resolve(Some("1/4"), None, &slurm)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--shard 1/4") && e.contains("SLURM") && e.contains("2/4"),
            "{e}"
        );
        // Kubernetes Indexed Jobs.
        let k8s = env(&[("JOB_COMPLETION_INDEX", "5")]);
        assert_eq!(
            Shard::resolve(None, Some(8), &k8s).unwrap(),
            Some(Shard { index: 5, count: 8 })
        );
        assert!(Shard::resolve(None, None, &k8s)
            .unwrap_err()
            .to_string()
            .contains("--shards"));
        assert!(Shard::resolve(None, Some(4), &k8s)
            .unwrap_err()
            .to_string()
            .contains("JOB_COMPLETION_INDEX 5"));
        assert!(Shard::resolve(None, Some(4), &none).is_err());
    }

    #[test]
    fn every_id_has_exactly_one_shard_and_the_split_is_even_enough() {
        let n = 4;
        let mut counts = vec![0usize; n as usize];
        for i in 0..4000 {
            let id = format!("AS-{i:05}");
            let owners: Vec<u64> = (0..n)
                .filter(|&k| Shard { index: k, count: n }.owns(&id))
                .collect();
            assert_eq!(owners.len(), 1);
            counts[owners[0] as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (900..1100).contains(&c)),
            "{counts:?}"
        );
    }
}
