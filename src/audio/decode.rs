//! Decoding audio files to mono 16 kHz `f32` PCM.
//!
//! Plain PCM WAV is read with `hound` (16/24/32-bit integer and 32-bit float;
//! integers are scaled by `1 / 2^(bits-1)`, as soundfile and librosa do), all
//! other containers and codecs with `symphonia` 0.5 (WAV with other codecs,
//! FLAC, MP3, Ogg/Vorbis, MP4/M4A with AAC). Channels are averaged to mono.
//! Other sample rates are resampled with rubato's synchronous FFT resampler
//! (`FftFixedIn`, 1024-frame input chunks, 2 sub-chunks; its output delay is
//! trimmed and the output is cut to `ceil(n * 16000 / rate)` samples).
//!
//! The duration limit is checked from the header before decoding when the
//! header says the length (WAV, FLAC, most MP3/MP4), else while decoding.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;

use rubato::{FftFixedIn, Resampler};
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_FLAC, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use crate::core::sample::{Media, MediaSource as ItemSource};

/// Whisper's (and most speech models') sample rate.
pub const TARGET_RATE: u32 = 16_000;
/// Default longest input: 10 minutes.
pub const DEFAULT_MAX_SECONDS: f64 = 600.0;

pub use crate::core::error::AudioError;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeOptions {
    /// Longest accepted input in seconds.
    pub max_seconds: f64,
    /// Output sample rate (16 kHz for Whisper).
    pub target_rate: u32,
}

impl crate::core::limits::Limits {
    /// The decoding options of these limits (16 kHz, the audio seconds limit).
    pub fn audio(&self) -> DecodeOptions {
        DecodeOptions {
            max_seconds: self.max_audio_seconds,
            target_rate: TARGET_RATE,
        }
    }
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_seconds: DEFAULT_MAX_SECONDS,
            target_rate: TARGET_RATE,
        }
    }
}

/// Decoded mono audio at `rate` Hz.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    pub samples: Vec<f32>,
    /// Sample rate of `samples` (the target rate).
    pub rate: u32,
    /// The file's own sample rate and channel count.
    pub source_rate: u32,
    pub source_channels: usize,
    /// Which decoder read it (`hound:pcm16`, `symphonia:mp3`, ...).
    pub decoder: String,
}

impl Audio {
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / self.rate as f64
    }
}

/// Decode a file.
pub fn decode_file(path: &Path, opts: &DecodeOptions) -> Result<Audio, AudioError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|source| AudioError::Io {
        file: name.clone(),
        source,
    })?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    decode_source(file, &name, ext.as_deref(), opts)
}

/// Decode bytes held in memory; `name` is used in errors and its extension as a hint.
pub fn decode_bytes(data: &[u8], name: &str, opts: &DecodeOptions) -> Result<Audio, AudioError> {
    let ext = Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    decode_source(
        std::io::Cursor::new(data.to_vec()),
        name,
        ext.as_deref(),
        opts,
    )
}

/// Decode a data set item's audio part.
pub fn decode_media(media: &Media, opts: &DecodeOptions) -> Result<Audio, AudioError> {
    match &media.source {
        ItemSource::Path(p) => decode_file(p, opts),
        ItemSource::Bytes { data, name } => decode_bytes(data, name, opts),
    }
}

fn decode_source<R: MediaSource + 'static>(
    mut src: R,
    name: &str,
    ext: Option<&str>,
    opts: &DecodeOptions,
) -> Result<Audio, AudioError> {
    let io = |source| AudioError::Io {
        file: name.to_string(),
        source,
    };
    let mut head = [0u8; 12];
    let n = read_up_to(&mut src, &mut head).map_err(io)?;
    src.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
    if n == 0 {
        return Err(AudioError::Empty {
            file: name.to_string(),
        });
    }
    let is_riff = n == 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"WAVE";
    let is_mp4 = n >= 8 && &head[4..8] == b"ftyp";
    if is_mp4 {
        let len = src.seek(std::io::SeekFrom::End(0)).map_err(io)?;
        src.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
        if let Err(reason) = mp4_tables_fit(&mut src, 0, len, 0) {
            return Err(AudioError::Malformed {
                file: name.to_string(),
                reason,
            });
        }
        src.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
    }
    let (mono, rate, channels, decoder) = if is_riff {
        match wav_pcm(&mut src, name, opts)? {
            Some(x) => x,
            None => {
                src.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
                symphonia_contained(Box::new(src), name, ext, opts)?
            }
        }
    } else {
        symphonia_contained(Box::new(src), name, ext, opts)?
    };
    if mono.is_empty() {
        return Err(AudioError::Empty {
            file: name.to_string(),
        });
    }
    let samples =
        resample(&mono, rate, opts.target_rate).map_err(|reason| AudioError::Resample {
            file: name.to_string(),
            from: rate,
            to: opts.target_rate,
            reason,
        })?;
    Ok(Audio {
        samples,
        rate: opts.target_rate,
        source_rate: rate,
        source_channels: channels,
        decoder,
    })
}

/// The MP4 boxes from `start` to `end`: every box fits in its parent, and
/// every sample table's entry count fits in its box. symphonia 0.5 sizes
/// its tables from these counts before reading them, so a forged count
/// (found by fuzzing) would ask for tens of gigabytes and abort the process.
fn mp4_tables_fit<R: Read + Seek>(
    r: &mut R,
    start: u64,
    end: u64,
    depth: usize,
) -> Result<(), String> {
    if depth > 16 {
        return Err("MP4 boxes nested more than 16 deep".into());
    }
    let mut at = start;
    while at + 8 <= end {
        r.seek(std::io::SeekFrom::Start(at))
            .map_err(|e| e.to_string())?;
        let mut h = [0u8; 8];
        r.read_exact(&mut h).map_err(|e| e.to_string())?;
        let kind = [h[4], h[5], h[6], h[7]];
        let (size, header) = match u32::from_be_bytes([h[0], h[1], h[2], h[3]]) {
            0 => (end - at, 8),
            1 => {
                let mut l = [0u8; 8];
                r.read_exact(&mut l).map_err(|e| e.to_string())?;
                (u64::from_be_bytes(l), 16)
            }
            s => (s as u64, 8),
        };
        let name = String::from_utf8_lossy(&kind).into_owned();
        if size < header || size > end - at {
            return Err(format!(
                "MP4 box {name:?} at byte {at} claims {size} bytes, outside its parent"
            ));
        }
        let body = at + header;
        let body_len = size - header;
        match &kind {
            b"moov" | b"trak" | b"mdia" | b"minf" | b"stbl" | b"edts" | b"udta" | b"dinf"
            | b"mvex" | b"moof" | b"traf" | b"ilst" => {
                mp4_tables_fit(r, body, body + body_len, depth + 1)?
            }
            // A full box: version and flags before its children.
            b"meta" if body_len >= 4 => mp4_tables_fit(r, body + 4, body + body_len, depth + 1)?,
            b"stts" | b"ctts" | b"stsc" | b"stco" | b"co64" | b"stss" | b"stsz" | b"elst" => {
                let mut f = [0u8; 12];
                let need = if &kind == b"stsz" { 12 } else { 8 };
                if body_len < need {
                    return Err(format!("MP4 box {name:?} at byte {at} is too short"));
                }
                r.read_exact(&mut f[..need as usize])
                    .map_err(|e| e.to_string())?;
                let version = f[0];
                let (count, entry) = match &kind {
                    b"stsz" => {
                        let sample_size = u32::from_be_bytes([f[4], f[5], f[6], f[7]]);
                        let n = u32::from_be_bytes([f[8], f[9], f[10], f[11]]) as u64;
                        (n, if sample_size == 0 { 4 } else { 0 })
                    }
                    k => {
                        let n = u32::from_be_bytes([f[4], f[5], f[6], f[7]]) as u64;
                        let entry = match k {
                            b"stsc" => 12,
                            b"stco" | b"stss" => 4,
                            b"elst" if version == 1 => 20,
                            b"elst" => 12,
                            _ => 8,
                        };
                        (n, entry)
                    }
                };
                if count * entry > body_len - need {
                    return Err(format!(
                        "MP4 box {name:?} at byte {at} lists {count} entries, more than its {body_len} bytes hold"
                    ));
                }
            }
            _ => {}
        }
        at += size;
    }
    Ok(())
}

fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

type Decoded = (Vec<f32>, u32, usize, String);

fn too_long(name: &str, seconds: f64, opts: &DecodeOptions) -> Result<(), AudioError> {
    if seconds > opts.max_seconds {
        return Err(AudioError::TooLong {
            file: name.to_string(),
            seconds,
            limit: opts.max_seconds,
        });
    }
    Ok(())
}

fn check_rate(name: &str, rate: u32) -> Result<(), AudioError> {
    if !(1000..=768_000).contains(&rate) {
        return Err(AudioError::Malformed {
            file: name.to_string(),
            reason: format!("implausible sample rate {rate} Hz in the header"),
        });
    }
    Ok(())
}

/// The `fmt ` chunk's sample rate, byte rate and block align, read by hand to
/// check that the header agrees with itself (hound does not).
fn wav_fmt<R: Read + Seek>(src: &mut R) -> std::io::Result<Option<(u16, u16, u32, u32, u16)>> {
    src.seek(std::io::SeekFrom::Start(12))?;
    let mut hdr = [0u8; 8];
    for _ in 0..64 {
        if read_up_to(src, &mut hdr)? < 8 {
            return Ok(None);
        }
        let len = u32::from_le_bytes(hdr[4..8].try_into().unwrap());
        if &hdr[0..4] == b"fmt " {
            let mut f = [0u8; 16];
            if len < 16 || read_up_to(src, &mut f)? < 16 {
                return Ok(None);
            }
            let format = u16::from_le_bytes([f[0], f[1]]);
            let channels = u16::from_le_bytes([f[2], f[3]]);
            let rate = u32::from_le_bytes(f[4..8].try_into().unwrap());
            let byte_rate = u32::from_le_bytes(f[8..12].try_into().unwrap());
            let align = u16::from_le_bytes([f[12], f[13]]);
            return Ok(Some((format, channels, rate, byte_rate, align)));
        }
        src.seek(std::io::SeekFrom::Current(len as i64 + (len & 1) as i64))?;
    }
    Ok(None)
}

/// Plain PCM WAV through hound; `None` when hound does not handle the codec
/// (then symphonia tries).
fn wav_pcm<R: Read + Seek>(
    src: &mut R,
    name: &str,
    opts: &DecodeOptions,
) -> Result<Option<Decoded>, AudioError> {
    let malformed = |reason: String| AudioError::Malformed {
        file: name.to_string(),
        reason,
    };
    let io = |source| AudioError::Io {
        file: name.to_string(),
        source,
    };
    if let Some((format, channels, rate, byte_rate, align)) = wav_fmt(src).map_err(io)? {
        check_rate(name, rate)?;
        if channels == 0 {
            return Err(malformed("the header says 0 channels".into()));
        }
        // PCM (1) and IEEE float (3): byte rate must be rate × block align.
        if (format == 1 || format == 3) && byte_rate as u64 != rate as u64 * align as u64 {
            return Err(malformed(format!(
                "header sample rate {rate} Hz does not match its byte rate {byte_rate} (block align {align})"
            )));
        }
    }
    src.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
    let mut reader = match hound::WavReader::new(src) {
        Ok(r) => r,
        Err(hound::Error::Unsupported) => return Ok(None),
        // The file is open and seekable: a failed read is a short file.
        Err(hound::Error::IoError(e)) => {
            return Err(malformed(format!("the WAV header is truncated ({e})")))
        }
        Err(e) => return Err(malformed(format!("WAV: {e}"))),
    };
    let spec = reader.spec();
    check_rate(name, spec.sample_rate)?;
    let channels = spec.channels as usize;
    too_long(
        name,
        reader.duration() as f64 / spec.sample_rate as f64,
        opts,
    )?;
    let frames = reader.duration() as usize;
    let mut inter: Vec<f32> = Vec::with_capacity(frames * channels);
    let bad = |e: hound::Error| match e {
        hound::Error::IoError(e) => malformed(format!(
            "the data is shorter than the header says (truncated file: {e})"
        )),
        e => malformed(format!("WAV data: {e}")),
    };
    let kind = match spec.sample_format {
        hound::SampleFormat::Float => {
            if spec.bits_per_sample != 32 {
                return Ok(None);
            }
            for s in reader.samples::<f32>() {
                inter.push(s.map_err(bad)?);
            }
            "f32".to_string()
        }
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            for s in reader.samples::<i32>() {
                inter.push(s.map_err(bad)? as f32 * scale);
            }
            format!("pcm{}", spec.bits_per_sample)
        }
    };
    if inter.len() % channels != 0 {
        return Err(malformed("the data ends inside a sample frame".into()));
    }
    Ok(Some((
        downmix(&inter, channels),
        spec.sample_rate,
        channels,
        format!("hound:{kind}"),
    )))
}

/// Mean of the channels of interleaved samples.
pub fn downmix(inter: &[f32], channels: usize) -> Vec<f32> {
    if channels <= 1 {
        return inter.to_vec();
    }
    let inv = 1.0 / channels as f32;
    inter
        .chunks_exact(channels)
        .map(|f| f.iter().sum::<f32>() * inv)
        .collect()
}

/// [`with_symphonia`], with a decoder panic as the file's error: symphonia
/// 0.5's MP4 demuxer and AAC decoder panic on some malformed files (found by
/// fuzzing, `tests/fixtures/fuzz/audio/`).
fn symphonia_contained(
    src: Box<dyn MediaSource>,
    name: &str,
    ext: Option<&str>,
    opts: &DecodeOptions,
) -> Result<Decoded, AudioError> {
    crate::core::guard::contain(|| with_symphonia(src, name, ext, opts)).unwrap_or_else(|panic| {
        Err(AudioError::Malformed {
            file: name.to_string(),
            reason: format!("the decoder failed on the file's structure ({panic})"),
        })
    })
}

fn with_symphonia(
    src: Box<dyn MediaSource>,
    name: &str,
    ext: Option<&str>,
    opts: &DecodeOptions,
) -> Result<Decoded, AudioError> {
    let unsupported = |reason: String| AudioError::Unsupported {
        file: name.to_string(),
        reason,
    };
    let malformed = |reason: String| AudioError::Malformed {
        file: name.to_string(),
        reason,
    };
    let mss = MediaSourceStream::new(src, Default::default());
    let mut hint = Hint::new();
    if let Some(e) = ext {
        hint.with_extension(e);
    }
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            mss,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(|e| match e {
            SymError::Unsupported(w) => unsupported(format!("unknown container ({w})")),
            SymError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                malformed("the file ends before its header does".into())
            }
            e => malformed(format!("reading the container: {e}")),
        })?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| unsupported("no audio track".into()))?
        .clone();
    let params = &track.codec_params;
    let codec_name = symphonia::default::get_codecs()
        .get_codec(params.codec)
        .map(|d| d.short_name.to_string())
        .unwrap_or_else(|| "unknown".into());
    let mut decoder = symphonia::default::get_codecs()
        .make(params, &DecoderOptions::default())
        .map_err(|e| unsupported(format!("codec {codec_name}: {e}")))?;
    if let Some(rate) = params.sample_rate {
        check_rate(name, rate)?;
        if let Some(n) = params.n_frames {
            too_long(name, n as f64 / rate as f64, opts)?;
        }
    }
    let lossless = params.codec == CODEC_TYPE_FLAC || codec_name.starts_with("pcm");
    let mut inter: Vec<f32> = Vec::new();
    let mut rate = params.sample_rate.unwrap_or(0);
    let mut channels = params.channels.map(|c| c.count()).unwrap_or(0);
    let mut bad_packets = 0usize;
    let mut good_packets = 0usize;
    let mut sbuf: Option<SampleBuffer<f32>> = None;
    let mut ended_early = false;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(SymError::ResetRequired) => break,
            Err(SymError::IoError(e)) => {
                return Err(AudioError::Io {
                    file: name.to_string(),
                    source: e,
                })
            }
            Err(e) => {
                ended_early = true;
                if good_packets == 0 {
                    return Err(malformed(format!("reading packets: {e}")));
                }
                break;
            }
        };
        if packet.track_id() != track.id {
            continue;
        }
        match decoder.decode(&packet) {
            Ok(buf) => {
                good_packets += 1;
                let spec = *buf.spec();
                if rate == 0 {
                    rate = spec.rate;
                    check_rate(name, rate)?;
                }
                if spec.rate != rate {
                    return Err(malformed(format!(
                        "sample rate changes mid-stream ({rate} Hz → {} Hz)",
                        spec.rate
                    )));
                }
                channels = spec.channels.count();
                if channels == 0 {
                    return Err(malformed("a packet with 0 channels".into()));
                }
                let need = buf.capacity() as u64;
                if sbuf.as_ref().is_none_or(|b| b.capacity() < need as usize) {
                    sbuf = Some(SampleBuffer::new(need, spec));
                }
                let sb = sbuf.as_mut().expect("sample buffer");
                sb.copy_interleaved_ref(buf);
                inter.extend_from_slice(sb.samples());
                too_long(
                    name,
                    inter.len() as f64 / channels as f64 / rate as f64,
                    opts,
                )?;
            }
            Err(SymError::DecodeError(_)) => bad_packets += 1,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                ended_early = true;
                break;
            }
            Err(SymError::Unsupported(w)) => {
                return Err(unsupported(format!("codec {codec_name}: {w}")))
            }
            Err(e) => return Err(malformed(format!("decoding {codec_name}: {e}"))),
        }
    }
    if good_packets == 0 && bad_packets > 0 {
        return Err(malformed(format!(
            "none of {bad_packets} {codec_name} packets decoded"
        )));
    }
    if bad_packets * 10 > good_packets + bad_packets {
        return Err(malformed(format!(
            "{bad_packets} of {} {codec_name} packets failed to decode",
            good_packets + bad_packets
        )));
    }
    if channels == 0 || rate == 0 {
        return Err(AudioError::Empty {
            file: name.to_string(),
        });
    }
    let frames = inter.len() / channels;
    if let Some(n) = params.n_frames {
        // The header's length is exact for lossless codecs: fewer frames is truncation.
        let tolerance = (rate as u64 / 10).max(n / 50);
        if (lossless || ended_early) && (frames as u64) + tolerance < n {
            return Err(malformed(format!(
                "{frames} sample frames decoded but the header says {n} (truncated file)"
            )));
        }
    }
    Ok((
        downmix(&inter, channels),
        rate,
        channels,
        format!("symphonia:{codec_name}"),
    ))
}

/// Resample mono audio with rubato's `FftFixedIn` (chunk 1024, 2 sub-chunks),
/// delay-compensated and cut to `ceil(len * to / from)` samples. Identity when
/// the rates are equal.
pub fn resample(mono: &[f32], from: u32, to: u32) -> Result<Vec<f32>, String> {
    if from == to || mono.is_empty() {
        return Ok(mono.to_vec());
    }
    let want = (mono.len() as u64 * to as u64).div_ceil(from as u64) as usize;
    let mut r = FftFixedIn::<f32>::new(from as usize, to as usize, 1024, 2, 1)
        .map_err(|e| e.to_string())?;
    let delay = r.output_delay();
    let mut out: Vec<f32> = Vec::with_capacity(want + delay + 2048);
    let mut pos = 0;
    while pos < mono.len() {
        let need = r.input_frames_next();
        let chunk = if pos + need <= mono.len() {
            r.process(&[&mono[pos..pos + need]], None)
        } else {
            r.process_partial(Some(&[&mono[pos..]]), None)
        }
        .map_err(|e| e.to_string())?;
        out.extend_from_slice(&chunk[0]);
        pos += need;
    }
    while out.len() < want + delay {
        let chunk = r
            .process_partial::<&[f32]>(None, None)
            .map_err(|e| e.to_string())?;
        if chunk[0].is_empty() {
            break;
        }
        out.extend_from_slice(&chunk[0]);
    }
    let mut out = out.split_off(delay.min(out.len()));
    out.resize(want, 0.0);
    Ok(out)
}
