#!/usr/bin/env bash
# Build the `ccsrp` binary with candle's CUDA backend on a bare machine: no GPU, no CUDA install,
# only the package registries (crates.io and PyPI).
#
#   scripts/build-cuda.sh                 # toolkit (if missing) + cargo build --release --features cuda,cudnn
#   scripts/build-cuda.sh --toolkit-only  # only assemble the CUDA toolkit (with cuDNN) from PyPI wheels
#   scripts/build-cuda.sh --no-cudnn      # without cuDNN: --features cuda (candle's own conv kernels)
#
# What it does:
#   1. `cargo fetch`, so that cudarc's sources are on disk (its driver API list makes the link stub).
#   2. Assembles a CUDA_HOME look-alike from PyPI's CUDA 13.0 wheels (about 680 MB downloaded,
#      1.2 GB unpacked) under $CCSRP_CUDA_HOME: nvcc, headers, cudart, cuBLAS, cuRAND, NVRTC, and a
#      link-time stub of the driver library (lib/stubs/libcuda.so). The stub is for the linker only:
#      never ship it or put it on LD_LIBRARY_PATH; the real libcuda.so.1 comes with the NVIDIA driver.
#      nvcc must be 13.0.x: a newer nvcc writes PTX that a CUDA 13.0 driver (580.x) refuses.
#      cuDNN 9 (PyPI's nvidia-cudnn-cu13, about 350 MB more downloaded) goes to $CCSRP_CUDA_HOME/cudnn
#      (headers, libcudnn.so.9); the build links it through CUDNN_LIB.
#   3. `cargo build --release --features cuda,cudnn` into its own target dir ($CARGO_TARGET_DIR, default
#      target/cuda) so it never invalidates the normal static builds, with RUSTFLAGS overriding the
#      workspace's +crt-static (.cargo/config.toml): the CUDA libraries are shared objects and a static
#      glibc binary cannot load them reliably.
#      It builds the `ccsrp` binary and the GPU check program (worker example `gpu_check`, which
#      bench/gpu-check.sh runs).
#   4. Copies both without debug info to $CARGO_TARGET_DIR/dist/{ccsrp,gpu_check} (about 30 MB each)
#      and prints their sizes and the shared libraries they need at run time.
#
# Environment (all optional):
#   CCSRP_CUDA_HOME    where the toolkit goes            (default: target/cuda-toolkit)
#   CCSRP_CUDA_WHEELS  where the wheels are downloaded   (default: $CCSRP_CUDA_HOME.wheels)
#   CARGO_TARGET_DIR   cargo's output dir                (default: target/cuda)
#   CUDA_COMPUTE_CAP   GPU compute capability of the kernels (default: 90, Hopper: H100/H200)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TOOLKIT_ONLY=0
WITH_CUDNN=1
for arg in "$@"; do
  case "$arg" in
    --toolkit-only) TOOLKIT_ONLY=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    --no-cudnn) WITH_CUDNN=0 ;;
    *) echo "build-cuda.sh: unknown argument '$arg' (expected --toolkit-only, --no-cudnn or --help)" >&2; exit 2 ;;
  esac
done

TARGET_TRIPLE=x86_64-unknown-linux-gnu
CUDA_PREFIX="$(realpath -m "${CCSRP_CUDA_HOME:-$ROOT/target/cuda-toolkit}")"
WHEELDIR="$(realpath -m "${CCSRP_CUDA_WHEELS:-$CUDA_PREFIX.wheels}")"
export CARGO_TARGET_DIR="$(realpath -m "${CARGO_TARGET_DIR:-$ROOT/target/cuda}")"

# Pinned CUDA 13.0 wheels (PyPI). Changing any of these rebuilds the toolkit (see the stamp below).
WHEELS=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35
)
# cuDNN 9 for CUDA 13 (cudarc's bindings are cuDNN 9.x's API; the run-time library may be newer 9.x).
CUDNN_WHEEL=nvidia-cudnn-cu13==9.13.0.50

need() { command -v "$1" >/dev/null 2>&1 || { echo "build-cuda.sh: '$1' not found on PATH ($2)" >&2; exit 2; }; }
need cargo "install Rust: https://rustup.rs"
need gcc "needed to compile the driver-library link stub"
need unzip "needed to unpack the CUDA wheels (apt-get install unzip)"
need objcopy "needed to strip debug info from the shipped binaries (apt-get install binutils)"
PIP=""
for p in pip3 pip; do command -v "$p" >/dev/null 2>&1 && { PIP="$p"; break; }; done
[ -n "$PIP" ] || { echo "build-cuda.sh: pip not found (needed to download the CUDA wheels from PyPI; apt-get install python3-pip)" >&2; exit 2; }

step() { printf '\n== %s\n' "$*"; }

# pip download of wheels for another platform: no install, no Python packages touched.
pip_download() {
  "$PIP" download --no-deps --only-binary=:all: -d "$WHEELDIR" \
    --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    --python-version 3.11 "$@"
}

# The wheel file of a pinned requirement: name==version -> name_with_underscores-version-*.whl
wheel_file() {
  local req="$1" name version
  name="${req%%==*}"; version="${req##*==}"
  ls "$WHEELDIR/${name//-/_}-$version-"*.whl 2>/dev/null | head -n1
}

# cudarc's list of driver API functions, from which the link stub is generated.
cudarc_driver_sys() {
  ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs 2>/dev/null | sort -V | tail -n1
}

STAMP_TEXT="${WHEELS[*]}"
toolkit_ready() {
  [ -x "$CUDA_PREFIX/bin/nvcc" ] && [ -f "$CUDA_PREFIX/lib/stubs/libcuda.so" ] \
    && [ "$(cat "$CUDA_PREFIX/.ccsrp-stamp" 2>/dev/null)" = "$STAMP_TEXT" ]
}

assemble_toolkit() {
  local sys tmp req whl
  sys="$(cudarc_driver_sys)"
  [ -n "$sys" ] || { echo "build-cuda.sh: cudarc 0.19 sources not found under ${CARGO_HOME:-$HOME/.cargo}/registry/src (cargo fetch did not get them)" >&2; exit 2; }
  mkdir -p "$WHEELDIR"
  step "downloading CUDA 13.0 wheels into $WHEELDIR (about 680 MB)"
  pip_download "${WHEELS[@]}"
  tmp="$(mktemp -d)"
  for req in "${WHEELS[@]}"; do
    whl="$(wheel_file "$req")"
    [ -n "$whl" ] || { echo "build-cuda.sh: wheel for $req missing in $WHEELDIR after download" >&2; exit 2; }
    unzip -q -o "$whl" 'nvidia/*' -d "$tmp"
  done
  [ -d "$tmp/nvidia/cu13" ] || { echo "build-cuda.sh: the wheels did not contain nvidia/cu13 (unexpected wheel layout)" >&2; exit 2; }
  rm -rf "$CUDA_PREFIX"; mkdir -p "$(dirname "$CUDA_PREFIX")"
  mv "$tmp/nvidia/cu13" "$CUDA_PREFIX"; rm -rf "$tmp"
  (
    cd "$CUDA_PREFIX"
    chmod +x bin/* nvvm/bin/*
    ln -sfn lib lib64
    # nvcc.profile looks for headers and libraries under $(TOP)/targets/x86_64-linux.
    mkdir -p targets/x86_64-linux
    ln -sfn ../../include targets/x86_64-linux/include
    ln -sfn ../../lib targets/x86_64-linux/lib
    ln -sfn ../../lib targets/x86_64-linux/lib64
    cd lib
    for l in cublas cublasLt cudart nvrtc; do ln -sfn "lib$l.so.13" "lib$l.so"; done
    ln -sfn libcurand.so.10 libcurand.so
  )
  # Link-time stub of the driver library: every cu* symbol cudarc declares, SONAME libcuda.so.1, so the
  # binary records a dependency on the real driver library without this machine having one.
  mkdir -p "$CUDA_PREFIX/lib/stubs"
  {
    echo '/* link-time stub of libcuda.so.1; never ship it or put it on LD_LIBRARY_PATH */'
    grep -A1 'extern "C" {' "$sys" | grep -oP '^\s*fn \K\w+' | sort -u | sed 's/.*/int &(void){return 999;}/'
  } > "$CUDA_PREFIX/lib/stubs/cuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CUDA_PREFIX/lib/stubs/libcuda.so" "$CUDA_PREFIX/lib/stubs/cuda_stub.c"
  echo "$STAMP_TEXT" > "$CUDA_PREFIX/.ccsrp-stamp"
}

# cuDNN headers and library under $CUDA_PREFIX/cudnn (include/, lib/libcudnn.so.9 + libcudnn.so).
cudnn_ready() {
  [ -f "$CUDA_PREFIX/cudnn/include/cudnn_version.h" ] && [ -f "$CUDA_PREFIX/cudnn/lib/libcudnn.so.9" ] \
    && [ "$(cat "$CUDA_PREFIX/cudnn/.ccsrp-stamp" 2>/dev/null)" = "$CUDNN_WHEEL" ]
}

assemble_cudnn() {
  local tmp whl
  mkdir -p "$WHEELDIR"
  step "downloading cuDNN ($CUDNN_WHEEL) into $WHEELDIR"
  pip_download "$CUDNN_WHEEL"
  whl="$(wheel_file "$CUDNN_WHEEL")"
  [ -n "$whl" ] || { echo "build-cuda.sh: wheel for $CUDNN_WHEEL missing in $WHEELDIR after download" >&2; exit 2; }
  tmp="$(mktemp -d)"
  unzip -q -o "$whl" 'nvidia/cudnn/*' -d "$tmp"
  [ -f "$tmp/nvidia/cudnn/lib/libcudnn.so.9" ] || { echo "build-cuda.sh: $whl has no nvidia/cudnn/lib/libcudnn.so.9 (unexpected wheel layout)" >&2; exit 2; }
  rm -rf "$CUDA_PREFIX/cudnn"
  mkdir -p "$CUDA_PREFIX/cudnn/lib" "$CUDA_PREFIX/cudnn/include"
  cp "$tmp"/nvidia/cudnn/include/*.h "$CUDA_PREFIX/cudnn/include/"
  # libcudnn.so.9 is the dispatcher the binary links; it loads the engine libraries
  # (libcudnn_{graph,ops,cnn,engines_*,heuristic,adv}.so.9) at run time: keep them beside it.
  cp -P "$tmp"/nvidia/cudnn/lib/libcudnn*.so.9 "$CUDA_PREFIX/cudnn/lib/"
  ln -sfn libcudnn.so.9 "$CUDA_PREFIX/cudnn/lib/libcudnn.so"
  rm -rf "$tmp"
  echo "$CUDNN_WHEEL" > "$CUDA_PREFIX/cudnn/.ccsrp-stamp"
}

step "cargo fetch (cudarc's sources)"
cargo fetch

if toolkit_ready; then
  step "CUDA toolkit already assembled at $CUDA_PREFIX"
else
  assemble_toolkit
fi
"$CUDA_PREFIX/bin/nvcc" --version | tail -n2
if [ "$WITH_CUDNN" = 1 ]; then
  if cudnn_ready; then
    step "cuDNN already at $CUDA_PREFIX/cudnn"
  else
    assemble_cudnn
  fi
  grep -E '^#define CUDNN_(MAJOR|MINOR|PATCHLEVEL) ' "$CUDA_PREFIX/cudnn/include/cudnn_version.h" | awk '{printf "%s=%s ", $2, $3} END {print ""}'
fi
[ "$TOOLKIT_ONLY" = 1 ] && { echo "CUDA toolkit ready at $CUDA_PREFIX"; exit 0; }

export CUDA_HOME="$CUDA_PREFIX" CUDA_PATH="$CUDA_PREFIX" PATH="$CUDA_PREFIX/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
# cudarc picks its bindings by this version; 13000 = CUDA 13.0, the version of the wheels above.
export CUDARC_CUDA_VERSION=13000
# Compressed fatbins: a 22 MB binary instead of 48 MB. (cargo clean -p candle-kernels after changing it.)
export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:---compress-mode=size}"
# Dynamic glibc: overrides target.x86_64-unknown-linux-gnu.rustflags (+crt-static) in .cargo/config.toml.
export RUSTFLAGS="-C target-feature=-crt-static"
FEATURES=cuda
if [ "$WITH_CUDNN" = 1 ]; then
  FEATURES=cuda,cudnn
  # cudarc's build script links libcudnn from $CUDNN_LIB/lib and reads its version header through
  # CUDNN_PATH/include.
  export CUDNN_LIB="$CUDA_PREFIX/cudnn" CUDNN_PATH="$CUDA_PREFIX/cudnn"
fi

step "cargo build --release --features '$FEATURES' (target dir $CARGO_TARGET_DIR; from clean: 6+ minutes on 2 idle cores)"
start=$(date +%s)
cargo build --release --target "$TARGET_TRIPLE" --features "$FEATURES" --bin ccsrp
cargo build --release --target "$TARGET_TRIPLE" -p ccsrp-worker --features "$FEATURES" --example gpu_check
end=$(date +%s)

OUT_DIR="$CARGO_TARGET_DIR/$TARGET_TRIPLE/release"
# The shippable copies: without debug info (the release profile's line tables make the binary ~130 MB).
DIST="$CARGO_TARGET_DIR/dist"
mkdir -p "$DIST"
objcopy --strip-debug "$OUT_DIR/ccsrp" "$DIST/ccsrp"
objcopy --strip-debug "$OUT_DIR/examples/gpu_check" "$DIST/gpu_check"
step "built in $((end - start)) s"
for bin in "$DIST/ccsrp" "$DIST/gpu_check"; do
  echo "binary: $bin ($(du -h "$bin" | cut -f1))"
  echo "shared libraries it needs at run time (readelf NEEDED):"
  readelf -d "$bin" | sed -n 's/.*Shared library: \[\(.*\)\]/  \1/p'
done
cat <<EOF

At run time: libcuda.so.1 comes from the NVIDIA driver (CUDA 13.0 or newer: driver 580+); libcublas.so.13
(with its libcublasLt.so.13), libcurand.so.10 and libcudart.so.13 from a CUDA 13 install or pip's
nvidia-* packages; with cuDNN (features $FEATURES): libcudnn.so.9 and the engine libraries it loads
(libcudnn_graph, _ops, _cnn, _engines_precompiled, _engines_runtime_compiled, _heuristic .so.9) from
cuDNN 9 for CUDA 13 (pip's nvidia-cudnn-cu13, or $CUDA_PREFIX/cudnn/lib). Point LD_LIBRARY_PATH at
them if they are not on the default path.
Never put $CUDA_PREFIX/lib/stubs on LD_LIBRARY_PATH. See docs/gpu.md.
EOF
