#!/usr/bin/env bash
# The Python client's suite: the crypto against tests/vectors/, then
# interoperability with the Rust CLI on a real `sesphrd dev` mesh (started and
# stopped by the pytest fixture in tests/conftest.py, on loopback).
#
#   clients/python/run-tests.sh [pytest args...]
#
# Creates or reuses the virtualenv target/py-venv, installs the pinned
# requirements, regenerates the gRPC stubs from proto/, builds the Rust
# binaries if they are missing, runs pytest, and fails if no test ran.
# SESPHR_BIN_DIR=DIR tests the sesphrd and sesphr in DIR instead of
# target/debug (e.g. a copy that a rebuild cannot change mid-run).
set -euo pipefail

CLIENT="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$CLIENT/../.." && pwd)"
VENV="$ROOT/target/py-venv"
BIN="${SESPHR_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/debug}"
PYTEST_TIMEOUT="${PYTEST_TIMEOUT:-1200}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    python3 -m venv "$VENV"
fi
stamp="$VENV/.sesphr-requirements.sha256"
want="$(sha256sum "$CLIENT/requirements.txt" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "== installing clients/python/requirements.txt"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet -r "$CLIENT/requirements.txt"
    echo "$want" >"$stamp"
fi

echo "== generating gRPC stubs from proto/"
"$VENV/bin/python" "$CLIENT/gen_stubs.py"

if [ ! -x "$BIN/sesphrd" ] || [ ! -x "$BIN/sesphr" ]; then
    if [ -n "${SESPHR_BIN_DIR:-}" ]; then
        echo "SESPHR_BIN_DIR=$SESPHR_BIN_DIR holds no sesphrd and sesphr" >&2
        exit 1
    fi
    echo "== building sesphrd and sesphr"
    (cd "$ROOT" && cargo build --locked --bin sesphrd --bin sesphr)
fi

# The fixtures write each mesh's pid here, one a line; the trap stops the
# meshes even if pytest itself is killed before its teardown runs.
work="$(mktemp -d "${TMPDIR:-/tmp}/sesphr-pytest.XXXXXX")"
cleanup() {
    if [ -s "$work/sesphrd.pid" ]; then
        while read -r pid; do
            [ -n "$pid" ] || continue
            if kill -0 "$pid" 2>/dev/null; then
                kill -TERM "$pid" 2>/dev/null || true
                for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                kill -KILL "$pid" 2>/dev/null || true
            fi
        done <"$work/sesphrd.pid"
    fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "== pytest"
cd "$CLIENT"
set +e
SESPHR_BIN_DIR="$BIN" SESPHR_TEST_PIDFILE="$work/sesphrd.pid" \
    timeout --kill-after=30 "$PYTEST_TIMEOUT" \
    "$VENV/bin/python" -m pytest -p no:cacheprovider --junitxml="$work/junit.xml" "$@" tests
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
    # 5 = no tests collected: a failure too.
    echo "pytest failed (exit $rc)" >&2
    exit "$rc"
fi
ran="$("$VENV/bin/python" - "$work/junit.xml" <<'PY'
import sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
print(sum(int(s.get("tests", 0)) - int(s.get("skipped", 0)) for s in suites))
PY
)"
if [ "$ran" -le 0 ]; then
    echo "pytest ran no test" >&2
    exit 1
fi
echo "== python client: $ran tests ran"
