//! The job's checkpoint: the whole engine state (RNG streams included) in one JSON file,
//! `<state dir>/checkpoint.json`, replaced atomically (temp file, fsync, rename, fsync of the
//! directory).
//!
//! Leases are deliberately not saved: after a restart every outstanding item is leased afresh, and
//! because the engine's results do not depend on arrival order, a master killed at any moment and
//! resumed from its last checkpoint finishes with the same result. The checkpoint records the
//! fingerprint of the job file it belongs to, so a state dir is never resumed under another job,
//! and [`check_fits`] compares the saved engine's own job (seed, engine sections, eval split,
//! dense model) with the job file's, so a checkpoint that parses but does not fit the job is an
//! error naming the file, never a panic later. It also records the sha256 of the engine state's
//! JSON: a file altered or corrupted in any value (a flipped digit can still parse, and leave the
//! engine's vectors out of step with one another) is refused at read, not resumed into a panic.

use std::path::{Path, PathBuf};

use ccsrp_proto::artifact_chunks::sha256_hex;
use serde::{Deserialize, Serialize};

use crate::artifact_store::{write_atomic, ArtifactStore, StoreError};
use crate::{DenseModel, Engine, JobSpec};

/// File name of the checkpoint inside the state dir.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";

/// Format version of the checkpoint file; bumped on incompatible changes (2: the engine digest).
pub const CHECKPOINT_VERSION: u32 = 2;

/// A checkpoint that cannot be written or used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("checkpoint {1}: {0}")]
    Write(#[source] StoreError, String),
    #[error("checkpoint {path}: not a readable checkpoint: {detail}")]
    Format { path: String, detail: String },
    #[error(
        "checkpoint {path}: format version {found}, this build reads version {CHECKPOINT_VERSION}"
    )]
    Version { path: String, found: u32 },
    #[error("checkpoint {path} belongs to another job (job fingerprint {found}, this job file's is {expected}): use a fresh --state-dir")]
    OtherJob {
        path: String,
        found: String,
        expected: String,
    },
    #[error("checkpoint {path} does not fit this job: {detail}; use a fresh --state-dir (or remove the file to start the job over)")]
    Mismatch { path: String, detail: String },
}

/// What the checkpoint file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    /// Fingerprint of the job configuration (see `JobConfig::fingerprint`).
    pub job: String,
    /// sha256 of `engine` serialised as JSON (checked at read).
    pub digest: String,
    pub engine: Engine,
}

/// Path of the checkpoint in `state_dir`.
pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join(CHECKPOINT_FILE)
}

/// Serialises the checkpoint (kept separate from [`write`] so the job lock is held only for this).
pub fn encode(job: &str, engine: &Engine) -> Result<Vec<u8>, CheckpointError> {
    let format = |e: serde_json::Error| CheckpointError::Format {
        path: CHECKPOINT_FILE.to_string(),
        detail: e.to_string(),
    };
    // The engine is serialised once; the digest covers exactly those bytes.
    let engine = serde_json::to_vec(engine).map_err(format)?;
    let header = serde_json::to_string(&serde_json::json!({
        "version": CHECKPOINT_VERSION,
        "job": job,
        "digest": sha256_hex(&engine),
    }))
    .map_err(format)?;
    let mut bytes = Vec::with_capacity(header.len() + engine.len() + 12);
    bytes.extend_from_slice(header.trim_end_matches('}').as_bytes());
    bytes.extend_from_slice(b",\"engine\":");
    bytes.extend_from_slice(&engine);
    bytes.push(b'}');
    Ok(bytes)
}

/// Replaces the checkpoint at `path` with `bytes` (from [`encode`]) atomically.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    write_atomic(path, bytes).map_err(|e| CheckpointError::Write(e, path.display().to_string()))
}

/// Reads the checkpoint at `path`, if there is one, and checks it belongs to job `fingerprint`.
pub fn read(path: &Path, fingerprint: &str) -> Result<Option<Engine>, CheckpointError> {
    let shown = path.display().to_string();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(CheckpointError::Read { path: shown, error }),
    };
    let checkpoint: Checkpoint =
        serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Format {
            path: shown.clone(),
            detail: e.to_string(),
        })?;
    if checkpoint.version != CHECKPOINT_VERSION {
        return Err(CheckpointError::Version {
            path: shown,
            found: checkpoint.version,
        });
    }
    if checkpoint.job != fingerprint {
        return Err(CheckpointError::OtherJob {
            path: shown,
            found: checkpoint.job,
            expected: fingerprint.to_string(),
        });
    }
    // The engine serialises deterministically (ordered maps, shortest round-trip floats), so
    // the state read back re-serialises to the bytes that were hashed, unless a value changed.
    let actual = serde_json::to_vec(&checkpoint.engine)
        .map(|bytes| sha256_hex(&bytes))
        .map_err(|e| CheckpointError::Format {
            path: shown.clone(),
            detail: e.to_string(),
        })?;
    if actual != checkpoint.digest {
        return Err(CheckpointError::Format {
            path: shown,
            detail: format!(
                "the engine state has sha256 {actual}, the file records {}: altered or corrupted",
                ccsrp_proto::quote::quote(&checkpoint.digest)
            ),
        });
    }
    Ok(Some(checkpoint.engine))
}

/// Checks that `engine`, read from the checkpoint at `path`, runs the job `expected` describes
/// (the spec a fresh start would build; its dense model is compared by kind, since a given model
/// is named by content only once imported), and that a given dense model is in `store`.
pub fn check_fits(
    path: &Path,
    engine: &Engine,
    expected: &JobSpec,
    store: &ArtifactStore,
) -> Result<(), CheckpointError> {
    let mismatch = |detail: String| CheckpointError::Mismatch {
        path: path.display().to_string(),
        detail,
    };
    let saved = engine.spec();
    if saved.seed != expected.seed {
        return Err(mismatch(format!(
            "its job.seed is {}, the job file's is {}",
            saved.seed, expected.seed
        )));
    }
    if saved.eval_samples != expected.eval_samples || saved.eval_shards != expected.eval_shards {
        return Err(mismatch(format!(
            "its eval split is {} images in {} shards, the job file's is {} in {}",
            saved.eval_samples, saved.eval_shards, expected.eval_samples, expected.eval_shards
        )));
    }
    if saved.config != expected.config {
        return Err(mismatch(
            "its engine sections ([evolution], [objectives], [stop], [adversarial], [finetune], \
             [test_attack], [pretrain]) differ from the job file's"
                .to_string(),
        ));
    }
    match (&saved.dense, &expected.dense) {
        (DenseModel::Train, DenseModel::Train) => {}
        (DenseModel::Given { model, .. }, DenseModel::Given { .. }) => {
            if !store.contains(&model.0) {
                return Err(mismatch(format!(
                    "its dense model {} is not in the artifact store",
                    ccsrp_proto::quote::quote(&model.0)
                )));
            }
        }
        (DenseModel::Train, DenseModel::Given { .. }) => {
            return Err(mismatch(
                "it trains its dense model, the job file gives one ([model] path)".to_string(),
            ))
        }
        (DenseModel::Given { .. }, DenseModel::Train) => {
            return Err(mismatch(
                "it was given a dense model, the job file gives none ([model] path)".to_string(),
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EngineConfig;

    fn engine() -> Engine {
        Engine::new(JobSpec {
            seed: 7,
            config: EngineConfig::default(),
            dense: DenseModel::Train,
            eval_samples: 100,
            eval_shards: 4,
        })
        .unwrap()
    }

    #[test]
    fn checkpoint_round_trips_the_engine_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        let mut e = engine();
        let asked = e.ask();
        write(&path, &encode("job-a", &e).unwrap()).unwrap();
        let back = read(&path, "job-a").unwrap().unwrap();
        assert_eq!(back, e);
        assert_eq!(back.outstanding(), asked);
    }

    #[test]
    fn absent_checkpoint_is_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(&path_in(dir.path()), "job-a").unwrap().is_none());
    }

    #[test]
    fn checkpoint_of_another_job_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        write(&path, &encode("job-a", &engine()).unwrap()).unwrap();
        let err = read(&path, "job-b").unwrap_err().to_string();
        assert!(err.contains("another job"), "{err}");
    }

    #[test]
    fn rewrite_replaces_the_whole_file_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        write(&path, &encode("job-a", &engine()).unwrap()).unwrap();
        let mut e = engine();
        e.ask();
        write(&path, &encode("job-a", &e).unwrap()).unwrap();
        assert_eq!(read(&path, "job-a").unwrap().unwrap(), e);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![CHECKPOINT_FILE.to_string()]);
    }

    #[test]
    fn checkpoint_of_another_spec_does_not_fit_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(&dir.path().join("artifacts")).unwrap();
        let path = path_in(dir.path());
        let saved = engine();
        let expected = saved.spec().clone();
        check_fits(&path, &saved, &expected, &store).unwrap();
        type Change = Box<dyn Fn(&mut JobSpec)>;
        let changes: Vec<(&str, Change)> = vec![
            ("job.seed", Box::new(|s| s.seed += 1)),
            ("eval split", Box::new(|s| s.eval_shards += 1)),
            (
                "engine sections",
                Box::new(|s| s.config.evolution.generations += 1),
            ),
            (
                "gives one",
                Box::new(|s| {
                    s.dense = DenseModel::Given {
                        model: crate::ModelRef("m".into()),
                        description: Default::default(),
                    }
                }),
            ),
        ];
        for (what, change) in changes {
            let mut other = expected.clone();
            change(&mut other);
            let err = check_fits(&path, &saved, &other, &store)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(what) && err.contains("checkpoint.json"),
                "{what}: {err}"
            );
        }
    }

    #[test]
    fn truncated_checkpoint_is_a_format_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        let bytes = encode("job-a", &engine()).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = read(&path, "job-a").unwrap_err().to_string();
        assert!(err.contains("checkpoint.json"), "{err}");
    }

    /// A value changed in a file that still parses (here the seed, as a flipped digit would) is
    /// refused by the digest, naming the file; the same bytes re-spaced are still read.
    #[test]
    fn an_altered_value_is_refused_by_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        let text = String::from_utf8(encode("job-a", &engine()).unwrap()).unwrap();
        let seed = format!("\"seed\":{}", engine().spec().seed);
        assert!(text.contains(&seed), "{text}");
        let altered = text.replacen(&seed, "\"seed\":99", 1);
        std::fs::write(&path, altered).unwrap();
        let err = read(&path, "job-a").unwrap_err().to_string();
        assert!(
            err.contains("checkpoint.json") && err.contains("altered or corrupted"),
            "{err}"
        );
        std::fs::write(&path, text.replace(',', ", ")).unwrap();
        assert_eq!(read(&path, "job-a").unwrap(), Some(engine()));
    }
}
