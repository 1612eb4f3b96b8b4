//! CIFAR-10 binary batches (`cifar-10-batches-bin/`): `data_batch_1.bin` .. `data_batch_5.bin`
//! (train), `test_batch.bin` (test), `batches.meta.txt` (class names, one a line).
//!
//! A batch is a run of 3,073-byte records: one label byte, then 3,072 pixel bytes (the 32x32 red
//! plane, green, blue, each row-major), which is already our CHW order. The official files hold
//! 10,000 records each; any whole number of records is accepted.

use std::path::{Path, PathBuf};

use super::{DataError, ImageSet};

/// CIFAR-10's classes in label order (used when `batches.meta.txt` is absent).
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

const SIDE: usize = 32;
const PIXELS: usize = 3 * SIDE * SIDE;
/// Bytes of one record: label + pixels.
pub const RECORD: usize = 1 + PIXELS;

const TRAIN_BATCHES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
const TEST_BATCH: &str = "test_batch.bin";

/// Loads the official train (five batches) and test sets from `dir`, which is either
/// `cifar-10-batches-bin/` itself or its parent.
pub fn load_dir(dir: &Path) -> Result<(ImageSet, ImageSet), DataError> {
    let nested = dir.join("cifar-10-batches-bin");
    let dir = if !dir.join(TEST_BATCH).exists() && nested.is_dir() {
        nested
    } else {
        dir.to_path_buf()
    };
    let class_names = read_class_names(&dir.join("batches.meta.txt"))?;
    let train: Vec<PathBuf> = TRAIN_BATCHES.iter().map(|name| dir.join(name)).collect();
    let train = load_batches(&train, &class_names)?;
    let test = load_batches(&[dir.join(TEST_BATCH)], &class_names)?;
    Ok((train, test))
}

/// Class names from `batches.meta.txt` (non-empty lines); CIFAR-10's own if the file is absent.
fn read_class_names(path: &Path) -> Result<Vec<String>, DataError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let names: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .map(str::to_string)
                .collect();
            if names.is_empty() {
                return Err(DataError::corrupt(
                    path,
                    "no class names (expected one a line)",
                ));
            }
            Ok(names)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect())
        }
        Err(e) => Err(DataError::io(path, e, "CIFAR-10 class names")),
    }
}

/// Loads the records of `batches`, in order, into one set; labels must index `class_names`.
pub fn load_batches(batches: &[PathBuf], class_names: &[String]) -> Result<ImageSet, DataError> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for path in batches {
        let bytes = std::fs::read(path)
            .map_err(|e| DataError::io(path, e, "a CIFAR-10 binary batch of 3073-byte records"))?;
        if bytes.len() % RECORD != 0 || bytes.is_empty() {
            return Err(DataError::RecordSize {
                path: path.clone(),
                size: bytes.len() as u64,
                record: RECORD as u64,
            });
        }
        pixels.reserve(bytes.len() / RECORD * PIXELS);
        for (index, record) in bytes.chunks_exact(RECORD).enumerate() {
            let label = record[0];
            if label as usize >= class_names.len() {
                return Err(DataError::LabelOutOfRange {
                    path: path.clone(),
                    index,
                    label: label as u64,
                    classes: class_names.len(),
                });
            }
            labels.push(label as u32);
            pixels.extend_from_slice(&record[1..]);
        }
    }
    Ok(ImageSet {
        channels: 3,
        height: SIDE,
        width: SIDE,
        pixels,
        labels,
        class_names: class_names.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `labels.len()` records; image i has every pixel of channel c equal to `i * 3 + c`.
    fn batch(labels: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, &label) in labels.iter().enumerate() {
            out.push(label);
            for c in 0..3 {
                out.extend(std::iter::repeat_n((i * 3 + c) as u8, SIDE * SIDE));
            }
        }
        out
    }

    fn write_official_layout(root: &Path) -> PathBuf {
        let dir = root.join("cifar-10-batches-bin");
        std::fs::create_dir(&dir).unwrap();
        for (b, name) in TRAIN_BATCHES.iter().enumerate() {
            std::fs::write(dir.join(name), batch(&[b as u8, 9])).unwrap();
        }
        std::fs::write(dir.join(TEST_BATCH), batch(&[4, 5, 6])).unwrap();
        dir
    }

    #[test]
    fn batches_load_in_order_with_planes_as_chw() {
        let root = tempfile::tempdir().unwrap();
        let dir = write_official_layout(root.path());
        let (train, test) = load_dir(&dir).unwrap();
        assert_eq!(train.len(), 10);
        assert_eq!(train.labels, vec![0, 9, 1, 9, 2, 9, 3, 9, 4, 9]);
        assert_eq!(test.labels, vec![4, 5, 6]);
        assert_eq!((train.channels, train.height, train.width), (3, 32, 32));
        let image = test.image(1);
        assert_eq!(
            (image[0], image[1024], image[2048], image[3071]),
            (3, 4, 5, 5)
        );
        assert_eq!(
            train.class_names,
            CIFAR10_CLASSES.map(String::from).to_vec()
        );
    }

    #[test]
    fn the_parent_directory_and_meta_class_names_are_accepted() {
        let root = tempfile::tempdir().unwrap();
        let dir = write_official_layout(root.path());
        let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
        std::fs::write(dir.join("batches.meta.txt"), names.join("\n") + "\n\n").unwrap();
        let (train, _) = load_dir(root.path()).unwrap();
        assert_eq!(train.class_names, names);
    }

    #[test]
    fn a_file_that_is_not_whole_records_is_an_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = write_official_layout(root.path());
        let mut bytes = batch(&[1, 2]);
        bytes.pop();
        std::fs::write(dir.join("data_batch_3.bin"), bytes).unwrap();
        let err = load_dir(&dir).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::RecordSize {
                    size: 6145,
                    record: 3073,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("data_batch_3.bin"), "{err}");
    }

    #[test]
    fn a_missing_batch_is_reported_by_name() {
        let root = tempfile::tempdir().unwrap();
        let dir = write_official_layout(root.path());
        std::fs::remove_file(dir.join("data_batch_5.bin")).unwrap();
        let err = load_dir(&dir).unwrap_err();
        assert!(matches!(err, DataError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("data_batch_5.bin"), "{err}");
    }

    #[test]
    fn a_label_past_the_class_list_is_out_of_range() {
        let root = tempfile::tempdir().unwrap();
        let dir = write_official_layout(root.path());
        std::fs::write(dir.join(TEST_BATCH), batch(&[1, 10])).unwrap();
        let err = load_dir(&dir).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::LabelOutOfRange {
                    index: 1,
                    label: 10,
                    classes: 10,
                    ..
                }
            ),
            "{err}"
        );
    }
}
