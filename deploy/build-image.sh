#!/usr/bin/env bash
# Build the ccsrp runtime image from a binary built on this machine, with no base image to pull:
#   deploy/build-image.sh [TAG]          (default tag: ccsrp:latest)
# Builds `cargo build --release` (statically linked by .cargo/config.toml), puts the binary and an
# empty directory into a temporary build context and builds deploy/Dockerfile.scratch from it.
set -euo pipefail
tag="${1:-ccsrp:latest}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cargo build --release --bin ccsrp
bin="$root/target/x86_64-unknown-linux-gnu/release/ccsrp"
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp "$bin" "$context/ccsrp"
mkdir "$context/empty"
docker build -f "$root/deploy/Dockerfile.scratch" -t "$tag" "$context"
echo "built $tag"
