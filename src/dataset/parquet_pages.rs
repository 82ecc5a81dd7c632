//! Page headers of a parquet column chunk, checked before the `parquet`
//! crate reads the pages. The crate sizes buffers from page headers without
//! checking them against the data: a dictionary page that claims 2^31
//! values in a few bytes made it allocate 60 GB and abort (found by
//! fuzzing, `tests/fixtures/fuzz/parquet/`). Here every page header of
//! every column chunk is read (Thrift compact protocol, only the fields
//! needed) and refused when its sizes do not fit: the page inside its
//! chunk, its decompressed size under `--max-decompressed-mb`, a
//! dictionary's value count within what its bytes can hold.

use std::io::{Read, Seek, SeekFrom};

use parquet::basic::Type as Physical;

/// What one page header says (the fields the checks need).
#[derive(Debug, Default, PartialEq)]
pub struct PageHeader {
    pub page_type: i64,
    pub uncompressed_size: i64,
    pub compressed_size: i64,
    /// `dictionary_page_header.num_values`, for a dictionary page.
    pub dict_values: Option<i64>,
    /// Bytes the header itself takes.
    pub header_len: usize,
}

/// The largest page header read (statistics included).
const MAX_HEADER: u64 = 16 << 20;

const ENDS_EARLY: &str = "page header ends early";

/// Page type 2 in the parquet format.
const DICTIONARY_PAGE: i64 = 2;

struct Compact<'a> {
    b: &'a [u8],
    pos: usize,
    /// Structs and lists entered: bounded, so a forged header cannot recurse deeply.
    depth: u32,
}

/// Why a page header was refused (one line, without the file and column,
/// which the caller adds).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PageError(String);

impl From<&str> for PageError {
    fn from(s: &str) -> Self {
        PageError(s.to_string())
    }
}

impl From<String> for PageError {
    fn from(s: String) -> Self {
        PageError(s)
    }
}

type R<T> = std::result::Result<T, PageError>;

impl Compact<'_> {
    fn byte(&mut self) -> R<u8> {
        let v = *self.b.get(self.pos).ok_or(ENDS_EARLY)?;
        self.pos += 1;
        Ok(v)
    }
    fn varint(&mut self) -> R<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            if shift < 64 {
                v |= ((b & 0x7f) as u64) << shift;
            }
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a varint in the page header is too long".into())
    }
    fn zigzag(&mut self) -> R<i64> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }
    fn skip_bytes(&mut self, n: u64) -> R<()> {
        let n = usize::try_from(n).map_err(|_| "a length in the page header is too large")?;
        if self.b.len() - self.pos < n {
            return Err(ENDS_EARLY.into());
        }
        self.pos += n;
        Ok(())
    }
    /// Skip one value of compact type `t`.
    fn skip(&mut self, t: u8) -> R<()> {
        match t {
            1 | 2 => Ok(()), // bool in the type nibble
            3 => self.byte().map(drop),
            4..=6 => self.varint().map(drop),
            7 => self.skip_bytes(8),
            8 => {
                let n = self.varint()?;
                self.skip_bytes(n)
            }
            9 | 10 => {
                let h = self.byte()?;
                let n = match h >> 4 {
                    15 => self.varint()?,
                    n => n as u64,
                };
                if n > self.b.len() as u64 {
                    return Err("a list in the page header is longer than the header".into());
                }
                self.nested(|c| (0..n).try_for_each(|_| c.skip(h & 0x0f)))
            }
            11 => {
                let n = self.varint()?;
                if n > self.b.len() as u64 {
                    return Err("a map in the page header is longer than the header".into());
                }
                if n == 0 {
                    return Ok(());
                }
                let kv = self.byte()?;
                self.nested(|c| {
                    (0..n).try_for_each(|_| c.skip(kv >> 4).and_then(|_| c.skip(kv & 0x0f)))
                })
            }
            12 => self.fields(&mut |_, t, c| c.skip(t)),
            t => Err(format!("unknown field type {t} in the page header").into()),
        }
    }
    /// Run `f` one level deeper.
    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> R<T>) -> R<T> {
        if self.depth >= 32 {
            return Err("the page header nests too deeply".into());
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }
    /// Walk a struct's fields; `f(id, type, self)` must read or skip each value.
    fn fields(&mut self, f: &mut dyn FnMut(i16, u8, &mut Self) -> R<()>) -> R<()> {
        self.nested(|c| {
            let mut last: i16 = 0;
            loop {
                let h = c.byte()?;
                if h == 0 {
                    return Ok(());
                }
                let t = h & 0x0f;
                let id = match h >> 4 {
                    0 => c.zigzag()? as i16,
                    d => last.wrapping_add(d as i16),
                };
                last = id;
                f(id, t, c)?;
            }
        })
    }
}

/// Parse the page header at the start of `b`.
pub fn parse_page_header(b: &[u8]) -> R<PageHeader> {
    let mut c = Compact {
        b,
        pos: 0,
        depth: 0,
    };
    let mut h = PageHeader::default();
    c.fields(&mut |id, t, c| {
        match (id, t) {
            (1, 5) => h.page_type = c.zigzag()?,
            (2, 5) => h.uncompressed_size = c.zigzag()?,
            (3, 5) => h.compressed_size = c.zigzag()?,
            (7, 12) => {
                let mut n = None;
                c.fields(&mut |id, t, c| {
                    if (id, t) == (1, 5) {
                        n = Some(c.zigzag()?);
                        Ok(())
                    } else {
                        c.skip(t)
                    }
                })?;
                h.dict_values = n;
            }
            _ => c.skip(t)?,
        }
        Ok(())
    })?;
    h.header_len = c.pos;
    Ok(h)
}

/// The fewest bytes one PLAIN value of a physical type takes.
fn min_value_bytes(t: Physical, type_length: i32) -> i64 {
    match t {
        Physical::BOOLEAN => 0, // bits: no useful bound
        Physical::INT32 | Physical::FLOAT | Physical::BYTE_ARRAY => 4,
        Physical::INT64 | Physical::DOUBLE => 8,
        Physical::INT96 => 12,
        Physical::FIXED_LEN_BYTE_ARRAY => type_length.max(1) as i64,
    }
}

/// Check every page header of one column chunk, which spans `start..start+len`
/// of the file.
pub fn check_chunk(
    f: &mut (impl Read + Seek),
    start: u64,
    len: u64,
    physical: Physical,
    type_length: i32,
    max_bytes: u64,
) -> R<()> {
    let end = start
        .checked_add(len)
        .ok_or("the column chunk's range overflows")?;
    let mut pos = start;
    let mut buf = Vec::new();
    let mut pages = 0u64;
    while pos < end {
        pages += 1;
        if pages > 10_000_000 {
            return Err("the column chunk has more than 10 million pages".into());
        }
        // Headers are small, but min/max statistics of long strings can make
        // them large: read more while the header runs past what was read.
        let mut want = (end - pos).min(4 << 10);
        let h = loop {
            buf.resize(want as usize, 0);
            f.seek(SeekFrom::Start(pos)).map_err(|e| e.to_string())?;
            f.read_exact(&mut buf)
                .map_err(|e| format!("page at byte {pos}: {e}"))?;
            match parse_page_header(&buf) {
                Ok(h) => break h,
                Err(e) if e.0 == ENDS_EARLY && want < (end - pos).min(MAX_HEADER) => {
                    want = (want * 4).min((end - pos).min(MAX_HEADER));
                }
                Err(e) => return Err(format!("page at byte {pos}: {e}").into()),
            }
        };
        if h.compressed_size < 0 || h.uncompressed_size < 0 {
            return Err(format!("page at byte {pos}: a negative page size").into());
        }
        let next = pos
            .checked_add(h.header_len as u64 + h.compressed_size as u64)
            .filter(|&n| n <= end)
            .ok_or_else(|| {
                format!(
                    "page at byte {pos}: its {} bytes run past the end of its column chunk",
                    h.compressed_size
                )
            })?;
        if h.uncompressed_size as u64 > max_bytes {
            return Err(format!(
                "page at byte {pos}: decompresses to {} bytes, over the limit of {} MiB",
                h.uncompressed_size,
                max_bytes >> 20
            )
            .into());
        }
        if h.page_type == DICTIONARY_PAGE {
            let n = h.dict_values.ok_or_else(|| {
                format!("dictionary page at byte {pos}: no dictionary page header")
            })?;
            let per = min_value_bytes(physical, type_length);
            if n < 0 || (per > 0 && n.saturating_mul(per) > h.uncompressed_size) {
                return Err(format!(
                    "dictionary page at byte {pos}: {n} values cannot fit in its {} bytes",
                    h.uncompressed_size
                )
                .into());
            }
        }
        pos = next;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compact-protocol page header: type, sizes, and a dictionary page
    /// header with `n` values (field 7).
    fn header(page_type: i32, unc: i32, comp: i32, dict: Option<i32>) -> Vec<u8> {
        let zz = |v: i64| {
            let mut u = ((v << 1) ^ (v >> 63)) as u64;
            let mut out = Vec::new();
            loop {
                if u < 0x80 {
                    out.push(u as u8);
                    return out;
                }
                out.push((u as u8 & 0x7f) | 0x80);
                u >>= 7;
            }
        };
        let mut b = vec![0x15];
        b.extend(zz(page_type as i64));
        b.push(0x15);
        b.extend(zz(unc as i64));
        b.push(0x15);
        b.extend(zz(comp as i64));
        if let Some(n) = dict {
            b.push(0x4c); // field 7 (delta 4 from 3), struct
            b.push(0x15);
            b.extend(zz(n as i64));
            b.push(0x15); // encoding
            b.push(0);
            b.push(0x11); // is_sorted true
            b.push(0);
        }
        b.push(0);
        b
    }

    #[test]
    fn headers_parse_and_forged_dictionaries_are_refused() {
        let h = header(2, 40, 40, Some(10));
        let p = parse_page_header(&h).unwrap();
        assert_eq!(
            (
                p.page_type,
                p.uncompressed_size,
                p.compressed_size,
                p.dict_values,
                p.header_len
            ),
            (2, 40, 40, Some(10), h.len())
        );
        let mut file = header(2, 40, 40, Some(10));
        file.extend([0u8; 40]);
        let len = file.len() as u64;
        let mut cur = std::io::Cursor::new(file.clone());
        check_chunk(&mut cur, 0, len, Physical::BYTE_ARRAY, 0, 1 << 20).unwrap();
        // 2^31 byte arrays cannot fit in 40 bytes.
        let mut forged = header(2, 40, 40, Some(i32::MAX));
        forged.extend([0u8; 40]);
        let n = forged.len() as u64;
        let e = check_chunk(
            &mut std::io::Cursor::new(forged),
            0,
            n,
            Physical::BYTE_ARRAY,
            0,
            1 << 20,
        )
        .unwrap_err();
        assert!(e.to_string().contains("cannot fit"), "{e}");
        // A page that runs past its chunk; one over the decompressed limit.
        let e = check_chunk(
            &mut std::io::Cursor::new(file.clone()),
            0,
            len - 1,
            Physical::INT32,
            0,
            1 << 20,
        )
        .unwrap_err();
        assert!(e.to_string().contains("run past"), "{e}");
        let e = check_chunk(
            &mut std::io::Cursor::new(file),
            0,
            len,
            Physical::INT32,
            0,
            10,
        )
        .unwrap_err();
        assert!(e.to_string().contains("over the limit"), "{e}");
        // A header with 100 KB of statistics (field 9, binary) is read whole.
        let mut big = header(2, 40, 40, Some(10));
        big.pop(); // the header's stop byte
        big.push(0x28); // field 9 (delta 2 from 7), binary
        let stats = vec![b'x'; 100_000];
        let mut n = stats.len() as u64;
        while n >= 0x80 {
            big.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        big.push(n as u8);
        big.extend(&stats);
        big.push(0);
        big.extend([0u8; 40]);
        let n = big.len() as u64;
        check_chunk(
            &mut std::io::Cursor::new(big),
            0,
            n,
            Physical::BYTE_ARRAY,
            0,
            1 << 20,
        )
        .unwrap();
        // Lists nested 40 deep are refused, not recursed into.
        let mut deep = vec![0x19u8];
        deep.extend([0x19u8; 40]);
        let e = parse_page_header(&deep).unwrap_err();
        assert!(e.to_string().contains("nests too deeply"), "{e}");
        // Garbage is an error, not a panic.
        assert!(parse_page_header(&[0x1c, 0x1c, 0x1c, 0x1c]).is_err());
        assert!(parse_page_header(&[
            0xf9, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
        ])
        .is_err());
    }
}
