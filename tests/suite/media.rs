//! Media decoding and preprocessing against transformers / Pillow references
//! (made by tests/fixtures/media/make_media_fixtures.py; no Python needed here).

use crate::common::bin;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anjeon::media::{
    self, decode_image, decode_video, decode_video_sampled, gemma4, qwen3vl, resample, Limits,
    MediaError, Video, VideoSource,
};
use candle_core::{Device, Tensor};
use serde_json::Value;
use sha2::{Digest, Sha256};

const FIX: &str = "tests/fixtures/media";

fn fix(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(FIX).join(p)
}

fn expected() -> Value {
    let s = std::fs::read_to_string(fix("expected.json")).unwrap();
    serde_json::from_str(&s).unwrap()
}

fn tensors(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fix(name), &Device::Cpu).unwrap()
}

fn u8_rows(t: &Tensor) -> Vec<Vec<u8>> {
    t.to_vec2::<u8>().unwrap()
}

/// Pixel values back to the uint8 levels they came from.
fn levels(pv: &[f32], mean: f64, std: f64) -> Vec<u8> {
    pv.iter()
        .map(|&v| ((v as f64 * std + mean) * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect()
}

/// Compare one processor output with the reference; returns the largest
/// level difference in the reference's sample rows (0 when the sha matches).
fn compare(
    case: &str,
    e: &Value,
    t: &HashMap<String, Tensor>,
    key: &str,
    lv: &[u8],
    cols: usize,
) -> u8 {
    let shape: Vec<usize> = serde_json::from_value(e["shape"].clone()).unwrap();
    assert_eq!(lv.len(), shape[0] * shape[1], "{case}: size");
    assert_eq!(cols, shape[1], "{case}: cols");
    let sha = hex::encode(Sha256::digest(lv));
    if sha == e["sha256"].as_str().unwrap() {
        return 0;
    }
    let rows: Vec<usize> = serde_json::from_value(e["rows"].clone()).unwrap();
    let want = u8_rows(&t[key]);
    let mut max = 0u8;
    for (r, w) in rows.iter().zip(&want) {
        let got = &lv[r * cols..(r + 1) * cols];
        for (a, b) in got.iter().zip(w) {
            max = max.max(a.abs_diff(*b));
        }
    }
    max
}

/// JPEG inputs decode to Pillow's bytes exactly (libjpeg-turbo's decoder,
/// Pillow's CMYK and orientation handling), and so give transformers'
/// `pixel_values` exactly; files Pillow refuses are refused. Fixtures:
/// `make_jpeg_fixtures.py`.
#[test]
fn jpeg_decoding_matches_pillow_exactly() {
    let e: Value =
        serde_json::from_str(&std::fs::read_to_string(fix("jpeg_expected.json")).unwrap()).unwrap();
    let raw = tensors("jpeg_expected.safetensors");
    let qwen =
        qwen3vl::ImageProcessor::from_json_file(&fix("qwen3vl_preprocessor_config.json")).unwrap();
    let gemma = gemma4::ImageProcessor::default();
    let l = Limits::default();
    let cases = e["images"].as_object().unwrap();
    assert!(cases.len() >= 20, "{}", cases.len());
    let mut decoded = 0;
    for (name, exp) in cases {
        let path = fix(&format!("jpeg/{}", exp["file"].as_str().unwrap()));
        let r = media::load_image(&path, &l);
        if let Some(msg) = exp.get("error") {
            let err = r.expect_err(name);
            assert!(
                matches!(err, MediaError::Decode { .. }),
                "{name}: {err} (Pillow: {msg})"
            );
            assert!(
                err.to_string().contains("truncated"),
                "{name}: {err} (Pillow: {msg})"
            );
            continue;
        }
        let img = r.unwrap_or_else(|err| panic!("{name}: {err}"));
        let shape: Vec<u32> = serde_json::from_value(exp["shape"].clone()).unwrap();
        assert_eq!(
            [img.height(), img.width(), 3],
            shape[..],
            "{name}: size after orientation"
        );
        let sha = hex::encode(Sha256::digest(img.as_raw()));
        if sha != exp["sha256"].as_str().unwrap() {
            let detail = raw.get(name.as_str()).map(|t| {
                let want = t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
                let (i, (a, b)) = img
                    .as_raw()
                    .iter()
                    .zip(&want)
                    .enumerate()
                    .find(|(_, (a, b))| a != b)
                    .unwrap();
                let max = img
                    .as_raw()
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| a.abs_diff(*b))
                    .max()
                    .unwrap();
                format!("first at byte {i}: {a} vs Pillow {b}; max {max} levels")
            });
            panic!("{name}: decoded RGB differs from Pillow's ({detail:?})");
        }
        let v = qwen.preprocess(&img).unwrap();
        let grid: [u32; 3] = serde_json::from_value(exp["qwen"]["grid_thw"].clone()).unwrap();
        assert_eq!(v.grid_thw, grid, "{name}");
        let lv = levels(&v.pixel_values, 0.5, 0.5);
        assert_eq!(
            hex::encode(Sha256::digest(&lv)),
            exp["qwen"]["sha256"].as_str().unwrap(),
            "{name}: Qwen3-VL pixel_values"
        );
        let g = gemma.preprocess(&img).unwrap();
        assert_eq!(
            g.num_soft_tokens as u64,
            exp["gemma4"]["num_soft_tokens"].as_u64().unwrap(),
            "{name}"
        );
        let lv = levels(&g.pixel_values, 0.0, 1.0);
        assert_eq!(
            hex::encode(Sha256::digest(&lv)),
            exp["gemma4"]["sha256"].as_str().unwrap(),
            "{name}: Gemma 4 pixel_values"
        );
        decoded += 1;
    }
    assert_eq!(
        decoded,
        cases.len() - 3,
        "three truncated files are refused"
    );
}

/// The EXIF fixture of the processor tests decodes to Pillow's bytes too.
#[test]
fn jpeg_exif_fixture_equals_pil() {
    let t = tensors("expected.safetensors");
    let want: Vec<u8> = t["decoded.exif6_96x64"]
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    let got = media::load_image(&fix("inputs/exif6_96x64.jpg"), &Limits::default()).unwrap();
    assert_eq!(got.dimensions(), (64, 96), "orientation as PIL");
    let differing = got
        .as_raw()
        .iter()
        .zip(&want)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(differing, 0, "bytes differing from PIL's decode");
}

/// A JPEG that lies about its size, or asks for too many scans, is refused
/// before the pixels are allocated, naming the limit.
#[test]
fn jpeg_limits_are_checked_before_decoding() {
    let bytes = std::fs::read(fix("jpeg/base420_q75_301x203.jpg")).unwrap();
    let small = Limits {
        max_pixels: 1000,
        ..Limits::default()
    };
    let e = decode_image(&bytes, "a.jpg", &small).unwrap_err();
    assert!(
        matches!(
            e,
            MediaError::TooLarge {
                width: 301,
                height: 203,
                ..
            }
        ),
        "{e}"
    );
    let tight = Limits {
        max_alloc: 100_000,
        ..Limits::default()
    };
    let e = decode_image(&bytes, "a.jpg", &tight).unwrap_err();
    assert!(
        matches!(
            e,
            MediaError::Limit {
                which: "max_alloc",
                ..
            }
        ),
        "{e}"
    );
    // A progressive file whose scans repeat past the limit.
    let prog = std::fs::read(fix("jpeg/greyprog_q70_33x47.jpg")).unwrap();
    let sos = prog.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap();
    let last_scan = &prog[sos..prog.len() - 2];
    let mut many = prog[..prog.len() - 2].to_vec();
    for _ in 0..media::jpeg::MAX_SCANS {
        many.extend_from_slice(last_scan);
    }
    many.extend_from_slice(&[0xFF, 0xD9]);
    let e = decode_image(&many, "scans.jpg", &Limits::default()).unwrap_err();
    assert!(
        matches!(
            e,
            MediaError::Limit {
                which: "jpeg_scans",
                ..
            }
        ),
        "{e}"
    );
    // Garbage after the SOI marker: an error naming the file, never a crash.
    let e = decode_image(b"\xFF\xD8\xFF\xDBjunk", "junk.jpg", &Limits::default()).unwrap_err();
    assert!(e.to_string().contains("junk.jpg"), "{e}");
}

#[test]
fn pillow_resize_bit_exact() {
    let l = Limits::default();
    let big = media::load_image(&fix("inputs/resize_src_160x120.png"), &l).unwrap();
    let small = media::load_image(&fix("inputs/resize_src_40x30.png"), &l).unwrap();
    let t = tensors("resize.safetensors");
    let mut n = 0;
    let mut failed = vec![];
    for (k, v) in &t {
        let (filt, size) = k.split_once('_').unwrap();
        let (src, filt) = match filt.strip_prefix("small-") {
            Some(f) => (&small, f),
            None => (&big, filt),
        };
        let (w, h) = size.split_once('x').unwrap();
        let (w, h): (u32, u32) = (w.parse().unwrap(), h.parse().unwrap());
        let f = match filt {
            "bicubic" => resample::Filter::Bicubic,
            _ => resample::Filter::Bilinear,
        };
        let out = resample::resize(src, w, h, f);
        let want: Vec<u8> = v.flatten_all().unwrap().to_vec1::<u8>().unwrap();
        let bad = out
            .as_raw()
            .iter()
            .zip(&want)
            .filter(|(a, b)| a != b)
            .count();
        if bad > 0 {
            failed.push(format!("{k}: {bad} bytes differ"));
        }
        n += 1;
    }
    assert!(failed.is_empty(), "differ from Pillow: {failed:?}");
    assert_eq!(n, 18 + 72);
}

#[test]
fn qwen3vl_images_match_transformers() {
    let e = expected();
    let t = tensors("expected.safetensors");
    for (bucket, proc) in [
        (
            "qwen_images",
            qwen3vl::ImageProcessor::from_json_file(&fix("qwen3vl_preprocessor_config.json"))
                .unwrap(),
        ),
        (
            "qwen_small",
            qwen3vl::ImageProcessor::from_json_file(&fix("small_preprocessor_config.json"))
                .unwrap(),
        ),
    ] {
        for (name, exp) in e[bucket].as_object().unwrap() {
            let case = format!("{bucket}/{name}");
            let file = std::fs::read_dir(fix("inputs"))
                .unwrap()
                .map(|d| d.unwrap().path())
                .find(|p| {
                    let stem = p.file_stem().unwrap().to_str().unwrap();
                    stem == name || (name == "anim_gif_first" && stem == "anim_10fps")
                })
                .unwrap();
            let img = media::load_image(&file, &Limits::default()).unwrap();
            let r = proc.preprocess(&img);
            if let Some(msg) = exp.get("error") {
                let err = r.expect_err(&case);
                assert!(matches!(err, MediaError::Shape { .. }), "{case}: {err}");
                assert!(
                    err.to_string().contains("aspect ratio"),
                    "{case}: {err} vs HF {msg}"
                );
                continue;
            }
            let v = r.unwrap();
            let grid: [u32; 3] = serde_json::from_value(exp["grid_thw"].clone()).unwrap();
            assert_eq!(v.grid_thw, grid, "{case}");
            assert_eq!(v.rows, (grid[0] * grid[1] * grid[2]) as usize);
            assert_eq!(v.cols, 3 * 2 * 16 * 16);
            assert_eq!(v.num_tokens(2), v.rows / 4);
            let lv = levels(&v.pixel_values, 0.5, 0.5);
            let d = compare(&case, exp, &t, &format!("{bucket}.{name}"), &lv, v.cols);
            assert_eq!(
                d, 0,
                "{case}: pixels differ by {d} levels (should be exact)"
            );
        }
    }
}

#[test]
fn qwen3vl_pixel_values_are_normalised_like_numpy() {
    // A flat image: every value is (level/255 - 0.5) / 0.5 computed as numpy does.
    let img = image::RgbImage::from_pixel(64, 64, image::Rgb([0, 128, 255]));
    let p = qwen3vl::ImageProcessor::qwen3vl_default();
    let v = p.preprocess(&img).unwrap();
    assert_eq!(v.grid_thw, [1, 16, 16]); // upsampled to min_pixels 65536 = 256x256
    let want = |l: u8| ((l as f64 * (1.0 / 255.0)) as f32 - 0.5) / 0.5;
    // Columns are (c, t, py, px): the first 512 are red, then green, then blue.
    assert_eq!(v.pixel_values[0], want(0));
    assert_eq!(v.pixel_values[512], want(128));
    assert_eq!(v.pixel_values[1024], want(255));
    assert_eq!(v.pixel_values[1024], 1.0);
}

#[test]
fn gemma4_images_match_transformers() {
    let e = expected();
    let t = tensors("expected.safetensors");
    for (bucket, proc) in [
        ("gemma4", gemma4::ImageProcessor::default()),
        (
            "gemma4_70",
            gemma4::ImageProcessor::from_json_str(r#"{"max_soft_tokens": 70}"#).unwrap(),
        ),
    ] {
        for (name, exp) in e[bucket].as_object().unwrap() {
            let case = format!("{bucket}/{name}");
            let file = std::fs::read_dir(fix("inputs"))
                .unwrap()
                .map(|d| d.unwrap().path())
                .find(|p| {
                    let stem = p.file_stem().unwrap().to_str().unwrap();
                    stem == name || (name == "anim_gif_first" && stem == "anim_10fps")
                })
                .unwrap();
            let img = media::load_image(&file, &Limits::default()).unwrap();
            let g = proc.preprocess(&img).unwrap();
            assert_eq!(
                g.num_soft_tokens as u64,
                exp["num_soft_tokens"].as_u64().unwrap(),
                "{case}"
            );
            assert_eq!(g.num_patches as u64, exp["num_patches"].as_u64().unwrap());
            assert_eq!(g.rows, proc.max_patches());
            let max_x = g.position_ids.chunks(2).map(|p| p[0]).max().unwrap();
            let max_y = g.position_ids.chunks(2).map(|p| p[1]).max().unwrap();
            assert_eq!(max_x, exp["max_x"].as_i64().unwrap(), "{case}");
            assert_eq!(max_y, exp["max_y"].as_i64().unwrap(), "{case}");
            assert!(g.position_ids[g.num_patches * 2..].iter().all(|&p| p == -1));
            assert!(g.pixel_values[g.num_patches * g.cols..]
                .iter()
                .all(|&p| p == 0.0));
            let (h, w) = g.resized;
            assert_eq!(h % 48, 0);
            assert_eq!(w % 48, 0);
            let lv = levels(&g.pixel_values, 0.0, 1.0);
            let d = compare(&case, exp, &t, &format!("{bucket}.{name}"), &lv, g.cols);
            assert_eq!(
                d, 0,
                "{case}: pixels differ by {d} levels (should be exact)"
            );
        }
    }
}

#[test]
fn frame_sampling_matches_transformers() {
    let e = expected();
    let p = qwen3vl::VideoProcessor::from_json_file(&fix("qwen3vl_video_preprocessor_config.json"))
        .unwrap();
    assert_eq!(p, {
        let mut d = qwen3vl::VideoProcessor::qwen3vl_default();
        d.common.rescale_factor = p.common.rescale_factor;
        d
    });
    for s in e["sampling"].as_array().unwrap() {
        let total = s["total"].as_u64().unwrap() as usize;
        let fps = s["fps"].as_f64().unwrap();
        let want: Vec<usize> = serde_json::from_value(s["indices"].clone()).unwrap();
        assert_eq!(
            p.sample_indices(total, fps),
            want,
            "total {total} fps {fps}"
        );
    }
    for (x, want) in e["format_1f"].as_object().unwrap() {
        let x: f64 = x.parse().unwrap();
        assert_eq!(media::py_format_1f(x), want.as_str().unwrap(), "{x}");
    }
}

fn check_video(name: &str, video: &Video, exp: &Value, t: &HashMap<String, Tensor>) -> u8 {
    let p = qwen3vl::VideoProcessor::qwen3vl_default();
    assert_eq!(
        video.total_frames as u64,
        exp["total_frames"].as_u64().unwrap(),
        "{name}"
    );
    assert!(
        (video.fps - exp["fps"].as_f64().unwrap()).abs() < 1e-9,
        "{name}: fps {}",
        video.fps
    );
    let v = p.preprocess(video).unwrap();
    let idx: Vec<usize> = serde_json::from_value(exp["frame_indices"].clone()).unwrap();
    // The decoded frames are the reference's (PIL for GIF/PNG, `ffmpeg -pix_fmt rgb24` for mp4).
    let shas: Vec<String> = serde_json::from_value(exp["frame_sha256"].clone()).unwrap();
    for (i, sha) in idx.iter().zip(&shas) {
        let pos = video.frame_indices.iter().position(|j| j == i).unwrap();
        let got = hex::encode(Sha256::digest(video.frames[pos].as_raw()));
        assert_eq!(
            &got, sha,
            "{name}: decoded frame {i} differs from the reference decoder"
        );
    }
    assert_eq!(v.frame_indices, idx, "{name}");
    let grid: [u32; 3] = serde_json::from_value(exp["grid_thw"].clone()).unwrap();
    assert_eq!(v.patches.grid_thw, grid, "{name}");
    let ts: Vec<f64> = serde_json::from_value(exp["timestamps"].clone()).unwrap();
    assert_eq!(v.timestamps, ts, "{name}");
    let strings: Vec<String> = serde_json::from_value(exp["timestamp_strings"].clone()).unwrap();
    assert_eq!(v.timestamp_strings(), strings, "{name}");
    let lv = levels(&v.patches.pixel_values, 0.5, 0.5);
    compare(name, exp, t, &format!("videos.{name}"), &lv, v.patches.cols)
}

#[test]
fn videos_match_transformers() {
    let e = expected();
    let t = tensors("expected.safetensors");
    let l = Limits::default();
    let vids = &e["videos"];
    let folder = decode_video(VideoSource::Path(&fix("inputs/frames_5fps")), "frames", &l).unwrap();
    let gif_bytes = std::fs::read(fix("inputs/anim_10fps.gif")).unwrap();
    let gif = decode_video(VideoSource::Bytes(&gif_bytes), "gif", &l).unwrap();
    let mut diffs = vec![];
    diffs.push(check_video(
        "frames_5fps",
        &folder,
        &vids["frames_5fps"],
        &t,
    ));
    diffs.push(check_video("anim_10fps", &gif, &vids["anim_10fps"], &t));
    #[cfg(feature = "video-ffmpeg")]
    {
        let p = qwen3vl::VideoProcessor::qwen3vl_default();
        let mp4 = decode_video_sampled(
            VideoSource::Path(&fix("inputs/testsrc_24fps.mp4")),
            "mp4",
            &l,
            &|n, fps| p.sample_indices(n, fps),
        )
        .unwrap();
        assert_eq!(mp4.frames.len(), 4, "only the sampled frames are kept");
        diffs.push(check_video(
            "testsrc_24fps",
            &mp4,
            &vids["testsrc_24fps"],
            &t,
        ));
        let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample/media/AS-0037.mp4");
        let bytes = std::fs::read(sample).unwrap();
        let v = decode_video(VideoSource::Bytes(&bytes), "AS-0037.mp4", &l).unwrap();
        assert_eq!(v.frames.len(), 24);
        diffs.push(check_video("AS-0037", &v, &vids["AS-0037"], &t));
    }
    // transformers resizes video frames with torchvision's antialiased
    // bicubic (uint8), the Rust side with Pillow's: they differ by at most
    // 1 level (14 of 46,080 values on the testsrc frame); allowed 1 level.
    eprintln!("video level differences vs transformers: {diffs:?}");
    assert!(diffs.iter().all(|&d| d <= 1), "{diffs:?}");
}

#[test]
fn image_decoding_orientation_alpha_grey() {
    let l = Limits::default();
    let exif = media::load_image(&fix("inputs/exif6_96x64.jpg"), &l).unwrap();
    assert_eq!(exif.dimensions(), (64, 96), "EXIF orientation 6 applied");
    let a = media::load_image(&fix("inputs/alpha_64x48.png"), &l).unwrap();
    let raw = image::open(fix("inputs/alpha_64x48.png"))
        .unwrap()
        .to_rgba8();
    // Alpha is dropped, not composited (PIL convert("RGB")).
    for (p, q) in a.pixels().zip(raw.pixels()) {
        assert_eq!(p.0, [q.0[0], q.0[1], q.0[2]]);
    }
    let g = media::load_image(&fix("inputs/gray_50x70.png"), &l).unwrap();
    assert!(g.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
    let one = media::load_image(&fix("inputs/tiny_1x1.png"), &l).unwrap();
    assert_eq!(one.dimensions(), (1, 1));
}

fn png_header(w: u32, h: u32) -> Vec<u8> {
    // A PNG with a valid IHDR claiming w x h and almost no image data.
    let mut v = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    v.extend_from_slice(&13u32.to_be_bytes());
    v.extend_from_slice(&ihdr);
    let crc = crc32(&ihdr);
    v.extend_from_slice(&crc.to_be_bytes());
    // The start of an IDAT chunk (the decoder reads up to here for the header).
    let idat = b"IDAT\x78\x9c\x00\x00".to_vec();
    v.extend_from_slice(&4u32.to_be_bytes());
    v.extend_from_slice(&idat);
    v.extend_from_slice(&crc32(&idat).to_be_bytes());
    v
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[test]
fn bad_images_give_typed_errors() {
    let l = Limits::default();
    // Huge header: refused before allocating.
    let e = decode_image(&png_header(20_000, 20_000), "huge.png", &l).unwrap_err();
    assert!(
        matches!(e, MediaError::TooLarge { width: 20_000, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("huge.png"));
    // Zero size (the png crate rejects it in the header; either error is fine).
    let e = decode_image(&png_header(0, 10), "zero.png", &l).unwrap_err();
    assert!(
        matches!(e, MediaError::Empty { .. } | MediaError::Decode { .. }),
        "{e}"
    );
    // Truncated.
    let bytes = std::fs::read(fix("inputs/odd_300x201.png")).unwrap();
    let e = decode_image(&bytes[..bytes.len() / 2], "cut.png", &l).unwrap_err();
    assert!(matches!(e, MediaError::Decode { .. }), "{e}");
    assert!(e.to_string().contains("cut.png") && e.to_string().contains("fix:"));
    // Not an image; empty.
    let e = decode_image(b"hello world, not an image", "x.png", &l).unwrap_err();
    assert!(matches!(e, MediaError::Decode { .. }), "{e}");
    let e = decode_image(b"", "empty.png", &l).unwrap_err();
    assert!(matches!(e, MediaError::Decode { .. }), "{e}");
    // A lower pixel limit.
    let small = Limits {
        max_pixels: 1000,
        ..Limits::default()
    };
    let e = media::load_image(&fix("inputs/odd_300x201.png"), &small).unwrap_err();
    assert!(matches!(e, MediaError::TooLarge { .. }), "{e}");
}

#[test]
fn bad_videos_give_typed_errors() {
    let l = Limits::default();
    // A still PNG is not a video.
    let e = decode_video(
        VideoSource::Path(&fix("inputs/odd_300x201.png")),
        "still",
        &l,
    )
    .unwrap_err();
    assert!(matches!(e, MediaError::Unsupported { .. }), "{e}");
    // Empty folder.
    let d = tempfile::tempdir().unwrap();
    let e = decode_video(VideoSource::Path(d.path()), "empty-dir", &l).unwrap_err();
    assert!(matches!(e, MediaError::Decode { .. }), "{e}");
    // Frame limit.
    let few = Limits {
        max_frames: 3,
        ..Limits::default()
    };
    let e = decode_video(VideoSource::Path(&fix("inputs/frames_5fps")), "f", &few).unwrap_err();
    assert!(matches!(e, MediaError::Limit { .. }), "{e}");
    // Too few frames for a temporal patch (HF raises the same).
    let one = Video::from_frames(vec![image::RgbImage::new(64, 64)], 1.0, "one");
    let e = qwen3vl::VideoProcessor::qwen3vl_default()
        .preprocess(&one)
        .unwrap_err();
    assert!(matches!(e, MediaError::Shape { .. }), "{e}");
    #[cfg(feature = "video-ffmpeg")]
    {
        let e = decode_video(
            VideoSource::Path(&fix("inputs/audio_only.mp4")),
            "audio.mp4",
            &l,
        )
        .unwrap_err();
        assert!(matches!(e, MediaError::NoVideoStream { .. }), "{e}");
        let bytes = std::fs::read(fix("inputs/testsrc_24fps.mp4")).unwrap();
        for cut in [bytes.len() / 3, 200] {
            let e = decode_video(VideoSource::Bytes(&bytes[..cut]), "cut.mp4", &l).unwrap_err();
            assert!(matches!(e, MediaError::Decode { .. }), "{cut}: {e}");
        }
        let mut garbage = bytes.clone();
        for b in garbage.iter_mut().skip(64) {
            *b = b.wrapping_mul(31).wrapping_add(7);
        }
        let e = decode_video(VideoSource::Bytes(&garbage), "garbage.mp4", &l).unwrap_err();
        assert!(matches!(e, MediaError::Decode { .. }), "{e}");
        let e = decode_video(VideoSource::Bytes(b"not a video at all"), "x.mp4", &l).unwrap_err();
        assert!(matches!(e, MediaError::Decode { .. }), "{e}");
    }
}

#[test]
fn media_paths_stay_inside_the_dataset() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample");
    assert!(media::resolve_in_dataset(&root, "media/AS-0037.mp4").is_ok());
    let e = media::resolve_in_dataset(&root, "../../Cargo.toml").unwrap_err();
    assert!(matches!(e, MediaError::OutsideDataset { .. }), "{e}");
    let e = media::resolve_in_dataset(&root, "/etc/hostname").unwrap_err();
    assert!(
        matches!(e, MediaError::OutsideDataset { .. } | MediaError::Io { .. }),
        "{e}"
    );
}

#[test]
fn config_spellings_and_errors() {
    let a = qwen3vl::ImageProcessor::from_json_str(
        r#"{"size": {"shortest_edge": 3136, "longest_edge": 50176}, "patch_size": 16}"#,
    )
    .unwrap();
    let b = qwen3vl::ImageProcessor::from_json_str(
        r#"{"min_pixels": 3136, "max_pixels": 50176, "patch_size": 16}"#,
    )
    .unwrap();
    assert_eq!(a, b);
    assert_eq!(a.common.max_pixels, 50176);
    let e = qwen3vl::ImageProcessor::from_json_str(r#"{"patch_size": "big"}"#).unwrap_err();
    assert!(matches!(e, MediaError::Config { .. }), "{e}");
    let e = gemma4::ImageProcessor::from_json_str(r#"{"max_soft_tokens": 100}"#).unwrap_err();
    assert!(matches!(e, MediaError::Config { .. }), "{e}");
    assert_eq!(
        qwen3vl::smart_resize(720, 1280, 32, 65536, 16777216).unwrap(),
        (704, 1280),
        "22.5 rounds to 22 (half to even)"
    );
}

#[test]
fn media_inspect_writes_the_model_inputs() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("img.safetensors");
    let o = bin()
        .args(["media", "inspect", "--processor"])
        .arg(fix("qwen3vl_preprocessor_config.json"))
        .arg("--image")
        .arg(fix("inputs/odd_300x201.png"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("image_grid_thw [1, 14, 20]"), "{err}");
    let t = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let mut names: Vec<&String> = t.keys().collect();
    names.sort();
    assert_eq!(names, ["image_grid_thw", "pixel_values"]);
    assert_eq!(t["pixel_values"].dims(), &[280, 1536]);
    assert_eq!(t["image_grid_thw"].to_vec2::<i64>().unwrap(), [[1, 14, 20]]);

    let vout = d.path().join("vid.safetensors");
    let o = bin()
        .args(["media", "inspect", "--processor"])
        .arg(fix("qwen3vl_video_preprocessor_config.json"))
        .arg("--video")
        .arg(fix("inputs/anim_10fps.gif"))
        .arg("--out")
        .arg(&vout)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("<0.2 seconds><0.9 seconds>"), "{err}");
    let t = candle_core::safetensors::load(&vout, &Device::Cpu).unwrap();
    assert_eq!(t["pixel_values_videos"].dims(), &[48, 1536]);
    assert_eq!(t["video_grid_thw"].to_vec2::<i64>().unwrap(), [[2, 4, 6]]);
    assert_eq!(t["frame_indices"].to_vec1::<i64>().unwrap(), [0, 4, 7, 11]);

    // Both inputs, or none: usage error from clap.
    let o = bin()
        .args(["media", "inspect", "--processor", "x", "--out", "y"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    // A bad image: exit 2 with the typed message.
    let o = bin()
        .args(["media", "inspect", "--processor"])
        .arg(fix("qwen3vl_preprocessor_config.json"))
        .arg("--image")
        .arg(fix("inputs/extreme_3000x10.png"))
        .arg("--out")
        .arg(d.path().join("bad.safetensors"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("aspect ratio"));
}

/// `media inspect --audio` writes the features under transformers' names,
/// equal to the transformers fixtures of tests/fixtures/audio (made by
/// make_audio_fixtures.py): Gemma 4 `input_features` + `input_features_mask`
/// (processor_config.json of the tiny Gemma 4 checkpoint), Whisper
/// `input_features` [1, 80, 3000].
#[test]
fn media_inspect_writes_audio_features() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let clip = root.join("tests/fixtures/audio/speech_en.wav");
    let want = candle_core::safetensors::load(
        root.join("tests/fixtures/audio/expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let d = tempfile::tempdir().unwrap();
    let inspect = |cfg: &std::path::Path, out: &std::path::Path| {
        let o = bin()
            .args(["media", "inspect", "--processor"])
            .arg(cfg)
            .arg("--audio")
            .arg(&clip)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        candle_core::safetensors::load(out, &Device::Cpu).unwrap()
    };
    let g = inspect(
        &root.join("tests/fixtures/tiny/gemma4/processor_config.json"),
        &d.path().join("g.safetensors"),
    );
    let got = g["input_features"].squeeze(0).unwrap();
    let exp = &want["speech_en.gemma4.values"];
    assert_eq!(got.dims(), exp.dims());
    let diff = max_diff(&got, exp);
    assert!(diff <= 1e-4, "gemma4 features differ by {diff}");
    let mask = g["input_features_mask"]
        .squeeze(0)
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    let exp_mask: Vec<u8> = want["speech_en.gemma4.mask"]
        .to_dtype(candle_core::DType::U8)
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    assert_eq!(mask, exp_mask);

    let wcfg = d.path().join("preprocessor_config.json");
    std::fs::write(
        &wcfg,
        r#"{"feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 80}"#,
    )
    .unwrap();
    let w = inspect(&wcfg, &d.path().join("w.safetensors"));
    let f = &w["input_features"];
    assert_eq!(f.dims(), &[1, 80, 3000]);
    let frames: Vec<i64> = want["speech_en.whisper80.frames"]
        .to_dtype(candle_core::DType::I64)
        .unwrap()
        .to_vec1()
        .unwrap();
    let idx = candle_core::Tensor::from_vec(
        frames.iter().map(|&x| x as u32).collect::<Vec<_>>(),
        frames.len(),
        &Device::Cpu,
    )
    .unwrap();
    let got = f.squeeze(0).unwrap().index_select(&idx, 1).unwrap();
    let diff = max_diff(&got, &want["speech_en.whisper80.values"]);
    assert!(diff <= 1e-4, "whisper features differ by {diff}");
}

fn max_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .unwrap()
}

/// Red-team finding: every frame of an animation was held before sampling
/// (an 8.6 MB GIF of 10,000 frames held 4.2 GB). Limits now count what is
/// kept: a 600-frame GIF whose decoded frames total 96 MB decodes under a
/// 4 MB budget when 4 frames are sampled, with the same frames as decoding
/// it whole; more frames than 8x max_frames is refused by count.
#[test]
fn animation_limits_count_the_kept_frames() {
    use image::codecs::gif::{GifEncoder, Repeat};
    let (w, h, n) = (200u32, 200u32, 600usize);
    let mut gif = Vec::new();
    {
        let mut enc = GifEncoder::new_with_speed(&mut gif, 30);
        enc.set_repeat(Repeat::Infinite).unwrap();
        for i in 0..n {
            let px = image::Rgba([(i % 251) as u8, (i * 7 % 253) as u8, 90, 255]);
            let img = image::RgbaImage::from_pixel(w, h, px);
            enc.encode_frame(image::Frame::from_parts(
                img,
                0,
                0,
                image::Delay::from_numer_denom_ms(100, 1),
            ))
            .unwrap();
        }
    }
    let pick = |total: usize, _fps: f64| vec![0, total / 3, 2 * total / 3, total - 1];
    let tight = Limits {
        max_video_bytes: 4 << 20,
        ..Limits::default()
    };
    let v = decode_video_sampled(VideoSource::Bytes(&gif), "many.gif", &tight, &pick).unwrap();
    assert_eq!(v.total_frames, n);
    assert_eq!(v.frame_indices, vec![0, 200, 400, 599]);
    assert!((v.fps - 10.0).abs() < 1e-9, "{}", v.fps);
    let whole = decode_video(VideoSource::Bytes(&gif), "many.gif", &Limits::default()).unwrap();
    for (k, &i) in v.frame_indices.iter().enumerate() {
        assert_eq!(v.frames[k], whole.frames[i], "frame {i}");
    }
    let few = Limits {
        max_frames: 50,
        ..Limits::default()
    };
    let e = decode_video_sampled(VideoSource::Bytes(&gif), "many.gif", &few, &pick)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("more than 400 frames") && e.contains("max_frames"),
        "{e}"
    );
}

/// The built-in FFmpeg against the `ffmpeg` command line (FFmpeg 9.0.2,
/// x86-64, autorotation on) on fixtures made by
/// tests/fixtures/media/make_video_fixtures.py: H.264 at a size that is not
/// a multiple of 8, BT.709-tagged, full range, 4:2:2, HEVC, VP9 WebM (even
/// and odd size), display-matrix rotations and flips, variable frame rate, AV1 8- and
/// 10-bit (rav1d here, libdav1d there); and ProRes, which the built-in
/// FFmpeg does not decode: a per-item error naming the codec.
#[cfg(feature = "video-ffmpeg")]
#[test]
fn videos_decode_like_the_ffmpeg_command_line() {
    let s = std::fs::read_to_string(fix("video_expected.json")).unwrap();
    let e: Value = serde_json::from_str(&s).unwrap();
    let l = Limits::default();
    let mut checked = 0;
    for (name, c) in e["cases"].as_object().unwrap() {
        let path = fix(c["file"].as_str().unwrap());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            c["sha256_file"].as_str().unwrap(),
            "{name}: the input file changed; re-run make_video_fixtures.py"
        );
        let got = decode_video(VideoSource::Path(&path), name, &l);
        if let Some(codec) = c["error"].as_str() {
            let codec: &'static str = match codec {
                "prores" => "prores",
                other => panic!("no case for {other}"),
            };
            let have = media::video::ffmpeg_decoders(&[codec]).unwrap().decoders;
            if !have.is_empty() {
                // A system FFmpeg that has it (feature `system-ffmpeg`).
                assert!(got.is_ok(), "{name}: this FFmpeg has {codec} but failed");
                continue;
            }
            let Err(err) = got else {
                panic!("{name}: decoded without a {codec} decoder")
            };
            assert!(
                matches!(err, MediaError::Unsupported { .. }),
                "{name}: {err}"
            );
            let text = err.to_string();
            assert!(
                text.contains(codec),
                "{name}: the error names the codec: {text}"
            );
            continue;
        }
        let v = got.unwrap_or_else(|err| panic!("{name}: {err}"));
        let shas: Vec<&str> = c["frame_sha256"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(v.frames.len(), shas.len(), "{name}: frame count");
        assert_eq!(v.total_frames, shas.len(), "{name}: total frames");
        let (w, h) = (c["width"].as_u64().unwrap(), c["height"].as_u64().unwrap());
        for (i, (f, sha)) in v.frames.iter().zip(&shas).enumerate() {
            assert_eq!(
                (f.width() as u64, f.height() as u64),
                (w, h),
                "{name}: frame {i} size"
            );
            assert_eq!(
                hex::encode(Sha256::digest(f.as_raw())),
                *sha,
                "{name}: frame {i} differs from `ffmpeg -pix_fmt rgb24`"
            );
        }
        if let Some(fps) = c["fps"].as_f64() {
            assert!((v.fps - fps).abs() < 1e-6, "{name}: fps {} vs {fps}", v.fps);
        }
        checked += 1;
    }
    assert_eq!(checked, 15);
}
