//! With the `cuda` feature: compiles the fused LIF kernels (cuda/lif.cu) to PTX with the CUDA
//! toolkit's nvcc into OUT_DIR/lif.ptx, which src/lif_cuda.rs embeds. Without it: nothing (the
//! normal build needs no CUDA).
//!
//! nvcc is `$CUDA_HOME/bin/nvcc` (or `$CUDA_PATH/bin/nvcc`, else `nvcc` on PATH); the PTX targets
//! `compute_$CUDA_COMPUTE_CAP` (default 90: H100/H200), which the driver JIT-compiles for that GPU
//! and newer ones. scripts/build-cuda.sh sets all of these.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cuda/lif.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=CUDA_PATH");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .map(|home| PathBuf::from(home).join("bin").join("nvcc"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".to_string());
    let cap = cap.trim().replace('.', "");
    if cap.is_empty() || !cap.chars().all(|c| c.is_ascii_digit()) {
        panic!("CUDA_COMPUTE_CAP = `{cap}`: expected digits such as 90 (H100/H200) or 80 (A100)");
    }
    let ptx = out_dir.join("lif.ptx");
    // --fmad=false: no contraction of a*b+c into one rounding anywhere (lif.cu also spells every
    // rounding with *_rn intrinsics), so the kernels round as the CPU twin does.
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "--fmad=false", "-std=c++17"])
        .arg(format!("--gpu-architecture=compute_{cap}"))
        .arg("-o")
        .arg(&ptx)
        .arg("cuda/lif.cu")
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "the cuda feature needs nvcc to compile cuda/lif.cu: running `{}` failed: {e} \
                 (set CUDA_HOME to a CUDA 13.0 toolkit; scripts/build-cuda.sh assembles one)",
                nvcc.display()
            )
        });
    if !status.success() {
        panic!("nvcc failed on cuda/lif.cu ({status})");
    }
}
