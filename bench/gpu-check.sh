#!/usr/bin/env bash
# The GPU check, in one run, printed as markdown tables: the new GPU kernels against the CPU (fused
# LIF forward/backward against their CPU twin, the conv value and gradients against candle's CPU
# conv2d); correctness (the same VGG-11 and shard on the CPU and on the GPU: logits, clean and
# adversarial counts, differing predictions, input gradient); timings (VGG-11, T=8, 1,000 CIFAR-size
# images: clean forward, PGD-7, one candidate whole and through the prefix cache, one training step)
# beside the H200 reference numbers and issue 14's targets. Unattended; under 5 minutes on an H200.
#
#   scripts/build-cuda.sh                  # builds the check program (worker example gpu_check)
#   bench/gpu-check.sh                     # on the GPU machine
#   bench/gpu-check.sh --device cpu --images 64 --reference-images 32   # the same program on a CPU
#
# Arguments are passed to the check program (`bench/gpu-check.sh --help` lists them).
# Environment (optional):
#   GPU_CHECK_BIN      the check program (default: target/cuda/dist/gpu_check, from scripts/build-cuda.sh)
#   GPU_CHECK_OUT      also write the report to this file (default: target/gpu-check/report-<time>.md)
#   GPU_CHECK_TIMEOUT  seconds before the run is stopped (default 290)
#   CUDA_LIB_DIRS      colon-separated directories holding the CUDA 13 libraries (skips the search)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${GPU_CHECK_BIN:-$ROOT/target/cuda/dist/gpu_check}"
OUT_FILE="${GPU_CHECK_OUT:-$ROOT/target/gpu-check/report-$(date -u +%Y%m%dT%H%M%SZ).md}"
TIMEOUT="${GPU_CHECK_TIMEOUT:-290}"

if [ ! -x "$BIN" ]; then
  echo "gpu-check.sh: check program not found at $BIN: build it with scripts/build-cuda.sh (or set GPU_CHECK_BIN)" >&2
  exit 2
fi

# The shared libraries the binary records (empty for a static CPU build).
needed="$(readelf -d "$BIN" 2>/dev/null | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p')"

# Directories holding the CUDA 13 user-space libraries the binary needs, other than the driver's
# libcuda.so.1: the dynamic linker's cache, CUDA installs, then pip's nvidia-* packages in any Python
# environment on the machine. Never a stubs/ directory: a stub libcuda.so would hide the driver.
find_cuda_lib_dirs() {
  local roots=() lib f d dirs=""
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64; do
    [ -d "$d" ] && roots+=("$d")
  done
  if command -v python3 >/dev/null 2>&1; then
    while IFS= read -r d; do [ -n "$d" ] && roots+=("$d"); done < <(python3 - <<'PY' 2>/dev/null
import os, site, sys
seen = []
paths = []
try:
    paths += site.getsitepackages()
except Exception:
    pass
try:
    paths.append(site.getusersitepackages())
except Exception:
    pass
paths += sys.path
for p in paths:
    c = os.path.join(p, "nvidia")
    if p and os.path.isdir(c) and c not in seen:
        seen.append(c)
print("\n".join(seen))
PY
    )
  fi
  for lib in $needed; do
    case "$lib" in libcuda.so.*|libc.so.*|libm.so.*|libgcc_s.so.*|libstdc++.so.*|ld-linux*|libdl.so.*|libpthread.so.*|librt.so.*) continue ;; esac
    ldconfig -p 2>/dev/null | grep -q " $lib " && continue
    f=""
    for r in "${roots[@]}"; do
      f="$(find "$r" -maxdepth 4 -name "$lib" -not -path '*/stubs/*' 2>/dev/null | head -n1)"
      [ -n "$f" ] && break
    done
    if [ -n "$f" ]; then
      d="$(dirname "$f")"
      case ":$dirs:" in *":$d:"*) ;; *) dirs="${dirs:+$dirs:}$d" ;; esac
    fi
  done
  echo "$dirs"
}

if [ -n "$needed" ]; then
  dirs="${CUDA_LIB_DIRS:-$(find_cuda_lib_dirs)}"
  [ -n "$dirs" ] && export LD_LIBRARY_PATH="${dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" >&2
  missing="$(ldd "$BIN" 2>/dev/null | sed -n 's/^\s*\(\S*\) => not found/\1/p')"
  if [ -n "$missing" ]; then
    echo "gpu-check.sh: $BIN needs shared libraries that were not found: $(echo $missing)" >&2
    echo "  libcuda.so.1 comes with the NVIDIA driver; the others with CUDA 13 (or pip's nvidia-* packages):" >&2
    echo "  set CUDA_LIB_DIRS to the directories holding them (docs/gpu.md)." >&2
    exit 2
  fi
  ldd "$BIN" | grep -E 'cuda|cublas|curand|nvrtc|cudnn' >&2
  # libcudnn.so.9 loads its engine libraries (libcudnn_cnn.so.9, ...) by name at run time: they must
  # sit beside it or on LD_LIBRARY_PATH too.
fi

mkdir -p "$(dirname "$OUT_FILE")"
{
  echo "# ccsrp GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>/dev/null | head -n1)"
  else
    echo "GPU: nvidia-smi not found"
  fi
  echo "CPU: $(nproc) cores, $(sed -n 's/^model name\s*:\s*//p' /proc/cpuinfo | head -n1)"
  echo "binary: $BIN"
  echo
} | tee "$OUT_FILE"

timeout --signal=TERM --kill-after=10 "$TIMEOUT" "$BIN" "$@" | tee -a "$OUT_FILE"
rc=${PIPESTATUS[0]}
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  echo "gpu-check.sh: stopped after $TIMEOUT s (GPU_CHECK_TIMEOUT); the tables above are partial" | tee -a "$OUT_FILE" >&2
fi
echo "report: $OUT_FILE" >&2
exit "$rc"
