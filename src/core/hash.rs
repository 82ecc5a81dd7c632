//! Content hashes: record keys and file digests.

use sha2::{Digest, Sha256};

/// sha256 (hex) of the parts, separated so that ("ab","c") != ("a","bc").
pub fn key_of(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
