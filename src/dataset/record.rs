//! A raw record read from a data file (a JSONL line, a CSV row, a parquet row),
//! before it is mapped onto a [`Sample`](crate::core::sample::Sample). Binary values
//! (parquet `{bytes, path}` image structs) are kept aside as blobs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{Map, Value};

use crate::core::error::{Error, Location, Result};

/// A value of a raw record: JSON, with binary data referenced by blob key.
#[derive(Debug, Clone)]
pub struct Record {
    pub loc: Location,
    pub fields: Map<String, Value>,
    /// Binary values: the JSON holds `{"$blob": KEY}` where the bytes were.
    pub blobs: HashMap<String, Arc<[u8]>>,
}

impl Record {
    pub fn json(loc: Location, fields: Map<String, Value>) -> Self {
        Record {
            loc,
            fields,
            blobs: HashMap::new(),
        }
    }
    pub fn blob_of(&self, v: &Value) -> Option<Arc<[u8]>> {
        let key = v.as_object()?.get("$blob")?.as_str()?;
        self.blobs.get(key).cloned()
    }
}

/// Read JSON lines. A malformed line becomes an error in `bad`, and the
/// other lines are still read. An empty file is an error. The file is
/// streamed: a line over `max_record_bytes` is an error in `bad` and is
/// skipped without being held in memory.
pub fn read_jsonl(
    path: &Path,
    bad: &mut Vec<Error>,
    max_record_bytes: usize,
) -> Result<Vec<Record>> {
    let f = crate::core::fs::open_regular(path)?;
    let mut r = std::io::BufReader::with_capacity(1 << 16, f);
    let mut out = Vec::new();
    let mut raw = Vec::new();
    let mut lineno = 0;
    loop {
        raw.clear();
        let (n, over) =
            read_line_capped(&mut r, &mut raw, max_record_bytes).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        lineno += 1;
        if over {
            bad.push(too_long(path, lineno, "line", n, max_record_bytes));
            continue;
        }
        // Line by line, so that one line that is not UTF-8 is reported with
        // its number and the others are still read.
        let line = match std::str::from_utf8(&raw) {
            Ok(l) => l,
            Err(e) => {
                bad.push(Error::input(
                    Location::line(path, lineno),
                    format!("line is not UTF-8 ({e})"),
                    "re-encode the line as UTF-8 or delete it; the other lines were read",
                ));
                continue;
            }
        };
        let line = line.trim_start_matches('\u{feff}').trim();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(m)) => out.push(Record::json(Location::line(path, lineno), m)),
            Ok(_) => bad.push(Error::input(
                Location::line(path, lineno),
                "line is valid JSON but not an object",
                "each line must be one JSON object like {\"id\": ..., \"prompt\": ...}",
            )),
            Err(e) => bad.push(Error::input(
                Location::line(path, lineno),
                format!("malformed JSON: {e}"),
                "fix or delete this line; the other lines were read",
            )),
        }
    }
    if out.is_empty() && bad.is_empty() {
        return Err(Error::input(
            Location::file(path),
            "file is empty",
            "point at a file that holds items",
        ));
    }
    Ok(out)
}

/// A record (`what`: "line" or "row") over `--max-record-mb`.
fn too_long(path: &Path, line: usize, what: &str, bytes: usize, max: usize) -> Error {
    Error::input(
        Location::line(path, line),
        format!(
            "{what} is {bytes} bytes, over the record limit of {} MiB",
            max >> 20
        ),
        format!(
            "raise --max-record-mb if {what}s this long are meant; the other {what}s were read"
        ),
    )
}

/// Read one line (through its `\n`, if any) into `out`, keeping at most
/// `cap` bytes besides the newline. Returns the line's length in the file
/// and whether it was over `cap` (then `out` is left empty).
fn read_line_capped(
    r: &mut impl std::io::BufRead,
    out: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<(usize, bool)> {
    let mut total = 0usize;
    let mut over = false;
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok((total, over));
        }
        let (len, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let content = if done { len - 1 } else { len };
        if !over {
            if out.len() + content > cap {
                over = true;
                out.clear();
                out.shrink_to(1 << 16);
            } else {
                out.extend_from_slice(&buf[..content]);
            }
        }
        total += len;
        r.consume(len);
        if done {
            return Ok((total, over));
        }
    }
}

/// Read a JSON file holding an array of objects.
pub fn read_json_array(path: &Path) -> Result<Vec<Record>> {
    let bytes = crate::core::error::read_file(path)?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
        Error::input(
            Location::file(path),
            format!("malformed JSON: {e}"),
            "the file must be a JSON array of objects",
        )
    })?;
    let arr = match v {
        Value::Array(a) => a,
        _ => {
            return Err(Error::input(
                Location::file(path),
                "expected a JSON array",
                "the file must be a JSON array of objects",
            ))
        }
    };
    if arr.is_empty() {
        return Err(Error::input(
            Location::file(path),
            "file is empty",
            "point at a file that holds items",
        ));
    }
    let mut out = Vec::with_capacity(arr.len());
    for (i, v) in arr.into_iter().enumerate() {
        match v {
            Value::Object(m) => out.push(Record::json(Location::line(path, i + 1), m)),
            _ => {
                return Err(Error::input(
                    Location::line(path, i + 1),
                    "array element is not an object",
                    "each element must be an object",
                ))
            }
        }
    }
    Ok(out)
}

/// Read a CSV file with a header row. Row numbers in locations are the
/// record's starting line in the file.
pub fn read_csv(path: &Path, bad: &mut Vec<Error>, max_record_bytes: usize) -> Result<Vec<Record>> {
    let bytes = crate::core::error::read_file(path)?;
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&bytes);
    let mut rdr = csv::ReaderBuilder::new().flexible(false).from_reader(bytes);
    let headers = rdr
        .headers()
        .map_err(|e| {
            Error::input(
                Location::file(path),
                format!("bad CSV header: {e}"),
                "the first row must name the columns",
            )
        })?
        .clone();
    if headers.is_empty() {
        return Err(Error::input(
            Location::file(path),
            "file is empty",
            "point at a CSV file with a header row and items",
        ));
    }
    let mut out = Vec::new();
    for rec in rdr.records() {
        match rec {
            Ok(r) => {
                let line = r.position().map(|p| p.line() as usize).unwrap_or(0);
                let size = r.as_byte_record().as_slice().len();
                if size > max_record_bytes {
                    bad.push(too_long(path, line, "row", size, max_record_bytes));
                    continue;
                }
                let mut m = Map::new();
                for (h, v) in headers.iter().zip(r.iter()) {
                    m.insert(h.to_string(), Value::String(v.to_string()));
                }
                out.push(Record::json(Location::line(path, line), m));
            }
            Err(e) => {
                let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
                bad.push(Error::input(
                    Location::line(path, line),
                    format!("malformed CSV record: {e}"),
                    "fix the quoting or the number of fields on this row",
                ));
            }
        }
    }
    // The csv crate reads a quote left open to the end of the file as one
    // long field: the rows after it would silently vanish into it.
    if let Some(open_line) = unclosed_quote_line(bytes) {
        out.retain(|r| r.loc.line.unwrap_or(0) < open_line);
        bad.push(Error::input(
            Location::line(path, open_line),
            "a quoted field opened on this line is never closed: the rest of the file would be one field",
            "close the quote (a quote inside a quoted field is written twice: \"\")",
        ));
    }
    if out.is_empty() && bad.is_empty() {
        return Err(Error::input(
            Location::file(path),
            "file has a header but no rows",
            "point at a file that holds items",
        ));
    }
    Ok(out)
}

/// The line on which a quoted CSV field opens that is still open at the end
/// of the file (`""` inside a quoted field closes and reopens: no change).
fn unclosed_quote_line(bytes: &[u8]) -> Option<usize> {
    let mut line = 1;
    let mut open: Option<usize> = None;
    for &b in bytes {
        match b {
            b'"' => open = if open.is_some() { None } else { Some(line) },
            b'\n' => line += 1,
            _ => {}
        }
    }
    open
}

/// Column names of a parquet file (top level).
pub fn parquet_columns(path: &Path) -> Result<Vec<String>> {
    parquet_contained(path, || parquet_columns_inner(path))
}

/// The `parquet` crate (60) panics on some malformed files (negative
/// column offsets, a dictionary page missing, short bit-packed runs: found
/// by fuzzing, `tests/fixtures/fuzz/parquet/`): such a file is a parquet
/// error naming it, not the end of the run.
fn parquet_contained<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    crate::core::guard::contain(f).unwrap_or_else(|panic| {
        Err(Error::Parquet {
            path: path.to_path_buf(),
            msg: format!("the parquet reader failed on the file's structure ({panic})"),
            fix: "the file is damaged or was not written by a parquet writer; export it again"
                .into(),
        })
    })
}

fn parquet_columns_inner(path: &Path) -> Result<Vec<String>> {
    let reader = open_parquet(path)?;
    let schema = reader.metadata().file_metadata().schema_descr();
    Ok(schema
        .root_schema()
        .get_fields()
        .iter()
        .map(|f| f.name().to_string())
        .collect())
}

fn open_parquet(path: &Path) -> Result<SerializedFileReader<std::fs::File>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    SerializedFileReader::new(f).map_err(|e| Error::Parquet {
        path: path.to_path_buf(),
        msg: e.to_string(),
        fix: "the file is not a readable parquet file (truncated or another format?)".into(),
    })
}

/// Read every row of a parquet file. Row numbers are 1-based.
pub fn read_parquet(path: &Path, bad: &mut Vec<Error>, max_mb: u64) -> Result<Vec<Record>> {
    parquet_contained(path, || read_parquet_inner(path, bad, max_mb))
}

/// `6 MiB`, `12 KiB`, `300 bytes`.
fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

fn read_parquet_inner(path: &Path, bad: &mut Vec<Error>, max_mb: u64) -> Result<Vec<Record>> {
    let reader = open_parquet(path)?;
    {
        let md = reader.metadata();
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        for (g, rg) in md.row_groups().iter().enumerate() {
            for c in rg.columns() {
                let size = c.uncompressed_size().max(0) as u64;
                if size > max_mb << 20 {
                    return Err(Error::Parquet {
                        path: path.to_path_buf(),
                        msg: format!(
                            "column {} of row group {g} decompresses to {} ({} compressed), over the limit of {max_mb} MiB",
                            c.column_path(),
                            human_bytes(size),
                            human_bytes(c.compressed_size().max(0) as u64)
                        ),
                        fix: "if the file is trusted, raise --max-decompressed-mb; a data set file this large is usually a decompression bomb".into(),
                    });
                }
                let (start, len) = c.byte_range();
                super::parquet_pages::check_chunk(
                    &mut file,
                    start,
                    len,
                    c.column_type(),
                    c.column_descr().type_length(),
                    max_mb << 20,
                )
                .map_err(|e| Error::Parquet {
                    path: path.to_path_buf(),
                    msg: format!("column {} of row group {g}: {e}", c.column_path()),
                    fix: "the file is damaged or was not written by a parquet writer; export it again (if it is trusted and only large, raise --max-decompressed-mb)".into(),
                })?;
            }
        }
    }
    let iter = reader.get_row_iter(None).map_err(|e| Error::Parquet {
        path: path.to_path_buf(),
        msg: e.to_string(),
        fix: "the file's schema could not be read".into(),
    })?;
    let mut out = Vec::new();
    for (i, row) in iter.enumerate() {
        let loc = Location::line(path, i + 1);
        match row {
            Ok(row) => {
                let mut rec = Record {
                    loc,
                    fields: Map::new(),
                    blobs: HashMap::new(),
                };
                for (name, field) in row.get_column_iter() {
                    let v = field_to_json(field, name, &mut rec.blobs);
                    rec.fields.insert(name.clone(), v);
                }
                out.push(rec);
            }
            Err(e) => {
                bad.push(Error::input(
                    loc,
                    format!("unreadable parquet row: {e}"),
                    "the file may be truncated; re-export it",
                ));
                break; // a broken page loses the rest of the column chunk
            }
        }
    }
    if out.is_empty() && bad.is_empty() {
        return Err(Error::input(
            Location::file(path),
            "parquet file has no rows",
            "point at a file that holds items",
        ));
    }
    Ok(out)
}

fn field_to_json(f: &Field, key: &str, blobs: &mut HashMap<String, Arc<[u8]>>) -> Value {
    match f {
        Field::Bytes(b) => {
            let k = format!("{key}#{}", blobs.len());
            blobs.insert(k.clone(), Arc::from(b.data()));
            serde_json::json!({ "$blob": k })
        }
        Field::Group(row) => {
            let mut m = Map::new();
            for (n, v) in row.get_column_iter() {
                m.insert(n.clone(), field_to_json(v, &format!("{key}.{n}"), blobs));
            }
            Value::Object(m)
        }
        Field::ListInternal(list) => Value::Array(
            list.elements()
                .iter()
                .enumerate()
                .map(|(i, e)| field_to_json(e, &format!("{key}[{i}]"), blobs))
                .collect(),
        ),
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(n) => (*n).into(),
        Field::Short(n) => (*n).into(),
        Field::Int(n) => (*n).into(),
        Field::Long(n) => (*n).into(),
        Field::UByte(n) => (*n).into(),
        Field::UShort(n) => (*n).into(),
        Field::UInt(n) => (*n).into(),
        Field::ULong(n) => (*n).into(),
        Field::Float(x) => serde_json::Number::from_f64(*x as f64)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Field::Double(x) => serde_json::Number::from_f64(*x)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Field::Str(s) => Value::String(s.clone()),
        Field::MapInternal(m) => {
            let mut o = Map::new();
            for (k, v) in m.entries() {
                let key = match k {
                    Field::Str(s) => s.clone(),
                    other => other.to_string(),
                };
                let val = field_to_json(v, &format!("{key}.{}", o.len()), blobs);
                o.insert(key, val);
            }
            Value::Object(o)
        }
        other => Value::String(other.to_string()),
    }
}
