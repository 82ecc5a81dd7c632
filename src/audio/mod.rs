//! Audio: decoding files to mono 16 kHz PCM ([`decode`]), HF-exact model
//! input features ([`features`]), and speech recognition metrics ([`wer`]).

pub mod decode;
pub mod features;
pub mod wer;

pub use decode::{decode_file, decode_media, Audio, AudioError, DecodeOptions};
pub use features::{Gemma4Features, WhisperFeatures};
