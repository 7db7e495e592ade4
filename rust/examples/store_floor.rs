//! What it costs to look at every byte of a store's files, without the store: the content hash
//! (XXH3-128) over mappings already populated, and over a fresh private mapping per file as a
//! zero-copy load makes (map, fault the pages in, hash, unmap), on one thread and on the rayon pool.
//! A reference for `benches/results/rust_core.md`, not part of the library.
//!
//!     cargo run --release --example store_floor -p ssm-offset-core -- STORE_DIR
use std::fs::File;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use memmap2::{Mmap, MmapOptions};
use rayon::prelude::*;
use ssm_offset_core::store::content_hash;

fn fresh(path: &Path) -> String {
    let f = File::open(path).unwrap();
    // SAFETY: store files are never written in place.
    let m = unsafe { MmapOptions::new().map_copy(&f) }.unwrap();
    content_hash(&m)
}

type Arm<'a> = (&'static str, Box<dyn FnMut() + 'a>);

fn median_ms(f: &mut dyn FnMut()) -> (f64, f64) {
    let mut v: Vec<f64> = (0..31)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0])
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .expect("usage: store_floor STORE_DIR");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(Path::new(&root).join("adapters"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    let bytes: u64 = paths.iter().map(|p| p.metadata().unwrap().len()).sum();
    // SAFETY: as above; populated so that the first arms pay no page faults.
    let maps: Vec<Mmap> = paths
        .iter()
        .map(|p| unsafe { MmapOptions::new().populate().map(&File::open(p).unwrap()) }.unwrap())
        .collect();
    println!(
        "{} files, {:.1} MB, rayon pool of {} threads",
        paths.len(),
        bytes as f64 / 1e6,
        rayon::current_num_threads()
    );
    let arms: [Arm; 4] = [
        (
            "hash, populated mappings, 1 thread",
            Box::new(|| maps.iter().for_each(|m| drop(black_box(content_hash(m))))),
        ),
        (
            "hash, populated mappings, pool",
            Box::new(|| {
                maps.par_iter()
                    .for_each(|m| drop(black_box(content_hash(m))))
            }),
        ),
        (
            "map + hash + unmap, 1 thread",
            Box::new(|| paths.iter().for_each(|p| drop(black_box(fresh(p))))),
        ),
        (
            "map + hash + unmap, pool",
            Box::new(|| paths.par_iter().for_each(|p| drop(black_box(fresh(p))))),
        ),
    ];
    for (label, mut f) in arms {
        let (median, min) = median_ms(&mut f);
        println!("{label:40} median {median:6.2} ms  min {min:6.2} ms");
    }
}
