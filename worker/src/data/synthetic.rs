//! The built-in dataset: ten classes of drawn shapes, generated from a seed, so that every command
//! works offline and every test has data.
//!
//! Class = the shape's form: horizontal bar, vertical bar, equals sign, chevron (V), disc, ring,
//! plus, cross, square, triangle. Every form is symmetric about the vertical axis, so the usual
//! horizontal-flip augmentation keeps every label true. Everything else is nuisance a classifier
//! must learn to ignore: position, size, a small rotation, stroke width, random background and
//! foreground colours (with a minimum contrast), a background gradient, up to two short distractor
//! strokes of random colour, and per-pixel noise. The intent: a small convolutional SNN learns it
//! within a few epochs, not in one (the nuisance ranges in `draw` are the knobs).
//!
//! Determinism: image `i` of a split is drawn from its own ChaCha8 stream
//! (seed, stream = split tag << 40 | i), so the bytes depend on the seed, the split and the index
//! only: not on the number of threads that render them, nor on how many images are asked for.

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::ImageSet;

/// Class names in label order.
pub const CLASS_NAMES: [&str; 10] = [
    "horizontal-bar",
    "vertical-bar",
    "equals",
    "chevron",
    "disc",
    "ring",
    "plus",
    "cross",
    "square",
    "triangle",
];

/// Which half of the synthetic dataset; the two never share an image stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntheticSplit {
    Train,
    Test,
}

impl SyntheticSplit {
    fn stream_tag(self) -> u64 {
        match self {
            SyntheticSplit::Train => 1,
            SyntheticSplit::Test => 2,
        }
    }
}

/// Size of the generated dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticConfig {
    /// Images in the training pool (the eval split is held out of it).
    pub train: usize,
    pub test: usize,
    pub height: usize,
    pub width: usize,
}

impl Default for SyntheticConfig {
    /// 6,000 training images (5,000 train + 1,000 eval with the default eval size), 1,000 test,
    /// 3x32x32 like CIFAR-10.
    fn default() -> Self {
        SyntheticConfig {
            train: 6_000,
            test: 1_000,
            height: 32,
            width: 32,
        }
    }
}

/// Generates `count` images of `split`: RGB, `height` x `width`, labels `i % 10` (classes balanced
/// to within one image). Parallel over the machine's cores; the result does not depend on how many.
pub fn generate(
    count: usize,
    height: usize,
    width: usize,
    seed: u64,
    split: SyntheticSplit,
) -> ImageSet {
    let image_bytes = 3 * height * width;
    let mut pixels = vec![0u8; count * image_bytes];
    let labels: Vec<u32> = (0..count).map(|i| (i % CLASS_NAMES.len()) as u32).collect();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let per_thread = count.div_ceil(threads).max(1);
    if image_bytes > 0 {
        std::thread::scope(|scope| {
            for (chunk_index, chunk) in pixels.chunks_mut(per_thread * image_bytes).enumerate() {
                let first = chunk_index * per_thread;
                let labels = &labels;
                scope.spawn(move || {
                    for (offset, image) in chunk.chunks_mut(image_bytes).enumerate() {
                        let index = first + offset;
                        let mut rng = ChaCha8Rng::seed_from_u64(seed);
                        rng.set_stream((split.stream_tag() << 40) | index as u64);
                        draw(image, height, width, labels[index] as usize, &mut rng);
                    }
                });
            }
        });
    }
    ImageSet {
        channels: 3,
        height,
        width,
        pixels,
        labels,
        class_names: CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
    }
}

/// A point in image coordinates (x right, y down), in pixels.
#[derive(Clone, Copy)]
struct Point {
    x: f32,
    y: f32,
}

/// Distance from `p` to the segment `a`-`b`.
fn segment_distance(p: Point, a: Point, b: Point) -> f32 {
    let (abx, aby) = (b.x - a.x, b.y - a.y);
    let (apx, apy) = (p.x - a.x, p.y - a.y);
    let len2 = abx * abx + aby * aby;
    let t = if len2 > 0.0 {
        ((apx * abx + apy * aby) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (dx, dy) = (apx - t * abx, apy - t * aby);
    (dx * dx + dy * dy).sqrt()
}

/// Where and how large the class shape is drawn: maps shape space (unit half-size, centred) to pixels.
struct Placement {
    cx: f32,
    cy: f32,
    scale: f32,
    cos: f32,
    sin: f32,
}

impl Placement {
    /// Image point -> shape space.
    fn local(&self, x: f32, y: f32) -> Point {
        let (dx, dy) = ((x - self.cx) / self.scale, (y - self.cy) / self.scale);
        Point {
            x: self.cos * dx + self.sin * dy,
            y: -self.sin * dx + self.cos * dy,
        }
    }
}

const fn pt(x: f32, y: f32) -> Point {
    Point { x, y }
}

/// Signed distance (in shape units) from `p` to the outline or body of class `label`'s shape;
/// `filled` shapes are negative inside.
fn shape_distance(label: usize, p: Point) -> f32 {
    const D: f32 = 0.75;
    match label {
        0 => segment_distance(p, pt(-1.0, 0.0), pt(1.0, 0.0)),
        1 => segment_distance(p, pt(0.0, -1.0), pt(0.0, 1.0)),
        2 => segment_distance(p, pt(-0.9, -0.4), pt(0.9, -0.4)).min(segment_distance(
            p,
            pt(-0.9, 0.4),
            pt(0.9, 0.4),
        )),
        3 => segment_distance(p, pt(-D, -0.6), pt(0.0, 0.6)).min(segment_distance(
            p,
            pt(0.0, 0.6),
            pt(D, -0.6),
        )),
        4 => (p.x * p.x + p.y * p.y).sqrt() - 0.55,
        5 => ((p.x * p.x + p.y * p.y).sqrt() - 0.8).abs(),
        6 => segment_distance(p, pt(-0.85, 0.0), pt(0.85, 0.0)).min(segment_distance(
            p,
            pt(0.0, -0.85),
            pt(0.0, 0.85),
        )),
        7 => segment_distance(p, pt(-0.65, -0.65), pt(0.65, 0.65)).min(segment_distance(
            p,
            pt(-0.65, 0.65),
            pt(0.65, -0.65),
        )),
        8 => {
            let (qx, qy) = (p.x.abs() - 0.7, p.y.abs() - 0.7);
            let outside = (qx.max(0.0).powi(2) + qy.max(0.0).powi(2)).sqrt();
            (outside + qx.max(qy).min(0.0)).abs()
        }
        _ => {
            let (a, b, c) = (pt(0.0, -0.85), pt(0.8, 0.6), pt(-0.8, 0.6));
            segment_distance(p, a, b)
                .min(segment_distance(p, b, c))
                .min(segment_distance(p, c, a))
        }
    }
}

fn random_colour(rng: &mut ChaCha8Rng) -> [f32; 3] {
    [
        rng.random_range(0.0..=255.0),
        rng.random_range(0.0..=255.0),
        rng.random_range(0.0..=255.0),
    ]
}

/// A foreground colour at least 200 apart (sum over channels) from `background`, so the shape is
/// visible, but not always by much.
fn contrasting_colour(rng: &mut ChaCha8Rng, background: [f32; 3]) -> [f32; 3] {
    for _ in 0..16 {
        let colour = random_colour(rng);
        let distance: f32 = (0..3).map(|c| (colour[c] - background[c]).abs()).sum();
        if distance >= 200.0 {
            return colour;
        }
    }
    background.map(|v| 255.0 - v)
}

/// Alpha-blends `colour` over `canvas` (HWC f32) with per-pixel coverage from `coverage(x, y)`.
fn paint(
    canvas: &mut [f32],
    height: usize,
    width: usize,
    colour: [f32; 3],
    coverage: impl Fn(f32, f32) -> f32,
) {
    for y in 0..height {
        for x in 0..width {
            let alpha = coverage(x as f32 + 0.5, y as f32 + 0.5);
            if alpha > 0.0 {
                let px = &mut canvas[(y * width + x) * 3..(y * width + x) * 3 + 3];
                for c in 0..3 {
                    px[c] += alpha * (colour[c] - px[c]);
                }
            }
        }
    }
}

/// Renders one image of class `label` into `out` (CHW u8).
fn draw(out: &mut [u8], height: usize, width: usize, label: usize, rng: &mut ChaCha8Rng) {
    let size = height.min(width) as f32;
    let background = random_colour(rng);
    let foreground = contrasting_colour(rng, background);
    let gradient_angle: f32 = rng.random_range(0.0..std::f32::consts::TAU);
    let gradient_amplitude: f32 = rng.random_range(0.0..30.0) / size;
    let (gx, gy) = (
        gradient_angle.cos() * gradient_amplitude,
        gradient_angle.sin() * gradient_amplitude,
    );
    let mut canvas = vec![0f32; height * width * 3];
    for y in 0..height {
        for x in 0..width {
            let shift =
                gx * (x as f32 - width as f32 / 2.0) + gy * (y as f32 - height as f32 / 2.0);
            for c in 0..3 {
                canvas[(y * width + x) * 3 + c] = background[c] + shift;
            }
        }
    }

    let distractors = rng.random_range(0..=2);
    for _ in 0..distractors {
        let centre = pt(
            rng.random_range(0.0..width as f32),
            rng.random_range(0.0..height as f32),
        );
        let half_length = rng.random_range(0.06..0.12) * size;
        let angle: f32 = rng.random_range(0.0..std::f32::consts::PI);
        let (dx, dy) = (angle.cos() * half_length, angle.sin() * half_length);
        let (a, b) = (
            pt(centre.x - dx, centre.y - dy),
            pt(centre.x + dx, centre.y + dy),
        );
        let half_width = rng.random_range(0.5..1.0);
        let colour = random_colour(rng);
        paint(&mut canvas, height, width, colour, |x, y| {
            (half_width + 0.5 - segment_distance(pt(x, y), a, b)).clamp(0.0, 1.0)
        });
    }

    let angle: f32 = rng.random_range(-0.3..0.3);
    let placement = Placement {
        cx: width as f32 / 2.0 + rng.random_range(-0.12..0.12) * width as f32,
        cy: height as f32 / 2.0 + rng.random_range(-0.12..0.12) * height as f32,
        scale: rng.random_range(0.28..0.4) * size,
        cos: angle.cos(),
        sin: angle.sin(),
    };
    let half_stroke = rng.random_range(1.0..2.0);
    let filled = label == 4;
    paint(&mut canvas, height, width, foreground, |x, y| {
        let distance = shape_distance(label, placement.local(x, y)) * placement.scale;
        let edge = if filled { 0.0 } else { half_stroke };
        (edge + 0.5 - distance).clamp(0.0, 1.0)
    });

    let noise: f32 = rng.random_range(4.0..12.0);
    let plane = height * width;
    for y in 0..height {
        for x in 0..width {
            for c in 0..3 {
                // The sum of the four bytes of one random word: nearly Gaussian, mean 510, sd 147.8;
                // one word a value keeps generation fast.
                let bytes = rng.next_u32().to_le_bytes();
                let sum: u32 = bytes.iter().map(|&b| u32::from(b)).sum();
                let gaussian = (sum as f32 - 510.0) / 147.8;
                let value = canvas[(y * width + x) * 3 + c] + gaussian * noise;
                out[c * plane + y * width + x] = value.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_gives_the_same_bytes() {
        let a = generate(50, 32, 32, 7, SyntheticSplit::Train);
        let b = generate(50, 32, 32, 7, SyntheticSplit::Train);
        assert_eq!(a, b);
    }

    #[test]
    fn different_seeds_and_splits_give_different_images() {
        let a = generate(20, 32, 32, 7, SyntheticSplit::Train);
        let b = generate(20, 32, 32, 8, SyntheticSplit::Train);
        let c = generate(20, 32, 32, 7, SyntheticSplit::Test);
        for i in 0..20 {
            assert_ne!(a.image(i), b.image(i), "image {i} equal across seeds");
            assert_ne!(a.image(i), c.image(i), "image {i} equal across splits");
        }
    }

    #[test]
    fn an_image_does_not_depend_on_how_many_are_generated() {
        let few = generate(3, 32, 32, 11, SyntheticSplit::Test);
        let many = generate(40, 32, 32, 11, SyntheticSplit::Test);
        assert_eq!(few.pixels[..], many.pixels[..few.pixels.len()]);
    }

    #[test]
    fn classes_are_balanced_and_shape_is_rgb() {
        let set = generate(1_000, 32, 32, 0, SyntheticSplit::Train);
        assert_eq!((set.channels, set.height, set.width), (3, 32, 32));
        assert_eq!(set.pixels.len(), 1_000 * 3 * 32 * 32);
        assert_eq!(set.class_names.len(), 10);
        for class in 0..10u32 {
            assert_eq!(set.labels.iter().filter(|&&l| l == class).count(), 100);
        }
    }

    #[test]
    fn other_image_sizes_are_generated() {
        let set = generate(10, 20, 24, 3, SyntheticSplit::Train);
        assert_eq!((set.height, set.width), (20, 24));
        assert_eq!(set.pixels.len(), 10 * 3 * 20 * 24);
    }

    #[test]
    fn images_use_the_pixel_range_and_are_not_flat() {
        let set = generate(100, 32, 32, 5, SyntheticSplit::Train);
        for i in 0..set.len() {
            let image = set.image(i);
            let (lo, hi) = image
                .iter()
                .fold((255u8, 0u8), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            assert!(hi - lo > 60, "image {i} has range {lo}..{hi}");
        }
    }

    #[test]
    fn default_dataset_generates_in_well_under_two_seconds() {
        let config = SyntheticConfig::default();
        let start = std::time::Instant::now();
        let train = generate(
            config.train,
            config.height,
            config.width,
            0,
            SyntheticSplit::Train,
        );
        let test = generate(
            config.test,
            config.height,
            config.width,
            0,
            SyntheticSplit::Test,
        );
        let elapsed = start.elapsed();
        assert_eq!((train.len(), test.len()), (6_000, 1_000));
        // Generous for a loaded debug build; the release build takes a fraction of this.
        assert!(elapsed.as_secs_f64() < 10.0, "took {elapsed:?}");
    }
}
