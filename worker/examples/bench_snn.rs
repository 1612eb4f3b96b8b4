//! Throughput of the spiking VGG on the CPU, to compare with `bench/peer/snn_peer.py` (the same
//! network in PyTorch eager and in spikingjelly), on N random 3x32x32 u8 images:
//! - forward images/s (the inference pass);
//! - one candidate's scoring: a mask keeping every other filter of the middle layer, scored on a
//!   clean and an adversarial shard of N images each from the prefix cache (the cache is built
//!   once per generation for all candidates; its time is printed apart);
//! - PGD-7 images/s (eps 8/255, step 2/255, random start; gradients through the surrogate);
//! - one training epoch images/s (SGD, batch 64, no augmentation);
//! - the spike rate of every layer on the clean images.
//!
//! `cargo run --release -p ccsrp-worker --example bench_snn -- [ARCH] [T] [IMAGES] [PGD_IMAGES]
//! [BATCH] [WEIGHT_SCALE]` (defaults `small 4 1000 1000 100 1`); WEIGHT_SCALE multiplies every conv
//! weight (below 1: fewer spikes, as trained networks fire). Prints one JSON object.

use std::time::Instant;

use candle_core::{Device, Tensor};
use ccsrp_proto::v1::Mask;
use ccsrp_worker::arch::{Architecture, InputShape};
use ccsrp_worker::attack::{attack_to_u8, AttackParams};
use ccsrp_worker::data::ImageSet;
use ccsrp_worker::eval::{count_correct, spike_rates};
use ccsrp_worker::model::{images_to_tensor, ModelSpec, Normalisation, SnnModel};
use ccsrp_worker::train::{train, TrainConfig};
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
    let images: usize = arg(3, 1000)?.max(1);
    let pgd_images: usize = arg(4, 1000)?;
    let batch: usize = arg(5, 100)?.max(1);
    let weight_scale: f64 = arg(6, 1.0)?;
    let device = Device::Cpu;
    let input = InputShape {
        channels: 3,
        height: 32,
        width: 32,
    };
    let classes: Vec<String> = (0..10).map(|i| format!("class{i}")).collect();
    let mut spec = ModelSpec::new(
        Architecture::from_name_or_list(&arch)?,
        timesteps,
        input,
        classes.clone(),
    );
    spec.normalisation = Normalisation {
        mean: vec![0.5; 3],
        std: vec![0.25; 3],
    };
    let model = SnnModel::new(spec, &device, 0)?.with_scaled_conv_weights(weight_scale)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let set = ImageSet {
        channels: 3,
        height: 32,
        width: 32,
        pixels: (0..images * 3 * 32 * 32)
            .map(|_| rng.random_range(0..=255u8))
            .collect(),
        labels: (0..images).map(|_| rng.random_range(0..10)).collect(),
        class_names: classes,
    };
    let rates = spike_rates(&model, &set, batch)?;

    count_correct(&model, &set.slice(0..batch.min(images)), batch)?; // warm-up
    let start = Instant::now();
    count_correct(&model, &set, batch)?;
    let forward_s = start.elapsed().as_secs_f64();

    // PGD-7 on the first PGD_IMAGES images; its output is the adversarial shard below.
    let params = AttackParams::pgd(8.0 / 255.0, 2.0 / 255.0, 7);
    let n_pgd = pgd_images.min(images);
    let mut adversarial = set.slice(0..n_pgd);
    let start = Instant::now();
    for s in (0..n_pgd).step_by(batch) {
        let n = batch.min(n_pgd - s);
        let x = images_to_tensor(&set, s..s + n, &device)?;
        let y = Tensor::new(&set.labels[s..s + n], &device)?;
        let adv = attack_to_u8(&model, &x, &y, &params, &mut rng)?;
        let bytes = set.image_bytes();
        adversarial.pixels[s * bytes..(s + n) * bytes].copy_from_slice(&adv);
    }
    let pgd_s = start.elapsed().as_secs_f64();

    // One candidate of the middle layer from the prefix cache, on the clean and adversarial shards.
    let layer = model.num_layers() / 2;
    let masks: Vec<Mask> = model
        .geometry()
        .iter()
        .enumerate()
        .map(|(l, g)| {
            let keep: Vec<bool> = (0..g.filters).map(|f| l != layer || f % 2 == 0).collect();
            Mask::from_keep(&keep)
        })
        .collect();
    let start = Instant::now();
    let mut caches = Vec::new();
    for shard in [&set, &adversarial] {
        let mut batches = Vec::new();
        for s in (0..shard.len()).step_by(batch) {
            let n = batch.min(shard.len() - s);
            let x = images_to_tensor(shard, s..s + n, &device)?;
            batches.push(model.layer_inputs(&x)?.swap_remove(layer));
        }
        caches.push(batches);
    }
    let cache_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let candidate = model.prune(&masks)?;
    for batches in &caches {
        for input in batches {
            candidate.forward_from(layer, input)?;
        }
    }
    let candidate_s = start.elapsed().as_secs_f64();

    let mut trained = model.try_clone()?;
    let config = TrainConfig {
        epochs: 1,
        batch_size: 64,
        lr: 0.01,
        augment: false,
        ..TrainConfig::default()
    };
    let start = Instant::now();
    train(&mut trained, &set, &config, &mut |_| {})?;
    let train_s = start.elapsed().as_secs_f64();

    let rates: Vec<String> = rates.iter().map(|r| format!("{r:.4}")).collect();
    println!(
        "{{\"impl\": \"ccsrp\", \"arch\": \"{}\", \"timesteps\": {timesteps}, \"batch\": {batch}, \
         \"weight_scale\": {weight_scale}, \"spike_rates\": [{}], \"images\": {images}, \
         \"forward_images_per_s\": {}, \"candidate_layer\": {layer}, \"candidate_s\": {}, \
         \"prefix_cache_s\": {}, \"pgd7_images\": {n_pgd}, \"pgd7_images_per_s\": {}, \
         \"train_images_per_s\": {}}}",
        model.spec().architecture,
        rates.join(", "),
        images as f64 / forward_s,
        candidate_s,
        cache_s,
        n_pgd as f64 / pgd_s,
        images as f64 / train_s
    );
    Ok(())
}
