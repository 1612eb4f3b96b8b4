//! [`JobConfig`]: the job file `ccsrp master --config job.toml` reads.
//!
//! Sections (all optional; a missing field takes the default written on it; an unknown section or
//! field is an error, so a typo never silently falls back to a default):
//! - `[job]` seed, name, backend; `[data]` the dataset and how the eval split is cut;
//!   `[model]` the dense model file (absent: the first task trains one); `[runtime]` leases,
//!   heartbeats, checkpoints, and the limits on what peers may make the master hold (artifact
//!   size, uploads in progress and their idle timeout, registered workers).
//! - The engine's sections, unchanged: `[evolution]`, `[objectives]`, `[stop]`, `[adversarial]`,
//!   `[finetune]`, `[test_attack]`, `[pretrain]` (see `crate::config`).
//! - `[energy]` `e_ac_pj`, `e_mac_pj`: energy per accumulate and per multiply-accumulate of the
//!   results' energy estimate (default 0.9 and 4.6 pJ, `ccsrp_proto::energy`); it changes no
//!   decision, so it is not part of the job's fingerprint.
//!
//! [`JobConfig::validate`] names the offending field: `data.eval_shards = 0: expected ...`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{
    AdversarialConfig, ConfigError, EvolutionConfig, FineTuneParams, ObjectivesConfig,
    PretrainParams, StopConfig, TestAttackParams,
};
use crate::EngineConfig;
use ccsrp_proto::energy::EnergyModel;

/// Dataset kinds a worker can load.
pub const DATASET_KINDS: &[&str] = &[
    "synthetic",
    "fashion-mnist",
    "mnist",
    "cifar10",
    "svhn",
    "folder",
];

/// A job file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JobConfigError {
    #[error("job file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("job file {path}: {detail}")]
    Parse { path: String, detail: String },
    #[error("job file {path}: {error}")]
    Invalid { path: String, error: ConfigError },
    #[error(
        "job file {path}: empty (no section or setting). A job file's omitted fields take the \
         reference defaults (the full-size job), so an empty file would start the full-size job; \
         name at least one section or setting (e.g. `[job]`), or run `ccsrp run` without --config \
         for the built-in small job"
    )]
    Empty { path: String },
}

/// The whole job file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobConfig {
    pub job: JobSection,
    pub data: DataSection,
    pub model: ModelSection,
    pub runtime: RuntimeSection,
    pub evolution: EvolutionConfig,
    pub objectives: ObjectivesConfig,
    pub stop: StopConfig,
    pub adversarial: AdversarialConfig,
    pub finetune: FineTuneParams,
    pub test_attack: TestAttackParams,
    pub pretrain: PretrainParams,
    /// Not serialised while default, so fingerprints of job files without it stay as they were.
    #[serde(skip_serializing_if = "is_default_energy")]
    pub energy: EnergyModel,
    /// The file the job was read from (set by [`JobConfig::load`]; not part of the job).
    #[serde(skip)]
    pub file: Option<JobFile>,
}

fn is_default_energy(e: &EnergyModel) -> bool {
    *e == EnergyModel::default()
}

/// Where a job file came from, for the record in `summary.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFile {
    /// The path as given, or a name such as "the built-in default job".
    pub path: String,
    /// sha256 of the file's bytes.
    pub sha256: String,
}

impl JobFile {
    /// The record of job-file `text` read from `path`.
    pub fn of(path: &str, text: &str) -> JobFile {
        JobFile {
            path: path.to_string(),
            sha256: ccsrp_proto::artifact_chunks::sha256_hex(text.as_bytes()),
        }
    }
}

/// Evaluation backend of a job: every result must come from the same kind of arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    #[default]
    Cpu,
    Cuda,
}

impl Backend {
    /// The wire name (`"cpu"`, `"cuda"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
        }
    }
}

/// `[job]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobSection {
    /// Seed of every random decision of the job. Default 1.
    pub seed: u64,
    /// Name shown by `ccsrp status`. Default "ccsrp".
    pub name: String,
    /// Backend every worker must evaluate with: "cpu" or "cuda". Default "cpu".
    pub backend: Backend,
}

impl Default for JobSection {
    fn default() -> Self {
        JobSection {
            seed: 1,
            name: "ccsrp".into(),
            backend: Backend::Cpu,
        }
    }
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// One of [`DATASET_KINDS`]. Default "synthetic" (built in, needs no files).
    pub kind: String,
    /// Where the dataset's files are (workers may use their own `--data-dir`). Default "" (none).
    pub data_dir: String,
    /// Images held out of the training split to score candidates on. Default 512.
    pub eval_size: u32,
    /// Shards the eval split is cut into: the unit of one evaluation task. Default 4.
    pub eval_shards: u32,
    /// Images held out of the training split, after the eval split, for validation: the stop rule
    /// (and every other decision between iterations) reads them, never the test split. Default
    /// 1,000 (one percentage point = 10 images).
    pub val_size: u32,
    /// Cap on the training split, 0 = all. Default 0.
    pub train_limit: u32,
    /// Cap on the test split, 0 = all. Default 0.
    pub test_limit: u32,
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            kind: "synthetic".into(),
            data_dir: String::new(),
            eval_size: 512,
            eval_shards: 4,
            val_size: 1_000,
            train_limit: 0,
            test_limit: 0,
        }
    }
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// A trained dense model (safetensors with its spec in the metadata), relative paths resolved
    /// from the job file's directory. Default: none, the job trains one with `[pretrain]`.
    pub path: Option<PathBuf>,
}

/// `[runtime]`: how the master runs the job; changing it never changes the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeSection {
    /// A lease lasts this long without a heartbeat before its task is re-issued. Default 120.
    pub lease_seconds: f64,
    /// Workers heartbeat this often while holding tasks; must be below `lease_seconds`. Default 10.
    pub heartbeat_seconds: f64,
    /// The checkpoint is rewritten at most this often while results arrive (and always at the end
    /// of the job and on shutdown). A result accepted after the last checkpoint is simply computed
    /// again after a crash. Default 1.0.
    pub checkpoint_seconds: f64,
    /// Largest artifact a worker may upload, in MiB. Default 4096. An upload's buffer grows with
    /// the bytes that arrive, never from the size its first chunk announces.
    pub max_artifact_mib: u64,
    /// An upload that sends no chunk for this long is cancelled and its partial bytes freed.
    /// Default 60.
    pub upload_idle_seconds: f64,
    /// Uploads in progress at once, all workers together; a further upload waits up to
    /// `upload_idle_seconds` for one to end, then is refused with RESOURCE_EXHAUSTED. Default 64.
    pub max_uploads: u32,
    /// Uploads in progress at once on one connection (a worker uses one); a further one is
    /// refused with RESOURCE_EXHAUSTED. Default 4.
    pub max_uploads_per_connection: u32,
    /// Workers registered at once; a registration beyond it is refused with RESOURCE_EXHAUSTED.
    /// A registration not seen (no lease, heartbeat or report) for [`FORGET_AFTER_LEASES`] lease
    /// periods is forgotten. Default 1024.
    pub max_workers: u32,
    /// A task whose workers reported this many failures (errors, caught panics) fails the job:
    /// state `failed`, `failed.json` in the out dir, the master exits non-zero. The counts live
    /// in memory only: a master restarted on the same state dir resumes with fresh counts.
    /// Default 3.
    pub max_task_failures: u32,
}

/// A worker not seen for this many lease periods is forgotten (it registers again if it returns).
pub const FORGET_AFTER_LEASES: u32 = 3;

impl Default for RuntimeSection {
    fn default() -> Self {
        RuntimeSection {
            lease_seconds: 120.0,
            heartbeat_seconds: 10.0,
            checkpoint_seconds: 1.0,
            max_artifact_mib: 4096,
            upload_idle_seconds: 60.0,
            max_uploads: 64,
            max_uploads_per_connection: 4,
            max_workers: 1024,
            max_task_failures: 3,
        }
    }
}

impl RuntimeSection {
    pub fn lease(&self) -> Duration {
        Duration::from_secs_f64(self.lease_seconds)
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs_f64(self.heartbeat_seconds)
    }

    pub fn checkpoint_interval(&self) -> Duration {
        Duration::from_secs_f64(self.checkpoint_seconds)
    }

    pub fn max_artifact_bytes(&self) -> u64 {
        self.max_artifact_mib.saturating_mul(1 << 20)
    }

    pub fn upload_idle(&self) -> Duration {
        Duration::from_secs_f64(self.upload_idle_seconds)
    }

    /// How long a worker may go unseen before its registration is forgotten.
    pub fn forget_workers_after(&self) -> Duration {
        self.lease() * FORGET_AFTER_LEASES
    }
}

fn invalid(field: &str, value: impl std::fmt::Display, expected: &str) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

impl JobConfig {
    /// Reads and validates the job file at `path`; a relative `[model] path` is resolved from the
    /// file's directory. A file without a single section or setting is refused
    /// ([`JobConfigError::Empty`]): it would silently be the full-size job.
    pub fn load(path: &Path) -> Result<JobConfig, JobConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| JobConfigError::Read {
            path: shown.clone(),
            error,
        })?;
        if toml::from_str::<toml::Table>(&text).is_ok_and(|t| t.is_empty()) {
            return Err(JobConfigError::Empty { path: shown });
        }
        let mut config = JobConfig::parse(&text, &shown)?;
        config.file = Some(JobFile::of(&shown, &text));
        if let Some(model) = &config.model.path {
            if model.is_relative() {
                let base = path.parent().unwrap_or_else(|| Path::new("."));
                config.model.path = Some(base.join(model));
            }
        }
        Ok(config)
    }

    /// Parses and validates job-file text; `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<JobConfig, JobConfigError> {
        let config: JobConfig = toml::from_str(text).map_err(|e| JobConfigError::Parse {
            path: source_name.to_string(),
            detail: e.to_string(),
        })?;
        config.validate().map_err(|error| JobConfigError::Invalid {
            path: source_name.to_string(),
            error,
        })?;
        Ok(config)
    }

    /// The engine's sections as one [`EngineConfig`].
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            evolution: self.evolution.clone(),
            objectives: self.objectives.clone(),
            stop: self.stop.clone(),
            adversarial: self.adversarial.clone(),
            finetune: self.finetune.clone(),
            test_attack: self.test_attack.clone(),
            pretrain: self.pretrain.clone(),
        }
    }

    /// Checks every field; the first problem is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, v) in [
            ("energy.e_ac_pj", self.energy.e_ac_pj),
            ("energy.e_mac_pj", self.energy.e_mac_pj),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid(field, v, "a finite number of picojoules >= 0"));
            }
        }
        let d = &self.data;
        if !DATASET_KINDS.contains(&d.kind.as_str()) {
            return Err(invalid(
                "data.kind",
                &d.kind,
                &format!("one of {}", DATASET_KINDS.join(", ")),
            ));
        }
        if d.eval_size == 0 {
            return Err(invalid("data.eval_size", d.eval_size, "value >= 1"));
        }
        if d.eval_shards == 0 || d.eval_shards > d.eval_size {
            return Err(invalid(
                "data.eval_shards",
                d.eval_shards,
                &format!("1 <= value <= data.eval_size ({})", d.eval_size),
            ));
        }
        if d.val_size == 0 {
            return Err(invalid(
                "data.val_size",
                d.val_size,
                "value >= 1: the stop rule reads the validation split",
            ));
        }
        let r = &self.runtime;
        let positive = |v: f64| v.is_finite() && v > 0.0 && v < 1e9;
        if !positive(r.lease_seconds) {
            return Err(invalid(
                "runtime.lease_seconds",
                r.lease_seconds,
                "a number of seconds > 0",
            ));
        }
        if !positive(r.heartbeat_seconds) || r.heartbeat_seconds >= r.lease_seconds {
            return Err(invalid(
                "runtime.heartbeat_seconds",
                r.heartbeat_seconds,
                &format!(
                    "a number of seconds > 0 and below runtime.lease_seconds ({})",
                    r.lease_seconds
                ),
            ));
        }
        if !positive(r.checkpoint_seconds) {
            return Err(invalid(
                "runtime.checkpoint_seconds",
                r.checkpoint_seconds,
                "a number of seconds > 0",
            ));
        }
        if r.max_artifact_mib == 0 || r.max_artifact_mib > 1 << 30 {
            return Err(invalid(
                "runtime.max_artifact_mib",
                r.max_artifact_mib,
                "1 <= value <= 1073741824",
            ));
        }
        if !positive(r.upload_idle_seconds) {
            return Err(invalid(
                "runtime.upload_idle_seconds",
                r.upload_idle_seconds,
                "a number of seconds > 0",
            ));
        }
        if r.max_uploads == 0 {
            return Err(invalid("runtime.max_uploads", 0, "value >= 1"));
        }
        if r.max_uploads_per_connection == 0 || r.max_uploads_per_connection > r.max_uploads {
            return Err(invalid(
                "runtime.max_uploads_per_connection",
                r.max_uploads_per_connection,
                &format!("1 <= value <= runtime.max_uploads ({})", r.max_uploads),
            ));
        }
        if r.max_workers == 0 {
            return Err(invalid("runtime.max_workers", 0, "value >= 1"));
        }
        if r.max_task_failures == 0 {
            return Err(invalid("runtime.max_task_failures", 0, "value >= 1"));
        }
        self.engine_config().validate()
    }

    /// Identifies the job's result-relevant settings (everything but `[runtime]`): a checkpoint is
    /// resumed only under the same fingerprint.
    pub fn fingerprint(&self) -> String {
        let mut relevant = self.clone();
        relevant.runtime = RuntimeSection::default();
        relevant.energy = EnergyModel::default();
        let json = serde_json::to_vec(&relevant).unwrap_or_default();
        ccsrp_proto::artifact_chunks::sha256_hex(&json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_job_file_is_refused_and_one_section_takes_every_other_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.toml");
        std::fs::write(&path, "# nothing yet\n\n").unwrap();
        let e = JobConfig::load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("job file {}: empty", path.display())),
            "{e}"
        );
        assert!(e.contains("without --config"), "{e}");
        std::fs::write(&path, "[job]\n").unwrap();
        let c = JobConfig::load(&path).unwrap();
        assert_eq!(c.file.as_ref().map(|f| f.sha256.len()), Some(64));
        assert_eq!(JobConfig { file: None, ..c }, JobConfig::default());
    }

    #[test]
    fn empty_file_takes_every_default() {
        let c = JobConfig::parse("", "job.toml").unwrap();
        assert_eq!(c, JobConfig::default());
        assert_eq!(c.engine_config(), EngineConfig::default());
    }

    #[test]
    fn energy_is_read_checked_and_left_out_of_the_fingerprint() {
        let c = JobConfig::parse("[energy]\ne_ac_pj = 0.03\n", "job.toml").unwrap();
        assert_eq!(c.energy.e_ac_pj, 0.03);
        assert_eq!(c.energy.e_mac_pj, 4.6);
        assert_eq!(c.fingerprint(), JobConfig::default().fingerprint());
        let err = JobConfig::parse("[energy]\ne_mac_pj = -1\n", "job.toml").unwrap_err();
        assert!(err.to_string().contains("energy.e_mac_pj = -1"), "{err}");
        assert!(JobConfig::parse("[energy]\ne_ac = 1\n", "job.toml").is_err());
    }

    #[test]
    fn sections_are_read_with_engine_sections_beside_runtime_ones() {
        let c = JobConfig::parse(
            "[job]\nseed = 9\nbackend = \"cuda\"\n[data]\nkind = \"cifar10\"\neval_size = 1000\n\
             eval_shards = 10\n[evolution]\ngenerations = 3\n[runtime]\nlease_seconds = 30\n",
            "job.toml",
        )
        .unwrap();
        assert_eq!(c.job.seed, 9);
        assert_eq!(c.job.backend, Backend::Cuda);
        assert_eq!(c.data.eval_shards, 10);
        assert_eq!(c.engine_config().evolution.generations, 3);
        assert_eq!(c.runtime.lease(), Duration::from_secs(30));
    }

    #[test]
    fn unknown_field_or_section_is_an_error_naming_it() {
        let err = JobConfig::parse("[data]\neval_sise = 3\n", "job.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("eval_sise") && err.contains("job.toml"),
            "{err}"
        );
        let err = JobConfig::parse("[dta]\n", "job.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("dta"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_the_field() {
        let err = JobConfig::parse("[data]\neval_size = 10\neval_shards = 11\n", "j.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("data.eval_shards = 11"), "{err}");
        let err = JobConfig::parse("[runtime]\nlease_seconds = 5\nheartbeat_seconds = 5\n", "j")
            .unwrap_err()
            .to_string();
        assert!(err.contains("runtime.heartbeat_seconds"), "{err}");
        for (line, field) in [
            ("upload_idle_seconds = 0", "runtime.upload_idle_seconds"),
            ("max_uploads = 0", "runtime.max_uploads"),
            (
                "max_uploads_per_connection = 0",
                "runtime.max_uploads_per_connection",
            ),
            (
                "max_uploads = 2\nmax_uploads_per_connection = 3",
                "runtime.max_uploads_per_connection",
            ),
            ("max_workers = 0", "runtime.max_workers"),
            ("max_task_failures = 0", "runtime.max_task_failures"),
            ("max_artifact_mib = 0", "runtime.max_artifact_mib"),
        ] {
            let err = JobConfig::parse(&format!("[runtime]\n{line}\n"), "j")
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{line}: {err}");
        }
        let err = JobConfig::parse("[evolution]\nmutation_rate = 1.5\n", "j")
            .unwrap_err()
            .to_string();
        assert!(err.contains("evolution.mutation_rate"), "{err}");
    }

    #[test]
    fn runtime_settings_do_not_change_the_fingerprint_but_the_seed_does() {
        let a = JobConfig::parse("", "j").unwrap();
        let b = JobConfig::parse("[runtime]\nlease_seconds = 70\n", "j").unwrap();
        let c = JobConfig::parse("[job]\nseed = 2\n", "j").unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }
}
