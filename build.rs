// 1. Records the git revision the binary was built from (for run manifests).
// 2. Video decoding (feature `video-ffmpeg`): builds the FFmpeg libraries
//    anjeon needs from source and links them statically (`vendored-ffmpeg`,
//    the default), or links a system FFmpeg found by pkg-config
//    (`system-ffmpeg`). Either way src/media/ffshim.c is compiled against
//    them: the Rust side calls only that shim, so no bindings are generated
//    and no libclang is needed.
#[cfg(feature = "video-ffmpeg")]
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let rev = Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ANJEON_GIT_REV={rev}");
    video();
}

#[cfg(not(feature = "video-ffmpeg"))]
fn video() {}

#[cfg(feature = "video-ffmpeg")]
fn video() {
    println!("cargo:rerun-if-changed=src/media/ffshim.c");
    println!("cargo:rerun-if-changed=src/media/ffmpeg_components.rs");
    println!("cargo:rerun-if-env-changed=ANJEON_FFMPEG_SRC");
    let include = if cfg!(feature = "system-ffmpeg") {
        system_ffmpeg()
    } else {
        vendored_ffmpeg()
    };
    let mut shim = cc::Build::new();
    shim.file("src/media/ffshim.c").warnings(true);
    if cfg!(feature = "av1") {
        // AV1 packets are handed to rav1d (Rust) when FFmpeg has no AV1 decoder.
        shim.define("ANJEON_AV1_EXTERNAL", None);
    }
    for dir in &include {
        shim.include(dir);
    }
    shim.compile("anjeon_ffshim");
    if !cfg!(feature = "system-ffmpeg") {
        let lib = out_dir().join("ffmpeg/sdk/lib");
        println!("cargo:rustc-link-search=native={}", lib.display());
        for l in ["avformat", "avcodec", "swscale", "avutil"] {
            println!("cargo:rustc-link-lib=static={l}");
        }
        let target = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
        if target != "windows" {
            println!("cargo:rustc-link-lib=m");
            println!("cargo:rustc-link-lib=pthread");
        }
    }
}

#[cfg(feature = "video-ffmpeg")]
fn out_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"))
}

/// The system's FFmpeg, found with pkg-config (FFmpeg >= 5.1: libavformat,
/// libavcodec, libswscale, libavutil and their headers), linked dynamically.
#[cfg(feature = "video-ffmpeg")]
fn system_ffmpeg() -> Vec<PathBuf> {
    let libs = ["libavformat", "libavcodec", "libswscale", "libavutil"];
    let pkg = std::env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into());
    let run = |flag: &str| -> String {
        let o = Command::new(&pkg)
            .arg(flag)
            .args(libs)
            .output()
            .unwrap_or_else(|e| panic!("feature `system-ffmpeg`: cannot run {pkg}: {e}; install pkg-config, or build with the default features (FFmpeg built from source)"));
        if !o.status.success() {
            panic!(
                "feature `system-ffmpeg`: pkg-config cannot find {}: {}\n  fix: install the FFmpeg development packages (Debian: libavcodec-dev libavformat-dev libavutil-dev libswscale-dev), or build with the default features (FFmpeg built from source)",
                libs.join(", "),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let mut include = vec![];
    for tok in run("--cflags").split_whitespace() {
        if let Some(d) = tok.strip_prefix("-I") {
            include.push(PathBuf::from(d));
        }
    }
    for tok in run("--libs").split_whitespace() {
        if let Some(d) = tok.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={d}");
        } else if let Some(l) = tok.strip_prefix("-l") {
            println!("cargo:rustc-link-lib={l}");
        }
    }
    include
}

/// FFmpeg's own source (the pristine release that the `ffmpeg-src` crate
/// carries, or `ANJEON_FFMPEG_SRC`), configured with only the demuxers,
/// decoders and scaler anjeon uses, built once into OUT_DIR with `sh` and
/// `make` and the C compiler cargo uses. No assembly: the same C code runs
/// on every CPU, so frames are the same bits on every machine, and no
/// assembler (nasm) is needed.
#[cfg(feature = "video-ffmpeg")]
fn vendored_ffmpeg() -> Vec<PathBuf> {
    let src = ffmpeg_source();
    let root = out_dir().join("ffmpeg");
    let sdk = root.join("sdk");
    let build = root.join("build");
    let cc = cc::Build::new().get_compiler();
    let mut args: Vec<String> = vec![
        format!("--prefix={}", sdk.display()),
        format!("--cc={}", cc.path().display()),
        "--disable-everything".into(),
        "--disable-programs".into(),
        "--disable-doc".into(),
        "--disable-autodetect".into(),
        "--disable-network".into(),
        "--disable-asm".into(),
        "--disable-debug".into(),
        "--disable-shared".into(),
        "--enable-static".into(),
        "--enable-pic".into(),
        "--disable-avdevice".into(),
        "--disable-avfilter".into(),
        "--disable-swresample".into(),
        "--enable-avcodec".into(),
        "--enable-avformat".into(),
        "--enable-swscale".into(),
        "--enable-protocol=file".into(),
    ];
    // Cross-compiling (an ARM board's binary built on an x86-64 machine):
    // FFmpeg's configure must be told, or it tries to run what it compiles.
    let (target, host) = (
        std::env::var("TARGET").unwrap_or_default(),
        std::env::var("HOST").unwrap_or_default(),
    );
    if target != host {
        let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
        let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
        args.push("--enable-cross-compile".into());
        args.push(format!("--arch={arch}"));
        args.push(format!("--target-os={os}"));
        // `aarch64-linux-gnu-gcc` → the binutils of `aarch64-linux-gnu-`.
        let name = cc
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(i) = name
            .rfind('-')
            .filter(|_| name.ends_with("gcc") || name.ends_with("cc"))
        {
            let dir = cc.path().parent().filter(|d| !d.as_os_str().is_empty());
            let prefix = match dir {
                Some(d) => d.join(&name[..=i]).display().to_string(),
                None => name[..=i].to_string(),
            };
            args.push(format!("--cross-prefix={prefix}"));
        }
    }
    for (kind, list) in [
        ("demuxer", components::BUILT_DEMUXERS),
        ("decoder", components::BUILT_DECODERS),
        ("parser", components::BUILT_PARSERS),
    ] {
        args.push(format!("--enable-{kind}={}", list.join(",")));
    }
    // Rebuild only when the configuration or the source changes.
    let stamp_text = format!("{}\n{}\n", src.display(), args.join("\n"));
    let stamp = root.join("configured.txt");
    let done = sdk.join("lib/libavcodec.a").exists()
        && std::fs::read_to_string(&stamp).ok().as_deref() == Some(stamp_text.as_str());
    if !done {
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&build).expect("create the FFmpeg build folder");
        let configure = src.join("configure");
        run(
            Command::new("sh")
                .arg(&configure)
                .args(&args)
                .current_dir(&build),
            "FFmpeg configure",
            &build.join("ffbuild/config.log"),
        );
        let jobs = std::env::var("NUM_JOBS").unwrap_or_else(|_| "2".into());
        run(
            Command::new("make")
                .arg(format!("-j{jobs}"))
                .current_dir(&build),
            "FFmpeg make",
            &build,
        );
        run(
            Command::new("make")
                .args(["install-libs", "install-headers"])
                .current_dir(&build),
            "FFmpeg make install",
            &build,
        );
        std::fs::write(&stamp, stamp_text).expect("write the FFmpeg build stamp");
    }
    vec![sdk.join("include")]
}

/// What the vendored FFmpeg is configured with (the same list the library
/// reports as `media::video::BUILT_DECODERS`).
#[cfg(feature = "video-ffmpeg")]
mod components {
    include!("src/media/ffmpeg_components.rs");
}

#[cfg(feature = "video-ffmpeg")]
fn ffmpeg_source() -> PathBuf {
    if let Some(dir) = std::env::var_os("ANJEON_FFMPEG_SRC") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("configure").is_file(),
            "ANJEON_FFMPEG_SRC={} has no `configure`: point it at an unpacked FFmpeg source release (9.0 was tested)",
            dir.display()
        );
        return dir;
    }
    vendored_source()
}

/// Hosts the `ffmpeg-src` crate builds on (Cargo.toml names the same).
#[cfg(all(
    feature = "vendored-ffmpeg",
    not(feature = "system-ffmpeg"),
    any(
        all(target_os = "linux", target_arch = "x86_64"),
        all(target_os = "macos", target_arch = "aarch64"),
        all(target_os = "windows", target_env = "msvc")
    )
))]
fn vendored_source() -> PathBuf {
    // ffmpeg-src unpacks its pristine release into `<its OUT_DIR>/sources/
    // ffmpeg` next to the small SDK it builds (libavutil only, as asked for
    // in Cargo.toml); that unpacked tree is what is configured here.
    let prefix = ffmpeg_src::artifacts().prefix().to_path_buf();
    let dir = prefix
        .parent()
        .map(|p| p.join("sources/ffmpeg"))
        .unwrap_or_default();
    assert!(
        dir.join("configure").is_file(),
        "the ffmpeg-src crate left no FFmpeg source at {}; set ANJEON_FFMPEG_SRC to an unpacked FFmpeg 9.0 source release",
        dir.display()
    );
    dir
}

#[cfg(all(
    feature = "vendored-ffmpeg",
    not(feature = "system-ffmpeg"),
    not(any(
        all(target_os = "linux", target_arch = "x86_64"),
        all(target_os = "macos", target_arch = "aarch64"),
        all(target_os = "windows", target_env = "msvc")
    ))
))]
fn vendored_source() -> PathBuf {
    panic!(
        "the built-in FFmpeg takes its source from the ffmpeg-src crate, which does not build on this host\n  fix: unpack an FFmpeg 9.0 source release (ffmpeg-9.0.2.tar.xz from ffmpeg.org, or the one inside the ffmpeg-src crate) and set ANJEON_FFMPEG_SRC to its folder; or build with `--no-default-features --features system-ffmpeg` against the system's FFmpeg"
    )
}

#[cfg(all(
    feature = "video-ffmpeg",
    not(all(feature = "vendored-ffmpeg", not(feature = "system-ffmpeg")))
))]
fn vendored_source() -> PathBuf {
    unreachable!("system-ffmpeg does not build FFmpeg")
}

#[cfg(feature = "video-ffmpeg")]
fn run(cmd: &mut Command, what: &str, log: &Path) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start {:?}: {e} (the vendored FFmpeg build needs `sh` and `make`; or build with `--no-default-features` for no mp4/webm video)", cmd.get_program()));
    if !out.status.success() {
        let tail = |b: &[u8]| {
            let s = String::from_utf8_lossy(b);
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        panic!(
            "{what} failed ({}):\n{}\n{}\n  see {}",
            out.status,
            tail(&out.stdout),
            tail(&out.stderr),
            log.display()
        );
    }
}
