//! Property tests of the shared decoders of peer input: keep-masks ([`Mask::validate`]), chunked
//! artifact uploads ([`Assembler`]) and the cost of a model description from a peer
//! ([`cost::macs`], [`cost::parameters`]). Random values and mutations of valid values give an
//! error or a consistent answer, never a panic (overflow checks are on in the test profile) and
//! never memory beyond what actually arrived.

use ccsrp_proto::artifact_chunks::{chunks, sha256_hex, Assembler, TransferError, CHUNK_BYTES};
use ccsrp_proto::cost::{self, CostError};
use ccsrp_proto::v1::{ArtifactChunk, ConvLayer, Mask, ModelDescription};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

/// Any u32, biased towards the edges where arithmetic breaks.
fn edgy_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        0u32..=16,
        Just(u32::MAX),
        Just(u32::MAX / 2 + 1),
        Just(1 << 16),
        any::<u32>(),
    ]
}

fn description() -> impl Strategy<Value = ModelDescription> {
    let layer = (
        edgy_u32(),
        edgy_u32(),
        edgy_u32(),
        edgy_u32(),
        edgy_u32(),
        any::<bool>(),
    )
        .prop_map(
            |(filters, in_channels, kernel, out_height, out_width, pool_after)| ConvLayer {
                filters,
                in_channels,
                kernel,
                out_height,
                out_width,
                pool_after,
                ..Default::default()
            },
        )
        // Residual networks' fields: a block's inner conv with any sizes.
        .prop_flat_map(|l| {
            (Just(l), edgy_u32(), any::<bool>(), edgy_u32()).prop_map(
                |(mut l, stride, fixed_input, consumer_filters)| {
                    l.stride = stride;
                    l.fixed_input = fixed_input;
                    l.consumer_filters = consumer_filters;
                    l
                },
            )
        });
    (
        prop::collection::vec(layer, 0..5),
        edgy_u32(),
        edgy_u32(),
        edgy_u32(),
    )
        .prop_map(
            |(layers, classifier_spatial, classes, timesteps)| ModelDescription {
                layers,
                classifier_spatial,
                classes,
                timesteps,
                ..Default::default()
            },
        )
        .prop_flat_map(|d| {
            (Just(d), edgy_u64(), edgy_u64(), edgy_u32(), edgy_u64()).prop_map(
                |(mut d, fixed_macs, fixed_parameters, classifier_features, input_layer_macs)| {
                    d.fixed_macs = fixed_macs;
                    d.fixed_parameters = fixed_parameters;
                    d.classifier_features = classifier_features;
                    d.input_layer_macs = input_layer_macs;
                    d
                },
            )
        })
}

fn edgy_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..=16,
        Just(u64::MAX),
        Just(u64::MAX / 2 + 1),
        any::<u64>()
    ]
}

proptest! {
    #![proptest_config(config())]

    /// A mask as a peer may send it: any filter count, any bytes. `validate` never panics, and a
    /// mask it accepts is exactly `filters` bits keeping at least one filter.
    #[test]
    fn any_mask_is_validated_without_panicking(
        filters in edgy_u32(),
        bits in prop::collection::vec(any::<u8>(), 0..40),
        layer_filters in prop_oneof![0u32..=300, Just(u32::MAX)],
    ) {
        let mask = Mask { filters, bits };
        if mask.validate(layer_filters).is_ok() {
            prop_assert_eq!(mask.filters, layer_filters);
            prop_assert_eq!(mask.to_keep().len(), layer_filters as usize);
            prop_assert!(mask.kept() >= 1);
            prop_assert_eq!(Mask::from_keep(&mask.to_keep()), mask);
        }
    }

    /// A valid mask with one bit flipped or one byte added or removed is either still valid (a
    /// flip inside the filters) or refused with a reason.
    #[test]
    fn mutated_masks_are_refused_or_still_well_formed(
        keep in prop::collection::vec(any::<bool>(), 1..100),
        flip in any::<prop::sample::Index>(),
        edit in 0u8..3,
    ) {
        let filters = keep.len() as u32;
        let mut mask = Mask::from_keep(&keep);
        match edit {
            0 => {
                let bit = flip.index(mask.bits.len() * 8);
                mask.bits[bit / 8] ^= 1 << (bit % 8);
            }
            1 => mask.bits.push(1),
            _ => { mask.bits.pop(); }
        }
        match mask.validate(filters) {
            Ok(()) => prop_assert_eq!(mask.to_keep().len(), keep.len()),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// Any chunk sequence a client may send: random names, announced sizes (up to u64::MAX),
    /// offsets and data. The assembler refuses or finishes; its buffer never exceeds twice the
    /// bytes that arrived (the announcement is never allocated up front).
    #[test]
    fn any_chunk_sequence_is_refused_or_assembled_within_what_arrived(
        sends in prop::collection::vec(
            (
                prop_oneof![Just(None), any::<String>().prop_map(Some), Just(Some(sha256_hex(b"x")))],
                prop_oneof![any::<u64>(), 0u64..4096, Just(u64::MAX)],
                prop_oneof![any::<u64>(), 0u64..4096],
                prop::collection::vec(any::<u8>(), 0..1024),
            ),
            0..8,
        ),
        limit in prop_oneof![Just(u64::MAX), 0u64..8192],
    ) {
        let mut assembler = Assembler::new(limit);
        let mut arrived = 0usize;
        let mut refused = false;
        for (name, total_bytes, offset, data) in sends {
            arrived += data.len();
            let chunk = ArtifactChunk {
                sha256: name.unwrap_or_default(),
                total_bytes,
                offset,
                data,
            };
            if assembler.push(chunk).is_err() {
                refused = true;
                break;
            }
            prop_assert!(assembler.buffered() <= 2 * arrived.max(1), "{} buffered, {arrived} arrived", assembler.buffered());
            prop_assert!(assembler.received() <= limit);
        }
        if !refused {
            if let Ok((name, bytes)) = assembler.finish() {
                prop_assert_eq!(sha256_hex(&bytes), name);
            }
        }
    }

    /// A valid upload cut, reordered, with a byte flipped or with a forged size is refused with
    /// the matching reason; untouched it round-trips.
    #[test]
    fn mutated_uploads_are_refused(
        len in prop_oneof![0usize..64, (CHUNK_BYTES - 2)..(CHUNK_BYTES + 2), 0..(3 * CHUNK_BYTES / 2)],
        salt in any::<u8>(),
        edit in 0u8..5,
        at in any::<prop::sample::Index>(),
        forged in any::<u64>(),
    ) {
        let content: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ salt).collect();
        let sha = sha256_hex(&content);
        let mut sent = chunks(&content, &sha);
        let last = sent.len() - 1;
        match edit {
            0 => {}
            1 if !content.is_empty() => {
                let c = &mut sent[last];
                let len = c.data.len();
                c.data.truncate(len - 1);
            }
            2 if !content.is_empty() => {
                let c = &mut sent[last];
                let i = at.index(c.data.len());
                c.data[i] ^= 0x40;
            }
            3 if sent.len() > 1 => sent.swap(0, 1),
            4 if forged != content.len() as u64 => sent[0].total_bytes = forged,
            _ => return Ok(()),
        }
        let mut assembler = Assembler::new(u64::MAX);
        let result = sent
            .into_iter()
            .try_for_each(|c| assembler.push(c))
            .and_then(|()| assembler.finish());
        match (edit, result) {
            (0, Ok((name, bytes))) => {
                prop_assert_eq!(name, sha);
                prop_assert_eq!(bytes, content);
            }
            (0, Err(e)) => prop_assert!(false, "valid upload refused: {e}"),
            (_, Ok(_)) => prop_assert!(false, "mutated upload (edit {edit}) accepted"),
            (_, Err(TransferError::Empty)) => prop_assert!(false, "chunks were sent"),
            (_, Err(_)) => {}
        }
    }

    /// The cost of any description (u32 fields a peer chose, kept counts inside and outside the
    /// layers) is a count or an error, never an arithmetic overflow panic.
    #[test]
    fn any_description_costs_a_number_or_an_error(
        d in description(),
        kept in prop::collection::vec(edgy_u32(), 0..5),
    ) {
        for counts in [cost::dense_kept(&d), kept] {
            let macs = cost::macs(&d, &counts);
            let parameters = cost::parameters(&d, &counts);
            if let (Ok(m), Ok(p)) = (&macs, &parameters) {
                // Every layer keeps >= 1 of >= 1 filters, so a checked cost is sane.
                prop_assert!(counts.len() == d.layers.len());
                prop_assert!(*p >= 2 * counts.iter().map(|&k| u64::from(k)).sum::<u64>());
                let _ = m;
            }
            for r in [macs, parameters] {
                if let Err(e) = r {
                    let known = matches!(
                        e,
                        CostError::LayerCount { .. } | CostError::KeptOutOfRange { .. } | CostError::Overflow { .. }
                    );
                    prop_assert!(known, "{e:?}");
                }
            }
        }
    }
}

#[test]
fn a_description_of_u32_max_sizes_is_an_overflow_error_not_a_panic() {
    let layer = ConvLayer {
        filters: u32::MAX,
        in_channels: u32::MAX,
        kernel: u32::MAX,
        out_height: u32::MAX,
        out_width: u32::MAX,
        pool_after: false,
        ..Default::default()
    };
    let d = ModelDescription {
        layers: vec![layer],
        classifier_spatial: u32::MAX,
        classes: u32::MAX,
        timesteps: u32::MAX,
        ..Default::default()
    };
    let dense = cost::dense_kept(&d);
    assert_eq!(
        cost::macs(&d, &dense),
        Err(CostError::Overflow { what: "MACs" })
    );
    assert_eq!(
        cost::parameters(&d, &dense),
        Err(CostError::Overflow { what: "parameters" })
    );
    assert_eq!(cost::dense_macs(&d), 0);
}
