#!/usr/bin/env bash
# Spiking VGG on the CPU, ccsrp (candle + its event-driven kernels, release build) vs the same network
# in spikingjelly 2.0 and in PyTorch eager, in one run on this machine, on the same images and thread
# count: clean forward images/s, one candidate's scoring (a middle-layer mask on a clean and an
# adversarial shard of IMAGES images each), PGD-7 images/s on PGD_IMAGES, one training epoch
# images/s; once per conv weight scale in SCALES (1: the random init; 2.5: spike rates like a
# trained network's; ccsrp prints its spike rates).
# Usage: bench/run.sh [IMAGES] [PGD_IMAGES]   (defaults 1000 1000; ARCH, T, BATCH, THREADS, SCALES
# change the setting). The peers come from bench/peer/.venv:
#   python3 -m venv bench/peer/.venv && bench/peer/.venv/bin/pip install torch spikingjelly
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGES=${1:-1000}
PGD_IMAGES=${2:-1000}
ARCH=${ARCH:-small}
T=${T:-4}
BATCH=${BATCH:-100}
THREADS=${THREADS:-$(nproc)}
SCALES=${SCALES:-1 2.5}
PY=${PYTHON:-bench/peer/.venv/bin/python}

cargo build --release -p ccsrp-worker --example bench_snn >&2
RUST_BIN=$(find "${CARGO_TARGET_DIR:-target}" -path '*release/examples/bench_snn' -type f | head -n 1)
torch_arch=$ARCH
[ "$ARCH" = small ] && torch_arch=32,M,64,M,128,M
[ "$ARCH" = vgg11 ] && torch_arch=64,M,128,M,256,256,M,512,512,M,512,512,M
# Idle torch threads sleep instead of spinning: on a shared machine spinning starves everyone.
export OMP_WAIT_POLICY=PASSIVE
for scale in $SCALES; do
    ours=$(RAYON_NUM_THREADS=$THREADS "$RUST_BIN" "$ARCH" "$T" "$IMAGES" "$PGD_IMAGES" "$BATCH" "$scale")
    peers=()
    for impl in spikingjelly pytorch; do
        peers+=("$("$PY" bench/peer/snn_peer.py --impl "$impl" --arch "$torch_arch" --timesteps "$T" \
            --images "$IMAGES" --pgd-images "$PGD_IMAGES" --batch "$BATCH" --threads "$THREADS" \
            --weight-scale "$scale")")
    done
    echo "ccsrp:        $ours"
    echo "spikingjelly: ${peers[0]}"
    echo "pytorch:      ${peers[1]}"
    python3 - "$ours" "${peers[0]}" "${peers[1]}" <<'PYEOF'
import json, sys
ours, sj, pt = (json.loads(a) for a in sys.argv[1:])
print(f"weight scale {ours['weight_scale']}, {ours['arch']}, T={ours['timesteps']}, "
      f"{ours['images']} images, spike rates (ccsrp) {ours['spike_rates']}")
print(f"{'':22s} {'ccsrp':>9s} {'spikingjelly':>13s} {'pytorch':>9s} {'x sj':>6s} {'x faster peer':>14s}")
rows = [("forward img/s", "forward_images_per_s", True),
        ("candidate s (2 shards)", "candidate_s", False),
        ("PGD-7 img/s", "pgd7_images_per_s", True),
        ("train epoch img/s", "train_images_per_s", True)]
for name, key, higher in rows:
    a, b, c = ours[key], sj[key], pt[key]
    if higher:
        r_sj, r_best = a / b, a / max(b, c)
    else:
        r_sj, r_best = b / a, min(b, c) / a
    print(f"{name:22s} {a:9.2f} {b:13.2f} {c:9.2f} {r_sj:6.2f} {r_best:14.2f}")
print(f"(ccsrp's prefix cache for both shards, built once per generation: {ours['prefix_cache_s']:.2f} s)")
PYEOF
done
