//! On-disk cache of encoded JSONL files, keyed by a hash of (tokenizer file, template, data file,
//! options). An entry is a plain safetensors file (`input_ids`, `labels`, `offsets`,
//! `prompt_lengths`, `kept`, statistics in `__metadata__`), so tokenized data prepared on a CPU
//! machine can be shipped to a GPU machine and read there with `safetensors` alone.
use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use safetensors::{tensor::TensorView, Dtype, SafeTensors};

use super::{Flat, PairOptions, Pairs, Stats, Template, Tokenizer};
use crate::error::{Error, IoContext, Result};

const FORMAT: &str = "ssm-offset-tokens-v1";

/// Key of an encoding: hashes the data file's bytes (streaming), so an edited file misses.
pub fn key(
    tok: &Tokenizer,
    template: &Template,
    data: &Path,
    opts: &PairOptions,
) -> Result<String> {
    let mut h = blake3::Hasher::new();
    h.update(FORMAT.as_bytes());
    h.update(tok.file_hash().as_bytes());
    h.update(format!("\0eos={:?}\0pad={}\0", tok.eos_id(), tok.pad_id()).as_bytes());
    h.update(template.to_json().as_bytes());
    h.update(
        serde_json::to_string(opts)
            .expect("options serialise")
            .as_bytes(),
    );
    let mut f = fs::File::open(data).at(data)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).at(data)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex()[..32].to_string())
}

pub fn entry_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.safetensors"))
}

fn bytes_i32(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn bytes_i64(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes an entry atomically (temporary file, then rename).
pub fn save(dir: &Path, key: &str, pairs: &Pairs) -> Result<PathBuf> {
    fs::create_dir_all(dir).at(dir)?;
    let cols: [(&str, Dtype, Vec<u8>, usize); 5] = [
        (
            "input_ids",
            Dtype::I32,
            bytes_i32(&pairs.input_ids.ids),
            pairs.input_ids.ids.len(),
        ),
        (
            "labels",
            Dtype::I32,
            bytes_i32(&pairs.labels),
            pairs.labels.len(),
        ),
        (
            "offsets",
            Dtype::I64,
            bytes_i64(&pairs.input_ids.offsets),
            pairs.input_ids.offsets.len(),
        ),
        (
            "prompt_lengths",
            Dtype::I32,
            bytes_i32(&pairs.prompt_lengths),
            pairs.prompt_lengths.len(),
        ),
        ("kept", Dtype::I64, bytes_i64(&pairs.kept), pairs.kept.len()),
    ];
    let views: Vec<(&str, TensorView)> = cols
        .iter()
        .map(|(n, d, b, len)| {
            (
                *n,
                TensorView::new(*d, vec![*len], b).expect("consistent sizes"),
            )
        })
        .collect();
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("key".to_string(), key.to_string()),
        (
            "stats".to_string(),
            serde_json::to_string(&pairs.stats).expect("stats serialise"),
        ),
    ]);
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::invalid(format!("cache: {e}")))?;
    let path = entry_path(dir, key);
    let tmp = dir.join(format!(".{key}.{}.tmp", std::process::id()));
    fs::write(&tmp, &bytes).at(&tmp)?;
    fs::rename(&tmp, &path).at(&path)?;
    Ok(path)
}

/// Reads an entry; `Ok(None)` if there is none. A damaged entry is an error naming the file.
pub fn load(dir: &Path, key: &str) -> Result<Option<Pairs>> {
    let path = entry_path(dir, key);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let bad = |m: String| Error::corrupt(&path, format!("damaged token cache entry: {m}"));
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let md = meta.metadata().clone().unwrap_or_default();
    if md.get("format").map(String::as_str) != Some(FORMAT)
        || md.get("key").map(String::as_str) != Some(key)
    {
        return Err(bad("format or key mismatch".into()));
    }
    let stats: Stats = serde_json::from_str(md.get("stats").map(String::as_str).unwrap_or(""))
        .map_err(|e| bad(format!("invalid statistics: {e}")))?;
    let col = |name: &str, dtype: Dtype| -> Result<Vec<u8>> {
        let t = st.tensor(name).map_err(|e| bad(e.to_string()))?;
        if t.dtype() != dtype || t.shape().len() != 1 {
            return Err(bad(format!(
                "column {name} has dtype {} and shape {:?}",
                t.dtype(),
                t.shape()
            )));
        }
        Ok(t.data().to_vec())
    };
    let i32s = |b: Vec<u8>| -> Vec<i32> {
        b.chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let i64s = |b: Vec<u8>| -> Vec<i64> {
        b.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let pairs = Pairs {
        input_ids: Flat {
            ids: i32s(col("input_ids", Dtype::I32)?),
            offsets: i64s(col("offsets", Dtype::I64)?),
        },
        labels: i32s(col("labels", Dtype::I32)?),
        prompt_lengths: i32s(col("prompt_lengths", Dtype::I32)?),
        kept: i64s(col("kept", Dtype::I64)?),
        stats,
    };
    let n = pairs.prompt_lengths.len();
    let offsets_ok = pairs.input_ids.offsets.len() == n + 1
        && pairs.input_ids.offsets.first() == Some(&0)
        && pairs.input_ids.offsets.windows(2).all(|w| w[0] <= w[1])
        && pairs.input_ids.offsets.last().copied() == Some(pairs.input_ids.ids.len() as i64);
    if !offsets_ok || pairs.labels.len() != pairs.input_ids.ids.len() || pairs.kept.len() != n {
        return Err(bad("inconsistent columns".into()));
    }
    Ok(Some(pairs))
}
