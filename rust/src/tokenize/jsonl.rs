//! The project's one JSONL reader: streaming (one line in memory at a time), so files larger than
//! memory work; every error names the file and the 1-based line.
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, IoContext, Result};

/// Longest line accepted (a guard against reading a whole binary file as one line).
pub const MAX_LINE_BYTES: u64 = 256 << 20;

pub struct JsonlReader<R> {
    reader: R,
    path: PathBuf,
    line: u64,
    buf: Vec<u8>,
    max_line: u64,
    done: bool,
}

impl JsonlReader<BufReader<File>> {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let f = File::open(path).at(path)?;
        Ok(JsonlReader::new(BufReader::with_capacity(1 << 20, f), path))
    }
}

impl<R: BufRead> JsonlReader<R> {
    /// `path` names the source in errors.
    pub fn new(reader: R, path: impl AsRef<Path>) -> Self {
        JsonlReader {
            reader,
            path: path.as_ref().to_path_buf(),
            line: 0,
            buf: Vec::new(),
            max_line: MAX_LINE_BYTES,
            done: false,
        }
    }

    pub fn with_max_line(mut self, bytes: u64) -> Self {
        self.max_line = bytes;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Next non-blank line as (line number, value).
    pub fn next_record(&mut self) -> Result<Option<(u64, Value)>> {
        loop {
            if self.done {
                return Ok(None);
            }
            self.buf.clear();
            self.line += 1;
            let n = (&mut self.reader)
                .take(self.max_line + 1)
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| Error::data(&self.path, self.line, format!("read error: {e}")))?;
            if n == 0 {
                self.done = true;
                return Ok(None);
            }
            if self.buf.last() != Some(&b'\n') && n as u64 > self.max_line {
                self.done = true;
                return Err(Error::data(
                    &self.path,
                    self.line,
                    format!("line longer than {} bytes", self.max_line),
                ));
            }
            let mut bytes = &self.buf[..];
            while let [rest @ .., b'\n' | b'\r'] = bytes {
                bytes = rest;
            }
            let text = std::str::from_utf8(bytes).map_err(|e| {
                Error::data(
                    &self.path,
                    self.line,
                    format!("invalid UTF-8 at byte {} of the line", e.valid_up_to()),
                )
            })?;
            if text.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(text)
                .map_err(|e| Error::data(&self.path, self.line, format!("invalid JSON: {e}")))?;
            return Ok(Some((self.line, v)));
        }
    }
}

impl<R: BufRead> Iterator for JsonlReader<R> {
    type Item = Result<(u64, Value)>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.next_record() {
            Ok(Some(x)) => Some(Ok(x)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Reads every record of JSONL bytes (the fuzz target's entry point); stops at the first error.
pub fn read_all(bytes: &[u8]) -> Result<Vec<Value>> {
    JsonlReader::new(bytes, "<bytes>")
        .with_max_line(1 << 16)
        .map(|r| r.map(|(_, v)| v))
        .collect()
}
