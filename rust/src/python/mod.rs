//! Thin PyO3 layer: converts types and errors, holds no logic of its own. Every entry point runs
//! inside [`guard`], so a panic in the core reaches Python as an ordinary exception that carries
//! the message, never as an abort or a `PanicException`.
mod cem;
mod store;
mod tokenize;

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::create_exception;
use pyo3::exceptions::{PyFileNotFoundError, PyKeyError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use serde_json::Value;

use crate::error::Error;

create_exception!(
    _core,
    CorruptFileError,
    PyValueError,
    "A file exists but its content is invalid (truncated, corrupt, or disagreeing with the index)."
);
create_exception!(
    _core,
    DataError,
    PyValueError,
    "A line or record of a data file is invalid; the message names the file and line."
);

pub(crate) fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(msg)
        }
        Error::Io { .. } => PyOSError::new_err(msg),
        Error::Corrupt { .. } => CorruptFileError::new_err(msg),
        Error::Data { .. } => DataError::new_err(msg),
        Error::Invalid(_) => PyValueError::new_err(msg),
        Error::NotFound { .. } => PyKeyError::new_err(msg),
    }
}

pub(crate) trait PyResultExt<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> PyResultExt<T> for crate::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

/// Runs a binding body, turning a panic anywhere below it into a `RuntimeError`.
pub(crate) fn guard<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(PyRuntimeError::new_err(format!(
                "internal error in ssm_offset._core (please report): {msg}"
            )))
        }
    }
}

/// JSON value to the equivalent Python object (dict, list, str, int, float, bool, None).
pub(crate) fn json_to_py(py: Python<'_>, v: &Value) -> PyResult<Py<PyAny>> {
    Ok(match v {
        Value::Null => py.None(),
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any().unbind(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any().unbind()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any().unbind()
            } else {
                n.as_f64()
                    .unwrap_or(f64::NAN)
                    .into_pyobject(py)?
                    .into_any()
                    .unbind()
            }
        }
        Value::String(s) => s.into_pyobject(py)?.into_any().unbind(),
        Value::Array(a) => {
            let l = PyList::empty(py);
            for x in a {
                l.append(json_to_py(py, x)?)?;
            }
            l.into_any().unbind()
        }
        Value::Object(m) => {
            let d = PyDict::new(py);
            for (k, x) in m {
                d.set_item(k, json_to_py(py, x)?)?;
            }
            d.into_any().unbind()
        }
    })
}

/// Parses a JSON string handed over by the Python wrapper (which serialised a dict with `json`).
pub(crate) fn parse_json(what: &str, s: Option<&str>) -> PyResult<Value> {
    match s {
        None => Ok(Value::Null),
        Some(s) => serde_json::from_str(s)
            .map_err(|e| PyValueError::new_err(format!("{what}: invalid JSON: {e}"))),
    }
}

/// Panics inside the binding guard; lets the tests check that a panic reaches Python as an
/// ordinary exception.
#[pyfunction]
fn _panic_for_test(msg: &str) -> PyResult<()> {
    guard(|| panic!("{msg}"))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", crate::version())?;
    m.add("__source_digest__", crate::source_digest())?;
    m.add("CorruptFileError", m.py().get_type::<CorruptFileError>())?;
    m.add("DataError", m.py().get_type::<DataError>())?;
    m.add_function(wrap_pyfunction!(_panic_for_test, m)?)?;
    store::register(m)?;
    cem::register(m)?;
    tokenize::register(m)?;
    Ok(())
}

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        to_py(e)
    }
}

/// Python object (dict, list, tuple, str, int, float, bool, None) to JSON.
pub(crate) fn py_to_json(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    use pyo3::types::{PyBool, PyFloat, PyInt, PyString, PyTuple};
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(Value::from(i));
        }
        return Ok(Value::from(obj.extract::<u64>()?));
    }
    if obj.is_instance_of::<PyFloat>() {
        let f: f64 = obj.extract()?;
        return serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| PyValueError::new_err(format!("{f} cannot be represented in JSON")));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::String(s.to_str()?.to_owned()));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut m = serde_json::Map::new();
        for (k, v) in d.iter() {
            let k: String = k
                .extract()
                .map_err(|_| PyValueError::new_err("JSON object keys must be strings"))?;
            m.insert(k, py_to_json(&v)?);
        }
        return Ok(Value::Object(m));
    }
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        return obj
            .try_iter()?
            .map(|x| py_to_json(&x?))
            .collect::<PyResult<Vec<_>>>()
            .map(Value::Array);
    }
    Err(PyValueError::new_err(format!(
        "cannot convert {} to JSON",
        obj.get_type().name()?
    )))
}
