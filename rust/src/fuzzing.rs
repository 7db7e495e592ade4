//! Entry points of the cargo-fuzz targets (`rust/fuzz/`), in the library so that `cargo test`
//! replays the committed corpus through the very same code (`rust/tests/fuzz_corpus.rs`) on a
//! stable toolchain. Each returns normally for any input; a panic is a finding.
use std::path::Path;

use crate::store::{file, Index, Limits};
use crate::tokenize::{jsonl, Template};

/// An adapter file as the store reads it: limits, safetensors structure, description, finiteness.
pub fn adapter_file(data: &[u8]) {
    if let Ok(p) = file::parse(
        data,
        Path::new("fuzz.safetensors"),
        &Limits::default(),
        true,
    ) {
        let mut end = 0;
        for t in &p.tensors {
            assert!(
                t.start >= end && t.start <= t.end && t.end <= data.len(),
                "tensor outside the file"
            );
            end = t.end;
        }
        assert_eq!(p.tensors.len(), p.info.tensors.len());
    }
}

/// The store's index: parse, and if accepted, serialise and parse again to the same value.
pub fn store_index(data: &[u8]) {
    if let Ok(idx) = Index::parse(data, Path::new("index.json")) {
        let again =
            Index::parse(&idx.to_bytes(), Path::new("index.json")).expect("a written index parses");
        assert_eq!(idx.adapters.len(), again.adapters.len());
    }
}

/// The JSONL reader, and a template rendered over every record it yields.
pub fn jsonl(data: &[u8]) {
    let template = Template::parse(r#"{"prompt": "{dialogue}###", "target": "{summary}"}"#)
        .expect("valid template");
    let mut reader = jsonl::JsonlReader::new(data, "fuzz.jsonl").with_max_line(1 << 16);
    let mut last = 0;
    while let Ok(Some((line, v))) = reader.next_record() {
        assert!(line > last, "line numbers increase");
        last = line;
        let _ = template.render(&v);
    }
    // Templates themselves are data too.
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(t) = Template::parse(s) {
            let _ = Template::parse(&t.to_json()).expect("a template round-trips");
        }
    }
}
