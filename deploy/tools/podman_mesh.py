#!/usr/bin/env python3
"""Turn a rendered overlay (kubectl kustomize) into one `podman run` per StatefulSet.

scripts/image-test.sh runs the mesh from the image the way the manifests run
it, on one machine without a cluster. For every StatefulSet this writes
OUT/<name>/run.args (NUL-separated arguments for `podman run`),
OUT/<name>/volumes.txt (its data volumes: "NAME UID FSGROUP") and prints one
line "NAME GRPC_ADDR HEALTH_ADDR READINESS_SERVICE" (the last is "-" for the
overall status). Taken from the manifests, not restated here:

- the container's args and env, its securityContext (runAsUser/runAsGroup/
  fsGroup, readOnlyRootFilesystem, capabilities.drop, allowPrivilegeEscalation),
  terminationGracePeriodSeconds, its probes' health port and service;
- every volume: the ConfigMap's sesphrd.toml, each Secret with its items and
  defaultMode (files owned root, group fsGroup, as the kubelet projects them),
  the emptyDir /tmp with its sizeLimit, the data volumeClaimTemplate (a named
  podman volume, kept across runs of the container).

What changes: every container shares the host's network (loopback), so each
listens on its own 127.0.0.1 port. The TOML is the ConfigMap's (the base
TOML) with only `listen`, `health_listen` and the peers' https://<svc>.<ns>.svc
URLs rewritten to the addresses in the clients' mesh.toml; any other
difference is an error. The Secrets' contents come from a `sesphrd dev
--configure-only` PKI (a stand-in for cert-manager's and the operator's
Secrets); a Secret this script does not know is an error.
"""

import argparse
import os
import re
import shutil
import sys
import tomllib
from pathlib import Path

import yaml

REWRITTEN_KEYS = {"listen", "health_listen", "access_policy_endpoint", "setup_endpoint"}


def fail(msg):
    print(f"podman_mesh: {msg}", file=sys.stderr)
    sys.exit(1)


def host_port(url):
    m = re.fullmatch(r"https://([^/]+)", url)
    if not m:
        fail(f"not an https://host:port URL in mesh.toml: {url}")
    return m.group(1)


def mesh_addresses(mesh):
    """StatefulSet name -> the https:// URL clients use for it."""
    urls = {
        "cloud-storage": mesh["cloud_storage"],
        "srs": mesh["srs"],
        "access-policy": mesh["access_policy"],
    }
    for node in mesh.get("srs_nodes", []):
        urls[f"srs-node-{node['index']}"] = node["url"]
    return urls


def secret_files(name, pki):
    """The keys of a Secret the manifests mount, as files of the dev PKI."""
    if name == "sesphr-user-ca":
        return {"tls.crt": pki / "user-ca.pem", "tls.key": pki / "user-ca.key", "ca.crt": pki / "user-ca.pem"}
    if name == "access-policy-log-key":
        return {"log.key": pki / "audit" / "log.key"}
    if name == "audit-log-public-key":
        return {"log.pub": pki / "audit" / "log.pub"}
    if m := re.fullmatch(r"(srs-node-\d+)-oprf", name):
        return {"share": pki / "oprf" / f"{m.group(1)}.share"}
    if m := re.fullmatch(r"(.+)-witness", name):
        return {"witness.key": pki / "witness" / f"{m.group(1)}.key"}
    if m := re.fullmatch(r"(.+)-tls", name):
        return {"tls.crt": pki / f"{m.group(1)}.pem", "tls.key": pki / f"{m.group(1)}.key", "ca.crt": pki / "ca.pem"}
    fail(f"unknown Secret {name}: say in podman_mesh.py which file stands in for it")


def rewrite_toml(text, listen, health, urls, namespace):
    def peer(m):
        svc = m.group(1)
        if svc not in urls:
            fail(f"TOML names {m.group(0)}, which no mesh.toml address stands for")
        return urls[svc]

    out = []
    for line in text.splitlines(keepends=True):
        key = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith("#") else None
        new = line
        if key == "listen":
            new = re.sub(r'"[^"]*"', f'"{listen}"', line, count=1)
        elif key == "health_listen":
            new = re.sub(r'"[^"]*"', f'"{health}"', line, count=1)
        elif key in REWRITTEN_KEYS:
            new = re.sub(rf"https://([a-z0-9-]+)\.{namespace}\.svc(?:\.cluster\.local)?:\d+", peer, line)
        if new != line and key not in REWRITTEN_KEYS:
            fail(f"would change a line that is not an address: {line!r}")
        out.append(new)
    result = "".join(out)
    settings = "".join(x for x in out if not x.lstrip().startswith("#"))
    if f".{namespace}.svc" in settings or "0.0.0.0:" in settings:
        fail("an in-cluster address is left in the rewritten TOML")
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rendered", required=True, type=Path)
    ap.add_argument("--mesh", required=True, type=Path, help="the clients' mesh.toml (sesphrd dev --configure-only)")
    ap.add_argument("--pki", required=True, type=Path, help="its DIR/pki")
    ap.add_argument("--health-base", required=True, type=int, help="first host port for the health ports")
    ap.add_argument("--image", required=True)
    ap.add_argument("--prefix", required=True, help="container and volume name prefix")
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args()
    a.out = a.out.resolve()

    docs = [d for d in yaml.safe_load_all(a.rendered.read_text()) if d]
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    statefulsets = [d for d in docs if d["kind"] == "StatefulSet"]
    if not statefulsets:
        fail(f"no StatefulSet in {a.rendered}")
    with a.mesh.open("rb") as f:
        urls = mesh_addresses(tomllib.load(f))
    namespace = statefulsets[0]["metadata"].get("namespace", "sesphr")

    shutil.rmtree(a.out, ignore_errors=True)
    for n, ss in enumerate(statefulsets):
        name = ss["metadata"]["name"]
        if name not in urls:
            fail(f"StatefulSet {name} has no address in {a.mesh}")
        if ss["spec"].get("replicas", 1) != 1:
            fail(f"StatefulSet {name}: replicas {ss['spec']['replicas']}, this runs one container each")
        pod = ss["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        gid = csc.get("runAsGroup", psc.get("runAsGroup"))
        fs_group = psc.get("fsGroup")
        if uid is None or gid is None:
            fail(f"{name}: no runAsUser/runAsGroup")
        listen = host_port(urls[name])
        health_port = c["livenessProbe"]["grpc"]["port"]
        health = f"127.0.0.1:{a.health_base + n}"
        ready_service = c["readinessProbe"]["grpc"].get("service") or "-"
        if not any(p["containerPort"] == health_port and p.get("name") == "health" for p in c["ports"]):
            fail(f"{name}: the probes' port {health_port} is not the container's health port")

        cdir = a.out / name
        cdir.mkdir(parents=True)
        args = [
            "--detach", "--name", f"{a.prefix}{name}",
            "--network", "host",
            "--user", f"{uid}:{gid}",
            "--stop-timeout", str(pod.get("terminationGracePeriodSeconds", 30)),
        ]
        if fs_group is not None and fs_group != gid:
            args += ["--group-add", str(fs_group)]
        if csc.get("readOnlyRootFilesystem"):
            # Nothing writable but the volumes below (podman would otherwise
            # add its own tmpfs on /tmp, /var/tmp and /run).
            args += ["--read-only", "--read-only-tmpfs=false"]
        for cap in csc.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", cap]
        if csc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        for e in c.get("env", []):
            args += ["--env", f"{e['name']}={e['value']}"]

        volumes = {v["name"]: v for v in pod["volumes"]}
        claim_volumes = []
        claims = {t["metadata"]["name"] for t in ss["spec"].get("volumeClaimTemplates", [])}
        for m in c["volumeMounts"]:
            vname, path, ro = m["name"], m["mountPath"], m.get("readOnly", False)
            if vname in claims:
                # A PVC: a named podman volume, which the caller creates and
                # hands to fsGroup as the kubelet does (volumes.txt).
                vol = f"{a.prefix}{name}-{vname}"
                claim_volumes.append(f"{vol} {uid} {fs_group if fs_group is not None else gid}\n")
                # nocopy: nothing of the image's is copied into it (nor its owner).
                args += ["--volume", f"{vol}:{path}:rw,nocopy"]
                continue
            v = volumes[vname]
            host = cdir / "volumes" / vname
            if "configMap" in v:
                cm = configmaps[v["configMap"]["name"]]
                host.mkdir(parents=True)
                for key, text in cm["data"].items():
                    if key.endswith(".toml"):
                        text = rewrite_toml(text, listen, health, urls, namespace)
                    (host / key).write_text(text)
                    os.chmod(host / key, 0o644)
            elif "secret" in v:
                s = v["secret"]
                files = secret_files(s["secretName"], a.pki)
                items = s.get("items") or [{"key": k, "path": k} for k in files]
                mode = s.get("defaultMode", 0o644)
                host.mkdir(parents=True)
                for it in items:
                    if it["key"] not in files:
                        fail(f"{name}: Secret {s['secretName']} has no key {it['key']}")
                    dst = host / it.get("path", it["key"])
                    shutil.copyfile(files[it["key"]], dst)
                    os.chmod(dst, it.get("mode", mode))
                    os.chown(dst, 0, fs_group if fs_group is not None else gid)
            elif "emptyDir" in v:
                size = v["emptyDir"].get("sizeLimit", "64Mi").replace("Mi", "m").replace("Gi", "g")
                args += ["--tmpfs", f"{path}:rw,nosuid,nodev,size={size},mode=1777"]
                continue
            else:
                fail(f"{name}: volume {vname} of a kind this script does not run")
            os.chmod(host, 0o755)
            args += ["--volume", f"{host}:{path}:{'ro' if ro else 'rw'}"]

        args += [a.image, *c.get("args", [])]
        (cdir / "volumes.txt").write_text("".join(claim_volumes))
        (cdir / "run.args").write_bytes(b"".join(x.encode() + b"\0" for x in args))
        print(name, listen, health, ready_service)


if __name__ == "__main__":
    main()
