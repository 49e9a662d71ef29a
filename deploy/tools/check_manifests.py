#!/usr/bin/env python3
"""Checks rendered SeSPHR manifests for what schema validation cannot see.

Usage: check_manifests.py [--base BASE.yaml] [--prod] RENDERED.yaml...
                          [--prod RENDERED.yaml...]
       (output of `kubectl kustomize`; files after --prod are production
       renderings and also get the production rules; with --base, the
       rendering of the kustomize base, every other rendering's TOMLs must be
       the base's apart from [storage])

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
- each `sesphrd serve` TOML agrees with its StatefulSet or Deployment:
  ports, mount paths, the AccessPolicy and setup endpoints (the nodes' and
  AccessPolicy's) and the trust domain; a [deny_list] polls at least twice
  per staleness bound; production renderings: patients' self-registration
  is off; overlays change a TOML only in [storage] (--base);
- storage ([storage], with its SESPHR_* overrides): sled keeps data_dir on
  the pod's own volume (a claim template; never an emptyDir), postgres takes
  its URL from a mounted Secret file (sesphr-postgres-url, key uri; never
  in the ConfigMap or a literal env value) and the server's CA from another
  (ca.crt only; the rendered CloudNativePG Cluster's CA if there is one),
  CloudStorage on postgres also an https S3 endpoint, a bucket and its
  credentials file (Secret cloud-storage-s3); re-encryption nodes never use
  postgres; no pod mounts the URL or S3 Secret without using it, nor
  CloudNativePG's CA key, superuser, replication or server Secrets;
- replicas: the setup service is one StatefulSet replica, never
  autoscaled; a service on sled runs exactly one replica (each replica
  would be a separate store) and no HorizontalPodAutoscaler; AccessPolicy
  and CloudStorage may run as Deployments on postgres, then with at least 2
  pods (spec.replicas or the autoscaler's minReplicas); each service is
  one workload; every mesh container runs the same image;
- HorizontalPodAutoscalers (autoscaling/v2): they scale a rendered
  Deployment of AccessPolicy or CloudStorage, one each, minReplicas >= 2,
  maxReplicas >= minReplicas, spec.replicas (if set) in between, with
  metrics (CPU utilization needs CPU requests);
- PodDisruptionBudgets: every StatefulSet and Deployment has one, none
  blocks every eviction, and one over a scaled-out service keeps a pod up;
- PostgreSQL: a CloudNativePG Cluster (postgresql.cnpg.io/v1; no bundled
  schema, so its known fields are checked here) has at least 2 instances,
  synchronous replication, its storage size, an ingress NetworkPolicy, and
  (production) required anti-affinity; the connections every process may
  open at the autoscalers' maxReplicas fit its max_connections;
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
  AccessPolicy and setup, services on postgres -> the PostgreSQL instances,
  instance -> instance, CloudStorage -> its S3 endpoint's port) and refuse
  the ones that must not happen (node -> node, setup -> node, node or
  client -> PostgreSQL, ...); a mesh pod's egress to any address is DNS or,
  for CloudStorage on postgres, the S3 port only;
- kinds without a bundled schema are known ones: cert-manager.io/v1
  Certificate, Issuer, ...; postgresql.cnpg.io/v1 Cluster, ...;
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

# StatefulSets (or, for AccessPolicy and CloudStorage on shared storage,
# Deployments) named after their service (`--service <name>`, identity
# spiffe://<td>/service/<name>). "srs" is the setup service.
SERVICES = {"cloud-storage", "srs", "access-policy"}
# Exactly one replica: the setup service always; the others on sled, where a
# replica is a separate database.
SINGLE_REPLICA = {
    "srs": "the setup service is the single writer of the user directory and holds the user CA's key: a second replica would enroll users the first never knows",
    "access-policy": "on storage.backend = \"sled\" grants and the audit chain are one sled database: a second replica would fork them (backend = \"postgres\" lets it scale out)",
    "cloud-storage": "on storage.backend = \"sled\" a second replica would be a second, empty record store (backend = \"postgres\" with [storage.s3] lets it scale out)",
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
# Workloads that run a mesh service. AccessPolicy and CloudStorage may run as
# Deployments of several replicas on shared storage; the setup service and
# the nodes are StatefulSets.
MESH_KINDS = {"StatefulSet", "Deployment"}
SCALABLE = {"access-policy", "cloud-storage"}
# [storage] of `sesphrd serve` (crates/server/src/storage.rs).
BACKENDS = {"sled", "postgres"}
ENV_BACKEND = "SESPHR_STORAGE_BACKEND"
ENV_PG_URL = "SESPHR_POSTGRES_URL"
ENV_S3_KEY_ID = "SESPHR_S3_ACCESS_KEY_ID"
ENV_S3_SECRET = "SESPHR_S3_SECRET_ACCESS_KEY"
# SESPHR_* variable -> (section, key, type) it overrides.
STORAGE_ENV = {
    "SESPHR_POSTGRES_URL_FILE": ("postgres", "url_file", str),
    "SESPHR_POSTGRES_CA_FILE": ("postgres", "ca_file", str),
    "SESPHR_POSTGRES_MAX_CONNECTIONS": ("postgres", "max_connections", int),
    "SESPHR_S3_ENDPOINT": ("s3", "endpoint", str),
    "SESPHR_S3_BUCKET": ("s3", "bucket", str),
    "SESPHR_S3_REGION": ("s3", "region", str),
    "SESPHR_S3_PREFIX": ("s3", "prefix", str),
    "SESPHR_S3_ALLOW_HTTP": ("s3", "allow_http", bool),
    "SESPHR_S3_CREDENTIALS_FILE": ("s3", "credentials_file", str),
}
# The PostgreSQL URL (with its password and sslmode), key `uri`, and the S3
# credentials TOML, key `credentials.toml`: Secrets the operator creates.
POSTGRES_URL_SECRET = "sesphr-postgres-url"
POSTGRES_URL_KEY = "uri"
POSTGRES_CA_KEY = "ca.crt"
S3_SECRET = "cloud-storage-s3"
S3_SECRET_KEY = "credentials.toml"
OPERATOR_SECRETS |= {POSTGRES_URL_SECRET, S3_SECRET}
# storage.postgres.max_connections when unset (per process).
DEFAULT_PG_POOL = 16
PG_PORT = 5432
# CloudNativePG: the Secrets a Cluster <c> makes (<c>-app, -ca, ...); the
# CA's key and the superuser, replication and server Secrets are no
# sesphrd pod's business.
CNPG_API = "postgresql.cnpg.io/v1"
CNPG_KINDS = {"Cluster", "Backup", "ScheduledBackup", "Pooler", "Database", "ImageCatalog"}
CNPG_MADE = ("-app", "-ca", "-server", "-replication", "-superuser")
CNPG_FORBIDDEN = ("-server", "-replication", "-superuser")
CNPG_CA_KEY = "ca.key"
CNPG_CLUSTER_LABEL = "cnpg.io/cluster"
# PostgreSQL's defaults, and connections kept free for the operator's
# instance manager, monitoring and an operator's psql.
PG_DEFAULT_MAX_CONNECTIONS = 100
PG_DEFAULT_SUPERUSER_RESERVED = 3
PG_HEADROOM = 10
# The fields of a Cluster (CloudNativePG 1.25 to 1.30) the checks know, by
# path: a misspelt one would be silently pruned by the API server.
CNPG_CLUSTER_FIELDS = {
    "spec": {
        "affinity", "backup", "bootstrap", "certificates", "description", "enablePDB",
        "enableSuperuserAccess", "env", "envFrom", "ephemeralVolumeSource",
        "ephemeralVolumesSizeLimit", "externalClusters", "failoverDelay", "imageCatalogRef",
        "imageName", "imagePullPolicy", "imagePullSecrets", "inheritedMetadata", "instances",
        "livenessProbeTimeout", "logLevel", "managed", "maxSyncReplicas", "minSyncReplicas",
        "monitoring", "nodeMaintenanceWindow", "plugins", "podSecurityContext",
        "podSelectorRefs", "postgresGID", "postgresUID", "postgresql", "primaryLease",
        "primaryUpdateMethod", "primaryUpdateStrategy", "priorityClassName", "probes",
        "projectedVolumeTemplate", "replica", "replicationSlots", "resources",
        "schedulerName", "seccompProfile", "securityContext", "serviceAccountName",
        "serviceAccountTemplate", "smartShutdownTimeout", "startDelay", "stopDelay",
        "storage", "superuserSecret", "switchoverDelay", "tablespaces",
        "topologySpreadConstraints", "walStorage",
    },
    "spec.postgresql": {
        "enableAlterSystem", "extensions", "ldap", "parameters", "pg_hba", "pg_ident",
        "promotionTimeout", "shared_preload_libraries", "syncReplicaElectionConstraint",
        "synchronous",
    },
    "spec.postgresql.synchronous": {
        "dataDurability", "failoverQuorum", "maxStandbyNamesFromCluster", "method", "number",
        "nodeFailureDomainKeys", "podFailureDomainKeys", "standbyNamesPost", "standbyNamesPre",
    },
    "spec.storage": {"pvcTemplate", "resizeInUseVolumes", "size", "storageClass"},
    "spec.walStorage": {"pvcTemplate", "resizeInUseVolumes", "size", "storageClass"},
    "spec.affinity": {
        "additionalPodAffinity", "additionalPodAntiAffinity", "enablePodAntiAffinity",
        "nodeAffinity", "nodeSelector", "podAntiAffinityType", "tolerations", "topologyKey",
    },
    "spec.bootstrap": {"initdb", "pg_basebackup", "recovery"},
    "spec.bootstrap.initdb": {
        "builtinLocale", "dataChecksums", "database", "encoding", "icuLocale", "icuRules",
        "import", "locale", "localeCType", "localeCollate", "localeProvider", "options",
        "owner", "postInitApplicationSQL", "postInitApplicationSQLRefs", "postInitSQL",
        "postInitSQLRefs", "postInitTemplateSQL", "postInitTemplateSQLRefs", "secret",
        "walSegmentSize",
    },
    "spec.resources": {"claims", "limits", "requests"},
}
# Kinds the schemas do not cover (kubernetes-validate bundles none for
# them): only these, and only these versions.
CERT_MANAGER_API = "cert-manager.io/v1"
CERT_MANAGER_KINDS = {"Certificate", "Issuer", "ClusterIssuer", "CertificateRequest"}
# The S3 endpoint's port when its URL names none.
HTTPS_PORT = 443
DNS_PORT = 53
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
        # Per mesh workload name: its parsed TOML and effective [storage]
        # (check_serve_config fills them in).
        self.configs = {}
        self.storages = {}
        # CloudStorage on postgres: workload name -> the S3 endpoint's port.
        self.s3_ports = {}

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
        made |= {c + suffix for c in self.cnpg_clusters() for suffix in CNPG_MADE}
        return made

    def cnpg_clusters(self):
        """Names of the rendered CloudNativePG Clusters."""
        return [d["metadata"]["name"] for d in self.docs
                if d.get("apiVersion") == CNPG_API and d.get("kind") == "Cluster"]

    @staticmethod
    def identity(w):
        """(service, node index or None, SPIFFE path) of a StatefulSet (or,
        for a service, Deployment) that runs a mesh service, else None."""
        name = w["metadata"]["name"]
        if w.get("kind") not in MESH_KINDS:
            return None
        if name in SERVICES:
            return name, None, f"service/{name}"
        m = NODE_NAME.match(name)
        if m and w["kind"] == "StatefulSet":
            i = int(m.group(1))
            return NODE_SERVICE, i, f"service/{NODE_SERVICE}/{i}"
        return None

    def mesh_workloads(self):
        """StatefulSets and Deployments that run a mesh service."""
        return [w for w in self.docs if w.get("kind") in MESH_KINDS and self.identity(w)]

    def autoscalers_of(self, w):
        """The HorizontalPodAutoscalers whose target is w."""
        return [h for h in self.of_kind("HorizontalPodAutoscaler")
                if (h["spec"].get("scaleTargetRef") or {}).get("kind") == w["kind"]
                and (h["spec"].get("scaleTargetRef") or {}).get("name") == w["metadata"]["name"]]

    def pod_range(self, w):
        """(fewest, most) pods a workload runs: its autoscaler's range, else
        spec.replicas (1 when unset)."""
        hpas = self.autoscalers_of(w)
        if hpas:
            spec = hpas[0]["spec"]
            lo = spec.get("minReplicas", 1)
            return lo, max(lo, spec.get("maxReplicas", lo))
        r = self.replicas(w)
        return r, r

    def backend(self, w):
        """The effective storage backend of a mesh workload (None if its
        config could not be read)."""
        st = self.storages.get(w["metadata"]["name"])
        return st["backend"] if st else None

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
        self.check_known_kinds()
        for w in workloads:
            self.check_pod_security(w)
            self.check_references(w)
            self.check_probes(w)
            self.check_network_policy(w)
        for sts in self.of_kind("StatefulSet"):
            self.check_statefulset(sts)
        for d in self.of_kind("Deployment"):
            self.check_deployment(d)
        self.check_services(workloads)
        self.check_autoscalers()
        self.check_pdbs(workloads)
        self.check_network_policies()
        self.check_certificates()
        for w in self.mesh_workloads():
            self.check_serve_config(w)
        self.check_replicas()
        self.check_images()
        self.check_ca_keys(workloads)
        self.check_witness_keys(workloads)
        self.check_nodes()
        self.check_postgres()
        self.check_flows(workloads)
        self.check_open_egress()
        return self.errors

    def check_known_kinds(self):
        """Kinds the schemas cannot check must at least be ones that exist."""
        for d in self.docs:
            api, kind = d.get("apiVersion", ""), d.get("kind")
            group = api.split("/")[0] if "/" in api else ""
            if group == CERT_MANAGER_API.split("/")[0] and (api != CERT_MANAGER_API or kind not in CERT_MANAGER_KINDS):
                self.err(d, f"unknown kind {kind!r} of {api!r}: cert-manager's are {CERT_MANAGER_API} {sorted(CERT_MANAGER_KINDS)}")
            if group == CNPG_API.split("/")[0] and (api != CNPG_API or kind not in CNPG_KINDS):
                self.err(d, f"unknown kind {kind!r} of {api!r}: CloudNativePG's are {CNPG_API} {sorted(CNPG_KINDS)}")

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

    def check_deployment(self, d):
        spec, labels = self.pod_spec(d)
        if not self.selects(d["spec"]["selector"], labels):
            self.err(d, "selector does not match its own pod template")
        # Replicas of a Deployment share its volumes: a claim would be one
        # volume under several pods (and ReadWriteOnce refuses the second).
        for v in spec.get("volumes") or []:
            if "persistentVolumeClaim" in v and self.pod_range(d)[1] > 1:
                self.err(d, f"volume {v['name']}: a PersistentVolumeClaim shared by up to {self.pod_range(d)[1]} replicas")

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
            # (With an autoscaler, the fewest pods it may leave.)
            selected = [w for w in workloads if self.selects(pdb["spec"].get("selector"), self.pod_spec(w)[1])]
            pods = sum(self.pod_range(w)[0] if w["kind"] in ("StatefulSet", "Deployment", "ReplicaSet") else 1 for w in selected)
            min_available = pdb["spec"].get("minAvailable")
            max_unavailable = pdb["spec"].get("maxUnavailable")
            if isinstance(min_available, int) and selected and min_available >= pods:
                self.err(pdb, f"minAvailable {min_available} of {pods} selected pod(s): no pod could ever be evicted, every drain of their hosts would hang")
            if max_unavailable in (0, "0%"):
                self.err(pdb, "maxUnavailable 0: no pod could ever be evicted")
            # A scaled-out service keeps serving through a drain: the budget
            # must keep one of its pods up.
            if pods >= 2 and (
                min_available in (0, "0%")
                or max_unavailable == "100%"
                or (isinstance(max_unavailable, int) and max_unavailable >= pods)
            ):
                self.err(pdb, f"lets every one of the {pods} selected pods go at once ({dict((k, pdb['spec'][k]) for k in ('minAvailable', 'maxUnavailable') if k in pdb['spec'])}): a drain would stop the service; use maxUnavailable: 1 or minAvailable: 1")
        for w in workloads:
            if w["kind"] not in ("StatefulSet", "Deployment"):
                continue
            _, labels = self.pod_spec(w)
            if not any(self.selects(p["spec"].get("selector"), labels) for p in self.of_kind("PodDisruptionBudget")):
                self.err(w, "no PodDisruptionBudget selects it")

    def check_certificates(self):
        issuers = {d["metadata"]["name"] for d in self.of_kind("Issuer")}
        if self.mesh_workloads():
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
        for sts in self.mesh_workloads():
            ident = self.identity(sts)
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
            self.err(sts, f"--service {arg('--service')!r} does not match the {sts['kind']} name (expected {service!r})")
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
        self.configs[name] = cfg
        st = self.resolve_storage(cfg, c)
        self.storages[name] = st
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

        self.check_data_dir(sts, cfg.get("data_dir"), mounts, volumes, st["backend"])
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
            """path must be key want_key of the Secret want_secret (None:
            any), mounted; returns the Secret's name."""
            vol = under(path, "secret", what)
            if not vol:
                return None
            secret = volumes[vol]["secret"]
            rel = path[len(mounts[vol]) + 1:]
            items = secret.get("items")
            key = next((it["key"] for it in items if it["path"] == rel), None) if items else rel
            if want_secret is not None and secret["secretName"] != want_secret:
                self.err(sts, f"{what} is on Secret {secret['secretName']!r}, not {whose} {want_secret!r}")
            if key != want_key:
                self.err(sts, f"{what} {path!r} is not key {want_key!r} of the mounted Secret {secret['secretName']!r}")
            return secret["secretName"]

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
        self.check_storage(sts, service, st, secret_file)
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

    @staticmethod
    def resolve_storage(cfg, c):
        """The effective [storage] of a container: the TOML's, with the
        SESPHR_* overrides its env sets literally (`refs`: the variables set
        from a Secret or ConfigMap, whose values are unknown here)."""
        section = cfg.get("storage") if isinstance(cfg.get("storage"), dict) else {}
        parts = {
            "postgres": dict(section.get("postgres") or {}),
            "s3": dict(section.get("s3") or {}),
        }
        env = {e["name"]: e.get("value") for e in c.get("env") or [] if "valueFrom" not in e}
        refs = {e["name"] for e in c.get("env") or [] if "valueFrom" in e}
        for var, (part, key, kind) in STORAGE_ENV.items():
            if var in env:
                v = env[var]
                if kind is int:
                    v = int(v) if str(v).isdigit() else v
                elif kind is bool:
                    v = {"true": True, "false": False}.get(str(v), v)
                parts[part][key] = v
            elif var in refs:
                parts[part][key] = None  # set, value unknown
        backend = env.get(ENV_BACKEND, section.get("backend", "sled"))
        return {"backend": backend, **parts, "env": env, "refs": refs}

    def check_data_dir(self, w, path, mounts, volumes, backend):
        """data_dir: on the pod's own volume (a claim template) for sled; an
        emptyDir holds nothing that must outlive the pod, so only postgres
        may use one."""
        if not path:
            self.err(w, "TOML data_dir is not set")
            return
        hits = [(len(m), v) for v, m in mounts.items() if path == m or path.startswith(m + "/")]
        if not hits:
            self.err(w, f"TOML data_dir {path!r} is not on a mounted volume")
            return
        vol = max(hits)[1]
        templates = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates") or []}
        v = volumes.get(vol) or {}
        if vol in templates and vol not in volumes:
            return
        if "emptyDir" in v:
            if backend != "postgres":
                self.err(w, f"TOML data_dir {path!r} is on the emptyDir {vol!r} with storage.backend = {backend!r}: the sled store would be lost at every restart (a StatefulSet's claim template, or backend = \"postgres\")")
            return
        if "persistentVolumeClaim" in v:
            return
        self.err(w, f"TOML data_dir {path!r} is not on a claim template, PersistentVolumeClaim or emptyDir (volume {vol!r})")

    def check_storage(self, w, service, st, secret_file):
        """[storage]: where the service keeps its state."""
        backend, pg, s3, env, refs = st["backend"], st["postgres"], st["s3"], st["env"], st["refs"]
        if backend not in BACKENDS:
            self.err(w, f"storage.backend {backend!r} must be \"sled\" or \"postgres\"")
            return
        if service == NODE_SERVICE:
            if backend == "postgres" or pg or s3:
                self.err(w, "storage.backend = \"postgres\" is not for re-encryption nodes: one database would hold every node's key-fragment shares; each node keeps its own on sled, on its own volume")
            return
        if backend == "sled":
            if pg or s3:
                self.err(w, "[storage.postgres] / [storage.s3] are set but storage.backend is \"sled\" (sesphrd refuses this)")
            return
        # PostgreSQL: the URL (it holds the password) from a Secret's file.
        if "url" in pg:
            self.err(w, "TOML storage.postgres.url: the URL holds the database password, which has no place in a ConfigMap; name a mounted Secret's file in url_file")
        if ENV_PG_URL in env:
            self.err(w, f"env {ENV_PG_URL} has a literal value: the URL holds the database password; mount it from Secret {POSTGRES_URL_SECRET!r} (url_file)")
        if "url_file" in pg:
            if "url" in pg or ENV_PG_URL in env or ENV_PG_URL in refs:
                self.err(w, "storage.postgres: url_file and a url are both set (sesphrd refuses this)")
            if pg["url_file"] is not None:
                secret_file(pg["url_file"], "storage.postgres.url_file", POSTGRES_URL_SECRET, POSTGRES_URL_KEY, "the PostgreSQL URL Secret")
        elif ENV_PG_URL not in refs and "url" not in pg:
            self.err(w, f"storage.postgres.url_file is not set: backend = \"postgres\" needs the URL (key {POSTGRES_URL_KEY!r} of Secret {POSTGRES_URL_SECRET!r})")
        # The server's CA: its certificate only (TLS is required; the URL,
        # which could say sslmode=disable, is not visible here).
        if pg.get("ca_file", "") is not None:
            ca = secret_file(pg.get("ca_file"), "storage.postgres.ca_file", None, POSTGRES_CA_KEY, "the PostgreSQL CA")
            clusters = self.cnpg_clusters()
            if ca and len(clusters) == 1 and ca != clusters[0] + "-ca":
                self.err(w, f"storage.postgres.ca_file is on Secret {ca!r}, not the CA of the rendered CloudNativePG Cluster ({clusters[0] + '-ca'!r})")
        pool = pg.get("max_connections", DEFAULT_PG_POOL)
        if pool is not None and (isinstance(pool, bool) or not isinstance(pool, int) or pool < 1):
            self.err(w, f"storage.postgres.max_connections {pool!r} must be a count of at least 1")
        timeout = pg.get("connect_timeout_ms")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or not 100 <= timeout <= 60_000):
            self.err(w, f"storage.postgres.connect_timeout_ms {timeout!r} must be 100 to 60000")
        # Ciphertext objects: CloudStorage's alone.
        if service != "cloud-storage":
            if s3:
                self.err(w, f"[storage.s3] is CloudStorage's ciphertext store, not {service}'s (sesphrd refuses this)")
            return
        endpoint = s3.get("endpoint")
        if endpoint is not None:
            u = urlsplit(endpoint or "")
            if u.scheme != "https" or not u.hostname:
                self.err(w, f"storage.s3.endpoint {endpoint!r} must be an https:// URL (allow_http is for loopback tests: ciphertext, object names and the S3 credentials' signatures would cross the network in clear)")
            else:
                try:
                    self.s3_ports[w["metadata"]["name"]] = u.port or HTTPS_PORT
                except ValueError:
                    self.err(w, f"storage.s3.endpoint {endpoint!r}: bad port")
        elif "endpoint" not in s3:
            self.err(w, "storage.s3.endpoint is not set: CloudStorage on backend = \"postgres\" keeps ciphertext in an S3 API bucket")
        if s3.get("allow_http"):
            self.err(w, "storage.s3.allow_http = true: only for loopback tests")
        if "bucket" not in s3 or s3["bucket"] == "":
            self.err(w, "storage.s3.bucket is not set")
        prefix = s3.get("prefix") or ""
        if prefix.startswith("/") or ".." in prefix:
            self.err(w, f"storage.s3.prefix {prefix!r} must be relative and without '..'")
        if ENV_S3_KEY_ID in env or ENV_S3_SECRET in env:
            self.err(w, f"env {ENV_S3_KEY_ID}/{ENV_S3_SECRET} with a literal value: the S3 key belongs in Secret {S3_SECRET!r} (storage.s3.credentials_file)")
        if "credentials_file" in s3:
            if s3["credentials_file"] is not None:
                secret_file(s3["credentials_file"], "storage.s3.credentials_file", S3_SECRET, S3_SECRET_KEY, "the S3 credentials Secret")
        elif not {ENV_S3_KEY_ID, ENV_S3_SECRET} <= refs:
            self.err(w, f"storage.s3.credentials_file is not set (key {S3_SECRET_KEY!r} of Secret {S3_SECRET!r})")

    def check_replicas(self):
        """The setup service: one StatefulSet replica. A service on sled: one
        replica, no autoscaler. A Deployment on postgres: at least 2 pods."""
        by_service = {}
        for w in self.mesh_workloads():
            service, index, _ = self.identity(w)
            if index is not None:
                continue  # the nodes: check_nodes
            by_service.setdefault(service, []).append(w)
            lo, hi = self.pod_range(w)
            hpas = self.autoscalers_of(w)
            backend = self.backend(w)
            replicas = self.replicas(w)
            if service == "srs" or backend == "sled":
                if w["kind"] != "StatefulSet":
                    self.err(w, f"runs as a {w['kind']}: {'the setup service' if service == 'srs' else 'a service on sled'} is a StatefulSet of one replica with its own volume")
                if replicas != 1 or hpas:
                    what = f"replicas {replicas}" + (f", autoscaled by {[h['metadata']['name'] for h in hpas]}" if hpas else "")
                    self.err(w, f"{what}: must be exactly 1 ({SINGLE_REPLICA[service]})")
            elif w["kind"] == "Deployment":
                if lo < 2:
                    self.err(w, f"runs {lo} pod(s) at the least: a scaled-out service needs at least 2 (its HorizontalPodAutoscaler's minReplicas, or spec.replicas), or a pod's restart stops it")
                if hpas and "replicas" in w["spec"] and not lo <= replicas <= hi:
                    self.err(w, f"spec.replicas {replicas} is outside its HorizontalPodAutoscaler's {lo}..{hi}: every apply would set it there and the autoscaler back (leave spec.replicas out)")
        for service, ws in sorted(by_service.items()):
            if len(ws) > 1:
                self.err(None, f"{service} runs as {' and '.join(w['kind'] + '/' + w['metadata']['name'] for w in ws)}: one workload per service (Services would send calls to both)")

    def check_autoscalers(self):
        targets = {}
        for h in self.of_kind("HorizontalPodAutoscaler"):
            spec = h["spec"]
            ref = spec.get("scaleTargetRef") or {}
            kind, name = ref.get("kind"), ref.get("name")
            if h.get("apiVersion") != "autoscaling/v2":
                self.err(h, f"apiVersion {h.get('apiVersion')!r}: autoscaling/v2")
            targets.setdefault((kind, name), []).append(h["metadata"]["name"])
            target = self.named(kind, name) if kind in MESH_KINDS else None
            if kind != "Deployment" or ref.get("apiVersion") != "apps/v1":
                self.err(h, f"scaleTargetRef {ref.get('apiVersion')}/{kind} {name!r}: only apps/v1 Deployments of {sorted(SCALABLE)} may be autoscaled")
            elif target is None:
                self.err(h, f"scaleTargetRef Deployment {name!r} is not a rendered Deployment")
            else:
                ident = self.identity(target)
                if ident is None or ident[0] not in SCALABLE:
                    self.err(h, f"scales {name!r}: only {sorted(SCALABLE)} scale out")
            lo, hi = spec.get("minReplicas", 1), spec.get("maxReplicas")
            if not isinstance(lo, int) or lo < 2:
                self.err(h, f"minReplicas {lo!r}: at least 2, or one pod's restart stops the service")
            if not isinstance(hi, int) or (isinstance(lo, int) and hi < lo):
                self.err(h, f"maxReplicas {hi!r} must be at least minReplicas {lo!r}")
            metrics = spec.get("metrics") or []
            if not metrics:
                self.err(h, "no metrics: it would only ever hold minReplicas (say a CPU target)")
            if target is not None:
                pod, _ = self.pod_spec(target)
                for m in metrics:
                    res = (m.get("resource") or {}) if m.get("type") == "Resource" else {}
                    if res.get("target", {}).get("type") == "Utilization":
                        missing = [c["name"] for c in pod["containers"] if res.get("name") not in ((c.get("resources") or {}).get("requests") or {})]
                        if missing:
                            self.err(h, f"{res.get('name')} utilization of containers {missing} without a {res.get('name')} request: the autoscaler cannot compute it")
        for (kind, name), hs in sorted(targets.items(), key=str):
            if len(hs) > 1:
                self.err(None, f"HorizontalPodAutoscalers {hs} all scale {kind}/{name}: they would fight")

    def check_images(self):
        """One mesh, one build: a rollout of mixed versions is a mistake."""
        images = {}
        for w in self.mesh_workloads():
            for c in self.pod_spec(w)[0]["containers"]:
                images.setdefault(c.get("image"), []).append(w["metadata"]["name"])
        if len(images) > 1:
            self.err(None, "the mesh runs several images: " + "; ".join(f"{img} ({', '.join(sorted(ws))})" for img, ws in sorted(images.items(), key=str)))

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
                self.check_database_secrets(w, vol, secret, keys)

    def check_database_secrets(self, w, vol, secret, keys):
        """PostgreSQL's and the bucket's credentials: only where they are
        used. CloudNativePG's CA key signs the database's certificates, its
        superuser, replication and server Secrets are the database's own."""
        ident = self.identity(w)
        service = ident[0] if ident else None
        backend = self.backend(w) if ident else None
        for c in self.cnpg_clusters():
            if secret == c + "-ca" and (keys is None or CNPG_CA_KEY in keys):
                self.err(w, f"volume {vol}: mounts the PostgreSQL CA key ({secret!r}{'' if keys else ', every key'}); mount items [{POSTGRES_CA_KEY}] for storage.postgres.ca_file")
            if secret in {c + suffix for suffix in CNPG_FORBIDDEN}:
                self.err(w, f"volume {vol}: mounts CloudNativePG's {secret!r}, which is the database's own (the services connect as the application user, {POSTGRES_URL_SECRET!r})")
        if secret == POSTGRES_URL_SECRET and (service is None or service == NODE_SERVICE or backend != "postgres"):
            self.err(w, f"volume {vol}: mounts the PostgreSQL URL Secret {POSTGRES_URL_SECRET!r} but does not use PostgreSQL{' (re-encryption nodes never touch the shared database)' if service == NODE_SERVICE else ''}")
        if secret == S3_SECRET and not (service == "cloud-storage" and backend == "postgres"):
            self.err(w, f"volume {vol}: mounts the S3 credentials {S3_SECRET!r}; only CloudStorage on backend = \"postgres\" uses the bucket")

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
        # A StatefulSet that runs a node must be named like one; a node is
        # never a Deployment (its identity, volume and share are one pod's).
        for sts in self.of_kind("StatefulSet") + self.of_kind("Deployment"):
            args = self.pod_spec(sts)[0]["containers"][0].get("args") or []
            runs_node = "--service" in args and args[args.index("--service") + 1:][:1] == [NODE_SERVICE]
            if runs_node and sts["kind"] != "StatefulSet":
                self.err(sts, f"runs --service {NODE_SERVICE} as a {sts['kind']}: a re-encryption node is a StatefulSet srs-node-<i> of one replica")
            elif runs_node and self.identity(sts) is None:
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

    # -- PostgreSQL ----------------------------------------------------------

    def postgres_users(self):
        """Mesh services on backend = "postgres" (never a node: that is an
        error of its own)."""
        return [w for w in self.mesh_workloads() if self.backend(w) == "postgres" and self.identity(w)[1] is None]

    def check_postgres(self):
        clusters = [d for d in self.docs if d.get("apiVersion") == CNPG_API and d.get("kind") == "Cluster"]
        for c in clusters:
            self.check_cnpg_cluster(c)
        users = self.postgres_users()
        if not users or len(clusters) != 1:
            return  # an external database, or several: the budget is unknown here
        # Every process may open its pool; at the autoscalers' maxReplicas
        # they must all fit, or the last ones in get "too many clients".
        params = ((clusters[0]["spec"].get("postgresql") or {}).get("parameters") or {})
        try:
            max_conn = int(params.get("max_connections", PG_DEFAULT_MAX_CONNECTIONS))
            reserved = int(params.get("superuser_reserved_connections", PG_DEFAULT_SUPERUSER_RESERVED))
        except ValueError:
            self.err(clusters[0], f"postgresql.parameters max_connections {params.get('max_connections')!r} / superuser_reserved_connections {params.get('superuser_reserved_connections')!r} are not numbers")
            return
        parts, total = [], 0
        for w in users:
            pool = self.storages[w["metadata"]["name"]]["postgres"].get("max_connections", DEFAULT_PG_POOL)
            if not isinstance(pool, int) or isinstance(pool, bool):
                continue
            most = self.pod_range(w)[1]
            total += most * pool
            parts.append(f"{w['metadata']['name']} {most} x {pool}")
        budget = max_conn - reserved - PG_HEADROOM
        if total > budget:
            self.err(clusters[0], f"max_connections {max_conn}: the services may open {total} connections ({', '.join(parts)}), more than the {budget} left after {reserved} reserved and {PG_HEADROOM} for the operator; raise max_connections or lower maxReplicas / storage.postgres.max_connections")

    def check_cnpg_cluster(self, c):
        spec = c.get("spec") or {}

        def walk(path, obj):
            known = CNPG_CLUSTER_FIELDS.get(path)
            if known is None or not isinstance(obj, dict):
                return
            for k, v in obj.items():
                if k not in known:
                    self.err(c, f"unknown field {path}.{k} (CloudNativePG would drop it)")
                else:
                    walk(f"{path}.{k}", v)

        walk("spec", spec)
        instances = spec.get("instances", 1)
        if not isinstance(instances, int) or isinstance(instances, bool) or instances < 2:
            self.err(c, f"instances {instances!r}: at least 2 (a primary and a standby to fail over to)")
        sync = ((spec.get("postgresql") or {}).get("synchronous") or {})
        number = sync.get("number", spec.get("minSyncReplicas", 0))
        if not isinstance(number, int) or number < 1:
            self.err(c, "no synchronous replication (postgresql.synchronous.number >= 1): a failover could lose committed grants and audit entries, and the witnesses would refuse an audit log that went back")
        elif isinstance(instances, int) and number >= instances:
            self.err(c, f"postgresql.synchronous.number {number} needs more than {number} instances")
        elif sync and (sync.get("method") not in ("any", "first") or sync.get("dataDurability", "required") != "required"):
            self.err(c, f"postgresql.synchronous: method any or first, dataDurability required (not {sync.get('method')!r}, {sync.get('dataDurability')!r})")
        if not (spec.get("storage") or {}).get("size") and not (spec.get("storage") or {}).get("pvcTemplate"):
            self.err(c, "storage.size is not set")
        if spec.get("enableSuperuserAccess") is True:
            self.err(c, "enableSuperuserAccess: true makes a superuser password Secret nothing here needs")
        labels = {CNPG_CLUSTER_LABEL: c["metadata"]["name"], "cnpg.io/podRole": "instance"}
        if not self.pod_policies(labels, "Ingress"):
            self.err(c, f"no NetworkPolicy of its own selects its pods ({CNPG_CLUSTER_LABEL}={c['metadata']['name']}) for Ingress")
        if self.production:
            aff = spec.get("affinity") or {}
            if aff.get("enablePodAntiAffinity") is False or aff.get("podAntiAffinityType") != "required" or aff.get("topologyKey", HOSTNAME_TOPOLOGY) != HOSTNAME_TOPOLOGY:
                self.err(c, f"production: affinity must be enablePodAntiAffinity, podAntiAffinityType: required, topologyKey {HOSTNAME_TOPOLOGY}: two instances on one host are one failure")

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
        # PostgreSQL: the services on postgres reach it, its instances reach
        # each other (replication); no other pod of the mesh, and no client.
        users = {w["metadata"]["name"] for w in self.postgres_users()}
        for c in self.cnpg_clusters():
            d_name = f"postgres {c}"
            d_labels = {CNPG_CLUSTER_LABEL: c, "cnpg.io/podRole": "instance", "cnpg.io/instanceRole": "primary"}
            d = (d_labels, {"postgresql": PG_PORT})
            if not self.allowed(dict(d_labels, **{"cnpg.io/instanceRole": "replica"}), d, PG_PORT):
                self.err(None, f"NetworkPolicies refuse {d_name} replica -> primary:{PG_PORT}: its standbys could not replicate")
            for app, sources in pods.items():
                for s_name, s_labels, _ in sources:
                    ok = self.allowed(s_labels, d, PG_PORT)
                    if s_name in users and not ok:
                        self.err(None, f"NetworkPolicies refuse {s_name} -> {d_name}:{PG_PORT}, its storage")
                    elif s_name not in users and ok:
                        self.err(None, f"NetworkPolicies admit {s_name} -> {d_name}:{PG_PORT}, which does not use PostgreSQL{' (nodes never touch the shared database)' if app == NODE_SERVICE else ''}")
        # CloudStorage on postgres -> its S3 endpoint (outside the namespace's pods).
        for w in self.mesh_workloads():
            port = self.s3_ports.get(w["metadata"]["name"])
            if port is not None and not self.egress_open(self.pod_spec(w)[1], port):
                self.err(None, f"NetworkPolicies refuse {w['metadata']['name']} -> its S3 endpoint's port {port} (storage.s3.endpoint): every upload and download would fail")

    def egress_open(self, src_labels, port):
        """May a pod with src_labels connect to port at an address outside
        the namespace's pods (a rule without `to`, or with an ipBlock)?"""
        selecting = [np for np in self.of_kind("NetworkPolicy")
                     if "Egress" in (np["spec"].get("policyTypes") or ["Ingress"])
                     and self.selects(np["spec"]["podSelector"], src_labels)]
        if not selecting:
            return True
        return any(
            (not rule.get("to") or any("ipBlock" in peer for peer in rule["to"])) and self.port_matches(rule, port, {})
            for np in selecting for rule in np["spec"].get("egress") or []
        )

    def check_open_egress(self):
        """A mesh pod reaches out to any address only for DNS and, CloudStorage
        on postgres, for its S3 endpoint: not to the internet at large."""
        mesh = [(w["metadata"]["name"], self.pod_spec(w)[1], {DNS_PORT} | ({self.s3_ports[w["metadata"]["name"]]} if w["metadata"]["name"] in self.s3_ports else set()))
                for w in self.mesh_workloads()]
        for np in self.of_kind("NetworkPolicy"):
            if "Egress" not in (np["spec"].get("policyTypes") or ["Ingress"]):
                continue
            for rule in np["spec"].get("egress") or []:
                if rule.get("to") and not any("ipBlock" in peer for peer in rule["to"]):
                    continue
                ports = rule.get("ports") or []
                for name, labels, allowed in mesh:
                    if not self.selects(np["spec"]["podSelector"], labels):
                        continue
                    bad = []
                    if not ports:
                        bad = ["every port"]
                    for p in ports:
                        lo, hi = p.get("port"), p.get("endPort") or p.get("port")
                        if not isinstance(lo, int) or any(q not in allowed for q in range(lo, hi + 1)):
                            bad.append(p.get("port", "every port") if not p.get("endPort") else f"{lo}-{hi}")
                    if bad:
                        self.err(np, f"open egress for {name} to any address on {bad}: only DNS ({DNS_PORT}){' and its S3 endpoint (' + str(sorted(allowed - {DNS_PORT})[0]) + ')' if len(allowed) > 1 else ''} may be")


def serve_configs(docs):
    """The `sesphrd serve` TOMLs of a rendering: ConfigMap name (without
    kustomize's hash suffix) -> settings, [storage] left out."""
    out = {}
    for d in docs:
        if d.get("kind") == "ConfigMap" and CONFIG_KEY in (d.get("data") or {}):
            try:
                cfg = tomllib.loads(d["data"][CONFIG_KEY])
            except tomllib.TOMLDecodeError:
                continue  # reported by the Checker
            cfg.pop("storage", None)
            out[re.sub(r"-[a-z0-9]{10}$", "", d["metadata"]["name"])] = cfg
    return out


def differences(a, b, prefix=""):
    """Dotted keys whose values differ between two parsed TOMLs."""
    out = []
    for k in sorted(set(a) | set(b)):
        key = f"{prefix}{k}"
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += differences(a[k], b[k], key + ".")
        elif a.get(k, "<unset>") != b.get(k, "<unset>"):
            out.append(key)
    return out


def compare_to_base(label, base, docs):
    """An overlay changes a service's settings by environment variables
    (visible in the pod spec), its TOML only in [storage]."""
    errors = []
    mine = serve_configs(docs)
    for name, cfg in sorted(serve_configs(base).items()):
        if name in mine and mine[name] != cfg:
            errors.append(f"{label}: ConfigMap/{name}: its sesphrd.toml differs from the base's in {differences(cfg, mine[name])}: an overlay changes only [storage] there (other settings: SESPHR_* variables in the pod spec)")
    return errors


def main(argv):
    paths, production, prod, base_path = [], False, set(), None
    args = iter(argv)
    for a in args:
        if a == "--prod":
            production = True
        elif a == "--base":
            base_path = next(args, None)
        else:
            paths.append(a)
            if production:
                prod.add(a)
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    base = None
    if base_path:
        with open(base_path) as f:
            base = [d for d in yaml.safe_load_all(f) if d]
    errors = []
    for path in paths:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        label = path.rsplit("/", 1)[-1] + (" (production)" if path in prod else "")
        errors += Checker(label, docs, production=path in prod).run()
        if base is not None and path != base_path:
            errors += compare_to_base(label, base, docs)
    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)
    if errors:
        print(f"check_manifests: {len(errors)} problem(s)", file=sys.stderr)
        return 1
    print(f"check_manifests: {', '.join(p.rsplit('/', 1)[-1] for p in paths)}: all rules hold")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
