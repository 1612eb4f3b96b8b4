//! VGG-style architectures: a list of conv widths and `M` (2x2 average pool), e.g. `"64,M,128,M"`.
//!
//! Every number is one prunable layer, `Conv3x3(pad 1, stride 1, no bias) -> BatchNorm2d -> LIF`; an
//! `M` after it adds `AvgPool2d(2)`. After the last layer the feature map is flattened (C, H, W order)
//! into one `Linear(features, classes)`. [`Architecture::geometry`] turns the list and an input shape
//! into per-layer sizes; that is where impossible architectures (a pool shrinking the map below 1x1,
//! two pools in a row, a pool before any conv) are refused.
//!
//! Presets ([`Architecture::preset`]): `vgg11`, `small` (the CPU default) and `tiny` (tests).
//!
//! An [`Architecture`] is either such a VGG list or a spiking ResNet, `resnet:STEM;C1xN1,...`
//! ([`crate::resnet_arch`], presets `resnet18`, `resnet19`, `resnet-tiny` and their `sew-`
//! variants). For a ResNet the prunable layers are the blocks' first convs:
//! [`Architecture::widths`], [`Architecture::with_widths`] and [`Architecture::geometry`] speak of
//! those, and [`Architecture::residual`] gives the whole network.

use crate::resnet_arch::{ResidualArch, RESIDUAL_PREFIX, RESIDUAL_PRESETS};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Side of every conv kernel.
pub const KERNEL: usize = 3;

/// An architecture string or an input shape that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchError {
    #[error("architecture {text:?}: item {index} is {item:?}, expected a conv width (positive integer) or M")]
    BadItem {
        text: String,
        index: usize,
        item: String,
    },
    #[error("architecture {text:?}: {item:?}: expected {expected}")]
    BadResidual {
        text: String,
        item: String,
        expected: String,
    },
    #[error("architecture has no conv layer")]
    NoConv,
    #[error("architecture item {index}: M must follow a conv width (no pool before the first conv or two in a row)")]
    MisplacedPool { index: usize },
    #[error(
        "layer {layer}: a 2x2 pool needs a feature map of at least 2x2, it gets {height}x{width}"
    )]
    PoolTooSmall {
        layer: usize,
        height: usize,
        width: usize,
    },
    #[error("input shape {channels}x{height}x{width}: every side must be at least 1")]
    EmptyInput {
        channels: usize,
        height: usize,
        width: usize,
    },
    /// The classifier's inputs (last filters x height x width) do not fit in a usize: no real
    /// network, e.g. a spec with a forged input size.
    #[error(
        "the classifier's inputs {filters}x{height}x{width} overflow: input shape or widths too large"
    )]
    TooLarge {
        filters: usize,
        height: usize,
        width: usize,
    },
}

/// One item of an architecture list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchItem {
    /// A prunable layer with this many filters.
    Conv(usize),
    /// 2x2 average pool after the previous conv layer.
    Pool,
}

/// A VGG-style or residual architecture; serialised as its string form (`"64,M,128,M"`,
/// `"resnet:16;16x1,32x1"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Architecture {
    /// The VGG list; empty for a residual network.
    items: Vec<ArchItem>,
    residual: Option<ResidualArch>,
}

/// Shape of one input image (channels, height, width).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

/// Sizes of one prunable layer, as the model and the MACs formula need them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerGeometry {
    pub in_channels: usize,
    pub filters: usize,
    /// Conv output size (equals its input size: same padding).
    pub height: usize,
    pub width: usize,
    pub pool_after: bool,
}

impl LayerGeometry {
    /// Spatial size of this layer's output after its optional pool.
    pub fn output_spatial(&self) -> (usize, usize) {
        if self.pool_after {
            (self.height / 2, self.width / 2)
        } else {
            (self.height, self.width)
        }
    }
}

impl Architecture {
    /// Names accepted by [`Architecture::preset`].
    pub const PRESETS: [&'static str; 9] = [
        "vgg11",
        "small",
        "tiny",
        RESIDUAL_PRESETS[0],
        RESIDUAL_PRESETS[1],
        RESIDUAL_PRESETS[2],
        RESIDUAL_PRESETS[3],
        RESIDUAL_PRESETS[4],
        RESIDUAL_PRESETS[5],
    ];

    /// A named preset: `vgg11` (64,M,128,M,256,256,M,512,512,M,512,512,M), `small` (32,M,64,M,128,M),
    /// `tiny` (8,M,16,M: trains in seconds, for tests).
    pub fn preset(name: &str) -> Option<Architecture> {
        let text = match name {
            "vgg11" => "64,M,128,M,256,256,M,512,512,M,512,512,M",
            "small" => "32,M,64,M,128,M",
            "tiny" => "8,M,16,M",
            _ => return ResidualArch::preset(name).map(Architecture::from),
        };
        text.parse().ok()
    }

    /// A preset name or an explicit list.
    pub fn from_name_or_list(text: &str) -> Result<Architecture, ArchError> {
        match Architecture::preset(text.trim()) {
            Some(a) => Ok(a),
            None => text.parse(),
        }
    }

    /// Builds from items, checking the ordering rules (pools follow a conv, at least one conv).
    pub fn new(items: Vec<ArchItem>) -> Result<Architecture, ArchError> {
        let mut previous_was_conv = false;
        for (index, item) in items.iter().enumerate() {
            match item {
                ArchItem::Conv(_) => previous_was_conv = true,
                ArchItem::Pool if !previous_was_conv => {
                    return Err(ArchError::MisplacedPool { index })
                }
                ArchItem::Pool => previous_was_conv = false,
            }
        }
        if !items.iter().any(|i| matches!(i, ArchItem::Conv(_))) {
            return Err(ArchError::NoConv);
        }
        Ok(Architecture {
            items,
            residual: None,
        })
    }

    /// The VGG list (empty for a residual network).
    pub fn items(&self) -> &[ArchItem] {
        &self.items
    }

    /// The residual network, if this is one.
    pub fn residual(&self) -> Option<&ResidualArch> {
        self.residual.as_ref()
    }

    /// Filter counts of the prunable layers, in order (a ResNet's blocks' conv1 widths).
    pub fn widths(&self) -> Vec<usize> {
        if let Some(r) = &self.residual {
            return r.inner_widths().to_vec();
        }
        self.items
            .iter()
            .filter_map(|i| match i {
                ArchItem::Conv(w) => Some(*w),
                ArchItem::Pool => None,
            })
            .collect()
    }

    /// The same layout (pools in the same places) with new widths, one per conv layer; used by
    /// pruning. `widths` must have one entry per conv layer, each at least 1.
    pub fn with_widths(&self, widths: &[usize]) -> Architecture {
        if let Some(r) = &self.residual {
            return r.with_inner_widths(widths).into();
        }
        let mut next = widths.iter();
        let items = self
            .items
            .iter()
            .map(|item| match item {
                ArchItem::Conv(w) => ArchItem::Conv(next.next().copied().unwrap_or(*w)),
                ArchItem::Pool => ArchItem::Pool,
            })
            .collect();
        Architecture {
            items,
            residual: None,
        }
    }

    /// Per-layer sizes for images of shape `input`, and the classifier's input features. For a
    /// ResNet: its prunable layers ([`crate::resnet_arch::ResidualGeometry::prunable_layers`])
    /// and the last stage's width.
    pub fn geometry(&self, input: InputShape) -> Result<(Vec<LayerGeometry>, usize), ArchError> {
        if let Some(r) = &self.residual {
            let g = r.geometry(input)?;
            return Ok((g.prunable_layers(), g.features()));
        }
        if input.channels == 0 || input.height == 0 || input.width == 0 {
            return Err(ArchError::EmptyInput {
                channels: input.channels,
                height: input.height,
                width: input.width,
            });
        }
        let mut layers: Vec<LayerGeometry> = Vec::new();
        let (mut channels, mut height, mut width) = (input.channels, input.height, input.width);
        for item in &self.items {
            match *item {
                ArchItem::Conv(filters) => {
                    layers.push(LayerGeometry {
                        in_channels: channels,
                        filters,
                        height,
                        width,
                        pool_after: false,
                    });
                    channels = filters;
                }
                ArchItem::Pool => {
                    let layer = layers.len().saturating_sub(1);
                    if height < 2 || width < 2 {
                        return Err(ArchError::PoolTooSmall {
                            layer,
                            height,
                            width,
                        });
                    }
                    if let Some(last) = layers.last_mut() {
                        last.pool_after = true;
                    }
                    height /= 2;
                    width /= 2;
                }
            }
        }
        let features = channels
            .checked_mul(height)
            .and_then(|f| f.checked_mul(width))
            .ok_or(ArchError::TooLarge {
                filters: channels,
                height,
                width,
            })?;
        Ok((layers, features))
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(r) = &self.residual {
            return fmt::Display::fmt(r, f);
        }
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match item {
                ArchItem::Conv(w) => write!(f, "{w}")?,
                ArchItem::Pool => f.write_str("M")?,
            }
        }
        Ok(())
    }
}

impl FromStr for Architecture {
    type Err = ArchError;

    /// Parses `"64,M,128,M"` (spaces around items allowed, `m` accepted for `M`) or a residual
    /// string `"resnet:..."` ([`ResidualArch::parse`]).
    fn from_str(text: &str) -> Result<Architecture, ArchError> {
        if text.trim_start().starts_with(RESIDUAL_PREFIX) {
            return ResidualArch::parse(text).map(Architecture::from);
        }
        let items = text
            .split(',')
            .enumerate()
            .map(|(index, raw)| {
                let item = raw.trim();
                if item.eq_ignore_ascii_case("m") {
                    return Ok(ArchItem::Pool);
                }
                match item.parse::<usize>() {
                    Ok(w) if w > 0 => Ok(ArchItem::Conv(w)),
                    _ => Err(ArchError::BadItem {
                        text: text.to_string(),
                        index,
                        item: item.to_string(),
                    }),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Architecture::new(items)
    }
}

impl From<ResidualArch> for Architecture {
    fn from(r: ResidualArch) -> Architecture {
        Architecture {
            items: Vec::new(),
            residual: Some(r),
        }
    }
}

impl Serialize for Architecture {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Architecture {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Architecture, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
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
    fn strings_round_trip_through_parse_and_display() {
        let a: Architecture = "64, M,128,m,256".parse().unwrap();
        assert_eq!(a.to_string(), "64,M,128,M,256");
        assert_eq!(a.widths(), vec![64, 128, 256]);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "\"64,M,128,M,256\"");
        let back: Architecture = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn presets_have_the_documented_layouts() {
        let vgg = Architecture::preset("vgg11").unwrap();
        assert_eq!(vgg.to_string(), "64,M,128,M,256,256,M,512,512,M,512,512,M");
        assert_eq!(
            Architecture::preset("small").unwrap().to_string(),
            "32,M,64,M,128,M"
        );
        assert!(Architecture::preset("tiny").is_some());
        assert!(Architecture::preset("resnet").is_none());
        for name in Architecture::PRESETS {
            let a = Architecture::from_name_or_list(name).unwrap();
            assert_eq!(a.to_string().parse::<Architecture>().unwrap(), a, "{name}");
        }
        assert_eq!(
            Architecture::from_name_or_list("small")
                .unwrap()
                .widths()
                .len(),
            3
        );
    }

    #[test]
    fn malformed_strings_name_the_bad_item() {
        assert_eq!(
            "64,X".parse::<Architecture>(),
            Err(ArchError::BadItem {
                text: "64,X".into(),
                index: 1,
                item: "X".into()
            })
        );
        assert!(matches!(
            "0,M".parse::<Architecture>(),
            Err(ArchError::BadItem { index: 0, .. })
        ));
        assert_eq!(
            "M,64".parse::<Architecture>(),
            Err(ArchError::MisplacedPool { index: 0 })
        );
        assert_eq!(
            "64,M,M".parse::<Architecture>(),
            Err(ArchError::MisplacedPool { index: 2 })
        );
        assert!(matches!(
            "".parse::<Architecture>(),
            Err(ArchError::BadItem { .. })
        ));
    }

    #[test]
    fn geometry_follows_same_padding_and_halving_pools() {
        let a: Architecture = "8,M,16,M".parse().unwrap();
        let (layers, features) = a.geometry(shape(1, 28, 28)).unwrap();
        assert_eq!(
            layers,
            vec![
                LayerGeometry {
                    in_channels: 1,
                    filters: 8,
                    height: 28,
                    width: 28,
                    pool_after: true
                },
                LayerGeometry {
                    in_channels: 8,
                    filters: 16,
                    height: 14,
                    width: 14,
                    pool_after: true
                },
            ]
        );
        assert_eq!(features, 16 * 7 * 7);
    }

    #[test]
    fn residual_strings_dispatch_and_round_trip_through_serde() {
        let a = Architecture::from_name_or_list("resnet:4;4x1,8x1;sew").unwrap();
        assert!(a.residual().unwrap().sew());
        assert!(a.items().is_empty());
        assert_eq!(a.widths(), vec![4, 8]);
        let pruned = a.with_widths(&[2, 5]);
        assert_eq!(pruned.to_string(), "resnet:4;4x1,8x1;sew;inner=2,5");
        let json = serde_json::to_string(&pruned).unwrap();
        assert_eq!(serde_json::from_str::<Architecture>(&json).unwrap(), pruned);
        let (layers, features) = pruned.geometry(shape(1, 8, 8)).unwrap();
        assert_eq!(features, 8);
        assert_eq!(
            layers,
            vec![
                LayerGeometry {
                    in_channels: 4,
                    filters: 2,
                    height: 8,
                    width: 8,
                    pool_after: false
                },
                LayerGeometry {
                    in_channels: 4,
                    filters: 5,
                    height: 4,
                    width: 4,
                    pool_after: false
                },
            ]
        );
        assert!(matches!(
            "resnet:4;4x".parse::<Architecture>(),
            Err(ArchError::BadResidual { .. })
        ));
    }

    #[test]
    fn pools_that_shrink_below_one_pixel_are_errors() {
        let vgg = Architecture::preset("vgg11").unwrap();
        assert!(vgg.geometry(shape(3, 32, 32)).is_ok());
        assert_eq!(
            vgg.geometry(shape(3, 16, 16)),
            Err(ArchError::PoolTooSmall {
                layer: 7,
                height: 1,
                width: 1
            })
        );
    }
}
