#!/usr/bin/env bash
# The mesh benchmark (docs/BENCHMARKS.md, section "Mesh"): builds sesphrd and
# sesphr-bench in release mode, then sesphr-bench spawns `sesphrd dev` on free
# loopback ports and drives it over mTLS. Takes about three minutes; prints
# the machine, then a Markdown table. Extra arguments go to
# `sesphr-bench run` (see `sesphr-bench run --help`), e.g.
#   bash scripts/bench.sh --seconds 5 --only reencrypt,updown
#   bash scripts/bench.sh --seconds 10 --only reencrypt,check,concurrent-read
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet --bin sesphrd --bin sesphr-bench
echo "date: $(date -u +%Y-%m-%d)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores"
echo "rustc: $(rustc --version)"
echo
exec "$target/release/sesphr-bench" run \
  --sesphrd "$target/release/sesphrd" \
  --work-dir "$target/bench-work" "$@"
