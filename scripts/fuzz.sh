#!/usr/bin/env bash
# Bounded fuzzing of every decoder of untrusted bytes (the crate in fuzz/).
# Not part of CI: CI runs the same checks as seeded loops only if asked
# (`cd fuzz && cargo test`).
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# 1. Runs fuzz/'s `cargo test`: every saved regression input, the seeds and
#    a few thousand seeded mutations per target (works on any toolchain).
# 2. Installs cargo-fuzz into target/tools (from crates.io, once).
# 3. Runs libFuzzer with AddressSanitizer on each target for
#    SECONDS_PER_TARGET (default 30). cargo fuzz passes nightly-only flags
#    (-Zsanitizer=address); on a machine with only the stable toolchain,
#    RUSTC_BOOTSTRAP=1 lets stable rustc accept them (its rust-std ships the
#    ASan runtime). A nightly toolchain is used instead when one is installed
#    (SESPHR_FUZZ_TOOLCHAIN=stable forces the stable path).
# A crash is copied to fuzz/regressions/<target>/, where step 1 replays it
# from then on, and the script exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
secs="${1:-30}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(capsule kfrag cfrag record_header record_stream fhir_bundle)
fi

echo "== seeded loops (cargo test in fuzz/)"
(cd fuzz && cargo test --release --quiet)

tools="$root/target/tools"
if ! [ -x "$tools/bin/cargo-fuzz" ]; then
  echo "== installing cargo-fuzz into $tools"
  cargo install --locked --quiet cargo-fuzz --root "$tools"
fi
export PATH="$tools/bin:$PATH"

toolchain=()
if [ "${SESPHR_FUZZ_TOOLCHAIN:-}" != stable ] && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
  echo "== using the nightly toolchain"
else
  export RUSTC_BOOTSTRAP=1
  echo "== using stable rustc with RUSTC_BOOTSTRAP=1"
fi

(cd fuzz && cargo run --release --quiet --example seeds -- corpus)

crashed=()
for t in "${targets[@]}"; do
  echo "== fuzzing $t for ${secs}s"
  mkdir -p "fuzz/corpus/$t"
  if ! cargo "${toolchain[@]}" fuzz run --sanitizer address "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1; then
    crashed+=("$t")
    mkdir -p "fuzz/regressions/$t"
    for f in fuzz/artifacts/"$t"/*; do
      [ -f "$f" ] && cp "$f" "fuzz/regressions/$t/"
    done
  fi
done

if [ ${#crashed[@]} -gt 0 ]; then
  echo "crashes in: ${crashed[*]} (inputs saved under fuzz/regressions/)" >&2
  exit 1
fi
echo "no crashes in: ${targets[*]}"
