//! Residual networks end to end, through the real binary: `ccsrp train --arch resnet-tiny`,
//! `ccsrp info`, `ccsrp eval` and a whole `ccsrp run` job on a small residual network, pruning
//! only the blocks' inner convs.

mod common;

use std::path::Path;

use common::{ccsrp, embedded_run, write_job};

/// A residual network small enough for a test: stem 4, a stride-1 block of 4 and a stride-2 block
/// of 8 (with a 1x1 shortcut).
const SMALL_RESNET: &str = "resnet:4;4x1,8x1";

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn train(dir: &Path, arch: &str, name: &str) -> String {
    let out = dir.join(name).to_str().unwrap().to_string();
    let run = ccsrp(&[
        "train",
        "--dataset",
        "synthetic",
        "--arch",
        arch,
        "--timesteps",
        "2",
        "--epochs",
        "1",
        "--train-limit",
        "128",
        "--test-limit",
        "32",
        "--eval-size",
        "32",
        "--val-size",
        "32",
        "--seed",
        "7",
        "--out",
        &out,
        "--json",
    ]);
    assert!(
        run.status.success(),
        "train --arch {arch}: {}",
        stderr(&run)
    );
    out
}

#[test]
fn the_resnet_tiny_preset_trains_and_its_file_names_the_spikingjelly_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let model = train(dir.path(), "resnet-tiny", "tiny.safetensors");
    let info = ccsrp(&["info", &model, "--json"]);
    assert!(info.status.success(), "{}", stderr(&info));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    // resnet-tiny: three stages of one block each; one prunable layer per block.
    let layers = info["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3, "{info}");
    assert!(layers.iter().all(|l| l["residual_inner"] == true), "{info}");
    assert_eq!(layers[1]["stride"], 2);
    // The tensor names are spikingjelly's: read them from the safetensors header.
    let header = safetensors_header(Path::new(&model));
    for name in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.0.bn2.bias",
        "layer2.0.conv2.weight",
        "layer2.0.downsample.0.weight",
        "layer3.0.downsample.1.running_mean",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(header.get(name).is_some(), "{name} missing from {header}");
    }
}

#[test]
fn info_and_eval_describe_a_residual_network_with_exact_macs() {
    let dir = tempfile::tempdir().unwrap();
    let model = train(dir.path(), SMALL_RESNET, "small.safetensors");
    let info = ccsrp(&["info", &model, "--json"]);
    assert!(info.status.success(), "{}", stderr(&info));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    // Synthetic images are 3x32x32, T = 2. Stem 3->4 (32x32); block 1: 4->4->4 (32x32); block 2:
    // 4->8 stride 2 (16x16), 8->8, shortcut 1x1 4->8; fc 8->10.
    let per_step: u64 = 9 * 3 * 4 * 1024
        + (9 * 4 * 4 * 1024 + 9 * 4 * 4 * 1024)
        + (9 * 4 * 8 * 256 + 9 * 8 * 8 * 256 + 4 * 8 * 256)
        + 8 * 10;
    assert_eq!(info["macs"], 2 * per_step, "{info}");
    assert_eq!(info["first_layer_macs"], 2 * 9 * 3 * 4 * 1024, "{info}");
    let eval = ccsrp(&[
        "eval",
        "--model",
        &model,
        "--dataset",
        "synthetic",
        "--limit",
        "32",
        "--attack",
        "pgd",
        "--steps",
        "2",
        "--json",
    ]);
    assert!(eval.status.success(), "{}", stderr(&eval));
    let eval: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(eval["images"], 32, "{eval}");
    assert!(eval["adversarial_correct"].as_u64().is_some(), "{eval}");
    // Every spiking layer is counted: the stem, then per block sn1 and sn2.
    let spiking = eval["energy"]["layers"].as_array().map_or(0, Vec::len);
    assert_eq!(spiking, 5, "{eval}");
}

#[test]
fn a_job_on_a_residual_network_prunes_only_the_inner_convs() {
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), "");
    // The small job, with its architecture swapped for the residual one.
    let text = std::fs::read_to_string(&job)
        .unwrap()
        .replace("arch = \"tiny\"", &format!("arch = \"{SMALL_RESNET}\""));
    std::fs::write(&job, text).unwrap();
    let out = embedded_run(dir.path(), &job, 2);
    let summary = json(&out.join("summary.json"));
    let dense: Vec<u64> = serde_json::from_value(summary["dense"]["kept_filters"].clone()).unwrap();
    let pruned: Vec<u64> =
        serde_json::from_value(summary["pruned"]["kept_filters"].clone()).unwrap();
    assert_eq!(dense, vec![4, 8], "{summary}");
    assert_eq!(pruned.len(), 2);
    assert!(pruned.iter().zip(&dense).all(|(p, d)| p <= d && *p >= 1));
    let (dm, pm) = (
        summary["dense"]["macs"].as_u64().unwrap(),
        summary["pruned"]["macs"].as_u64().unwrap(),
    );
    assert!(pm <= dm, "{summary}");
    // The pruned model file is a residual network again, and its MACs are the job's.
    let model = out.join("model.safetensors");
    let info = ccsrp(&["info", model.to_str().unwrap(), "--json"]);
    assert!(info.status.success(), "{}", stderr(&info));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["macs"].as_u64(), Some(pm), "{info}");
    let kept: Vec<u64> = info["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["filters"].as_u64().unwrap())
        .collect();
    assert_eq!(kept, pruned);
    // Only the inner convs changed: the residual path's tensors keep their dense shapes.
    let header = safetensors_header(&model);
    let spec: serde_json::Value =
        serde_json::from_str(header["__metadata__"]["ccsrp.model_spec"].as_str().unwrap()).unwrap();
    let arch = spec["architecture"].as_str().unwrap();
    assert!(arch.starts_with(SMALL_RESNET), "{arch}");
    let shape = |name: &str| header[name]["shape"].clone();
    assert_eq!(shape("fc.weight"), serde_json::json!([10, 8]));
    assert_eq!(shape("conv1.weight"), serde_json::json!([4, 3, 3, 3]));
    assert_eq!(
        shape("layer2.0.downsample.0.weight"),
        serde_json::json!([8, 4, 1, 1])
    );
    for (block, (out, kept)) in [("layer1.0", (4, pruned[0])), ("layer2.0", (8, pruned[1]))] {
        assert_eq!(shape(&format!("{block}.conv1.weight"))[0], kept, "{block}");
        assert_eq!(shape(&format!("{block}.conv2.weight"))[0], out, "{block}");
        assert_eq!(shape(&format!("{block}.conv2.weight"))[1], kept, "{block}");
    }
}

/// The JSON header of a safetensors file.
fn safetensors_header(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[8..8 + len]).unwrap()
}

/// The master reads a ResNet's description from the file's tensor names (no tensor code); the
/// worker builds it from its own model. Both must agree field by field, dense and pruned, plain
/// and SEW, or the master would optimise MACs the worker does not run.
#[test]
fn the_master_reads_the_description_the_worker_builds() {
    use ccsrp_worker::arch::{Architecture, InputShape};
    use ccsrp_worker::model::{ModelSpec, SnnModel};
    let device = ccsrp_worker::device::parse_device("cpu").unwrap();
    for (arch, input) in [
        ("resnet:3;3x1,4x2,5x1,4x1", (3, 9, 7)),
        ("resnet:3;3x1,4x2,5x1,4x1;sew", (1, 8, 8)),
        ("resnet:3;5x1", (2, 5, 6)),
        ("resnet:4;4x1,8x2;inner=2,8,3", (3, 12, 12)),
    ] {
        let architecture = Architecture::from_name_or_list(arch).unwrap();
        let input = InputShape {
            channels: input.0,
            height: input.1,
            width: input.2,
        };
        let classes = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let spec = ModelSpec::new(architecture, 2, input, classes);
        let model = SnnModel::new(spec, &device, 3).unwrap();
        let bytes = model.to_bytes().unwrap();
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let read = ccsrp_master::dense_model::description_from_header(&bytes[8..8 + len])
            .unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert_eq!(read, model.description(), "{arch}");
        assert_eq!(
            ccsrp_proto::cost::dense_macs(&read),
            model.macs(),
            "{arch}: the master's MACs are the model's"
        );
    }
}
