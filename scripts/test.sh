#!/usr/bin/env bash
# The whole test suite (the README's test command). Every server a test needs
# is started by the test itself, on loopback, with a generated PKI.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --locked

# Another language and a generic tool against a real mesh; both reuse the
# binaries cargo test just built and install their tools into target/.
bash clients/python/run-tests.sh
bash scripts/grpcurl-check.sh

# Kubernetes manifests: rendered and validated offline (tools go to target/).
bash scripts/check-deploy.sh
