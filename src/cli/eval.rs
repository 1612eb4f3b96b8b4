//! `ccsrp eval`: clean and adversarial accuracy of a model file on a dataset's test split.
//!
//! Counts are exact integers; the adversarial images are the attack's f32 output (not quantised),
//! made white-box against the model itself. Also reports each conv layer's spike rate on the clean
//! images.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use ccsrp_worker::attack::{robust_counts, AttackKind, AttackParams};
use ccsrp_worker::data::{DatasetKind, DatasetSpec};
use ccsrp_worker::device::parse_device;
use ccsrp_worker::eval::{spike_rates, DEFAULT_BATCH};
use ccsrp_worker::model::SnnModel;
use ccsrp_worker::train::TrainError;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Model file written by `ccsrp train` (or a pruned model).
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset: synthetic, fashion-mnist, mnist, cifar10, svhn or folder.
    #[arg(long, default_value = "synthetic")]
    pub dataset: DatasetKind,
    /// Where the dataset's files are (fashion-mnist defaults to /usr/share/datasets/fashion-mnist).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Attack: none, fgsm or pgd.
    #[arg(long, default_value = "none")]
    pub attack: AttackKind,
    /// Attack radius (L-inf, pixel units): a number or a fraction like 8/255.
    #[arg(long, default_value = "8/255", value_parser = parse_pixel_value, allow_hyphen_values = true)]
    pub eps: f64,
    /// PGD step size (pixel units).
    #[arg(long, default_value = "2/255", value_parser = parse_pixel_value, allow_hyphen_values = true)]
    pub step: f64,
    /// PGD iterations.
    #[arg(long, default_value_t = 7)]
    pub steps: usize,
    /// Evaluate at most this many test images (a seeded random subset).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Images per batch.
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    pub batch_size: usize,
    /// Seed of the test subset and of PGD's random start.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print one JSON object instead of a summary for people.
    #[arg(long)]
    pub json: bool,
}

/// What `ccsrp eval --json` prints.
#[derive(Serialize)]
struct EvalReport {
    model: String,
    dataset: String,
    images: u64,
    attack: AttackParams,
    clean_correct: u64,
    clean_accuracy: f64,
    adversarial_correct: u64,
    adversarial_accuracy: f64,
    spike_rates: Vec<f64>,
    seconds: f64,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let params = AttackParams {
        kind: args.attack,
        eps: args.eps,
        step: args.step,
        steps: args.steps,
        random_start: true,
    };
    if let Err(e) = params.validate() {
        return Err(flag_error(TrainError::Attack(e)));
    }
    if args.batch_size == 0 {
        anyhow::bail!("--batch-size 0: expected at least 1 image per batch");
    }
    if args.limit == Some(0) {
        anyhow::bail!("--limit 0: expected at least 1 test image");
    }
    let device = parse_device(&args.device).context("--device")?;
    let model = SnnModel::load(&args.model, &device)?;
    let dataset = DatasetSpec {
        seed: args.seed,
        test_limit: args.limit,
        ..DatasetSpec::new(args.dataset, args.data_dir.clone())
    };
    let test = dataset
        .load()
        .with_context(|| format!("--dataset {}", args.dataset))?
        .test;
    let input = model.spec().input;
    if (test.channels, test.height, test.width) != (input.channels, input.height, input.width) {
        anyhow::bail!(
            "--dataset {}: images are {}x{}x{}, but --model {} takes {}x{}x{}",
            args.dataset,
            test.channels,
            test.height,
            test.width,
            args.model.display(),
            input.channels,
            input.height,
            input.width
        );
    }
    if test.class_names.len() != model.spec().classes() {
        anyhow::bail!(
            "--dataset {} has {} classes, but --model {} has {}",
            args.dataset,
            test.class_names.len(),
            args.model.display(),
            model.spec().classes()
        );
    }
    let counts = robust_counts(
        &model,
        &test,
        0..test.len(),
        &params,
        args.seed,
        args.batch_size,
    )?;
    let rates = spike_rates(&model, &test, args.batch_size)?;
    let accuracy = |c: u64| c as f64 / counts.images.max(1) as f64;
    let report = EvalReport {
        model: args.model.display().to_string(),
        dataset: args.dataset.to_string(),
        images: counts.images,
        clean_correct: counts.clean_correct,
        clean_accuracy: accuracy(counts.clean_correct),
        adversarial_correct: counts.adversarial_correct,
        adversarial_accuracy: accuracy(counts.adversarial_correct),
        attack: params,
        spike_rates: rates,
        seconds: started.elapsed().as_secs_f64(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} on {} ({} test images)",
            report.model, report.dataset, report.images
        );
        println!(
            "clean:       {}/{} = {:.2}%",
            report.clean_correct,
            report.images,
            100.0 * report.clean_accuracy
        );
        if report.attack.kind != AttackKind::None {
            let a = &report.attack;
            let budget = match a.kind {
                AttackKind::Pgd => {
                    format!("eps {:.4}, step {:.4}, {} steps", a.eps, a.step, a.steps)
                }
                _ => format!("eps {:.4}", a.eps),
            };
            println!(
                "{:<12} {}/{} = {:.2}%  ({budget})",
                format!("{}:", a.kind),
                report.adversarial_correct,
                report.images,
                100.0 * report.adversarial_accuracy
            );
        }
        let rates: Vec<String> = report
            .spike_rates
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect();
        println!("spike rate per layer: {}", rates.join(", "));
        println!("{:.1} s", report.seconds);
    }
    Ok(())
}

/// A pixel value: a decimal number (`0.1`) or a fraction (`8/255`).
pub fn parse_pixel_value(text: &str) -> Result<f64, String> {
    let value = match text.split_once('/') {
        Some((num, den)) => {
            let num: f64 = num
                .trim()
                .parse()
                .map_err(|_| format!("{text:?}: expected a number or N/D"))?;
            let den: f64 = den
                .trim()
                .parse()
                .map_err(|_| format!("{text:?}: expected a number or N/D"))?;
            if den == 0.0 {
                return Err(format!("{text:?}: division by zero"));
            }
            num / den
        }
        None => text
            .trim()
            .parse()
            .map_err(|_| format!("{text:?}: expected a number or N/D"))?,
    };
    if !value.is_finite() {
        return Err(format!("{text:?}: expected a finite number"));
    }
    Ok(value)
}

/// A configuration error, reworded to name the command-line flag that set the bad field.
pub fn flag_error(error: TrainError) -> anyhow::Error {
    let (field, reason) = match error {
        TrainError::InvalidConfig { field, reason } => (field, reason),
        TrainError::Attack(ccsrp_worker::attack::AttackError::InvalidParam { field, reason }) => {
            (field, reason)
        }
        other => return other.into(),
    };
    let flag = match field {
        "epochs" => "--epochs",
        "batch_size" => "--batch-size",
        "lr" => "--lr",
        "weight_decay" => "--weight-decay",
        "adversarial_fraction" => "--adv-fraction",
        "eps" | "adversarial.eps" => "--eps",
        "step" | "adversarial.step" => "--step",
        "steps" | "adversarial.steps" => "--steps",
        other => other,
    };
    anyhow::anyhow!("{flag}: {reason}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_values_parse_as_decimals_or_fractions() {
        assert_eq!(parse_pixel_value("0.1"), Ok(0.1));
        assert_eq!(parse_pixel_value("8/255"), Ok(8.0 / 255.0));
        assert!(parse_pixel_value("8/0").is_err());
        assert!(parse_pixel_value("eight").is_err());
    }

    #[test]
    fn config_errors_name_the_flag() {
        let e = flag_error(TrainError::InvalidConfig {
            field: "batch_size",
            reason: "must be at least 1, got 0".into(),
        });
        assert_eq!(e.to_string(), "--batch-size: must be at least 1, got 0");
        let e = flag_error(TrainError::InvalidConfig {
            field: "adversarial.eps",
            reason: "must be in [0, 1]".into(),
        });
        assert!(e.to_string().starts_with("--eps:"));
    }
}
