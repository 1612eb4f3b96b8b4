//! Training-time data augmentation on u8 CHW images.
//!
//! The policy follows the usual CIFAR recipe and is chosen from the image shape
//! ([`Augmentation::for_shape`]):
//! - 3-channel images: random crop from the image zero-padded by 4 pixels on every side, then a
//!   horizontal flip with probability 1/2 (CIFAR-10, SVHN, colour folders).
//! - 1-channel images: random crop with 2-pixel zero padding, no flip (MNIST digits change meaning
//!   when mirrored; Fashion-MNIST gains little from it).
//!
//! Augmentation works on the u8 pixels before they become tensors, so it costs no tensor ops and
//! draws every random number from the caller's seeded RNG: the same seed gives the same images.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// How training images are perturbed before each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Augmentation {
    /// Images are used as stored.
    None,
    /// Random crop of the original size from the image zero-padded by `pad` pixels.
    Crop { pad: usize },
    /// [`Augmentation::Crop`], then a horizontal flip with probability 1/2.
    CropFlip { pad: usize },
}

impl Augmentation {
    /// The default policy for images of this shape (see the module doc).
    pub fn for_shape(channels: usize, _height: usize, _width: usize) -> Augmentation {
        if channels == 3 {
            Augmentation::CropFlip { pad: 4 }
        } else {
            Augmentation::Crop { pad: 2 }
        }
    }

    /// Augments one CHW image in place. `scratch` is reused between calls to avoid allocation.
    ///
    /// Contract: `image.len() == channels * height * width`. Each call draws the same number of
    /// random values whatever the outcome, so later draws do not depend on earlier ones' values.
    pub fn apply<R: Rng + ?Sized>(
        &self,
        image: &mut [u8],
        channels: usize,
        height: usize,
        width: usize,
        rng: &mut R,
        scratch: &mut Vec<u8>,
    ) {
        let (pad, may_flip) = match *self {
            Augmentation::None => return,
            Augmentation::Crop { pad } => (pad, false),
            Augmentation::CropFlip { pad } => (pad, true),
        };
        // Offsets of the crop window inside the padded image, in 0..=2*pad; pad means "unmoved".
        let dy = rng.random_range(0..=2 * pad) as isize - pad as isize;
        let dx = rng.random_range(0..=2 * pad) as isize - pad as isize;
        let flip = may_flip && rng.random_bool(0.5);
        scratch.clear();
        scratch.extend_from_slice(image);
        for c in 0..channels {
            let plane = &scratch[c * height * width..(c + 1) * height * width];
            let out = &mut image[c * height * width..(c + 1) * height * width];
            for y in 0..height {
                let sy = y as isize + dy;
                for x in 0..width {
                    let ox = if flip { width - 1 - x } else { x };
                    let sx = x as isize + dx;
                    out[y * width + ox] =
                        if sy >= 0 && sy < height as isize && sx >= 0 && sx < width as isize {
                            plane[sy as usize * width + sx as usize]
                        } else {
                            0
                        };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn ramp(channels: usize, h: usize, w: usize) -> Vec<u8> {
        (0..channels * h * w).map(|i| (i % 251) as u8 + 1).collect()
    }

    #[test]
    fn none_leaves_the_image_unchanged() {
        let original = ramp(3, 8, 8);
        let mut image = original.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        Augmentation::None.apply(&mut image, 3, 8, 8, &mut rng, &mut Vec::new());
        assert_eq!(image, original);
    }

    #[test]
    fn crop_shifts_pixels_and_fills_the_border_with_zeros() {
        let (c, h, w) = (1, 6, 6);
        let original = ramp(c, h, w);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut saw_shift = false;
        for _ in 0..20 {
            let mut image = original.clone();
            Augmentation::Crop { pad: 2 }.apply(&mut image, c, h, w, &mut rng, &mut Vec::new());
            // Every output pixel is either zero padding or some original pixel (all originals > 0).
            assert!(image.iter().all(|&p| p == 0 || original.contains(&p)));
            if image != original {
                saw_shift = true;
                assert!(image.contains(&0), "a shifted crop must show padding");
            }
        }
        assert!(saw_shift);
    }

    #[test]
    fn flip_mirrors_rows_when_the_crop_is_centred() {
        // With pad 0 the crop is the identity, so any change is the flip.
        let (c, h, w) = (3, 4, 5);
        let original = ramp(c, h, w);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut flips = 0;
        for _ in 0..40 {
            let mut image = original.clone();
            Augmentation::CropFlip { pad: 0 }.apply(&mut image, c, h, w, &mut rng, &mut Vec::new());
            if image != original {
                flips += 1;
                for ch in 0..c {
                    for y in 0..h {
                        for x in 0..w {
                            let i = ch * h * w + y * w;
                            assert_eq!(image[i + x], original[i + w - 1 - x]);
                        }
                    }
                }
            }
        }
        assert!(
            (5..35).contains(&flips),
            "flip probability should be about 1/2, got {flips}/40"
        );
    }

    #[test]
    fn same_seed_gives_the_same_augmented_images() {
        let run = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut out = Vec::new();
            for _ in 0..5 {
                let mut image = ramp(3, 32, 32);
                Augmentation::for_shape(3, 32, 32).apply(
                    &mut image,
                    3,
                    32,
                    32,
                    &mut rng,
                    &mut Vec::new(),
                );
                out.extend(image);
            }
            out
        };
        assert_eq!(run(11), run(11));
        assert_ne!(run(11), run(12));
    }

    #[test]
    fn policy_flips_colour_images_only() {
        assert_eq!(
            Augmentation::for_shape(3, 32, 32),
            Augmentation::CropFlip { pad: 4 }
        );
        assert_eq!(
            Augmentation::for_shape(1, 28, 28),
            Augmentation::Crop { pad: 2 }
        );
    }
}
