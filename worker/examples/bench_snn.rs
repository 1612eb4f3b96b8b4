//! Throughput of the spiking VGG on the CPU, to compare with `bench/peer/snn_peer.py` (the same
//! network in PyTorch): forward images/s on N random 3x32x32 images (the inference pass), and PGD-7
//! images/s (eps 8/255, step 2/255, random start; gradients through the surrogate).
//!
//! `cargo run --release -p ccsrp-worker --example bench_snn -- [ARCH] [T] [IMAGES] [PGD_IMAGES] [BATCH]`
//! (defaults `small 4 1000 1000 100`); prints one JSON object. Random weights: throughput only.

use std::time::Instant;

use candle_core::{Device, Tensor};
use ccsrp_worker::arch::{Architecture, InputShape};
use ccsrp_worker::attack::{attack, AttackParams};
use ccsrp_worker::model::{ModelSpec, Normalisation, SnnModel};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn arg<T: std::str::FromStr>(i: usize, default: T) -> Result<T, String> {
    match std::env::args().nth(i) {
        None => Ok(default),
        Some(text) => text
            .parse()
            .map_err(|_| format!("argument {i} ({text:?}) is not valid")),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    ccsrp_worker::allocator::keep_freed_memory();
    let arch: String = arg(1, "small".to_string())?;
    let timesteps: usize = arg(2, 4)?;
    let images: usize = arg(3, 1000)?;
    let pgd_images: usize = arg(4, 1000)?;
    let batch: usize = arg(5, 100)?.max(1);
    let device = Device::Cpu;
    let input = InputShape {
        channels: 3,
        height: 32,
        width: 32,
    };
    let classes = (0..10).map(|i| format!("class{i}")).collect();
    let mut spec = ModelSpec::new(
        Architecture::from_name_or_list(&arch)?,
        timesteps,
        input,
        classes,
    );
    spec.normalisation = Normalisation {
        mean: vec![0.5; 3],
        std: vec![0.25; 3],
    };
    let model = SnnModel::new(spec, &device, 0)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let pixels: Vec<f32> = (0..images * 3 * 32 * 32)
        .map(|_| rng.random_range(0.0..1.0))
        .collect();
    let labels: Vec<u32> = (0..images).map(|_| rng.random_range(0..10)).collect();
    let x = Tensor::from_vec(pixels, (images, 3, 32, 32), &device)?;
    let y = Tensor::new(labels.as_slice(), &device)?;

    model.forward_eval(&x.narrow(0, 0, batch.min(images))?)?; // warm-up
    let start = Instant::now();
    for s in (0..images).step_by(batch) {
        let n = batch.min(images - s);
        model.forward_eval(&x.narrow(0, s, n)?)?;
    }
    let forward_s = start.elapsed().as_secs_f64();

    let params = AttackParams::pgd(8.0 / 255.0, 2.0 / 255.0, 7);
    let n_pgd = pgd_images.min(images);
    let start = Instant::now();
    for s in (0..n_pgd).step_by(batch) {
        let n = batch.min(n_pgd - s);
        attack(
            &model,
            &x.narrow(0, s, n)?,
            &y.narrow(0, s, n)?,
            &params,
            &mut rng,
        )?;
    }
    let pgd_s = start.elapsed().as_secs_f64();
    println!(
        "{{\"impl\": \"ccsrp-candle\", \"arch\": \"{}\", \"timesteps\": {timesteps}, \"batch\": {batch}, \"forward_images\": {images}, \"forward_images_per_s\": {}, \"pgd7_images\": {n_pgd}, \"pgd7_images_per_s\": {}}}",
        model.spec().architecture,
        images as f64 / forward_s,
        n_pgd as f64 / pgd_s
    );
    Ok(())
}
