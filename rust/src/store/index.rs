//! The store's index: one JSON file listing every committed adapter. It is replaced atomically
//! (write a temporary file, fsync, rename), so a reader sees either the old or the new index.
use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::file::AdapterInfo;
use crate::error::{Error, Result};

pub const FORMAT: &str = "ssm-offset-store";
pub const VERSION: u32 = 1;
/// Largest index accepted (about a million adapters' worth of small entries).
pub const MAX_INDEX_BYTES: u64 = 1 << 30;

/// One committed adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(flatten)]
    pub info: AdapterInfo,
    /// File name inside `adapters/` (content-addressed: `<hash>.safetensors`).
    pub file: String,
    pub size: u64,
    /// `xxh3:<hex>` (XXH3-128) of the whole file.
    pub content_hash: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Index {
    pub format: String,
    pub version: u32,
    pub adapters: BTreeMap<String, Entry>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            format: FORMAT.into(),
            version: VERSION,
            adapters: BTreeMap::new(),
        }
    }
}

/// A file name the index may point to: `<hex>.safetensors`, nothing that could leave `adapters/`.
pub fn valid_file_name(f: &str) -> bool {
    match f.strip_suffix(".safetensors") {
        Some(stem) => {
            !stem.is_empty() && stem.len() <= 128 && stem.bytes().all(|b| b.is_ascii_hexdigit())
        }
        None => false,
    }
}

pub fn valid_hash(h: &str) -> bool {
    h.strip_prefix("xxh3:")
        .is_some_and(|x| x.len() == 32 && x.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Index {
    /// Parses and checks index bytes; `path` only names the file in errors. Never trusts the
    /// index further than it checks it: names match their keys, file names cannot escape the
    /// store, hashes are well-formed.
    pub fn parse(buf: &[u8], path: &Path) -> Result<Index> {
        let bad = |msg: String| Error::corrupt(path, msg);
        let index: Index =
            serde_json::from_slice(buf).map_err(|e| bad(format!("invalid index: {e}")))?;
        if index.format != FORMAT {
            return Err(bad(format!(
                "not an adapter store index (format {:?}, expected {FORMAT:?})",
                index.format
            )));
        }
        if index.version != VERSION {
            return Err(bad(format!(
                "index version {} is not supported (expected {VERSION})",
                index.version
            )));
        }
        for (key, e) in &index.adapters {
            if key != &e.info.name {
                return Err(bad(format!(
                    "index entry {key:?} names adapter {:?}",
                    e.info.name
                )));
            }
            if !valid_file_name(&e.file) {
                return Err(bad(format!(
                    "index entry {key:?}: invalid file name {:?}",
                    e.file
                )));
            }
            if !valid_hash(&e.content_hash) {
                return Err(bad(format!(
                    "index entry {key:?}: invalid content hash {:?}",
                    e.content_hash
                )));
            }
            check_name(key).map_err(|m| bad(format!("index entry {key:?}: {m}")))?;
        }
        Ok(index)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("an index always serialises");
        v.push(b'\n');
        v
    }
}

/// Adapter names are free text within reason: 1 to 256 characters, no control characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > 256 {
        return Err(format!(
            "adapter name must have 1 to 256 characters, got {}",
            name.chars().count()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("adapter name {name:?} contains control characters"));
    }
    Ok(())
}
