#!/usr/bin/env bash
# One pruning experiment end to end, with the tool's own commands:
#
#   experiments/run.sh NAME [STEP...]        NAME: an experiments/NAME.env (fashion-mnist, cifar10, fashion-mnist-resnet, ...)
#
# Steps (all by default, in this order; a step whose output exists is skipped, so a run resumes):
#   dense      ccsrp train: the dense SNN, adversarially trained (FGSM in half of each batch), on
#              the job's training split (same seed and hold-outs as the job: it never sees the
#              eval or validation images)
#   ccsrp      ccsrp run: the CCSRP job (NAME.toml) on that dense model
#   baselines  ccsrp prune: the dense control (--keep-ratio 1.0), L1 and random at the CCSRP
#              network's MACs (--match) and at 50 % and 70 % of the dense MACs removed, each with
#              the job's fine-tuning recipe and the epochs the CCSRP answer received (BASELINES in
#              NAME.env, space-separated, limits them: e.g. "control l1-match random-match")
#   strong     ccsrp eval --strong $STRONG_FLAGS on the same test images for every network
#              (transfer from dense)
#   table      experiments/table.py: results.md and results.json
#
# Work files go to ${CCSRP_EXPERIMENTS_DIR:-target/experiments}/NAME; every command and its wall
# time is appended to commands.log there. Threads: RAYON_NUM_THREADS (default: all cores).
set -euo pipefail
cd "$(dirname "$0")/.."

name=${1:?usage: experiments/run.sh fashion-mnist|cifar10|fashion-mnist-resnet|... [dense ccsrp baselines strong table]}
shift
[ -f "experiments/$name.env" ] || { echo "no experiments/$name.env" >&2; exit 2; }
# shellcheck source=/dev/null
source "experiments/$name.env"
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(dense ccsrp baselines strong table)

bin=${CCSRP_BIN:-target/x86_64-unknown-linux-gnu/release/ccsrp}
[ -x "$bin" ] || cargo build --release
work=${CCSRP_EXPERIMENTS_DIR:-target/experiments}/$name
mkdir -p "$work"
log=$work/commands.log

if [ "$DATASET" = folder ] && [ ! -d "$DATA_DIR/test" ]; then
  mkdir -p "$DATA_DIR"
  tar xzf ../shared/data/cifar10/train.tgz -C "$DATA_DIR"
  tar xzf ../shared/data/cifar10/test.tgz -C "$DATA_DIR"
fi
data_flags=(--dataset "$DATASET")
[ -z "$DATA_DIR" ] || data_flags+=(--data-dir "$DATA_DIR")

# Runs a command, logging it and its wall time.
timed() {
  local start end
  start=$(date +%s)
  echo "\$ $*" | tee -a "$log" >&2
  "$@"
  end=$(date +%s)
  echo "# $((end - start)) s" | tee -a "$log" >&2
}

# The job's seed and hold-outs, read from the job file (the dense model must share them).
job_value() { python3 -c "import tomllib,sys; print(tomllib.load(open('experiments/$name.toml','rb'))$1)"; }
seed=$(job_value "['job']['seed']")
eval_size=$(job_value "['data']['eval_size']")
val_size=$(job_value "['data']['val_size']")
test_limit=$(job_value "['data']['test_limit']")

for step in "${steps[@]}"; do
  case $step in
  dense)
    [ -f "$work/dense.safetensors" ] && continue
    limit=()
    [ -z "$DENSE_TRAIN_LIMIT" ] || limit=(--train-limit "$DENSE_TRAIN_LIMIT")
    timed "$bin" train "${data_flags[@]}" --arch "$ARCH" --timesteps "$TIMESTEPS" \
      --epochs "$DENSE_EPOCHS" --adv fgsm --eps "$EPS" --adv-fraction 0.5 "${limit[@]}" \
      --seed "$seed" --eval-size "$eval_size" --val-size "$val_size" --test-limit "$test_limit" \
      --out "$work/dense.safetensors.part" --json > "$work/dense.json"
    mv "$work/dense.safetensors.part" "$work/dense.safetensors"
    ;;
  ccsrp)
    [ -f "$work/ccsrp/summary.json" ] && continue
    sed "s|@DATA_DIR@|$(realpath "${DATA_DIR:-.}")|" "experiments/$name.toml" > "$work/job.toml"
    timed "$bin" run --config "$work/job.toml" --workers 1 --out "$work/ccsrp" \
      --cache-dir "$work/cache"
    ;;
  baselines)
    summary=$work/ccsrp/summary.json
    dense_macs=$(python3 -c "import json; print(json.load(open('$summary'))['dense']['macs'])")
    prune() {
      local out=$1
      shift
      [ -f "$work/$out/summary.json" ] && return 0
      if [ -n "${BASELINES:-}" ] && [[ " $BASELINES " != *" $out "* ]]; then
        return 0
      fi
      timed "$bin" prune --model "$work/dense.safetensors" --budget-from "$summary" "$@" \
        --out "$work/$out"
    }
    prune control --method l1 --keep-ratio 1.0
    for method in l1 random; do
      prune "$method-match" --method "$method" --match "$summary"
      prune "$method-50" --method "$method" --macs $((dense_macs / 2))
      prune "$method-70" --method "$method" --macs $((dense_macs * 3 / 10))
    done
    ;;
  strong)
    # STRONG_NETWORKS (space-separated: dense ccsrp control l1-match ...) limits the networks.
    for dir in "$work"/{ccsrp,control,l1-match,random-match,l1-50,random-50,l1-70,random-70} dense; do
      if [ -n "${STRONG_NETWORKS:-}" ] && [[ " $STRONG_NETWORKS " != *" $(basename "$dir") "* ]]; then
        continue
      fi
      if [ "$dir" = dense ]; then
        model=$work/dense.safetensors
        out=$work/strong-dense.json
      else
        model=$dir/model.safetensors
        out=$work/strong-$(basename "$dir").json
      fi
      [ -f "$model" ] && [ ! -f "$out" ] || continue
      # shellcheck disable=SC2086
      timed "$bin" eval --model "$model" "${data_flags[@]}" --strong --eps "$EPS" $STRONG_FLAGS \
        --source "$work/dense.safetensors" --seed "$seed" --limit "$test_limit" --json > "$out.part"
      mv "$out.part" "$out"
    done
    ;;
  table)
    python3 experiments/table.py "$work" --name "$name"
    ;;
  *)
    echo "unknown step $step: expected dense, ccsrp, baselines, strong or table" >&2
    exit 2
    ;;
  esac
done
