//! Residual (spiking ResNet) architectures: `resnet:STEM;C1xN1,C2xN2,...` with an optional `;sew`.
//!
//! - The stem is one 3x3 conv (stride 1, padding 1, `STEM` filters) -> batch norm -> LIF, with no
//!   max-pool (the CIFAR stem of the SNN literature).
//! - Stage s (1-based) has `N_s` basic blocks of width `C_s`; the first block of every stage s >= 2
//!   has stride 2 (in its first conv and its shortcut), every other block stride 1. A stride-2
//!   3x3 conv (padding 1) or 1x1 conv maps a side `H` to `ceil(H / 2)`.
//! - Basic block (spikingjelly's `spiking_resnet.BasicBlock`): `x1 = sn1(bn1(conv1(x)))`,
//!   `out = sn2(bn2(conv2(x1)) + shortcut)`, the shortcut being `x` or, when the stride or the
//!   width changes, `bn(conv1x1(x))` (`downsample`). With `;sew` (spikingjelly's `sew_resnet`,
//!   connect function ADD): `out = sn2(bn2(conv2(x1))) + shortcut`, the shortcut `x` or
//!   `sn(bn(conv1x1(x)))`: block outputs are integers (0, 1, 2, ...), not spikes.
//! - Head: global average pool, then `Linear(C_last, classes)`.
//!
//! Each block's conv1 is a prunable layer: its output feeds only conv2 of the same block, so its
//! filters can go without touching the residual path. A pruned network keeps the stage widths and
//! lists the inner widths after `;inner=` (one per block, in forward order), e.g.
//! `resnet:16;16x1,32x1;inner=12,32`. The canonical string (what [`std::fmt::Display`] writes)
//! omits `;inner=` when every block keeps its stage width and writes `;sew` before it.
//!
//! Presets ([`ResidualArch::preset`]): `resnet18` = `resnet:64;64x2,128x2,256x2,512x2`,
//! `resnet19` = `resnet:128;128x3,256x3,512x2`, `resnet-tiny` = `resnet:16;16x1,32x1,64x1` (CPU),
//! and `sew-resnet18`, `sew-resnet19`, `sew-resnet-tiny`: the same with `;sew`.

use crate::arch::{ArchError, InputShape, LayerGeometry};
use std::fmt;

/// The prefix that marks a residual architecture string.
pub const RESIDUAL_PREFIX: &str = "resnet:";

/// Names accepted by [`ResidualArch::preset`].
pub const RESIDUAL_PRESETS: [&str; 6] = [
    "resnet18",
    "resnet19",
    "resnet-tiny",
    "sew-resnet18",
    "sew-resnet19",
    "sew-resnet-tiny",
];

/// One stage: `blocks` basic blocks of `width` output channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    pub width: usize,
    pub blocks: usize,
}

/// A spiking ResNet (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResidualArch {
    stem: usize,
    stages: Vec<Stage>,
    sew: bool,
    /// conv1 output channels of every block, in forward order (the prunable widths).
    inner: Vec<usize>,
}

/// Sizes of one basic block for a given input shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockGeometry {
    /// Stage number, from 1 (spikingjelly's `layer{stage}`).
    pub stage: usize,
    /// Block index inside its stage, from 0.
    pub index: usize,
    /// Channels entering the block (the residual path).
    pub in_channels: usize,
    /// conv1's output channels (prunable).
    pub inner: usize,
    /// conv2's and the shortcut's output channels (the stage width).
    pub out_channels: usize,
    /// Stride of conv1 and of the shortcut conv.
    pub stride: usize,
    pub in_height: usize,
    pub in_width: usize,
    /// Output size of conv1, conv2 and the block.
    pub height: usize,
    pub width: usize,
    /// Whether the shortcut is a 1x1 conv + batch norm (`downsample`) rather than the identity.
    pub downsample: bool,
}

/// Sizes of a whole residual network for a given input shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResidualGeometry {
    pub input: InputShape,
    /// Stem filters (its output keeps the input's height and width).
    pub stem: usize,
    pub blocks: Vec<BlockGeometry>,
    pub sew: bool,
}

impl ResidualGeometry {
    /// Channels reaching the classifier (the last stage's width).
    pub fn features(&self) -> usize {
        self.blocks.last().map_or(self.stem, |b| b.out_channels)
    }

    /// The prunable layers (every block's conv1) as [`LayerGeometry`]: input channels from the
    /// residual path, output size after the stride, no pool.
    pub fn prunable_layers(&self) -> Vec<LayerGeometry> {
        self.blocks
            .iter()
            .map(|b| LayerGeometry {
                in_channels: b.in_channels,
                filters: b.inner,
                height: b.height,
                width: b.width,
                pool_after: false,
            })
            .collect()
    }
}

fn bad(text: &str, item: &str, expected: &str) -> ArchError {
    ArchError::BadResidual {
        text: text.to_string(),
        item: item.to_string(),
        expected: expected.to_string(),
    }
}

fn positive(text: &str, item: &str, what: &str) -> Result<usize, ArchError> {
    match item.trim().parse::<usize>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(bad(
            text,
            item.trim(),
            &format!("{what} (a positive integer)"),
        )),
    }
}

/// Most basic blocks a network may have (each is one prunable layer): the master's bound on
/// prunable layers (`ccsrp_master::splice::MAX_LAYERS`), far beyond any real ResNet, so that a short
/// string such as `resnet:4;4x1000000000000` is refused instead of allocating its blocks.
pub const MAX_BLOCKS: usize = 1024;

/// Widest stem, stage or inner conv: the master's bound on a layer's filters (`MAX_FILTERS`).
pub const MAX_WIDTH: usize = 1 << 16;

impl ResidualArch {
    /// A network with every block at its stage width. Refuses zero widths, no stage, empty stages,
    /// more than [`MAX_BLOCKS`] blocks and widths over [`MAX_WIDTH`].
    pub fn new(stem: usize, stages: Vec<Stage>, sew: bool) -> Result<ResidualArch, ArchError> {
        let text = || format!("stem {stem}, stages {stages:?}");
        if stem == 0 {
            return Err(bad(&text(), "stem 0", "a positive stem width"));
        }
        if stages.is_empty() {
            return Err(bad(&text(), "", "at least one stage CxN"));
        }
        if let Some(s) = stages.iter().find(|s| s.width == 0 || s.blocks == 0) {
            return Err(bad(
                &text(),
                &format!("{}x{}", s.width, s.blocks),
                "a positive width and block count",
            ));
        }
        if let Some(w) = std::iter::once(stem)
            .chain(stages.iter().map(|s| s.width))
            .find(|&w| w > MAX_WIDTH)
        {
            return Err(bad(
                &text(),
                &w.to_string(),
                &format!("widths of at most {MAX_WIDTH}"),
            ));
        }
        let blocks = stages
            .iter()
            .try_fold(0usize, |acc, s| acc.checked_add(s.blocks))
            .filter(|&n| n <= MAX_BLOCKS);
        if blocks.is_none() {
            return Err(bad(
                &text(),
                "block counts",
                &format!("at most {MAX_BLOCKS} blocks in all"),
            ));
        }
        let inner = stages
            .iter()
            .flat_map(|s| std::iter::repeat_n(s.width, s.blocks))
            .collect();
        Ok(ResidualArch {
            stem,
            stages,
            sew,
            inner,
        })
    }

    /// A named preset (module doc), or `None`.
    pub fn preset(name: &str) -> Option<ResidualArch> {
        let (sew, base) = match name.strip_prefix("sew-") {
            Some(base) => (true, base),
            None => (false, name),
        };
        let text = match base {
            "resnet18" => "resnet:64;64x2,128x2,256x2,512x2",
            "resnet19" => "resnet:128;128x3,256x3,512x2",
            "resnet-tiny" => "resnet:16;16x1,32x1,64x1",
            _ => return None,
        };
        let mut arch = ResidualArch::parse(text).ok()?;
        arch.sew = sew;
        Some(arch)
    }

    /// Parses `resnet:STEM;C1xN1,...[;sew][;inner=W1,W2,...]` (module doc); spaces around items
    /// are allowed. Errors name the item and what was expected.
    pub fn parse(text: &str) -> Result<ResidualArch, ArchError> {
        let body = text
            .trim()
            .strip_prefix(RESIDUAL_PREFIX)
            .ok_or_else(|| bad(text, text, "a string starting with \"resnet:\""))?;
        let mut sections = body.split(';');
        let stem_item = sections.next().unwrap_or("");
        let stem = positive(text, stem_item, "the stem width")?;
        let stages_item = sections
            .next()
            .ok_or_else(|| bad(text, body, "STEM;C1xN1,C2xN2,... (stages after the stem)"))?;
        let mut stages = Vec::new();
        for raw in stages_item.split(',') {
            let item = raw.trim();
            let (w, n) = item
                .split_once(['x', 'X'])
                .ok_or_else(|| bad(text, item, "a stage WIDTHxBLOCKS such as 64x2"))?;
            stages.push(Stage {
                width: positive(text, w, "a stage width")?,
                blocks: positive(text, n, "a block count")?,
            });
        }
        let mut arch = ResidualArch::new(stem, stages, false)?;
        let (mut seen_sew, mut seen_inner) = (false, false);
        for raw in sections {
            let item = raw.trim();
            if item.eq_ignore_ascii_case("sew") && !seen_sew {
                seen_sew = true;
                arch.sew = true;
            } else if let (Some(list), false) = (item.strip_prefix("inner="), seen_inner) {
                seen_inner = true;
                let widths = list
                    .split(',')
                    .map(|w| positive(text, w, "an inner width"))
                    .collect::<Result<Vec<_>, _>>()?;
                if let Some(w) = widths.iter().find(|&&w| w > MAX_WIDTH) {
                    return Err(bad(
                        text,
                        &w.to_string(),
                        &format!("inner widths of at most {MAX_WIDTH}"),
                    ));
                }
                if widths.len() != arch.inner.len() {
                    return Err(bad(
                        text,
                        item,
                        &format!("one inner width per block ({})", arch.inner.len()),
                    ));
                }
                arch.inner = widths;
            } else {
                return Err(bad(
                    text,
                    item,
                    "\"sew\" or \"inner=W1,W2,...\" (each at most once)",
                ));
            }
        }
        Ok(arch)
    }

    pub fn stem(&self) -> usize {
        self.stem
    }

    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// Whether blocks use SEW-ResNet's ADD connection.
    pub fn sew(&self) -> bool {
        self.sew
    }

    /// conv1 widths of the blocks (the prunable layers), in forward order.
    pub fn inner_widths(&self) -> &[usize] {
        &self.inner
    }

    /// The same network with new inner widths (one per block, each at least 1; missing entries keep
    /// the old width).
    pub fn with_inner_widths(&self, widths: &[usize]) -> ResidualArch {
        let mut copy = self.clone();
        for (w, &n) in copy.inner.iter_mut().zip(widths) {
            *w = n.max(1);
        }
        copy
    }

    /// Block sizes for images of shape `input`.
    pub fn geometry(&self, input: InputShape) -> Result<ResidualGeometry, ArchError> {
        if input.channels == 0 || input.height == 0 || input.width == 0 {
            return Err(ArchError::EmptyInput {
                channels: input.channels,
                height: input.height,
                width: input.width,
            });
        }
        let (mut channels, mut height, mut width) = (self.stem, input.height, input.width);
        let mut blocks = Vec::with_capacity(self.inner.len());
        let mut inner = self.inner.iter();
        for (s, stage) in self.stages.iter().enumerate() {
            for index in 0..stage.blocks {
                let stride = if s > 0 && index == 0 { 2 } else { 1 };
                let (h, w) = (height.div_ceil(stride), width.div_ceil(stride));
                blocks.push(BlockGeometry {
                    stage: s + 1,
                    index,
                    in_channels: channels,
                    inner: inner.next().copied().unwrap_or(stage.width),
                    out_channels: stage.width,
                    stride,
                    in_height: height,
                    in_width: width,
                    height: h,
                    width: w,
                    downsample: stride != 1 || channels != stage.width,
                });
                (channels, height, width) = (stage.width, h, w);
            }
        }
        // The largest activation map must be addressable: refuse forged sizes early.
        let largest = self
            .stages
            .iter()
            .map(|s| s.width)
            .chain(self.inner.iter().copied())
            .chain([self.stem])
            .max()
            .unwrap_or(1);
        if largest
            .checked_mul(input.height)
            .and_then(|v| v.checked_mul(input.width))
            .is_none()
        {
            return Err(ArchError::TooLarge {
                filters: largest,
                height: input.height,
                width: input.width,
            });
        }
        Ok(ResidualGeometry {
            input,
            stem: self.stem,
            blocks,
            sew: self.sew,
        })
    }
}

impl fmt::Display for ResidualArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{RESIDUAL_PREFIX}{};", self.stem)?;
        for (i, s) in self.stages.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}x{}", s.width, s.blocks)?;
        }
        if self.sew {
            f.write_str(";sew")?;
        }
        let full = self
            .stages
            .iter()
            .flat_map(|s| std::iter::repeat_n(s.width, s.blocks));
        if !self.inner.iter().copied().eq(full) {
            f.write_str(";inner=")?;
            for (i, w) in self.inner.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{w}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(c: usize, h: usize, w: usize) -> InputShape {
        InputShape {
            channels: c,
            height: h,
            width: w,
        }
    }

    #[test]
    fn presets_have_the_contract_layouts() {
        let cases = [
            ("resnet18", "resnet:64;64x2,128x2,256x2,512x2"),
            ("resnet19", "resnet:128;128x3,256x3,512x2"),
            ("resnet-tiny", "resnet:16;16x1,32x1,64x1"),
            ("sew-resnet18", "resnet:64;64x2,128x2,256x2,512x2;sew"),
            ("sew-resnet19", "resnet:128;128x3,256x3,512x2;sew"),
            ("sew-resnet-tiny", "resnet:16;16x1,32x1,64x1;sew"),
        ];
        for (name, text) in cases {
            let a = ResidualArch::preset(name).unwrap();
            assert_eq!(a.to_string(), text, "{name}");
            assert_eq!(ResidualArch::parse(text).unwrap(), a);
        }
        assert_eq!(RESIDUAL_PRESETS.len(), cases.len());
        assert!(ResidualArch::preset("resnet50").is_none());
        assert_eq!(
            ResidualArch::preset("resnet18").unwrap().inner_widths(),
            &[64, 64, 128, 128, 256, 256, 512, 512]
        );
    }

    #[test]
    fn strings_round_trip_with_sew_and_inner_widths() {
        let a = ResidualArch::parse(" resnet: 4 ; 4x1 , 8X2 ;inner=3,8,5; SEW").unwrap();
        assert!(a.sew());
        assert_eq!(a.inner_widths(), &[3, 8, 5]);
        assert_eq!(a.to_string(), "resnet:4;4x1,8x2;sew;inner=3,8,5");
        assert_eq!(ResidualArch::parse(&a.to_string()).unwrap(), a);
        let full = a.with_inner_widths(&[4, 8, 8]);
        assert_eq!(full.to_string(), "resnet:4;4x1,8x2;sew");
    }

    #[test]
    fn malformed_strings_name_the_item_and_what_was_expected() {
        let cases = [
            ("resnet:0;4x1", "0", "stem width"),
            ("resnet:4", "4", "stages after the stem"),
            ("resnet:4;4y1", "4y1", "WIDTHxBLOCKS"),
            ("resnet:4;4x0", "0", "block count"),
            ("resnet:4;0x1", "0", "stage width"),
            ("resnet:4;4x1;bogus", "bogus", "\"sew\""),
            ("resnet:4;4x1;sew;sew", "sew", "at most once"),
            (
                "resnet:4;4x2;inner=1",
                "inner=1",
                "one inner width per block (2)",
            ),
            ("resnet:4;4x1;inner=0", "0", "inner width"),
        ];
        for (text, item, expected) in cases {
            match ResidualArch::parse(text) {
                Err(ArchError::BadResidual {
                    item: got,
                    expected: e,
                    ..
                }) => {
                    assert_eq!(got, item, "{text}");
                    assert!(e.contains(expected), "{text}: {e}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn geometry_strides_the_first_block_of_later_stages() {
        let a = ResidualArch::parse("resnet:4;4x2,8x1,6x1").unwrap();
        let g = a.geometry(shape(1, 7, 8)).unwrap();
        let sizes: Vec<_> = g
            .blocks
            .iter()
            .map(|b| {
                (
                    b.stage,
                    b.index,
                    b.in_channels,
                    b.out_channels,
                    b.stride,
                    b.height,
                    b.width,
                    b.downsample,
                )
            })
            .collect();
        assert_eq!(
            sizes,
            vec![
                (1, 0, 4, 4, 1, 7, 8, false),
                (1, 1, 4, 4, 1, 7, 8, false),
                (2, 0, 4, 8, 2, 4, 4, true),
                (3, 0, 8, 6, 2, 2, 2, true),
            ]
        );
        assert_eq!(g.features(), 6);
        // A 1x1 map stays 1x1 under stride 2 (ceil): never below one pixel.
        let g = a.geometry(shape(3, 1, 1)).unwrap();
        assert!(g.blocks.iter().all(|b| (b.height, b.width) == (1, 1)));
        // A width change without a stride still needs the 1x1 shortcut.
        let g = ResidualArch::parse("resnet:4;6x1")
            .unwrap()
            .geometry(shape(1, 4, 4))
            .unwrap();
        assert!(g.blocks[0].downsample && g.blocks[0].stride == 1);
        assert!(matches!(
            a.geometry(shape(0, 8, 8)),
            Err(ArchError::EmptyInput { .. })
        ));
        assert!(matches!(
            a.geometry(shape(1, usize::MAX / 2, 8)),
            Err(ArchError::TooLarge { .. })
        ));
    }

    #[test]
    fn forged_block_counts_and_widths_are_refused_not_allocated() {
        for text in [
            "resnet:4;4x18446744073709551615",
            "resnet:4;4x1000000000000",
            "resnet:4;4x1000,4x25",
            "resnet:100000;4x1",
            "resnet:4;100000x1",
            "resnet:4;4x1;inner=100000",
        ] {
            let err = ResidualArch::parse(text).unwrap_err().to_string();
            assert!(err.contains("at most"), "{text}: {err}");
        }
        assert!(ResidualArch::parse("resnet:4;4x1000,4x24").is_ok());
    }
}
