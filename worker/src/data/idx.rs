//! IDX files (MNIST, Fashion-MNIST): `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//! `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each plain or gzipped (`.gz`; detected by
//! the gzip magic bytes, whatever the name).
//!
//! Format: big-endian magic `0x0000 08 NN` (unsigned bytes, NN dimensions), NN big-endian u32
//! dimensions, then the bytes. Images are `[n, rows, cols]`, grey: one channel. Labels `[n]`.
//! Sizes are checked against the header before anything large is allocated.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::{DataError, ImageSet};

/// MNIST's classes: the digits.
pub const MNIST_CLASSES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Fashion-MNIST's classes, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Loads the official train and test sets from `dir` (names as published, `.gz` or not).
pub fn load_dir(dir: &Path, class_names: &[&str]) -> Result<(ImageSet, ImageSet), DataError> {
    let train = load(
        &find(dir, "train-images-idx3-ubyte")?,
        &find(dir, "train-labels-idx1-ubyte")?,
        class_names,
    )?;
    let test = load(
        &find(dir, "t10k-images-idx3-ubyte")?,
        &find(dir, "t10k-labels-idx1-ubyte")?,
        class_names,
    )?;
    Ok((train, test))
}

/// `dir/name.gz` if present, else `dir/name` if present, else a `Missing` error naming both.
fn find(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    let gz = dir.join(format!("{name}.gz"));
    let plain = dir.join(name);
    if gz.is_file() {
        Ok(gz)
    } else if plain.is_file() {
        Ok(plain)
    } else {
        Err(DataError::Missing {
            path: plain,
            expected: format!("the IDX file {name} or {name}.gz"),
        })
    }
}

/// Loads one IDX image file and its label file; labels must be below `class_names.len()`.
pub fn load(images: &Path, labels: &Path, class_names: &[&str]) -> Result<ImageSet, DataError> {
    let (image_dims, pixels) = read(
        images,
        IMAGES_MAGIC,
        "IDX images: unsigned bytes, 3 dimensions",
    )?;
    let (label_dims, label_bytes) = read(
        labels,
        LABELS_MAGIC,
        "IDX labels: unsigned bytes, 1 dimension",
    )?;
    let [count, height, width] = image_dims[..] else {
        return Err(DataError::corrupt(images, "expected 3 dimensions"));
    };
    if height == 0 || width == 0 {
        return Err(DataError::corrupt(
            images,
            format!("images of {height}x{width} pixels (expected at least 1x1)"),
        ));
    }
    if label_dims[0] != count {
        return Err(DataError::Inconsistent {
            path: labels.to_path_buf(),
            reason: format!(
                "{} labels, but {} holds {count} images",
                label_dims[0],
                images.display()
            ),
        });
    }
    let labels_u32 = label_bytes
        .iter()
        .enumerate()
        .map(|(index, &label)| {
            if (label as usize) < class_names.len() {
                Ok(label as u32)
            } else {
                Err(DataError::LabelOutOfRange {
                    path: labels.to_path_buf(),
                    index,
                    label: label as u64,
                    classes: class_names.len(),
                })
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ImageSet {
        channels: 1,
        height,
        width,
        pixels,
        labels: labels_u32,
        class_names: class_names.iter().map(|s| s.to_string()).collect(),
    })
}

/// Reads one IDX file: its dimensions and its data, exactly as many bytes as they promise.
fn read(path: &Path, magic: u32, what: &'static str) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let io = |e| DataError::io(path, e, what);
    let mut file = File::open(path).map_err(io)?;
    let file_size = file.metadata().map_err(io)?.len();
    let mut head = [0u8; 2];
    let gzipped = file.read_exact(&mut head).is_ok() && head == GZIP_MAGIC;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let file = BufReader::new(file);
    let mut reader: Box<dyn Read> = if gzipped {
        Box::new(GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    // `expected` counts decompressed bytes for a gzipped file: the size the IDX data must have.
    let fail = |e: std::io::Error, expected: u64| match e.kind() {
        _ if gzipped => DataError::corrupt(path, format!("gzip stream: {e}")),
        std::io::ErrorKind::UnexpectedEof => DataError::Truncated {
            path: path.to_path_buf(),
            expected,
            found: file_size,
        },
        _ => io(e),
    };

    let mut word = [0u8; 4];
    reader.read_exact(&mut word).map_err(|e| fail(e, 4))?;
    let found = u32::from_be_bytes(word);
    if found != magic {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found,
            expected: magic,
            what,
        });
    }
    let ndims = (magic & 0xff) as usize;
    let header = 4 + 4 * ndims as u64;
    let mut dims = Vec::with_capacity(ndims);
    let mut payload: u64 = 1;
    for _ in 0..ndims {
        reader.read_exact(&mut word).map_err(|e| fail(e, header))?;
        let dim = u32::from_be_bytes(word);
        payload = payload
            .checked_mul(u64::from(dim))
            .ok_or_else(|| DataError::corrupt(path, "dimensions overflow"))?;
        dims.push(dim as usize);
    }
    let expected = header + payload;
    if !gzipped && file_size < expected {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected,
            found: file_size,
        });
    }
    // A forged header must not make us allocate gigabytes up front: reserve what the file can
    // plausibly hold (gzip expands these files less than 8x), then grow as data actually arrives.
    let reserve = payload.min(file_size.saturating_mul(8));
    let mut data = Vec::with_capacity(usize::try_from(reserve).unwrap_or(0));
    reader
        .by_ref()
        .take(payload)
        .read_to_end(&mut data)
        .map_err(|e| fail(e, expected))?;
    if (data.len() as u64) < payload {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected,
            found: header + data.len() as u64,
        });
    }
    let mut extra = [0u8; 1];
    if reader.read(&mut extra).map_err(|e| fail(e, expected))? > 0 {
        return Err(DataError::corrupt(
            path,
            format!("data after the {payload} bytes its header {dims:?} promises"),
        ));
    }
    Ok((dims, data))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = magic.to_be_bytes().to_vec();
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    /// Writes a 3-image 2x3 set (`prefix`-images/-labels) into `dir`, gzipped or not.
    fn write_set(dir: &Path, prefix: &str, gz: bool, labels: &[u8]) {
        let pixels: Vec<u8> = (0..labels.len() as u8 * 6).collect();
        let images = idx_bytes(IMAGES_MAGIC, &[labels.len() as u32, 2, 3], &pixels);
        let label_file = idx_bytes(LABELS_MAGIC, &[labels.len() as u32], labels);
        let suffix = if gz { ".gz" } else { "" };
        let encode = |b: Vec<u8>| if gz { gzip(&b) } else { b };
        std::fs::write(
            dir.join(format!("{prefix}-images-idx3-ubyte{suffix}")),
            encode(images),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte{suffix}")),
            encode(label_file),
        )
        .unwrap();
    }

    #[test]
    fn plain_and_gzipped_files_load_the_same_images() {
        for gz in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            write_set(dir.path(), "train", gz, &[3, 0, 9]);
            write_set(dir.path(), "t10k", gz, &[1, 2]);
            let (train, test) = load_dir(dir.path(), &MNIST_CLASSES).unwrap();
            assert_eq!((train.channels, train.height, train.width), (1, 2, 3));
            assert_eq!(train.labels, vec![3, 0, 9]);
            assert_eq!(train.pixels, (0..18).collect::<Vec<u8>>());
            assert_eq!(test.len(), 2);
            assert_eq!(test.class_names[0], "0");
        }
    }

    #[test]
    fn a_gzipped_file_without_the_gz_extension_is_detected_by_its_magic() {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path(), "train", true, &[1]);
        let images = dir.path().join("images");
        let labels = dir.path().join("labels");
        std::fs::rename(dir.path().join("train-images-idx3-ubyte.gz"), &images).unwrap();
        std::fs::rename(dir.path().join("train-labels-idx1-ubyte.gz"), &labels).unwrap();
        assert_eq!(
            load(&images, &labels, &MNIST_CLASSES).unwrap().labels,
            vec![1]
        );
    }

    #[test]
    fn swapped_files_are_a_wrong_magic_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path(), "train", false, &[1, 2, 3]);
        let images = dir.path().join("train-images-idx3-ubyte");
        let labels = dir.path().join("train-labels-idx1-ubyte");
        let err = load(&labels, &images, &MNIST_CLASSES).unwrap_err();
        assert!(
            matches!(err, DataError::BadMagic { found: 0x801, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("train-labels-idx1-ubyte"), "{err}");
    }

    #[test]
    fn a_short_file_is_truncated_and_a_long_one_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path(), "train", false, &[1, 2, 3]);
        let images = dir.path().join("train-images-idx3-ubyte");
        let labels = dir.path().join("train-labels-idx1-ubyte");
        let full = std::fs::read(&images).unwrap();
        std::fs::write(&images, &full[..full.len() - 1]).unwrap();
        let err = load(&images, &labels, &MNIST_CLASSES).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::Truncated {
                    expected: 34,
                    found: 33,
                    ..
                }
            ),
            "{err}"
        );
        std::fs::write(&images, [&full[..], &[0]].concat()).unwrap();
        let err = load(&images, &labels, &MNIST_CLASSES).unwrap_err();
        assert!(matches!(err, DataError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn a_truncated_gzip_stream_is_an_error_not_a_short_set() {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path(), "train", true, &[1, 2, 3]);
        let images = dir.path().join("train-images-idx3-ubyte.gz");
        let full = std::fs::read(&images).unwrap();
        std::fs::write(&images, &full[..full.len() - 12]).unwrap();
        let labels = dir.path().join("train-labels-idx1-ubyte.gz");
        let err = load(&images, &labels, &MNIST_CLASSES).unwrap_err();
        assert!(
            err.to_string().contains("train-images-idx3-ubyte.gz"),
            "{err}"
        );
    }

    #[test]
    fn a_forged_header_is_rejected_without_a_huge_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images.gz");
        let forged = idx_bytes(IMAGES_MAGIC, &[u32::MAX, 60_000, 60_000], &[0; 10]);
        std::fs::write(&images, gzip(&forged)).unwrap();
        let labels = dir.path().join("labels");
        std::fs::write(&labels, idx_bytes(LABELS_MAGIC, &[1], &[0])).unwrap();
        let err = load(&images, &labels, &MNIST_CLASSES).unwrap_err();
        assert!(
            matches!(err, DataError::Truncated { .. } | DataError::Corrupt { .. }),
            "{err}"
        );
    }

    #[test]
    fn image_and_label_counts_must_match() {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path(), "train", false, &[1, 2, 3]);
        write_set(dir.path(), "other", false, &[1, 2]);
        let err = load(
            &dir.path().join("train-images-idx3-ubyte"),
            &dir.path().join("other-labels-idx1-ubyte"),
            &MNIST_CLASSES,
        )
        .unwrap_err();
        assert!(matches!(err, DataError::Inconsistent { .. }), "{err}");
        assert!(
            err.to_string().contains("2 labels") && err.to_string().contains("3 images"),
            "{err}"
        );
    }

    #[test]
    fn a_label_beyond_the_classes_is_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path(), "train", false, &[1, 10, 3]);
        let err = load(
            &dir.path().join("train-images-idx3-ubyte"),
            &dir.path().join("train-labels-idx1-ubyte"),
            &MNIST_CLASSES,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                DataError::LabelOutOfRange {
                    index: 1,
                    label: 10,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_missing_file_names_both_accepted_names() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_dir(dir.path(), &MNIST_CLASSES).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("train-images-idx3-ubyte or train-images-idx3-ubyte.gz"),
            "{msg}"
        );
    }

    /// The real Fashion-MNIST files of Debian's `dataset-fashion-mnist` package (CI installs it).
    #[test]
    fn real_fashion_mnist_loads_60000_train_and_10000_test_images() {
        let (train, test) = load_dir(
            Path::new(crate::data::kind::FASHION_MNIST_DIR),
            &FASHION_MNIST_CLASSES,
        )
        .expect("Fashion-MNIST: apt-get install -y dataset-fashion-mnist");
        assert_eq!((train.len(), test.len()), (60_000, 10_000));
        assert_eq!((train.channels, train.height, train.width), (1, 28, 28));
        assert_eq!(train.class_counts(), vec![6_000; 10]);
        assert_eq!(test.class_counts(), vec![1_000; 10]);
    }
}
