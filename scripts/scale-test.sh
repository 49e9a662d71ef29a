#!/usr/bin/env bash
# The mesh scaled out over shared storage, on loopback:
#
#   1. Installs PostgreSQL from Debian's packages if missing and builds Garage
#      (an S3-compatible store) once into ~/.cache/sesphr-tools
#      (scripts/tools/); starts PostgreSQL and a 3-node Garage cluster
#      (replication factor 3) with `sesphr-testkit up`.
#   2. Writes a dev mesh's PKI and serve files (`sesphrd dev --configure-only`)
#      and runs every service as its own `sesphrd serve`: two CloudStorage
#      replicas (metadata in PostgreSQL, ciphertext in Garage, each talking to
#      another Garage node), two AccessPolicy replicas (grants and the audit
#      log in PostgreSQL), the setup service on PostgreSQL, and the three
#      re-encryption nodes on their own sled directories.
#   3. Runs the CLI session through both replicas: enrolment, uploads and a
#      FHIR import through replica a, the grant checked and the records read
#      through replica b, the audit trail verified (one log, written by both
#      AccessPolicy replicas, cosigned by the witnesses).
#   4. Kills CloudStorage replica a (SIGKILL) in the middle of a burst of
#      uploads: every acknowledged record reads back byte for byte through
#      replica b, and every record b lists is whole.
#   5. Kills one Garage node: uploads and reads through replica b go on.
#
# Ends with "scale-test: N passed, 0 failed"; exits non-zero on any failure.
# Everything runs under one temporary directory, removed on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BIN="${SESPHR_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/debug}"
START_TIMEOUT=60 # seconds, per service
CMD_TIMEOUT=120  # seconds, per sesphr command
BURST=12         # uploads in the replica-kill burst

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $*"; }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }
die() { echo "scale-test: $*" >&2; echo "scale-test: $passed passed, $((failed + 1)) failed"; exit 1; }
step() { echo "== $*"; }

for b in sesphrd sesphr sesphr-testkit; do
    [ -x "$BIN/$b" ] || die "$BIN/$b is missing (cargo build --workspace --bins)"
done

# --- tools -------------------------------------------------------------------
step "tools"
bash scripts/tools/postgres.sh >/dev/null || die "PostgreSQL could not be installed (scripts/tools/postgres.sh)"
SESPHR_GARAGE_BIN=$(bash scripts/tools/garage.sh) || die "Garage could not be built (scripts/tools/garage.sh)"
export SESPHR_GARAGE_BIN

# PostgreSQL runs as its own user when we are root: the work directory must
# be traversable by it.
WORK=$(mktemp -d /tmp/sesphr-scale.XXXXXX)
chmod 711 "$WORK"
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    # Closing the testkit's stdin stops PostgreSQL and Garage.
    exec 7>&- 2>/dev/null || true
    wait 2>/dev/null || true
    if [ "${SCALE_TEST_KEEP:-}" = 1 ]; then echo "scale-test: kept $WORK"; return; fi
    # PostgreSQL and Garage stop asynchronously once their stdin closes and
    # may still write into $WORK for a moment: retry (bounded), and never let
    # the clean-up turn a passing run into a failing one.
    local i
    for i in 1 2 3 4 5 6 7 8 9 10; do
        rm -rf "$WORK" 2>/dev/null && return
        sleep 0.5
    done
    echo "scale-test: could not remove $WORK" >&2
}
trap cleanup EXIT

# --- storage servers ---------------------------------------------------------
step "PostgreSQL and a 3-node Garage cluster"
mkfifo "$WORK/testkit.in"
TMPDIR="$WORK" "$BIN/sesphr-testkit" up --dir "$WORK/servers" --postgres --garage 3 \
    <"$WORK/testkit.in" >"$WORK/testkit.log" 2>&1 &
pids+=($!)
exec 7>"$WORK/testkit.in"
for _ in $(seq 1 600); do
    [ -f "$WORK/servers/ready" ] && break
    kill -0 "${pids[0]}" 2>/dev/null || die "sesphr-testkit stopped: $(tail -5 "$WORK/testkit.log")"
    sleep 0.2
done
[ -f "$WORK/servers/ready" ] || die "PostgreSQL and Garage not ready in 120 s: $(tail -5 "$WORK/testkit.log")"
# shellcheck disable=SC1091
. "$WORK/servers/env"
ok "PostgreSQL (pid $PG_PID) and Garage nodes (pids $GARAGE_PID_1 $GARAGE_PID_2 $GARAGE_PID_3) up"

# --- the mesh ------------------------------------------------------------------
step "configuring the mesh"
M="$WORK/mesh"
"$BIN/sesphrd" dev --data-dir "$M" --base-port 0 --configure-only >"$WORK/layout.txt" \
    || die "sesphrd dev --configure-only: $(tail -3 "$WORK/layout.txt")"
serve_file() { echo "$M/serve/$1.toml"; }
listen_of() { sed -n 's/^listen = "\(.*\)"$/\1/p' "$(serve_file "$1")" | head -1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CS_A=$(listen_of cloud-storage)
AP_A=$(listen_of access-policy)
CS_B="127.0.0.1:$(free_port)"
AP_B="127.0.0.1:$(free_port)"
[ -n "$CS_A" ] && [ -n "$AP_A" ] || die "no listen address in $M/serve/*.toml"

# Both CloudStorage replicas read one credentials file (0600).
umask 077
printf 'access_key_id = "%s"\nsecret_access_key = "%s"\n' "$S3_ACCESS_KEY_ID" "$S3_SECRET_ACCESS_KEY" >"$WORK/s3.toml"
printf '%s\n' "$PG_URL" >"$WORK/pg.url" # sslmode=disable: loopback
umask 022
shared_pg=(SESPHR_STORAGE_BACKEND=postgres "SESPHR_POSTGRES_URL_FILE=$WORK/pg.url")
s3_at() { # NODE
    local endpoint_var="S3_ENDPOINT_$1"
    echo "SESPHR_S3_ENDPOINT=${!endpoint_var}" "SESPHR_S3_BUCKET=$S3_BUCKET" "SESPHR_S3_REGION=$S3_REGION" \
        SESPHR_S3_ALLOW_HTTP=true "SESPHR_S3_CREDENTIALS_FILE=$WORK/s3.toml"
}

declare -A pid_of
start() { # NAME SERVE-FILE ENV...
    local name=$1 file=$2
    shift 2
    env "$@" "$BIN/sesphrd" serve --config "$file" >"$WORK/$name.log" 2>&1 &
    pid_of[$name]=$!
    pids+=($!)
}
wait_serving() { # NAME
    local name=$1
    for _ in $(seq 1 $((START_TIMEOUT * 5))); do
        grep -q '"serving"\|serving' "$WORK/$name.log" 2>/dev/null && return 0
        kill -0 "${pid_of[$name]}" 2>/dev/null || return 1
        sleep 0.2
    done
    return 1
}
log_tail() { echo "--- $1"; tail -5 "$WORK/$1.log"; }

step "starting two AccessPolicy and two CloudStorage replicas, the setup service and three nodes"
start access-policy-a "$(serve_file access-policy)" "${shared_pg[@]}" "SESPHR_DATA_DIR=$M/ap-a"
start access-policy-b "$(serve_file access-policy)" "${shared_pg[@]}" "SESPHR_DATA_DIR=$M/ap-b" "SESPHR_LISTEN=$AP_B"
for n in access-policy-a access-policy-b; do wait_serving $n || { log_tail $n; die "$n did not start"; }; done
start srs "$(serve_file srs)" "${shared_pg[@]}" "SESPHR_DATA_DIR=$M/srs-pg"
for i in 1 2 3; do start "srs-node-$i" "$(serve_file "srs-node-$i")"; done
# shellcheck disable=SC2046
start cloud-storage-a "$(serve_file cloud-storage)" "${shared_pg[@]}" $(s3_at 1) "SESPHR_DATA_DIR=$M/cs-a"
# shellcheck disable=SC2046
start cloud-storage-b "$(serve_file cloud-storage)" "${shared_pg[@]}" $(s3_at 2) "SESPHR_DATA_DIR=$M/cs-b" \
    "SESPHR_LISTEN=$CS_B" "SESPHR_ACCESS_POLICY_ENDPOINT=https://$AP_B"
all_up=1
for n in srs srs-node-1 srs-node-2 srs-node-3 cloud-storage-a cloud-storage-b; do
    wait_serving $n || { log_tail $n; all_up=0; }
done
[ $all_up = 1 ] || die "a service did not start"
ok "9 processes serving: access-policy a+b and cloud-storage a+b on PostgreSQL (+ Garage), srs on PostgreSQL, 3 nodes"

# Replica b's mesh file: the same mesh, the other CloudStorage and AccessPolicy.
sed -e "s#https://$CS_A\"#https://$CS_B\"#" -e "s#https://$AP_A\"#https://$AP_B\"#" "$M/mesh.toml" >"$WORK/mesh-b.toml"
grep -q "$CS_B" "$WORK/mesh-b.toml" && grep -q "$AP_B" "$WORK/mesh-b.toml" || die "could not write mesh-b.toml"
MESH_A="$M/mesh.toml"
MESH_B="$WORK/mesh-b.toml"

# --- the session, through both replicas ---------------------------------------
H="$WORK/homes"
sesphr() { timeout "$CMD_TIMEOUT" "$BIN/sesphr" "$@"; }
at_a() { SESPHR_MESH="$MESH_A" sesphr "$@"; }
at_b() { SESPHR_MESH="$MESH_B" sesphr "$@"; }
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

step "the CLI session through replicas a and b"
OPERATOR="$M/operator"
expect_ok "alice (patient) enrols through the setup service on PostgreSQL" \
    at_a --home "$H/alice" enroll --id alice --role patient
at_a --home "$OPERATOR" admin invite --id bob --role doctor >"$WORK/bob.inv" 2>"$WORK/err" || true
if [ -s "$WORK/bob.inv" ]; then ok "the operator invites bob (doctor)"; else bad "invite bob: $(tail -3 "$WORK/err")"; fi
expect_ok "bob enrols with his invitation" at_b --home "$H/bob" enroll --id bob --role doctor --invite "$(cat "$WORK/bob.inv")"

expect_ok "alice imports her FHIR bundle through replica a" at_a --home "$H/alice" import-fhir tests/data/bundle.json
cp "$WORK/out" "$WORK/records.txt"
MEDICAL=$(awk '$1 == "medical" {print $2}' "$WORK/records.txt")
INSURANCE=$(awk '$1 == "insurance" {print $2}' "$WORK/records.txt")
head -c 3000000 /dev/urandom >"$WORK/scan.bin"
expect_ok "alice uploads a 3 MB file through replica a" at_a --home "$H/alice" upload --partition medical "$WORK/scan.bin"
SCAN=$(tr -d '[:space:]' <"$WORK/out")
expect_ok "alice grants bob partition medical at AccessPolicy a" at_a --home "$H/alice" grant --partition medical --to bob

read_back() { # SUFFIX: bob reads through replica b what alice stored through a
    local s=$1
    at_a --home "$H/alice" get "$MEDICAL" -o "$WORK/medical.alice" 2>"$WORK/err" || true
    if at_b --home "$H/bob" get "$MEDICAL" -o "$WORK/medical.bob" 2>"$WORK/err" \
        && [ -s "$WORK/medical.bob" ] && cmp -s "$WORK/medical.alice" "$WORK/medical.bob"; then
        ok "bob reads alice's medical bundle through replica b$s"
    else
        bad "bob reads the medical bundle through replica b$s: $(tail -2 "$WORK/err")"
    fi
    if at_b --home "$H/bob" get "$SCAN" -o "$WORK/scan.bob" 2>"$WORK/err" && cmp -s "$WORK/scan.bin" "$WORK/scan.bob"; then
        ok "bob downloads the 3 MB file through replica b, byte for byte$s"
    else
        bad "bob downloads the 3 MB file through replica b$s: $(tail -2 "$WORK/err")"
    fi
}
read_back " (grant checked by AccessPolicy b)"
expect_refused "bob reads the insurance bundle through replica b: refused" "denied|permission" \
    at_b --home "$H/bob" get "$INSURANCE"
expect_ok "alice lists her records through replica b" at_b --home "$H/alice" ls
if [ "$(wc -l <"$WORK/out")" -ge 4 ]; then ok "replica b lists what replica a stored ($(wc -l <"$WORK/out") records)"; else bad "replica b lists $(wc -l <"$WORK/out") records"; fi
expect_ok "alice verifies her audit trail (one log, appended by both AccessPolicy replicas)" \
    at_b --home "$H/alice" audit --verify

# --- a replica killed mid-burst ---------------------------------------------------
step "killing CloudStorage replica a in the middle of $BURST uploads"
mkdir -p "$WORK/burst"
: >"$WORK/burst/acked"
for i in $(seq 1 "$BURST"); do head -c 1500000 /dev/urandom >"$WORK/burst/$i.bin"; done
(
    for i in $(seq 1 "$BURST"); do
        if id=$(at_a --home "$H/alice" upload --partition medical "$WORK/burst/$i.bin" 2>>"$WORK/burst.err"); then
            echo "$i $(tr -d '[:space:]' <<<"$id")" >>"$WORK/burst/acked"
        fi
    done
) &
burst=$!
# Let some uploads finish, then kill the replica under the others.
for _ in $(seq 1 300); do
    [ "$(wc -l <"$WORK/burst/acked")" -ge 3 ] && break
    sleep 0.1
done
kill -9 "${pid_of[cloud-storage-a]}"
wait "${pid_of[cloud-storage-a]}" 2>/dev/null || true
wait "$burst" || true
acked=$(wc -l <"$WORK/burst/acked")
if [ "$acked" -ge 1 ] && [ "$acked" -lt "$BURST" ]; then
    ok "replica a killed after $acked of $BURST uploads were acknowledged"
else
    bad "the kill did not land mid-burst ($acked of $BURST acknowledged)"
fi
intact=0
while read -r i id; do
    if at_b --home "$H/alice" get "$id" -o "$WORK/burst/$i.back" 2>"$WORK/err" && cmp -s "$WORK/burst/$i.bin" "$WORK/burst/$i.back"; then
        intact=$((intact + 1))
    else
        bad "acknowledged upload $i ($id) through replica b: $(tail -1 "$WORK/err")"
    fi
done <"$WORK/burst/acked"
[ "$intact" = "$acked" ] && ok "all $acked acknowledged records read back byte for byte through replica b"
at_b --home "$H/alice" ls --partition medical >"$WORK/listed" 2>"$WORK/err" || bad "ls through replica b: $(tail -1 "$WORK/err")"
whole=0
total=$(wc -l <"$WORK/listed")
while IFS=$'\t' read -r id _; do
    if at_b --home "$H/alice" get "$id" -o "$WORK/listed.one" 2>"$WORK/err"; then
        whole=$((whole + 1))
    else
        bad "listed record $id does not read: $(tail -1 "$WORK/err")"
    fi
done <"$WORK/listed"
[ "$whole" = "$total" ] && ok "nothing partial is visible: all $total records replica b lists read whole"

# --- a Garage node lost -------------------------------------------------------------
step "killing Garage node 3"
kill -9 "$GARAGE_PID_3"
head -c 2000000 /dev/urandom >"$WORK/after.bin"
expect_ok "an upload through replica b with a Garage node down" at_b --home "$H/alice" upload --partition medical "$WORK/after.bin"
AFTER=$(tr -d '[:space:]' <"$WORK/out")
if at_b --home "$H/alice" get "$AFTER" -o "$WORK/after.back" 2>"$WORK/err" && cmp -s "$WORK/after.bin" "$WORK/after.back"; then
    ok "it reads back with the node down"
else
    bad "read back with a Garage node down: $(tail -1 "$WORK/err")"
fi
read_back " with a Garage node down"

echo "scale-test: $passed passed, $failed failed"
[ "$failed" = 0 ]
