//! Datasets as in-memory u8 images (the one form every loader produces and the worker shards).
//!
//! Contract shared by the loaders, training, attacks and the worker loop:
//! - [`ImageSet`]: N images, each C x H x W u8 pixels in CHW order (channel planes, rows, columns),
//!   labels 0..classes. Pixel value p means intensity p/255; normalisation belongs to the model.
//! - [`Splits`]: train, eval (held out of the training data: the fitness data), test. Deterministic.
//! - Shards of a split are index ranges, cut by `ccsrp_proto::shard::shard_range`.
//!
//! Map:
//! - [`kind`]: [`DatasetKind`], the names users type (`synthetic`, `fashion-mnist`, `mnist`,
//!   `cifar10`, `svhn`, `folder`) and each kind's default directory.
//! - [`splits`]: [`load_splits`] and [`DatasetSpec`]: official train/test files -> train, eval
//!   (held out of train by a seeded shuffle), test; optional limits.
//! - Loaders, one format a file, each returning [`ImageSet`]s: [`synthetic`] (built in, from a
//!   seed), [`idx`] (MNIST, Fashion-MNIST), [`cifar`] (CIFAR-10 binary), [`svhn`] (format 2 .mat,
//!   read by [`mat`]), [`folder`] (one sub-folder of PNG/JPEG per class).
//! - [`error`]: [`DataError`], which names the file and what was wrong; loaders never panic on
//!   bad input and never allocate more than the bytes actually present justify.

pub mod cifar;
pub mod error;
pub mod folder;
pub mod idx;
pub mod kind;
pub mod mat;
pub mod splits;
pub mod svhn;
pub mod synthetic;

pub use error::DataError;
pub use kind::DatasetKind;
pub use splits::{load_splits, DatasetSpec, SplitOptions};

/// Images and labels of one split.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// N * C * H * W bytes, CHW order per image.
    pub pixels: Vec<u8>,
    pub labels: Vec<u32>,
    /// Class names in label order.
    pub class_names: Vec<String>,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes of one image.
    pub fn image_bytes(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_bytes();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// The images at `indices`, in that order, as a new set (same shape and class names).
    ///
    /// Panics if an index is out of range: indices come from the caller's own arithmetic on
    /// `len()`, never from input.
    pub fn select(&self, indices: &[usize]) -> ImageSet {
        let n = self.image_bytes();
        let mut pixels = Vec::with_capacity(indices.len() * n);
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        ImageSet {
            channels: self.channels,
            height: self.height,
            width: self.width,
            pixels,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            class_names: self.class_names.clone(),
        }
    }

    /// Images per class, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.class_names.len()];
        for &label in &self.labels {
            if let Some(count) = counts.get_mut(label as usize) {
                *count += 1;
            }
        }
        counts
    }

    /// The images in `range`, as a new set (same shape and class names).
    pub fn slice(&self, range: std::ops::Range<usize>) -> ImageSet {
        let n = self.image_bytes();
        ImageSet {
            channels: self.channels,
            height: self.height,
            width: self.width,
            pixels: self.pixels[range.start * n..range.end * n].to_vec(),
            labels: self.labels[range].to_vec(),
            class_names: self.class_names.clone(),
        }
    }
}

/// The three splits of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Splits {
    pub train: ImageSet,
    /// Held out of the training data; fitness is counted on it, never on `test`.
    pub eval: ImageSet,
    /// Held out of the training data after `eval`; the job's decisions (the stop rule) read it.
    pub validation: ImageSet,
    /// Measured for the record only: no decision reads it.
    pub test: ImageSet,
}
