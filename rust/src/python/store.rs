use std::path::PathBuf;
use std::sync::Mutex;

use numpy::ndarray::ArrayView1;
use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use super::{guard, json_to_py, parse_json, PyResultExt};
use crate::store::{
    file::parse_dtype, Filter, Loaded, Loading, PutOptions, Store, TensorIn, Verify,
};

/// (name, dtype, shape, bytes as a contiguous 1-D uint8 array)
type TensorArg<'py> = (String, String, Vec<usize>, PyReadonlyArray1<'py, u8>);

fn tensor_ins<'a>(tensors: &'a [TensorArg<'_>]) -> PyResult<Vec<TensorIn<'a>>> {
    tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            Ok(TensorIn {
                name: name.clone(),
                dtype: parse_dtype(dtype).py()?,
                shape: shape.clone(),
                data: data.as_slice()?,
            })
        })
        .collect()
}

fn to_py_value<T: serde::Serialize>(py: Python<'_>, v: &T) -> PyResult<Py<PyAny>> {
    json_to_py(
        py,
        &serde_json::to_value(v).expect("store records always serialise"),
    )
}

/// Owner of a private file mapping; numpy arrays returned by `get` borrow from it.
#[pyclass(module = "ssm_offset._core", frozen)]
struct MappedFile {
    // Never read: it only keeps the pages mapped while arrays point into them.
    #[allow(dead_code)]
    map: memmap2::MmapMut,
}

/// What `get` returns for one adapter: (the file's bytes as a uint8 array borrowing the mapping,
/// [(name, dtype, shape, strides, start, end)], index entry without its tensor list).
type Got<'py> = (
    Bound<'py, PyArray1<u8>>,
    Vec<(
        String,
        String,
        Bound<'py, PyTuple>,
        Bound<'py, PyTuple>,
        usize,
        usize,
    )>,
    Py<PyAny>,
);

fn loaded_to_py(py: Python<'_>, loaded: Loaded) -> PyResult<Got<'_>> {
    // The entry without its tensor list: the tensors themselves say the same (the load checked
    // that they agree), and those 2 containers per tensor, kept alive with a batch of loaded
    // adapters, made the garbage collector walk the whole heap about once every 14 batches of
    // 100 (a third of the time `get_many` took).
    let mut entry = loaded.entry;
    entry.info.tensors.clear();
    let entry = to_py_value(py, &entry)?;
    entry.bind(py).del_item("tensors")?;
    let locs = loaded
        .tensors
        .into_iter()
        .map(|t| {
            let mut strides = vec![1usize; t.shape.len()];
            for i in (0..t.shape.len().saturating_sub(1)).rev() {
                strides[i] = strides[i + 1] * t.shape[i + 1];
            }
            // Tuples, not lists: the garbage collector stops tracking tuples of ints,
            // which matters when thousands of tensors are loaded.
            Ok((
                t.name,
                t.dtype,
                PyTuple::new(py, t.shape)?,
                PyTuple::new(py, strides)?,
                t.start,
                t.end,
            ))
        })
        .collect::<PyResult<_>>()?;
    let mut map = loaded.map;
    let (ptr, len) = (map.as_mut_ptr(), map.len());
    let owner = Bound::new(py, MappedFile { map })?;
    // SAFETY: the view covers exactly the mapping, which `owner` keeps alive (numpy holds a
    // reference to it as the array's base); moving the mapping object does not move its pages.
    let array = unsafe {
        let view = ArrayView1::from_shape_ptr(len, ptr as *const u8);
        PyArray1::borrow_from_array(&view, owner.into_any())
    };
    Ok((array, locs, entry))
}

/// What `Store.get_many` returns: yields `get`'s result per adapter, in order. Converting one
/// adapter at a time keeps the Python objects of the whole batch from existing at once (they made
/// the garbage collector run several times per batch), and lets the hashing of the next files
/// go on meanwhile.
#[pyclass(module = "ssm_offset._core", frozen)]
struct GetMany(Mutex<Loading>);

#[pymethods]
impl GetMany {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Got<'py>>> {
        guard(|| {
            let next = py.detach(|| self.0.lock().unwrap().next());
            next.map(|r| loaded_to_py(py, r.py()?)).transpose()
        })
    }

    fn __len__(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

#[pyclass(name = "Store", module = "ssm_offset._core", frozen)]
struct PyStore {
    inner: Store,
}

#[pymethods]
impl PyStore {
    #[new]
    #[pyo3(signature = (path, create = true, verify = "always"))]
    fn new(path: PathBuf, create: bool, verify: &str) -> PyResult<Self> {
        guard(|| {
            let verify = match verify {
                "always" => Verify::Always,
                "once" => Verify::Once,
                other => {
                    return Err(pyo3::exceptions::PyValueError::new_err(format!(
                        "verify must be 'always' or 'once', got {other:?}"
                    )))
                }
            };
            Ok(PyStore {
                inner: Store::open(path, create).py()?.with_verify(verify),
            })
        })
    }

    #[getter]
    fn root(&self) -> PathBuf {
        self.inner.root().to_path_buf()
    }

    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (name, tensors, *, method=None, base_fingerprint=None, tags=Vec::new(),
                        metrics_json=None, config_json=None, metadata_json=None, overwrite=true, check_finite=false))]
    fn put(
        &self,
        py: Python<'_>,
        name: &str,
        tensors: Vec<TensorArg<'_>>,
        method: Option<String>,
        base_fingerprint: Option<String>,
        tags: Vec<String>,
        metrics_json: Option<&str>,
        config_json: Option<&str>,
        metadata_json: Option<&str>,
        overwrite: bool,
        check_finite: bool,
    ) -> PyResult<Py<PyAny>> {
        guard(|| {
            let ts = tensor_ins(&tensors)?;
            let opts = PutOptions {
                method,
                base_fingerprint,
                tags,
                metrics: parse_json("metrics", metrics_json)?,
                config: parse_json("config", config_json)?,
                metadata: parse_json("metadata", metadata_json)?,
                overwrite,
                check_finite,
            };
            let entry = py.detach(|| self.inner.put(name, &ts, opts)).py()?;
            to_py_value(py, &entry)
        })
    }

    /// Returns (bytes of the whole file as a uint8 array borrowing a private mapping,
    /// [(name, dtype, shape, strides, start, end)], entry without its tensor list); strides are
    /// C-contiguous, in elements.
    #[pyo3(signature = (name, check_finite=false))]
    fn get<'py>(&self, py: Python<'py>, name: &str, check_finite: bool) -> PyResult<Got<'py>> {
        guard(|| {
            let loaded = py.detach(|| self.inner.get(name, check_finite)).py()?;
            loaded_to_py(py, loaded)
        })
    }

    /// Iterator over `get`'s result for each of `names`, in order: the files are checked in
    /// parallel in the background, and each is converted when the iterator reaches it.
    #[pyo3(signature = (names, check_finite=false))]
    fn get_many(
        &self,
        py: Python<'_>,
        names: Vec<String>,
        check_finite: bool,
    ) -> PyResult<GetMany> {
        guard(|| {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let loading = py
                .detach(|| self.inner.get_each(&names, check_finite))
                .py()?;
            Ok(GetMany(Mutex::new(loading)))
        })
    }

    #[pyo3(signature = (tag=None, method=None, base_fingerprint=None))]
    fn list(
        &self,
        py: Python<'_>,
        tag: Option<String>,
        method: Option<String>,
        base_fingerprint: Option<String>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        guard(|| {
            let f = Filter {
                tag,
                method,
                base_fingerprint,
            };
            let entries = self.inner.list(&f).py()?;
            entries.iter().map(|e| to_py_value(py, e)).collect()
        })
    }

    fn delete(&self, py: Python<'_>, name: &str) -> PyResult<bool> {
        guard(|| py.detach(|| self.inner.delete(name)).py())
    }

    /// Returns a list of {"name", "path", "message"}; empty when the store is sound.
    #[pyo3(signature = (check_finite=false))]
    fn verify<'py>(
        &self,
        py: Python<'py>,
        check_finite: bool,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        guard(|| {
            let problems = py.detach(|| self.inner.verify(check_finite)).py()?;
            problems
                .into_iter()
                .map(|p| {
                    let d = PyDict::new(py);
                    d.set_item("name", p.name)?;
                    d.set_item("path", p.path)?;
                    d.set_item("message", p.message)?;
                    Ok(d)
                })
                .collect()
        })
    }

    #[pyo3(signature = (rebuild=false))]
    fn compact<'py>(&self, py: Python<'py>, rebuild: bool) -> PyResult<Bound<'py, PyDict>> {
        guard(|| {
            let r = py.detach(|| self.inner.compact(rebuild)).py()?;
            let d = PyDict::new(py);
            d.set_item("removed_files", r.removed_files)?;
            d.set_item("adapters", r.adapters)?;
            d.set_item("dropped", r.dropped)?;
            Ok(d)
        })
    }
}

/// Fingerprint of a base model from its config (JSON) and its tensors.
#[pyfunction]
#[pyo3(signature = (config_json, tensors=Vec::new()))]
fn base_fingerprint(
    py: Python<'_>,
    config_json: &str,
    tensors: Vec<TensorArg<'_>>,
) -> PyResult<String> {
    guard(|| {
        let cfg = parse_json("config", Some(config_json))?;
        let ts = tensor_ins(&tensors)?;
        Ok(py.detach(|| crate::store::base_fingerprint(&cfg, &ts)))
    })
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyStore>()?;
    m.add_class::<MappedFile>()?;
    m.add_class::<GetMany>()?;
    m.add_function(wrap_pyfunction!(base_fingerprint, m)?)?;
    Ok(())
}
