//! `ccsrp info`: what a model file holds: architecture, T, input shape, classes, per-layer filters,
//! parameters and MACs (the shared formula of ARCHITECTURE.md, from the stored weight shapes, so a
//! pruned model reports its pruned sizes), and what needs no data of the energy estimate
//! ([`ccsrp_proto::energy`]): each layer's synapses per spike (inside the map; a border spike
//! drives fewer), the first layer's MACs, and the network's MACs and energy as an ANN at the
//! default pJ per operation. SOPs and the SNN's energy need spikes: `ccsrp eval`.

use std::path::PathBuf;

use serde::Serialize;

use ccsrp_proto::activity::fan_out;
use ccsrp_proto::energy;

use ccsrp_worker::arch::InputShape;
use ccsrp_worker::device::parse_device;
use ccsrp_worker::lif::LifParams;
use ccsrp_worker::model::{Normalisation, SnnModel};

#[derive(clap::Args)]
pub struct InfoArgs {
    /// The model file (safetensors written by `ccsrp train` or a pruning run).
    pub file: PathBuf,
    /// Print one JSON object instead of a summary for people.
    #[arg(long)]
    pub json: bool,
}

/// One conv layer as `ccsrp info` reports it.
#[derive(Serialize)]
struct LayerInfo {
    filters: u32,
    in_channels: u32,
    kernel: u32,
    out_height: u32,
    out_width: u32,
    pool_after: bool,
    /// Conv stride (residual networks: 2 in the first block of a later stage).
    stride: u32,
    /// A residual block's inner conv: it reads the residual path (its input channels never change)
    /// and is read by the block's second conv, which keeps `consumer_filters` outputs.
    residual_inner: bool,
    consumer_filters: u32,
    /// Synapses one spike of this layer drives, away from the borders: k x k x the next layer's
    /// filters (a residual block's second conv's), or the classes for a VGG's last layer.
    synapses_per_spike: u64,
}

/// What `ccsrp info --json` prints.
#[derive(Serialize)]
struct InfoReport {
    file: String,
    architecture: String,
    timesteps: usize,
    input: InputShape,
    classes: usize,
    class_names: Vec<String>,
    layers: Vec<LayerInfo>,
    parameters: u64,
    macs: u64,
    /// MACs of the first layer over all T steps (its input is pixels, not spikes).
    first_layer_macs: u64,
    /// MACs of one pass of the same network as an ANN, and their energy at `e_mac_pj`.
    ann_macs: u64,
    ann_energy_pj: f64,
    e_mac_pj: f64,
    lif: LifParams,
    normalisation: Normalisation,
}

pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    let model = SnnModel::load(&args.file, &parse_device("cpu")?)?;
    let spec = model.spec();
    let description = model.description();
    let layers: Vec<LayerInfo> = description
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| LayerInfo {
            synapses_per_spike: fan_out(&description, i)
                .and_then(|f| f.into_iter().max())
                .unwrap_or(0),
            filters: l.filters,
            in_channels: l.in_channels,
            kernel: l.kernel,
            out_height: l.out_height,
            out_width: l.out_width,
            pool_after: l.pool_after,
            stride: l.stride.max(1),
            residual_inner: l.fixed_input,
            consumer_filters: l.consumer_filters,
        })
        .collect();
    let report = InfoReport {
        file: args.file.display().to_string(),
        architecture: spec.architecture.to_string(),
        timesteps: spec.timesteps,
        input: spec.input,
        classes: spec.classes(),
        class_names: spec.class_names.clone(),
        layers,
        parameters: model.parameters(),
        macs: model.macs(),
        first_layer_macs: energy::first_layer_macs(&description),
        ann_macs: energy::ann_macs(&description),
        ann_energy_pj: energy::DEFAULT_E_MAC_PJ * energy::ann_macs(&description) as f64,
        e_mac_pj: energy::DEFAULT_E_MAC_PJ,
        lif: spec.lif,
        normalisation: spec.normalisation.clone(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!("{}", report.file);
    println!(
        "architecture: {} (T = {})",
        report.architecture, report.timesteps
    );
    println!(
        "input: {}x{}x{}; {} classes: {}",
        report.input.channels,
        report.input.height,
        report.input.width,
        report.classes,
        report.class_names.join(", ")
    );
    if report.layers.iter().any(|l| l.residual_inner) {
        println!("prunable layers: each residual block's inner conv (the residual path stays)");
    }
    for (i, l) in report.layers.iter().enumerate() {
        let stride = if l.stride > 1 {
            format!(", stride {}", l.stride)
        } else {
            String::new()
        };
        let after = if l.pool_after {
            ", then 2x2 average pool".to_string()
        } else if l.residual_inner {
            format!(
                ", read by the block's second conv ({} filters)",
                l.consumer_filters
            )
        } else {
            String::new()
        };
        println!(
            "  layer {i}: {} filters ({}x{} conv on {} channels{stride}), output {}x{}{after}; a spike drives {} synapses",
            l.filters,
            l.kernel,
            l.kernel,
            l.in_channels,
            l.out_height,
            l.out_width,
            l.synapses_per_spike
        );
    }
    println!(
        "{} parameters; {} MACs per image over all {} steps",
        report.parameters, report.macs, report.timesteps
    );
    println!(
        "first layer (real-valued input): {} MACs; as an ANN: {} MACs per image, {:.3} uJ at {} pJ/MAC",
        report.first_layer_macs,
        report.ann_macs,
        report.ann_energy_pj * 1e-6,
        report.e_mac_pj
    );
    Ok(())
}
