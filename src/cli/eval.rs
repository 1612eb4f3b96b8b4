//! `ccsrp eval`: clean and adversarial accuracy of a model file on a dataset's test split.
//!
//! Counts are exact integers; the adversarial images are the attack's f32 output (not quantised),
//! made white-box against the model itself (or, with `--source`, on another model: a transfer
//! attack). Also reports each conv layer's spike rate and synaptic operations on the clean images,
//! and the energy estimate of one image ([`ccsrp_proto::energy`]; `--e-ac-pj`, `--e-mac-pj`).
//!
//! Robustness that survives gradient masking: `--restarts R` runs every PGD R times from fresh
//! random starts, `--surrogates LIST` also differentiates through other surrogate gradients (the
//! forward pass is unchanged), `--source FILE` adds the transfer attack, and `--strong` adds the
//! strong set the final tables report ([`StrongAttackPlan`]): FGSM, PGD-`--strong-steps` (step
//! 2.5 x eps / steps) with restarts through the model's own surrogate and sigmoid:4, atan:2 and
//! triangle:1, and the transfer PGD. Every attack counts an image as robust only if it survives
//! all restarts; the "strong robust (worst case per image)" count is the images classified
//! correctly on the clean input AND under every attack run, decided per image
//! ([`ccsrp_worker::attack::robustness`]).
//!
//! `--held-out` measures instead exactly as a job's test step does ([`ccsrp_worker::held_out`]):
//! clean, FGSM and PGD counts with the attack starts seeded from the model file's sha256 and the
//! adversarial images quantised to u8; a job's `summary.json` stores (and `ccsrp run` prints) the
//! `--held-out` command that reproduces each of its test numbers.
//!
//! Accuracies are percentages (rounded to 0.01) beside the exact correct counts, as everywhere in
//! ccsrp.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use ccsrp_proto::energy::{self, EnergyEstimate, EnergyModel};
use ccsrp_worker::attack::{
    robustness, AttackKind, AttackParams, AttackRun, AttackScope, StrongAttackPlan,
    STRONG_PGD_STEPS, STRONG_RESTARTS,
};
use ccsrp_worker::data::{DatasetKind, DatasetSpec};
use ccsrp_worker::device::parse_device;
use ccsrp_worker::eval::{activity, DEFAULT_BATCH};
use ccsrp_worker::lif::SurrogateSpec;
use ccsrp_worker::model::SnnModel;
use ccsrp_worker::train::TrainError;

use ccsrp_master::job::percent;

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
    /// Attack radius (L-inf, pixel units): a number or a fraction like 8/255. Also the radius of
    /// --strong's attacks.
    #[arg(long, default_value = "8/255", value_parser = parse_pixel_value, allow_hyphen_values = true)]
    pub eps: f64,
    /// PGD step size (pixel units) of --attack pgd.
    #[arg(long, default_value = "2/255", value_parser = parse_pixel_value, allow_hyphen_values = true)]
    pub step: f64,
    /// PGD iterations of --attack pgd.
    #[arg(long, default_value_t = 7)]
    pub steps: usize,
    /// Random restarts of every PGD attack; an image counts as robust only if it survives all of
    /// them [default: 1, or 2 with --strong].
    #[arg(long)]
    pub restarts: Option<usize>,
    /// Also attack through these surrogate gradients, comma-separated `name[:alpha]`: sigmoid
    /// (alpha 4), atan (2), triangle (1: alpha * max(0, 1 - alpha * |h - v_th|)). The model's own
    /// surrogate is always attacked too; an image counts only if it survives every one
    /// [default: none, or sigmoid,atan,triangle for --strong's PGD].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub surrogates: Vec<SurrogateSpec>,
    /// Transfer attack: craft the adversarial examples on this model file (e.g. the dense model,
    /// through its own surrogate) and score them on --model. Same input shape and classes.
    #[arg(long, value_name = "FILE")]
    pub source: Option<PathBuf>,
    /// Strong evaluation: add FGSM, PGD-<--strong-steps> (step 2.5 x eps / steps, --restarts
    /// restarts) through the model's own surrogate and every --surrogates entry, and the transfer
    /// PGD from --source; report the worst case per image.
    #[arg(long)]
    pub strong: bool,
    /// PGD iterations of --strong (step 2.5 x eps / steps).
    #[arg(long, default_value_t = STRONG_PGD_STEPS)]
    pub strong_steps: usize,
    /// Attack every image with every run, so each attack's count is its own. By default --strong
    /// attacks an image only while no earlier run has fooled it: the worst case is over the same
    /// attacks at a fraction of the cost, and each attack's count is cumulative.
    #[arg(long)]
    pub every_image: bool,
    /// Evaluate at most this many test images (a seeded random subset).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Images per batch.
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    pub batch_size: usize,
    /// Seed of the test subset and of PGD's random starts.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Measure as a job's test step does: clean, FGSM (--fgsm-eps) and PGD (--eps, --step,
    /// --steps) counts, attack starts seeded from the model file's sha256, adversarial images
    /// quantised to u8. With a job's `--seed` and `--limit` (its `job.seed` and
    /// `data.test_limit`) this reproduces the job's test numbers exactly.
    #[arg(long, conflicts_with_all = ["attack", "strong", "restarts", "surrogates", "source", "every_image"])]
    pub held_out: bool,
    /// FGSM radius of --held-out [default: --eps].
    #[arg(long, value_parser = parse_pixel_value, requires = "held_out")]
    pub fgsm_eps: Option<f64>,
    /// PGD of --held-out without a random start.
    #[arg(long, requires = "held_out")]
    pub no_random_start: bool,
    /// Print one JSON object instead of a summary for people.
    #[arg(long)]
    pub json: bool,
    /// Energy of one accumulate (a spike through a synapse) in pJ, for the energy estimate.
    #[arg(long, default_value_t = ccsrp_proto::energy::DEFAULT_E_AC_PJ)]
    pub e_ac_pj: f64,
    /// Energy of one multiply-accumulate in pJ (the first layer's and the ANN's operations).
    #[arg(long, default_value_t = ccsrp_proto::energy::DEFAULT_E_MAC_PJ)]
    pub e_mac_pj: f64,
}

/// What `ccsrp eval --json` prints. Accuracies are percentages rounded to 0.01; the counts beside
/// them are exact.
#[derive(Serialize)]
struct EvalReport {
    model: String,
    dataset: String,
    images: u64,
    /// The --attack as configured (absent for `--attack none`).
    #[serde(skip_serializing_if = "Option::is_none")]
    attack: Option<AttackParams>,
    clean_correct: u64,
    clean_accuracy: f64,
    /// Images correct under the configured --attack: every restart, every surrogate, white-box
    /// (transfer and --strong's attacks not included); absent for `--attack none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    adversarial_correct: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    adversarial_accuracy: Option<f64>,
    /// Random restarts of every PGD run.
    restarts: usize,
    /// The model's own surrogate gradient.
    model_surrogate: String,
    /// The other surrogates attacked through (`name:alpha`).
    surrogates: Vec<String>,
    /// The transfer source model file.
    source: Option<String>,
    strong: bool,
    /// --strong's PGD (absent without --strong).
    strong_pgd: Option<AttackParams>,
    /// Which images each run attacked: every_image, or survivors (counts cumulative).
    scope: AttackScope,
    /// Every attack run, in order.
    attacks: Vec<AttackEntry>,
    /// Images correct on the clean input and under every attack run, decided per image (the
    /// clean count when no attack ran).
    worst_case_correct: u64,
    worst_case_accuracy: f64,
    /// The spiking layers `spike_rates` and `energy.layers` are in, named as the PyTorch model's
    /// neuron modules (VGG `features.{i}`; ResNet `sn1`, `layer{s}.{b}.sn1`, ..., `layer{s}.{b}.sn2`).
    spiking_layers: Vec<String>,
    spike_rates: Vec<f64>,
    /// Spikes, SOPs per layer and in total, first-layer MACs and the energy of one image over
    /// all T steps on the clean images; the same network's ANN MACs and energy beside them.
    energy: EnergyEstimate,
    seconds: f64,
}

/// One attack run of the report.
#[derive(Serialize)]
struct AttackEntry {
    name: String,
    attack: AttackParams,
    restarts: usize,
    /// The surrogate the gradients went through (`name:alpha`).
    surrogate: String,
    /// Crafted on --source.
    transfer: bool,
    /// Images correct after every restart (clean correctness not required).
    correct: u64,
    accuracy: f64,
}

/// The attack runs the flags ask for, in report order: the configured --attack (with --restarts)
/// white-box through the model's own surrogate, then through each --surrogates entry, then as a
/// transfer from --source; with --strong the [`StrongAttackPlan`] runs after those. Errors name
/// the flag.
fn attack_runs(args: &EvalArgs, params: &AttackParams) -> anyhow::Result<Vec<AttackRun>> {
    let restarts = match args.restarts {
        Some(0) => anyhow::bail!("--restarts 0: expected at least 1 restart"),
        Some(r) => r,
        None if args.strong => STRONG_RESTARTS,
        None => 1,
    };
    if args.strong_steps == 0 {
        anyhow::bail!("--strong-steps 0: the strong PGD needs at least 1 step");
    }
    if !args.strong {
        let attack = params.kind;
        let need = "use --attack fgsm|pgd or --strong";
        if restarts > 1 && attack != AttackKind::Pgd {
            anyhow::bail!("--restarts {restarts}: only PGD has random restarts ({need})");
        }
        if !args.surrogates.is_empty() && attack == AttackKind::None {
            anyhow::bail!("--surrogates: there is no attack to run through them ({need})");
        }
        if args.source.is_some() && attack == AttackKind::None {
            anyhow::bail!("--source: there is no attack to transfer ({need})");
        }
    }
    let mut runs = Vec::new();
    if params.kind != AttackKind::None {
        let base = AttackRun::new(params.clone()).with_restarts(restarts);
        runs.push(base.clone());
        runs.extend(args.surrogates.iter().map(|s| base.clone().through(*s)));
        if args.source.is_some() {
            runs.push(base.transferred());
        }
    }
    for run in &runs {
        run.validate()
            .map_err(|e| flag_error(TrainError::Attack(e)))?;
    }
    if args.strong {
        let plan = StrongAttackPlan {
            eps: params.eps,
            pgd_steps: args.strong_steps,
            pgd_step: None,
            restarts,
            surrogates: if args.surrogates.is_empty() {
                SurrogateSpec::standard()
            } else {
                args.surrogates.clone()
            },
            fgsm: true,
            transfer: true,
            extra: runs,
        };
        plan.validate()
            .map_err(|e| flag_error(TrainError::Attack(e)))?;
        runs = plan.runs(args.source.is_some());
    }
    Ok(runs)
}

/// Loads --source and checks it can stand in for the model: the same input shape and classes.
fn load_source(path: &Path, args: &EvalArgs, model: &SnnModel) -> anyhow::Result<SnnModel> {
    if !path.is_file() {
        anyhow::bail!("--source {}: no such model file", path.display());
    }
    let source = SnnModel::load(path, model.device())
        .with_context(|| format!("--source {}", path.display()))?;
    check_source_shape(path, &source, &args.model, model)?;
    Ok(source)
}

fn check_source_shape(
    source_path: &Path,
    source: &SnnModel,
    model_path: &Path,
    model: &SnnModel,
) -> anyhow::Result<()> {
    let (s, m) = (source.spec(), model.spec());
    if s.input != m.input {
        anyhow::bail!(
            "--source {}: takes {}x{}x{} images, but --model {} takes {}x{}x{}",
            source_path.display(),
            s.input.channels,
            s.input.height,
            s.input.width,
            model_path.display(),
            m.input.channels,
            m.input.height,
            m.input.width
        );
    }
    if s.class_names != m.class_names {
        anyhow::bail!(
            "--source {}: has {} classes {:?}, but --model {} has {} classes {:?}",
            source_path.display(),
            s.classes(),
            s.class_names,
            model_path.display(),
            m.classes(),
            m.class_names
        );
    }
    Ok(())
}

/// What `ccsrp eval --held-out --json` prints: a job's test step's counts for the model.
#[derive(Serialize)]
struct HeldOutReport {
    model: String,
    model_sha256: String,
    dataset: String,
    seed: u64,
    images: u64,
    fgsm_eps: f64,
    pgd: AttackParams,
    clean_correct: u64,
    clean_accuracy: f64,
    fgsm_correct: u64,
    fgsm_accuracy: f64,
    pgd_correct: u64,
    pgd_accuracy: f64,
    seconds: f64,
}

/// `--held-out`: the model's counts on the test split, measured as a job's test step measures.
fn run_held_out(args: &EvalArgs, started: Instant) -> anyhow::Result<()> {
    let pgd = AttackParams {
        random_start: !args.no_random_start,
        ..AttackParams::pgd(args.eps, args.step, args.steps)
    };
    let fgsm_eps = args.fgsm_eps.unwrap_or(args.eps);
    for params in [&pgd, &AttackParams::fgsm(fgsm_eps)] {
        params
            .validate()
            .map_err(|e| flag_error(TrainError::Attack(e)))?;
    }
    if args.limit == Some(0) {
        anyhow::bail!("--limit 0: expected at least 1 test image");
    }
    let device = parse_device(&args.device).context("--device")?;
    let bytes = std::fs::read(&args.model).with_context(|| {
        format!(
            "--model {}: cannot read the model file",
            args.model.display()
        )
    })?;
    let sha256 = ccsrp_proto::artifact_chunks::sha256_hex(&bytes);
    let model = SnnModel::load(&args.model, &device)?;
    // The test split does not depend on the eval and validation sizes: hold out one image each
    // so that small datasets load.
    let dataset = DatasetSpec {
        seed: args.seed,
        test_limit: args.limit,
        eval_size: 1,
        val_size: 1,
        ..DatasetSpec::new(args.dataset, args.data_dir.clone())
    };
    let test = load_test(args, &dataset, &model)?;
    let counts = ccsrp_worker::held_out::split_counts(
        &model,
        &test,
        fgsm_eps,
        &pgd,
        ccsrp_worker::held_out::seed_from_name(&sha256),
    )
    .map_err(|e| flag_error(TrainError::Attack(e)))?;
    let pct = |c: u64| percent(c, counts.samples);
    let report = HeldOutReport {
        model: args.model.display().to_string(),
        model_sha256: sha256,
        dataset: args.dataset.to_string(),
        seed: args.seed,
        images: counts.samples,
        fgsm_eps,
        clean_correct: counts.clean,
        clean_accuracy: pct(counts.clean),
        fgsm_correct: counts.fgsm,
        fgsm_accuracy: pct(counts.fgsm),
        pgd_correct: counts.pgd,
        pgd_accuracy: pct(counts.pgd),
        pgd,
        seconds: started.elapsed().as_secs_f64(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let n = report.images;
        println!(
            "{} on {} ({n} test images, as a job's test step: attack seed from sha256 {}, images quantised to u8)",
            report.model,
            report.dataset,
            &report.model_sha256[..16]
        );
        println!(
            "clean: {}/{n} = {:.2}%",
            report.clean_correct, report.clean_accuracy
        );
        println!(
            "fgsm:  {}/{n} = {:.2}%  (eps {:.4})",
            report.fgsm_correct, report.fgsm_accuracy, report.fgsm_eps
        );
        let p = &report.pgd;
        println!(
            "pgd:   {}/{n} = {:.2}%  (eps {:.4}, step {:.4}, {} steps{})",
            report.pgd_correct,
            report.pgd_accuracy,
            p.eps,
            p.step,
            p.steps,
            if p.random_start {
                ""
            } else {
                ", no random start"
            }
        );
        println!("{:.1} s", report.seconds);
    }
    Ok(())
}

/// The test images of `dataset`, checked to fit the model: their shape and the number of classes.
fn load_test(
    args: &EvalArgs,
    dataset: &DatasetSpec,
    model: &SnnModel,
) -> anyhow::Result<ccsrp_worker::data::ImageSet> {
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
    Ok(test)
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let signals = super::stop::StopSignals::listen(|signal| {
        super::stop::announce(
            &indicatif::ProgressBar::hidden(),
            signal,
            "the attacks stop after their current batch, nothing is reported",
        )
    })?;
    signals.run_cancellable(|| measure_and_print(args), None)
}

/// Measures what the flags ask for and prints the report.
fn measure_and_print(args: EvalArgs) -> anyhow::Result<()> {
    if args.held_out {
        return run_held_out(&args, Instant::now());
    }
    let report = evaluate(&args)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// The measurement the flags ask for (all but `--held-out`).
fn evaluate(args: &EvalArgs) -> anyhow::Result<EvalReport> {
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
    let energy_model = EnergyModel {
        e_ac_pj: args.e_ac_pj,
        e_mac_pj: args.e_mac_pj,
    };
    for (flag, v) in [("--e-ac-pj", args.e_ac_pj), ("--e-mac-pj", args.e_mac_pj)] {
        if !(v.is_finite() && v >= 0.0) {
            anyhow::bail!("{flag} {v}: expected a finite number of picojoules >= 0");
        }
    }
    if args.limit == Some(0) {
        anyhow::bail!("--limit 0: expected at least 1 test image");
    }
    let runs = attack_runs(args, &params)?;
    let device = parse_device(&args.device).context("--device")?;
    let model = SnnModel::load(&args.model, &device)?;
    let source = match &args.source {
        Some(path) => Some(load_source(path, args, &model)?),
        None => None,
    };
    let dataset = DatasetSpec {
        seed: args.seed,
        test_limit: args.limit,
        ..DatasetSpec::new(args.dataset, args.data_dir.clone())
    };
    let test = load_test(args, &dataset, &model)?;
    let scope = if args.strong && !args.every_image {
        AttackScope::Survivors
    } else {
        AttackScope::EveryImage
    };
    let result = robustness(
        &model,
        source.as_ref(),
        &test,
        0..test.len(),
        &runs,
        args.seed,
        args.batch_size,
        scope,
    )
    .map_err(|e| flag_error(TrainError::Attack(e)))?;
    let energy = energy::estimate(
        &activity(&model, &test, args.batch_size)?,
        &model.description(),
        &energy_model,
    );
    let rates: Vec<f64> = energy.layers.iter().map(|l| l.spike_rate).collect();
    let accuracy = |c: u64| percent(c, result.images);
    // The configured attack: every white-box run of exactly its parameters.
    let configured: Vec<&[bool]> = result
        .attacks
        .iter()
        .filter(|a| !a.run.transfer && a.run.params == params)
        .map(|a| a.per_image.as_slice())
        .collect();
    let adversarial_correct = if params.kind == AttackKind::None {
        None
    } else if configured.is_empty() {
        Some(result.clean_correct)
    } else {
        Some(
            ccsrp_worker::attack::correct_under_all(result.clean.len(), configured)?
                .iter()
                .filter(|c| **c)
                .count() as u64,
        )
    };
    let own = model.surrogate();
    let mut surrogates: Vec<String> = Vec::new();
    for a in &result.attacks {
        let name = a.surrogate.to_string();
        if !a.run.transfer && a.surrogate != own && !surrogates.contains(&name) {
            surrogates.push(name);
        }
    }
    let report = EvalReport {
        model: args.model.display().to_string(),
        dataset: args.dataset.to_string(),
        images: result.images,
        clean_correct: result.clean_correct,
        clean_accuracy: accuracy(result.clean_correct),
        adversarial_correct,
        adversarial_accuracy: adversarial_correct.map(accuracy),
        restarts: match args.restarts {
            Some(r) => r,
            None if args.strong => STRONG_RESTARTS,
            None => 1,
        },
        model_surrogate: own.to_string(),
        surrogates,
        source: args.source.as_ref().map(|p| p.display().to_string()),
        strong: args.strong,
        scope,
        strong_pgd: args.strong.then(|| {
            StrongAttackPlan {
                pgd_steps: args.strong_steps,
                ..StrongAttackPlan::standard(params.eps)
            }
            .pgd()
        }),
        attacks: result
            .attacks
            .iter()
            .map(|a| AttackEntry {
                name: a.label(),
                attack: a.run.params.clone(),
                restarts: a.run.restarts,
                surrogate: a.surrogate.to_string(),
                transfer: a.run.transfer,
                correct: a.correct,
                accuracy: accuracy(a.correct),
            })
            .collect(),
        worst_case_correct: result.worst_case_correct,
        worst_case_accuracy: accuracy(result.worst_case_correct),
        attack: (params.kind != AttackKind::None).then_some(params),
        spiking_layers: ccsrp_worker::eval::activity_layer_names(&model),
        spike_rates: rates,
        energy,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok(report)
}

fn print_report(report: &EvalReport) {
    println!(
        "{} on {} ({} test images)",
        report.model, report.dataset, report.images
    );
    let width = report
        .attacks
        .iter()
        .map(|a| a.name.len() + 1)
        .chain([12])
        .max()
        .unwrap_or(12);
    println!(
        "{:<width$} {}/{} = {:.2}%",
        "clean:", report.clean_correct, report.images, report.clean_accuracy
    );
    for a in &report.attacks {
        let p = &a.attack;
        let budget = match p.kind {
            AttackKind::Pgd => format!("eps {:.4}, step {:.4}, {} steps", p.eps, p.step, p.steps),
            _ => format!("eps {:.4}", p.eps),
        };
        let from = match (&report.source, a.transfer) {
            (Some(source), true) => format!(", crafted on {source}"),
            _ => String::new(),
        };
        println!(
            "{:<width$} {}/{} = {:.2}%  ({budget}{from})",
            format!("{}:", a.name),
            a.correct,
            report.images,
            a.accuracy
        );
    }
    if !report.attacks.is_empty() {
        println!(
            "strong robust (worst case per image): {}/{} = {:.2}%  (correct on the clean image and under all {} attacks)",
            report.worst_case_correct,
            report.images,
            report.worst_case_accuracy,
            report.attacks.len()
        );
    }
    let rates: Vec<String> = report
        .spike_rates
        .iter()
        .zip(&report.spiking_layers)
        .map(|(r, name)| format!("{name} {r:.3}"))
        .collect();
    println!("spike rate per spiking layer: {}", rates.join(", "));
    let e = &report.energy;
    let sops: Vec<String> = e
        .layers
        .iter()
        .map(|l| format!("{:.0}", l.sops_per_image))
        .collect();
    println!(
        "SOPs per image: {:.0} (per layer: {}); first-layer MACs: {}",
        e.sops_per_image,
        sops.join(", "),
        e.first_layer_macs
    );
    println!(
        "energy per image: {:.3} uJ as an SNN ({} pJ/AC, {} pJ/MAC); {:.3} uJ as an ANN ({} MACs)",
        e.energy_pj * 1e-6,
        e.e_ac_pj,
        e.e_mac_pj,
        e.ann_energy_pj * 1e-6,
        e.ann_macs
    );
    println!("{:.1} s", report.seconds);
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
        "restarts" => "--restarts",
        "surrogate" => "--surrogates",
        "pgd_steps" => "--strong-steps",
        "source" => "--source",
        other => other,
    };
    anyhow::anyhow!("{flag}: {reason}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ccsrp_worker::lif::SurrogateKind;

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

    #[derive(clap::Parser)]
    struct TestCli {
        #[command(flatten)]
        args: EvalArgs,
    }

    fn parse(flags: &[&str]) -> Result<EvalArgs, clap::Error> {
        use clap::Parser;
        let argv = ["eval", "--model", "m.safetensors"].iter().chain(flags);
        TestCli::try_parse_from(argv).map(|c| c.args)
    }

    fn params_of(args: &EvalArgs) -> AttackParams {
        AttackParams {
            kind: args.attack,
            eps: args.eps,
            step: args.step,
            steps: args.steps,
            random_start: true,
        }
    }

    fn runs_of(flags: &[&str]) -> anyhow::Result<Vec<AttackRun>> {
        let args = parse(flags).map_err(|e| anyhow::anyhow!("{e}"))?;
        attack_runs(&args, &params_of(&args))
    }

    #[test]
    fn plain_flags_keep_the_single_configured_attack() {
        assert!(runs_of(&[]).unwrap().is_empty());
        let args = parse(&["--attack", "pgd"]).unwrap();
        assert_eq!(
            attack_runs(&args, &params_of(&args)).unwrap(),
            [AttackRun::new(params_of(&args))]
        );
        let runs = runs_of(&[
            "--attack",
            "pgd",
            "--restarts",
            "3",
            "--surrogates",
            "atan,triangle:0.5",
            "--source",
            "dense.safetensors",
        ])
        .unwrap();
        let labels: Vec<String> = runs
            .iter()
            .map(|r| {
                r.label(
                    r.surrogate
                        .unwrap_or(SurrogateSpec::new(SurrogateKind::Sigmoid)),
                )
            })
            .collect();
        assert_eq!(
            labels,
            [
                "pgd-7 x3 via sigmoid:4",
                "pgd-7 x3 via atan:2",
                "pgd-7 x3 via triangle:0.5",
                "transfer pgd-7 x3 via sigmoid:4",
            ]
        );
    }

    #[test]
    fn strong_adds_fgsm_pgd_through_every_surrogate_and_the_transfer() {
        let runs = runs_of(&["--strong", "--source", "dense.safetensors"]).unwrap();
        let pgd = StrongAttackPlan::standard(8.0 / 255.0).pgd();
        assert_eq!(pgd.steps, 50);
        assert!((pgd.step - 2.5 * (8.0 / 255.0) / 50.0).abs() < 1e-15);
        let base = AttackRun::new(pgd).with_restarts(2);
        let mut expected = vec![
            AttackRun::new(AttackParams::fgsm(8.0 / 255.0)),
            base.clone(),
        ];
        expected.extend(
            SurrogateSpec::standard()
                .into_iter()
                .map(|s| base.clone().through(s)),
        );
        expected.push(base.transferred());
        assert_eq!(runs, expected);
        // The configured attack comes first, with the strong default of 2 restarts.
        let runs = runs_of(&["--strong", "--attack", "pgd", "--strong-steps", "20"]).unwrap();
        assert_eq!(runs[0].params.steps, 7);
        assert_eq!(runs[0].restarts, 2);
        assert_eq!(runs[2].params.steps, 20);
        assert_eq!(runs.len(), 6);
        // --surrogates replaces the three defaults, --restarts the default 2.
        let runs = runs_of(&["--strong", "--surrogates", "atan:3", "--restarts", "4"]).unwrap();
        assert_eq!(runs.len(), 3);
        assert!(runs[1..].iter().all(|r| r.restarts == 4));
        assert_eq!(runs[2].surrogate, Some("atan:3".parse().unwrap()));
    }

    #[test]
    fn bad_strong_flags_are_errors_naming_the_flag() {
        let err = |flags: &[&str]| runs_of(flags).unwrap_err().to_string();
        let e = err(&["--attack", "pgd", "--restarts", "0"]);
        assert!(e.starts_with("--restarts 0"), "{e}");
        let e = err(&["--strong", "--restarts", "0"]);
        assert!(e.starts_with("--restarts 0"), "{e}");
        let e = err(&["--attack", "fgsm", "--restarts", "3"]);
        assert!(e.starts_with("--restarts 3"), "{e}");
        let e = err(&["--surrogates", "atan"]);
        assert!(e.starts_with("--surrogates"), "{e}");
        let e = err(&["--source", "dense.safetensors"]);
        assert!(e.starts_with("--source"), "{e}");
        let e = err(&["--strong", "--strong-steps", "0"]);
        assert!(e.starts_with("--strong-steps"), "{e}");
        let e = err(&["--strong", "--eps", "2"]);
        assert!(e.starts_with("--eps"), "{e}");
        for bad in ["relu", "atan:0", "sigmoid:x", "atan,,triangle"] {
            let e = parse(&["--attack", "pgd", "--surrogates", bad])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("--surrogates"), "{bad}: {e}");
        }
    }

    #[test]
    fn json_accuracies_are_percentages_and_attack_none_has_no_attack_fields() {
        use ccsrp_worker::arch::{Architecture, InputShape};
        use ccsrp_worker::model::ModelSpec;
        let dir = tempfile::tempdir().unwrap();
        let device = parse_device("cpu").unwrap();
        let spec = ModelSpec::new(
            Architecture::preset("tiny").unwrap(),
            1,
            InputShape {
                channels: 3,
                height: 32,
                width: 32,
            },
            (0..10).map(|c| c.to_string()).collect(),
        );
        let path = dir.path().join("model.safetensors");
        SnnModel::new(spec, &device, 0)
            .unwrap()
            .save(&path)
            .unwrap();
        let report_of = |flags: &[&str]| {
            let mut args = parse(flags).unwrap();
            args.model = path.clone();
            serde_json::to_value(evaluate(&args).unwrap()).unwrap()
        };
        let none = report_of(&["--limit", "8"]);
        for absent in ["attack", "adversarial_correct", "adversarial_accuracy"] {
            assert!(none.get(absent).is_none(), "{absent} in {none}");
        }
        let clean = none["clean_correct"].as_u64().unwrap();
        assert_eq!(
            none["clean_accuracy"].as_f64(),
            Some(percent(clean, 8)),
            "{none}"
        );
        let fgsm = report_of(&["--limit", "8", "--attack", "fgsm"]);
        let correct = fgsm["adversarial_correct"].as_u64().unwrap();
        assert_eq!(
            fgsm["adversarial_accuracy"].as_f64(),
            Some(100.0 * correct as f64 / 8.0)
        );
        assert_eq!(fgsm["attack"]["kind"], "fgsm", "{fgsm}");
    }

    #[test]
    fn source_file_errors_name_the_flag_and_the_files() {
        use ccsrp_worker::arch::{Architecture, InputShape};
        use ccsrp_worker::model::ModelSpec;
        let dir = tempfile::tempdir().unwrap();
        let device = parse_device("cpu").unwrap();
        let write = |name: &str, side: usize, classes: &[&str]| {
            let spec = ModelSpec::new(
                Architecture::preset("tiny").unwrap(),
                2,
                InputShape {
                    channels: 1,
                    height: side,
                    width: side,
                },
                classes.iter().map(|c| c.to_string()).collect(),
            );
            let path = dir.path().join(name);
            SnnModel::new(spec, &device, 0)
                .unwrap()
                .save(&path)
                .unwrap();
            path.display().to_string()
        };
        let model = write("model.safetensors", 16, &["a", "b"]);
        let run_with = |source: &str| {
            let mut args = parse(&["--attack", "fgsm", "--source", source]).unwrap();
            args.model = PathBuf::from(&model);
            run(args).unwrap_err().to_string()
        };
        let missing = dir.path().join("missing.safetensors").display().to_string();
        let e = run_with(&missing);
        assert!(
            e.starts_with(&format!("--source {missing}: no such model file")),
            "{e}"
        );
        let small = write("small.safetensors", 8, &["a", "b"]);
        let e = run_with(&small);
        assert!(
            e.contains(&format!("--source {small}: takes 1x8x8 images"))
                && e.contains(&format!("--model {model} takes 1x16x16")),
            "{e}"
        );
        let renamed = write("renamed.safetensors", 16, &["a", "c"]);
        let e = run_with(&renamed);
        assert!(
            e.starts_with(&format!("--source {renamed}: has 2 classes")),
            "{e}"
        );
    }
}
