//! The cross-entropy method (CEM), as Transformer²'s few-shot adaptation uses it to search the
//! mixing weights of K experts: sample a population from a diagonal Gaussian, keep the elites,
//! refit the Gaussian to them, repeat (paper: population 32, 20% elites, ≤ 100 iterations,
//! mean 1/K, std 0.5, weights clamped to [0, 1]).
//!
//! Samples live in an unconstrained space θ; what the caller evaluates is x = φ(θ), where φ is the
//! parameterisation: `Box` clamps θ to the bounds (the paper's choice; θ is clamped in place, so
//! the Gaussian is refitted to clamped samples), `Simplex` maps each row through a softmax.
//! The state is plain data (serde), so a search can be saved and resumed bit for bit.
//!
//! Sampling dominates an iteration's cost; [`fill_standard_normal`] is a batch ziggurat that
//! draws two normals per 64-bit generator output, run on the calling thread in a fixed number of
//! blocks (so a seed gives the same run whatever the thread count). States saved before this
//! sampler existed (same format) still load, but continue with its random stream.
use rand::{Rng, RngCore, SeedableRng};
use rand_distr::{Distribution, Open01, StandardNormal};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ziggurat_tables::{ziggurat, Ziggurat, ZIG_NORM_R};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Param {
    /// x = clamp(θ, lo, hi) (or x = θ without bounds).
    Box,
    /// x = softmax(θ) per row: non-negative weights summing to one.
    Simplex,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub dim: usize,
    pub population: usize,
    pub elite_fraction: f64,
    /// Initial mean (one value per dimension).
    pub mean: Vec<f64>,
    /// Initial standard deviation (one value per dimension).
    pub std: Vec<f64>,
    /// Lower and upper bound of every coordinate (`Box` only).
    pub bounds: Option<(f64, f64)>,
    /// The standard deviation never shrinks below this (keeps exploring).
    pub std_floor: f64,
    /// Weight of the previous mean and std in each update (0: replace by the elites' statistics).
    pub smoothing: f64,
    pub maximize: bool,
    /// Carry the best member found so far into each new population (as the paper does).
    pub keep_best: bool,
    pub param: Param,
    pub seed: u64,
}

impl Config {
    /// The paper's settings for mixing `k` experts: mean 1/k, std 0.5, weights in [0, 1].
    pub fn new(dim: usize) -> Config {
        Config {
            dim,
            population: 32,
            elite_fraction: 0.2,
            mean: vec![1.0 / dim.max(1) as f64; dim],
            std: vec![0.5; dim],
            bounds: Some((0.0, 1.0)),
            std_floor: 0.0,
            smoothing: 0.0,
            maximize: true,
            keep_best: true,
            param: Param::Box,
            seed: 0,
        }
    }

    pub fn n_elite(&self) -> usize {
        ((self.elite_fraction * self.population as f64).round() as usize).clamp(1, self.population)
    }

    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(m));
        if self.dim == 0 {
            return bad("dim must be at least 1".into());
        }
        if self.population < 2 {
            return bad(format!(
                "population must be at least 2, got {}",
                self.population
            ));
        }
        if !(self.elite_fraction > 0.0 && self.elite_fraction <= 1.0) {
            return bad(format!(
                "elite_fraction must be in (0, 1], got {}",
                self.elite_fraction
            ));
        }
        if self.mean.len() != self.dim || self.std.len() != self.dim {
            return bad(format!(
                "mean and std need {} values, got {} and {}",
                self.dim,
                self.mean.len(),
                self.std.len()
            ));
        }
        if self.mean.iter().chain(&self.std).any(|v| !v.is_finite())
            || self.std.iter().any(|&s| s < 0.0)
        {
            return bad("mean must be finite and std finite and non-negative".into());
        }
        if let Some((lo, hi)) = self.bounds {
            if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                return bad(format!(
                    "bounds must be finite with lo <= hi, got ({lo}, {hi})"
                ));
            }
            if self.param == Param::Simplex {
                return bad("bounds apply to the box parameterisation only".into());
            }
        }
        if !(self.std_floor >= 0.0 && self.std_floor.is_finite()) {
            return bad(format!(
                "std_floor must be finite and >= 0, got {}",
                self.std_floor
            ));
        }
        if !(0.0..1.0).contains(&self.smoothing) {
            return bad(format!(
                "smoothing must be in [0, 1), got {}",
                self.smoothing
            ));
        }
        Ok(())
    }
}

/// Best member found so far: its parameters x = φ(θ), θ, and fitness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub x: Vec<f64>,
    pub theta: Vec<f64>,
    pub fitness: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cem {
    config: Config,
    mean: Vec<f64>,
    std: Vec<f64>,
    iteration: u64,
    best: Option<Best>,
    /// θ of the population handed out by `ask` and not yet told (row-major, population × dim).
    pending: Option<Vec<f64>>,
    rng: Xoshiro256PlusPlus,
    /// The buffer of the last population told, reused by the next `ask` (not part of the state).
    #[serde(skip)]
    spare: Spare,
}

/// A reusable buffer that takes no part in comparisons or serialisation.
#[derive(Debug, Clone, Default)]
struct Spare(Option<Vec<f64>>);

impl PartialEq for Spare {
    fn eq(&self, _: &Spare) -> bool {
        true
    }
}

/// Position in [-1, 1) of a 32-bit draw's upper 24 bits (a multiple of 2^-23).
#[inline(always)]
fn zig_u(b: u32) -> f64 {
    ((b >> 8) as i32 - (1 << 23)) as f64 * (1.0 / (1u32 << 23) as f64)
}

/// The rare draw that falls outside the ziggurat's rectangles (about 1.2%): the exact ZIGNOR
/// slow path (tail or wedge test) with full-precision uniforms, as `rand_distr` does it, then a
/// fresh `rand_distr` draw if the test rejects.
#[cold]
#[inline(never)]
fn zig_slow(rng: &mut Xoshiro256PlusPlus, z: &Ziggurat, b: u32) -> f64 {
    let i = (b & 0xff) as usize;
    let u = zig_u(b);
    let x = u * z.x[i];
    if i == 0 {
        let (mut tx, mut ty) = (1.0f64, 0.0f64);
        while -2.0 * ty < tx * tx {
            let a: f64 = rng.sample(Open01);
            let c: f64 = rng.sample(Open01);
            tx = a.ln() / ZIG_NORM_R;
            ty = c.ln();
        }
        return if u < 0.0 {
            tx - ZIG_NORM_R
        } else {
            ZIG_NORM_R - tx
        };
    }
    if z.f[i + 1] + (z.f[i] - z.f[i + 1]) * rng.random::<f64>() < (-x * x / 2.0).exp() {
        return x;
    }
    StandardNormal.sample(rng)
}

/// One standard normal draw from 32 random bits, or the slow path.
#[inline(always)]
fn zig_one(rng: &mut Xoshiro256PlusPlus, z: &Ziggurat, b: u32) -> f64 {
    let i = (b & 0xff) as usize;
    let x = zig_u(b) * z.x[i];
    if x.abs() < z.x[i + 1] {
        x
    } else {
        zig_slow(rng, z, b)
    }
}

/// Fills `out` with standard normal draws: the ZIGNOR ziggurat (Doornik 2005) on 256 layers
/// ([`ziggurat`]), fed 32 bits per draw (8 choose the layer, 24 the position in it, so values
/// within a layer are spaced 2^-23 of its width apart: float32-like resolution), which makes one
/// 64-bit output of the generator two draws. This halves the generator's share of the cost, which
/// is most of an iteration's. The slow path keeps full precision.
pub fn fill_standard_normal(rng: &mut Xoshiro256PlusPlus, out: &mut [f64]) {
    let z = ziggurat();
    let mut pairs = out.chunks_exact_mut(2);
    for p in &mut pairs {
        let b = rng.next_u64();
        let (lo, hi) = (b as u32, (b >> 32) as u32);
        p[0] = zig_one(rng, z, lo);
        p[1] = zig_one(rng, z, hi);
    }
    for o in pairs.into_remainder() {
        let b = rng.next_u64() as u32;
        *o = zig_one(rng, z, b);
    }
}

/// Blocks of rows sampled independently (fixed, so results do not depend on the thread count).
const SAMPLE_BLOCKS: usize = 4;
/// Below this many values, sampling stays on the calling thread: handing blocks to the rayon pool
/// costs a wake-up of its threads (10-20 us measured on a loaded 2-core machine), more than
/// sampling ten thousand values takes (about 2 ns each).
const PARALLEL_MIN: usize = 1 << 16;

/// Format tag of serialised states.
const STATE_FORMAT: &str = "ssm-offset-cem-v1";

#[derive(Serialize, Deserialize)]
struct State {
    format: String,
    #[serde(flatten)]
    cem: Cem,
}

impl Cem {
    pub fn new(config: Config) -> Result<Cem> {
        config.check()?;
        Ok(Cem {
            mean: config.mean.clone(),
            std: config.std.clone(),
            iteration: 0,
            best: None,
            pending: None,
            rng: Xoshiro256PlusPlus::seed_from_u64(config.seed),
            spare: Spare::default(),
            config,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }
    pub fn std(&self) -> &[f64] {
        &self.std
    }
    pub fn iteration(&self) -> u64 {
        self.iteration
    }
    pub fn best(&self) -> Option<&Best> {
        self.best.as_ref()
    }

    /// x = φ(θ) for one row.
    fn transform(&self, theta: &[f64], out: &mut [f64]) {
        match self.config.param {
            Param::Box => out.copy_from_slice(theta),
            Param::Simplex => {
                let m = theta.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let mut sum = 0.0;
                for (o, &t) in out.iter_mut().zip(theta) {
                    *o = (t - m).exp();
                    sum += *o;
                }
                out.iter_mut().for_each(|o| *o /= sum);
            }
        }
    }

    /// The population to evaluate, row-major (population × dim). Asking again before `tell`
    /// returns the same population.
    pub fn ask(&mut self) -> Vec<f64> {
        let (n, d) = (self.config.population, self.config.dim);
        if self.pending.is_none() {
            // Sampling dominates the cost of an iteration; it is split into a fixed number of
            // blocks of rows, each with its own generator seeded from the main one, so that the
            // result does not depend on how many threads run the blocks.
            let seeds: Vec<u64> = (0..SAMPLE_BLOCKS).map(|_| self.rng.next_u64()).collect();
            // The buffer of the last population, if any: same size, so no allocation or memset.
            let mut theta = self.spare.0.take().unwrap_or_default();
            theta.resize(n * d, 0.0);
            let rows_per_block = n.div_ceil(SAMPLE_BLOCKS);
            let (mean, std, bounds) = (&self.mean, &self.std, self.config.bounds);
            let fill = |(block, seed): (&mut [f64], &u64)| {
                let mut rng = Xoshiro256PlusPlus::seed_from_u64(*seed);
                fill_standard_normal(&mut rng, block);
                for row in block.chunks_exact_mut(d) {
                    let rows = row.iter_mut().zip(mean).zip(std);
                    match bounds {
                        Some((lo, hi)) => {
                            rows.for_each(|((t, &m), &s)| *t = (m + s * *t).clamp(lo, hi))
                        }
                        None => rows.for_each(|((t, &m), &s)| *t = m + s * *t),
                    }
                }
            };
            if n * d >= PARALLEL_MIN {
                theta
                    .par_chunks_mut(rows_per_block * d)
                    .zip(&seeds)
                    .for_each(fill);
            } else {
                theta
                    .chunks_mut(rows_per_block * d)
                    .zip(&seeds)
                    .for_each(fill);
            }
            if let (true, Some(b)) = (self.config.keep_best, &self.best) {
                theta[..d].copy_from_slice(&b.theta);
            }
            self.pending = Some(theta);
        }
        let theta = self.pending.as_ref().unwrap();
        if self.config.param == Param::Box {
            return theta.clone();
        }
        let mut x = vec![0.0; n * d];
        for (xr, tr) in x.chunks_exact_mut(d).zip(theta.chunks_exact(d)) {
            self.transform(tr, xr);
        }
        x
    }

    /// Scores of the population from the last `ask`, in the same order. NaN and infinite scores
    /// rank last and never become the best.
    pub fn tell(&mut self, fitness: &[f64]) -> Result<()> {
        let (n, d) = (self.config.population, self.config.dim);
        if fitness.len() != n {
            return Err(Error::invalid(format!(
                "tell() needs {n} fitness values, got {}",
                fitness.len()
            )));
        }
        let Some(theta) = self.pending.take() else {
            return Err(Error::invalid(
                "tell() called without a population from ask()",
            ));
        };
        let sign = if self.config.maximize { 1.0 } else { -1.0 };
        let score = |i: usize| {
            let f = fitness[i];
            if f.is_finite() {
                sign * f
            } else {
                f64::NEG_INFINITY
            }
        };
        let mut order: Vec<usize> = (0..n).collect();
        // Stable sort: ties keep population order, which keeps runs deterministic.
        order.sort_by(|&a, &b| score(b).total_cmp(&score(a)));
        let k = self.config.n_elite();
        let s = self.config.smoothing;
        let inv_k = 1.0 / k as f64;
        // Row by row (contiguous, vectorised); per coordinate the sums run over the elites in
        // rank order, as a column-by-column loop would.
        let row = |i: usize| &theta[i * d..(i + 1) * d];
        let mut m = vec![0.0; d];
        for &i in &order[..k] {
            m.iter_mut().zip(row(i)).for_each(|(a, &t)| *a += t);
        }
        m.iter_mut().for_each(|a| *a *= inv_k);
        let mut v = vec![0.0; d];
        for &i in &order[..k] {
            v.iter_mut().zip(row(i)).zip(&m).for_each(|((a, &t), &mj)| {
                let e = t - mj;
                *a += e * e;
            });
        }
        let floor = self.config.std_floor;
        for j in 0..d {
            let sd = (v[j] * inv_k).sqrt();
            self.mean[j] = s * self.mean[j] + (1.0 - s) * m[j];
            self.std[j] = (s * self.std[j] + (1.0 - s) * sd).max(floor);
        }
        let top = order[0];
        if fitness[top].is_finite()
            && self
                .best
                .as_ref()
                .is_none_or(|b| sign * fitness[top] > sign * b.fitness)
        {
            let t = theta[top * d..(top + 1) * d].to_vec();
            let mut x = vec![0.0; d];
            self.transform(&t, &mut x);
            self.best = Some(Best {
                x,
                theta: t,
                fitness: fitness[top],
            });
        }
        self.iteration += 1;
        self.spare.0 = Some(theta);
        Ok(())
    }

    /// Runs `iterations` generations, handing each whole population (row-major, population × dim)
    /// to `f` at once, so that it can be scored in one batch.
    pub fn optimize<E>(
        &mut self,
        iterations: usize,
        mut f: impl FnMut(&[f64]) -> Result<Vec<f64>, E>,
    ) -> Result<Option<&Best>, E>
    where
        E: From<Error>,
    {
        for _ in 0..iterations {
            let pop = self.ask();
            let fit = f(&pop)?;
            self.tell(&fit)?;
        }
        Ok(self.best.as_ref())
    }

    /// The whole state as JSON (config, distribution, best, pending population, generator).
    pub fn to_json(&self) -> String {
        let st = serde_json::json!({"format": STATE_FORMAT});
        let mut v = serde_json::to_value(self).expect("a CEM state always serialises");
        v.as_object_mut()
            .unwrap()
            .insert("format".into(), st["format"].clone());
        v.to_string()
    }

    pub fn from_json(s: &str) -> Result<Cem> {
        let st: State = serde_json::from_str(s)
            .map_err(|e| Error::invalid(format!("invalid CEM state: {e}")))?;
        if st.format != STATE_FORMAT {
            return Err(Error::invalid(format!(
                "CEM state format {:?}, expected {STATE_FORMAT:?}",
                st.format
            )));
        }
        let c = st.cem;
        c.config.check()?;
        let (n, d) = (c.config.population, c.config.dim);
        if c.mean.len() != d
            || c.std.len() != d
            || c.pending.as_ref().is_some_and(|p| p.len() != n * d)
        {
            return Err(Error::invalid(
                "CEM state: mean, std or pending population has the wrong size",
            ));
        }
        if c.best
            .as_ref()
            .is_some_and(|b| b.x.len() != d || b.theta.len() != d)
        {
            return Err(Error::invalid("CEM state: best member has the wrong size"));
        }
        Ok(c)
    }
}
