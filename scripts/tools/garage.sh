#!/usr/bin/env bash
# Prints the path of a Garage binary (the S3-compatible store the scale test
# and the S3 backend's tests run on loopback), building it once into a cache
# directory shared by every clone on this machine. A build takes about
# 7.5 minutes on 2 cores; later calls return at once.
#
#   SESPHR_TOOLS_CACHE   where built tools are kept (default ~/.cache/sesphr-tools)
set -euo pipefail

version=2.5.0
cache=${SESPHR_TOOLS_CACHE:-$HOME/.cache/sesphr-tools}
root="$cache/garage-$version"
bin="$root/bin/garage"

if [[ -x "$bin" ]]; then
    echo "$bin"
    exit 0
fi

mkdir -p "$cache"
# One builder at a time: a second caller waits for the first one's binary.
exec 9>"$cache/garage.lock"
flock 9
if [[ ! -x "$bin" ]]; then
    echo "garage: building $version into $root (once per machine)" >&2
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    # Only what a loopback cluster uses: the sqlite metadata engine, bundled
    # so no system library is needed. --locked builds the versions Garage
    # itself tested.
    CARGO_TARGET_DIR="$build" cargo install garage --version "$version" --locked \
        --no-default-features --features bundled-libs,sqlite \
        --root "$build/root" >&2
    mkdir -p "$root/bin"
    mv "$build/root/bin/garage" "$bin.tmp"
    mv "$bin.tmp" "$bin"
fi
echo "$bin"
