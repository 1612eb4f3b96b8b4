//! SVHN cropped digits, format 2: `train_32x32.mat` (73,257 images), `test_32x32.mat` (26,032).
//!
//! Each file is a MATLAB 5 file ([`super::mat`]) with `X`, H x W x 3 x N uint8 in column-major
//! order (byte index = r + H*(c + W*(ch + 3*n))), and `y`, N x 1 labels 1..10 where 10 means the
//! digit 0. We store CHW images and label = digit (10 -> 0); labels 0..9 are accepted as well.

use std::path::Path;

use super::mat::{self, MatArray, MatData};
use super::{DataError, ImageSet};

/// SVHN's classes: label = digit.
pub const SVHN_CLASSES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Loads `train_32x32.mat` and `test_32x32.mat` from `dir`.
pub fn load_dir(dir: &Path) -> Result<(ImageSet, ImageSet), DataError> {
    Ok((
        load(&dir.join("train_32x32.mat"))?,
        load(&dir.join("test_32x32.mat"))?,
    ))
}

/// Loads one SVHN format-2 `.mat` file.
pub fn load(path: &Path) -> Result<ImageSet, DataError> {
    let arrays = mat::read_arrays(path)?;
    let find = |name: &str| {
        arrays
            .iter()
            .find(|array| array.name == name)
            .ok_or_else(|| {
                DataError::corrupt(
                    path,
                    format!("no variable {name} (SVHN format 2 has X and y)"),
                )
            })
    };
    let x = find("X")?;
    let y = find("y")?;
    let (height, width, count, images) = match (&x.dims[..], &x.data) {
        ([h, w, 3, n], MatData::U8(bytes)) => (*h, *w, *n, bytes),
        ([h, w, 3], MatData::U8(bytes)) => (*h, *w, 1, bytes),
        _ => {
            return Err(DataError::corrupt(
                path,
                format!(
                    "X is {} of dimensions {:?}, expected uint8 H x W x 3 x N",
                    kind(x),
                    x.dims
                ),
            ))
        }
    };
    if height == 0 || width == 0 {
        return Err(DataError::corrupt(
            path,
            format!("X has dimensions {:?}: images of zero pixels", x.dims),
        ));
    }
    let labels = labels(path, y, count)?;

    let plane = height * width;
    let mut pixels = vec![0u8; images.len()];
    for (n, image) in pixels.chunks_exact_mut(3 * plane).enumerate() {
        for ch in 0..3 {
            let source = &images[(ch + 3 * n) * plane..(ch + 3 * n + 1) * plane];
            let target = &mut image[ch * plane..(ch + 1) * plane];
            for c in 0..width {
                for r in 0..height {
                    target[r * width + c] = source[r + height * c];
                }
            }
        }
    }
    Ok(ImageSet {
        channels: 3,
        height,
        width,
        pixels,
        labels,
        class_names: SVHN_CLASSES.iter().map(|s| s.to_string()).collect(),
    })
}

fn kind(array: &MatArray) -> &'static str {
    match array.data {
        MatData::U8(_) => "uint8",
        MatData::F64(_) => "non-uint8",
    }
}

/// `y` as digit labels: N values (N x 1 or 1 x N), integers 0..=10, 10 meaning 0.
fn labels(path: &Path, y: &MatArray, count: usize) -> Result<Vec<u32>, DataError> {
    let values: Vec<f64> = match &y.data {
        MatData::U8(bytes) => bytes.iter().map(|&b| f64::from(b)).collect(),
        MatData::F64(values) => values.clone(),
    };
    let is_vector = y.dims.iter().filter(|&&d| d != 1).count() <= 1;
    if !is_vector || values.len() != count {
        return Err(DataError::Inconsistent {
            path: path.to_path_buf(),
            reason: format!(
                "y has dimensions {:?}, expected {count} x 1 (one label per image of X)",
                y.dims
            ),
        });
    }
    values
        .iter()
        .enumerate()
        .map(|(index, &value)| {
            if value.fract() == 0.0 && (0.0..=10.0).contains(&value) {
                Ok(value as u32 % 10)
            } else {
                Err(DataError::corrupt(
                    path,
                    format!(
                        "y({}) = {value}: expected a label 1..10 (10 = digit 0)",
                        index + 1
                    ),
                ))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::mat::write::{file, matrix, Values};

    /// Column-major X of `n` 2x3 images with value 100*n + 10*ch + (r*3 + c): CHW-decodable.
    fn column_major_x(n: usize) -> Vec<u8> {
        let (h, w) = (2, 3);
        let mut x = vec![0u8; h * w * 3 * n];
        for i in 0..n {
            for ch in 0..3 {
                for c in 0..w {
                    for r in 0..h {
                        x[r + h * (c + w * (ch + 3 * i))] = (100 * i + 10 * ch + r * w + c) as u8;
                    }
                }
            }
        }
        x
    }

    fn write(dir: &Path, name: &str, y: &[f64], compressed: bool) -> std::path::PathBuf {
        let x = column_major_x(y.len());
        let bytes = file(
            &[
                matrix("X", &[2, 3, 3, y.len()], Values::U8(&x)),
                matrix("y", &[y.len(), 1], Values::F64(y)),
            ],
            compressed,
        );
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn column_major_images_become_chw_and_label_10_becomes_digit_0() {
        for compressed in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), "train_32x32.mat", &[10.0, 1.0], compressed);
            write(dir.path(), "test_32x32.mat", &[5.0], compressed);
            let (train, test) = load_dir(dir.path()).unwrap();
            assert_eq!((train.channels, train.height, train.width), (3, 2, 3));
            assert_eq!(train.labels, vec![0, 1]);
            assert_eq!(test.labels, vec![5]);
            let expected: Vec<u8> = (0..3)
                .flat_map(|ch| (0..6).map(move |p| 100 + 10 * ch + p))
                .collect();
            assert_eq!(train.image(1), &expected[..], "compressed={compressed}");
        }
    }

    #[test]
    fn a_label_outside_1_to_10_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "test_32x32.mat", &[3.0, 11.0], false);
        let err = load(&path).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("test_32x32.mat") && msg.contains("y(2) = 11"),
            "{msg}"
        );
    }

    #[test]
    fn a_label_count_unlike_the_image_count_is_inconsistent() {
        let dir = tempfile::tempdir().unwrap();
        let x = column_major_x(2);
        let bytes = file(
            &[
                matrix("X", &[2, 3, 3, 2], Values::U8(&x)),
                matrix("y", &[3, 1], Values::F64(&[1.0, 2.0, 3.0])),
            ],
            false,
        );
        let path = dir.path().join("train_32x32.mat");
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(load(&path), Err(DataError::Inconsistent { .. })));
    }

    #[test]
    fn a_file_without_x_says_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train_32x32.mat");
        std::fs::write(
            &path,
            file(&[matrix("y", &[1, 1], Values::F64(&[1.0]))], true),
        )
        .unwrap();
        let msg = load(&path).unwrap_err().to_string();
        assert!(msg.contains("no variable X"), "{msg}");
    }

    #[test]
    fn a_truncated_file_is_reported_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "train_32x32.mat", &[1.0, 2.0], false);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 40]).unwrap();
        assert!(matches!(load(&path), Err(DataError::Truncated { .. })));
    }

    #[test]
    fn a_missing_file_is_reported_missing() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_dir(dir.path()).unwrap_err();
        assert!(matches!(err, DataError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("train_32x32.mat"));
    }
}
