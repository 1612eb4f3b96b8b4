#!/usr/bin/env bash
# Spiking VGG throughput, ccsrp (candle, release build) vs the same network in PyTorch, in one run on
# this machine: forward images/s on IMAGES random 3x32x32 images and PGD-7 images/s on PGD_IMAGES.
# Usage: bench/run.sh [IMAGES] [PGD_IMAGES]   (defaults 1000 1000; set ARCH, T, BATCH to change the net)
# PyTorch comes from bench/peer/.venv (python3 -m venv bench/peer/.venv && bench/peer/.venv/bin/pip install torch).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGES=${1:-1000}
PGD_IMAGES=${2:-1000}
ARCH=${ARCH:-small}
T=${T:-4}
BATCH=${BATCH:-100}
THREADS=${THREADS:-$(nproc)}
PY=${PYTHON:-bench/peer/.venv/bin/python}

cargo build --release -p ccsrp-worker --example bench_snn >&2
RUST_BIN=$(find target -path '*release/examples/bench_snn' -type f | head -n 1)
ours=$(RAYON_NUM_THREADS=$THREADS "$RUST_BIN" "$ARCH" "$T" "$IMAGES" "$PGD_IMAGES" "$BATCH")
torch_arch=$ARCH
[ "$ARCH" = small ] && torch_arch=32,M,64,M,128,M
[ "$ARCH" = vgg11 ] && torch_arch=64,M,128,M,256,256,M,512,512,M,512,512,M
peer=$("$PY" bench/peer/snn_peer.py --arch "$torch_arch" --timesteps "$T" --images "$IMAGES" \
    --pgd-images "$PGD_IMAGES" --batch "$BATCH" --threads "$THREADS")
echo "ccsrp:   $ours"
echo "pytorch: $peer"
python3 - "$ours" "$peer" <<'PYEOF'
import json, sys
ours, peer = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for key, name in [("forward_images_per_s", "forward"), ("pgd7_images_per_s", "PGD-7")]:
    print(f"{name:8s} ccsrp {ours[key]:9.1f} img/s   pytorch {peer[key]:9.1f} img/s   ratio ccsrp/pytorch {ours[key] / peer[key]:.2f}")
PYEOF
