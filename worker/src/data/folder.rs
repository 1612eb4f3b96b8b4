//! Image folders: `DIR/<class>/<image>`, one sub-folder per class, PNG or JPEG files (format
//! recognised from the bytes, not the extension).
//!
//! Rules, so that the same folder gives the same bytes everywhere:
//! - labels follow the class folder names sorted (byte order); images within a class are sorted
//!   by file name; names starting with `.` are ignored (`.DS_Store`, editors' files);
//! - every other entry must be a class folder at the top level and a decodable image inside one:
//!   anything else is an error naming it;
//! - all images share the size of the first one (an odd one is an error naming both files);
//! - channels: 3 (RGB) if any image has colour, else 1 (grey); grey images in a colour set are
//!   replicated to RGB, alpha is dropped. The rule depends on the set, not on file order;
//! - a file may decode to at most 1,024 times its size (at least 64 MiB, at most 512 MiB): a
//!   header announcing a huge image over a few bytes is an error, not an allocation.
//!
//! Decoding runs on every core (`std::thread::scope`): the 50,000-image CIFAR-10 JPEG copy loads
//! in seconds.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageReader};

use super::{DataError, ImageSet};

/// Loads the `train/` and `test/` image folders of `dir`; both must have the same classes.
pub fn load_train_test(dir: &Path) -> Result<(ImageSet, ImageSet), DataError> {
    let train = load(&dir.join("train"))?;
    let test_dir = dir.join("test");
    let test = load(&test_dir)?;
    if test.class_names != train.class_names {
        return Err(DataError::Inconsistent {
            path: test_dir,
            reason: format!(
                "classes {:?} differ from train's {:?}",
                test.class_names, train.class_names
            ),
        });
    }
    if (test.channels, test.height, test.width) != (train.channels, train.height, train.width) {
        return Err(DataError::Inconsistent {
            path: test_dir,
            reason: format!(
                "images are {}x{}x{} (CxHxW) but train's are {}x{}x{}",
                test.channels, test.height, test.width, train.channels, train.height, train.width
            ),
        });
    }
    Ok((train, test))
}

/// Loads one image folder (`dir/<class>/<image>`).
pub fn load(dir: &Path) -> Result<ImageSet, DataError> {
    let expected = "one sub-folder of PNG/JPEG images per class";
    let mut class_names = Vec::new();
    let mut files: Vec<(PathBuf, u32)> = Vec::new();
    for class_dir in sorted_entries(dir, expected)? {
        if !class_dir.is_dir() {
            return Err(DataError::Inconsistent {
                path: class_dir,
                reason: format!("a file where class folders are expected ({expected})"),
            });
        }
        let label = class_names.len() as u32;
        class_names.push(file_name(&class_dir));
        for file in sorted_entries(&class_dir, "images of one class")? {
            files.push((file, label));
        }
    }
    if files.is_empty() {
        return Err(DataError::Empty {
            path: dir.to_path_buf(),
            expected: expected.to_string(),
        });
    }

    let images = decode_all(&files)?;
    let (first_path, first) = (&files[0].0, &images[0]);
    let (width, height) = (first.width(), first.height());
    let channels = if images.iter().any(|image| image.color().has_color()) {
        3
    } else {
        1
    };
    let plane = width as usize * height as usize;
    let mut pixels = Vec::with_capacity(images.len() * channels * plane);
    for ((path, _), image) in files.iter().zip(&images) {
        if (image.width(), image.height()) != (width, height) {
            return Err(DataError::ImageSize {
                path: path.clone(),
                found_w: image.width(),
                found_h: image.height(),
                first: first_path.clone(),
                w: width,
                h: height,
            });
        }
        if channels == 1 {
            pixels.extend_from_slice(image.to_luma8().as_raw());
        } else {
            let rgb = image.to_rgb8();
            let interleaved = rgb.as_raw();
            for c in 0..3 {
                pixels.extend(interleaved.iter().skip(c).step_by(3));
            }
        }
    }
    Ok(ImageSet {
        channels,
        height: height as usize,
        width: width as usize,
        pixels,
        labels: files.iter().map(|(_, label)| *label).collect(),
        class_names,
    })
}

/// The non-hidden entries of `dir`, sorted by name.
fn sorted_entries(dir: &Path, expected: &str) -> Result<Vec<PathBuf>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e, expected))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, e, expected))?;
        if !entry.file_name().to_string_lossy().starts_with('.') {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Decodes every file, in parallel; the first failure in file order is the error.
fn decode_all(files: &[(PathBuf, u32)]) -> Result<Vec<DynamicImage>, DataError> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(files.len())
        .max(1);
    let per_thread = files.len().div_ceil(threads);
    let chunks: Vec<Result<Vec<DynamicImage>, DataError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|(path, _)| decode(path))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(files.chunks(per_thread))
            .map(|(handle, chunk)| {
                handle.join().unwrap_or_else(|_| {
                    Err(DataError::NotAnImage {
                        path: chunk[0].0.clone(),
                        reason: "the image decoder panicked on this file or one after it"
                            .to_string(),
                    })
                })
            })
            .collect()
    });
    let mut images = Vec::with_capacity(files.len());
    for chunk in chunks {
        images.extend(chunk?);
    }
    Ok(images)
}

/// Most bytes the decoder may allocate for an image file of `file_len` bytes: what the file can
/// plausibly expand to (deflate, inside PNG, expands at most 1032x; 1024x also covers real
/// JPEGs), at least [`MIN_DECODE_BUDGET`] and at most [`MAX_DECODE_BUDGET`]. A forged header
/// announcing a huge image over a few bytes is refused before its buffer is allocated.
fn decode_budget(file_len: u64) -> u64 {
    file_len
        .saturating_mul(1024)
        .clamp(MIN_DECODE_BUDGET, MAX_DECODE_BUDGET)
}

/// Budget of any image file, however small: 64 MiB (a 4,096 x 4,096 RGBA image).
const MIN_DECODE_BUDGET: u64 = 64 << 20;

/// Budget of the largest files: the `image` crate's own default, 512 MiB.
const MAX_DECODE_BUDGET: u64 = 512 << 20;

fn decode(path: &Path) -> Result<DynamicImage, DataError> {
    if path.is_dir() {
        return Err(DataError::NotAnImage {
            path: path.to_path_buf(),
            reason: "a folder inside a class folder (expected only image files)".to_string(),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e, "an image file"))?;
    let not_image = |reason: String| DataError::NotAnImage {
        path: path.to_path_buf(),
        reason,
    };
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(decode_budget(bytes.len() as u64));
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| not_image(e.to_string()))?;
    reader.limits(limits);
    if reader.format().is_none() {
        return Err(not_image(
            "unrecognised format (expected PNG or JPEG)".to_string(),
        ));
    }
    reader.decode().map_err(|e| not_image(e.to_string()))
}

#[cfg(test)]
mod tests {
    use image::{GrayImage, Luma, Rgb, RgbImage};

    use super::*;

    fn rgb(value: [u8; 3], w: u32, h: u32) -> RgbImage {
        RgbImage::from_pixel(w, h, Rgb(value))
    }

    /// A folder with classes `cat` (PNG and JPEG) and `ant` (PNG), 4x3 RGB.
    fn write_folder(dir: &Path) {
        for class in ["cat", "ant"] {
            std::fs::create_dir_all(dir.join(class)).unwrap();
        }
        rgb([200, 10, 10], 4, 3)
            .save(dir.join("cat/b.png"))
            .unwrap();
        rgb([10, 200, 10], 4, 3)
            .save(dir.join("cat/a.jpg"))
            .unwrap();
        rgb([1, 2, 3], 4, 3).save(dir.join("ant/z.png")).unwrap();
        std::fs::write(dir.join("cat/.DS_Store"), b"junk").unwrap();
    }

    #[test]
    fn classes_and_files_load_sorted_with_png_and_jpeg_as_chw() {
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path());
        let set = load(dir.path()).unwrap();
        assert_eq!(set.class_names, vec!["ant", "cat"]);
        assert_eq!(set.labels, vec![0, 1, 1]);
        assert_eq!((set.channels, set.height, set.width), (3, 3, 4));
        // ant/z.png: exact (PNG), planes R then G then B.
        assert_eq!(set.image(0)[..12], [1; 12]);
        assert_eq!(set.image(0)[12..24], [2; 12]);
        assert_eq!(set.image(0)[24..], [3; 12]);
        // cat/a.jpg (sorted before b.png): green, within JPEG error.
        let jpeg = set.image(1);
        assert!(jpeg[..12].iter().all(|&v| v < 40) && jpeg[12..24].iter().all(|&v| v > 170));
        assert_eq!(set.image(2)[0], 200);
    }

    #[test]
    fn grey_only_folders_have_one_channel_and_mixed_ones_three() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("x")).unwrap();
        GrayImage::from_pixel(2, 2, Luma([77]))
            .save(dir.path().join("x/1.png"))
            .unwrap();
        let set = load(dir.path()).unwrap();
        assert_eq!((set.channels, set.pixels.clone()), (1, vec![77; 4]));

        rgb([9, 8, 7], 2, 2)
            .save(dir.path().join("x/2.png"))
            .unwrap();
        let set = load(dir.path()).unwrap();
        assert_eq!(set.channels, 3);
        assert_eq!(set.image(0), &[77; 12][..], "grey replicated to RGB");
    }

    #[test]
    fn an_image_of_another_size_is_an_error_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path());
        rgb([0, 0, 0], 5, 3)
            .save(dir.path().join("cat/c.png"))
            .unwrap();
        let err = load(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                DataError::ImageSize {
                    found_w: 5,
                    w: 4,
                    ..
                }
            ),
            "{msg}"
        );
        assert!(
            msg.contains("cat/c.png") && msg.contains("ant/z.png"),
            "{msg}"
        );
    }

    #[test]
    fn a_file_that_is_not_an_image_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path());
        std::fs::write(dir.path().join("cat/notes.txt"), b"not a picture").unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(err, DataError::NotAnImage { .. }), "{err}");
        assert!(err.to_string().contains("notes.txt"), "{err}");
    }

    #[test]
    fn a_corrupt_png_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path());
        let good = std::fs::read(dir.path().join("cat/b.png")).unwrap();
        std::fs::write(dir.path().join("cat/b.png"), &good[..good.len() / 2]).unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(err, DataError::NotAnImage { .. }), "{err}");
        assert!(err.to_string().contains("b.png"), "{err}");
    }

    #[test]
    fn a_loose_file_among_class_folders_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path());
        std::fs::write(dir.path().join("README"), b"hi").unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("README"), "{err}");
    }

    #[test]
    fn an_empty_or_missing_folder_says_what_was_expected() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(load(dir.path()), Err(DataError::Empty { .. })));
        let missing = load(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(missing, DataError::Missing { .. }), "{missing}");
    }

    #[test]
    fn train_and_test_must_have_the_same_classes() {
        let dir = tempfile::tempdir().unwrap();
        write_folder(&dir.path().join("train"));
        write_folder(&dir.path().join("test"));
        let (train, test) = load_train_test(dir.path()).unwrap();
        assert_eq!((train.len(), test.len()), (3, 3));
        std::fs::create_dir(dir.path().join("test/bee")).unwrap();
        let err = load_train_test(dir.path()).unwrap_err();
        assert!(matches!(err, DataError::Inconsistent { .. }), "{err}");
    }

    /// Unpacks one archive of the shared CIFAR-10 JPEG copy into a temp dir (needs `tar`).
    fn unpack_cifar_jpeg(archive: &str) -> tempfile::TempDir {
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/cifar10")
            .join(archive);
        assert!(
            source.is_file(),
            "the CIFAR-10 JPEG copy is missing: {}",
            source.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("tar")
            .arg("-xzf")
            .arg(&source)
            .arg("-C")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "tar -xzf {} failed", source.display());
        dir
    }

    #[test]
    fn real_cifar10_jpeg_test_folder_loads_1000_images_per_class() {
        let dir = unpack_cifar_jpeg("test.tgz");
        let set = load(&dir.path().join("test")).unwrap();
        assert_eq!(set.len(), 10_000);
        assert_eq!((set.channels, set.height, set.width), (3, 32, 32));
        assert_eq!(set.class_counts(), vec![1_000; 10]);
        assert_eq!(
            set.class_names,
            crate::data::cifar::CIFAR10_CLASSES
                .map(String::from)
                .to_vec()
        );
    }
}
