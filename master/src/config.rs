//! The engine's configuration: the `[evolution]`, `[objectives]`, `[stop]`, `[adversarial]`,
//! `[finetune]`, `[test_attack]` and `[pretrain]` sections of a job's TOML file.
//!
//! Every constant of the algorithm is a field here, defaulting to shared/DESIGN.md section 2.
//! Sections and fields are optional (a missing one takes its default); an unknown one is an error,
//! so a typo never silently falls back to a default. [`EngineConfig::validate`] checks ranges and
//! names the offending field: `evolution.mutation_rate = 1.5: expected 0 < value <= 1`.
//!
//! The runtime embeds these sections in its job file with `#[serde(flatten)]`; the parameter
//! structs of the worker tasks ([`PgdParams`], [`FineTuneParams`], [`TestAttackParams`],
//! [`PretrainParams`]) travel inside work items unchanged.

use serde::{Deserialize, Serialize};

/// All sections the engine reads. Deserialise it from the whole job table (flattened) or alone.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    pub evolution: EvolutionConfig,
    pub objectives: ObjectivesConfig,
    pub stop: StopConfig,
    pub adversarial: AdversarialConfig,
    pub finetune: FineTuneParams,
    pub test_attack: TestAttackParams,
    pub pretrain: PretrainParams,
}

/// How a layer's candidate is placed in a whole network to be scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Collaboration {
    /// Every other layer at its current representative (CCSRP's rule).
    #[default]
    Representatives,
    /// Every other layer unpruned (CCEP's rule).
    Base,
}

/// `[evolution]`: the outer loop and the per-layer evolutionary algorithm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvolutionConfig {
    /// K: outer iterations (splice, fine-tune, test) at most.
    pub iterations: u32,
    /// G: generations per outer iteration (after generation 0, which scores the initial members).
    pub generations: u32,
    /// mu: members kept per layer's subpopulation.
    pub population: u32,
    /// lambda: offspring per layer and generation.
    pub offspring: u32,
    /// Probability that an initial member (other than member 0, which keeps all) keeps a filter.
    pub init_keep_probability: f64,
    /// Probability of flipping each bit of an offspring.
    pub mutation_rate: f64,
    /// Probability that an offspring is a uniform crossover of two parents before mutation.
    pub crossover_rate: f64,
    /// A mask keeps at least ceil(ratio_bound x filters at the iteration's start).
    pub ratio_bound: f64,
    pub collaboration: Collaboration,
    /// Re-score a surviving member whenever the other layers' representatives changed since it was
    /// scored, so that parents and offspring compete in the same network (otherwise parents keep
    /// the counts of an older context; only their MACs are recomputed).
    pub rescore_parents: bool,
}

impl Default for EvolutionConfig {
    fn default() -> Self {
        EvolutionConfig {
            iterations: 8,
            generations: 8,
            population: 6,
            offspring: 6,
            init_keep_probability: 0.95,
            mutation_rate: 0.1,
            crossover_rate: 0.0,
            ratio_bound: 0.9,
            collaboration: Collaboration::Representatives,
            rescore_parents: true,
        }
    }
}

/// `[objectives]`: weights of the preference score that picks a layer's representative from its
/// first front. Each objective is normalised to [0, 1] over the layer's population first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectivesConfig {
    pub robust_weight: f64,
    pub clean_weight: f64,
    pub compactness_weight: f64,
}

impl Default for ObjectivesConfig {
    fn default() -> Self {
        ObjectivesConfig {
            robust_weight: 0.5,
            clean_weight: 0.3,
            compactness_weight: 0.2,
        }
    }
}

/// `[stop]`: limits on the test-accuracy drop versus the dense model, in percentage points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StopConfig {
    /// Largest allowed drop of clean test accuracy.
    pub max_clean_drop: f64,
    /// Largest allowed drop of robust (PGD) test accuracy.
    pub max_robust_drop: f64,
}

impl Default for StopConfig {
    fn default() -> Self {
        StopConfig {
            max_clean_drop: 1.0,
            max_robust_drop: 2.0,
        }
    }
}

/// An L-infinity PGD attack in pixel space [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PgdParams {
    pub eps: f64,
    pub step: f64,
    pub steps: u32,
    pub random_start: bool,
}

impl Default for PgdParams {
    fn default() -> Self {
        PgdParams {
            eps: 8.0 / 255.0,
            step: 2.0 / 255.0,
            steps: 7,
            random_start: true,
        }
    }
}

/// `[adversarial]`: the shared adversarial set built once per outer iteration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdversarialConfig {
    pub eps: f64,
    pub step: f64,
    pub steps: u32,
    pub random_start: bool,
    /// Each layer of the mutated copy attacked for one shard keeps each filter with this probability.
    pub keep_probability: f64,
}

impl Default for AdversarialConfig {
    fn default() -> Self {
        let pgd = PgdParams::default();
        AdversarialConfig {
            eps: pgd.eps,
            step: pgd.step,
            steps: pgd.steps,
            random_start: pgd.random_start,
            keep_probability: 0.9,
        }
    }
}

impl AdversarialConfig {
    /// The attack that builds each shard of the shared adversarial set.
    pub fn attack(&self) -> PgdParams {
        PgdParams {
            eps: self.eps,
            step: self.step,
            steps: self.steps,
            random_start: self.random_start,
        }
    }
}

/// `[finetune]`: training of the spliced network (opaque to the engine; the worker reads it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FineTuneParams {
    pub epochs: u32,
    pub batch_size: u32,
    /// Initial learning rate of SGD with a cosine schedule.
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Fraction of each batch replaced by FGSM examples.
    pub adversarial_fraction: f64,
    /// FGSM radius of those examples.
    pub fgsm_eps: f64,
}

impl Default for FineTuneParams {
    fn default() -> Self {
        FineTuneParams {
            epochs: 2,
            batch_size: 64,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 5e-4,
            adversarial_fraction: 0.5,
            fgsm_eps: 4.0 / 255.0,
        }
    }
}

/// `[test_attack]`: the white-box attacks of the test evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TestAttackParams {
    pub fgsm_eps: f64,
    pub pgd: PgdParams,
}

impl Default for TestAttackParams {
    fn default() -> Self {
        TestAttackParams {
            fgsm_eps: 8.0 / 255.0,
            pgd: PgdParams {
                steps: 20,
                ..PgdParams::default()
            },
        }
    }
}

/// Adversarial examples mixed into pre-training batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdversarialTraining {
    #[default]
    None,
    Fgsm,
    Pgd,
}

/// `[pretrain]`: training of the dense model when the job gives none (opaque to the engine).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainParams {
    /// Architecture name or description understood by the worker (e.g. "small", "vgg11",
    /// "32,M,64,M", "resnet-tiny", "resnet:16;16x1,32x1").
    pub arch: String,
    pub timesteps: u32,
    pub epochs: u32,
    pub batch_size: u32,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub adversarial: AdversarialTraining,
}

impl Default for PretrainParams {
    fn default() -> Self {
        PretrainParams {
            arch: "small".to_string(),
            timesteps: 4,
            epochs: 8,
            batch_size: 64,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            adversarial: AdversarialTraining::None,
        }
    }
}

/// A configuration value outside its allowed range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} = {value}: expected {expected}")]
pub struct ConfigError {
    /// Dotted path, e.g. `evolution.mutation_rate`.
    pub field: String,
    pub value: String,
    pub expected: String,
}

struct Checker(Vec<ConfigError>);

impl Checker {
    fn check<T: std::fmt::Display>(&mut self, field: &str, value: T, ok: bool, expected: &str) {
        if !ok {
            self.0.push(ConfigError {
                field: field.to_string(),
                value: value.to_string(),
                expected: expected.to_string(),
            });
        }
    }

    fn probability_open_closed(&mut self, field: &str, v: f64) {
        self.check(field, v, v > 0.0 && v <= 1.0, "0 < value <= 1");
    }

    fn probability(&mut self, field: &str, v: f64) {
        self.check(field, v, (0.0..=1.0).contains(&v), "0 <= value <= 1");
    }

    fn non_negative(&mut self, field: &str, v: f64) {
        self.check(field, v, v.is_finite() && v >= 0.0, "a finite value >= 0");
    }

    fn positive(&mut self, field: &str, v: f64) {
        self.check(field, v, v.is_finite() && v > 0.0, "a finite value > 0");
    }

    fn at_least_one(&mut self, field: &str, v: u32) {
        self.check(field, v, v >= 1, "value >= 1");
    }

    fn pgd(&mut self, section: &str, p: &PgdParams) {
        self.check(
            &format!("{section}.eps"),
            p.eps,
            p.eps > 0.0 && p.eps <= 1.0,
            "0 < value <= 1 (pixel scale)",
        );
        self.check(
            &format!("{section}.step"),
            p.step,
            p.step > 0.0 && p.step <= 1.0,
            "0 < value <= 1 (pixel scale)",
        );
        self.at_least_one(&format!("{section}.steps"), p.steps);
    }
}

impl EngineConfig {
    /// Checks every field; the first out-of-range one is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every out-of-range field, in section order (for reporting all problems at once).
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut c = Checker(Vec::new());
        let e = &self.evolution;
        c.at_least_one("evolution.iterations", e.iterations);
        c.at_least_one("evolution.population", e.population);
        c.at_least_one("evolution.offspring", e.offspring);
        c.probability_open_closed("evolution.init_keep_probability", e.init_keep_probability);
        c.probability_open_closed("evolution.mutation_rate", e.mutation_rate);
        c.probability("evolution.crossover_rate", e.crossover_rate);
        c.probability_open_closed("evolution.ratio_bound", e.ratio_bound);

        let o = &self.objectives;
        c.non_negative("objectives.robust_weight", o.robust_weight);
        c.non_negative("objectives.clean_weight", o.clean_weight);
        c.non_negative("objectives.compactness_weight", o.compactness_weight);
        let sum = o.robust_weight + o.clean_weight + o.compactness_weight;
        c.check(
            "objectives.robust_weight + clean_weight + compactness_weight",
            sum,
            sum > 0.0,
            "a sum > 0",
        );

        c.non_negative("stop.max_clean_drop", self.stop.max_clean_drop);
        c.non_negative("stop.max_robust_drop", self.stop.max_robust_drop);

        c.pgd("adversarial", &self.adversarial.attack());
        c.probability_open_closed(
            "adversarial.keep_probability",
            self.adversarial.keep_probability,
        );

        let f = &self.finetune;
        c.at_least_one("finetune.batch_size", f.batch_size);
        c.positive("finetune.lr", f.lr);
        c.probability("finetune.momentum", f.momentum);
        c.non_negative("finetune.weight_decay", f.weight_decay);
        c.probability("finetune.adversarial_fraction", f.adversarial_fraction);
        c.check(
            "finetune.fgsm_eps",
            f.fgsm_eps,
            (0.0..=1.0).contains(&f.fgsm_eps),
            "0 <= value <= 1 (pixel scale)",
        );

        let t = &self.test_attack;
        c.check(
            "test_attack.fgsm_eps",
            t.fgsm_eps,
            t.fgsm_eps > 0.0 && t.fgsm_eps <= 1.0,
            "0 < value <= 1 (pixel scale)",
        );
        c.pgd("test_attack.pgd", &t.pgd);

        let p = &self.pretrain;
        c.check(
            "pretrain.arch",
            format!("{:?}", p.arch),
            !p.arch.trim().is_empty(),
            "a non-empty architecture name",
        );
        c.at_least_one("pretrain.timesteps", p.timesteps);
        c.at_least_one("pretrain.epochs", p.epochs);
        c.at_least_one("pretrain.batch_size", p.batch_size);
        c.positive("pretrain.lr", p.lr);
        c.probability("pretrain.momentum", p.momentum);
        c.non_negative("pretrain.weight_decay", p.weight_decay);
        c.0
    }

    /// The fewest filters a mask may keep in a layer of `filters` filters this iteration:
    /// ceil(ratio_bound x filters), and never fewer than one.
    ///
    /// The ratio is rounded to millionths first, so the bound is exact integer arithmetic
    /// (0.9 x 10 is 9, not 9.000000000000002 rounded up to 10).
    pub fn min_keep(&self, filters: u32) -> u32 {
        let millionths = (self.evolution.ratio_bound.clamp(0.0, 1.0) * 1e6).round() as u64;
        let bound = (u64::from(filters) * millionths).div_ceil(1_000_000);
        (bound as u32).clamp(1, filters.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_table_gives_design_defaults() {
        let c: EngineConfig = toml::from_str("").unwrap();
        assert_eq!(c, EngineConfig::default());
        assert_eq!(c.evolution.iterations, 8);
        assert_eq!(c.evolution.population, 6);
        assert_eq!(c.adversarial.steps, 7);
        assert_eq!(c.test_attack.pgd.steps, 20);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn out_of_range_value_names_field_and_range() {
        let c: EngineConfig = toml::from_str("[evolution]\nmutation_rate = 1.5\n").unwrap();
        let e = c.validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "evolution.mutation_rate = 1.5: expected 0 < value <= 1"
        );
        let c: EngineConfig = toml::from_str("[evolution]\npopulation = 0\n").unwrap();
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "evolution.population = 0: expected value >= 1"
        );
        let c: EngineConfig = toml::from_str("[adversarial]\neps = 0.0\n").unwrap();
        assert_eq!(c.validate().unwrap_err().field, "adversarial.eps");
    }

    #[test]
    fn unknown_field_is_a_parse_error_naming_it() {
        let e = toml::from_str::<EngineConfig>("[evolution]\nmutaton_rate = 0.2\n").unwrap_err();
        assert!(e.to_string().contains("mutaton_rate"), "{e}");
    }

    #[test]
    fn sections_embed_in_a_larger_job_table() {
        #[derive(Deserialize)]
        struct Job {
            #[allow(dead_code)]
            name: String,
            #[serde(flatten)]
            engine: EngineConfig,
        }
        let job: Job = toml::from_str(
            "name = \"j\"\n[evolution]\ngenerations = 3\ncollaboration = \"base\"\n[stop]\nmax_clean_drop = 0.5\n",
        )
        .unwrap();
        assert_eq!(job.engine.evolution.generations, 3);
        assert_eq!(job.engine.evolution.collaboration, Collaboration::Base);
        assert_eq!(job.engine.stop.max_clean_drop, 0.5);
        assert_eq!(job.engine.objectives, ObjectivesConfig::default());
    }

    #[test]
    fn min_keep_is_the_exact_ceiling_and_never_zero() {
        let c = EngineConfig::default();
        assert_eq!(c.min_keep(10), 9);
        assert_eq!(c.min_keep(64), 58);
        assert_eq!(c.min_keep(9), 9);
        assert_eq!(c.min_keep(1), 1);
        let mut loose = EngineConfig::default();
        loose.evolution.ratio_bound = 0.01;
        assert_eq!(loose.min_keep(10), 1);
    }
}
