//! Embeds a digest of the crate's own sources as `SSM_OFFSET_CORE_SOURCE`, exposed to Python as
//! `ssm_offset._core.__source_digest__`. A wheel built elsewhere (the GPU machine has no cargo and runs the
//! abi3 wheel built here) can then be checked against the checkout it runs with: a stale wheel fails early with
//! a clear message instead of a TypeError deep inside a run. `ssm_offset.native.source_digest` computes the same
//! value in Python: sha256 over (relative path, NUL, bytes, NUL) of Cargo.toml, build.rs and every file under
//! src/, in sorted order of their '/'-separated relative paths.
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("src/ entry").path();
        if path.is_dir() {
            collect(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("Cargo.toml"), root.join("build.rs")];
    collect(&root.join("src"), &mut files);
    let mut named: Vec<(String, PathBuf)> = files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(&root)
                .expect("under the crate")
                .to_string_lossy()
                .replace('\\', "/");
            (rel, p)
        })
        .collect();
    named.sort();
    let mut h = Sha256::new();
    for (rel, path) in &named {
        h.update(rel.as_bytes());
        h.update([0u8]);
        h.update(fs::read(path).expect("read a source file"));
        h.update([0u8]);
    }
    println!("cargo:rustc-env=SSM_OFFSET_CORE_SOURCE={:x}", h.finalize());
    println!("cargo:rerun-if-changed=Cargo.toml");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src");
}
