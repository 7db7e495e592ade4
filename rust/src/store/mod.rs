//! A directory-backed library of adapters ("experts").
//!
//! Layout of a store directory:
//! - `index.json`: every committed adapter ([`index::Index`]);
//! - `adapters/<xxh3>.safetensors`: one file per adapter content ([`file`]);
//! - `tmp/`: files being written; anything left there is debris of a crash;
//! - `.lock`: advisory lock file (exclusive for writers, shared for readers).
//!
//! A write goes: adapter file to `tmp/`, fsync, rename into `adapters/`, fsync the directory;
//! then a new index to `tmp/`, fsync, rename over `index.json`, fsync. The index rename is the
//! commit point: a writer killed at any moment leaves the previous index and its files intact.
//! Readers hold the shared lock only while they read the index and map the file, so a writer
//! cannot delete a file between the two; once mapped, a file may be unlinked safely.
pub mod file;
pub mod index;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use memmap2::{MmapMut, MmapOptions};
use rayon::prelude::*;
use serde_json::Value;

pub use file::{AdapterInfo, Limits, TensorIn, TensorLoc, TensorSpec};
pub use index::{Entry, Index};

use crate::error::{Error, IoContext, Result};

/// What `put` records besides the tensors.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub method: Option<String>,
    pub base_fingerprint: Option<String>,
    pub tags: Vec<String>,
    pub metrics: Value,
    pub config: Value,
    pub metadata: Value,
    /// Replace an adapter of the same name (otherwise `put` fails if it exists).
    pub overwrite: bool,
    /// Reject NaN and infinities.
    pub check_finite: bool,
}

/// Filter for [`Store::list`]; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub tag: Option<String>,
    pub method: Option<String>,
    pub base_fingerprint: Option<String>,
}

impl Filter {
    pub fn matches(&self, e: &Entry) -> bool {
        self.tag.as_ref().is_none_or(|t| e.info.tags.contains(t))
            && self
                .method
                .as_ref()
                .is_none_or(|m| e.info.method.as_ref() == Some(m))
            && self
                .base_fingerprint
                .as_ref()
                .is_none_or(|f| e.info.base_fingerprint.as_ref() == Some(f))
    }
}

/// A loaded adapter: the private (copy-on-write) mapping of its file and where each tensor lies.
#[derive(Debug)]
pub struct Loaded {
    pub entry: Entry,
    pub map: MmapMut,
    pub tensors: Vec<TensorLoc>,
}

/// An adapter file mapped under the shared lock, not yet checked (see [`Store::get`]).
struct Mapped {
    entry: Entry,
    path: PathBuf,
    map: MmapMut,
    /// Identity of the file when [`Verify::Once`] may skip its hash.
    id: Option<FileId>,
}

/// Checks a mapped file against its index entry: content hash (as [`Verify`] says),
/// safetensors structure and the store's limits, tensor list and name.
fn check(m: Mapped, limits: &Limits, check_finite: bool) -> Result<Loaded> {
    let Mapped {
        entry,
        path,
        map,
        id,
    } = m;
    let name = &entry.info.name;
    let known = id
        .as_ref()
        .is_some_and(|id| verified().lock().unwrap().get(id) == Some(&entry.content_hash));
    let hash = if known {
        entry.content_hash.clone()
    } else {
        content_hash(&map)
    };
    if hash != entry.content_hash {
        return Err(Error::corrupt(
            &path,
            format!(
                "adapter {name:?}: content hash {hash} does not match the index ({}): the file is corrupt or the index is wrong",
                entry.content_hash
            ),
        ));
    }
    let parsed = file::parse(&map, &path, limits, check_finite)?;
    if parsed.info.tensors != entry.info.tensors || parsed.info.name != entry.info.name {
        return Err(Error::corrupt(
            &path,
            format!(
                "adapter {name:?}: the index describes different tensors or name than the file"
            ),
        ));
    }
    if let (Some(id), false) = (id, known) {
        verified().lock().unwrap().insert(id, hash);
    }
    Ok(Loaded {
        entry,
        map,
        tensors: parsed.tensors,
    })
}

/// Adapters being loaded by [`Store::get_each`], yielded in the order asked for.
pub struct Loading {
    shared: Arc<Checks>,
    next: usize,
}

/// The checks of one [`Store::get_each`], shared by the pool's jobs and the caller's thread.
struct Checks {
    slots: Vec<(Mutex<Slot>, Condvar)>,
    limits: Limits,
    check_finite: bool,
    /// Set when the caller drops its [`Loading`]: the checks not yet started are skipped.
    dropped: AtomicBool,
}

enum Slot {
    Todo(Mapped),
    Running,
    Done(std::thread::Result<Result<Loaded>>),
    Taken,
}

impl Checks {
    /// Checks file `i` unless another thread has started it (or the caller is gone).
    fn run(&self, i: usize) {
        let (lock, done) = &self.slots[i];
        let m = {
            let mut slot = lock.lock().unwrap();
            if self.dropped.load(Ordering::Relaxed) || !matches!(*slot, Slot::Todo(_)) {
                return;
            }
            match std::mem::replace(&mut *slot, Slot::Running) {
                Slot::Todo(m) => m,
                _ => unreachable!(),
            }
        };
        // Caught so that a panic unwinds on the caller's thread, as from a direct call, and
        // never aborts the process from inside a rayon job.
        let r = catch_unwind(AssertUnwindSafe(|| {
            check(m, &self.limits, self.check_finite)
        }));
        *lock.lock().unwrap() = Slot::Done(r);
        done.notify_all();
    }
}

impl Iterator for Loading {
    type Item = Result<Loaded>;

    /// The next adapter: checked here if no pool thread has started it yet (so that a busy pool
    /// never leaves the caller idle), else waited for.
    fn next(&mut self) -> Option<Result<Loaded>> {
        let i = self.next;
        let (lock, done) = self.shared.slots.get(i)?;
        self.next += 1;
        self.shared.run(i);
        let mut slot = done
            .wait_while(lock.lock().unwrap(), |s| matches!(s, Slot::Running))
            .unwrap();
        match std::mem::replace(&mut *slot, Slot::Taken) {
            Slot::Done(Ok(loaded)) => Some(loaded),
            Slot::Done(Err(panic)) => resume_unwind(panic),
            _ => unreachable!("run() leaves the slot done"),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.shared.slots.len() - self.next;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Loading {}

impl Drop for Loading {
    fn drop(&mut self) {
        self.shared.dropped.store(true, Ordering::Relaxed);
    }
}

/// One finding of [`Store::verify`].
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The adapter concerned, or `None` for a file no adapter refers to.
    pub name: Option<String>,
    pub path: PathBuf,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompactReport {
    pub removed_files: Vec<PathBuf>,
    pub adapters: usize,
    /// Entries dropped because their file was missing or invalid (only with `rebuild`).
    pub dropped: Vec<String>,
}

/// When [`Store::get`] checks the content hash of an adapter file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// On every load (the default): one full pass over the file's bytes each time.
    #[default]
    Always,
    /// On the first load of a file in this process, then again only when the file's identity
    /// changes. Store files are immutable (created by rename, never written in place, and named by
    /// their content hash); a file that hashed correctly is remembered by (device, inode, size,
    /// mtime, ctime, content hash), and a later load that finds all six unchanged skips the hash.
    /// Any write to the file through the file system changes its ctime (which user programs
    /// cannot set back), so it is hashed again. What this mode does not catch is corruption that
    /// bypasses the file system after the first check in this process (a failing disk, writes to
    /// the raw block device). Structure, sizes and the index's tensor list are still checked on
    /// every load, and [`Store::verify`] always hashes.
    Once,
}

/// Identity of a store file whose content hash was checked in this process (see [`Verify::Once`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

fn file_id(m: &fs::Metadata) -> Option<FileId> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
        Some(FileId {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }
    #[cfg(not(unix))]
    {
        // Without ctime there is no identity that a write must change: always hash.
        let _ = m;
        None
    }
}

/// Files hashed correctly in this process: identity -> content hash (see [`Verify::Once`]).
fn verified() -> &'static Mutex<std::collections::HashMap<FileId, String>> {
    static V: std::sync::OnceLock<Mutex<std::collections::HashMap<FileId, String>>> =
        std::sync::OnceLock::new();
    V.get_or_init(Default::default)
}

/// Identity of the index file last read, to reuse the parsed index while it is unchanged.
#[derive(Debug, Clone, PartialEq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime: Option<SystemTime>,
}

fn stamp(m: &fs::Metadata) -> Stamp {
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(m);
    #[cfg(not(unix))]
    let ino = 0;
    Stamp {
        ino,
        len: m.len(),
        mtime: m.modified().ok(),
    }
}

pub struct Store {
    root: PathBuf,
    limits: Limits,
    verify: Verify,
    cached: Mutex<Option<(Stamp, Arc<Index>)>>,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Content hash of a stored file: `xxh3:` and the XXH3-128 of its bytes in hex (the prefix names
/// the algorithm, so that another can be added without breaking stores written before). It guards
/// against corruption and truncation (any change of the bytes), not against forgery. A load that
/// checks it is bound by how fast memory delivers the file, not by the hash: on the benchmark
/// machine XXH3 (AVX2) hashes a file already in cache at about 36 GB/s but a file coming from the
/// page cache at 8-10 GB/s, about what a plain sum over the same bytes reaches; BLAKE3 (AVX-512)
/// was 1.6x slower from memory. `twox_hash` chooses its AVX2 kernel at run time; the `xxhash-rust`
/// crate used before picks SIMD at compile time, which for a portable wheel means SSE2, 1.4x
/// slower in cache. Both compute the same XXH3-128, so files hashed by either verify alike
/// (`tests/store.rs` compares the two and reads a store written before the switch).
pub fn content_hash(buf: &[u8]) -> String {
    format!("xxh3:{:032x}", twox_hash::XxHash3_128::oneshot(buf))
}

fn fsync_dir(dir: &Path) -> Result<()> {
    // Makes a rename durable; directories cannot be opened for fsync on Windows.
    if cfg!(unix) {
        File::open(dir).and_then(|d| d.sync_all()).at(dir)?;
    }
    Ok(())
}

/// Writes `bytes` to `dest` atomically: temporary file in `tmp_dir`, fsync, rename, fsync.
fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tmp = tmp_dir.join(format!("{}.{seq}.{nanos}.tmp", std::process::id()));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .at(&tmp)?;
        f.write_all(bytes).at(&tmp)?;
        f.sync_all().at(&tmp)?;
    }
    fs::rename(&tmp, dest).at(dest)?;
    fsync_dir(dest.parent().unwrap_or(Path::new(".")))
}

/// Held for the duration of one operation; the kernel drops it if the process dies.
struct Lock(#[allow(dead_code)] File);

impl Store {
    /// Opens a store, creating the directory layout if `create` (and it is missing).
    pub fn open(root: impl AsRef<Path>, create: bool) -> Result<Store> {
        let root = root.as_ref().to_path_buf();
        if create {
            for d in [root.clone(), root.join("adapters"), root.join("tmp")] {
                fs::create_dir_all(&d).at(&d)?;
            }
        } else if !root.is_dir() {
            return Err(Error::io(
                &root,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no adapter store here"),
            ));
        }
        Ok(Store {
            root,
            limits: Limits::default(),
            verify: Verify::Always,
            cached: Mutex::new(None),
        })
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// When loads check the content hash (default: [`Verify::Always`]).
    pub fn with_verify(mut self, verify: Verify) -> Self {
        self.verify = verify;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    pub fn file_path(&self, entry: &Entry) -> PathBuf {
        self.root.join("adapters").join(&entry.file)
    }

    /// Exclusive for writers. Readers of a store they cannot write to (a read-only copy) take
    /// no lock: nobody can be writing to it through this file system.
    fn lock(&self, exclusive: bool) -> Result<Option<Lock>> {
        use std::io::ErrorKind::{PermissionDenied, ReadOnlyFilesystem};
        let p = self.root.join(".lock");
        let f = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
        {
            Ok(f) => f,
            Err(e) if !exclusive && matches!(e.kind(), PermissionDenied | ReadOnlyFilesystem) => {
                return Ok(None)
            }
            Err(e) => return Err(Error::io(&p, e)),
        };
        if exclusive { f.lock() } else { f.lock_shared() }.at(&p)?;
        Ok(Some(Lock(f)))
    }

    /// Reads the index (empty if there is none yet); reuses the parsed one while the file is
    /// unchanged (the index is only ever replaced by rename, which changes its inode).
    pub fn read_index(&self) -> Result<Arc<Index>> {
        let p = self.index_path();
        let meta = match fs::metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Arc::new(Index::default()))
            }
            Err(e) => return Err(Error::io(&p, e)),
        };
        let st = stamp(&meta);
        if let Some((s, idx)) = self.cached.lock().unwrap().as_ref() {
            if *s == st {
                return Ok(idx.clone());
            }
        }
        if meta.len() > index::MAX_INDEX_BYTES {
            return Err(Error::corrupt(
                &p,
                format!("index of {} bytes exceeds the limit", meta.len()),
            ));
        }
        let buf = fs::read(&p).at(&p)?;
        let idx = Arc::new(Index::parse(&buf, &p)?);
        *self.cached.lock().unwrap() = Some((st, idx.clone()));
        Ok(idx)
    }

    fn write_index(&self, idx: &Index) -> Result<()> {
        write_atomic(&self.root.join("tmp"), &self.index_path(), &idx.to_bytes())
    }

    /// Adds (or, with `overwrite`, replaces) an adapter. Returns its index entry.
    pub fn put(&self, name: &str, tensors: &[TensorIn<'_>], opts: PutOptions) -> Result<Entry> {
        index::check_name(name).map_err(Error::Invalid)?;
        let specs = file::check_inputs(tensors, &self.limits, opts.check_finite)?;
        let info = AdapterInfo {
            name: name.to_string(),
            method: opts.method,
            base_fingerprint: opts.base_fingerprint,
            tags: opts.tags,
            metrics: opts.metrics,
            config: opts.config,
            metadata: opts.metadata,
            created: now(),
            tensors: specs,
        };
        let bytes = file::serialize(tensors, &info)?;
        let hash = content_hash(&bytes);
        let entry = Entry {
            file: format!("{}.safetensors", &hash["xxh3:".len()..]),
            size: bytes.len() as u64,
            content_hash: hash,
            info,
        };
        let _lock = self.lock(true)?;
        let mut idx = (*self.read_index()?).clone();
        if !opts.overwrite && idx.adapters.contains_key(name) {
            return Err(Error::invalid(format!(
                "adapter {name:?} already exists in {} (pass overwrite=True to replace it)",
                self.root.display()
            )));
        }
        let tmp = self.root.join("tmp");
        fs::create_dir_all(&tmp).at(&tmp)?;
        write_atomic(&tmp, &self.file_path(&entry), &bytes)?;
        let old = idx.adapters.insert(name.to_string(), entry.clone());
        self.write_index(&idx)?;
        if let Some(old) = old {
            self.remove_if_unreferenced(&idx, &old.file);
        }
        Ok(entry)
    }

    fn remove_if_unreferenced(&self, idx: &Index, file: &str) {
        if !idx.adapters.values().any(|e| e.file == file) {
            // Best effort: a leftover file is harmless and `compact` removes it.
            let _ = fs::remove_file(self.root.join("adapters").join(file));
        }
    }

    /// Maps an adapter's file and checks it against its index entry: size, content hash,
    /// safetensors structure and tensor list (an index that lies is caught here).
    /// The content hash is checked as [`Verify`] says (on every load by default).
    pub fn get(&self, name: &str, check_finite: bool) -> Result<Loaded> {
        self.load(name, check_finite, self.verify)
    }

    /// [`Store::get`] for several adapters at once, in the order of `names`; the first adapter
    /// (in that order) that fails to load is the error. See [`Store::get_each`].
    pub fn get_many(&self, names: &[&str], check_finite: bool) -> Result<Vec<Loaded>> {
        self.get_each(names, check_finite)?.collect()
    }

    /// Starts loading several adapters: under one shared lock and one look at the index, finds
    /// and maps every file (an unknown name or a missing file is the error here), then checks the
    /// files on the rayon pool, one task per file, in the background. The iterator yields them in
    /// the order of `names`, each as soon as its own check is done, so that a caller can turn one
    /// into its own objects while the next ones are hashed: a load is bound by how fast memory
    /// delivers the bytes to the hash, and a second core doubles that.
    pub fn get_each(&self, names: &[&str], check_finite: bool) -> Result<Loading> {
        let mapped = {
            let _lock = self.lock(false)?;
            let idx = self.read_index()?;
            names
                .iter()
                .map(|name| self.map(&idx, name, self.verify))
                .collect::<Result<Vec<_>>>()?
        };
        let n = mapped.len();
        let shared = Arc::new(Checks {
            slots: mapped
                .into_iter()
                .map(|m| (Mutex::new(Slot::Todo(m)), Condvar::new()))
                .collect(),
            limits: self.limits,
            check_finite,
            dropped: AtomicBool::new(false),
        });
        // One file: waking the pool costs more than it could save. On a pool thread: the
        // caller checks every file itself anyway (`next`), queueing jobs would only add work.
        if n >= 2 && rayon::current_thread_index().is_none() {
            for i in 0..n {
                let shared = shared.clone();
                rayon::spawn_fifo(move || shared.run(i));
            }
        }
        Ok(Loading { shared, next: 0 })
    }

    fn load(&self, name: &str, check_finite: bool, verify: Verify) -> Result<Loaded> {
        let mapped = {
            let _lock = self.lock(false)?;
            self.map(&*self.read_index()?, name, verify)?
        };
        check(mapped, &self.limits, check_finite)
    }

    /// Finds an adapter in the index and maps its file. Called under the shared lock, so that no
    /// writer deletes the file between the two; the mapping outlives the lock safely.
    fn map(&self, idx: &Index, name: &str, verify: Verify) -> Result<Mapped> {
        let entry = idx
            .adapters
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                name: name.to_string(),
                root: self.root.clone(),
            })?;
        let path = self.file_path(&entry);
        let f = File::open(&path).at(&path)?;
        let meta = f.metadata().at(&path)?;
        let len = meta.len();
        if len != entry.size {
            return Err(Error::corrupt(
                &path,
                format!(
                    "adapter {name:?}: file has {len} bytes, the index says {}",
                    entry.size
                ),
            ));
        }
        if len == 0 {
            return Err(Error::corrupt(&path, "empty file"));
        }
        // SAFETY: a private mapping; store files are never modified in place (only created
        // by rename and unlinked), so the mapped bytes cannot change under us.
        let map = unsafe { MmapOptions::new().map_copy(&f) }.at(&path)?;
        let id = match verify {
            Verify::Once => file_id(&meta),
            Verify::Always => None,
        };
        Ok(Mapped {
            entry,
            path,
            map,
            id,
        })
    }

    pub fn list(&self, filter: &Filter) -> Result<Vec<Entry>> {
        let idx = self.read_index()?;
        Ok(idx
            .adapters
            .values()
            .filter(|e| filter.matches(e))
            .cloned()
            .collect())
    }

    /// Removes an adapter; returns whether it existed.
    pub fn delete(&self, name: &str) -> Result<bool> {
        let _lock = self.lock(true)?;
        let mut idx = (*self.read_index()?).clone();
        let Some(old) = idx.adapters.remove(name) else {
            return Ok(false);
        };
        self.write_index(&idx)?;
        self.remove_if_unreferenced(&idx, &old.file);
        Ok(true)
    }

    /// Checks every adapter (hash, structure, index agreement, optionally finiteness) and
    /// reports files that no adapter refers to. An empty list means the store is sound.
    pub fn verify(&self, check_finite: bool) -> Result<Vec<Problem>> {
        let idx = self.read_index()?;
        // One file at a time per thread (not all mapped at once as in `get_many`): a store may
        // be larger than memory.
        let entries: Vec<(&String, &Entry)> = idx.adapters.iter().collect();
        let mut problems: Vec<Problem> = entries
            .into_par_iter()
            .filter_map(|(name, e)| {
                let err = self.load(name, check_finite, Verify::Always).err()?;
                Some(Problem {
                    name: Some(name.clone()),
                    path: self.file_path(e),
                    message: err.to_string(),
                })
            })
            .collect();
        for p in self.unreferenced(&idx)? {
            problems.push(Problem {
                name: None,
                path: p,
                message: "file not referenced by the index (debris of an interrupted write; `compact` removes it)".into(),
            });
        }
        Ok(problems)
    }

    fn unreferenced(&self, idx: &Index) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for sub in ["adapters", "tmp"] {
            let dir = self.root.join(sub);
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&dir, e)),
            };
            for ent in rd {
                let ent = ent.at(&dir)?;
                let fname = ent.file_name().to_string_lossy().into_owned();
                if sub == "tmp" || !idx.adapters.values().any(|e| e.file == fname) {
                    out.push(ent.path());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes debris (temporary files, unreferenced adapter files) and rewrites the index.
    /// With `rebuild`, the index is reconstructed from the adapter files themselves (for an
    /// index that was lost or damaged): each valid file is re-hashed, and per name the newest wins.
    pub fn compact(&self, rebuild: bool) -> Result<CompactReport> {
        let _lock = self.lock(true)?;
        let mut report = CompactReport::default();
        let idx = if rebuild {
            let old = self.read_index().ok();
            let mut idx = Index::default();
            let dir = self.root.join("adapters");
            let mut files: Vec<PathBuf> = match fs::read_dir(&dir) {
                Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(Error::io(&dir, e)),
            };
            files.sort();
            for path in files {
                let fname = path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                if !index::valid_file_name(&fname) {
                    continue;
                }
                let Ok(buf) = fs::read(&path) else { continue };
                let Ok(parsed) = file::parse(&buf, &path, &self.limits, false) else {
                    continue;
                };
                let entry = Entry {
                    file: fname,
                    size: buf.len() as u64,
                    content_hash: content_hash(&buf),
                    info: parsed.info,
                };
                let newer = idx
                    .adapters
                    .get(&entry.info.name)
                    .is_none_or(|e| e.info.created < entry.info.created);
                if newer && index::check_name(&entry.info.name).is_ok() {
                    idx.adapters.insert(entry.info.name.clone(), entry);
                }
            }
            if let Some(old) = old {
                report.dropped = old
                    .adapters
                    .keys()
                    .filter(|k| !idx.adapters.contains_key(*k))
                    .cloned()
                    .collect();
            }
            idx
        } else {
            (*self.read_index()?).clone()
        };
        for p in self.unreferenced(&idx)? {
            if fs::remove_file(&p).is_ok() {
                report.removed_files.push(p);
            }
        }
        fs::create_dir_all(self.root.join("tmp")).at(self.root.join("tmp"))?;
        self.write_index(&idx)?;
        report.adapters = idx.adapters.len();
        Ok(report)
    }
}

/// Fingerprint of a base model: its configuration (volatile keys removed, keys sorted), its
/// parameter names, dtypes and shapes, and a sample of its weights (every byte of tensors up to
/// 1 MiB, 16 evenly spaced 4 KiB windows of larger ones) so that two checkpoints of one shape differ.
pub fn base_fingerprint(config: &Value, tensors: &[TensorIn<'_>]) -> String {
    const VOLATILE: [&str; 5] = [
        "_name_or_path",
        "name_or_path",
        "transformers_version",
        "_commit_hash",
        "torch_dtype",
    ];
    fn canon(v: &Value, top: bool) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: std::collections::BTreeMap<&String, Value> = m
                    .iter()
                    .filter(|(k, _)| !(top && VOLATILE.contains(&k.as_str())))
                    .map(|(k, v)| (k, canon(v, false)))
                    .collect();
                Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(|x| canon(x, false)).collect()),
            other => other.clone(),
        }
    }
    let mut h = blake3::Hasher::new();
    h.update(b"ssm-offset base fingerprint v1\0");
    h.update(canon(config, true).to_string().as_bytes());
    let mut order: Vec<&TensorIn> = tensors.iter().collect();
    order.sort_by(|a, b| a.name.cmp(&b.name));
    for t in order {
        h.update(format!("\0{}\0{}\0{:?}\0", t.name, t.dtype, t.shape).as_bytes());
        const WHOLE: usize = 1 << 20;
        const WINDOW: usize = 4096;
        const WINDOWS: usize = 16;
        if t.data.len() <= WHOLE {
            h.update(t.data);
        } else {
            let step = (t.data.len() - WINDOW) / (WINDOWS - 1);
            for i in 0..WINDOWS {
                h.update(&t.data[i * step..i * step + WINDOW]);
            }
        }
    }
    format!("fp1-{}", &h.finalize().to_hex()[..32])
}
