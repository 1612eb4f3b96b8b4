//! A worker's results do not depend on its compute-thread count (`RAYON_NUM_THREADS`, which
//! `ccsrp worker --threads` sets): the same inference logits, PGD images and trained weights with
//! 1, 2, 3 and 8 threads. Each count runs in its own process (candle reads the variable per
//! process), the child being the ignored test below, run again by this very test binary.

use std::process::Command;

use candle_core::{Device, Tensor};
use ccsrp_worker::arch::InputShape;
use ccsrp_worker::attack::{attack_to_u8, AttackParams};
use ccsrp_worker::data::ImageSet;
use ccsrp_worker::model::{images_to_tensor, ModelSpec, Normalisation, SnnModel};
use ccsrp_worker::train::{train, TrainConfig};
use rand::{Rng, SeedableRng};

const CHILD: &str = "results_of_this_process_child";

/// FNV-1a over the bits of `values`.
fn digest(values: impl IntoIterator<Item = u32>) -> u64 {
    values.into_iter().fold(0xcbf29ce484222325u64, |h, v| {
        (h ^ u64::from(v)).wrapping_mul(0x100000001b3)
    })
}

#[test]
#[ignore = "child process of results_do_not_depend_on_the_thread_count"]
fn results_of_this_process_child() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let input = InputShape {
        channels: 3,
        height: 16,
        width: 16,
    };
    let classes: Vec<String> = (0..3).map(|i| i.to_string()).collect();
    let mut spec = ModelSpec::new("16,M,32,32,M".parse().unwrap(), 3, input, classes.clone());
    spec.normalisation = Normalisation::identity(3);
    let mut model = SnnModel::new(spec, &Device::Cpu, 2)
        .unwrap()
        .with_scaled_conv_weights(2.0)
        .unwrap();
    let n = 96;
    let set = ImageSet {
        channels: 3,
        height: 16,
        width: 16,
        pixels: (0..n * 768).map(|_| rng.random_range(0..=255u8)).collect(),
        labels: (0..n).map(|_| rng.random_range(0..3)).collect(),
        class_names: classes,
    };
    let x = images_to_tensor(&set, 0..n, &Device::Cpu).unwrap();
    let logits: Vec<f32> = model
        .forward_eval(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let y = Tensor::new(set.labels.as_slice(), &Device::Cpu).unwrap();
    let params = AttackParams::pgd(8.0 / 255.0, 2.0 / 255.0, 3);
    let adversarial = attack_to_u8(&model, &x, &y, &params, &mut rng).unwrap();
    let config = TrainConfig {
        epochs: 1,
        batch_size: 32,
        augment: false,
        ..TrainConfig::default()
    };
    train(&mut model, &set, &config, &mut |_| {}).unwrap();
    let mut weights = Vec::new();
    for v in model.trainable_vars() {
        weights.extend(
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
    }
    println!(
        "DIGESTS logits {:x} pgd {:x} trained {:x}",
        digest(logits.iter().map(|v| v.to_bits())),
        digest(adversarial.iter().map(|&b| u32::from(b))),
        digest(weights.iter().map(|v| v.to_bits()))
    );
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let exe = std::env::current_exe().unwrap();
    let run = |threads: usize| {
        let out = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                CHILD,
                "--nocapture",
                "--test-threads=1",
            ])
            .env("RAYON_NUM_THREADS", threads.to_string())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{threads} threads: {text}");
        text.lines()
            .find_map(|l| l.find("DIGESTS").map(|at| l[at..].to_string()))
            .unwrap_or_else(|| panic!("{threads} threads printed no digests: {text}"))
    };
    let one = run(1);
    for threads in [2, 3, 8] {
        assert_eq!(run(threads), one, "{threads} threads against 1");
    }
}
