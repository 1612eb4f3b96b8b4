//! The one error type of every dataset loader: each variant names the file (or option) at fault
//! and what was expected, so a user can fix the input without reading the code.

use std::path::PathBuf;

/// Why a dataset could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory the format requires is absent.
    #[error("{path}: not found (expected {expected})", path = path.display())]
    Missing { path: PathBuf, expected: String },

    /// The operating system refused a read.
    #[error("{path}: cannot read: {source}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file ends before the data its header or format promises.
    #[error("{path}: truncated: expected {expected} bytes, found {found}", path = path.display())]
    Truncated {
        path: PathBuf,
        expected: u64,
        found: u64,
    },

    /// A file of fixed-size records whose length is not a whole number of records.
    #[error(
        "{path}: size {size} bytes is not a multiple of the {record}-byte record",
        path = path.display()
    )]
    RecordSize {
        path: PathBuf,
        size: u64,
        record: u64,
    },

    /// The leading magic number is not the format's.
    #[error("{path}: wrong magic number {found:#010x} (expected {expected:#010x}: {what})", path = path.display())]
    BadMagic {
        path: PathBuf,
        found: u32,
        expected: u32,
        what: &'static str,
    },

    /// The bytes do not follow the format (bad header field, undecodable compression, ...).
    #[error("{path}: corrupt: {reason}", path = path.display())]
    Corrupt { path: PathBuf, reason: String },

    /// A record's label is not one of the dataset's classes.
    #[error(
        "{path}: label {label} of image {index} is out of range (expected 0..{classes})",
        path = path.display()
    )]
    LabelOutOfRange {
        path: PathBuf,
        index: usize,
        label: u64,
        classes: usize,
    },

    /// Two files that must describe the same images disagree (counts, class lists).
    #[error("{path}: {reason}", path = path.display())]
    Inconsistent { path: PathBuf, reason: String },

    /// A file inside an image folder that is not a decodable PNG or JPEG.
    #[error("{path}: not an image: {reason}", path = path.display())]
    NotAnImage { path: PathBuf, reason: String },

    /// An image whose size differs from the first image of its dataset.
    #[error(
        "{path}: image is {found_w}x{found_h}, but {first} is {w}x{h}: every image must share one size",
        path = path.display(),
        first = first.display()
    )]
    ImageSize {
        path: PathBuf,
        found_w: u32,
        found_h: u32,
        first: PathBuf,
        w: u32,
        h: u32,
    },

    /// A directory that holds no images at all.
    #[error("{path}: no images found (expected {expected})", path = path.display())]
    Empty { path: PathBuf, expected: String },

    /// The dataset needs a data directory and none was given.
    #[error("dataset {kind} needs a data directory (--data-dir or data_dir): {expected}")]
    NoDataDir { kind: String, expected: String },

    /// A dataset name that is not one of the known kinds.
    #[error("unknown dataset {given:?}: expected one of {choices}")]
    UnknownKind { given: String, choices: String },

    /// A split option that cannot be satisfied by the data (e.g. eval_size larger than train).
    #[error("dataset option {field}: {reason}")]
    Option { field: &'static str, reason: String },
}

impl DataError {
    /// Wraps an I/O error with the path it happened on; a missing file becomes [`DataError::Missing`].
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error, expected: &str) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::Missing {
                path,
                expected: expected.to_string(),
            }
        } else {
            DataError::Io { path, source }
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        DataError::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
