//! One adapter on disk: a safetensors file whose `__metadata__` carries the adapter's description
//! (`ssm_offset` key, JSON). Files are untrusted input: they are parsed with the `safetensors`
//! crate only, and the store adds its own limits and consistency checks on top.
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorInfo, View};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// Key of the adapter description inside the safetensors `__metadata__`.
pub const META_KEY: &str = "ssm_offset";

/// Limits applied to every adapter file before and after the safetensors parser.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest JSON header accepted (the safetensors crate alone allows 100 MB).
    pub max_header_bytes: usize,
    pub max_tensors: usize,
    pub max_ndim: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 << 20,
            max_tensors: 100_000,
            max_ndim: 16,
        }
    }
}

/// Dtype and shape of one tensor, as the index and the file header record them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub dtype: String,
    pub shape: Vec<usize>,
}

/// Everything that describes an adapter; written into its file and copied into the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterInfo {
    pub name: String,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub base_fingerprint: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub metrics: Value,
    /// The adapter's configuration (the content of PEFT's `adapter_config.json`).
    #[serde(default)]
    pub config: Value,
    /// Free metadata.
    #[serde(default)]
    pub metadata: Value,
    /// Creation time, seconds since the Unix epoch.
    pub created: f64,
    pub tensors: BTreeMap<String, TensorSpec>,
}

/// A tensor handed to `put`: borrowed bytes in safetensors' little-endian layout.
#[derive(Debug, Clone)]
pub struct TensorIn<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

impl View for &TensorIn<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Where one tensor lies in a mapped file (absolute byte range).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorLoc {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
}

/// Parses a dtype name as safetensors writes it; only whole-byte dtypes (numpy and torch can view
/// them without unpacking).
pub fn parse_dtype(s: &str) -> Result<Dtype> {
    let d = match s {
        "BOOL" => Dtype::BOOL,
        "U8" => Dtype::U8,
        "I8" => Dtype::I8,
        "F8_E5M2" => Dtype::F8_E5M2,
        "F8_E4M3" => Dtype::F8_E4M3,
        "I16" => Dtype::I16,
        "U16" => Dtype::U16,
        "F16" => Dtype::F16,
        "BF16" => Dtype::BF16,
        "I32" => Dtype::I32,
        "U32" => Dtype::U32,
        "F32" => Dtype::F32,
        "F64" => Dtype::F64,
        "I64" => Dtype::I64,
        "U64" => Dtype::U64,
        other => {
            return Err(Error::invalid(format!(
                "unsupported dtype {other:?} (expected one of BOOL, U8, I8, F8_E5M2, F8_E4M3, \
                 I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64)"
            )))
        }
    };
    Ok(d)
}

fn check_spec(
    name: &str,
    dtype: Dtype,
    shape: &[usize],
    nbytes: usize,
    limits: &Limits,
) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty tensor name".into());
    }
    if !dtype.bitsize().is_multiple_of(8) {
        return Err(format!(
            "tensor {name:?}: sub-byte dtype {dtype} is not supported"
        ));
    }
    if shape.len() > limits.max_ndim {
        return Err(format!(
            "tensor {name:?}: {} dimensions (at most {})",
            shape.len(),
            limits.max_ndim
        ));
    }
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("tensor {name:?}: shape {shape:?} overflows"))?;
    let expected = numel
        .checked_mul(dtype.bitsize() / 8)
        .ok_or_else(|| format!("tensor {name:?}: shape {shape:?} overflows"))?;
    if expected != nbytes {
        return Err(format!(
            "tensor {name:?}: dtype {dtype} and shape {shape:?} need {expected} bytes, got {nbytes}"
        ));
    }
    Ok(())
}

/// Rejects NaN and infinities in floating-point tensors. Reads bytes without assuming alignment.
pub fn check_finite(name: &str, dtype: Dtype, data: &[u8]) -> Result<(), String> {
    let bad = match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .position(|c| !f32::from_le_bytes(c.try_into().unwrap()).is_finite()),
        Dtype::F64 => data
            .chunks_exact(8)
            .position(|c| !f64::from_le_bytes(c.try_into().unwrap()).is_finite()),
        // Half precision: exponent bits all ones means Inf or NaN.
        Dtype::F16 => data
            .chunks_exact(2)
            .position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7c00 == 0x7c00),
        Dtype::BF16 => data
            .chunks_exact(2)
            .position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7f80 == 0x7f80),
        _ => None,
    };
    match bad {
        Some(i) => Err(format!(
            "tensor {name:?}: non-finite value at flat index {i}"
        )),
        None => Ok(()),
    }
}

/// Validates tensors given to `put` and returns their specs.
pub fn check_inputs(
    tensors: &[TensorIn<'_>],
    limits: &Limits,
    finite: bool,
) -> Result<BTreeMap<String, TensorSpec>> {
    if tensors.len() > limits.max_tensors {
        return Err(Error::invalid(format!(
            "{} tensors (at most {})",
            tensors.len(),
            limits.max_tensors
        )));
    }
    let mut specs = BTreeMap::new();
    for t in tensors {
        check_spec(&t.name, t.dtype, &t.shape, t.data.len(), limits).map_err(Error::Invalid)?;
        if finite {
            check_finite(&t.name, t.dtype, t.data).map_err(Error::Invalid)?;
        }
        let spec = TensorSpec {
            dtype: t.dtype.to_string(),
            shape: t.shape.clone(),
        };
        if specs.insert(t.name.clone(), spec).is_some() {
            return Err(Error::invalid(format!("tensor {:?} given twice", t.name)));
        }
    }
    Ok(specs)
}

/// Serialises an adapter to the bytes of a safetensors file.
pub fn serialize(tensors: &[TensorIn<'_>], info: &AdapterInfo) -> Result<Vec<u8>> {
    let meta = serde_json::to_string(info)
        .map_err(|e| Error::invalid(format!("adapter metadata: {e}")))?;
    let data_info = HashMap::from([(META_KEY.to_string(), meta)]);
    safetensors::tensor::serialize(tensors.iter().map(|t| (t.name.clone(), t)), Some(data_info))
        .map_err(|e| Error::invalid(format!("cannot serialise adapter {:?}: {e}", info.name)))
}

/// A parsed and checked adapter file.
#[derive(Debug)]
pub struct Parsed {
    pub info: AdapterInfo,
    /// Tensors in file order.
    pub tensors: Vec<TensorLoc>,
}

/// Parses and checks the bytes of an adapter file: safetensors structure (by the safetensors
/// crate), the store's limits, dtype and shape against byte lengths, the embedded description
/// against the header, and optionally finiteness. `path` only names the file in errors.
pub fn parse(buf: &[u8], path: &Path, limits: &Limits, finite: bool) -> Result<Parsed> {
    let bad = |msg: String| Error::corrupt(path, msg);
    if buf.len() < 8 {
        return Err(bad(format!(
            "truncated safetensors file ({} bytes, header length missing)",
            buf.len()
        )));
    }
    let n = u64::from_le_bytes(buf[..8].try_into().unwrap());
    if n > limits.max_header_bytes as u64 {
        return Err(bad(format!(
            "safetensors header of {n} bytes exceeds the limit of {} bytes",
            limits.max_header_bytes
        )));
    }
    if n + 8 > buf.len() as u64 {
        return Err(bad(format!(
            "truncated safetensors file: header needs {} bytes, file has {}",
            n + 8,
            buf.len()
        )));
    }
    let (header_len, meta) = SafeTensors::read_metadata(buf)
        .map_err(|e| bad(format!("invalid safetensors file: {e}")))?;
    let data_start = 8 + header_len;
    let infos: Vec<(String, &TensorInfo)> = {
        let mut v: Vec<_> = meta.tensors().into_iter().collect();
        v.sort_by_key(|(_, info)| info.data_offsets.0);
        v
    };
    if infos.len() > limits.max_tensors {
        return Err(bad(format!(
            "{} tensors (at most {})",
            infos.len(),
            limits.max_tensors
        )));
    }
    let mut locs = Vec::with_capacity(infos.len());
    for (name, info) in infos {
        let (s, e) = info.data_offsets;
        check_spec(&name, info.dtype, &info.shape, e - s, limits).map_err(&bad)?;
        let (start, end) = (data_start + s, data_start + e);
        if finite {
            check_finite(&name, info.dtype, &buf[start..end]).map_err(&bad)?;
        }
        locs.push(TensorLoc {
            name,
            dtype: info.dtype.to_string(),
            shape: info.shape.clone(),
            start,
            end,
        });
    }
    let raw = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| {
            bad(format!(
                "not an ssm-offset adapter: no `{META_KEY}` entry in __metadata__"
            ))
        })?;
    let info: AdapterInfo = serde_json::from_str(raw)
        .map_err(|e| bad(format!("invalid adapter description in __metadata__: {e}")))?;
    let header: BTreeMap<&str, TensorSpec> = locs
        .iter()
        .map(|l| {
            (
                l.name.as_str(),
                TensorSpec {
                    dtype: l.dtype.clone(),
                    shape: l.shape.clone(),
                },
            )
        })
        .collect();
    let described: BTreeMap<&str, TensorSpec> = info
        .tensors
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    if header != described {
        return Err(bad(format!(
            "adapter description lists tensors {:?} but the file holds {:?}",
            described.keys().collect::<Vec<_>>(),
            header.keys().collect::<Vec<_>>()
        )));
    }
    Ok(Parsed {
        info,
        tensors: locs,
    })
}
