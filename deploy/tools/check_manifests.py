#!/usr/bin/env python3
"""Checks rendered SeSPHR manifests for what schema validation cannot see.

Usage: check_manifests.py RENDERED.yaml...   (output of `kubectl kustomize`)

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
- each `sesphrd serve` TOML agrees with its StatefulSet: ports, mount paths,
  the AccessPolicy endpoint and the trust domain.

Exits 1 listing every problem found.
"""

import sys
from urllib.parse import urlsplit

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

SERVICES = {"cloud-storage", "srs", "access-policy"}
# Secrets the operator creates by hand (deploy/README.md); an overlay may
# generate them instead (dev).
OPERATOR_SECRETS = {"srs-enrollment-token"}
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
    def __init__(self, label, docs):
        self.label = label
        self.docs = docs
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
            if sts["metadata"]["name"] in SERVICES:
                self.check_serve_config(sts)
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
        secrets = self.secret_names_made() | OPERATOR_SECRETS
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
        for w in workloads:
            if w["kind"] != "StatefulSet":
                continue
            _, labels = self.pod_spec(w)
            if not any(self.selects(p["spec"].get("selector"), labels) for p in self.of_kind("PodDisruptionBudget")):
                self.err(w, "no PodDisruptionBudget selects it")

    def check_certificates(self):
        issuers = {d["metadata"]["name"] for d in self.of_kind("Issuer")}
        for cert in self.of_kind("Certificate"):
            s = cert["spec"]
            ref = s.get("issuerRef", {})
            if ref.get("kind", "Issuer") == "Issuer" and ref.get("name") not in issuers:
                self.err(cert, f"issuerRef {ref.get('name')!r} is not a rendered Issuer")
            if (s.get("privateKey") or {}).get("encoding") != "PKCS8":
                self.err(cert, "privateKey.encoding must be PKCS8 (rustls/rcgen with ring read PKCS#8)")
            if not s.get("isCA") and not s.get("uris"):
                self.err(cert, "no SPIFFE URI SAN")
        for name in SERVICES:
            sts = self.named("StatefulSet", name)
            if sts is None:
                continue
            certs = [c for c in self.of_kind("Certificate") if any(u.endswith(f"/service/{name}") for u in c["spec"].get("uris") or [])]
            if len(certs) != 1:
                self.err(sts, f"expected one Certificate with URI SAN .../service/{name}, found {len(certs)}")
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
        spec, _ = self.pod_spec(sts)
        c = spec["containers"][0]
        args = c.get("args") or []

        def arg(flag):
            return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else None

        if arg("--service") != name:
            self.err(sts, f"--service {arg('--service')!r} does not match the StatefulSet name")
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
        certs = [x for x in self.of_kind("Certificate") if f"spiffe://{td}/service/{name}" in (x["spec"].get("uris") or [])]
        if not certs:
            self.err(sts, f"no Certificate names spiffe://{td}/service/{name} (trust_domain {td!r})")
        elif {volumes[v]["secret"]["secretName"] for v in tls_vols if v} != {certs[0]["spec"]["secretName"]}:
            self.err(sts, f"TOML [tls] files are not all from the Secret {certs[0]['spec']['secretName']!r}")
        if name in ("cloud-storage", "srs"):
            ep = cfg.get("access_policy_endpoint") or ""
            u = urlsplit(ep)
            ap_cert = next((x for x in self.of_kind("Certificate") if f"spiffe://{td}/service/access-policy" in (x["spec"].get("uris") or [])), None)
            ap_svc = self.named("Service", "access-policy")
            if u.scheme != "https":
                self.err(sts, f"access_policy_endpoint {ep!r} must be https://")
            host = u.hostname or ""
            svc_host = host.split(".")[0]
            if ap_svc is None or svc_host != "access-policy" or host.split(".")[1:2] not in ([], [ns]):
                self.err(sts, f"access_policy_endpoint host {host!r} is not the access-policy Service in namespace {ns!r}")
            elif u.port not in [p["port"] for p in ap_svc["spec"]["ports"]]:
                self.err(sts, f"access_policy_endpoint port {u.port} is not a port of Service access-policy")
            if ap_cert is not None and host not in (ap_cert["spec"].get("dnsNames") or []):
                self.err(sts, f"access_policy_endpoint host {host!r} is not a DNS SAN of AccessPolicy's certificate")
        if name == "srs":
            srs = cfg.get("srs") or {}
            issuer_vols = {under(srs.get(k), "secret", f"srs.{k}") for k in ("issuer_cert", "issuer_key")}
            ca_cert = next((x for x in self.of_kind("Certificate") if x["spec"].get("isCA")), None)
            if ca_cert and {volumes[v]["secret"]["secretName"] for v in issuer_vols if v} != {ca_cert["spec"]["secretName"]}:
                self.err(sts, f"srs.issuer_cert/issuer_key are not from the CA Secret {ca_cert['spec']['secretName']!r}")
            under(srs.get("enrollment_token_file"), "secret", "srs.enrollment_token_file")
        # Only the SRS may see the CA key.
        ca_secrets = {x["spec"]["secretName"] for x in self.of_kind("Certificate") if x["spec"].get("isCA")}
        if name != "srs" and any(v.get("secret", {}).get("secretName") in ca_secrets for v in volumes.values()):
            self.err(sts, "mounts the mesh CA key; only the SRS may")


def main(paths):
    errors = []
    for path in paths:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        label = path.rsplit("/", 1)[-1]
        errors += Checker(label, docs).run()
    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)
    if errors:
        print(f"check_manifests: {len(errors)} problem(s)", file=sys.stderr)
        return 1
    print(f"check_manifests: {', '.join(p.rsplit('/', 1)[-1] for p in paths)}: all rules hold")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
