//! One error type for the crate. Every variant that comes from a file names it (and the line,
//! for line-oriented data) so that the message alone tells a user what to fix.
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused an operation on a file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is invalid: a truncated or corrupt safetensors file, an index
    /// that does not match the files, a content hash that does not match.
    #[error("{}: {msg}", path.display())]
    Corrupt { path: PathBuf, msg: String },
    /// One line (or record) of a data file is invalid.
    #[error("{}:{line}: {msg}", path.display())]
    Data {
        path: PathBuf,
        line: u64,
        msg: String,
    },
    /// An argument is invalid (a bad template, a shape that does not match its bytes, ...).
    #[error("{0}")]
    Invalid(String),
    /// No adapter of that name in the store.
    #[error("no adapter named {name:?} in the store at {}", root.display())]
    NotFound { name: String, root: PathBuf },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
    pub fn corrupt(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn data(path: impl AsRef<Path>, line: u64, msg: impl Into<String>) -> Self {
        Error::Data {
            path: path.as_ref().to_path_buf(),
            line,
            msg: msg.into(),
        }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}

/// Attaches a path to `std::io` results.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
