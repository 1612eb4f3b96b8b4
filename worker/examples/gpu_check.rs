//! The GPU check: is the SNN engine right on a device, and how fast is it there?
//!
//! Run by `bench/gpu-check.sh` (which finds the CUDA libraries) from the `cuda` build
//! (`scripts/build-cuda.sh`). Prints three markdown tables:
//!
//! 0. Kernels: each new GPU kernel against its CPU counterpart, on random data of real layer sizes:
//!    the fused LIF forward (spikes that differ from the CPU twin, `lif_kernel`) and backward
//!    (relative error of the current's gradient), for both drives, with and without the folded
//!    batch norm, every surrogate; the convolution of `conv_grad` (forward value, input gradient as a
//!    forward convolution, weight gradient as one matrix multiply per tap) against candle's CPU
//!    `conv2d` and its autograd.
//! 1. Correctness: one model and one shard evaluated on `--device` and on `--reference-device`
//!    (the CPU): the logits' relative error, correct counts clean and on the same u8 adversarial
//!    images (PGD-7 made once on `--device`), how many predictions differ, and the relative error of
//!    the input gradient the attacks follow. The counts are the fitness objectives, so this is how
//!    far a CPU job and a GPU job can disagree.
//! 2. Timings on `--device`, in one run, beside the reference numbers measured on an H200
//!    (spikingjelly 2.0 and plain PyTorch, fp32) and issue 14's targets for one H200: the clean
//!    forward of 1,000 CIFAR-size images (target <= 15 ms); white-box PGD-7 on the shard (<= 0.5 s);
//!    one candidate (clean + shared-adversarial correct counts on that shard, from u8 images as a
//!    worker scores them) run through the whole network, and through the prefix cache as a worker
//!    does it (layer inputs of both image sets kept on the device, the network run from
//!    `--candidate-layer` on; <= 20 ms); one training step (`--train-batch` clean images: forward
//!    with batch statistics, backward, SGD update; no reference figure).
//!
//! The model is a seeded VGG-11 (T=8) with fresh weights unless `--model FILE` names a trained one;
//! the images are the built-in synthetic CIFAR-size set, so the check needs no data files. The run
//! stays inside `--budget-s` (counted from the start, correctness included): after one warm-up run of
//! a timed step, its repeats shrink to fit the step's share of what is left. Each timings row is
//! printed as soon as it is measured, so a run stopped from outside keeps what it measured.
//!
//! Uses only the worker crate's public API. `--device cpu` runs the same program on a CPU build.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use candle_core::Var;
use candle_core::{Device, Tensor, D};
use ccsrp_worker::arch::{Architecture, InputShape};
use ccsrp_worker::attack::{self, AttackParams};
use ccsrp_worker::conv_grad;
use ccsrp_worker::data::synthetic::{self, SyntheticSplit};
use ccsrp_worker::data::ImageSet;
use ccsrp_worker::device::{device_name, parse_device};
use ccsrp_worker::lif::{ChannelAffine, Drive, Lif, LifParams, SurrogateKind};
use ccsrp_worker::lif_kernel::{self, LifKernelArgs};
use ccsrp_worker::model::{images_to_tensor, ModelSpec, Normalisation, SnnModel};
use ccsrp_worker::train::{self, TrainConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type BoxError = Box<dyn std::error::Error>;

const USAGE: &str = "\
gpu_check: correctness (device vs reference device) and timings of the SNN engine

usage: gpu_check [OPTIONS]
  --device DEV             device to check: cpu, cuda, cuda:N          [default: cuda:0]
  --reference-device DEV   device it is compared with                  [default: cpu]
  --model FILE             a trained model file (default: a seeded random model of --arch)
  --arch A                 architecture preset or list, without --model [default: vgg11]
  --timesteps T            time steps T, without --model                [default: 8]
  --images N               images of the timed shard                    [default: 1000]
  --reference-images N     images of the correctness shard (they run on the reference device too)
                                                                        [default: 256]
  --batch B                images per forward/attack call               [default: 1000]
  --candidate-layer L      the prefix-cache candidate runs layers L.. [default: half the layers]
  --train-batch N          images of the timed training step            [default: 128]
  --repeats R              timed runs per step after one warm-up        [default: 5]
  --budget-s S             seconds the whole check may take: the timed repeats shrink to fit
                                                                        [default: 240]
  --seed S                 seed of the weights, the images and PGD's random start [default: 0]
  -h, --help               this text";

/// A timed step: its name, the reference timings on one H200 (fp32, VGG-11, T=8, 1,000 CIFAR-size
/// images; spikingjelly 2.0, plain PyTorch) and issue 14's target there, in seconds.
struct Step {
    name: &'static str,
    spikingjelly: Option<f64>,
    torch: Option<f64>,
    target: Option<f64>,
}

const CLEAN: Step = Step {
    name: "clean forward",
    spikingjelly: Some(0.033),
    torch: Some(0.054),
    target: Some(0.015),
};
const PGD7: Step = Step {
    name: "white-box PGD-7 (eps 8/255, step 2/255)",
    spikingjelly: Some(0.53),
    torch: Some(1.19),
    target: Some(0.5),
};
const CANDIDATE_WHOLE: Step = Step {
    name: "one candidate, whole network (clean + shared-adversarial correct counts)",
    spikingjelly: Some(0.066),
    torch: Some(0.108),
    target: None,
};
const CANDIDATE_PREFIX: Step = Step {
    name: "one candidate through the prefix cache",
    spikingjelly: Some(0.066),
    torch: Some(0.108),
    target: Some(0.020),
};
const TRAIN_STEP: Step = Step {
    name: "one training step",
    spikingjelly: None,
    torch: None,
    target: None,
};

struct Options {
    device: String,
    reference_device: String,
    model: Option<PathBuf>,
    arch: String,
    timesteps: usize,
    images: usize,
    reference_images: usize,
    batch: usize,
    candidate_layer: Option<usize>,
    train_batch: usize,
    repeats: usize,
    budget: Duration,
    seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            device: "cuda:0".into(),
            reference_device: "cpu".into(),
            model: None,
            arch: "vgg11".into(),
            timesteps: 8,
            images: 1000,
            reference_images: 256,
            batch: 1000,
            candidate_layer: None,
            train_batch: 128,
            repeats: 5,
            budget: Duration::from_secs(240),
            seed: 0,
        }
    }
}

/// `None` for `--help`.
fn parse_options(args: impl IntoIterator<Item = String>) -> Result<Option<Options>, String> {
    fn number<T>(flag: &str, value: &str, min: T) -> Result<T, String>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display,
    {
        match value.parse::<T>() {
            Ok(v) if v >= min => Ok(v),
            _ => Err(format!("{flag}: expected a number >= {min}, got {value:?}")),
        }
    }
    let mut o = Options::default();
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag}: expected a value after it (see --help)"))?;
        match flag.as_str() {
            "--device" => o.device = value,
            "--reference-device" => o.reference_device = value,
            "--model" => o.model = Some(PathBuf::from(value)),
            "--arch" => o.arch = value,
            "--timesteps" => o.timesteps = number(&flag, &value, 1)?,
            "--images" => o.images = number(&flag, &value, 1)?,
            "--reference-images" => o.reference_images = number(&flag, &value, 1)?,
            "--batch" => o.batch = number(&flag, &value, 1)?,
            "--candidate-layer" => o.candidate_layer = Some(number(&flag, &value, 0)?),
            "--train-batch" => o.train_batch = number(&flag, &value, 1)?,
            "--repeats" => o.repeats = number(&flag, &value, 0)?,
            "--budget-s" => o.budget = Duration::from_secs_f64(number(&flag, &value, 0.0)?),
            "--seed" => o.seed = number(&flag, &value, 0)?,
            _ => return Err(format!("unknown option {flag:?} (see --help)")),
        }
    }
    if o.reference_images > o.images {
        return Err(format!(
            "--reference-images ({}) must not exceed --images ({}): the correctness shard is the \
             first images of the timed shard",
            o.reference_images, o.images
        ));
    }
    Ok(Some(o))
}

/// Images `range` of `set` in chunks of `batch`.
fn chunks(
    range: std::ops::Range<usize>,
    batch: usize,
) -> impl Iterator<Item = std::ops::Range<usize>> {
    range
        .clone()
        .step_by(batch)
        .map(move |start| start..(start + batch).min(range.end))
}

/// Logits `[n, classes]` of the first `n` images of `set`, copied to the host, row-major.
fn host_logits(
    model: &SnnModel,
    set: &ImageSet,
    n: usize,
    batch: usize,
) -> Result<Vec<f32>, BoxError> {
    let mut out = Vec::new();
    for r in chunks(0..n, batch) {
        let x = images_to_tensor(set, r, model.device())?;
        let logits = model.forward_eval(&x)?;
        out.extend(
            logits
                .to_device(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
    }
    Ok(out)
}

/// Predicted classes of the first `n` images of `set`: the worker's scoring path (u8 images to the
/// device, forward without a graph, argmax on the device, classes back to the host).
fn predictions(
    model: &SnnModel,
    set: &ImageSet,
    n: usize,
    batch: usize,
) -> Result<Vec<u32>, BoxError> {
    let mut out = Vec::with_capacity(n);
    for r in chunks(0..n, batch) {
        let x = images_to_tensor(set, r, model.device())?;
        let classes = model.forward_eval(&x)?.argmax(D::Minus1)?;
        out.extend(classes.to_vec1::<u32>()?);
    }
    Ok(out)
}

/// Row-wise argmax of row-major `[rows, classes]` logits (the first maximum on ties).
fn argmax_rows(logits: &[f32], classes: usize) -> Vec<u32> {
    logits
        .chunks_exact(classes)
        .map(|row| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best as u32
        })
        .collect()
}

fn correct(predicted: &[u32], labels: &[u32]) -> u64 {
    predicted.iter().zip(labels).filter(|(p, l)| p == l).count() as u64
}

fn differing(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

/// `max |a - b| / max |b|` and `||a - b||_2 / ||b||_2` (b is the reference).
fn relative_errors(a: &[f32], b: &[f32]) -> (f64, f64) {
    let (mut max_diff, mut max_ref, mut sq_diff, mut sq_ref) = (0f64, 0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let d = f64::from(x) - f64::from(y);
        max_diff = max_diff.max(d.abs());
        max_ref = max_ref.max(f64::from(y).abs());
        sq_diff += d * d;
        sq_ref += f64::from(y) * f64::from(y);
    }
    (
        max_diff / max_ref.max(f64::MIN_POSITIVE),
        (sq_diff / sq_ref.max(f64::MIN_POSITIVE)).sqrt(),
    )
}

/// PGD-7 examples of the first `n` images of `set`, made on `model`'s device, as a u8 image set
/// (the stored form of the shared adversarial set).
fn adversarial(
    model: &SnnModel,
    set: &ImageSet,
    n: usize,
    batch: usize,
    seed: u64,
) -> Result<ImageSet, BoxError> {
    let params = AttackParams::default();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pixels = Vec::with_capacity(n * set.image_bytes());
    for r in chunks(0..n, batch) {
        let x = images_to_tensor(set, r.clone(), model.device())?;
        let y = Tensor::from_slice(&set.labels[r.clone()], r.len(), model.device())?;
        pixels.extend(attack::attack_to_u8(model, &x, &y, &params, &mut rng)?);
    }
    model.device().synchronize()?;
    Ok(ImageSet {
        pixels,
        labels: set.labels[..n].to_vec(),
        ..set.slice(0..0)
    })
}

/// Wall-clock times of one step: a warm-up run, then up to `repeats` timed runs that fit the
/// step's share of the budget.
struct Timing {
    warm_up: Duration,
    runs: Vec<Duration>,
}

impl Timing {
    fn measure(
        device: &Device,
        repeats: usize,
        share: Duration,
        mut step: impl FnMut() -> Result<(), BoxError>,
    ) -> Result<Timing, BoxError> {
        let timed = |step: &mut dyn FnMut() -> Result<(), BoxError>| -> Result<Duration, BoxError> {
            device.synchronize()?;
            let start = Instant::now();
            step()?;
            device.synchronize()?;
            Ok(start.elapsed())
        };
        let warm_up = timed(&mut step)?;
        let fit = (share.as_secs_f64() / warm_up.as_secs_f64().max(1e-9)).floor() as usize;
        let mut runs = Vec::new();
        for _ in 0..repeats.min(fit.saturating_sub(1)) {
            runs.push(timed(&mut step)?);
        }
        Ok(Timing { warm_up, runs })
    }

    /// Median of the timed runs; the warm-up when none fitted.
    fn median(&self) -> Duration {
        let mut runs = self.runs.clone();
        runs.sort();
        runs.get(runs.len() / 2).copied().unwrap_or(self.warm_up)
    }

    fn describe_runs(&self) -> String {
        match self.runs.iter().min() {
            Some(min) => format!(
                "{} (min {})",
                self.runs.len(),
                format_secs(min.as_secs_f64())
            ),
            None => "warm-up only".into(),
        }
    }
}

fn format_secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// Uniform random f32 values in `range`.
fn random_values(n: usize, range: std::ops::Range<f32>, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(range.clone())).collect()
}

/// A tensor's values on the host.
fn host(t: &Tensor) -> Result<Vec<f32>, BoxError> {
    Ok(t.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
}

/// The fused LIF kernels on `device` against the CPU twin of lif.cu (`lif_kernel`), on one layer of
/// `[T*B, 64, 16, 16]` neurons: table rows (kernel, case, result).
fn lif_kernel_rows(device: &Device, seed: u64) -> Result<Vec<[String; 3]>, BoxError> {
    let (t, b, c, h, w) = (8usize, 4usize, 64usize, 16usize, 16usize);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rows = Vec::new();
    let cases = [
        (Drive::EveryStep, true, SurrogateKind::Sigmoid),
        (Drive::EveryStep, false, SurrogateKind::Atan),
        (Drive::Constant, true, SurrogateKind::Triangle),
        (Drive::Constant, false, SurrogateKind::Sigmoid),
    ];
    for (drive, with_affine, surrogate) in cases {
        let params = LifParams {
            surrogate,
            alpha: surrogate.default_alpha(),
            ..LifParams::default()
        };
        let lif = Lif::new(params, t)?;
        let in_rows = if drive == Drive::Constant { b } else { t * b };
        let dims = [in_rows, c, h, w];
        let xs = random_values(in_rows * c * h * w, -1.0..3.0, &mut rng);
        let gs = random_values(t * b * c * h * w, -1.0..1.0, &mut rng);
        let scale = random_values(c, 0.2..2.0, &mut rng);
        let shift = random_values(c, -0.5..0.5, &mut rng);
        let x = Var::from_tensor(&Tensor::from_slice(&xs, &dims[..], device)?)?;
        let g = Tensor::from_slice(&gs, (t * b, c, h, w), device)?;
        let spikes = if with_affine {
            let affine = ChannelAffine {
                scale: Tensor::from_slice(&scale, c, device)?,
                shift: Tensor::from_slice(&shift, c, device)?,
            };
            lif.forward_affine_const(x.as_tensor(), drive, &affine)?
        } else {
            lif.forward(x.as_tensor(), drive)?
        };
        let grads = spikes.mul(&g)?.sum_all()?.backward()?;
        let grad = grads
            .get(x.as_tensor())
            .ok_or("the LIF op gave no gradient for its input")?;
        let (spikes, grad) = (host(&spikes)?, host(grad)?);
        let args = LifKernelArgs::new(&lif, drive, with_affine.then_some((c, c)), &dims)?;
        let host_affine = with_affine.then_some((&scale[..], &shift[..]));
        let twin_spikes = lif_kernel::forward_twin(&args, host_affine, &xs)?;
        let twin_grad = lif_kernel::backward_twin(&args, host_affine, &xs, &gs)?;
        let case = format!(
            "{}, {}, {surrogate}, [{}, {c}, {h}, {w}]",
            if drive == Drive::Constant {
                "constant drive"
            } else {
                "every step"
            },
            if with_affine {
                "folded batch norm"
            } else {
                "no affine"
            },
            in_rows
        );
        let differ = differing_values(&spikes, &twin_spikes);
        let fired = twin_spikes.iter().filter(|&&v| v == 1.0).count();
        rows.push([
            "fused LIF forward".into(),
            case.clone(),
            format!(
                "{differ} of {} spikes differ from the CPU twin ({fired} fired)",
                twin_spikes.len()
            ),
        ]);
        let (max, l2) = relative_errors(&grad, &twin_grad);
        rows.push([
            "fused LIF backward (BPTT)".into(),
            case,
            format!("gradient vs CPU twin: max {max:.2e}, relative L2 {l2:.2e}"),
        ]);
    }
    Ok(rows)
}

fn differing_values(a: &[f32], b: &[f32]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count() + a.len().abs_diff(b.len())
}

/// `conv_grad`'s convolution on `device` (value, input gradient as a forward convolution, weight
/// gradient as one matrix multiply per tap) against candle's `conv2d` and its autograd on the CPU.
fn conv_rows(device: &Device, seed: u64) -> Result<Vec<[String; 3]>, BoxError> {
    let (n, c, o, hw) = (16usize, 64usize, 64usize, 32usize);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let xs = random_values(n * c * hw * hw, 0.0..1.0, &mut rng);
    let ws = random_values(o * c * 9, -0.1..0.1, &mut rng);
    let gs = random_values(n * o * hw * hw, -1.0..1.0, &mut rng);
    let run = |dev: &Device, ours: bool| -> Result<[Vec<f32>; 3], BoxError> {
        let x = Var::from_tensor(&Tensor::from_slice(&xs, (n, c, hw, hw), dev)?)?;
        let w = Var::from_tensor(&Tensor::from_slice(&ws, (o, c, 3, 3), dev)?)?;
        let g = Tensor::from_slice(&gs, (n, o, hw, hw), dev)?;
        let y = if ours {
            conv_grad::conv_same(x.as_tensor(), w.as_tensor(), true)?
        } else {
            x.as_tensor().conv2d(w.as_tensor(), 1, 1, 1, 1)?
        };
        let grads = y.mul(&g)?.sum_all()?.backward()?;
        let gx = grads.get(x.as_tensor()).ok_or("no input gradient")?;
        let gw = grads.get(w.as_tensor()).ok_or("no weight gradient")?;
        Ok([host(&y)?, host(gx)?, host(gw)?])
    };
    let ours = run(device, true)?;
    let reference = run(&Device::Cpu, false)?;
    let case = format!("[{n}, {c}, {hw}, {hw}] -> {o}, 3x3, padding 1");
    let names = [
        "convolution forward",
        "conv input gradient (forward conv, flipped kernel)",
        "conv weight gradient (cuDNN backward-filter on CUDA in a cudnn build, else a matmul per tap)",
    ];
    Ok(names
        .iter()
        .zip(ours.iter().zip(&reference))
        .map(|(name, (a, b))| {
            let (max, l2) = relative_errors(a, b);
            [
                (*name).to_string(),
                case.clone(),
                format!("vs candle conv2d on the CPU: max {max:.2e}, relative L2 {l2:.2e}"),
            ]
        })
        .collect())
}

fn build_model(o: &Options, device: &Device, images: &ImageSet) -> Result<SnnModel, BoxError> {
    if let Some(path) = &o.model {
        return Ok(SnnModel::load(path, device)?);
    }
    let arch = Architecture::from_name_or_list(&o.arch).map_err(|e| format!("--arch: {e}"))?;
    let input = InputShape {
        channels: images.channels,
        height: images.height,
        width: images.width,
    };
    let mut spec = ModelSpec::new(arch, o.timesteps, input, images.class_names.clone());
    spec.normalisation = Normalisation::from_images(images);
    Ok(SnnModel::new(spec, device, o.seed)?)
}

fn run(o: &Options) -> Result<(), BoxError> {
    let started = Instant::now();
    let device = parse_device(&o.device).map_err(|e| format!("--device: {e}"))?;
    let reference =
        parse_device(&o.reference_device).map_err(|e| format!("--reference-device: {e}"))?;
    let (dev_name, ref_name) = (device_name(&device), device_name(&reference));

    let images = synthetic::generate(o.images, 32, 32, o.seed, SyntheticSplit::Test);
    let model = build_model(o, &device, &images)?;
    let spec = model.spec();
    if (spec.input.channels, spec.input.height, spec.input.width) != (3, 32, 32) {
        return Err(format!(
            "the check runs CIFAR-size images (3x32x32); the model expects {}x{}x{}",
            spec.input.channels, spec.input.height, spec.input.width
        )
        .into());
    }
    if spec.classes() != images.class_names.len() {
        return Err(format!(
            "the check's images have {} classes; the model has {}",
            images.class_names.len(),
            spec.classes()
        )
        .into());
    }
    let what = match &o.model {
        Some(path) => format!("model {}", path.display()),
        None => format!("seeded random weights (seed {})", o.seed),
    };
    let arch = spec.architecture.to_string();
    let t = spec.timesteps;

    // 0. The kernels, each against its CPU counterpart.
    println!("## Kernels: {dev_name} against the CPU");
    println!();
    println!(
        "Random data of real layer sizes. The fused LIF forward must give exactly the CPU twin's \
         spikes; the gradients agree to float rounding (the GPU's expf, cuDNN's and cuBLAS's \
         summation orders and TF32-like arithmetic)."
    );
    println!();
    println!("| kernel | case | result |");
    println!("|---|---|---|");
    for [kernel, case, result] in lif_kernel_rows(&device, o.seed)?
        .into_iter()
        .chain(conv_rows(&device, o.seed)?)
    {
        println!("| {kernel} | {case} | {result} |");
    }
    println!();

    // 1. Correctness: every quantity from the same weights and the same images on both devices.
    let n_ref = o.reference_images;
    let reference_model = model.to_device(&reference)?;
    let adv_ref = adversarial(&model, &images, n_ref, o.batch, o.seed)?;
    let labels = &images.labels[..n_ref];
    let classes = spec.classes();
    let clean_dev = host_logits(&model, &images, n_ref, o.batch)?;
    let clean_ref = host_logits(&reference_model, &images, n_ref, o.batch)?;
    let adv_dev = host_logits(&model, &adv_ref, n_ref, o.batch)?;
    let adv_ref_logits = host_logits(&reference_model, &adv_ref, n_ref, o.batch)?;
    let n_grad = n_ref.min(32);
    let grad = |m: &SnnModel| -> Result<Vec<f32>, BoxError> {
        let x = images_to_tensor(&images, 0..n_grad, m.device())?;
        let y = Tensor::from_slice(&images.labels[..n_grad], n_grad, m.device())?;
        let (g, _) = attack::input_gradient(m, &x, &y)?;
        Ok(g.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
    };
    let grad_rel = relative_errors(&grad(&model)?, &grad(&reference_model)?).1;
    drop(reference_model);

    let (clean_max, clean_l2) = relative_errors(&clean_dev, &clean_ref);
    let (adv_max, adv_l2) = relative_errors(&adv_dev, &adv_ref_logits);
    let [clean_dev, clean_ref, adv_dev, adv_ref_logits] =
        [&clean_dev, &clean_ref, &adv_dev, &adv_ref_logits].map(|l| argmax_rows(l, classes));
    println!("## Correctness: {dev_name} against {ref_name}");
    println!();
    println!(
        "{arch}, T={t}, {what}; {n_ref} synthetic 3x32x32 images; adversarial images: PGD-7 \
         (eps 8/255, step 2/255) made once on {dev_name}, stored as u8, scored on both devices."
    );
    println!();
    println!("| quantity | {ref_name} | {dev_name} |");
    println!("|---|---|---|");
    println!(
        "| clean correct (of {n_ref}) | {} | {} |",
        correct(&clean_ref, labels),
        correct(&clean_dev, labels)
    );
    println!(
        "| adversarial correct (of {n_ref}) | {} | {} |",
        correct(&adv_ref_logits, labels),
        correct(&adv_dev, labels)
    );
    println!(
        "| clean predictions that differ | | {} |",
        differing(&clean_dev, &clean_ref)
    );
    println!(
        "| adversarial predictions that differ | | {} |",
        differing(&adv_dev, &adv_ref_logits)
    );
    println!("| clean logits: max abs error / max abs logit | | {clean_max:.2e} |");
    println!("| clean logits: relative L2 error | | {clean_l2:.2e} |");
    println!("| adversarial logits: max abs error / max abs logit | | {adv_max:.2e} |");
    println!("| adversarial logits: relative L2 error | | {adv_l2:.2e} |");
    println!("| input gradient ({n_grad} images): relative L2 error | | {grad_rel:.2e} |");
    println!();

    // 2. Timings on the device, each row printed as soon as it is measured: clean forward, PGD-7
    // (its warm-up makes the shared adversarial set the candidate is scored on), one candidate.
    let n = o.images;
    let share = |steps_left: u32| o.budget.saturating_sub(started.elapsed()) / steps_left;
    let layers = model.num_layers();
    let candidate_layer = o.candidate_layer.unwrap_or(layers / 2);
    if candidate_layer >= layers {
        return Err(format!(
            "--candidate-layer {candidate_layer}: the model has layers 0..{}",
            layers - 1
        )
        .into());
    }
    println!("## Timings on {dev_name} (fp32)");
    println!();
    // The references and targets are for VGG-11, T=8, 1,000 images: another setup is not compared.
    let comparable = o.model.is_none() && o.arch == "vgg11" && t == 8 && n == 1000;
    println!(
        "{arch}, T={t}, {n} synthetic 3x32x32 images in batches of {}; median of the timed runs \
         after one warm-up. Reference columns: one H200, VGG-11, T=8, 1,000 images; target: issue \
         14's, on one H200; the last column is ccsrp's time over spikingjelly's (below 1: faster).{}",
        o.batch.min(n),
        if comparable {
            ""
        } else {
            " This run's setup differs from the references', so it is not compared with them (n/a)."
        }
    );
    println!();
    println!(
        "| step | ccsrp | runs | spikingjelly 2.0 | PyTorch eager | target (H200) | time ccsrp / spikingjelly |"
    );
    println!("|---|---|---|---|---|---|---|");
    let pixels: Vec<Tensor> = chunks(0..n, o.batch)
        .map(|r| images_to_tensor(&images, r, &device))
        .collect::<Result<_, _>>()?;
    let clean = Timing::measure(&device, o.repeats, share(5), || {
        for x in &pixels {
            model.forward_eval(x)?;
        }
        Ok(())
    })?;
    print_row(&CLEAN, &clean, "", comparable);

    let labels_dev: Vec<Tensor> = chunks(0..n, o.batch)
        .map(|r| Tensor::from_slice(&images.labels[r.clone()], r.len(), &device))
        .collect::<Result<_, _>>()?;
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    let mut adv_set: Option<ImageSet> = None;
    let pgd = Timing::measure(&device, o.repeats, share(4), || {
        let mut bytes = Vec::with_capacity(n * images.image_bytes());
        for (x, y) in pixels.iter().zip(&labels_dev) {
            let adv = attack::attack(&model, x, y, &AttackParams::default(), &mut rng)?;
            if adv_set.is_none() {
                bytes.extend(attack::quantize_u8(&adv)?);
            }
        }
        if adv_set.is_none() {
            adv_set = Some(ImageSet {
                pixels: bytes,
                labels: images.labels.clone(),
                ..images.slice(0..0)
            });
        }
        Ok(())
    })?;
    print_row(&PGD7, &pgd, "", comparable);
    drop((pixels, labels_dev));

    let adv_set = adv_set.ok_or("PGD made no adversarial images")?;
    let mut counts = (0, 0);
    let candidate = Timing::measure(&device, o.repeats, share(3), || {
        counts = (
            correct(&predictions(&model, &images, n, o.batch)?, &images.labels),
            correct(&predictions(&model, &adv_set, n, o.batch)?, &adv_set.labels),
        );
        Ok(())
    })?;
    print_row(&CANDIDATE_WHOLE, &candidate, "", comparable);

    // The prefix cache as a worker keeps it: what enters layer L for both image sets, on the
    // device; a layer-L candidate runs layers L.. on it (here the unpruned network itself).
    let cached = |set: &ImageSet| -> Result<Vec<(Tensor, std::ops::Range<usize>)>, BoxError> {
        chunks(0..n, o.batch)
            .map(|r| {
                let x = images_to_tensor(set, r.clone(), &device)?;
                let mut inputs = model.layer_inputs(&x)?;
                Ok((inputs.swap_remove(candidate_layer), r))
            })
            .collect()
    };
    let (clean_cache, adv_cache) = (cached(&images)?, cached(&adv_set)?);
    let mut prefix_counts = (0, 0);
    let score =
        |cache: &[(Tensor, std::ops::Range<usize>)], labels: &[u32]| -> Result<u64, BoxError> {
            let mut right = 0;
            for (input, r) in cache {
                let classes = model
                    .forward_from(candidate_layer, input)?
                    .argmax(D::Minus1)?
                    .to_vec1::<u32>()?;
                right += correct(&classes, &labels[r.clone()]);
            }
            Ok(right)
        };
    let prefix = Timing::measure(&device, o.repeats, share(2), || {
        prefix_counts = (
            score(&clean_cache, &images.labels)?,
            score(&adv_cache, &adv_set.labels)?,
        );
        Ok(())
    })?;
    print_row(
        &CANDIDATE_PREFIX,
        &prefix,
        &format!(" (layers {candidate_layer}..{layers})"),
        comparable,
    );
    drop((clean_cache, adv_cache));
    let prefix_note = if prefix_counts == counts {
        "the same through the prefix cache".to_string()
    } else {
        format!(
            "MISMATCH: through the prefix cache {}/{n} clean and {}/{n} adversarial; the cache \
             must not change a count",
            prefix_counts.0, prefix_counts.1
        )
    };
    // One training step: a worker's fine-tuning step without the adversarial half (clean images,
    // no augmentation), on a copy of the model.
    let train_n = o.train_batch.min(n);
    let train_set = images.slice(0..train_n);
    let config = TrainConfig {
        epochs: 1,
        batch_size: train_n,
        augment: false,
        adversarial: AttackParams::none(),
        ..TrainConfig::default()
    };
    let mut student = model.try_clone()?;
    let training = Timing::measure(&device, o.repeats, share(1), || {
        train::train(&mut student, &train_set, &config, &mut |_| {})?;
        Ok(())
    })?;
    print_row(
        &TRAIN_STEP,
        &training,
        &format!(" ({train_n} images, SGD)"),
        comparable,
    );
    println!();
    println!(
        "The candidate scored {}/{n} clean and {}/{n} adversarial ({prefix_note}); the whole \
         check took {}.",
        counts.0,
        counts.1,
        format_secs(started.elapsed().as_secs_f64())
    );
    Ok(())
}

/// One row of the timings table: our median beside the reference step's numbers and the target.
/// `comparable`: the run's setup is the references' (otherwise the verdict and ratio are n/a).
fn print_row(step: &Step, timing: &Timing, detail: &str, comparable: bool) {
    let ours = timing.median().as_secs_f64();
    let or_dash = |v: Option<f64>| v.map_or("-".to_string(), format_secs);
    let target = match step.target {
        Some(target) if !comparable => format!("<= {} (n/a)", format_secs(target)),
        Some(target) => format!(
            "<= {} ({})",
            format_secs(target),
            if ours <= target { "met" } else { "not met" }
        ),
        None => "-".into(),
    };
    println!(
        "| {}{detail} | {} | {} | {} | {} | {target} | {} |",
        step.name,
        format_secs(ours),
        timing.describe_runs(),
        or_dash(step.spikingjelly),
        or_dash(step.torch),
        match step.spikingjelly {
            Some(_) if !comparable => "n/a".to_string(),
            Some(sj) => format!("{:.2}", ours / sj),
            None => "-".to_string(),
        },
    );
}

fn main() -> ExitCode {
    ccsrp_worker::allocator::keep_freed_memory();
    let options = match parse_options(std::env::args().skip(1)) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("gpu_check: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpu_check: {e}");
            ExitCode::FAILURE
        }
    }
}
