//! The `sesphrd serve` configurations shipped with the Kubernetes deployment
//! (`deploy/k8s/base/<service>/sesphrd.toml`, turned into ConfigMaps by
//! kustomize) parse, validate, and are accepted by the real daemon's
//! `--check-config`; a broken one is refused with exit code 64.
//!
//! The TOMLs name the paths where the pods mount their certificates, which do
//! not exist here: the daemon runs with `SESPHR_*` overrides pointing at a
//! throwaway PKI with the deployment's two roots (a service CA for services,
//! nodes and operators; a user CA, the setup service's issuer), exactly as an
//! operator would override a single key.
//! `scripts/check-deploy.sh` checks the other side (that the manifests mount
//! those paths and expose those ports).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sesphr_identity::{Identity, Service};
use sesphr_mesh::pki::CertificateAuthority;
use sesphr_server::config::{
    DenyListSettings, ENV_AUDIT_LOG_KEY_FILE, ENV_AUDIT_LOG_PUBLIC_KEY_FILE, ENV_DATA_DIR,
    ENV_ISSUER_CERT, ENV_ISSUER_KEY, ENV_PEER_TIMEOUT_MS, ENV_SELF_REGISTRATION, ENV_TLS_CA,
    ENV_TLS_CERT, ENV_TLS_KEY, ENV_TLS_USER_CA, ENV_WITNESS_KEY_FILE, ServeConfig, ServeFile,
};

/// `sesphrd`'s exit code for a wrong configuration (`EX_USAGE`).
const EXIT_USAGE: i32 = 64;
const TRUST_DOMAIN: &str = "sesphr.local";
const NAMESPACE: &str = "sesphr";
const HEALTH_PORT: u16 = 8080;

fn toml_path(service: Service) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/k8s/base")
        .join(service.as_str())
        .join("sesphrd.toml")
}

fn shipped(service: Service) -> ServeFile {
    let path = toml_path(service);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn grpc_port(service: Service) -> u16 {
    match service {
        Service::CloudStorage => 50051,
        Service::Srs => 50052,
        Service::AccessPolicy => 50053,
    }
}

#[test]
fn shipped_configs_parse_and_validate() {
    for service in Service::ALL {
        let name = service.as_str();
        let cfg =
            ServeConfig::from_file(shipped(service), service, &HashMap::<String, String>::new())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(cfg.service, service.into());
        assert_eq!(cfg.trust_domain, TRUST_DOMAIN, "{name}");
        assert_eq!(cfg.listen.port(), grpc_port(service), "{name}: listen");
        assert_eq!(
            cfg.health_listen.map(|a| a.port()),
            Some(HEALTH_PORT),
            "{name}: the kubelet probes the plaintext health port"
        );
        assert!(
            cfg.data_dir.starts_with("/var/lib/sesphr"),
            "{name}: data_dir must be on the volume mounted at /var/lib/sesphr"
        );
        for (key, path) in [
            ("cert", &cfg.tls.cert),
            ("key", &cfg.tls.key),
            ("ca", &cfg.tls.ca),
        ] {
            assert!(
                path.starts_with("/etc/sesphr/tls"),
                "{name}: tls.{key} must come from the cert-manager Secret at /etc/sesphr/tls"
            );
        }
        assert_eq!(
            cfg.user_ca,
            Path::new("/etc/sesphr/user-ca/tls.crt"),
            "{name}: tls.user_ca is the user CA's certificate (Secret sesphr-user-ca, tls.crt)"
        );
        match service {
            Service::AccessPolicy => assert_eq!(
                cfg.setup_endpoint.as_deref(),
                Some(format!("https://srs.{NAMESPACE}.svc:50052").as_str()),
                "{name}: access_policy.setup_endpoint"
            ),
            Service::CloudStorage | Service::Srs => {
                assert_eq!(cfg.setup_endpoint, None, "{name}");
                assert_eq!(
                    cfg.deny_list,
                    DenyListSettings {
                        poll_interval_ms: 1000,
                        max_staleness_ms: 5000
                    },
                    "{name}: [deny_list]"
                );
            }
        }
        match service {
            Service::CloudStorage | Service::Srs => assert_eq!(
                cfg.access_policy_endpoint.as_deref(),
                Some(format!("https://access-policy.{NAMESPACE}.svc:50053").as_str()),
                "{name}"
            ),
            Service::AccessPolicy => assert_eq!(cfg.access_policy_endpoint, None),
        }
        match (&cfg.srs, service) {
            (Some(srs), Service::Srs) => {
                assert!(srs.issuer_cert.starts_with("/etc/sesphr/issuer"));
                assert!(srs.issuer_key.starts_with("/etc/sesphr/issuer"));
                assert_eq!(
                    srs.self_registrations_per_minute, None,
                    "the shipped TOML keeps self-registration off (production)"
                );
                assert_eq!(srs.user_cert_validity_days, 30);
            }
            (None, Service::CloudStorage | Service::AccessPolicy) => {}
            (srs, _) => panic!("{name}: unexpected SRS settings {srs:?}"),
        }
    }
    // The dev overlay turns self-registration on with the environment.
    let env = HashMap::from([(ENV_SELF_REGISTRATION.to_owned(), "true".to_owned())]);
    let cfg = ServeConfig::from_file(shipped(Service::Srs), Service::Srs, &env).unwrap();
    assert_eq!(
        cfg.srs.unwrap().self_registrations_per_minute,
        Some(60),
        "SESPHR_SELF_REGISTRATION=true, at the TOML's rate"
    );
}

/// The two roots and, per service, a certificate from the service CA as
/// cert-manager would issue it (both usages, SPIFFE URI SAN, the Services'
/// DNS names), laid out like the mounted Secrets: `<service>/tls/` (the
/// leaf and the service CA as ca.crt), `user-ca/tls.crt` (what every pod
/// mounts), `issuer/` (the user CA with its key, the setup service's).
struct ThrowawayPki {
    dir: tempfile::TempDir,
}

impl ThrowawayPki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (ca, ca_key) = CertificateAuthority::generate(TRUST_DOMAIN).expect("service CA");
        let (user_ca, user_ca_key) =
            CertificateAuthority::generate_user_ca(TRUST_DOMAIN).expect("user CA");
        let issuer = dir.path().join("issuer");
        fs::create_dir_all(&issuer).unwrap();
        fs::write(issuer.join("tls.crt"), user_ca.cert_pem()).unwrap();
        fs::write(issuer.join("tls.key"), user_ca_key.as_bytes()).unwrap();
        // The service CA's key, as no pod has it: only to show the SRS refuses it.
        let service_issuer = dir.path().join("service-issuer");
        fs::create_dir_all(&service_issuer).unwrap();
        fs::write(service_issuer.join("tls.crt"), ca.cert_pem()).unwrap();
        fs::write(service_issuer.join("tls.key"), ca_key.as_bytes()).unwrap();
        fs::create_dir_all(dir.path().join("user-ca")).unwrap();
        fs::write(dir.path().join("user-ca/tls.crt"), user_ca.cert_pem()).unwrap();
        // The audit log's key pair and CloudStorage's witness key, as the
        // mounted Secrets hold them.
        sesphr_server::daemon::ensure_key_pair(&dir.path().join("audit"), "log").unwrap();
        sesphr_server::daemon::ensure_key_pair(&dir.path().join("witness"), "cloud-storage")
            .unwrap();
        for service in Service::ALL {
            let name = service.as_str();
            let dns = [
                name.to_owned(),
                format!("{name}.{NAMESPACE}.svc"),
                format!("*.{name}-headless.{NAMESPACE}.svc"),
            ];
            let dns: Vec<&str> = dns.iter().map(String::as_str).collect();
            let issued = ca
                .issue(&Identity::service(TRUST_DOMAIN, service), &dns, &[])
                .expect("service certificate");
            let tls = dir.path().join(name).join("tls");
            fs::create_dir_all(&tls).unwrap();
            fs::write(tls.join("tls.crt"), issued.cert_pem.as_bytes()).unwrap();
            fs::write(tls.join("tls.key"), issued.key_pem.as_bytes()).unwrap();
            fs::write(tls.join("ca.crt"), ca.cert_pem()).unwrap();
        }
        Self { dir }
    }

    /// The `SESPHR_*` overrides that replace the pod's mounted paths.
    fn env(&self, service: Service) -> Vec<(&'static str, PathBuf)> {
        let root = self.dir.path();
        let tls = root.join(service.as_str()).join("tls");
        let mut env = vec![
            (ENV_TLS_CERT, tls.join("tls.crt")),
            (ENV_TLS_KEY, tls.join("tls.key")),
            (ENV_TLS_CA, tls.join("ca.crt")),
            (ENV_TLS_USER_CA, root.join("user-ca/tls.crt")),
            (ENV_DATA_DIR, root.join(service.as_str()).join("db")),
        ];
        match service {
            Service::AccessPolicy => {
                env.push((ENV_AUDIT_LOG_KEY_FILE, root.join("audit/log.key")));
            }
            Service::CloudStorage => {
                env.push((ENV_WITNESS_KEY_FILE, root.join("witness/cloud-storage.key")));
                env.push((ENV_AUDIT_LOG_PUBLIC_KEY_FILE, root.join("audit/log.pub")));
            }
            Service::Srs => {}
        }
        if service == Service::Srs {
            env.push((ENV_ISSUER_CERT, root.join("issuer/tls.crt")));
            env.push((ENV_ISSUER_KEY, root.join("issuer/tls.key")));
        }
        env
    }
}

/// `sesphrd serve --service S --config FILE --check-config`, with only the
/// given `SESPHR_*` variables (none inherited from the test's environment).
fn check_config(
    service: Service,
    config: &Path,
    env: &[(&str, PathBuf)],
    extra: &[(&str, &str)],
) -> Output {
    let mut cmd = Command::new(crate::common::bin("sesphrd"));
    cmd.args(["serve", "--service", service.as_str(), "--config"])
        .arg(config)
        .arg("--check-config");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SESPHR_") {
            cmd.env_remove(key);
        }
    }
    for (key, value) in env {
        cmd.env(key, value);
    }
    for (key, value) in extra {
        cmd.env(key, value);
    }
    cmd.output().expect("run sesphrd")
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn sesphrd_check_config_accepts_the_shipped_configs() {
    let pki = ThrowawayPki::new();
    for service in Service::ALL {
        let out = check_config(service, &toml_path(service), &pki.env(service), &[]);
        assert_eq!(out.status.code(), Some(0), "{service}: {}", describe(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("configuration of {service} is valid")),
            "{service}: {}",
            describe(&out)
        );
    }
}

#[test]
fn sesphrd_check_config_reads_the_mounted_files() {
    // Without the overrides the shipped paths (/etc/sesphr/tls/...) are
    // missing on this machine: --check-config must notice, not pass.
    if Path::new("/etc/sesphr/tls/tls.crt").exists() {
        return;
    }
    for service in Service::ALL {
        let out = check_config(service, &toml_path(service), &[], &[]);
        assert!(!out.status.success(), "{service}: {}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("/etc/sesphr/tls"),
            "{service}: {}",
            describe(&out)
        );
    }
}

#[test]
fn sesphrd_check_config_refuses_broken_configs_with_exit_64() {
    let pki = ThrowawayPki::new();
    let scratch = tempfile::tempdir().expect("temp dir");
    for service in Service::ALL {
        let name = service.as_str();
        let text = fs::read_to_string(toml_path(service)).unwrap();
        let listen = format!("listen = \"0.0.0.0:{}\"", grpc_port(service));
        assert!(
            text.contains(&listen),
            "{name}: expected `{listen}` in the shipped TOML"
        );
        let env = pki.env(service);
        let broken = [
            // A misspelt key (unknown keys are refused).
            ("typo", format!("{text}\nlisten_adress = \"0.0.0.0:1\"\n")),
            // A value that is no address.
            (
                "bad-listen",
                text.replace(&listen, "listen = \"everywhere\""),
            ),
            // health_listen on the mTLS port.
            (
                "same-port",
                text.replace("0.0.0.0:8080", &format!("0.0.0.0:{}", grpc_port(service))),
            ),
            // Not TOML at all.
            ("syntax", format!("{text}\n[tls\n")),
            // Without the user CA, users' certificates could not be checked.
            (
                "no-user-ca",
                without_line(&text, "user_ca = \"/etc/sesphr/user-ca/tls.crt\""),
            ),
            // The deny list polled as rarely as it may get stale.
            (
                "deny-list-staleness",
                format!(
                    "{}\n[deny_list]\npoll_interval_ms = 5000\nmax_staleness_ms = 5000\n",
                    without_section(&text, "[deny_list]")
                ),
            ),
        ];
        for (what, body) in broken {
            if what == "deny-list-staleness" && service == Service::AccessPolicy {
                continue; // AccessPolicy is the deny list's source
            }
            let path = scratch.path().join(format!("{name}-{what}.toml"));
            fs::write(&path, body).unwrap();
            // (Without the override too, or the override would stand in.)
            let env: Vec<_> = env
                .iter()
                .filter(|(k, _)| what != "no-user-ca" || *k != ENV_TLS_USER_CA)
                .cloned()
                .collect();
            let out = check_config(service, &path, &env, &[]);
            assert_eq!(
                out.status.code(),
                Some(EXIT_USAGE),
                "{name} {what}: {}",
                describe(&out)
            );
        }
        // A broken environment override is refused the same way.
        let out = check_config(
            service,
            &toml_path(service),
            &env,
            &[(ENV_PEER_TIMEOUT_MS, "soon")],
        );
        assert_eq!(
            out.status.code(),
            Some(EXIT_USAGE),
            "{name}: {}",
            describe(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(ENV_PEER_TIMEOUT_MS),
            "{name}: {}",
            describe(&out)
        );
    }
}

fn without_line(text: &str, line: &str) -> String {
    assert!(text.contains(line), "expected `{line}` in the shipped TOML");
    text.lines()
        .filter(|l| l.trim() != line)
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `text` without the TOML table `header` and its keys (up to the next table).
fn without_section(text: &str, header: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for l in text.lines() {
        if l.starts_with('[') {
            skipping = l.trim() == header;
        }
        if !skipping {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// What the old single-CA deployment had, and what AccessPolicy cannot do
/// without: each is refused by `--check-config` with the reason.
#[test]
fn sesphrd_check_config_refuses_the_old_and_the_unsafe() {
    let pki = ThrowawayPki::new();
    let scratch = tempfile::tempdir().expect("temp dir");
    let srs = fs::read_to_string(toml_path(Service::Srs)).unwrap();
    let policy = fs::read_to_string(toml_path(Service::AccessPolicy)).unwrap();
    let cases = [
        (
            Service::Srs,
            "enrollment-token",
            srs.replace(
                "[srs]\n",
                "[srs]\nenrollment_token_file = \"/etc/sesphr/enrollment/token\"\n",
            ),
            "srs.enrollment_token_file is gone",
        ),
        (
            Service::AccessPolicy,
            "no-setup-endpoint",
            without_line(
                &policy,
                &format!("setup_endpoint = \"https://srs.{NAMESPACE}.svc:50052\""),
            ),
            "access_policy.setup_endpoint is required",
        ),
    ];
    for (service, what, body, why) in cases {
        let path = scratch.path().join(format!("{what}.toml"));
        fs::write(&path, body).unwrap();
        let out = check_config(service, &path, &pki.env(service), &[]);
        assert_eq!(
            out.status.code(),
            Some(EXIT_USAGE),
            "{what}: {}",
            describe(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(why),
            "{what}: {}",
            describe(&out)
        );
    }
}

/// `--check-config` loads the roots a service will trust: a user CA file
/// that is not there is refused, and so is a setup service that would sign
/// users with the service CA (it could then mint services and operators).
#[test]
fn sesphrd_check_config_loads_both_roots() {
    let pki = ThrowawayPki::new();
    let root = pki.dir.path();
    for service in Service::ALL {
        let missing = root.join("nowhere/user-ca.crt");
        let out = check_config(
            service,
            &toml_path(service),
            &pki.env(service),
            &[(ENV_TLS_USER_CA, missing.to_str().unwrap())],
        );
        assert!(!out.status.success(), "{service}: {}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("nowhere/user-ca.crt"),
            "{service}: {}",
            describe(&out)
        );
    }
    let out = check_config(
        Service::Srs,
        &toml_path(Service::Srs),
        &pki.env(Service::Srs),
        &[
            (
                ENV_ISSUER_CERT,
                root.join("service-issuer/tls.crt").to_str().unwrap(),
            ),
            (
                ENV_ISSUER_KEY,
                root.join("service-issuer/tls.key").to_str().unwrap(),
            ),
        ],
    );
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("srs.issuer_cert is the service CA"),
        "{}",
        describe(&out)
    );
}

/// The re-encryption nodes' shared config (`deploy/k8s/base/srs-node`):
/// it parses as a node's, and `--check-config` accepts it for each node's
/// certificate and dealt share, and refuses a share or certificate that is
/// not that node's.
#[test]
fn the_shipped_node_config_serves_every_node_and_only_with_its_own_share() {
    use sesphr_server::config::{ENV_OPRF_SHARE_FILE, ENV_SETUP_ENDPOINT, ServiceKind};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s/base/srs-node/sesphrd.toml");
    let text = fs::read_to_string(&path).unwrap();
    let file: ServeFile = toml::from_str(&text).unwrap();
    let cfg = ServeConfig::from_file(
        file,
        ServiceKind::SrsNode,
        &HashMap::<String, String>::new(),
    )
    .unwrap();
    assert_eq!(cfg.listen.port(), 50054);
    assert_eq!(cfg.health_listen.map(|a| a.port()), Some(HEALTH_PORT));
    assert!(cfg.srs.is_none());
    let node = cfg.srs_node.expect("node settings");
    assert_eq!(
        node.setup_endpoint,
        format!("https://srs.{NAMESPACE}.svc:50052")
    );
    assert_eq!(node.oprf_share_file, Path::new("/etc/sesphr/oprf/share"));
    assert!(node.reencrypt_rate > 0.0);
    assert_eq!(
        cfg.access_policy_endpoint.as_deref(),
        Some(format!("https://access-policy.{NAMESPACE}.svc:50053").as_str())
    );

    assert_eq!(
        cfg.deny_list,
        DenyListSettings {
            poll_interval_ms: 1000,
            max_staleness_ms: 5000
        }
    );
    assert_eq!(cfg.user_ca, Path::new("/etc/sesphr/user-ca/tls.crt"));

    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = CertificateAuthority::generate(TRUST_DOMAIN).expect("CA");
    fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
    let (user_ca, _) = CertificateAuthority::generate_user_ca(TRUST_DOMAIN).expect("user CA");
    fs::write(dir.path().join("user-ca.crt"), user_ca.cert_pem()).unwrap();
    let dealing = dir.path().join("oprf");
    sesphr_server::dealing::deal(&dealing, 2, 3, None).unwrap();
    let witness_dir = dir.path().join("witness");
    sesphr_server::daemon::ensure_key_pair(&witness_dir, "log").unwrap();
    sesphr_server::daemon::ensure_key_pair(&witness_dir, "srs-node-1").unwrap();
    let run = |cert_id: Identity, share: u32| {
        let issued = ca.issue(&cert_id, &["srs-node-1"], &[]).unwrap();
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        fs::write(&cert, issued.cert_pem.as_bytes()).unwrap();
        fs::write(&key, issued.key_pem.as_bytes()).unwrap();
        let share = sesphr_server::dealing::share_path(
            &dealing,
            sesphr_identity::NodeIndex::new(share).unwrap(),
        );
        let mut cmd = Command::new(crate::common::bin("sesphrd"));
        cmd.args(["serve", "--service", "srs-node", "--config"])
            .arg(&path)
            .arg("--check-config");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SESPHR_") {
                cmd.env_remove(k);
            }
        }
        cmd.env(ENV_TLS_CERT, &cert)
            .env(ENV_TLS_KEY, &key)
            .env(ENV_TLS_CA, dir.path().join("ca.crt"))
            .env(ENV_TLS_USER_CA, dir.path().join("user-ca.crt"))
            .env(ENV_DATA_DIR, dir.path().join("db"))
            .env(ENV_OPRF_SHARE_FILE, share)
            .env(ENV_SETUP_ENDPOINT, "https://srs.sesphr.svc:50052")
            .env(
                sesphr_server::config::ENV_WITNESS_KEY_FILE,
                witness_dir.join("srs-node-1.key"),
            )
            .env(
                sesphr_server::config::ENV_AUDIT_LOG_PUBLIC_KEY_FILE,
                witness_dir.join("log.pub"),
            );
        cmd.output().unwrap()
    };
    for i in 1..=3 {
        let id = Identity::srs_node(TRUST_DOMAIN, sesphr_identity::NodeIndex::new(i).unwrap());
        let out = run(id, i);
        assert_eq!(out.status.code(), Some(0), "node {i}: {}", describe(&out));
    }
    let node1 = Identity::srs_node(TRUST_DOMAIN, sesphr_identity::NodeIndex::new(1).unwrap());
    let out = run(node1, 2);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("share 2 is not node 1's"),
        "{}",
        describe(&out)
    );
    let out = run(Identity::service(TRUST_DOMAIN, Service::Srs), 1);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a re-encryption node"),
        "{}",
        describe(&out)
    );
}

/// `sesphrd audit-keys` makes the log's and the witnesses' keys once, keeps
/// them on a second run, and prints an `[audit]` section a client accepts.
#[test]
fn audit_keys_are_made_once_and_printed_for_the_mesh_file() {
    let dir = tempfile::tempdir().unwrap();
    let run = |witnesses: &[&str]| {
        let mut cmd = Command::new(crate::common::bin("sesphrd"));
        cmd.args(["audit-keys", "--out"]).arg(dir.path());
        for w in witnesses {
            cmd.args(["--witness", w]);
        }
        cmd.output().unwrap()
    };
    let names = ["cloud-storage", "srs-node-1", "srs-node-2", "srs-node-3"];
    let first = run(&names);
    assert!(first.status.success(), "{}", describe(&first));
    let again = run(&names);
    assert_eq!(first.stdout, again.stdout, "the keys are kept");
    let printed: toml::Table = toml::from_str(&String::from_utf8(first.stdout).unwrap()).unwrap();
    let audit: sesphr_client::AuditSection = printed["audit"].clone().try_into().unwrap();
    let mut mesh = sesphr_client::MeshFile {
        trust_domain: TRUST_DOMAIN.into(),
        ca: PathBuf::from("ca.pem"),
        cloud_storage: String::new(),
        srs: String::new(),
        access_policy: String::new(),
        threshold: 0,
        srs_nodes: Vec::new(),
        timeouts: None,
        audit: Some(audit),
    };
    let keys = mesh.audit_log().unwrap();
    assert_eq!(keys.quorum, 3);
    assert_eq!(keys.witnesses.len(), 4);
    let log_pub = fs::read_to_string(dir.path().join("log.pub")).unwrap();
    assert_eq!(keys.log_key.to_hex(), log_pub.trim());
    mesh.audit.as_mut().unwrap().witnesses.pop();
    assert_eq!(
        mesh.audit_log().unwrap().quorum,
        3,
        "the printed quorum is kept"
    );
    let bad = run(&["mallory"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("witnesses are cloud-storage"));
}
