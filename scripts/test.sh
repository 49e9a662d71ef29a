#!/usr/bin/env bash
# The whole test suite (the README's test command). Every server a test needs
# is started by the test itself, on loopback, with a generated PKI.
set -euo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# The storage servers the PostgreSQL and S3 backends are tested on:
# PostgreSQL from Debian's packages, Garage built once per machine into
# ~/.cache/sesphr-tools (both idempotent; tests start them on loopback).
bash scripts/tools/postgres.sh 2>&1 | tee -a "$log"
SESPHR_GARAGE_BIN=$(bash scripts/tools/garage.sh)
export SESPHR_GARAGE_BIN

# The integration tests run the `sesphr` and `sesphrd` binaries, which live
# in other crates than the tests: build every binary first.
cargo build --workspace --bins --locked 2>&1 | tee -a "$log"
cargo test --workspace --locked 2>&1 | tee -a "$log"

# Another language and a generic tool against a real mesh; both reuse the
# binaries cargo test just built and install their tools into target/.
bash clients/python/run-tests.sh 2>&1 | tee -a "$log"
bash scripts/grpcurl-check.sh 2>&1 | tee -a "$log"

# Kubernetes manifests: rendered and validated offline (tools go to target/).
bash scripts/check-deploy.sh
# The image, built offline, running the prod overlay's mesh (podman, as root).
bash scripts/image-test.sh 2>&1 | tee -a "$log"
# Two CloudStorage and two AccessPolicy replicas on PostgreSQL and a 3-node
# Garage cluster, through replica and node failures.
bash scripts/scale-test.sh 2>&1 | tee -a "$log"

# One closing line for the whole suite (any failure above already stopped
# the script with a non-zero exit).
cargo_passed=$(grep -Eo '^test result: ok\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
python_passed=$(grep -Eo '^== python client: [0-9]+ tests ran' "$log" | awk '{print $4}' | tail -1)
grpcurl_passed=$(grep -Eo '^grpcurl-check: [0-9]+ passed' "$log" | awk '{print $2}' | tail -1)
image_passed=$(grep -Eo '^image-test: [0-9]+ passed' "$log" | awk '{print $2}' | tail -1)
scale_passed=$(grep -Eo '^scale-test: [0-9]+ passed' "$log" | awk '{print $2}' | tail -1)
echo "rust ${cargo_passed}, python ${python_passed:-0}, grpcurl ${grpcurl_passed:-0}, image-test ${image_passed:-0}, scale-test ${scale_passed:-0}"
echo "summary: $((cargo_passed + ${python_passed:-0} + ${grpcurl_passed:-0} + ${image_passed:-0} + ${scale_passed:-0})) passed, 0 failed"
