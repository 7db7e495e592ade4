//! The 256-layer ziggurat for the standard normal distribution (ZIGNOR, Doornik 2005), derived at first
//! use from the two numbers that define it: the base layer's right edge R and the common area V of every
//! layer (the base layer's area includes the tail beyond R). With f(x) = exp(-x²/2):
//!
//!   x_1 = R,   x_{i+1} = sqrt(-2 ln(V / x_i + f(x_i)))   (layer i spans [x_{i+1}, x_i], area V),
//!   x_0 = V / f(R) (the base layer's rectangle, tail folded in),   x_256 = 0,   f_i = f(x_i).
//!
//! The sampler is exact for any tables built this way (the wedge test compares against f itself), so
//! they need no more than f64's own rounding. `rand_distr` keeps its equivalent tables private.
use std::sync::OnceLock;

pub(crate) const ZIG_NORM_R: f64 = 3.654_152_885_361_009;
const ZIG_NORM_V: f64 = 0.00492867323399;
const LAYERS: usize = 256;

pub(crate) struct Ziggurat {
    /// Right edges of the layers' rectangles, from the base (x_0) to the top (x_256 = 0).
    pub x: [f64; LAYERS + 1],
    /// f at each edge.
    pub f: [f64; LAYERS + 1],
}

fn density(x: f64) -> f64 {
    (-0.5 * x * x).exp()
}

/// The tables, built once (257 square roots and logarithms) and shared by every sampler.
pub(crate) fn ziggurat() -> &'static Ziggurat {
    static TABLES: OnceLock<Ziggurat> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut x = [0.0; LAYERS + 1];
        x[0] = ZIG_NORM_V / density(ZIG_NORM_R);
        x[1] = ZIG_NORM_R;
        for i in 1..LAYERS - 1 {
            x[i + 1] = (-2.0 * (ZIG_NORM_V / x[i] + density(x[i])).ln()).sqrt();
        }
        let f = x.map(density);
        Ziggurat { x, f }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layer_has_the_same_area_and_the_top_one_closes_at_zero() {
        let z = ziggurat();
        // layers 1..=255: rectangle [0, x_i] × [f_i, f_{i+1}]. The recurrence sets 1..=254 to area V; the
        // top one (up to x_256 = 0) it does not, so its area being V checks that R and V belong together,
        // to the 12 significant digits V is given with
        for i in 1..LAYERS {
            let area = z.x[i] * (z.f[i + 1] - z.f[i]);
            let tol = if i == LAYERS - 1 { 1e-11 } else { 1e-14 };
            assert!(
                (area - ZIG_NORM_V).abs() < tol,
                "layer {i}: area {area}, expected {ZIG_NORM_V}"
            );
        }
        assert!((z.x[0] * z.f[1] - ZIG_NORM_V).abs() < 1e-17);
        assert_eq!((z.x[LAYERS], z.f[LAYERS]), (0.0, 1.0));
        assert!(
            z.x.windows(2).all(|w| w[0] > w[1]),
            "edges must fall from the base to the top"
        );
    }
}
