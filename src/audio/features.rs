//! Audio features computed exactly as Hugging Face transformers' numpy
//! feature extractors do (checked against them by `tests/audio.rs`).
//!
//! * [`WhisperFeatures`]: `WhisperFeatureExtractor` (`_np_extract_fbank_features`):
//!   the clip is zero-padded or cut to 30 s (480,000 samples), reflect-padded
//!   by `n_fft / 2` at both ends, framed (n_fft 400, hop 160) with a periodic
//!   Hann window, power spectrum (float64), Slaney-normalised Slaney-scale mel
//!   filters (80 or 128 bins, 0–8 kHz), `log10(max(x, 1e-10))`, the last frame
//!   dropped (3000 frames), clamped to `max - 8`, then `(x + 4) / 4`.
//! * [`Gemma4Features`]: `Gemma4AudioFeatureExtractor` defaults: 320-sample
//!   frames (periodic Hann), hop 160, left padding of 160 zeros only,
//!   FFT 512, magnitude, HTK mel filters without normalisation (128 bins,
//!   0–8 kHz), `ln(mel + 1e-3)`; the clip is cut to 480,000 samples and padded
//!   to a multiple of 128; the mask is `true` for valid frames and invalid
//!   frames are zeroed, as transformers does. Computed in float64 (numpy 2
//!   runs transformers' float32 frames through a float32 FFT, which moves
//!   near-floor features by up to ~5e-4; the fixtures use a float64 window) (note: candle's `gemma4` takes
//!   the opposite convention, 1.0 = padding).

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

pub const SAMPLE_RATE: usize = 16_000;
pub const N_FFT: usize = 400;
pub const HOP: usize = 160;
/// Samples in one 30 s Whisper chunk.
pub const CHUNK_SAMPLES: usize = 480_000;
/// Frames in one Whisper chunk (transformers drops the STFT's last frame).
pub const CHUNK_FRAMES: usize = CHUNK_SAMPLES / HOP;

/// `numpy.linspace(start, stop, num)` (endpoint included, last value exact).
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| start + i as f64 * step).collect();
    v[num - 1] = stop;
    v
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MelScale {
    Htk,
    Slaney,
}

fn hertz_to_mel(f: f64, scale: MelScale) -> f64 {
    match scale {
        MelScale::Htk => 2595.0 * (1.0 + f / 700.0).log10(),
        MelScale::Slaney => {
            let logstep = 27.0 / 6.4f64.ln();
            if f >= 1000.0 {
                15.0 + (f / 1000.0).ln() * logstep
            } else {
                3.0 * f / 200.0
            }
        }
    }
}

fn mel_to_hertz(m: f64, scale: MelScale) -> f64 {
    match scale {
        MelScale::Htk => 700.0 * (10f64.powf(m / 2595.0) - 1.0),
        MelScale::Slaney => {
            let logstep = 6.4f64.ln() / 27.0;
            if m >= 15.0 {
                1000.0 * (logstep * (m - 15.0)).exp()
            } else {
                200.0 * m / 3.0
            }
        }
    }
}

/// transformers' `audio_utils.mel_filter_bank` (triangles in Hz space):
/// returns `num_frequency_bins × num_mel_filters`, row-major.
pub fn mel_filter_bank(
    num_frequency_bins: usize,
    num_mel_filters: usize,
    min_frequency: f64,
    max_frequency: f64,
    sampling_rate: usize,
    slaney_norm: bool,
    scale: MelScale,
) -> Vec<f64> {
    let mel_min = hertz_to_mel(min_frequency, scale);
    let mel_max = hertz_to_mel(max_frequency, scale);
    let filter_freqs: Vec<f64> = linspace(mel_min, mel_max, num_mel_filters + 2)
        .into_iter()
        .map(|m| mel_to_hertz(m, scale))
        .collect();
    let fft_freqs = linspace(0.0, (sampling_rate / 2) as f64, num_frequency_bins);
    let diff: Vec<f64> = filter_freqs.windows(2).map(|w| w[1] - w[0]).collect();
    let mut out = vec![0.0; num_frequency_bins * num_mel_filters];
    for (b, &f) in fft_freqs.iter().enumerate() {
        for m in 0..num_mel_filters {
            let down = -(filter_freqs[m] - f) / diff[m];
            let up = (filter_freqs[m + 2] - f) / diff[m + 1];
            let mut v = down.min(up).max(0.0);
            if slaney_norm {
                v *= 2.0 / (filter_freqs[m + 2] - filter_freqs[m]);
            }
            out[b * num_mel_filters + m] = v;
        }
    }
    out
}

/// `window_function(n, "hann", periodic=True)`: `np.hanning(n + 1)[:-1]`.
pub fn periodic_hann(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos())
        .collect()
}

/// Sparse mel filters: for each mel bin, its first frequency bin and weights.
#[derive(Clone)]
struct SparseMel {
    rows: Vec<(usize, Vec<f64>)>,
}

impl SparseMel {
    fn new(dense: &[f64], n_bins: usize, n_mels: usize) -> Self {
        let rows = (0..n_mels)
            .map(|m| {
                let col: Vec<f64> = (0..n_bins).map(|b| dense[b * n_mels + m]).collect();
                let first = col.iter().position(|&v| v != 0.0).unwrap_or(0);
                let last = col.iter().rposition(|&v| v != 0.0).map_or(0, |l| l + 1);
                (first, col[first..last.max(first)].to_vec())
            })
            .collect();
        SparseMel { rows }
    }
    fn apply(&self, spec: &[f64], out: &mut [f64]) {
        for (o, (first, w)) in out.iter_mut().zip(&self.rows) {
            *o = w.iter().zip(&spec[*first..]).map(|(a, b)| a * b).sum();
        }
    }
}

/// Whisper log-mel features, as `WhisperFeatureExtractor` computes them.
#[derive(Clone)]
pub struct WhisperFeatures {
    pub n_mels: usize,
    window: Vec<f64>,
    mel: SparseMel,
    fft: Arc<dyn RealToComplex<f64>>,
}

impl WhisperFeatures {
    /// `n_mels` is 80 (Whisper up to large-v2) or 128 (large-v3).
    pub fn new(n_mels: usize) -> Self {
        let n_bins = N_FFT / 2 + 1;
        let dense = mel_filter_bank(
            n_bins,
            n_mels,
            0.0,
            8000.0,
            SAMPLE_RATE,
            true,
            MelScale::Slaney,
        );
        WhisperFeatures {
            n_mels,
            window: periodic_hann(N_FFT),
            mel: SparseMel::new(&dense, n_bins, n_mels),
            fft: RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT),
        }
    }

    /// Features of one 30 s chunk (the clip zero-padded or cut to 480,000
    /// samples): `n_mels × 3000` values, row-major (`[mel][frame]`).
    pub fn chunk(&self, pcm: &[f32]) -> Vec<f32> {
        self.extract(pcm, CHUNK_SAMPLES)
    }

    /// Features of the clip zero-padded or cut to `n` samples (a multiple of
    /// the hop) in one pass: `n_mels × n / 160` values, row-major.
    fn extract(&self, pcm: &[f32], n: usize) -> Vec<f32> {
        let half = N_FFT / 2;
        let at = |i: usize| -> f64 { pcm.get(i).copied().unwrap_or(0.0) as f64 };
        // Reflect padding of the zero-padded chunk (numpy "reflect": the edge is not repeated).
        let mut padded = Vec::with_capacity(n + N_FFT);
        for j in 0..half {
            padded.push(at(half - j));
        }
        padded.extend((0..n).map(at));
        for k in 0..half {
            padded.push(at(n - 2 - k));
        }
        let frames = 1 + (padded.len() - N_FFT) / HOP; // n / HOP + 1
        let kept = frames - 1;
        let n_bins = N_FFT / 2 + 1;
        let mut buf = self.fft.make_input_vec();
        let mut spec = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0.0f64; n_bins];
        let mut mel = vec![0.0f64; self.n_mels];
        let mut out = vec![0.0f64; self.n_mels * kept];
        for f in 0..kept {
            let s = &padded[f * HOP..f * HOP + N_FFT];
            for ((b, x), w) in buf.iter_mut().zip(s).zip(&self.window) {
                *b = x * w;
            }
            self.fft
                .process_with_scratch(&mut buf, &mut spec, &mut scratch)
                .expect("fft sizes");
            for (p, c) in power.iter_mut().zip(&spec) {
                // numpy keeps the spectrum as complex64 before |.|**2.
                let (re, im) = (c.re as f32 as f64, c.im as f32 as f64);
                *p = re * re + im * im;
            }
            self.mel.apply(&power, &mut mel);
            for (m, v) in mel.iter().enumerate() {
                out[m * kept + f] = v.max(1e-10).log10();
            }
        }
        // transformers casts the log-mel to float32 before the clamp.
        let out: Vec<f32> = out.into_iter().map(|v| v as f32).collect();
        let max = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        out.into_iter()
            .map(|v| (v.max(max - 8.0) + 4.0) / 4.0)
            .collect()
    }

    /// Features of every 30 s chunk of a clip (at least one).
    pub fn chunks(&self, pcm: &[f32]) -> Vec<Vec<f32>> {
        if pcm.is_empty() {
            return vec![self.chunk(pcm)];
        }
        pcm.chunks(CHUNK_SAMPLES).map(|c| self.chunk(c)).collect()
    }

    /// Features of a clip zero-padded to a whole number of 30 s chunks (at
    /// least one) and computed in one pass, then split into 3000-frame
    /// chunks (`n_mels × 3000` each, row-major). This is what
    /// `WhisperFeatureExtractor(pad_to_multiple_of=480000)` followed by a
    /// split along time gives (Voxtral's processor): unlike [`Self::chunks`]
    /// there is one reflect padding at the ends of the whole clip, frames
    /// near a chunk boundary see samples of both chunks, and the `max - 8`
    /// floor is taken over the whole clip.
    pub fn padded_chunks(&self, pcm: &[f32]) -> Vec<Vec<f32>> {
        let n_chunks = pcm.len().div_ceil(CHUNK_SAMPLES).max(1);
        let frames = n_chunks * CHUNK_FRAMES;
        let all = self.extract(pcm, n_chunks * CHUNK_SAMPLES);
        (0..n_chunks)
            .map(|c| {
                let mut out = Vec::with_capacity(self.n_mels * CHUNK_FRAMES);
                for m in 0..self.n_mels {
                    let row = m * frames + c * CHUNK_FRAMES;
                    out.extend_from_slice(&all[row..row + CHUNK_FRAMES]);
                }
                out
            })
            .collect()
    }
}

/// Gemma 4 audio features, as `Gemma4AudioFeatureExtractor` (defaults) computes them.
#[derive(Clone)]
pub struct Gemma4Features {
    pub n_mels: usize,
    pub frame_length: usize,
    pub hop: usize,
    pub fft_length: usize,
    window: Vec<f64>,
    /// The HTK mel filters, per mel bin only its nonzero band (skipping the
    /// zero terms leaves every f64 sum bit-identical).
    mel: SparseMel,
    fft: Arc<dyn RealToComplex<f64>>,
}

/// Output of [`Gemma4Features::extract`].
#[derive(Debug, Clone, PartialEq)]
pub struct MaskedFeatures {
    /// `frames × n_mels`, row-major (`[frame][mel]`).
    pub values: Vec<f32>,
    pub frames: usize,
    pub n_mels: usize,
    /// `true` = a valid frame (transformers' convention).
    pub mask: Vec<bool>,
}

impl Default for Gemma4Features {
    fn default() -> Self {
        Self::new()
    }
}

impl Gemma4Features {
    pub fn new() -> Self {
        let frame_length: usize = 320;
        let fft_length = frame_length.next_power_of_two();
        let n_mels = 128;
        Gemma4Features {
            n_mels,
            frame_length,
            hop: 160,
            fft_length,
            // transformers keeps this window as float32.
            window: periodic_hann(frame_length)
                .into_iter()
                .map(|w| w as f32 as f64)
                .collect(),
            mel: SparseMel::new(
                &mel_filter_bank(
                    fft_length / 2 + 1,
                    n_mels,
                    0.0,
                    8000.0,
                    SAMPLE_RATE,
                    false,
                    MelScale::Htk,
                ),
                fft_length / 2 + 1,
                n_mels,
            ),
            fft: RealFftPlanner::<f64>::new().plan_fft_forward(fft_length),
        }
    }

    pub fn extract(&self, pcm: &[f32]) -> MaskedFeatures {
        let real = pcm.len().min(CHUNK_SAMPLES);
        let padded_len = real.div_ceil(128) * 128;
        let left = self.frame_length / 2;
        let total = left + padded_len;
        let unfold = self.frame_length + 1;
        let frames = if total >= unfold {
            (total - unfold) / self.hop + 1
        } else {
            0
        };
        let at = |i: usize| -> f64 {
            if i < left || i - left >= real {
                0.0
            } else {
                pcm[i - left] as f64
            }
        };
        let n_bins = self.fft_length / 2 + 1;
        let mut buf = self.fft.make_input_vec();
        let mut spec = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut mag = vec![0.0f64; n_bins];
        let mut mel = vec![0.0f64; self.n_mels];
        let mut values = vec![0.0f32; frames * self.n_mels];
        let mut mask = vec![false; frames];
        for f in 0..frames {
            let start = f * self.hop;
            // Valid when the last sample of the unfolded frame is a real sample.
            let end = start + unfold - 1;
            mask[f] = end >= left && end - left < real;
            buf.iter_mut().for_each(|b| *b = 0.0);
            for (k, w) in self.window.iter().enumerate() {
                buf[k] = at(start + k) * w;
            }
            self.fft
                .process_with_scratch(&mut buf, &mut spec, &mut scratch)
                .expect("fft sizes");
            for (m, c) in mag.iter_mut().zip(&spec) {
                *m = c.norm();
            }
            if !mask[f] {
                continue;
            }
            self.mel.apply(&mag, &mut mel);
            let row = &mut values[f * self.n_mels..(f + 1) * self.n_mels];
            for (v, s) in row.iter_mut().zip(&mel) {
                *v = (s + 1e-3).ln() as f32;
            }
        }
        MaskedFeatures {
            values,
            frames,
            n_mels: self.n_mels,
            mask,
        }
    }
}
