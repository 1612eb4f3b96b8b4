//! Property tests of every file decoder of the worker: IDX (plain and gzipped), CIFAR-10 binary
//! batches and class names, MAT v5 / SVHN (plain and compressed variables), image folders (PNG,
//! JPEG) and model files (safetensors with the spec in the metadata, whole or header only).
//! Inputs are random bytes, or valid files mutated (bit flips, truncation, inserted and deleted
//! bytes, huge length and dimension fields): the answer is a value consistent with itself or an
//! error, never a panic (overflow checks are on in the test profile), and no single allocation
//! exceeds [`ALLOC_LIMIT`] (the global allocator refuses it, which aborts the binary): a decoder
//! must size its buffers from the bytes present, not from what a header announces.

#[path = "../../master/tests/fuzz/mod.rs"]
mod fuzz;

use std::io::Write;

use candle_core::Device;
use ccsrp_worker::arch::InputShape;
use ccsrp_worker::data::{cifar, folder, idx, svhn, ImageSet};
use ccsrp_worker::model::{ModelSpec, Normalisation, SnnModel};
use ccsrp_worker::model_file;
use fuzz::{apply, mutations, BoundedAlloc, Mutation};
use proptest::prelude::*;

/// No input here justifies more than this in one allocation (the largest valid one is a few KB).
const ALLOC_LIMIT: usize = 64 << 20;

#[global_allocator]
static ALLOC: BoundedAlloc<ALLOC_LIMIT> = BoundedAlloc;

fn cases(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A loaded set must hold what its shape says.
fn consistent(set: &ImageSet) {
    assert_eq!(set.pixels.len(), set.len() * set.image_bytes(), "{set:?}");
    assert!(set.image_bytes() > 0, "images of zero pixels: {set:?}");
    assert!(set
        .labels
        .iter()
        .all(|&l| (l as usize) < set.class_names.len()));
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

// ---------------------------------------------------------------------------------------------
// IDX

fn idx_file(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// Three 2x3 images and their labels.
fn idx_pair() -> (Vec<u8>, Vec<u8>) {
    let pixels: Vec<u8> = (0..18).collect();
    (
        idx_file(0x803, &[3, 2, 3], &pixels),
        idx_file(0x801, &[3], &[3, 0, 9]),
    )
}

fn load_idx(images: &[u8], labels: &[u8]) -> Result<ImageSet, ccsrp_worker::data::DataError> {
    let dir = tempfile::tempdir().unwrap();
    let (i, l) = (dir.path().join("images"), dir.path().join("labels"));
    std::fs::write(&i, images).unwrap();
    std::fs::write(&l, labels).unwrap();
    idx::load(&i, &l, &idx::MNIST_CLASSES)
}

// ---------------------------------------------------------------------------------------------
// MAT v5 (the layout MATLAB and scipy write), for SVHN

fn mat_element(out: &mut Vec<u8>, kind: u32, data: &[u8]) {
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(8) {
        out.push(0);
    }
}

/// One miMATRIX variable: class 9 (uint8) with uint8 values, or class 6 (double) with doubles.
fn mat_matrix(name: &str, dims: &[i32], u8_values: Option<&[u8]>, f64_values: &[f64]) -> Vec<u8> {
    let mut body = Vec::new();
    let class: u32 = if u8_values.is_some() { 9 } else { 6 };
    mat_element(&mut body, 6, &[class.to_le_bytes(), [0; 4]].concat());
    let dims: Vec<u8> = dims.iter().flat_map(|d| d.to_le_bytes()).collect();
    mat_element(&mut body, 5, &dims);
    mat_element(&mut body, 1, name.as_bytes());
    match u8_values {
        Some(v) => mat_element(&mut body, 2, v),
        None => {
            let bytes: Vec<u8> = f64_values.iter().flat_map(|x| x.to_le_bytes()).collect();
            mat_element(&mut body, 9, &bytes)
        }
    }
    let mut out = Vec::new();
    mat_element(&mut out, 14, &body);
    out
}

/// An SVHN format-2 file of two 2x3 RGB images (X: 2x3x3x2 uint8, y: 2x1 double).
fn svhn_file(compressed: bool) -> Vec<u8> {
    let x: Vec<u8> = (0..36).collect();
    let variables = [
        mat_matrix("X", &[2, 3, 3, 2], Some(&x), &[]),
        mat_matrix("y", &[2, 1], None, &[10.0, 3.0]),
    ];
    let mut out = vec![b' '; 116];
    out[..10].copy_from_slice(b"MATLAB 5.0");
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&0x0100u16.to_le_bytes());
    out.extend_from_slice(b"IM");
    for variable in &variables {
        if compressed {
            let packed = zlib(variable);
            out.extend_from_slice(&15u32.to_le_bytes());
            out.extend_from_slice(&(packed.len() as u32).to_le_bytes());
            out.extend_from_slice(&packed);
        } else {
            out.extend_from_slice(variable);
        }
    }
    out
}

fn load_svhn(bytes: &[u8]) -> Result<ImageSet, ccsrp_worker::data::DataError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train_32x32.mat");
    std::fs::write(&path, bytes).unwrap();
    svhn::load(&path)
}

// ---------------------------------------------------------------------------------------------
// Image folders

fn png(w: u32, h: u32, colour: bool) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let image = if colour {
        image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([x as u8, y as u8, 7])
        }))
    } else {
        image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(w, h, |x, y| {
            image::Luma([(x * y) as u8])
        }))
    };
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([x as u8 * 16, y as u8 * 16, 200])
    }))
    .write_to(&mut out, image::ImageFormat::Jpeg)
    .unwrap();
    out.into_inner()
}

/// A folder `a/1.png a/2.jpg b/3.png` with the files' bytes given.
fn load_folder(files: [&[u8]; 3]) -> Result<ImageSet, ccsrp_worker::data::DataError> {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in ["a/1.png", "a/2.jpg", "b/3.png"].iter().zip(files) {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    folder::load(dir.path())
}

// ---------------------------------------------------------------------------------------------
// Model files

fn tiny_model_bytes() -> Vec<u8> {
    let mut spec = ModelSpec::new(
        "4,M,6".parse().unwrap(),
        2,
        InputShape {
            channels: 1,
            height: 8,
            width: 8,
        },
        vec!["a".into(), "b".into()],
    );
    spec.normalisation = Normalisation {
        mean: vec![0.5],
        std: vec![0.25],
    };
    SnnModel::new(spec, &Device::Cpu, 3)
        .unwrap()
        .to_bytes()
        .unwrap()
}

/// A model read back must give as many logits as it has classes.
fn model_usable(model: &SnnModel) {
    let spec = model.spec();
    let geometry = spec.geometry();
    assert!(geometry.is_ok(), "{geometry:?}");
    assert!(spec.classes() >= 1);
}

proptest! {
    #![proptest_config(cases(96))]

    #[test]
    fn idx_mutated_is_loaded_or_refused(
        edits in mutations(),
        which in 0u8..2,
        gzipped in any::<bool>(),
        mutate_compressed in any::<bool>(),
    ) {
        let (images, labels) = idx_pair();
        let pack = |b: Vec<u8>| if gzipped { gzip(&b) } else { b };
        let mutate = |b: Vec<u8>| {
            if gzipped && mutate_compressed {
                apply(&gzip(&b), &edits)
            } else {
                pack(apply(&b, &edits))
            }
        };
        let (images, labels) = if which == 0 {
            (mutate(images), pack(labels))
        } else {
            (pack(images), mutate(labels))
        };
        if let Ok(set) = load_idx(&images, &labels) {
            consistent(&set);
        }
    }

    #[test]
    fn idx_of_random_bytes_is_refused_or_loaded(
        images in prop::collection::vec(any::<u8>(), 0..64),
        gzipped in any::<bool>(),
    ) {
        let images = if gzipped { gzip(&images) } else { images };
        if let Ok(set) = load_idx(&images, &idx_pair().1) {
            consistent(&set);
        }
    }

    /// A header announcing any dimensions, over a few bytes: refused without allocating them.
    #[test]
    fn idx_header_of_any_dimensions_is_refused_before_allocating(
        dims in prop::array::uniform3(prop_oneof![Just(u32::MAX), Just(1u32 << 16), Just(0u32), 0u32..4, any::<u32>()]),
        data in prop::collection::vec(any::<u8>(), 0..32),
        gzipped in any::<bool>(),
    ) {
        let images = idx_file(0x803, &dims, &data);
        let images = if gzipped { gzip(&images) } else { images };
        let labels = idx_file(0x801, &[dims[0]], &[]);
        if let Ok(set) = load_idx(&images, &labels) {
            consistent(&set);
        }
    }

    #[test]
    fn cifar_batch_mutated_is_loaded_or_refused(
        edits in mutations(),
        records in 1usize..3,
        meta in prop_oneof![Just(None), Just(Some("cat\ndog\n".to_string())), ".{0,40}".prop_map(Some)],
    ) {
        let mut batch = Vec::new();
        for r in 0..records {
            batch.push((r % 2) as u8);
            batch.extend(std::iter::repeat_n(r as u8, cifar::RECORD - 1));
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&root).unwrap();
        for name in ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"] {
            std::fs::write(root.join(name), &batch).unwrap();
        }
        std::fs::write(root.join("test_batch.bin"), apply(&batch, &edits)).unwrap();
        if let Some(meta) = meta {
            std::fs::write(root.join("batches.meta.txt"), meta).unwrap();
        }
        if let Ok((train, test)) = cifar::load_dir(dir.path()) {
            consistent(&train);
            consistent(&test);
        }
    }

    #[test]
    fn svhn_mat_mutated_is_loaded_or_refused(edits in mutations(), compressed in any::<bool>()) {
        if let Ok(set) = load_svhn(&apply(&svhn_file(compressed), &edits)) {
            consistent(&set);
        }
    }

    /// Variables of any dimensions (zero, negative, huge) with the values they claim or not:
    /// half the cases are H x W x 3 x N with N = the number of labels (small or zero sides).
    #[test]
    fn svhn_mat_of_any_dimensions_is_loaded_or_refused(
        side in prop::array::uniform2(prop_oneof![2 => Just(0), 3 => 1i32..4, 1 => Just(-1), 1 => Just(i32::MAX), 1 => any::<i32>()]),
        random_dims in prop::option::of(prop::collection::vec(prop_oneof![0i32..4, Just(-1), Just(i32::MAX), any::<i32>()], 1..5)),
        values in prop::collection::vec(any::<u8>(), 0..48),
        labels in prop::collection::vec(
            prop_oneof![6 => (0u8..=10).prop_map(f64::from), 1 => 0.0f64..12.0, 1 => Just(f64::NAN), 1 => Just(1e300)],
            0..4,
        ),
        compressed in any::<bool>(),
        mismatch in prop::bool::weighted(0.2),
    ) {
        let dims = random_dims.unwrap_or_else(|| vec![side[0], side[1], 3, labels.len() as i32]);
        // Values as many as the dimensions claim where that is small, unless `mismatch`.
        let claimed = dims
            .iter()
            .try_fold(1u64, |n, &d| u64::try_from(d).ok().and_then(|d| n.checked_mul(d)))
            .filter(|&n| n <= 4096 && !mismatch);
        let values = claimed.map_or(values, |n| vec![9u8; n as usize]);
        let variables = [
            mat_matrix("X", &dims, Some(&values), &[]),
            mat_matrix("y", &[labels.len() as i32, 1], None, &labels),
        ];
        let mut file = svhn_file(false)[..128].to_vec();
        for v in &variables {
            if compressed {
                let packed = zlib(v);
                file.extend_from_slice(&15u32.to_le_bytes());
                file.extend_from_slice(&(packed.len() as u32).to_le_bytes());
                file.extend_from_slice(&packed);
            } else {
                file.extend_from_slice(v);
            }
        }
        if let Ok(set) = load_svhn(&file) {
            consistent(&set);
        }
    }

    #[test]
    fn svhn_mat_of_random_bytes_after_a_valid_header_is_refused(
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let file = [&svhn_file(false)[..128], &body[..]].concat();
        if let Ok(set) = load_svhn(&file) {
            consistent(&set);
        }
    }
}

proptest! {
    #![proptest_config(cases(64))]

    #[test]
    fn image_folder_mutated_is_loaded_or_refused(
        edits in mutations(),
        which in 0usize..3,
        colour in any::<bool>(),
    ) {
        let mut files = [png(4, 3, colour), jpeg(4, 3), png(4, 3, false)];
        files[which] = apply(&files[which], &edits);
        if let Ok(set) = load_folder([&files[0], &files[1], &files[2]]) {
            consistent(&set);
            prop_assert_eq!(set.class_names.clone(), vec!["a".to_string(), "b".to_string()]);
        }
    }

    /// A PNG whose header announces huge dimensions over a few bytes of data: refused without
    /// allocating the announced image.
    #[test]
    fn image_folder_png_of_forged_size_is_refused_before_allocating(
        w in prop_oneof![Just(1u32 << 14), Just(40_000u32), Just(u32::MAX >> 1), 1u32..100_000],
        h in prop_oneof![Just(1u32 << 14), Just(40_000u32), Just(u32::MAX >> 1), 1u32..100_000],
    ) {
        let mut forged = png(4, 3, true);
        // IHDR data starts at byte 16: width, height (big-endian); its CRC follows at 29.
        forged[16..20].copy_from_slice(&w.to_be_bytes());
        forged[20..24].copy_from_slice(&h.to_be_bytes());
        let crc = crc32(&forged[12..29]);
        forged[29..33].copy_from_slice(&crc.to_be_bytes());
        let good = png(4, 3, true);
        if let Ok(set) = load_folder([&forged, &good, &good]) {
            consistent(&set);
        }
    }

    #[test]
    fn model_file_mutated_is_loaded_or_refused(edits in mutations()) {
        let bytes = apply(&tiny_model_bytes(), &edits);
        if let Ok(model) = SnnModel::from_bytes(&bytes, &Device::Cpu) {
            model_usable(&model);
        }
        if let Ok(spec) = model_file::read_spec_from_bytes(&bytes) {
            let _ = spec.geometry();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(spec) = model_file::read_spec(&path) {
            let _ = spec.geometry();
        }
    }

    /// The spec in the metadata rewritten with sizes of any magnitude.
    #[test]
    fn model_file_with_any_spec_sizes_is_loaded_or_refused(
        arch in prop_oneof![Just("4,M,6".to_string()), "[0-9M,]{1,14}"],
        side in prop_oneof![Just(8usize), Just(0), Just(usize::MAX), Just(1 << 31), any::<usize>()],
        timesteps in prop_oneof![Just(2usize), Just(0), Just(usize::MAX), any::<usize>()],
    ) {
        let bytes = tiny_model_bytes();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
        let key = model_file::SPEC_METADATA_KEY;
        let mut spec: serde_json::Value =
            serde_json::from_str(header["__metadata__"][key].as_str().unwrap()).unwrap();
        spec["architecture"] = serde_json::json!(arch);
        spec["timesteps"] = serde_json::json!(timesteps);
        spec["input"]["height"] = serde_json::json!(side);
        spec["input"]["width"] = serde_json::json!(side);
        header["__metadata__"][key] = serde_json::json!(spec.to_string());
        let mut text = serde_json::to_vec(&header).unwrap();
        while !text.len().is_multiple_of(8) {
            text.push(b' ');
        }
        let file = [&(text.len() as u64).to_le_bytes()[..], &text, &bytes[8 + header_len..]].concat();
        if let Ok(model) = SnnModel::from_bytes(&file, &Device::Cpu) {
            model_usable(&model);
        }
        if let Ok(spec) = model_file::read_spec_from_bytes(&file) {
            let _ = spec.geometry();
        }
    }

    #[test]
    fn model_file_of_random_bytes_is_refused(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        prop_assert!(SnnModel::from_bytes(&bytes, &Device::Cpu).is_err());
        prop_assert!(model_file::read_spec_from_bytes(&bytes).is_err());
    }
}

/// PNG's chunk CRC (CRC-32, ISO-HDLC), so a forged IHDR passes the decoder's check.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The valid inputs the mutations start from load (so the properties above test real decoding).
#[test]
fn the_unmutated_inputs_load() {
    let (images, labels) = idx_pair();
    consistent(&load_idx(&images, &labels).unwrap());
    consistent(&load_idx(&gzip(&images), &gzip(&labels)).unwrap());
    for compressed in [false, true] {
        let set = load_svhn(&svhn_file(compressed)).unwrap();
        assert_eq!(set.labels, vec![0, 3]);
    }
    let set = load_folder([&png(4, 3, true), &jpeg(4, 3), &png(4, 3, false)]).unwrap();
    assert_eq!(
        (set.len(), set.channels, set.height, set.width),
        (3, 3, 3, 4)
    );
    let model = SnnModel::from_bytes(&tiny_model_bytes(), &Device::Cpu).unwrap();
    model_usable(&model);
    let forged = apply(&tiny_model_bytes(), &[Mutation::Huge64(0, 0)]);
    assert!(SnnModel::from_bytes(&forged, &Device::Cpu).is_err());
}

/// A safetensors header length beyond the file is refused before a buffer of that length is
/// allocated (`read_spec` reads only the header).
#[test]
fn model_header_length_beyond_the_file_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    std::fs::write(&path, [&99_999_999u64.to_le_bytes()[..], b"{}"].concat()).unwrap();
    let err = model_file::read_spec(&path).unwrap_err().to_string();
    assert!(
        err.contains("m.safetensors") && err.contains("99999999"),
        "{err}"
    );
}

/// SVHN X with a zero height: zero-pixel images are refused, not a division by zero or a panic.
#[test]
fn svhn_images_of_zero_pixels_are_refused() {
    let variables = [
        mat_matrix("X", &[0, 3, 3, 2], Some(&[]), &[]),
        mat_matrix("y", &[2, 1], None, &[1.0, 2.0]),
    ];
    let file = [&svhn_file(false)[..128], &variables[0], &variables[1]].concat();
    let err = load_svhn(&file).unwrap_err().to_string();
    assert!(
        err.contains("train_32x32.mat") && err.contains('X'),
        "{err}"
    );
}

/// An IDX file of zero-pixel images is refused.
#[test]
fn idx_images_of_zero_pixels_are_refused() {
    let images = idx_file(0x803, &[2, 0, 28], &[]);
    let labels = idx_file(0x801, &[2], &[1, 2]);
    let err = load_idx(&images, &labels).unwrap_err().to_string();
    assert!(err.contains("images"), "{err}");
}
