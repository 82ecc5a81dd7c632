//! SentencePiece (BPE-by-score) tokenization from GGUF metadata, as llama.cpp
//! does it for `tokenizer.ggml.model = "llama"` vocabularies (Gemma):
//! special and user-defined tokens are split out first (longest first), spaces
//! become `▁`, then adjacent symbols are merged greedily by the score of the
//! merged piece; characters without a piece fall back to `<0xXX>` byte tokens.

use std::collections::{BinaryHeap, HashMap};

pub struct Spm {
    pieces: Vec<String>,
    scores: Vec<f32>,
    index: HashMap<String, u32>,
    /// Control and user-defined tokens, longest first: matched literally.
    specials: Vec<(String, u32)>,
    /// Control tokens, skipped when decoding.
    control: Vec<bool>,
    byte_ids: [u32; 256],
    add_space_prefix: bool,
}

#[derive(PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}
impl Eq for Bigram {}
impl Ord for Bigram {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Highest score first; among equals, the leftmost.
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Spm {
    /// `types` are GGUF token types (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    pub fn new(
        pieces: Vec<String>,
        scores: Vec<f32>,
        types: Vec<i32>,
        add_space_prefix: bool,
    ) -> Spm {
        let index: HashMap<String, u32> = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i as u32))
            .collect();
        let mut specials: Vec<(String, u32)> = pieces
            .iter()
            .enumerate()
            .filter(|(i, p)| matches!(types.get(*i), Some(3) | Some(4)) && !p.is_empty())
            .map(|(i, p)| (p.clone(), i as u32))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let mut byte_ids = [0u32; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = index.get(&format!("<0x{b:02X}>")).copied().unwrap_or(0);
        }
        let control = (0..pieces.len())
            .map(|i| matches!(types.get(i), Some(3)))
            .collect();
        Spm {
            pieces,
            scores,
            index,
            specials,
            control,
            byte_ids,
            add_space_prefix,
        }
    }

    /// Texts matched literally as control / user-defined tokens.
    pub fn special_texts(&self) -> Vec<String> {
        self.specials.iter().map(|(t, _)| t.clone()).collect()
    }
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn token_to_id(&self, t: &str) -> Option<u32> {
        self.index.get(t).copied()
    }

    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(String::as_str)
    }

    /// Encode; special tokens written in the text are parsed.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        // Fragments: Ok(raw text) or Err(special id).
        let mut frags: Vec<Result<String, u32>> = vec![Ok(text.to_string())];
        for (sp, id) in &self.specials {
            let mut next = Vec::with_capacity(frags.len());
            for f in frags {
                match f {
                    Ok(s) if s.contains(sp.as_str()) => {
                        let mut rest = s.as_str();
                        while let Some(i) = rest.find(sp.as_str()) {
                            if i > 0 {
                                next.push(Ok(rest[..i].to_string()));
                            }
                            next.push(Err(*id));
                            rest = &rest[i + sp.len()..];
                        }
                        if !rest.is_empty() {
                            next.push(Ok(rest.to_string()));
                        }
                    }
                    other => next.push(other),
                }
            }
            frags = next;
        }
        let mut out = Vec::new();
        for (i, f) in frags.into_iter().enumerate() {
            match f {
                Err(id) => out.push(id),
                Ok(s) => {
                    let mut s = s.replace(' ', "\u{2581}");
                    if self.add_space_prefix && i == 0 {
                        s.insert(0, '\u{2581}');
                    }
                    self.encode_piece(&s, &mut out);
                }
            }
        }
        out
    }

    fn encode_piece(&self, s: &str, out: &mut Vec<u32>) {
        // Symbols: byte ranges of the text, linked left/right.
        let mut start: Vec<usize> = s.char_indices().map(|(i, _)| i).collect();
        let n = start.len();
        if n == 0 {
            return;
        }
        let mut len: Vec<usize> = (0..n)
            .map(|k| {
                if k + 1 < n {
                    start[k + 1] - start[k]
                } else {
                    s.len() - start[k]
                }
            })
            .collect();
        let mut prev: Vec<Option<usize>> = (0..n).map(|k| k.checked_sub(1)).collect();
        let mut next: Vec<Option<usize>> = (0..n).map(|k| (k + 1 < n).then_some(k + 1)).collect();
        let mut heap = BinaryHeap::new();
        let push =
            |heap: &mut BinaryHeap<Bigram>, start: &[usize], len: &[usize], l: usize, r: usize| {
                let text = &s[start[l]..start[r] + len[r]];
                if let Some(&id) = self.index.get(text) {
                    heap.push(Bigram {
                        score: self.scores[id as usize],
                        left: l,
                        right: r,
                        len: text.len(),
                    });
                }
            };
        for k in 0..n.saturating_sub(1) {
            push(&mut heap, &start, &len, k, k + 1);
        }
        while let Some(b) = heap.pop() {
            // Stale if either side changed since the bigram was queued.
            if len[b.left] == 0
                || len[b.right] == 0
                || len[b.left] + len[b.right] != b.len
                || next[b.left] != Some(b.right)
            {
                continue;
            }
            len[b.left] += len[b.right];
            len[b.right] = 0;
            next[b.left] = next[b.right];
            if let Some(nn) = next[b.right] {
                prev[nn] = Some(b.left);
            }
            if let Some(p) = prev[b.left] {
                push(&mut heap, &start, &len, p, b.left);
            }
            if let Some(nn) = next[b.left] {
                push(&mut heap, &start, &len, b.left, nn);
            }
        }
        let mut k = Some(0);
        while let Some(i) = k {
            let piece = &s[start[i]..start[i] + len[i]];
            match self.index.get(piece) {
                Some(&id) => out.push(id),
                None => out.extend(piece.bytes().map(|b| self.byte_ids[b as usize])),
            }
            k = next[i];
        }
        start.clear();
    }

    /// Decode, skipping control tokens; byte tokens are reassembled.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes: Vec<u8> = Vec::new();
        for &id in ids {
            let Some(p) = self.pieces.get(id as usize) else {
                continue;
            };
            if self.control[id as usize] {
                continue;
            }
            if p.len() == 6 && p.starts_with("<0x") && p.ends_with('>') {
                if let Ok(b) = u8::from_str_radix(&p[3..5], 16) {
                    bytes.push(b);
                    continue;
                }
            }
            bytes.extend_from_slice(p.replace('\u{2581}', " ").as_bytes());
        }
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if self.add_space_prefix && text.starts_with(' ') {
            text.remove(0);
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Spm {
        let mut pieces: Vec<String> = vec!["<unk>".into(), "<s>".into(), "<start>".into()];
        let mut scores = vec![0.0, 0.0, 0.0];
        let mut types = vec![2, 3, 3];
        for b in 0..=255u32 {
            pieces.push(format!("<0x{b:02X}>"));
            scores.push(0.0);
            types.push(6);
        }
        for (p, s) in [
            ("a", -1.0),
            ("b", -1.0),
            ("c", -1.0),
            ("ab", -2.0),
            ("bc", -0.5),
            ("abc", -3.0),
            ("\u{2581}", -1.0),
            ("\u{2581}a", -1.5),
        ] {
            pieces.push(p.into());
            scores.push(s);
            types.push(1);
        }
        Spm::new(pieces, scores, types, false)
    }

    #[test]
    fn merges_by_score_and_falls_back_to_bytes() {
        let t = toy();
        let id = |p: &str| t.token_to_id(p).unwrap();
        // "bc" (-0.5) beats "ab" (-2.0): a + bc, and "abc" is not reachable from a + bc? it is: "a"+"bc" = "abc".
        assert_eq!(t.encode("abc"), vec![id("abc")]);
        assert_eq!(t.encode("ab"), vec![id("ab")]);
        // "한" has no piece: three byte tokens.
        assert_eq!(
            t.encode("한"),
            vec![id("<0xED>"), id("<0x95>"), id("<0x9C>")]
        );
        assert_eq!(t.decode(&t.encode("a 한<start>bc")), "a 한bc");
        assert_eq!(t.encode("<start>a"), vec![id("<start>"), id("a")]);
        assert_eq!(t.encode(" a"), vec![id("\u{2581}a")]);
    }
}
