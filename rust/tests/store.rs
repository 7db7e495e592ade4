use std::fs;
use std::path::Path;

use proptest::prelude::*;
use safetensors::Dtype;
use serde_json::json;
use ssm_offset_core::store::{self, file, Filter, Index, Limits, PutOptions, Store, TensorIn};
use ssm_offset_core::Error;

fn t<'a>(name: &str, dtype: Dtype, shape: &[usize], data: &'a [u8]) -> TensorIn<'a> {
    TensorIn {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        data,
    }
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn opts(tags: &[&str], method: &str) -> PutOptions {
    PutOptions {
        method: Some(method.into()),
        base_fingerprint: Some("fp1-abc".into()),
        tags: tags.iter().map(|s| s.to_string()).collect(),
        config: json!({"peft_type": method, "r": 8}),
        metadata: json!({"note": "x"}),
        metrics: json!({"rouge": 0.5}),
        overwrite: true,
        check_finite: true,
    }
}

#[test]
fn put_get_list_delete_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), true).unwrap();
    let a = f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let b = vec![7u8, 0, 8, 0];
    let e = s
        .put(
            "samsum",
            &[
                t("layer.0.h", Dtype::F32, &[2, 3], &a),
                t("layer.0.y", Dtype::BF16, &[2], &b),
            ],
            opts(&["summarise"], "state_offset"),
        )
        .unwrap();
    assert_eq!(e.info.tensors.len(), 2);
    s.put(
        "spider",
        &[t("w", Dtype::F32, &[6], &a)],
        opts(&["sql"], "lora"),
    )
    .unwrap();

    let l = s.get("samsum", true).unwrap();
    assert_eq!(l.entry.info.config["r"], 8);
    let h = l.tensors.iter().find(|x| x.name == "layer.0.h").unwrap();
    assert_eq!(&l.map[h.start..h.end], &a[..]);
    assert_eq!(h.shape, vec![2, 3]);
    assert_eq!(
        h.start % 4,
        0,
        "tensor data must be aligned for zero-copy views"
    );

    let f = |tag: Option<&str>, method: Option<&str>| Filter {
        tag: tag.map(Into::into),
        method: method.map(Into::into),
        base_fingerprint: None,
    };
    assert_eq!(s.list(&f(None, None)).unwrap().len(), 2);
    assert_eq!(
        s.list(&f(Some("sql"), None)).unwrap()[0].info.name,
        "spider"
    );
    assert_eq!(s.list(&f(None, Some("state_offset"))).unwrap().len(), 1);
    assert!(s.list(&f(Some("nope"), None)).unwrap().is_empty());

    assert!(s.delete("spider").unwrap());
    assert!(!s.delete("spider").unwrap());
    assert!(matches!(
        s.get("spider", false),
        Err(Error::NotFound { .. })
    ));
    assert!(s.verify(true).unwrap().is_empty());
}

#[test]
fn overwrite_replaces_and_removes_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), true).unwrap();
    let a = f32s(&[1.0]);
    let b = f32s(&[2.0]);
    s.put("x", &[t("w", Dtype::F32, &[1], &a)], opts(&[], "m"))
        .unwrap();
    let mut o = opts(&[], "m");
    o.overwrite = false;
    let err = s.put("x", &[t("w", Dtype::F32, &[1], &b)], o).unwrap_err();
    assert!(err.to_string().contains("already exists"));
    s.put("x", &[t("w", Dtype::F32, &[1], &b)], opts(&[], "m"))
        .unwrap();
    let l = s.get("x", false).unwrap();
    assert_eq!(&l.map[l.tensors[0].start..l.tensors[0].end], &b[..]);
    assert_eq!(
        fs::read_dir(dir.path().join("adapters")).unwrap().count(),
        1
    );
}

#[test]
fn bad_inputs_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), true).unwrap();
    let a = f32s(&[1.0, f32::NAN]);
    let e = s
        .put("x", &[t("w", Dtype::F32, &[3], &a)], opts(&[], "m"))
        .unwrap_err();
    assert!(e.to_string().contains("need 12 bytes, got 8"), "{e}");
    let e = s
        .put("x", &[t("w", Dtype::F32, &[2], &a)], opts(&[], "m"))
        .unwrap_err();
    assert!(e.to_string().contains("non-finite"), "{e}");
    let e = s.put("", &[], opts(&[], "m")).unwrap_err();
    assert!(e.to_string().contains("1 to 256"), "{e}");
    let e = s
        .put(
            "x",
            &[
                t("w", Dtype::F32, &[1], &a[..4]),
                t("w", Dtype::F32, &[1], &a[..4]),
            ],
            opts(&[], "m"),
        )
        .unwrap_err();
    assert!(e.to_string().contains("given twice"), "{e}");
}

/// Flips the bits `mask` of one byte of a file in place; a negative `at` counts from the end.
fn flip_byte(p: &Path, at: isize, mask: u8) {
    let mut bytes = fs::read(p).unwrap();
    let i = if at < 0 {
        bytes.len() - at.unsigned_abs()
    } else {
        at as usize
    };
    bytes[i] ^= mask;
    fs::write(p, &bytes).unwrap();
}

fn one_adapter(dir: &Path) -> (Store, std::path::PathBuf) {
    let s = Store::open(dir, true).unwrap();
    let a = f32s(&[1.0, 2.0, 3.0, 4.0]);
    let e = s
        .put("x", &[t("w", Dtype::F32, &[4], &a)], opts(&[], "m"))
        .unwrap();
    let p = s.file_path(&e);
    (s, p)
}

#[test]
fn truncated_and_corrupt_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (s, p) = one_adapter(dir.path());
    let bytes = fs::read(&p).unwrap();
    fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
    let e = s.get("x", false).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }));
    assert!(e.to_string().contains(&p.display().to_string()), "{e}");
    fs::write(&p, &bytes).unwrap();
    flip_byte(&p, -1, 0x40);
    let e = s.get("x", false).unwrap_err();
    assert!(e.to_string().contains("content hash"), "{e}");
    assert_eq!(s.verify(false).unwrap().len(), 1);
    fs::remove_file(&p).unwrap();
    assert!(matches!(s.get("x", false).unwrap_err(), Error::Io { .. }));
}

#[test]
fn an_index_that_lies_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = one_adapter(dir.path());
    let ip = s.index_path();
    let mut idx: serde_json::Value = serde_json::from_slice(&fs::read(&ip).unwrap()).unwrap();
    idx["adapters"]["x"]["tensors"]["w"]["shape"] = json!([2, 2]);
    fs::write(&ip, serde_json::to_vec(&idx).unwrap()).unwrap();
    let e = s.get("x", false).unwrap_err();
    assert!(
        e.to_string().contains("index describes different tensors"),
        "{e}"
    );
    idx["adapters"]["x"]["file"] = json!("../../etc/passwd");
    fs::write(&ip, serde_json::to_vec(&idx).unwrap()).unwrap();
    let e = s.get("x", false).unwrap_err();
    assert!(
        e.to_string().contains("invalid file name") && e.to_string().contains("index.json"),
        "{e}"
    );
    fs::write(&ip, b"{\"format\": ").unwrap();
    assert!(s
        .list(&Filter::default())
        .unwrap_err()
        .to_string()
        .contains("index.json"));
    // The index can be rebuilt from the files themselves.
    let r = s.compact(true).unwrap();
    assert_eq!(r.adapters, 1);
    assert!(s.get("x", true).is_ok());
}

#[test]
fn compact_removes_debris() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = one_adapter(dir.path());
    fs::write(dir.path().join("tmp/123.0.0.tmp"), b"half").unwrap();
    fs::write(dir.path().join("adapters/00ff.safetensors"), b"orphan").unwrap();
    assert_eq!(s.verify(false).unwrap().len(), 2);
    let r = s.compact(false).unwrap();
    assert_eq!(r.removed_files.len(), 2);
    assert!(s.verify(true).unwrap().is_empty());
}

#[test]
fn header_limit_applies_before_parsing() {
    let mut buf = (1u64 << 40).to_le_bytes().to_vec();
    buf.extend_from_slice(b"{}");
    let e = file::parse(&buf, Path::new("f.safetensors"), &Limits::default(), false).unwrap_err();
    assert!(e.to_string().contains("exceeds the limit"), "{e}");
}

#[test]
fn fingerprint_depends_on_config_shapes_and_weights() {
    let a = f32s(&[1.0; 1000]);
    let b = f32s(&[2.0; 1000]);
    let cfg = json!({"d_model": 768, "transformers_version": "5"});
    let fa = store::base_fingerprint(&cfg, &[t("w", Dtype::F32, &[1000], &a)]);
    assert_eq!(
        fa,
        store::base_fingerprint(&json!({"d_model": 768}), &[t("w", Dtype::F32, &[1000], &a)])
    );
    assert_ne!(
        fa,
        store::base_fingerprint(&cfg, &[t("w", Dtype::F32, &[1000], &b)])
    );
    assert_ne!(
        fa,
        store::base_fingerprint(&cfg, &[t("w", Dtype::F32, &[10, 100], &a)])
    );
    assert_ne!(
        fa,
        store::base_fingerprint(
            &json!({"d_model": 1024}),
            &[t("w", Dtype::F32, &[1000], &a)]
        )
    );
}

const DTYPES: [Dtype; 6] = [
    Dtype::F32,
    Dtype::BF16,
    Dtype::F16,
    Dtype::I64,
    Dtype::U8,
    Dtype::F64,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_tensors_roundtrip(specs in prop::collection::vec((0usize..6, prop::collection::vec(0usize..5, 0..3), any::<u8>()), 0..6)) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), true).unwrap();
        let datas: Vec<Vec<u8>> = specs.iter().map(|(d, shape, fill)| {
            let n: usize = shape.iter().product::<usize>() * (DTYPES[*d].bitsize() / 8);
            (0..n).map(|i| fill.wrapping_add(i as u8) & 0x3f).collect()
        }).collect();
        let ts: Vec<TensorIn> = specs.iter().zip(&datas).enumerate()
            .map(|(i, ((d, shape, _), data))| t(&format!("t{i}"), DTYPES[*d], shape, data)).collect();
        s.put("a", &ts, opts(&["x"], "m")).unwrap();
        let l = s.get("a", true).unwrap();
        prop_assert_eq!(l.tensors.len(), ts.len());
        for loc in &l.tensors {
            let i: usize = loc.name[1..].parse().unwrap();
            prop_assert_eq!(&l.map[loc.start..loc.end], &datas[i][..]);
            prop_assert_eq!(&loc.shape, &ts[i].shape);
            prop_assert_eq!(loc.start % (ts[i].dtype.bitsize() / 8).max(1), 0);
        }
    }

    #[test]
    fn flipping_any_byte_is_detected(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let dir = tempfile::tempdir().unwrap();
        let (s, p) = one_adapter(dir.path());
        let i = pos.index(fs::metadata(&p).unwrap().len() as usize);
        flip_byte(&p, i as isize, 1 << bit);
        prop_assert!(s.get("x", false).is_err());
    }

    #[test]
    fn parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = file::parse(&bytes, Path::new("f"), &Limits::default(), true);
        let _ = Index::parse(&bytes, Path::new("index.json"));
    }
}

#[test]
fn verify_once_hashes_again_when_the_file_is_written_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let (s, p) = one_adapter(dir.path());
    let s = s.with_verify(store::Verify::Once);
    s.get("x", false).unwrap();
    s.get("x", false).unwrap(); // remembered: not hashed again
                                // Same size, written in place: the ctime changes, so the next load hashes the file again.
    flip_byte(&p, -1, 0x40);
    let e = s.get("x", false).unwrap_err();
    assert!(e.to_string().contains("content hash"), "{e}");
    // `verify` always hashes.
    assert_eq!(s.verify(false).unwrap().len(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The content hash is computed by twox-hash now and was computed by xxhash-rust before: the
    /// two must agree on every length (XXH3 has separate paths up to 16, 128, 240 bytes and
    /// beyond, and a tail after its 1 KiB blocks), or stores written before would fail to load.
    #[test]
    fn content_hash_is_the_xxh3_128_stores_were_written_with(
        bytes in prop::collection::vec(any::<u8>(), 0..4500),
        extra in 0usize..3,
    ) {
        let long: Vec<u8> = bytes.iter().cycle().take(bytes.len() * extra * 97).copied().collect();
        for b in [&bytes, &long] {
            prop_assert_eq!(
                store::content_hash(b),
                format!("xxh3:{:032x}", xxhash_rust::xxh3::xxh3_128(b))
            );
        }
    }
}

/// Copies the store in `tests/data/store_v1`, written by the code of commit ef9f288 (content hash
/// by xxhash-rust), into a fresh directory.
fn store_written_before(dir: &Path) -> Store {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/store_v1");
    fs::create_dir_all(dir.join("adapters")).unwrap();
    fs::copy(src.join("index.json"), dir.join("index.json")).unwrap();
    for e in fs::read_dir(src.join("adapters")).unwrap() {
        let p = e.unwrap().path();
        fs::copy(&p, dir.join("adapters").join(p.file_name().unwrap())).unwrap();
    }
    Store::open(dir, false).unwrap()
}

#[test]
fn a_store_written_before_still_loads_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_written_before(dir.path());
    let l = s.get("old-format", true).unwrap();
    assert_eq!(
        l.entry.content_hash,
        "xxh3:905c7300dbab6e422dd05ed43c08d970"
    );
    let w = l.tensors.iter().find(|t| t.name == "w").unwrap();
    let want: Vec<f32> = (0..3001).map(|i| i as f32 * 0.25 - 100.0).collect();
    assert_eq!(&l.map[w.start..w.end], &f32s(&want)[..]);
    let b = l.tensors.iter().find(|t| t.name == "b").unwrap();
    let want: Vec<u8> = (-7i64..10).flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(&l.map[b.start..b.end], &want[..]);
    assert!(s.verify(true).unwrap().is_empty());
    // The new hash still sees a single flipped bit in it.
    let p = s.file_path(&l.entry);
    flip_byte(&p, (w.start + 4 * 1234) as isize, 0x01);
    let e = s.get("old-format", false).unwrap_err();
    assert!(
        e.to_string().contains("content hash") && e.to_string().contains(&p.display().to_string()),
        "{e}"
    );
}

#[test]
fn get_many_matches_get_in_order_and_names_the_failing_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), true).unwrap();
    let datas: Vec<Vec<u8>> = (0..6)
        .map(|i| f32s(&vec![i as f32; 300 + 50 * i]))
        .collect();
    for (i, d) in datas.iter().enumerate() {
        let n = d.len() / 4;
        s.put(
            &format!("a{i}"),
            &[t("w", Dtype::F32, &[n], d)],
            opts(&[], "m"),
        )
        .unwrap();
    }
    let names = ["a3", "a0", "a5", "a3", "a1"];
    let many = s.get_many(&names, true).unwrap();
    assert_eq!(many.len(), names.len());
    for (name, l) in names.iter().zip(&many) {
        let one = s.get(name, true).unwrap();
        assert_eq!(&l.entry, &one.entry);
        assert_eq!(&l.tensors, &one.tensors);
        assert_eq!(&l.map[..], &one.map[..]);
        let i: usize = name[1..].parse().unwrap();
        let w = &l.tensors[0];
        assert_eq!(&l.map[w.start..w.end], &datas[i][..]);
    }
    assert!(s.get_many(&[], false).unwrap().is_empty());

    // Two corrupt files: the error is the first one in the order asked for.
    let path_of = |n: &str| s.file_path(&s.get(n, false).unwrap().entry);
    let (p1, p4) = (path_of("a1"), path_of("a4"));
    for p in [&p1, &p4] {
        flip_byte(p, -5, 0x10);
    }
    let e = s.get_many(&["a0", "a4", "a2", "a1"], false).unwrap_err();
    assert!(
        e.to_string().contains("content hash") && e.to_string().contains(&p4.display().to_string()),
        "{e}"
    );
    let e = s.get_many(&["a0", "nope"], false).unwrap_err();
    assert!(
        matches!(e, Error::NotFound { ref name, .. } if name == "nope"),
        "{e}"
    );
    let problems = s.verify(false).unwrap();
    let mut bad: Vec<_> = problems.iter().map(|p| p.name.clone().unwrap()).collect();
    bad.sort();
    assert_eq!(bad, ["a1", "a4"]);
}
