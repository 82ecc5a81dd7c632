//! `anjeon doctor`: what this machine and this build can do, one verdict
//! per line (ok / warn / fail, with the fix), before a long run finds out.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub level: Level,
    pub what: String,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(level: Level, what: &str, detail: impl Into<String>, fix: Option<&str>) -> Check {
    Check {
        level,
        what: what.into(),
        detail: detail.into(),
        fix: fix.map(str::to_string),
    }
}

/// The models a plain `anjeon run` needs: the default target and the
/// encoder under the default judge.
const DEFAULT_MODELS: [&str; 2] = ["qwen2.5-coder-0.5b-instruct", "embeddinggemma-300m"];

/// Free bytes on the file system holding `path` (or its nearest parent).
fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let mut p = path.to_path_buf();
    while !p.exists() {
        p = p.parent()?.to_path_buf();
    }
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `s` a writable statvfs.
    (unsafe { libc::statvfs(c.as_ptr(), &mut s) } == 0)
        .then(|| s.f_bavail as u64 * s.f_frsize as u64)
}

fn disk(what: &str, path: &std::path::Path) -> Check {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    match free_bytes(path) {
        Some(b) if b < 2 << 30 => check(
            Level::Fail,
            what,
            format!("{}: {:.1} GiB free", path.display(), gib(b)),
            Some(
                "free disk space: models take 0.1-1.2 GB each, runs write their records as they go",
            ),
        ),
        Some(b) if b < 10 << 30 => check(
            Level::Warn,
            what,
            format!("{}: {:.1} GiB free", path.display(), gib(b)),
            Some("a whole benchmark with several models may need more"),
        ),
        Some(b) => check(
            Level::Ok,
            what,
            format!("{}: {:.1} GiB free", path.display(), gib(b)),
            None,
        ),
        None => check(
            Level::Warn,
            what,
            format!("{}: free space unknown", path.display()),
            None,
        ),
    }
}

/// Every check, in the order printed.
pub fn checks() -> Vec<Check> {
    let mut out = Vec::new();
    let features: Vec<&str> = [
        ("cuda", cfg!(feature = "cuda")),
        ("metal", cfg!(feature = "metal")),
        ("vendored-ffmpeg", cfg!(feature = "vendored-ffmpeg")),
        ("system-ffmpeg", cfg!(feature = "system-ffmpeg")),
        ("av1", cfg!(feature = "av1")),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .map(|(n, _)| *n)
    .collect();
    out.push(check(
        Level::Ok,
        "build",
        format!(
            "anjeon {} ({}), features: {}",
            env!("CARGO_PKG_VERSION"),
            option_env!("ANJEON_GIT_REV").unwrap_or("revision unknown"),
            if features.is_empty() {
                "none".to_string()
            } else {
                features.join(", ")
            }
        ),
        None,
    ));

    // CPU and the kernel path chosen at run time.
    #[cfg(target_arch = "x86_64")]
    let cpu: Vec<&str> = [
        ("avx2", std::arch::is_x86_feature_detected!("avx2")),
        ("fma", std::arch::is_x86_feature_detected!("fma")),
        ("f16c", std::arch::is_x86_feature_detected!("f16c")),
        ("avx-vnni", std::arch::is_x86_feature_detected!("avxvnni")),
        ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        (
            "avx512-vnni",
            std::arch::is_x86_feature_detected!("avx512vnni"),
        ),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .map(|(n, _)| *n)
    .collect();
    #[cfg(target_arch = "aarch64")]
    let cpu: Vec<&str> = [
        ("neon", std::arch::is_aarch64_feature_detected!("neon")),
        (
            "dotprod",
            std::arch::is_aarch64_feature_detected!("dotprod"),
        ),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .map(|(n, _)| *n)
    .collect();
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let cpu: Vec<&str> = vec![];
    let path = anjeon_kernels::path();
    let detail = format!(
        "{} with {}; quantized kernels: {}",
        std::env::consts::ARCH,
        if cpu.is_empty() {
            "no SIMD extensions anjeon uses".to_string()
        } else {
            cpu.join(", ")
        },
        path.name()
    );
    out.push(if path == anjeon_kernels::Path::Scalar && std::env::var_os("ANJEON_KERNELS").is_none() {
        check(
            Level::Warn,
            "cpu",
            detail,
            Some("this CPU has no AVX2 (x86-64) or NEON (ARM): the portable kernels give the same numbers, several times slower"),
        )
    } else {
        check(Level::Ok, "cpu", detail, None)
    });
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let rayon = std::env::var("RAYON_NUM_THREADS").ok();
    out.push(check(
        if threads < 2 { Level::Warn } else { Level::Ok },
        "threads",
        format!(
            "{threads} available{}",
            rayon
                .map(|r| format!(", RAYON_NUM_THREADS={r}"))
                .unwrap_or_default()
        ),
        (threads < 2)
            .then_some("generation and judging use every core they are given; one is slow"),
    ));

    // Devices that answer.
    out.push(check(Level::Ok, "device cpu", "always available", None));
    for (name, built) in [
        ("cuda", cfg!(feature = "cuda")),
        ("metal", cfg!(feature = "metal")),
    ] {
        if !built {
            out.push(check(
                Level::Ok,
                &format!("device {name}"),
                "not in this build",
                None,
            ));
            continue;
        }
        out.push(match crate::model::device(name) {
            Ok(_) => check(Level::Ok, &format!("device {name}"), "answers", None),
            Err(e) => check(
                Level::Fail,
                &format!("device {name}"),
                e.to_string().lines().next().unwrap_or_default().to_string(),
                Some("check the driver (nvidia-smi) and that the CUDA libraries are on the library path"),
            ),
        });
    }

    match crate::media::video::ffmpeg_decoders(&["h264", "hevc", "vp8", "vp9", "mpeg4", "av1"]) {
        Some(crate::media::video::FfmpegDecoders {
            avcodec: (major, minor, micro),
            decoders,
        }) => {
            let how = if cfg!(feature = "system-ffmpeg") {
                "system FFmpeg"
            } else {
                "built in"
            };
            let missing = !decoders.contains(&"av1") || decoders.len() < 6;
            out.push(check(
                if !decoders.contains(&"h264") {
                    Level::Fail
                } else if missing {
                    Level::Warn
                } else {
                    Level::Ok
                },
                "ffmpeg",
                format!(
                    "{how}, libavcodec {major}.{minor}.{micro}; decoders: {}",
                    decoders.join(", ")
                ),
                missing.then_some(
                    "video in a missing codec fails per item naming the codec; re-encode it as H.264, or build with the default features (AV1 through rav1d)",
                ),
            ));
        }
        None => out.push(check(
            Level::Warn,
            "ffmpeg",
            "not in this build: mp4/webm/mkv video items fail (GIF/APNG and frame folders still work)",
            Some("build with the default features"),
        )),
    }

    let home = crate::model::fetch::home();
    out.push(disk("cache disk", &home));
    out.push(disk(
        "run disk",
        &std::env::current_dir().unwrap_or_else(|_| ".".into()),
    ));

    // Models: present with their hashes (a sidecar keeps the hash of a
    // large file after its first check), missing, or damaged.
    for c in crate::model::card::all() {
        let path = crate::model::fetch::model_path(&c);
        let what = format!("model {}", c.name);
        let default = DEFAULT_MODELS.contains(&c.name.as_str());
        let fetch = format!("anjeon models fetch {}", c.name);
        out.push(if crate::model::fetch::is_cached(&c) {
            let mb = std::fs::metadata(&path).map(|m| m.len() >> 20).unwrap_or(0);
            check(
                Level::Ok,
                &what,
                format!("cached, sha256 verified, {mb} MiB"),
                None,
            )
        } else if path.exists() {
            check(
                Level::Fail,
                &what,
                format!(
                    "{}: present but its files do not match the card's sha256",
                    path.display()
                ),
                Some(&fetch),
            )
        } else if default {
            check(
                Level::Warn,
                &what,
                "not fetched (a plain `anjeon run` needs it)",
                Some(&format!("{fetch}, or run with --fetch")),
            )
        } else {
            check(Level::Ok, &what, "not fetched", None)
        });
    }
    out
}

/// The text lines `anjeon doctor` prints.
pub fn render(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        let level = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        s.push_str(&format!("{level}  {:<34} {}", c.what, c.detail));
        if let Some(f) = &c.fix {
            s.push_str(&format!("  (fix: {f})"));
        }
        s.push('\n');
    }
    s
}
