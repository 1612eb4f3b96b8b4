//! The held-out evaluation of a network, as the job's `EvaluateTest` task runs it and as
//! `ccsrp prune` reruns it for a baseline: clean, FGSM and PGD correct counts on the validation
//! split and on the test split.
//!
//! The adversarial images are quantised to u8 (as stored images would be) before they are scored.
//! Attack random starts are seeded from the model file's sha256 ([`seed_from_name`]), the
//! validation split's from a stream of their own, so the same model file gets the same counts in
//! a job and in `ccsrp prune` (on one backend and thread count).

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::attack::{attack_to_u8, AttackError, AttackParams};
use crate::data::{ImageSet, Splits};
use crate::eval::count_correct;
use crate::model::{images_to_tensor, ModelError, SnnModel};

/// Images per attacked batch.
const BATCH: usize = 100;

/// Mixed into a model's seed for the validation split's attacks.
const VALIDATION_SEED: u64 = 0x7661_6c69_6461_7465;

/// Correct counts of one network on one split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCounts {
    pub samples: u64,
    pub clean: u64,
    pub fgsm: u64,
    pub pgd: u64,
}

/// [`SplitCounts`] on the validation split (what a job's decisions read) and the test split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldOutCounts {
    pub validation: SplitCounts,
    pub test: SplitCounts,
}

/// The attack seed of a model: the leading 16 hex digits of its sha256 (0 if they do not parse).
pub fn seed_from_name(sha256: &str) -> u64 {
    u64::from_str_radix(sha256.get(..16).unwrap_or("0"), 16).unwrap_or(0)
}

/// `images` attacked with `params` against `model`, quantised to u8, batch by batch.
pub fn attacked(
    model: &SnnModel,
    images: &ImageSet,
    params: &AttackParams,
    seed: u64,
    device: &Device,
) -> Result<ImageSet, AttackError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pixels = Vec::with_capacity(images.pixels.len());
    for start in (0..images.len()).step_by(BATCH) {
        let range = start..(start + BATCH).min(images.len());
        let x = images_to_tensor(images, range.clone(), device)?;
        let labels = Tensor::new(&images.labels[range], device).map_err(ModelError::from)?;
        pixels.extend(attack_to_u8(model, &x, &labels, params, &mut rng)?);
    }
    Ok(ImageSet {
        pixels,
        ..images.clone()
    })
}

/// Clean, FGSM (`fgsm_eps`) and `pgd` counts of `model` on `set`, attacks seeded by `seed`.
pub fn split_counts(
    model: &SnnModel,
    set: &ImageSet,
    fgsm_eps: f64,
    pgd: &AttackParams,
    seed: u64,
) -> Result<SplitCounts, AttackError> {
    let device = model.device().clone();
    let fgsm_images = attacked(model, set, &AttackParams::fgsm(fgsm_eps), seed, &device)?;
    let pgd_images = attacked(model, set, pgd, seed, &device)?;
    Ok(SplitCounts {
        samples: set.len() as u64,
        clean: count_correct(model, set, BATCH)?,
        fgsm: count_correct(model, &fgsm_images, BATCH)?,
        pgd: count_correct(model, &pgd_images, BATCH)?,
    })
}

/// The whole held-out evaluation of the model whose file has sha256 `model_sha256`.
pub fn held_out_counts(
    model: &SnnModel,
    model_sha256: &str,
    splits: &Splits,
    fgsm_eps: f64,
    pgd: &AttackParams,
) -> Result<HeldOutCounts, AttackError> {
    let seed = seed_from_name(model_sha256);
    Ok(HeldOutCounts {
        validation: split_counts(
            model,
            &splits.validation,
            fgsm_eps,
            pgd,
            seed ^ VALIDATION_SEED,
        )?,
        test: split_counts(model, &splits.test, fgsm_eps, pgd, seed)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_from_name_reads_the_leading_hex_digits() {
        assert_eq!(seed_from_name("00000000000000ff00"), 255);
        assert_eq!(seed_from_name("zz"), 0);
    }
}
