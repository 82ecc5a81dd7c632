//! Audio decoding and HF-exact features, against fixtures made by
//! `tests/fixtures/audio/make_audio_fixtures.py` (transformers 5.23.0, numpy
//! feature extractors). No Python, espeak or models at test time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anjeon::audio::decode::{decode_bytes, decode_file, resample, AudioError, DecodeOptions};
use anjeon::audio::features::{Gemma4Features, WhisperFeatures, CHUNK_FRAMES};
use candle_core::{Device, Tensor};

const CLIPS: &[&str] = &[
    "tone_440",
    "chirp",
    "noise",
    "silence",
    "short",
    "speech_en",
    "speech_ko",
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audio")
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("expected.safetensors"), &Device::Cpu).unwrap()
}

fn pcm(name: &str) -> Vec<f32> {
    let a = decode_file(
        &dir().join(format!("{name}.wav")),
        &DecodeOptions::default(),
    )
    .unwrap();
    assert_eq!(a.rate, 16_000);
    assert_eq!(a.source_rate, 16_000, "{name}");
    a.samples
}

#[test]
fn whisper_features_match_transformers() {
    let exp = expected();
    for n_mels in [80usize, 128] {
        let fe = WhisperFeatures::new(n_mels);
        for clip in CLIPS {
            let key = format!("{clip}.whisper{n_mels}");
            let want = exp[&format!("{key}.values")].to_vec2::<f32>().unwrap();
            let frames = exp[&format!("{key}.frames")].to_vec1::<i64>().unwrap();
            let stats = exp[&format!("{key}.stats")].to_vec1::<f64>().unwrap();
            let got = fe.chunk(&pcm(clip));
            assert_eq!(got.len(), n_mels * CHUNK_FRAMES);
            let mut max_d = 0f32;
            for (m, row) in want.iter().enumerate() {
                for (j, &f) in frames.iter().enumerate() {
                    let g = got[m * CHUNK_FRAMES + f as usize];
                    max_d = max_d.max((g - row[j]).abs());
                }
            }
            let mean = got.iter().map(|&v| v as f64).sum::<f64>() / got.len() as f64;
            let min = got.iter().copied().fold(f32::INFINITY, f32::min) as f64;
            let max = got.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            eprintln!(
                "{key}: {} frames compared, max |d| {max_d:.2e}, mean {mean:.6} vs {:.6}",
                frames.len(),
                stats[0]
            );
            assert!(max_d <= 1e-4, "{key}: max |d| {max_d}");
            assert!(
                (mean - stats[0]).abs() <= 1e-5,
                "{key}: mean {mean} vs {}",
                stats[0]
            );
            assert!(
                (min - stats[1]).abs() <= 1e-4,
                "{key}: min {min} vs {}",
                stats[1]
            );
            assert!(
                (max - stats[2]).abs() <= 1e-4,
                "{key}: max {max} vs {}",
                stats[2]
            );
        }
    }
}

#[test]
fn gemma4_features_and_mask_match_transformers() {
    let exp = expected();
    let fe = Gemma4Features::new();
    for clip in CLIPS {
        let want = exp[&format!("{clip}.gemma4.values")]
            .to_vec2::<f32>()
            .unwrap();
        let mask = exp[&format!("{clip}.gemma4.mask")].to_vec1::<u8>().unwrap();
        let got = fe.extract(&pcm(clip));
        assert_eq!(got.frames, want.len(), "{clip}: frames");
        assert_eq!(
            got.mask,
            mask.iter().map(|&m| m == 1).collect::<Vec<_>>(),
            "{clip}: mask"
        );
        let mut max_d = 0f32;
        for (f, row) in want.iter().enumerate() {
            for (m, &w) in row.iter().enumerate() {
                max_d = max_d.max((got.values[f * got.n_mels + m] - w).abs());
            }
        }
        let stock = exp[&format!("{clip}.gemma4.f32_path_max_diff")]
            .to_vec1::<f64>()
            .unwrap()[0];
        eprintln!(
            "{clip}.gemma4: {} frames, max |d| {max_d:.2e} (transformers' float32 path is {stock:.2e} from the same values)",
            got.frames
        );
        assert!(max_d <= 1e-4, "{clip}: max |d| {max_d}");
    }
}

#[test]
fn long_audio_is_cut_into_30s_chunks() {
    let fe = WhisperFeatures::new(80);
    let x: Vec<f32> = (0..(65 * 16_000))
        .map(|i| (i as f32 * 0.05).sin() * 0.1)
        .collect();
    let chunks = fe.chunks(&x);
    assert_eq!(chunks.len(), 3);
    assert_eq!(chunks[0], fe.chunk(&x[..480_000]));
    assert_eq!(chunks[2], fe.chunk(&x[960_000..]));
}

/// Zero crossings per second and RMS of the middle of a clip.
fn tone_stats(x: &[f32], rate: f64) -> (f64, f64) {
    let m = &x[x.len() / 5..x.len() * 4 / 5];
    let zc = m
        .windows(2)
        .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
        .count();
    let rms = (m.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / m.len() as f64).sqrt();
    (zc as f64 * rate / m.len() as f64 / 2.0, rms)
}

#[test]
fn decodes_every_supported_codec_to_mono_16k() {
    for (file, decoder) in [
        ("tone_440.wav", "hound:pcm16"),
        ("tone_440.flac", "symphonia:flac"),
        ("tone_440.ogg", "symphonia:vorbis"),
        ("tone_440.mp3", "symphonia:mp3"),
        ("tone_440.m4a", "symphonia:aac"),
        ("tone_440_mulaw.wav", "symphonia:pcm_mulaw"),
    ] {
        let a = decode_file(&dir().join(file), &DecodeOptions::default()).unwrap();
        assert_eq!(a.rate, 16_000);
        assert_eq!(a.decoder, decoder, "{file}");
        let (hz, rms) = tone_stats(&a.samples, 16_000.0);
        eprintln!(
            "{file}: {} samples from {} Hz, {hz:.1} Hz, rms {rms:.3}",
            a.samples.len(),
            a.source_rate
        );
        assert!((hz - 440.0).abs() < 5.0, "{file}: {hz} Hz");
        assert!((rms - 0.5 / 2f64.sqrt()).abs() < 0.03, "{file}: rms {rms}");
        let secs = a.seconds();
        let want = if file == "tone_440.wav" { 1.0 } else { 0.5 };
        assert!((secs - want).abs() < 0.08, "{file}: {secs} s");
    }
}

#[test]
fn stereo_44k_is_averaged_and_resampled() {
    let a = decode_file(&dir().join("stereo_44k.wav"), &DecodeOptions::default()).unwrap();
    assert_eq!((a.source_rate, a.source_channels), (44_100, 2));
    assert_eq!(a.samples.len(), 16_000);
    // Left 0.4 and right 0.2 sin(1 kHz): the mean is 0.3 sin(1 kHz).
    let mut max_d = 0f32;
    for (i, &v) in a.samples.iter().enumerate().skip(200).take(15_600) {
        let want = 0.3 * (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / 16_000.0).sin();
        max_d = max_d.max((v - want as f32).abs());
    }
    eprintln!("stereo 44.1k → mono 16k: max |d| vs ideal {max_d:.2e}");
    assert!(max_d < 2e-3, "{max_d}");
}

#[test]
fn resampler_keeps_length_and_identity() {
    let x: Vec<f32> = (0..1000).map(|i| i as f32).collect();
    assert_eq!(resample(&x, 16_000, 16_000).unwrap(), x);
    assert_eq!(resample(&x, 48_000, 16_000).unwrap().len(), 334);
    assert_eq!(resample(&x, 8_000, 16_000).unwrap().len(), 2000);
}

#[test]
fn silence_is_fine() {
    let a = decode_file(&dir().join("silence.wav"), &DecodeOptions::default()).unwrap();
    assert_eq!(a.samples.len(), 8000);
    assert!(a.samples.iter().all(|&v| v == 0.0));
}

fn wav_bytes(rate: u32, channels: u16, data_len: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(b"RIFF");
    v.extend_from_slice(&(36 + data_len).to_le_bytes());
    v.extend_from_slice(b"WAVEfmt ");
    v.extend_from_slice(&16u32.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes());
    v.extend_from_slice(&channels.to_le_bytes());
    v.extend_from_slice(&rate.to_le_bytes());
    v.extend_from_slice(&(rate * 2 * channels as u32).to_le_bytes());
    v.extend_from_slice(&(2 * channels).to_le_bytes());
    v.extend_from_slice(&16u16.to_le_bytes());
    v.extend_from_slice(b"data");
    v.extend_from_slice(&data_len.to_le_bytes());
    v.extend_from_slice(data);
    v
}

fn err(bytes: &[u8], name: &str, opts: &DecodeOptions) -> AudioError {
    let e = decode_bytes(bytes, name, opts).expect_err(name);
    let text = e.to_string();
    assert!(
        text.contains(name) && text.contains("fix:"),
        "{name}: error names the file and a fix: {text}"
    );
    eprintln!("{text}");
    e
}

#[test]
fn bad_inputs_give_typed_errors() {
    let opts = DecodeOptions::default();
    // Zero-length file and a WAV with no samples.
    assert!(matches!(
        err(b"", "empty.wav", &opts),
        AudioError::Empty { .. }
    ));
    assert!(matches!(
        err(&wav_bytes(16_000, 1, 0, &[]), "nodata.wav", &opts),
        AudioError::Empty { .. }
    ));
    // A header that says two hours: refused from the header, before reading data.
    let two_hours = 2 * 3600 * 16_000 * 2;
    assert!(matches!(
        err(&wav_bytes(16_000, 1, two_hours, &[0; 64]), "long.wav", &opts),
        AudioError::TooLong { seconds, .. } if (seconds - 7200.0).abs() < 1.0
    ));
    // Longer than a lowered limit.
    let speech = std::fs::read(dir().join("speech_en.wav")).unwrap();
    let short = DecodeOptions {
        max_seconds: 1.0,
        ..opts
    };
    assert!(matches!(
        err(&speech, "speech_en.wav", &short),
        AudioError::TooLong { .. }
    ));
    // Truncated: the header promises more data than there is.
    assert!(matches!(
        err(&speech[..speech.len() / 2], "cut.wav", &opts),
        AudioError::Malformed { .. }
    ));
    assert!(matches!(
        err(&speech[..30], "cut_header.wav", &opts),
        AudioError::Malformed { .. }
    ));
    let flac = std::fs::read(dir().join("tone_440.flac")).unwrap();
    assert!(matches!(
        err(&flac[..flac.len() / 2], "cut.flac", &opts),
        AudioError::Malformed { .. }
    ));
    // A sample-rate field that disagrees with the byte rate, and a zero rate.
    let mut bad_rate = wav_bytes(16_000, 1, 64, &[0; 64]);
    bad_rate[24..28].copy_from_slice(&44_100u32.to_le_bytes());
    assert!(matches!(
        err(&bad_rate, "rate.wav", &opts),
        AudioError::Malformed { .. }
    ));
    let mut zero_rate = wav_bytes(16_000, 1, 64, &[0; 64]);
    zero_rate[24..28].copy_from_slice(&0u32.to_le_bytes());
    assert!(matches!(
        err(&zero_rate, "zero_rate.wav", &opts),
        AudioError::Malformed { .. }
    ));
    // Not audio at all, and an unknown WAV codec.
    assert!(matches!(
        err(
            b"this is not an audio file at all, just text",
            "notes.mp3",
            &opts
        ),
        AudioError::Unsupported { .. } | AudioError::Malformed { .. }
    ));
    let mut odd_codec = wav_bytes(16_000, 1, 64, &[0; 64]);
    odd_codec[20..22].copy_from_slice(&0x1234u16.to_le_bytes());
    assert!(matches!(
        err(&odd_codec, "codec.wav", &opts),
        AudioError::Unsupported { .. } | AudioError::Malformed { .. }
    ));
    // Random bytes never panic.
    let mut seed = 7u64;
    for i in 0..200 {
        let n = (i * 37) % 3000;
        let mut b: Vec<u8> = (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as u8
            })
            .collect();
        if i % 2 == 0 && b.len() > 12 {
            b[..12].copy_from_slice(&speech[..12]);
        }
        let _ = decode_bytes(&b, &format!("random{i}.wav"), &opts);
        let _ = decode_bytes(&b, &format!("random{i}.mp3"), &opts);
    }
    // A missing file.
    assert!(matches!(
        decode_file(Path::new("/nonexistent/x.wav"), &opts),
        Err(AudioError::Io { .. })
    ));
}
