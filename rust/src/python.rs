//! Thin PyO3 layer: converts types and errors, holds no logic of its own.
use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", crate::version())?;
    Ok(())
}
