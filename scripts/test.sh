#!/usr/bin/env bash
# The whole test suite (the README's test command). Every server a test needs
# is started by the test itself, on loopback, with a generated PKI.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --locked

# Kubernetes manifests: rendered and validated offline (tools go to target/).
bash scripts/check-deploy.sh
