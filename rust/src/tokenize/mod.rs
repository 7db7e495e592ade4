//! Tokenization pipeline: a Hugging Face `tokenizer.json` (the `tokenizers` crate, no network
//! features), (prompt, target) pairs and plain text encoded in parallel with rayon, packing,
//! truncation policies, length statistics, and an on-disk cache of encoded JSONL files.
//!
//! Pairs follow the State-offset Tuning reference: prompt and target are tokenized separately and
//! concatenated (`prompt ids ++ target ids ++ [eos]`), labels are -100 on the prompt.
pub mod cache;
pub mod jsonl;
pub mod template;

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;
use serde_json::Value;

pub use jsonl::JsonlReader;
pub use template::Template;

use crate::error::{Error, IoContext, Result};

/// Label of positions that carry no loss (PyTorch's `ignore_index`).
pub const IGNORE: i32 = -100;

/// What to do with a pair longer than `max_length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// Keep the first `max_length` tokens (the end of the target goes first).
    Truncate,
    /// Drop tokens from the start of the prompt so that the target fits (then cut the target).
    TruncatePrompt,
    /// Leave the pair out (counted in the statistics).
    Drop,
    /// Fail, naming the record.
    Error,
}

impl Truncation {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "truncate" => Truncation::Truncate,
            "truncate_prompt" => Truncation::TruncatePrompt,
            "drop" => Truncation::Drop,
            "error" => Truncation::Error,
            o => {
                return Err(Error::invalid(format!(
                    "truncation must be 'truncate', 'truncate_prompt', 'drop' or 'error', got {o:?}"
                )))
            }
        })
    }
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    /// blake3 of the tokenizer file (part of cache keys).
    file_hash: String,
    eos_id: Option<u32>,
    pad_id: u32,
}

/// Variable-length sequences, flat: sequence i is `ids[offsets[i]..offsets[i+1]]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Flat {
    pub ids: Vec<i32>,
    pub offsets: Vec<i64>,
}

impl Flat {
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn get(&self, i: usize) -> &[i32] {
        &self.ids[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
    fn new() -> Self {
        Flat {
            ids: Vec::new(),
            offsets: vec![0],
        }
    }
    fn push(&mut self, s: &[i32]) {
        self.ids.extend_from_slice(s);
        self.offsets.push(self.ids.len() as i64);
    }
    /// Rows padded to the longest with `pad`: (values, rows, columns).
    pub fn padded(&self, pad: i32, width: Option<usize>) -> (Vec<i32>, usize, usize) {
        let w = width.unwrap_or_else(|| {
            (0..self.len())
                .map(|i| self.get(i).len())
                .max()
                .unwrap_or(0)
        });
        let mut out = vec![pad; self.len() * w];
        for i in 0..self.len() {
            let s = self.get(i);
            let k = s.len().min(w);
            out[i * w..i * w + k].copy_from_slice(&s[..k]);
        }
        (out, self.len(), w)
    }
}

/// Encoded (prompt, target) pairs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pairs {
    pub input_ids: Flat,
    /// Same offsets as `input_ids`.
    pub labels: Vec<i32>,
    pub prompt_lengths: Vec<i32>,
    /// Index (0-based) of each kept record in the input.
    pub kept: Vec<i64>,
    pub stats: Stats,
}

/// Length statistics of an encoding run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Stats {
    pub records: u64,
    pub kept: u64,
    pub dropped: u64,
    pub truncated: u64,
    /// Kept records whose target was cut entirely (no token carries a loss).
    pub no_label: u64,
    pub tokens: u64,
    pub label_tokens: u64,
    pub min_length: u64,
    pub max_length: u64,
    pub mean_length: f64,
    pub p50_length: u64,
    pub p90_length: u64,
    pub p99_length: u64,
    /// Longest sequence before truncation.
    pub max_length_untruncated: u64,
}

fn length_stats(stats: &mut Stats, lengths: impl Iterator<Item = u64>) {
    let mut v: Vec<u64> = lengths.collect();
    v.sort_unstable();
    let q = |p: f64| -> u64 {
        if v.is_empty() {
            0
        } else {
            v[((v.len() - 1) as f64 * p).round() as usize]
        }
    };
    stats.min_length = v.first().copied().unwrap_or(0);
    stats.max_length = v.last().copied().unwrap_or(0);
    stats.tokens = v.iter().sum();
    stats.mean_length = if v.is_empty() {
        0.0
    } else {
        stats.tokens as f64 / v.len() as f64
    };
    stats.p50_length = q(0.5);
    stats.p90_length = q(0.9);
    stats.p99_length = q(0.99);
}

/// Options of a pair encoding (part of cache keys).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PairOptions {
    pub max_length: Option<usize>,
    pub truncation: Truncation,
}

impl Tokenizer {
    /// Loads a `tokenizer.json`. `eos_token` is the token appended after targets and between
    /// packed documents (GPT-NeoX: `<|endoftext|>`); `pad_token` defaults to it.
    pub fn from_file(
        path: impl AsRef<Path>,
        eos_token: Option<&str>,
        pad_token: Option<&str>,
    ) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).at(path)?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::corrupt(path, format!("not a valid tokenizer.json: {e}")))?;
        let id = |t: &str, what: &str| {
            inner.token_to_id(t).ok_or_else(|| {
                Error::invalid(format!(
                    "{}: {what} {t:?} is not in the vocabulary",
                    path.display()
                ))
            })
        };
        let eos_id = match eos_token {
            Some(t) => Some(id(t, "eos_token")?),
            None => inner
                .token_to_id("<|endoftext|>")
                .or_else(|| inner.token_to_id("</s>")),
        };
        let pad_id = match pad_token {
            Some(t) => id(t, "pad_token")?,
            None => eos_id.unwrap_or(0),
        };
        Ok(Tokenizer {
            inner,
            path: path.to_path_buf(),
            file_hash: blake3::hash(&bytes).to_hex().to_string(),
            eos_id,
            pad_id,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    pub fn file_hash(&self) -> &str {
        &self.file_hash
    }

    fn need_eos(&self) -> Result<i32> {
        self.eos_id.map(|e| e as i32).ok_or_else(|| {
            Error::invalid(format!(
                "{}: no eos token (pass eos_token=...)",
                self.path.display()
            ))
        })
    }

    /// Ids of one text, no special tokens added (as the reference tokenizes prompt and target).
    pub fn encode(&self, text: &str) -> Result<Vec<i32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| Error::invalid(format!("tokenizer {}: {e}", self.path.display())))?;
        Ok(enc.get_ids().iter().map(|&i| i as i32).collect())
    }

    /// Encodes many texts in parallel; `eos` appends the eos token to each.
    pub fn encode_texts<S: AsRef<str> + Sync>(&self, texts: &[S], eos: bool) -> Result<Flat> {
        let eos = if eos { Some(self.need_eos()?) } else { None };
        let parts: Vec<Vec<i32>> = texts
            .par_iter()
            .with_min_len(64)
            .map(|t| {
                let mut ids = self.encode(t.as_ref())?;
                ids.extend(eos);
                Ok(ids)
            })
            .collect::<Result<_>>()?;
        let mut flat = Flat::new();
        flat.ids.reserve(parts.iter().map(Vec::len).sum());
        for p in &parts {
            flat.push(p);
        }
        Ok(flat)
    }

    /// Encodes rendered (prompt, target) pairs. `origin(i)` names record i in errors
    /// (for example `file:line`).
    pub fn encode_pairs<S: AsRef<str> + Sync>(
        &self,
        pairs: &[(S, S)],
        template: &Template,
        opts: PairOptions,
        origin: &(dyn Fn(usize) -> String + Sync),
    ) -> Result<Pairs> {
        let mut out = Pairs {
            input_ids: Flat::new(),
            ..Default::default()
        };
        self.encode_pairs_into(pairs, template, opts, origin, 0, &mut out)?;
        self.finish(&mut out);
        Ok(out)
    }

    fn encode_pairs_into<S: AsRef<str> + Sync>(
        &self,
        pairs: &[(S, S)],
        template: &Template,
        opts: PairOptions,
        origin: &(dyn Fn(usize) -> String + Sync),
        first_index: usize,
        out: &mut Pairs,
    ) -> Result<()> {
        let eos = if template.eos() {
            Some(self.need_eos()?)
        } else {
            None
        };
        if opts.max_length == Some(0) {
            return Err(Error::invalid("max_length must be at least 1"));
        }
        let encoded: Vec<(Vec<i32>, Vec<i32>)> = pairs
            .par_iter()
            .with_min_len(16)
            .map(|(p, t)| {
                let prompt = self.encode(p.as_ref())?;
                let mut target = if template.has_target() {
                    self.encode(t.as_ref())?
                } else {
                    Vec::new()
                };
                target.extend(eos);
                Ok((prompt, target))
            })
            .collect::<Result<_>>()?;
        for (i, (mut prompt, mut target)) in encoded.into_iter().enumerate() {
            let idx = first_index + i;
            out.stats.records += 1;
            let full = prompt.len() + target.len();
            out.stats.max_length_untruncated = out.stats.max_length_untruncated.max(full as u64);
            if let Some(max) = opts.max_length.filter(|&m| full > m) {
                match opts.truncation {
                    Truncation::Drop => {
                        out.stats.dropped += 1;
                        continue;
                    }
                    Truncation::Error => {
                        return Err(Error::invalid(format!(
                            "{}: {full} tokens exceed max_length {max}",
                            origin(idx)
                        )))
                    }
                    Truncation::Truncate => {
                        let keep_prompt = prompt.len().min(max);
                        prompt.truncate(keep_prompt);
                        target.truncate(max - keep_prompt);
                    }
                    Truncation::TruncatePrompt => {
                        let keep_target = target.len().min(max);
                        target.truncate(keep_target);
                        let keep_prompt = max - keep_target;
                        prompt.drain(..prompt.len() - keep_prompt);
                    }
                }
                out.stats.truncated += 1;
            }
            if target.is_empty() && template.has_target() {
                out.stats.no_label += 1;
            }
            out.stats.label_tokens += target.len() as u64;
            out.prompt_lengths.push(prompt.len() as i32);
            out.labels.extend(std::iter::repeat_n(IGNORE, prompt.len()));
            out.labels.extend_from_slice(&target);
            prompt.extend_from_slice(&target);
            out.input_ids.push(&prompt);
            out.kept.push(idx as i64);
        }
        Ok(())
    }

    fn finish(&self, out: &mut Pairs) {
        out.stats.kept = out.kept.len() as u64;
        let flat = &out.input_ids;
        length_stats(
            &mut out.stats,
            (0..flat.len()).map(|i| flat.get(i).len() as u64),
        );
    }

    /// Packs documents into blocks of `block_size` tokens, with eos after every document (if
    /// `eos`). The last, partial block is dropped, or padded with the pad token if `pad_last`.
    /// Returns (row-major blocks, number of blocks, statistics).
    pub fn pack<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        block_size: usize,
        eos: bool,
        pad_last: bool,
    ) -> Result<(Vec<i32>, usize, PackStats)> {
        if block_size == 0 {
            return Err(Error::invalid("block_size must be at least 1"));
        }
        let flat = self.encode_texts(texts, eos)?;
        let mut ids = flat.ids;
        let total = ids.len();
        let rem = total % block_size;
        let mut stats = PackStats {
            documents: texts.len() as u64,
            tokens: total as u64,
            ..Default::default()
        };
        if rem != 0 {
            if pad_last {
                stats.padding = (block_size - rem) as u64;
                ids.resize(total + block_size - rem, self.pad_id as i32);
            } else {
                stats.dropped_tokens = rem as u64;
                ids.truncate(total - rem);
            }
        }
        let n = ids.len() / block_size;
        stats.blocks = n as u64;
        Ok((ids, n, stats))
    }

    /// Encodes the records of a JSONL file with a template, streaming the file in batches (only
    /// the encoded output is held in memory). Errors name the file and line.
    pub fn encode_jsonl(
        &self,
        path: &Path,
        template: &Template,
        opts: PairOptions,
    ) -> Result<Pairs> {
        const BATCH: usize = 4096;
        let mut reader = JsonlReader::open(path)?;
        let mut out = Pairs {
            input_ids: Flat::new(),
            ..Default::default()
        };
        let mut index = 0usize;
        loop {
            let mut lines = Vec::with_capacity(BATCH);
            let mut pairs = Vec::with_capacity(BATCH);
            while pairs.len() < BATCH {
                let Some((line, v)) = reader.next_record()? else {
                    break;
                };
                let pair = template
                    .render(&v)
                    .map_err(|m| Error::data(path, line, m))?;
                lines.push(line);
                pairs.push(pair);
            }
            if pairs.is_empty() {
                break;
            }
            let origin = |i: usize| format!("{}:{}", path.display(), lines[i - index]);
            self.encode_pairs_into(&pairs, template, opts, &origin, index, &mut out)?;
            index += pairs.len();
        }
        self.finish(&mut out);
        Ok(out)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PackStats {
    pub documents: u64,
    pub tokens: u64,
    pub blocks: u64,
    pub dropped_tokens: u64,
    pub padding: u64,
}

/// Renders records (JSON objects) with a template; `origin(i)` names record i in errors.
pub fn render_all(
    template: &Template,
    records: &[Value],
    origin: &dyn Fn(usize) -> String,
) -> Result<Vec<(String, String)>> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            template
                .render(r)
                .map_err(|m| Error::invalid(format!("{}: {m}", origin(i))))
        })
        .collect()
}
