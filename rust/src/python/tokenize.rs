use std::path::PathBuf;

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1};
use pyo3::exceptions::{PyStopIteration, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use serde_json::Value;

use super::{guard, json_to_py, py_to_json, PyResultExt};
use crate::tokenize::{
    cache, jsonl::JsonlReader, PairOptions, Pairs, Template, Tokenizer, Truncation,
};

#[pyclass(name = "Template", module = "ssm_offset._core", frozen)]
struct PyTemplate {
    inner: Template,
}

#[pymethods]
impl PyTemplate {
    #[new]
    fn new(spec_json: &str) -> PyResult<Self> {
        guard(|| {
            Ok(PyTemplate {
                inner: Template::parse(spec_json)?,
            })
        })
    }
    fn fields(&self) -> Vec<String> {
        self.inner.fields().into_iter().map(String::from).collect()
    }
    /// (prompt, target) of one record (a dict).
    fn render(&self, record: &Bound<'_, PyAny>) -> PyResult<(String, String)> {
        guard(|| {
            let v = py_to_json(record)?;
            self.inner
                .render(&v)
                .map_err(pyo3::exceptions::PyValueError::new_err)
        })
    }
    fn to_json(&self) -> String {
        self.inner.to_json()
    }
}

/// Only the fields a template reads, converted once so the core can render them without the GIL.
fn records_to_json(template: &Template, records: &Bound<'_, PyAny>) -> PyResult<Vec<Value>> {
    let fields = template.fields();
    let mut out = Vec::new();
    for (i, rec) in records.try_iter()?.enumerate() {
        let rec = rec?;
        let d = rec.cast::<PyDict>().map_err(|_| {
            PyTypeError::new_err(format!(
                "record {i}: expected a dict, got {}",
                rec.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
        let mut m = serde_json::Map::new();
        for f in &fields {
            if let Some(v) = d.get_item(f)? {
                let j = if let Ok(s) = v.cast::<PyString>() {
                    Value::String(
                        s.to_str()
                            .map_err(|e| {
                                pyo3::exceptions::PyValueError::new_err(format!(
                                    "record {i}, field {f:?}: {e}"
                                ))
                            })?
                            .to_owned(),
                    )
                } else {
                    py_to_json(&v).map_err(|e| {
                        pyo3::exceptions::PyValueError::new_err(format!(
                            "record {i}, field {f:?}: {e}"
                        ))
                    })?
                };
                m.insert(f.to_string(), j);
            }
        }
        out.push(Value::Object(m));
    }
    Ok(out)
}

fn pairs_to_py<'py>(
    py: Python<'py>,
    p: Pairs,
    padded: Option<(i32, Option<usize>)>,
) -> PyResult<(Bound<'py, PyDict>, Py<PyAny>)> {
    let d = PyDict::new(py);
    let lengths: Vec<i32> = p
        .input_ids
        .offsets
        .windows(2)
        .map(|w| (w[1] - w[0]) as i32)
        .collect();
    if let Some((pad, width)) = padded {
        let (ids, n, w) = p.input_ids.padded(pad, width);
        let labels = crate::tokenize::Flat {
            ids: p.labels,
            offsets: p.input_ids.offsets.clone(),
        };
        let (lab, _, _) = labels.padded(crate::tokenize::IGNORE, Some(w));
        d.set_item(
            "input_ids",
            Array2::from_shape_vec((n, w), ids)
                .expect("n*w")
                .into_pyarray(py),
        )?;
        d.set_item(
            "labels",
            Array2::from_shape_vec((n, w), lab)
                .expect("n*w")
                .into_pyarray(py),
        )?;
    } else {
        d.set_item("input_ids", p.input_ids.ids.into_pyarray(py))?;
        d.set_item("labels", p.labels.into_pyarray(py))?;
        d.set_item("offsets", p.input_ids.offsets.into_pyarray(py))?;
    }
    d.set_item("lengths", lengths.into_pyarray(py))?;
    d.set_item("prompt_lengths", p.prompt_lengths.into_pyarray(py))?;
    d.set_item("kept", p.kept.into_pyarray(py))?;
    let stats = json_to_py(
        py,
        &serde_json::to_value(&p.stats).expect("stats serialise"),
    )?;
    Ok((d, stats))
}

#[pyclass(name = "Tokenizer", module = "ssm_offset._core", frozen)]
struct PyTokenizer {
    inner: Tokenizer,
}

/// A list of str, or any iterable of str.
fn texts(obj: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    let mut out = Vec::new();
    for (i, t) in obj.try_iter()?.enumerate() {
        let t = t?;
        let s = t
            .cast::<PyString>()
            .map_err(|_| PyTypeError::new_err(format!("text {i}: expected str")))?;
        out.push(
            s.to_str()
                .map_err(|e| pyo3::exceptions::PyValueError::new_err(format!("text {i}: {e}")))?
                .to_owned(),
        );
    }
    Ok(out)
}

#[pymethods]
impl PyTokenizer {
    #[new]
    #[pyo3(signature = (path, eos_token=None, pad_token=None))]
    fn new(path: PathBuf, eos_token: Option<&str>, pad_token: Option<&str>) -> PyResult<Self> {
        guard(|| {
            Ok(PyTokenizer {
                inner: Tokenizer::from_file(path, eos_token, pad_token)?,
            })
        })
    }

    #[getter]
    fn eos_id(&self) -> Option<u32> {
        self.inner.eos_id()
    }
    #[getter]
    fn pad_id(&self) -> u32 {
        self.inner.pad_id()
    }
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path().to_path_buf()
    }

    fn encode(&self, text: &str) -> PyResult<Vec<i32>> {
        guard(|| self.inner.encode(text).py())
    }

    /// (flat int32 ids, int64 offsets)
    #[pyo3(signature = (texts_, eos=false))]
    #[allow(clippy::type_complexity)]
    fn encode_texts<'py>(
        &self,
        py: Python<'py>,
        texts_: &Bound<'py, PyAny>,
        eos: bool,
    ) -> PyResult<(Bound<'py, PyArray1<i32>>, Bound<'py, PyArray1<i64>>)> {
        guard(|| {
            let t = texts(texts_)?;
            let flat = py.detach(|| self.inner.encode_texts(&t, eos)).py()?;
            Ok((flat.ids.into_pyarray(py), flat.offsets.into_pyarray(py)))
        })
    }

    #[pyo3(signature = (records, template, max_length=None, truncation="truncate", padded=false, pad_to=None))]
    #[allow(clippy::too_many_arguments)]
    fn encode_pairs<'py>(
        &self,
        py: Python<'py>,
        records: &Bound<'py, PyAny>,
        template: &PyTemplate,
        max_length: Option<usize>,
        truncation: &str,
        padded: bool,
        pad_to: Option<usize>,
    ) -> PyResult<(Bound<'py, PyDict>, Py<PyAny>)> {
        guard(|| {
            let opts = PairOptions {
                max_length,
                truncation: Truncation::parse(truncation)?,
            };
            let recs = records_to_json(&template.inner, records)?;
            let t = &template.inner;
            let p = py
                .detach(|| {
                    let origin = |i: usize| format!("record {i}");
                    let rendered = crate::tokenize::render_all(t, &recs, &origin)?;
                    self.inner.encode_pairs(&rendered, t, opts, &origin)
                })
                .py()?;
            pairs_to_py(
                py,
                p,
                padded.then_some((self.inner.pad_id() as i32, pad_to)),
            )
        })
    }

    /// Encodes a JSONL file; with `cache_dir`, reuses (or writes) an on-disk entry.
    /// Statistics gain "cache" ("hit", "miss" or "off") and "cache_file".
    #[pyo3(signature = (path, template, max_length=None, truncation="truncate", padded=false, pad_to=None, cache_dir=None))]
    #[allow(clippy::too_many_arguments)]
    fn encode_jsonl<'py>(
        &self,
        py: Python<'py>,
        path: PathBuf,
        template: &PyTemplate,
        max_length: Option<usize>,
        truncation: &str,
        padded: bool,
        pad_to: Option<usize>,
        cache_dir: Option<PathBuf>,
    ) -> PyResult<(Bound<'py, PyDict>, Py<PyAny>)> {
        guard(|| {
            let opts = PairOptions {
                max_length,
                truncation: Truncation::parse(truncation)?,
            };
            let t = &template.inner;
            let (p, status, file) = py
                .detach(|| -> crate::Result<_> {
                    let Some(dir) = &cache_dir else {
                        return Ok((self.inner.encode_jsonl(&path, t, opts)?, "off", None));
                    };
                    let key = cache::key(&self.inner, t, &path, &opts)?;
                    if let Some(p) = cache::load(dir, &key)? {
                        return Ok((p, "hit", Some(cache::entry_path(dir, &key))));
                    }
                    let p = self.inner.encode_jsonl(&path, t, opts)?;
                    let f = cache::save(dir, &key, &p)?;
                    Ok((p, "miss", Some(f)))
                })
                .py()?;
            let (d, stats) = pairs_to_py(
                py,
                p,
                padded.then_some((self.inner.pad_id() as i32, pad_to)),
            )?;
            let s = stats.bind(py).cast::<PyDict>()?;
            s.set_item("cache", status)?;
            s.set_item("cache_file", file)?;
            Ok((d, stats))
        })
    }

    /// (blocks as a (n, block_size) int32 array, statistics)
    #[pyo3(signature = (texts_, block_size, eos=true, pad_last=false))]
    fn pack<'py>(
        &self,
        py: Python<'py>,
        texts_: &Bound<'py, PyAny>,
        block_size: usize,
        eos: bool,
        pad_last: bool,
    ) -> PyResult<(Bound<'py, numpy::PyArray2<i32>>, Py<PyAny>)> {
        guard(|| {
            let t = texts(texts_)?;
            let (ids, n, stats) = py
                .detach(|| self.inner.pack(&t, block_size, eos, pad_last))
                .py()?;
            let arr = Array2::from_shape_vec((n, block_size), ids)
                .expect("n*block")
                .into_pyarray(py);
            Ok((
                arr,
                json_to_py(py, &serde_json::to_value(&stats).expect("stats serialise"))?,
            ))
        })
    }
}

/// Streaming JSONL reader: yields one dict (or other JSON value) per non-blank line.
#[pyclass(name = "JsonlReader", module = "ssm_offset._core")]
struct PyJsonlReader {
    inner: JsonlReader<std::io::BufReader<std::fs::File>>,
}

#[pymethods]
impl PyJsonlReader {
    #[new]
    fn new(path: PathBuf) -> PyResult<Self> {
        guard(|| {
            Ok(PyJsonlReader {
                inner: JsonlReader::open(path)?,
            })
        })
    }
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }
    fn __next__(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        guard(|| match self.inner.next_record().py()? {
            Some((_, v)) => json_to_py(py, &v),
            None => Err(PyStopIteration::new_err(())),
        })
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTemplate>()?;
    m.add_class::<PyTokenizer>()?;
    m.add_class::<PyJsonlReader>()?;
    Ok(())
}
