//! A streaming parser of `journalctl -o export`, the journal export format
//! (systemd's `JOURNAL_EXPORT_FORMATS.md`): entries separated by an empty
//! line, each field either `NAME=text\n`, or, for values with control bytes,
//! `NAME\n` + a little-endian u64 length + the bytes + `\n`.
//!
//! Bounded: the parser holds at most one entry, keeps only the fields it is
//! asked for, and keeps at most `max_field_bytes` of each value (the rest is
//! read and discarded, and the field named in [`Entry::truncated`]). A
//! binary length is checked against the cap before anything is allocated.

use thiserror::Error;

/// Longest field name accepted (the journal's own limit is 64).
const MAX_NAME_BYTES: usize = 256;
/// Most fields kept of one entry; more are read and dropped.
const MAX_FIELDS: usize = 256;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ExportError {
    #[error("field name longer than {MAX_NAME_BYTES} bytes: not the export format")]
    NameTooLong,
    #[error("binary field {0:?} is not followed by a newline: not the export format")]
    MissingNewline(String),
}

/// One journal entry: the fields kept, in the order journalctl printed them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    pub fields: Vec<(String, Vec<u8>)>,
    /// Fields whose value was cut at the cap (or dropped past [`MAX_FIELDS`]).
    pub truncated: Vec<String>,
}

impl Entry {
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Name,
    Text,
    BinLen { got: usize, len: [u8; 8] },
    Bin { remaining: u64 },
    BinEnd,
}

/// Which fields to keep; the rest are skipped without being copied.
pub type Wanted = Box<dyn Fn(&str) -> bool + Send>;

pub struct ExportParser {
    state: State,
    name: Vec<u8>,
    value: Vec<u8>,
    keep_current: bool,
    cut_current: bool,
    entry: Entry,
    max_field_bytes: usize,
    wanted: Wanted,
}

impl ExportParser {
    pub fn new(max_field_bytes: usize, wanted: Wanted) -> ExportParser {
        ExportParser {
            state: State::Name,
            name: Vec::new(),
            value: Vec::new(),
            keep_current: false,
            cut_current: false,
            entry: Entry::default(),
            max_field_bytes,
            wanted,
        }
    }

    /// Parses `data`, appending every entry it completes to `out`.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<Entry>) -> Result<(), ExportError> {
        while !data.is_empty() {
            data = match self.state {
                State::Name => self.name_bytes(data, out)?,
                State::Text => self.text_bytes(data),
                State::BinLen { got, len } => self.len_bytes(data, got, len),
                State::Bin { remaining } => self.bin_bytes(data, remaining),
                State::BinEnd => {
                    if data[0] != b'\n' {
                        let name = String::from_utf8_lossy(&self.name).into_owned();
                        return Err(ExportError::MissingNewline(name));
                    }
                    self.finish_field();
                    &data[1..]
                }
            };
        }
        Ok(())
    }

    fn name_bytes<'d>(
        &mut self,
        data: &'d [u8],
        out: &mut Vec<Entry>,
    ) -> Result<&'d [u8], ExportError> {
        let end = data.iter().position(|&b| b == b'=' || b == b'\n');
        let taken = &data[..end.unwrap_or(data.len())];
        if self.name.len() + taken.len() > MAX_NAME_BYTES {
            return Err(ExportError::NameTooLong);
        }
        self.name.extend_from_slice(taken);
        let Some(i) = end else { return Ok(&[]) };
        if data[i] == b'=' {
            self.begin_value();
            self.state = State::Text;
        } else if self.name.is_empty() {
            let entry = std::mem::take(&mut self.entry);
            if !entry.fields.is_empty() || !entry.truncated.is_empty() {
                out.push(entry);
            }
        } else {
            self.begin_value();
            self.state = State::BinLen {
                got: 0,
                len: [0; 8],
            };
        }
        Ok(&data[i + 1..])
    }

    fn begin_value(&mut self) {
        let name = String::from_utf8_lossy(&self.name);
        self.keep_current = (self.wanted)(&name);
        if self.keep_current && self.entry.fields.len() >= MAX_FIELDS {
            self.keep_current = false;
            self.entry.truncated.push(name.into_owned());
        }
        self.cut_current = false;
    }

    fn keep(&mut self, bytes: &[u8]) {
        if !self.keep_current {
            return;
        }
        let room = self.max_field_bytes.saturating_sub(self.value.len());
        if bytes.len() > room {
            self.cut_current = true;
        }
        self.value
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn text_bytes<'d>(&mut self, data: &'d [u8]) -> &'d [u8] {
        match data.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.keep(&data[..i]);
                self.finish_field();
                &data[i + 1..]
            }
            None => {
                self.keep(data);
                &[]
            }
        }
    }

    fn len_bytes<'d>(&mut self, data: &'d [u8], mut got: usize, mut len: [u8; 8]) -> &'d [u8] {
        let n = (8 - got).min(data.len());
        len[got..got + n].copy_from_slice(&data[..n]);
        got += n;
        self.state = if got == 8 {
            let length = u64::from_le_bytes(len);
            if self.keep_current {
                // Reserve only what will be kept, never what the peer claims.
                self.value
                    .reserve(length.min(self.max_field_bytes as u64) as usize);
            }
            if length == 0 {
                State::BinEnd
            } else {
                State::Bin { remaining: length }
            }
        } else {
            State::BinLen { got, len }
        };
        &data[n..]
    }

    fn bin_bytes<'d>(&mut self, data: &'d [u8], remaining: u64) -> &'d [u8] {
        let n = remaining.min(data.len() as u64) as usize;
        self.keep(&data[..n]);
        let left = remaining - n as u64;
        self.state = if left == 0 {
            State::BinEnd
        } else {
            State::Bin { remaining: left }
        };
        &data[n..]
    }

    fn finish_field(&mut self) {
        let name = String::from_utf8_lossy(&self.name).into_owned();
        if self.keep_current {
            if self.cut_current {
                self.entry.truncated.push(name.clone());
            }
            let value = std::mem::take(&mut self.value);
            self.entry.fields.push((name, value));
        }
        self.name.clear();
        self.value.clear();
        self.state = State::Name;
    }
}

/// Writes `entry` in the export format (binary form for values with control
/// bytes), as `systemd-journal-remote` reads it: tests and the bench use it.
pub fn write_entry(out: &mut Vec<u8>, fields: &[(&str, &[u8])]) {
    for (name, value) in fields {
        out.extend_from_slice(name.as_bytes());
        if value.iter().any(|&b| b < 0x20 && b != b'\t') {
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
            out.extend_from_slice(value);
        } else {
            out.push(b'=');
            out.extend_from_slice(value);
        }
        out.push(b'\n');
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all() -> Wanted {
        Box::new(|_| true)
    }

    fn parse(bytes: &[u8], cap: usize, cut: usize) -> Result<Vec<Entry>, ExportError> {
        let mut parser = ExportParser::new(cap, all());
        let mut out = Vec::new();
        for chunk in bytes.chunks(cut.max(1)) {
            parser.push(chunk, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn text_and_binary_fields_are_read() {
        let mut bytes = b"__CURSOR=s=a;i=1\nMESSAGE=hi there\nBIN\n".to_vec();
        bytes.extend_from_slice(&5u64.to_le_bytes());
        bytes.extend_from_slice(b"a\nb\0c\n\nMESSAGE=two\n\n");
        let entries = parse(&bytes, 100, 3).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].text("MESSAGE"), Some("hi there"));
        assert_eq!(entries[0].get("BIN"), Some(&b"a\nb\0c"[..]));
        assert_eq!(entries[1].text("MESSAGE"), Some("two"));
    }

    #[test]
    fn a_huge_binary_length_is_not_allocated_and_the_value_is_cut() {
        let mut bytes = b"MESSAGE\n".to_vec();
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        bytes.extend_from_slice(&[b'x'; 5000]);
        let mut parser = ExportParser::new(16, all());
        let mut out = Vec::new();
        parser.push(&bytes, &mut out).unwrap();
        assert!(out.is_empty() && parser.value.capacity() < 1024);
    }

    #[test]
    fn a_long_value_is_cut_at_the_cap_and_named() {
        let bytes = format!("MESSAGE={}\nA=b\n\n", "y".repeat(50));
        let entries = parse(bytes.as_bytes(), 10, 7).unwrap();
        assert_eq!(entries[0].get("MESSAGE"), Some(&b"yyyyyyyyyy"[..]));
        assert_eq!(entries[0].truncated, vec!["MESSAGE".to_string()]);
        assert_eq!(entries[0].text("A"), Some("b"));
    }

    #[test]
    fn unwanted_fields_are_skipped_and_garbage_is_an_error() {
        let mut parser = ExportParser::new(100, Box::new(|n| n == "MESSAGE"));
        let mut out = Vec::new();
        parser.push(b"X=1\nMESSAGE=m\n\n", &mut out).unwrap();
        assert_eq!(out[0].fields, vec![("MESSAGE".into(), b"m".to_vec())]);
        let mut bytes = b"B\n".to_vec();
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(b"zz");
        assert!(matches!(
            parse(&bytes, 10, 100),
            Err(ExportError::MissingNewline(_))
        ));
        assert_eq!(parse(&[b'N'; 300], 10, 100), Err(ExportError::NameTooLong));
    }

    fn field() -> impl Strategy<Value = (String, Vec<u8>)> {
        (
            "[A-Z_][A-Z0-9_]{0,20}",
            proptest::collection::vec(any::<u8>(), 0..64),
        )
    }

    proptest! {
        #[test]
        fn written_entries_parse_back_whatever_the_chunking(
            entries in proptest::collection::vec(proptest::collection::vec(field(), 1..6), 0..6),
            cut in 1usize..40,
        ) {
            let mut bytes = Vec::new();
            for fields in &entries {
                let refs: Vec<(&str, &[u8])> = fields.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
                write_entry(&mut bytes, &refs);
            }
            let got = parse(&bytes, 1 << 20, cut).unwrap();
            let want: Vec<Entry> = entries.into_iter().map(|fields| Entry { fields, truncated: vec![] }).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn arbitrary_bytes_never_panic_nor_exceed_the_cap(bytes in proptest::collection::vec(any::<u8>(), 0..2000), cut in 1usize..50) {
            if let Ok(entries) = parse(&bytes, 32, cut) {
                for e in entries {
                    prop_assert!(e.fields.iter().all(|(_, v)| v.len() <= 32));
                }
            }
        }
    }
}
