//! Rust core of ssm-offset.
#[cfg(feature = "python")]
mod python;

/// Version of the core, reported by `ssm-offset info`.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_is_semver() {
        assert_eq!(super::version().split('.').count(), 3);
    }
}
