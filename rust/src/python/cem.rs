use numpy::ndarray::Array2;
use numpy::{AllowTypeChange, IntoPyArray, PyArray1, PyArray2, PyArrayLike1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::{guard, json_to_py, py_to_json};
use crate::cem::{Cem, Config, Param};

/// A float or one value per dimension.
#[derive(FromPyObject)]
enum PerDim {
    Scalar(f64),
    Vector(Vec<f64>),
}

impl PerDim {
    fn expand(self, dim: usize, what: &str) -> PyResult<Vec<f64>> {
        match self {
            PerDim::Scalar(v) => Ok(vec![v; dim]),
            PerDim::Vector(v) if v.len() == dim => Ok(v),
            PerDim::Vector(v) => Err(PyValueError::new_err(format!(
                "{what} needs {dim} values, got {}",
                v.len()
            ))),
        }
    }
}

#[pyclass(name = "CEM", module = "ssm_offset._core")]
struct PyCem {
    inner: Cem,
}

fn population<'py>(py: Python<'py>, cem: &Cem, flat: Vec<f64>) -> Bound<'py, PyArray2<f64>> {
    let (n, d) = (cem.config().population, cem.config().dim);
    Array2::from_shape_vec((n, d), flat)
        .expect("population has n*d values")
        .into_pyarray(py)
}

#[pymethods]
impl PyCem {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (dim, population=32, elite_fraction=0.2, mean=None, std=PerDim::Scalar(0.5),
                        bounds=Some((0.0, 1.0)), std_floor=0.0, smoothing=0.0, seed=0, maximize=true,
                        keep_best=true, param="box"))]
    fn new(
        dim: usize,
        population: usize,
        elite_fraction: f64,
        mean: Option<PerDim>,
        std: PerDim,
        bounds: Option<(f64, f64)>,
        std_floor: f64,
        smoothing: f64,
        seed: u64,
        maximize: bool,
        keep_best: bool,
        param: &str,
    ) -> PyResult<Self> {
        guard(|| {
            let param = match param {
                "box" => Param::Box,
                "simplex" => Param::Simplex,
                other => {
                    return Err(PyValueError::new_err(format!(
                        "param must be 'box' or 'simplex', got {other:?}"
                    )))
                }
            };
            let default_mean = if param == Param::Simplex {
                0.0
            } else {
                1.0 / dim.max(1) as f64
            };
            let config = Config {
                dim,
                population,
                elite_fraction,
                mean: mean
                    .unwrap_or(PerDim::Scalar(default_mean))
                    .expand(dim, "mean")?,
                std: std.expand(dim, "std")?,
                bounds: if param == Param::Simplex {
                    None
                } else {
                    bounds
                },
                std_floor,
                smoothing,
                maximize,
                keep_best,
                param,
                seed,
            };
            Ok(PyCem {
                inner: Cem::new(config)?,
            })
        })
    }

    fn ask<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f64>>> {
        guard(|| {
            let flat = self.inner.ask();
            Ok(population(py, &self.inner, flat))
        })
    }

    fn tell(&mut self, fitness: PyArrayLike1<'_, f64, AllowTypeChange>) -> PyResult<()> {
        guard(|| Ok(self.inner.tell(&fitness.as_array().to_vec())?))
    }

    /// Runs `iterations` generations of ask / f(population) / tell; returns `best`.
    fn optimize<'py>(
        &mut self,
        py: Python<'py>,
        f: Bound<'py, PyAny>,
        iterations: usize,
    ) -> PyResult<Option<(Bound<'py, PyArray1<f64>>, f64)>> {
        guard(|| {
            let (n, d) = (self.inner.config().population, self.inner.config().dim);
            self.inner.optimize(iterations, |pop| {
                let arr = Array2::from_shape_vec((n, d), pop.to_vec())
                    .expect("n*d values")
                    .into_pyarray(py);
                let out = f.call1((arr,))?;
                let fit: PyArrayLike1<'_, f64, AllowTypeChange> = out.extract().map_err(|_| {
                    PyValueError::new_err(
                        "the fitness function must return a 1-D array of floats, one per row",
                    )
                })?;
                Ok::<_, PyErr>(fit.as_array().to_vec())
            })?;
            Ok(self.best(py))
        })
    }

    /// (x, fitness) of the best member so far, or None before the first `tell`.
    #[getter]
    fn best<'py>(&self, py: Python<'py>) -> Option<(Bound<'py, PyArray1<f64>>, f64)> {
        self.inner
            .best()
            .map(|b| (b.x.clone().into_pyarray(py), b.fitness))
    }

    #[getter]
    fn mean<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        self.inner.mean().to_vec().into_pyarray(py)
    }

    #[getter]
    fn std<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        self.inner.std().to_vec().into_pyarray(py)
    }

    #[getter]
    fn iteration(&self) -> u64 {
        self.inner.iteration()
    }

    #[getter]
    fn dim(&self) -> usize {
        self.inner.config().dim
    }

    #[getter]
    fn population(&self) -> usize {
        self.inner.config().population
    }

    /// The whole state as a JSON-serialisable dict (resume with `CEM.from_state`).
    fn state_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        guard(|| {
            let v: serde_json::Value =
                serde_json::from_str(&self.inner.to_json()).expect("valid JSON");
            json_to_py(py, &v)
        })
    }

    #[staticmethod]
    fn from_state(state: &Bound<'_, PyAny>) -> PyResult<Self> {
        guard(|| {
            let v = py_to_json(state)?;
            Ok(PyCem {
                inner: Cem::from_json(&v.to_string())?,
            })
        })
    }

    fn __repr__(&self) -> String {
        let c = self.inner.config();
        format!(
            "CEM(dim={}, population={}, iteration={}, best={:?})",
            c.dim,
            c.population,
            self.inner.iteration(),
            self.inner.best().map(|b| b.fitness)
        )
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCem>()
}
