//! `ccsrp train`: train a dense SNN on a dataset, report clean test accuracy, save the model file.
//!
//! The first `--eval-size` + `--val-size` images of the seeded shuffle of the training images are
//! held out (the job's eval and validation splits) and never trained on; the command says so. A
//! dataset with fewer than two classes is refused. Accuracies are percentages beside the counts.
//!
//! Progress (loss and accuracy per epoch) goes to stderr: a progress bar on a terminal, one line
//! per epoch otherwise, nothing with `--json`, which prints one JSON summary object on stdout.
//! SIGINT or SIGTERM stops training after its current batch without writing the model file
//! (`cli::stop`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use ccsrp_worker::arch::{Architecture, InputShape};
use ccsrp_worker::attack::{AttackKind, AttackParams};
use ccsrp_worker::data::{DatasetKind, DatasetSpec};
use ccsrp_worker::device::parse_device;
use ccsrp_worker::eval::{count_correct, DEFAULT_BATCH};
use ccsrp_worker::model::{ModelSpec, Normalisation, SnnModel};
use ccsrp_worker::train::{train, TrainConfig, TrainError, TrainProgress};

use ccsrp_master::job::{percent, round_to};

use super::eval::{flag_error, parse_pixel_value};
use super::stop::{self, StopSignals};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Dataset: synthetic, fashion-mnist, mnist, cifar10, svhn or folder.
    #[arg(long, default_value = "synthetic")]
    pub dataset: DatasetKind,
    /// Where the dataset's files are (fashion-mnist defaults to /usr/share/datasets/fashion-mnist).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Architecture: a VGG preset (small, vgg11, tiny) or a list of conv widths and M (pool), e.g.
    /// 32,M,64,M; or a spiking ResNet: resnet18, resnet19, resnet-tiny, their sew- variants, or
    /// resnet:STEM;C1xN1,C2xN2,...[;sew], e.g. resnet:16;16x1,32x1,64x1.
    #[arg(long, default_value = "small")]
    pub arch: String,
    /// Simulation time steps T.
    #[arg(long, default_value_t = 4)]
    pub timesteps: usize,
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Peak learning rate (cosine decay to 0 over all steps).
    #[arg(long, default_value_t = 0.1, allow_hyphen_values = true)]
    pub lr: f64,
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f64,
    /// Adversarial training: none, fgsm or pgd.
    #[arg(long, default_value = "none")]
    pub adv: AttackKind,
    /// Attack radius (L-inf, pixel units): a number or a fraction like 8/255.
    #[arg(long, default_value = "8/255", value_parser = parse_pixel_value, allow_hyphen_values = true)]
    pub eps: f64,
    /// PGD step size (pixel units).
    #[arg(long, default_value = "2/255", value_parser = parse_pixel_value, allow_hyphen_values = true)]
    pub step: f64,
    /// PGD iterations.
    #[arg(long, default_value_t = 7)]
    pub steps: usize,
    /// Fraction of each batch replaced by adversarial images.
    #[arg(long, default_value_t = 0.5)]
    pub adv_fraction: f64,
    /// Train without random crops and flips.
    #[arg(long)]
    pub no_augment: bool,
    /// Use at most this many training images (a seeded random subset).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Evaluate on at most this many test images (a seeded random subset).
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Training images held out as the eval split (never trained on). To prune the model with a
    /// job, give the job's `data.eval_size`, `data.val_size` and `job.seed` here, so the dense
    /// model never sees the images that score candidates or decide when to stop.
    #[arg(long, default_value_t = 1_000)]
    pub eval_size: usize,
    /// Training images held out, after the eval split, as the validation split.
    #[arg(long, default_value_t = 1_000)]
    pub val_size: usize,
    /// Seed of the weights, the data split, the shuffle, augmentation and attacks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Where to write the trained model (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Print one JSON object instead of a summary for people.
    #[arg(long)]
    pub json: bool,
}

/// What `ccsrp train --json` prints.
#[derive(Serialize)]
struct TrainReport {
    out: String,
    dataset: String,
    architecture: String,
    timesteps: usize,
    train_images: usize,
    /// Training images held out (never trained on) as the eval and validation splits.
    eval_images: usize,
    validation_images: usize,
    test_images: usize,
    epochs: usize,
    epoch_losses: Vec<f64>,
    final_loss: f64,
    train_accuracy: f64,
    seconds_per_epoch: f64,
    test_correct: u64,
    test_accuracy: f64,
    parameters: u64,
    macs: u64,
    seconds: f64,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let bar = progress_bar(args.json);
    let signals = StopSignals::listen({
        let bar = bar.clone();
        move |signal| {
            stop::announce(
                &bar,
                signal,
                "training stops after its current batch, no model file is written",
            )
        }
    })?;
    let out = args.out.clone();
    signals.run_cancellable(
        || train_model(args, &bar),
        Some(format!("no model was written to {}", out.display())),
    )
}

/// Trains, tests and saves the model, reporting progress on `bar`.
fn train_model(args: TrainArgs, bar: &ProgressBar) -> anyhow::Result<()> {
    let started = Instant::now();
    if args.timesteps == 0 {
        anyhow::bail!("--timesteps 0: expected at least 1 time step");
    }
    let config = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        weight_decay: args.weight_decay,
        seed: args.seed,
        augment: !args.no_augment,
        adversarial: AttackParams {
            kind: args.adv,
            eps: args.eps,
            step: args.step,
            steps: args.steps,
            random_start: true,
        },
        adversarial_fraction: args.adv_fraction,
        ..TrainConfig::default()
    };
    if let Err(e) = config.validate() {
        return Err(flag_error(e));
    }
    let architecture = Architecture::from_name_or_list(&args.arch)
        .with_context(|| format!("--arch {}", args.arch))?;
    let device = parse_device(&args.device).context("--device")?;
    let dataset = DatasetSpec {
        seed: args.seed,
        eval_size: args.eval_size,
        val_size: args.val_size,
        train_limit: args.train_limit,
        test_limit: args.test_limit,
        ..DatasetSpec::new(args.dataset, args.data_dir.clone())
    };
    let splits = dataset
        .load()
        .with_context(|| format!("--dataset {}", args.dataset))?;
    check_classes(&args, &splits.train.class_names)?;
    if !args.json {
        eprintln!(
            "training on {} images; held out {} (--eval-size) + {} (--val-size) training images as \
             the eval and validation splits, never trained on",
            splits.train.len(),
            splits.eval.len(),
            splits.validation.len()
        );
    }
    let input = InputShape {
        channels: splits.train.channels,
        height: splits.train.height,
        width: splits.train.width,
    };
    let mut spec = ModelSpec::new(
        architecture,
        args.timesteps,
        input,
        splits.train.class_names.clone(),
    );
    spec.normalisation = Normalisation::from_images(&splits.train);
    let mut model = SnnModel::new(spec, &device, args.seed).with_context(|| {
        format!(
            "--arch {} on {}x{}x{} images",
            args.arch, input.channels, input.height, input.width
        )
    })?;

    bar.set_length((config.epochs * splits.train.len().div_ceil(config.batch_size)) as u64);
    let quiet = args.json;
    let mut report_progress = |p: &TrainProgress| {
        bar.inc(1);
        bar.set_message(format!(
            "epoch {}/{} loss {:.4} acc {:.2}%",
            p.epoch,
            p.epochs,
            p.loss,
            100.0 * p.accuracy
        ));
        if p.batch == p.batches && !quiet {
            let line = format!(
                "epoch {}/{}: loss {:.4}, train accuracy {:.2}%, lr {:.5}, {:.0} s elapsed",
                p.epoch,
                p.epochs,
                p.loss,
                100.0 * p.accuracy,
                p.lr,
                started.elapsed().as_secs_f64()
            );
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
    };
    let summary = match train(&mut model, &splits.train, &config, &mut report_progress) {
        Ok(summary) => summary,
        Err(e @ TrainError::InvalidConfig { .. }) => return Err(flag_error(e)),
        Err(e) => return Err(e.into()),
    };
    bar.finish_and_clear();

    let test_correct = count_correct(&model, &splits.test, DEFAULT_BATCH)
        .context("evaluating on the test split")?;
    model
        .save(&args.out)
        .with_context(|| format!("--out {}", args.out.display()))?;
    let test_images = splits.test.len();
    let report = TrainReport {
        out: args.out.display().to_string(),
        dataset: args.dataset.to_string(),
        architecture: model.spec().architecture.to_string(),
        timesteps: args.timesteps,
        train_images: splits.train.len(),
        eval_images: splits.eval.len(),
        validation_images: splits.validation.len(),
        test_images,
        epochs: summary.epochs,
        final_loss: summary.final_loss,
        epoch_losses: summary.epoch_losses,
        train_accuracy: round_to(100.0 * summary.train_accuracy, 2),
        seconds_per_epoch: summary.seconds_per_epoch,
        test_correct,
        test_accuracy: percent(test_correct, test_images as u64),
        parameters: model.parameters(),
        macs: model.macs(),
        seconds: started.elapsed().as_secs_f64(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "trained {} (T={}) on {} ({} images) for {} epochs: final loss {:.4}, train accuracy {:.2}%, {:.1} s/epoch",
            report.architecture,
            report.timesteps,
            report.dataset,
            report.train_images,
            report.epochs,
            report.final_loss,
            report.train_accuracy,
            report.seconds_per_epoch
        );
        println!(
            "clean test accuracy: {}/{} = {:.2}%",
            report.test_correct, report.test_images, report.test_accuracy
        );
        println!(
            "{} parameters, {} MACs per image; saved to {}",
            report.parameters, report.macs, report.out
        );
    }
    Ok(())
}

/// Refuses a dataset with fewer than two classes: a classifier of one class is "100 %" right
/// without learning anything.
fn check_classes(args: &TrainArgs, classes: &[String]) -> anyhow::Result<()> {
    if classes.len() < 2 {
        let dir = args
            .data_dir
            .as_ref()
            .map(|d| format!(" in {}", d.display()))
            .unwrap_or_default();
        anyhow::bail!(
            "--dataset {}{dir}: found {} class{} {:?}; a classifier needs at least two (for a \
             folder dataset, one sub-folder per class under train/ and test/)",
            args.dataset,
            classes.len(),
            if classes.len() == 1 { "" } else { "es" },
            classes
        );
    }
    Ok(())
}

/// A bar over all training steps on stderr (its length is set once the data is loaded); hidden
/// with `--json` or when stderr is not a terminal.
fn progress_bar(json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "[{elapsed_precise}] {bar:30} {pos}/{len} steps, eta {eta}  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4x4 grey PNG.
    const PNG: [u8; 71] = [
        137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 73, 72, 68, 82, 0, 0, 0, 4, 0, 0, 0, 4, 8, 0,
        0, 0, 0, 140, 154, 193, 162, 0, 0, 0, 14, 73, 68, 65, 84, 120, 156, 99, 104, 0, 2, 6, 84,
        2, 0, 80, 20, 8, 1, 112, 37, 174, 63, 0, 0, 0, 0, 73, 69, 78, 68, 174, 66, 96, 130,
    ];

    #[derive(clap::Parser)]
    struct TestCli {
        #[command(flatten)]
        args: TrainArgs,
    }

    #[test]
    fn a_dataset_of_one_class_is_refused_naming_it() {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        for split in ["train", "test"] {
            let class = dir.path().join(split).join("cat");
            std::fs::create_dir_all(&class).unwrap();
            for i in 0..4 {
                std::fs::write(class.join(format!("{i}.png")), PNG).unwrap();
            }
        }
        let data_dir = dir.path().display().to_string();
        let out = dir.path().join("model.safetensors").display().to_string();
        let argv = [
            "train",
            "--dataset",
            "folder",
            "--data-dir",
            &data_dir,
            "--arch",
            "tiny",
            "--eval-size",
            "1",
            "--val-size",
            "1",
            "--epochs",
            "1",
            "--out",
            &out,
            "--json",
        ];
        let args = TestCli::try_parse_from(argv).unwrap().args;
        let e = run(args).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "--dataset folder in {data_dir}: found 1 class [\"cat\"]"
            )),
            "{e}"
        );
        assert!(!dir.path().join("model.safetensors").exists());
    }
}
