//! Replays the committed cargo-fuzz corpus (`rust/fuzz/corpus/<target>/`) through the same entry
//! points as the fuzz targets, on a stable toolchain, so every finding stays fixed.
use std::fs;
use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        run(&fs::read(&p).unwrap());
        n += 1;
    }
    assert!(n > 0, "empty corpus in {}", dir.display());
}

#[test]
fn adapter_file_corpus() {
    replay("adapter_file", ssm_offset_core::fuzzing::adapter_file);
}

#[test]
fn store_index_corpus() {
    replay("store_index", ssm_offset_core::fuzzing::store_index);
}

#[test]
fn jsonl_corpus() {
    replay("jsonl", ssm_offset_core::fuzzing::jsonl);
}
