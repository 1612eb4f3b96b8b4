//! From a dataset's official train/test files to the three splits the method needs.
//!
//! - train pool = the official training images; test = the official test images.
//! - eval = the first `eval_size` images of the train pool in a seeded shuffle (ChaCha8), never
//!   taken from test; validation = the next `val_size` images of the same shuffle (the job's
//!   decisions read it); train = the rest of the pool, in the shuffled order. The three are
//!   disjoint, and eval is the same whatever `val_size` is.
//! - `train_limit` keeps the first images of that train remainder (a uniform random subset),
//!   so eval is the same whatever the limit; `test_limit` keeps a seeded random subset of test.
//!
//! The same [`DatasetSpec`] gives the same bytes on every machine that has the same files: this
//! is how the master and its workers agree on the data without shipping it.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::synthetic::{self, SyntheticConfig, SyntheticSplit};
use super::{cifar, folder, idx, svhn, DataError, DatasetKind, ImageSet, Splits};

/// How the splits are cut from a dataset's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitOptions {
    /// Images held out of the training data as the eval (fitness) split.
    pub eval_size: usize,
    /// Images held out of the training data, after eval, as the validation split.
    pub val_size: usize,
    /// Seed of the hold-out and subset shuffles (and of the synthetic images).
    pub seed: u64,
    /// Keep at most this many training images (after the hold-out); `None` keeps all.
    pub train_limit: Option<usize>,
    /// Keep at most this many test images (a seeded random subset); `None` keeps all.
    pub test_limit: Option<usize>,
}

impl Default for SplitOptions {
    fn default() -> Self {
        SplitOptions {
            eval_size: 1_000,
            val_size: 1_000,
            seed: 0,
            train_limit: None,
            test_limit: None,
        }
    }
}

/// A dataset as a job file names it: enough for any worker to load exactly the master's splits.
///
/// TOML: `kind = "cifar10"`, `data_dir = "/data/cifar-10-batches-bin"`, `eval_size = 1000`,
/// `val_size = 1000`, `seed = 0`, `train_limit = 5000`, `test_limit = 2000`; every field but `kind` may be omitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetSpec {
    pub kind: DatasetKind,
    /// Where the files are; `None` uses the kind's default ([`DatasetKind::resolve_dir`]).
    pub data_dir: Option<PathBuf>,
    pub eval_size: usize,
    pub val_size: usize,
    pub seed: u64,
    pub train_limit: Option<usize>,
    pub test_limit: Option<usize>,
}

impl Default for DatasetSpec {
    /// The built-in synthetic dataset with the default split options.
    fn default() -> Self {
        DatasetSpec::new(DatasetKind::Synthetic, None)
    }
}

impl DatasetSpec {
    /// The split options this spec carries.
    pub fn split_options(&self) -> SplitOptions {
        SplitOptions {
            eval_size: self.eval_size,
            val_size: self.val_size,
            seed: self.seed,
            train_limit: self.train_limit,
            test_limit: self.test_limit,
        }
    }

    /// A spec for `kind` with the default split options.
    pub fn new(kind: DatasetKind, data_dir: Option<PathBuf>) -> Self {
        let options = SplitOptions::default();
        DatasetSpec {
            kind,
            data_dir,
            eval_size: options.eval_size,
            val_size: options.val_size,
            seed: options.seed,
            train_limit: options.train_limit,
            test_limit: options.test_limit,
        }
    }

    /// Loads the splits this spec describes.
    pub fn load(&self) -> Result<Splits, DataError> {
        load_splits(self.kind, self.data_dir.as_deref(), &self.split_options())
    }
}

/// Loads dataset `kind` from `data_dir` (or the kind's default) and cuts train / eval / test.
pub fn load_splits(
    kind: DatasetKind,
    data_dir: Option<&Path>,
    options: &SplitOptions,
) -> Result<Splits, DataError> {
    let dir = kind.resolve_dir(data_dir)?;
    let dir = dir.as_deref().unwrap_or(Path::new(""));
    let (pool, test) = match kind {
        DatasetKind::Synthetic => {
            let config = SyntheticConfig::default();
            let generate = |count, split| {
                synthetic::generate(count, config.height, config.width, options.seed, split)
            };
            (
                generate(config.train, SyntheticSplit::Train),
                generate(config.test, SyntheticSplit::Test),
            )
        }
        DatasetKind::FashionMnist => idx::load_dir(dir, &idx::FASHION_MNIST_CLASSES)?,
        DatasetKind::Mnist => idx::load_dir(dir, &idx::MNIST_CLASSES)?,
        DatasetKind::Cifar10 => cifar::load_dir(dir)?,
        DatasetKind::Svhn => svhn::load_dir(dir)?,
        DatasetKind::Folder => folder::load_train_test(dir)?,
    };
    let splits = cut(pool, test, options)?;
    tracing::info!(
        dataset = %kind,
        train = splits.train.len(),
        eval = splits.eval.len(),
        validation = splits.validation.len(),
        test = splits.test.len(),
        shape = ?(splits.train.channels, splits.train.height, splits.train.width),
        "dataset loaded"
    );
    Ok(splits)
}

/// Holds eval and validation out of `pool` and applies the limits (the module doc gives the rule).
pub fn cut(pool: ImageSet, test: ImageSet, options: &SplitOptions) -> Result<Splits, DataError> {
    let held_out = options.eval_size.saturating_add(options.val_size);
    if held_out >= pool.len() {
        return Err(DataError::Option {
            field: "eval_size",
            reason: format!(
                "eval_size {} + val_size {} must be smaller than the {} training images, to leave \
                 some to train on",
                options.eval_size,
                options.val_size,
                pool.len()
            ),
        });
    }
    if options.val_size == 0 {
        return Err(DataError::Option {
            field: "val_size",
            reason: "must be at least 1: the job's decisions read the validation split".to_string(),
        });
    }
    if options.eval_size == 0 {
        return Err(DataError::Option {
            field: "eval_size",
            reason: "must be at least 1: fitness is counted on the eval split".to_string(),
        });
    }
    for (field, limit) in [
        ("train_limit", options.train_limit),
        ("test_limit", options.test_limit),
    ] {
        if limit == Some(0) {
            return Err(DataError::Option {
                field,
                reason: "must be at least 1 (omit it to keep every image)".to_string(),
            });
        }
    }

    let mut order: Vec<usize> = (0..pool.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(options.seed));
    let (eval_indices, rest) = order.split_at(options.eval_size);
    let (validation_indices, train_indices) = rest.split_at(options.val_size);
    let train_keep = options
        .train_limit
        .unwrap_or(usize::MAX)
        .min(train_indices.len());
    let eval = pool.select(eval_indices);
    let validation = pool.select(validation_indices);
    let train = pool.select(&train_indices[..train_keep]);

    let test = match options.test_limit {
        Some(limit) if limit < test.len() => {
            let mut order: Vec<usize> = (0..test.len()).collect();
            // A stream of its own, so the test subset does not move with the pool's size.
            let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
            rng.set_stream(1);
            order.shuffle(&mut rng);
            test.select(&order[..limit])
        }
        _ => test,
    };
    Ok(Splits {
        train,
        eval,
        validation,
        test,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` one-channel 1x2 images whose pixels spell their index, labels `i % 3`.
    fn numbered(n: usize) -> ImageSet {
        ImageSet {
            channels: 1,
            height: 1,
            width: 2,
            pixels: (0..n).flat_map(|i| [i as u8, (i >> 8) as u8]).collect(),
            labels: (0..n).map(|i| (i % 3) as u32).collect(),
            class_names: vec!["a".into(), "b".into(), "c".into()],
        }
    }

    fn ids(set: &ImageSet) -> Vec<usize> {
        (0..set.len())
            .map(|i| set.image(i)[0] as usize | (set.image(i)[1] as usize) << 8)
            .collect()
    }

    fn options(eval_size: usize, seed: u64) -> SplitOptions {
        SplitOptions {
            eval_size,
            val_size: 5,
            seed,
            ..SplitOptions::default()
        }
    }

    #[test]
    fn eval_validation_and_train_are_disjoint_and_cover_the_pool() {
        let splits = cut(numbered(100), numbered(10), &options(30, 0)).unwrap();
        let (mut train, eval) = (ids(&splits.train), ids(&splits.eval));
        let validation = ids(&splits.validation);
        assert_eq!((train.len(), eval.len(), validation.len()), (65, 30, 5));
        train.extend(&eval);
        train.extend(&validation);
        train.sort();
        assert_eq!(train, (0..100).collect::<Vec<_>>());
        assert_eq!(ids(&splits.test), (0..10).collect::<Vec<_>>());
        for (i, id) in ids(&splits.eval).into_iter().enumerate() {
            assert_eq!(
                splits.eval.labels[i] as usize,
                id % 3,
                "label moved away from its image"
            );
        }
    }

    #[test]
    fn the_same_seed_cuts_the_same_splits_and_another_seed_differs() {
        let a = cut(numbered(100), numbered(5), &options(20, 1)).unwrap();
        let b = cut(numbered(100), numbered(5), &options(20, 1)).unwrap();
        let c = cut(numbered(100), numbered(5), &options(20, 2)).unwrap();
        assert_eq!(a, b);
        assert_ne!(ids(&a.eval), ids(&c.eval));
    }

    #[test]
    fn limits_shrink_train_and_test_but_leave_eval_unchanged() {
        let full = options(10, 0);
        let limited = SplitOptions {
            train_limit: Some(25),
            test_limit: Some(4),
            ..full.clone()
        };
        let a = cut(numbered(100), numbered(50), &full).unwrap();
        let b = cut(numbered(100), numbered(50), &limited).unwrap();
        assert_eq!(a.eval, b.eval);
        assert_eq!(ids(&b.train), ids(&a.train)[..25]);
        assert_eq!(b.test.len(), 4);
        assert_ne!(
            ids(&b.test),
            vec![0, 1, 2, 3],
            "test subset must be random, not a prefix"
        );
    }

    #[test]
    fn eval_size_must_leave_training_images() {
        let err = cut(numbered(100), numbered(5), &options(100, 0)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("eval_size") && msg.contains("100 training images"),
            "{msg}"
        );
        assert!(cut(numbered(100), numbered(5), &options(0, 0)).is_err());
        let no_validation = SplitOptions {
            val_size: 0,
            ..options(10, 0)
        };
        let msg = cut(numbered(100), numbered(5), &no_validation)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("val_size"), "{msg}");
    }

    #[test]
    fn eval_stays_the_same_whatever_the_validation_size() {
        let small = cut(numbered(100), numbered(5), &options(20, 3)).unwrap();
        let large = SplitOptions {
            val_size: 40,
            ..options(20, 3)
        };
        let large = cut(numbered(100), numbered(5), &large).unwrap();
        assert_eq!(small.eval, large.eval);
        assert_eq!(ids(&small.validation), ids(&large.validation)[..5]);
    }

    #[test]
    fn synthetic_is_the_default_and_loads_without_files() {
        let splits = DatasetSpec::default().load().unwrap();
        let sizes = (
            splits.train.len(),
            splits.eval.len(),
            splits.validation.len(),
            splits.test.len(),
        );
        assert_eq!(sizes, (4_000, 1_000, 1_000, 1_000));
    }

    #[test]
    fn a_spec_deserialises_with_defaults_and_rejects_unknown_fields() {
        let spec: DatasetSpec =
            serde_json::from_str(r#"{"kind": "cifar10", "data_dir": "/data", "train_limit": 500}"#)
                .unwrap();
        assert_eq!(spec.kind, DatasetKind::Cifar10);
        assert_eq!(spec.data_dir, Some(PathBuf::from("/data")));
        assert_eq!(spec.eval_size, 1_000);
        assert_eq!(spec.train_limit, Some(500));
        let typo = serde_json::from_str::<DatasetSpec>(r#"{"kind": "svhn", "eval": 3}"#);
        let typo = typo.unwrap_err().to_string();
        assert!(typo.contains("unknown field `eval`"), "{typo}");
        let kind = serde_json::from_str::<DatasetSpec>(r#"{"kind": "cifar"}"#);
        assert!(kind.unwrap_err().to_string().contains("cifar10"));
    }
}
