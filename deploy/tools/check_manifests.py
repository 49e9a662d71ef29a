#!/usr/bin/env python3
"""Checks rendered SeSPHR manifests for what schema validation cannot see.

Usage: check_manifests.py [--prod] RENDERED.yaml... [--prod RENDERED.yaml...]
       (output of `kubectl kustomize`; files after --prod are production
       renderings and also get the production rules)

Schemas (kubernetes-validate) say whether each object is well formed; this
says whether the objects fit together and follow the deployment's rules:

- Pod Security "restricted" for every pod template (plus our own: read-only
  root filesystem, requests and limits);
- probes are grpc probes on the plaintext health port, never the mTLS port;
- every ConfigMap, Secret, ServiceAccount, Issuer and Service a manifest
  names exists (or is made by cert-manager, or is one the operator creates);
- Services and PodDisruptionBudgets select pods, StatefulSets have a
  headless Service, every pod has its own ingress NetworkPolicy and the
  mTLS port is never open to everyone;
- certificates carry server and client auth, PKCS#8 keys, the service's
  SPIFFE URI SAN and the DNS name peers dial;
- two trust roots: the service CA (Secret sesphr-service-ca, the CA Issuer
  of every other Certificate) and the user CA (Secret sesphr-user-ca, no
  Issuer at all); no pod mounts the service CA's key, and no pod but the
  setup service mounts the user CA's key, which its TOML names as
  srs.issuer_cert/issuer_key; every TOML has tls.user_ca, the user CA's
  certificate (key tls.crt of its Secret);
- each `sesphrd serve` TOML agrees with its StatefulSet: ports, mount paths,
  the AccessPolicy and setup endpoints (the nodes' and AccessPolicy's) and
  the trust domain; a [deny_list] polls at least twice per staleness bound;
  production renderings: patients' self-registration is off;
- the setup service, AccessPolicy and CloudStorage run exactly one replica
  (each replica is a separate sled store), and no PodDisruptionBudget
  blocks every eviction;
- the audit log: AccessPolicy mounts its signing key (Secret
  access-policy-log-key) at the TOML's access_policy.log_key_file and no
  other pod mounts it; every witness (each node and CloudStorage) has a
  [witness] section whose key_file is its own witness key Secret
  (srs-node-<i>-witness, cloud-storage-witness; never another's, never
  mounted elsewhere) and whose log_public_key_file is the log's public key
  (Secret audit-log-public-key);
- the re-encryption nodes srs-node-1..n: one replica each, identity
  .../service/srs-node/<i> matching the name, their own certificate, volume,
  OPRF key share (at the TOML's oprf_share_file) and Service on 50054; one
  PDB over all nodes with minAvailable = the threshold t < n;
- NetworkPolicies admit the mesh's calls (clients -> every service, nodes ->
  AccessPolicy and setup, ...) and refuse the ones that must not happen
  (node -> node, setup -> node, ...);
- production renderings only: no two nodes may share a host (required pod
  anti-affinity on kubernetes.io/hostname).

Exits 1 listing every problem found.
"""

import re
import sys
from urllib.parse import urlsplit

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

# StatefulSets named after their service (`--service <name>`, identity
# spiffe://<td>/service/<name>). "srs" is the setup service.
SERVICES = {"cloud-storage", "srs", "access-policy"}
# Each runs exactly one replica: a replica is a separate sled database.
SINGLE_REPLICA = {
    "srs": "the setup service is the single writer of the user directory: a second replica would enroll users the first never knows",
    "access-policy": "grants and the audit chain are one sled database: a second replica would fork them",
    "cloud-storage": "a second replica would be a second, empty record store",
}
# The re-encryption nodes: StatefulSet srs-node-<i>, `--service srs-node`,
# identity spiffe://<td>/service/srs-node/<i>, i = 1..n.
NODE_SERVICE = "srs-node"
NODE_NAME = re.compile(r"^srs-node-([1-9][0-9]*)$")
NODE_PORT = 50054
# On every node StatefulSet: the t of the OPRF deal and of the grants.
THRESHOLD_ANNOTATION = "sesphr.io/threshold"
# The two trust roots. The service CA signs services, nodes and operators
# (through its CA Issuer); no pod mounts its key. The user CA signs
# patients' and practitioners' certificates, at the setup service only,
# which alone mounts its key; every pod mounts its certificate (tls.user_ca).
SERVICE_CA_SECRET = "sesphr-service-ca"
SERVICE_CA_ISSUER = "sesphr-service-ca"
USER_CA_SECRET = "sesphr-user-ca"
CA_CERT_KEY = "tls.crt"
CA_KEY_KEY = "tls.key"
# Patients' enrollment without an invitation ([srs] self_registration, or
# this variable): never in production.
SELF_REGISTRATION_ENV = "SESPHR_SELF_REGISTRATION"
# The services that poll AccessPolicy's deny list ([deny_list]).
DENY_LIST_SERVICES = {"cloud-storage", "srs", "srs-node"}
# The audit log's signing key (AccessPolicy only), key `log.key`, and its
# public key (every witness), key `log.pub`.
LOG_KEY_SECRET = "access-policy-log-key"
LOG_KEY_SECRET_KEY = "log.key"
LOG_PUBLIC_SECRET = "audit-log-public-key"
LOG_PUBLIC_SECRET_KEY = "log.pub"
# The witnesses of the audit log (AddCosignature admits these callers only)
# and each one's own cosigning key, key `witness.key`.
WITNESS_SERVICES = {"cloud-storage", "srs-node"}
WITNESS_SECRET_KEY = "witness.key"
CLOUD_WITNESS_SECRET = "cloud-storage-witness"
NODE_WITNESS_SECRET = "srs-node-{}-witness"
NODE_WITNESS_PATTERN = re.compile(r"^srs-node-[1-9][0-9]*-witness$")
# Secrets the operator creates by hand (deploy/README.md); an overlay may
# generate them instead (dev).
OPERATOR_SECRETS = {LOG_KEY_SECRET, LOG_PUBLIC_SECRET, CLOUD_WITNESS_SECRET}
# Node i's OPRF key share (`sesphrd deal-oprf`), key `share`.
OPRF_SECRET = "srs-node-{}-oprf"
OPRF_SECRET_KEY = "share"
OPRF_PATTERN = re.compile(r"^srs-node-[1-9][0-9]*-oprf$")
OPERATOR_SECRET_PATTERNS = [OPRF_PATTERN, NODE_WITNESS_PATTERN]


def is_witness_secret(name):
    return name == CLOUD_WITNESS_SECRET or bool(NODE_WITNESS_PATTERN.match(name))


def witness_secret(service, index):
    """The witness key Secret of the witness `service` (node `index`)."""
    return NODE_WITNESS_SECRET.format(index) if service == "srs-node" else CLOUD_WITNESS_SECRET
# Pods of a client (patients', practitioners' and operators' programs).
CLIENT_LABELS = {"sesphr.io/client": "true"}
CLIENT = "client"
# Calls of the mesh (caller, callee, callee's port) that the NetworkPolicies
# must admit, and ones they must refuse. Names are app.kubernetes.io/name.
REQUIRED_FLOWS = [
    (CLIENT, "cloud-storage", 50051),
    (CLIENT, "srs", 50052),
    (CLIENT, "access-policy", 50053),
    (CLIENT, "srs-node", 50054),
    # Check, RecordEvent; and, as the audit log's witnesses, GetCheckpoint,
    # GetConsistencyProof and AddCosignature.
    ("cloud-storage", "access-policy", 50053),
    ("srs", "access-policy", 50053),
    ("srs-node", "access-policy", 50053),
    ("srs-node", "srs", 50052),
    # GetUser: a grant's grantee must be enrolled with the grant's role.
    ("access-policy", "srs", 50052),
]
FORBIDDEN_FLOWS = [
    # One node must not reach another's share.
    ("srs-node", "srs-node", 50054),
    # Nothing but clients calls a node or CloudStorage.
    ("srs", "srs-node", 50054),
    ("cloud-storage", "srs-node", 50054),
    ("access-policy", "srs-node", 50054),
    ("srs-node", "cloud-storage", 50051),
    ("srs", "cloud-storage", 50051),
    # AccessPolicy calls the setup service only.
    ("access-policy", "cloud-storage", 50051),
]
HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"
HEALTH_PORT_NAME = "health"
CONFIG_KEY = "sesphrd.toml"
WORKLOAD_KINDS = {"StatefulSet", "Deployment", "DaemonSet", "ReplicaSet", "Job", "Pod", "CronJob"}
# Pod Security Standards, restricted profile (Kubernetes 1.30).
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
    "persistentVolumeClaim", "projected", "secret",
}
ALLOWED_ADD_CAPS = {"NET_BIND_SERVICE"}
SECCOMP_OK = {"RuntimeDefault", "Localhost"}


class Checker:
    def __init__(self, label, docs, production=False):
        self.label = label
        self.docs = docs
        self.production = production
        self.errors = []

    def err(self, obj, msg):
        name = f"{obj['kind']}/{obj['metadata']['name']}" if obj else "-"
        self.errors.append(f"{self.label}: {name}: {msg}")

    def of_kind(self, kind):
        return [d for d in self.docs if d.get("kind") == kind]

    def named(self, kind, name):
        return next((d for d in self.of_kind(kind) if d["metadata"]["name"] == name), None)

    # -- helpers -----------------------------------------------------------

    @staticmethod
    def pod_spec(obj):
        kind = obj["kind"]
        if kind == "Pod":
            return obj["spec"], obj["metadata"].get("labels", {})
        if kind == "CronJob":
            tpl = obj["spec"]["jobTemplate"]["spec"]["template"]
        else:
            tpl = obj["spec"]["template"]
        return tpl["spec"], tpl.get("metadata", {}).get("labels", {})

    @staticmethod
    def selects(selector, labels):
        """A label selector (matchLabels/matchExpressions) against labels."""
        if selector is None:
            return False
        for k, v in (selector.get("matchLabels") or {}).items():
            if labels.get(k) != v:
                return False
        for e in selector.get("matchExpressions") or []:
            key, op, values = e["key"], e["operator"], e.get("values", [])
            if op == "In" and labels.get(key) not in values:
                return False
            if op == "NotIn" and labels.get(key) in values:
                return False
            if op == "Exists" and key not in labels:
                return False
            if op == "DoesNotExist" and key in labels:
                return False
        return True

    def secret_names_made(self):
        made = {d["metadata"]["name"] for d in self.of_kind("Secret")}
        made |= {c["spec"]["secretName"] for c in self.of_kind("Certificate")}
        return made

    @staticmethod
    def identity(sts):
        """(service, node index or None, SPIFFE path) of a StatefulSet that
        runs a mesh service, else None."""
        name = sts["metadata"]["name"]
        if name in SERVICES:
            return name, None, f"service/{name}"
        m = NODE_NAME.match(name)
        if m:
            i = int(m.group(1))
            return NODE_SERVICE, i, f"service/{NODE_SERVICE}/{i}"
        return None

    def nodes(self):
        """The re-encryption node StatefulSets, by index."""
        out = {}
        for sts in self.of_kind("StatefulSet"):
            ident = self.identity(sts)
            if ident and ident[1] is not None:
                out[ident[1]] = sts
        return out

    @staticmethod
    def replicas(w):
        return w["spec"].get("replicas", 1)

    @staticmethod
    def secret_volumes(spec):
        return {v["name"]: v["secret"]["secretName"] for v in spec.get("volumes") or [] if "secret" in v}

    @staticmethod
    def secret_mounts(spec):
        """(volume, Secret, keys) for every Secret a pod's volumes project,
        plain or in a projected volume; keys is None when every key of the
        Secret is mounted (no items)."""
        for v in spec.get("volumes") or []:
            sources = [v["secret"] | {"name": v["secret"].get("secretName")}] if "secret" in v else [
                src["secret"] for src in (v.get("projected") or {}).get("sources") or [] if "secret" in src]
            for src in sources:
                items = src.get("items")
                yield v["name"], src.get("name"), None if items is None else {it["key"] for it in items}

    def service_certificate(self, spiffe_path):
        """Certificates whose URI SAN is exactly spiffe://<any td>/<spiffe_path>."""
        return [
            c for c in self.of_kind("Certificate")
            if any(re.fullmatch(rf"spiffe://[^/]+/{re.escape(spiffe_path)}", u) for u in c["spec"].get("uris") or [])
        ]

    # -- checks ------------------------------------------------------------

    def run(self):
        self.check_metadata()
        workloads = [d for d in self.docs if d.get("kind") in WORKLOAD_KINDS]
        if not workloads:
            self.err(None, "no workloads rendered")
        for w in workloads:
            self.check_pod_security(w)
            self.check_references(w)
            self.check_probes(w)
            self.check_network_policy(w)
        for sts in self.of_kind("StatefulSet"):
            self.check_statefulset(sts)
        self.check_services(workloads)
        self.check_pdbs(workloads)
        self.check_network_policies()
        self.check_certificates()
        for sts in self.of_kind("StatefulSet"):
            if self.identity(sts):
                self.check_serve_config(sts)
        self.check_single_replicas()
        self.check_ca_keys(workloads)
        self.check_witness_keys(workloads)
        self.check_nodes()
        self.check_flows(workloads)
        return self.errors

    def check_metadata(self):
        namespaces = {d["metadata"]["name"] for d in self.of_kind("Namespace")}
        for d in self.docs:
            if not all(k in d for k in ("apiVersion", "kind", "metadata")):
                self.errors.append(f"{self.label}: object without apiVersion/kind/metadata: {d!r:.120}")
                continue
            if d["kind"] == "Namespace":
                if d["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") != "restricted":
                    self.err(d, "namespace must enforce Pod Security 'restricted'")
                continue
            ns = d["metadata"].get("namespace")
            if not ns:
                self.err(d, "no namespace")
            elif namespaces and ns not in namespaces:
                self.err(d, f"namespace {ns!r} is not the rendered Namespace {sorted(namespaces)}")

    def check_pod_security(self, w):
        spec, _ = self.pod_spec(w)
        psc = spec.get("securityContext") or {}
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(host) is True:
                self.err(w, f"{host} is not allowed (restricted)")
        if psc.get("sysctls"):
            self.err(w, "sysctls are not allowed here")
        for v in spec.get("volumes") or []:
            types = set(v) - {"name"}
            if not types <= RESTRICTED_VOLUMES:
                self.err(w, f"volume {v['name']}: type {sorted(types)} not allowed (restricted)")
        containers = (spec.get("initContainers") or []) + spec["containers"] + (spec.get("ephemeralContainers") or [])
        for c in containers:
            csc = c.get("securityContext") or {}
            where = f"container {c['name']}"

            def eff(key):
                return csc.get(key, psc.get(key))

            if eff("runAsNonRoot") is not True:
                self.err(w, f"{where}: runAsNonRoot must be true (restricted)")
            if eff("runAsUser") == 0:
                self.err(w, f"{where}: runAsUser 0 (restricted)")
            seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            if seccomp not in SECCOMP_OK:
                self.err(w, f"{where}: seccompProfile must be RuntimeDefault or Localhost (restricted)")
            if csc.get("allowPrivilegeEscalation") is not False:
                self.err(w, f"{where}: allowPrivilegeEscalation must be false (restricted)")
            if csc.get("privileged"):
                self.err(w, f"{where}: privileged (restricted)")
            caps = csc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                self.err(w, f"{where}: capabilities must drop ALL (restricted)")
            extra = set(caps.get("add") or []) - ALLOWED_ADD_CAPS
            if extra:
                self.err(w, f"{where}: adds capabilities {sorted(extra)} (restricted)")
            if csc.get("procMount", "Default") != "Default":
                self.err(w, f"{where}: procMount (restricted)")
            if any(p.get("hostPort") for p in c.get("ports") or []):
                self.err(w, f"{where}: hostPort (restricted)")
            if csc.get("readOnlyRootFilesystem") is not True:
                self.err(w, f"{where}: readOnlyRootFilesystem must be true")
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(part) or {}):
                        self.err(w, f"{where}: resources.{part}.{r} missing")

    def check_references(self, w):
        spec, _ = self.pod_spec(w)
        made = self.secret_names_made() | OPERATOR_SECRETS

        class Secrets:
            def __contains__(self, name):
                return name in made or any(p.match(name) for p in OPERATOR_SECRET_PATTERNS)

        secrets = Secrets()
        configmaps = {d["metadata"]["name"] for d in self.of_kind("ConfigMap")}
        sa = spec.get("serviceAccountName")
        if sa and not self.named("ServiceAccount", sa):
            self.err(w, f"serviceAccount {sa!r} is not rendered")
        for v in spec.get("volumes") or []:
            if "secret" in v and v["secret"]["secretName"] not in secrets:
                self.err(w, f"volume {v['name']}: Secret {v['secret']['secretName']!r} is neither rendered, made by a Certificate, nor operator-made")
            if "configMap" in v and v["configMap"]["name"] not in configmaps:
                self.err(w, f"volume {v['name']}: ConfigMap {v['configMap']['name']!r} is not rendered")
        volume_names = {v["name"] for v in spec.get("volumes") or []}
        if w["kind"] == "StatefulSet":
            volume_names |= {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates") or []}
        for c in spec["containers"]:
            for m in c.get("volumeMounts") or []:
                if m["name"] not in volume_names:
                    self.err(w, f"container {c['name']}: mount of unknown volume {m['name']!r}")
            for e in c.get("env") or []:
                ref = (e.get("valueFrom") or {})
                if "secretKeyRef" in ref and ref["secretKeyRef"]["name"] not in secrets:
                    self.err(w, f"env {e['name']}: unknown Secret {ref['secretKeyRef']['name']!r}")
                if "configMapKeyRef" in ref and ref["configMapKeyRef"]["name"] not in configmaps:
                    self.err(w, f"env {e['name']}: unknown ConfigMap {ref['configMapKeyRef']['name']!r}")

    def check_probes(self, w):
        spec, _ = self.pod_spec(w)
        for c in spec["containers"]:
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
            health = ports.get(HEALTH_PORT_NAME)
            if health is None:
                self.err(w, f"container {c['name']}: no port named {HEALTH_PORT_NAME!r}")
                continue
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                p = c.get(probe)
                if p is None:
                    if probe != "startupProbe":
                        self.err(w, f"container {c['name']}: {probe} missing")
                    continue
                if "grpc" not in p:
                    self.err(w, f"container {c['name']}: {probe} must be a grpc probe")
                elif p["grpc"]["port"] != health:
                    self.err(w, f"container {c['name']}: {probe} must use the plaintext health port {health}, not {p['grpc']['port']}")

    def pod_policies(self, labels, policy_type):
        out = []
        for np in self.of_kind("NetworkPolicy"):
            s = np["spec"]
            types = s.get("policyTypes") or ["Ingress"]
            if policy_type in types and self.selects(s["podSelector"], labels) and s["podSelector"]:
                out.append(np)
        return out

    def check_network_policy(self, w):
        _, labels = self.pod_spec(w)
        if not self.pod_policies(labels, "Ingress"):
            self.err(w, "no NetworkPolicy of its own selects these pods for Ingress")

    def check_network_policies(self):
        for np in self.of_kind("NetworkPolicy"):
            for rule in np["spec"].get("ingress") or []:
                ports = [p.get("port") for p in rule.get("ports") or []]
                sources = rule.get("from")
                if not sources:
                    self.err(np, f"ingress to ports {ports or 'all'} open to everyone (no 'from')")
                    continue
                open_all = any(s == {"namespaceSelector": {}} or s.get("ipBlock", {}).get("cidr") in ("0.0.0.0/0", "::/0") for s in sources)
                if open_all and (not ports or any(p != 8080 for p in ports)):
                    self.err(np, f"only the health port may be open to every namespace, not {ports or 'all ports'}")

    def check_statefulset(self, sts):
        _, labels = self.pod_spec(sts)
        svc = self.named("Service", sts["spec"].get("serviceName", ""))
        if svc is None:
            self.err(sts, f"serviceName {sts['spec'].get('serviceName')!r} is not a rendered Service")
        elif svc["spec"].get("clusterIP") != "None":
            self.err(sts, f"serviceName {svc['metadata']['name']!r} must be headless (clusterIP: None)")
        if not self.selects(sts["spec"]["selector"], labels):
            self.err(sts, "selector does not match its own pod template")
        if not sts["spec"].get("volumeClaimTemplates"):
            self.err(sts, "no volumeClaimTemplates (each service keeps its sled database on its own volume)")

    def check_services(self, workloads):
        for svc in self.of_kind("Service"):
            sel = svc["spec"].get("selector")
            if not sel:
                self.err(svc, "no selector")
                continue
            matched = [w for w in workloads if self.selects({"matchLabels": sel}, self.pod_spec(w)[1])]
            if not matched:
                self.err(svc, f"selector {sel} matches no pod template")
                continue
            spec, _ = self.pod_spec(matched[0])
            names = {p.get("name") for c in spec["containers"] for p in c.get("ports") or []}
            numbers = {p["containerPort"] for c in spec["containers"] for p in c.get("ports") or []}
            for p in svc["spec"].get("ports") or []:
                t = p.get("targetPort", p["port"])
                if t not in names and t not in numbers:
                    self.err(svc, f"targetPort {t!r} is no container port of {matched[0]['metadata']['name']}")

    def check_pdbs(self, workloads):
        for pdb in self.of_kind("PodDisruptionBudget"):
            for key in ("minAvailable", "maxUnavailable"):
                v = pdb["spec"].get(key)
                # IntOrString: the schemas accept any string, the API server
                # only an integer or a percentage.
                if isinstance(v, str) and not (v.endswith("%") and v[:-1].isdigit()):
                    self.err(pdb, f"{key} {v!r} is neither an integer nor a percentage")
            # A budget that no eviction can satisfy blocks every node drain.
            selected = [w for w in workloads if self.selects(pdb["spec"].get("selector"), self.pod_spec(w)[1])]
            pods = sum(self.replicas(w) if w["kind"] in ("StatefulSet", "Deployment", "ReplicaSet") else 1 for w in selected)
            min_available = pdb["spec"].get("minAvailable")
            if isinstance(min_available, int) and selected and min_available >= pods:
                self.err(pdb, f"minAvailable {min_available} of {pods} selected pod(s): no pod could ever be evicted, every drain of their hosts would hang")
            if pdb["spec"].get("maxUnavailable") == 0:
                self.err(pdb, "maxUnavailable 0: no pod could ever be evicted")
        for w in workloads:
            if w["kind"] != "StatefulSet":
                continue
            _, labels = self.pod_spec(w)
            if not any(self.selects(p["spec"].get("selector"), labels) for p in self.of_kind("PodDisruptionBudget")):
                self.err(w, "no PodDisruptionBudget selects it")

    def check_certificates(self):
        issuers = {d["metadata"]["name"] for d in self.of_kind("Issuer")}
        if any(self.identity(sts) for sts in self.of_kind("StatefulSet")):
            for secret, what in ((SERVICE_CA_SECRET, "service CA"), (USER_CA_SECRET, "user CA")):
                if not any(c["spec"].get("isCA") and c["spec"]["secretName"] == secret for c in self.of_kind("Certificate")):
                    self.err(None, f"no CA Certificate makes the {what} Secret {secret!r}")
            ca_issuer = self.named("Issuer", SERVICE_CA_ISSUER)
            if ca_issuer is None or (ca_issuer["spec"].get("ca") or {}).get("secretName") != SERVICE_CA_SECRET:
                self.err(ca_issuer, f"the CA Issuer {SERVICE_CA_ISSUER!r} must sign with the service CA Secret {SERVICE_CA_SECRET!r}")
        for issuer in self.of_kind("Issuer"):
            if (issuer["spec"].get("ca") or {}).get("secretName") == USER_CA_SECRET:
                self.err(issuer, f"signs with the user CA {USER_CA_SECRET!r}: only the setup service issues user certificates (cert-manager could mint any user)")
        for cert in self.of_kind("Certificate"):
            s = cert["spec"]
            ref = s.get("issuerRef", {})
            if ref.get("kind", "Issuer") == "Issuer" and ref.get("name") not in issuers:
                self.err(cert, f"issuerRef {ref.get('name')!r} is not a rendered Issuer")
            if not s.get("isCA") and ref.get("name") != SERVICE_CA_ISSUER:
                self.err(cert, f"issuerRef {ref.get('name')!r}: service, node and operator certificates come from the service CA Issuer {SERVICE_CA_ISSUER!r}")
            if (s.get("privateKey") or {}).get("encoding") != "PKCS8":
                self.err(cert, "privateKey.encoding must be PKCS8 (rustls/rcgen with ring read PKCS#8)")
            if not s.get("isCA") and not s.get("uris"):
                self.err(cert, "no SPIFFE URI SAN")
        for sts in self.of_kind("StatefulSet"):
            ident = self.identity(sts)
            if ident is None:
                continue
            name = sts["metadata"]["name"]
            spiffe_path = ident[2]
            certs = self.service_certificate(spiffe_path)
            if len(certs) != 1:
                self.err(sts, f"expected one Certificate with URI SAN .../{spiffe_path}, found {len(certs)}")
                continue
            cert = certs[0]
            usages = set(cert["spec"].get("usages") or [])
            if not {"server auth", "client auth"} <= usages:
                self.err(cert, "usages must include 'server auth' and 'client auth'")
            ns = sts["metadata"]["namespace"]
            if f"{name}.{ns}.svc" not in (cert["spec"].get("dnsNames") or []):
                self.err(cert, f"dnsNames must include {name}.{ns}.svc")
            spec, _ = self.pod_spec(sts)
            mounted = {v["secret"]["secretName"] for v in spec.get("volumes") or [] if "secret" in v}
            if cert["spec"]["secretName"] not in mounted:
                self.err(sts, f"does not mount its certificate Secret {cert['spec']['secretName']!r}")

    def check_serve_config(self, sts):
        name = sts["metadata"]["name"]
        service, index, spiffe_path = self.identity(sts)
        spec, _ = self.pod_spec(sts)
        c = spec["containers"][0]
        args = c.get("args") or []

        def arg(flag):
            return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else None

        if arg("--service") != service:
            self.err(sts, f"--service {arg('--service')!r} does not match the StatefulSet name (expected {service!r})")
        mounts = {m["name"]: m["mountPath"].rstrip("/") for m in c.get("volumeMounts") or []}
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        config_path = arg("--config") or ""
        directory, _, filename = config_path.rpartition("/")
        vol = next((n for n, p in mounts.items() if p == directory), None)
        cm_name = (volumes.get(vol) or {}).get("configMap", {}).get("name")
        cm = self.named("ConfigMap", cm_name) if cm_name else None
        if cm is None or filename not in (cm.get("data") or {}):
            self.err(sts, f"--config {config_path!r} is not a key of a mounted ConfigMap")
            return
        try:
            cfg = tomllib.loads(cm["data"][filename])
        except tomllib.TOMLDecodeError as e:
            self.err(cm, f"{filename}: {e}")
            return
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}

        def port_of(addr):
            return int(addr.rsplit(":", 1)[1]) if addr and ":" in addr else None

        if port_of(cfg.get("listen")) != ports.get("grpc"):
            self.err(sts, f"TOML listen {cfg.get('listen')!r} is not container port 'grpc' {ports.get('grpc')}")
        if port_of(cfg.get("health_listen")) != ports.get(HEALTH_PORT_NAME):
            self.err(sts, f"TOML health_listen {cfg.get('health_listen')!r} is not container port 'health' {ports.get(HEALTH_PORT_NAME)}")

        def under(path, volume_kind, what):
            if not path:
                self.err(sts, f"TOML {what} is not set")
                return None
            for vname, mpath in mounts.items():
                if path.startswith(mpath + "/"):
                    v = volumes.get(vname)
                    if volume_kind == "pvc" and v is None and any(t["metadata"]["name"] == vname for t in sts["spec"].get("volumeClaimTemplates") or []):
                        return vname
                    if v is not None and volume_kind in v:
                        return vname
            self.err(sts, f"TOML {what} {path!r} is not on a mounted {volume_kind} volume")
            return None

        under(cfg.get("data_dir"), "pvc", "data_dir")
        tls = cfg.get("tls") or {}
        tls_vols = {under(tls.get(k), "secret", f"tls.{k}") for k in ("cert", "key", "ca")}
        td = cfg.get("trust_domain", "sesphr.local")
        ns = sts["metadata"]["namespace"]
        certs = [x for x in self.of_kind("Certificate") if f"spiffe://{td}/{spiffe_path}" in (x["spec"].get("uris") or [])]
        if not certs:
            self.err(sts, f"no Certificate names spiffe://{td}/{spiffe_path} (trust_domain {td!r})")
        elif {volumes[v]["secret"]["secretName"] for v in tls_vols if v} != {certs[0]["spec"]["secretName"]}:
            self.err(sts, f"TOML [tls] files are not all from the Secret {certs[0]['spec']['secretName']!r}")

        def endpoint(key, url, target):
            """url must reach the Service `target` in this namespace, on one
            of its ports, under a DNS name of target's certificate."""
            u = urlsplit(url or "")
            if u.scheme != "https":
                self.err(sts, f"{key} {url!r} must be https://")
            host = u.hostname or ""
            svc = self.named("Service", target)
            if svc is None or host.split(".")[0] != target or host.split(".")[1:2] not in ([], [ns]):
                self.err(sts, f"{key} host {host!r} is not the {target} Service in namespace {ns!r}")
            elif u.port not in [p["port"] for p in svc["spec"]["ports"]]:
                self.err(sts, f"{key} port {u.port} is not a port of Service {target}")
            target_cert = next((x for x in self.of_kind("Certificate") if f"spiffe://{td}/service/{target}" in (x["spec"].get("uris") or [])), None)
            if target_cert is not None and host not in (target_cert["spec"].get("dnsNames") or []):
                self.err(sts, f"{key} host {host!r} is not a DNS SAN of {target}'s certificate")

        def secret_file(path, what, want_secret, want_key, whose):
            """path must be key want_key of the Secret want_secret, mounted."""
            vol = under(path, "secret", what)
            if not vol:
                return
            secret = volumes[vol]["secret"]
            rel = path[len(mounts[vol]) + 1:]
            items = secret.get("items")
            key = next((it["key"] for it in items if it["path"] == rel), None) if items else rel
            if secret["secretName"] != want_secret:
                self.err(sts, f"{what} is on Secret {secret['secretName']!r}, not {whose} {want_secret!r}")
            if key != want_key:
                self.err(sts, f"{what} {path!r} is not key {want_key!r} of the mounted Secret {secret['secretName']!r}")

        def positive_ms(section, key):
            v = section.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                self.err(sts, f"TOML {key} must be a positive number of milliseconds, not {v!r}")

        # Users' certificates chain to the user CA: its certificate, never its key.
        secret_file(tls.get("user_ca"), "tls.user_ca", USER_CA_SECRET, CA_CERT_KEY, "the user CA's certificate in")
        # The deny list: polled at least twice per staleness bound, else one
        # late poll would make the service refuse every user.
        deny = cfg.get("deny_list")
        if service == "access-policy" and deny is not None:
            self.err(sts, "TOML [deny_list]: AccessPolicy is the deny list's source, it polls nobody")
        elif isinstance(deny, dict):
            positive_ms(deny, "poll_interval_ms")
            positive_ms(deny, "max_staleness_ms")
            poll, stale = deny.get("poll_interval_ms"), deny.get("max_staleness_ms")
            if isinstance(poll, int) and isinstance(stale, int) and not 2 * poll <= stale:
                self.err(sts, f"TOML deny_list.max_staleness_ms {stale} must be at least twice deny_list.poll_interval_ms {poll}: one late poll would make the copy stale and every user be refused")
        if service in ("cloud-storage", "srs", NODE_SERVICE):
            endpoint("access_policy_endpoint", cfg.get("access_policy_endpoint"), "access-policy")
        if service == NODE_SERVICE:
            node = cfg.get("srs_node")
            if not isinstance(node, dict):
                self.err(sts, "TOML has no [srs_node] section")
                node = {}
            endpoint("srs_node.setup_endpoint", node.get("setup_endpoint"), "srs")
            secret_file(node.get("oprf_share_file"), "srs_node.oprf_share_file", OPRF_SECRET.format(index), OPRF_SECRET_KEY, "this node's own")
        # The audit log: AccessPolicy signs checkpoints, the witnesses cosign.
        if service == "access-policy":
            ap = cfg.get("access_policy")
            if not isinstance(ap, dict):
                self.err(sts, "TOML has no [access_policy] section: access_policy.log_key_file (the audit log's signing key) is required")
                ap = {}
            secret_file(ap.get("log_key_file"), "access_policy.log_key_file", LOG_KEY_SECRET, LOG_KEY_SECRET_KEY, "the log key Secret")
            endpoint("access_policy.setup_endpoint", ap.get("setup_endpoint"), "srs")
            positive_ms(ap, "checkpoint_interval_ms")
            if "witness" in cfg:
                self.err(sts, "TOML [witness]: AccessPolicy cannot witness its own log")
        elif service in WITNESS_SERVICES:
            w = cfg.get("witness")
            if not isinstance(w, dict):
                self.err(sts, "TOML has no [witness] section: every re-encryption node and CloudStorage witnesses the audit log")
                w = {}
            secret_file(w.get("key_file"), "witness.key_file", witness_secret(service, index), WITNESS_SECRET_KEY, "this witness's own")
            secret_file(w.get("log_public_key_file"), "witness.log_public_key_file", LOG_PUBLIC_SECRET, LOG_PUBLIC_SECRET_KEY, "the log's public key")
            positive_ms(w, "poll_interval_ms")
        elif "witness" in cfg:
            self.err(sts, f"TOML [witness]: {service} is no witness (AddCosignature admits CloudStorage and the nodes only)")
        if service == "srs":
            srs = cfg.get("srs") or {}
            if "reencrypt_rate" in srs:
                self.err(sts, "srs.reencrypt_rate: re-encryption is the nodes' (srs_node.reencrypt_rate), not the setup service's")
            # The user CA signs users' certificates: its certificate and key.
            secret_file(srs.get("issuer_cert"), "srs.issuer_cert", USER_CA_SECRET, CA_CERT_KEY, "the user CA")
            secret_file(srs.get("issuer_key"), "srs.issuer_key", USER_CA_SECRET, CA_KEY_KEY, "the user CA")
            if self.production:
                env = {e["name"]: e.get("value") for e in c.get("env") or []}
                if srs.get("self_registration", False) is not False:
                    self.err(sts, f"production: TOML srs.self_registration = {srs.get('self_registration')!r}: self-registration must be off (patients enroll by invitation)")
                if SELF_REGISTRATION_ENV in env and str(env[SELF_REGISTRATION_ENV]).strip().lower() not in ("false", "0", ""):
                    self.err(sts, f"production: env {SELF_REGISTRATION_ENV}={env[SELF_REGISTRATION_ENV]!r} turns self-registration on")
        # A node's OPRF share is that node's alone.
        mounted = {v["secret"]["secretName"] for v in volumes.values() if "secret" in v}
        oprf = {m for m in mounted if OPRF_PATTERN.match(m)}
        allowed = {OPRF_SECRET.format(index)} if service == NODE_SERVICE else set()
        if oprf - allowed:
            self.err(sts, f"mounts OPRF key shares {sorted(oprf - allowed)} that are not its own")
        # The log key signs checkpoints: AccessPolicy's alone. A witness key
        # is its witness's alone (a second holder could cosign in its name).
        if service != "access-policy" and LOG_KEY_SECRET in mounted:
            self.err(sts, f"mounts the audit log's signing key {LOG_KEY_SECRET!r}; only AccessPolicy may")
        witness = {m for m in mounted if is_witness_secret(m)}
        allowed = {witness_secret(service, index)} if service in WITNESS_SERVICES else set()
        if witness - allowed:
            self.err(sts, f"mounts witness keys {sorted(witness - allowed)} that are not its own")

    def check_single_replicas(self):
        for name, why in SINGLE_REPLICA.items():
            sts = self.named("StatefulSet", name)
            if sts is not None and self.replicas(sts) != 1:
                self.err(sts, f"replicas {self.replicas(sts)}: must be exactly 1 ({why})")

    def check_ca_keys(self, workloads):
        """The service CA's key is no pod's: each finds the CA certificate as
        ca.crt of its own certificate's Secret. The user CA's key is the
        setup service's alone: whoever holds it can mint any user."""
        for w in workloads:
            spec, _ = self.pod_spec(w)
            setup = w["kind"] == "StatefulSet" and w["metadata"]["name"] == "srs"
            for vol, secret, keys in self.secret_mounts(spec):
                with_key = keys is None or CA_KEY_KEY in keys
                if secret == SERVICE_CA_SECRET and with_key:
                    self.err(w, f"volume {vol}: mounts the service CA key ({SERVICE_CA_SECRET!r}{'' if keys else ', every key'}); no pod may")
                if secret == USER_CA_SECRET and with_key and not setup:
                    self.err(w, f"volume {vol}: mounts the user CA key ({USER_CA_SECRET!r}{'' if keys else ', every key'}); only the setup service (srs) may: mount items [tls.crt] for tls.user_ca")

    def check_witness_keys(self, workloads):
        """Distinct witnesses have distinct keys: a Secret two pods mount
        would let either cosign in the other's name, and a quorum of w
        witnesses would be fewer independent parties than w."""
        users = {}
        for w in workloads:
            spec, _ = self.pod_spec(w)
            for secret in set(self.secret_volumes(spec).values()):
                if is_witness_secret(secret):
                    users.setdefault(secret, []).append(w["metadata"]["name"])
        for secret, names in sorted(users.items()):
            if len(names) > 1:
                self.err(None, f"{', '.join(sorted(names))} share the witness key Secret {secret!r}")

    def check_nodes(self):
        nodes = self.nodes()
        # A StatefulSet that runs a node must be named like one.
        for sts in self.of_kind("StatefulSet"):
            args = self.pod_spec(sts)[0]["containers"][0].get("args") or []
            runs_node = "--service" in args and args[args.index("--service") + 1:][:1] == [NODE_SERVICE]
            if runs_node and self.identity(sts) is None:
                self.err(sts, f"runs --service {NODE_SERVICE} but is not named srs-node-<i> (i = 1, 2, ...)")
        if not nodes:
            if self.named("StatefulSet", "srs") is not None:
                self.err(None, "the setup service srs is rendered without re-encryption nodes srs-node-<i>")
            return
        n = len(nodes)
        if sorted(nodes) != list(range(1, n + 1)):
            self.err(None, f"re-encryption nodes must be srs-node-1..srs-node-{n}, found indices {sorted(nodes)}")
        all_labels = {i: self.pod_spec(sts)[1] for i, sts in nodes.items()}
        workloads = [d for d in self.docs if d.get("kind") in WORKLOAD_KINDS]
        tls_secrets, thresholds = {}, {}
        for i, sts in sorted(nodes.items()):
            name = sts["metadata"]["name"]
            spec, labels = self.pod_spec(sts)
            if self.replicas(sts) != 1:
                self.err(sts, f"replicas {self.replicas(sts)}: a node is one pod (its identity, volume and OPRF share are one node's); add nodes as StatefulSets")
            # Identity: exactly .../service/srs-node/<i>, from its own Secret.
            mounted = set(self.secret_volumes(spec).values())
            for c in self.of_kind("Certificate"):
                # (The user CA's certificate, which every node mounts, is no identity.)
                if c["spec"]["secretName"] in mounted and not c["spec"].get("isCA"):
                    wrong = [u for u in c["spec"].get("uris") or [] if not u.endswith(f"/service/{NODE_SERVICE}/{i}")]
                    if wrong:
                        self.err(sts, f"mounts Certificate {c['metadata']['name']!r} whose identity {wrong} is not node {i}'s")
                    tls_secrets.setdefault(c["spec"]["secretName"], []).append(i)
            # Its own volume: a claim template (one PVC per StatefulSet), no shared claim.
            if not sts["spec"].get("volumeClaimTemplates"):
                self.err(sts, "no volumeClaimTemplates: a node keeps its kfrags on its own volume")
            for v in spec.get("volumes") or []:
                if "persistentVolumeClaim" in v:
                    self.err(sts, f"volume {v['name']}: a shared PersistentVolumeClaim; a node's data is on its own claim template")
            # Its own Service on 50054, selecting this node only.
            svc = self.named("Service", name)
            if svc is None:
                self.err(sts, f"no Service {name!r}: clients address every node by its own name")
            else:
                sel = {"matchLabels": svc["spec"].get("selector") or {}}
                others = [j for j, lab in all_labels.items() if j != i and self.selects(sel, lab)]
                if not self.selects(sel, labels):
                    self.err(svc, f"does not select node {i}'s pods")
                if others:
                    self.err(svc, f"selects other nodes' pods too ({', '.join(f'srs-node-{j}' for j in others)}): clients would reach a random node")
                ports = {p["port"]: p.get("targetPort", p["port"]) for p in svc["spec"].get("ports") or []}
                grpc = {p.get("name"): p["containerPort"] for p in spec["containers"][0].get("ports") or []}.get("grpc")
                if NODE_PORT not in ports:
                    self.err(svc, f"does not expose the node port {NODE_PORT}")
                elif ports[NODE_PORT] not in ("grpc", grpc) or grpc != NODE_PORT:
                    self.err(svc, f"port {NODE_PORT} does not reach the node's grpc port {NODE_PORT} (targetPort {ports[NODE_PORT]!r}, container {grpc})")
            # The threshold it was dealt with.
            t = (sts["metadata"].get("annotations") or {}).get(THRESHOLD_ANNOTATION)
            if t is None or not str(t).isdigit():
                self.err(sts, f"annotation {THRESHOLD_ANNOTATION} must be the threshold t (an integer), not {t!r}")
            else:
                thresholds[i] = int(t)
            # Production: no two nodes on one host.
            if self.production:
                terms = ((spec.get("affinity") or {}).get("podAntiAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or []
                if not any(
                    term.get("topologyKey") == HOSTNAME_TOPOLOGY
                    and all(self.selects(term.get("labelSelector"), lab) for j, lab in all_labels.items() if j != i)
                    and not term.get("namespaceSelector") and not term.get("namespaces")
                    for term in terms
                ):
                    self.err(sts, f"production: no required podAntiAffinity on {HOSTNAME_TOPOLOGY} against every other node: two nodes (two shares) could share a host")
        for secret, users in tls_secrets.items():
            if len(users) > 1:
                self.err(None, f"nodes {users} share the certificate Secret {secret!r}")
        # One threshold, and one PDB over all nodes that keeps t of them up.
        if len(set(thresholds.values())) > 1:
            self.err(None, f"nodes disagree on {THRESHOLD_ANNOTATION}: {thresholds}")
        if not thresholds:
            return
        t = min(thresholds.values())
        single = n == 1 and t == 1
        if not (1 <= t < n or single):
            self.err(None, f"threshold t = {t} with n = {n} nodes: need 1 <= t < n, or no node could ever be drained (t = n) or no grant could be served (t = 0)")
        pdbs = [p for p in self.of_kind("PodDisruptionBudget") if any(self.selects(p["spec"].get("selector"), lab) for lab in all_labels.values())]
        if len(pdbs) != 1:
            self.err(None, f"expected one PodDisruptionBudget over the re-encryption nodes, found {[p['metadata']['name'] for p in pdbs]}")
            return
        pdb = pdbs[0]
        missing = [i for i, lab in all_labels.items() if not self.selects(pdb["spec"].get("selector"), lab)]
        if missing:
            self.err(pdb, f"does not select nodes {missing}: it must cover all n = {n} nodes")
        strangers = [
            w["metadata"]["name"] for w in workloads
            if self.selects(pdb["spec"].get("selector"), self.pod_spec(w)[1])
            and not (w["kind"] == "StatefulSet" and NODE_NAME.match(w["metadata"]["name"]))
        ]
        if strangers:
            self.err(pdb, f"also selects {strangers}: it must count the nodes only")
        if single:
            # One node, t = 1: nothing can stay up through a drain of its host.
            if pdb["spec"].get("maxUnavailable") != 1:
                self.err(pdb, "with a single node (t = n = 1) it must be maxUnavailable: 1")
        elif "maxUnavailable" in pdb["spec"] or pdb["spec"].get("minAvailable") != t:
            self.err(pdb, f"must be minAvailable: {t} (the threshold {THRESHOLD_ANNOTATION}), found {dict((k, pdb['spec'][k]) for k in ('minAvailable', 'maxUnavailable') if k in pdb['spec'])}")

    # -- network flows -----------------------------------------------------

    def peer_matches(self, peer, src_labels):
        """A NetworkPolicy peer (from/to entry) against a pod of this
        namespace with src_labels. Pods of other namespaces and ipBlocks are
        not modelled: they match nothing here."""
        if "ipBlock" in peer:
            return False
        if "namespaceSelector" in peer:
            # Only {} (every namespace) surely includes this one; a labelled
            # selector names client namespaces, not ours.
            if peer["namespaceSelector"] not in ({}, None):
                return False
            return "podSelector" not in peer or self.selects(peer["podSelector"], src_labels)
        if "podSelector" in peer:
            return self.selects(peer["podSelector"], src_labels)
        return False

    @staticmethod
    def port_matches(rule, port, names):
        ports = rule.get("ports")
        if not ports:
            return True
        for p in ports:
            want = p.get("port")
            if want is None or want == port or (isinstance(want, str) and names.get(want) == port):
                return True
            if isinstance(want, int) and p.get("endPort") and want <= port <= p["endPort"]:
                return True
        return False

    def allowed(self, src, dst, port):
        """Would the NetworkPolicies let a pod with labels src open a
        connection to port of a pod (labels, named ports) dst, both in this
        namespace?"""
        dst_labels, dst_names = dst

        def side(pod_labels, kind, peers_key, peer_labels):
            # Isolated for `kind` if any policy of that type selects the pod;
            # then some rule of one of them must admit the connection.
            selecting = [np for np in self.of_kind("NetworkPolicy")
                         if kind in (np["spec"].get("policyTypes") or ["Ingress"])
                         and self.selects(np["spec"]["podSelector"], pod_labels)]
            if not selecting:
                return True
            for np in selecting:
                for rule in np["spec"].get(kind.lower()) or []:
                    peers = rule.get(peers_key)
                    if (not peers or any(self.peer_matches(p, peer_labels) for p in peers)) and self.port_matches(rule, port, dst_names):
                        return True
            return False

        return side(dst_labels, "Ingress", "from", src) and side(src, "Egress", "to", dst_labels)

    def check_flows(self, workloads):
        pods = {}
        for w in workloads:
            spec, labels = self.pod_spec(w)
            name = labels.get("app.kubernetes.io/name")
            if name:
                names = {p.get("name"): p["containerPort"] for c in spec["containers"] for p in c.get("ports") or []}
                pods.setdefault(name, []).append((w["metadata"]["name"], labels, names))
        pods[CLIENT] = [("a client pod", dict(CLIENT_LABELS), {})]

        def pairs(src, dst):
            for s_name, s_labels, _ in pods.get(src, []):
                for d_name, d_labels, d_names in pods.get(dst, []):
                    if s_name != d_name:
                        yield s_name, s_labels, d_name, (d_labels, d_names)

        for src, dst, port in REQUIRED_FLOWS:
            for s_name, s_labels, d_name, d in pairs(src, dst):
                if not self.allowed(s_labels, d, port):
                    self.err(None, f"NetworkPolicies refuse {s_name} -> {d_name}:{port}, a call of the mesh")
        for src, dst, port in FORBIDDEN_FLOWS:
            for s_name, s_labels, d_name, d in pairs(src, dst):
                if self.allowed(s_labels, d, port):
                    self.err(None, f"NetworkPolicies admit {s_name} -> {d_name}:{port}, which the mesh never needs")


def main(argv):
    paths, production, prod = [], False, set()
    for a in argv:
        if a == "--prod":
            production = True
        else:
            paths.append(a)
            if production:
                prod.add(a)
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    errors = []
    for path in paths:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        label = path.rsplit("/", 1)[-1] + (" (production)" if path in prod else "")
        errors += Checker(label, docs, production=path in prod).run()
    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)
    if errors:
        print(f"check_manifests: {len(errors)} problem(s)", file=sys.stderr)
        return 1
    print(f"check_manifests: {', '.join(p.rsplit('/', 1)[-1] for p in paths)}: all rules hold")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
