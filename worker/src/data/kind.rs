//! The dataset names users type (`--dataset D`, `kind = "..."` in a job file).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::DataError;

/// Which loader reads a dataset. Serialised lower-case with hyphens, as on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// Built in, procedurally generated from the seed: the offline default.
    #[default]
    Synthetic,
    /// Fashion-MNIST IDX files (gzipped or not); default directory [`FASHION_MNIST_DIR`].
    FashionMnist,
    /// MNIST IDX files (gzipped or not).
    Mnist,
    /// CIFAR-10 binary batches (`cifar-10-batches-bin/`, or its parent).
    Cifar10,
    /// SVHN cropped digits, format 2 (`train_32x32.mat`, `test_32x32.mat`).
    Svhn,
    /// Image folders `DIR/train/<class>/*` and `DIR/test/<class>/*` (PNG or JPEG).
    Folder,
}

/// Where Debian's `dataset-fashion-mnist` package installs the four IDX files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

impl DatasetKind {
    /// Every kind, in the order help texts list them.
    pub const ALL: [DatasetKind; 6] = [
        DatasetKind::Synthetic,
        DatasetKind::FashionMnist,
        DatasetKind::Mnist,
        DatasetKind::Cifar10,
        DatasetKind::Svhn,
        DatasetKind::Folder,
    ];

    /// The name users type.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Synthetic => "synthetic",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Mnist => "mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Svhn => "svhn",
            DatasetKind::Folder => "folder",
        }
    }

    /// The directory to read when the user names none, or an error saying what to pass.
    /// `synthetic` reads no files: it returns `Ok(None)`.
    pub fn resolve_dir(self, given: Option<&Path>) -> Result<Option<PathBuf>, DataError> {
        let expected = match self {
            DatasetKind::Synthetic => return Ok(None),
            DatasetKind::FashionMnist => {
                let dir = given.unwrap_or(Path::new(FASHION_MNIST_DIR));
                return Ok(Some(dir.to_path_buf()));
            }
            DatasetKind::Mnist => {
                "the directory holding train-images-idx3-ubyte[.gz] and the other three IDX files"
            }
            DatasetKind::Cifar10 => "cifar-10-batches-bin/ or its parent",
            DatasetKind::Svhn => "the directory holding train_32x32.mat and test_32x32.mat",
            DatasetKind::Folder => {
                "a directory with train/<class>/ and test/<class>/ image folders"
            }
        };
        match given {
            Some(dir) => Ok(Some(dir.to_path_buf())),
            None => Err(DataError::NoDataDir {
                kind: self.name().to_string(),
                expected: expected.to_string(),
            }),
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DatasetKind::ALL
            .into_iter()
            .find(|kind| kind.name() == s)
            .ok_or_else(|| DataError::UnknownKind {
                given: s.to_string(),
                choices: DatasetKind::ALL
                    .iter()
                    .map(|kind| kind.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_from_its_name_and_serialises_to_it() {
        for kind in DatasetKind::ALL {
            assert_eq!(kind.name().parse::<DatasetKind>().ok(), Some(kind));
            let json = serde_json::to_string(&kind).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", kind.name()));
            assert_eq!(kind.to_string(), kind.name());
        }
    }

    #[test]
    fn unknown_kind_error_lists_the_choices() {
        let err = "cifar-100"
            .parse::<DatasetKind>()
            .err()
            .map(|e| e.to_string());
        let msg = err.unwrap_or_default();
        assert!(msg.contains("\"cifar-100\""), "{msg}");
        assert!(
            msg.contains("synthetic, fashion-mnist, mnist, cifar10, svhn, folder"),
            "{msg}"
        );
    }

    #[test]
    fn fashion_mnist_defaults_to_the_debian_package_directory() {
        let dir = DatasetKind::FashionMnist.resolve_dir(None).ok().flatten();
        assert_eq!(dir, Some(PathBuf::from(FASHION_MNIST_DIR)));
    }

    #[test]
    fn file_datasets_without_a_directory_say_what_to_pass() {
        let err = DatasetKind::Cifar10
            .resolve_dir(None)
            .err()
            .map(|e| e.to_string());
        let msg = err.unwrap_or_default();
        assert!(
            msg.contains("cifar10") && msg.contains("--data-dir"),
            "{msg}"
        );
    }
}
