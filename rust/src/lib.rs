//! Rust core of ssm-offset: the adapter store ([`store`]), CEM search ([`cem`]) and the
//! tokenization pipeline ([`tokenize`]). A library first; `python` only binds it.
pub mod cem;
pub mod error;
pub mod fuzzing;
pub mod store;
pub mod tokenize;
mod ziggurat_tables;

#[cfg(feature = "python")]
mod python;

pub use error::{Error, Result};

/// Version of the core, reported by `ssm-offset info`.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// sha256 of the sources this library was built from (see build.rs).
pub fn source_digest() -> &'static str {
    env!("SSM_OFFSET_CORE_SOURCE")
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_is_semver() {
        assert_eq!(super::version().split('.').count(), 3);
    }
}
