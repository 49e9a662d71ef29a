//! The mesh on shared storage: PostgreSQL for metadata, a real Garage S3
//! cluster for ciphertext (both started on loopback by `sesphr-testkit`),
//! `sesphrd migrate` from a sled mesh, and `--check-config` of the
//! `[storage]` section.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{Sandbox, download, upload};
use sesphr_domain::pg::PgConfig;
use sesphr_identity::Role;
use sesphr_server::daemon::{DevMesh, DevOptions};
use sesphr_server::storage::{S3Settings, StorageSettings};
use sesphr_testkit::{Garage, Postgres};
use zeroize::Zeroizing;

/// Environment variables of a `sesphrd` run.
type Env = Vec<(String, String)>;

/// The `SESPHR_*` variables that put a service on `pg` (+ `garage`).
fn storage_env(pg_url: &str, garage: &Garage) -> Env {
    let s3 = garage.s3(0);
    vec![
        ("SESPHR_STORAGE_BACKEND".into(), "postgres".into()),
        ("SESPHR_POSTGRES_URL".into(), pg_url.into()),
        ("SESPHR_S3_ENDPOINT".into(), s3.endpoint),
        ("SESPHR_S3_BUCKET".into(), s3.bucket),
        ("SESPHR_S3_REGION".into(), s3.region),
        ("SESPHR_S3_ALLOW_HTTP".into(), "true".into()),
        ("SESPHR_S3_ACCESS_KEY_ID".into(), s3.access_key_id),
        ("SESPHR_S3_SECRET_ACCESS_KEY".into(), s3.secret_access_key),
    ]
}

fn shared_storage(pg_url: &str, garage: &Garage) -> StorageSettings {
    let s3 = garage.s3(0);
    StorageSettings::Postgres {
        pg: PgConfig::new(pg_url),
        s3: Some(Box::new(S3Settings {
            endpoint: s3.endpoint,
            region: s3.region,
            bucket: s3.bucket,
            prefix: String::new(),
            allow_http: true,
            access_key_id: s3.access_key_id,
            secret_access_key: Zeroizing::new(s3.secret_access_key),
        })),
    }
}

fn sesphrd(args: &[&str], env: &[(String, String)]) -> std::process::Output {
    Command::new(common::bin("sesphrd"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RUST_LOG", "warn")
        .output()
        .expect("sesphrd runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `sesphrd migrate` of one service; S3 is named to CloudStorage only (the
/// others refuse a section that is not theirs).
fn migrate(mesh_dir: &Path, service: &str, env: &[(String, String)]) -> std::process::Output {
    let config = mesh_dir.join("serve").join(format!("{service}.toml"));
    let env: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| service == "cloud-storage" || !k.starts_with("SESPHR_S3_"))
        .cloned()
        .collect();
    let env = &env[..];
    sesphrd(
        &["migrate", "--config", config.to_str().expect("utf-8 path")],
        env,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_mesh_moves_to_postgres_and_s3_with_every_record_grant_and_audit_entry() {
    // A mesh on sled, with records, a grant and an audit trail.
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let bob = s.practitioner("bob", Role::Doctor).await;
    let chart = upload(&alice, "medical", b"chart").await;
    let scan_bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let scan = upload(&alice, "medical", &scan_bytes).await;
    let policy = upload(&alice, "insurance", b"policy").await;
    alice
        .grant("medical", "bob", Default::default())
        .await
        .unwrap();
    assert_eq!(download(&bob, &chart.record_id).await.unwrap(), b"chart");
    let before = alice.verified_audit().await.expect("the sled log verifies");
    let dir = s.stop().await;
    let mesh_dir = dir.path().join("mesh");

    // On the test's own thread: the servers die with the thread that
    // started them, and a blocking-pool thread may end mid-test.
    let pg = Postgres::start().expect("postgres starts");
    let garage = Garage::start(1).expect("garage starts");
    // Loopback: no TLS to PostgreSQL here.
    let pg_url = format!("{}?sslmode=disable", pg.url());
    let env = storage_env(&pg_url, &garage);

    for (service, says) in [
        ("cloud-storage", "cloud-storage: copied 3 record(s)"),
        ("access-policy", "access-policy: copied 1 grant(s)"),
        ("srs", "srs: copied"),
    ] {
        let out = migrate(&mesh_dir, service, &env);
        assert!(
            out.status.success(),
            "migrate {service}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stdout).starts_with(says), "{}", text(&out.stdout));
    }
    // A second copy into a log that is no longer empty is refused, with
    // one readable line.
    let again = migrate(&mesh_dir, "access-policy", &env);
    assert!(!again.status.success());
    let err = text(&again.stderr);
    assert!(
        err.starts_with("sesphrd: ") && err.trim().lines().count() == 1,
        "{err}"
    );
    // Nodes stay on sled.
    let node = migrate(&mesh_dir, "srs-node-1", &env);
    assert!(!node.status.success());
    assert!(
        text(&node.stderr).contains("re-encryption nodes"),
        "{}",
        text(&node.stderr)
    );

    // The sled stores of the three services go away: what the mesh serves
    // now can only come from PostgreSQL and Garage.
    for service in ["cloud-storage", "access-policy", "srs"] {
        let from = mesh_dir.join(service);
        std::fs::rename(&from, mesh_dir.join(format!("{service}.sled-before"))).unwrap();
    }
    let mut opts = DevOptions::new(&mesh_dir).ephemeral();
    opts.audit_interval_ms = 250;
    opts.storage = shared_storage(&pg_url, &garage);
    let mesh = DevMesh::start(opts)
        .await
        .expect("the mesh starts on shared storage");
    mesh.wait_ready(common::PATIENCE).await.expect("ready");
    let s = Sandbox { mesh, dir };
    let alice = s.patient("alice").await;
    let bob = s.practitioner("bob", Role::Doctor).await;

    assert_eq!(download(&bob, &chart.record_id).await.unwrap(), b"chart");
    assert_eq!(download(&bob, &scan.record_id).await.unwrap(), scan_bytes);
    assert!(download(&bob, &policy.record_id).await.is_err());
    let listed = alice.list(None, None).await.unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    // New writes land there too, and the log goes on from the copied head
    // (alice's client checks the new head extends the one she pinned).
    let later = upload(&alice, "medical", b"follow-up").await;
    assert_eq!(
        download(&bob, &later.record_id).await.unwrap(),
        b"follow-up"
    );
    let after = alice
        .verified_audit()
        .await
        .expect("the moved log verifies");
    let (was, now) = (before.head.unwrap(), after.head.unwrap());
    assert!(now.size > was.size, "{} -> {}", was.size, now.size);
    s.shutdown().await;
}

#[test]
fn check_config_names_the_storage_but_never_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh");
    let out = sesphrd(
        &[
            "dev",
            "--data-dir",
            mesh.to_str().unwrap(),
            "--base-port",
            "0",
            "--configure-only",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config = |name: &str| {
        mesh.join("serve")
            .join(format!("{name}.toml"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    let env = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = [
            ("SESPHR_STORAGE_BACKEND", "postgres"),
            (
                "SESPHR_POSTGRES_URL",
                "postgres://app:hunter2@127.0.0.1:1/sesphr?sslmode=disable",
            ),
            ("SESPHR_S3_ENDPOINT", "http://127.0.0.1:1"),
            ("SESPHR_S3_ALLOW_HTTP", "true"),
            ("SESPHR_S3_BUCKET", "records"),
            ("SESPHR_S3_ACCESS_KEY_ID", "GKexample"),
            ("SESPHR_S3_SECRET_ACCESS_KEY", "s3-secret-value"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, val) in extra {
            v.retain(|(key, _)| key != k);
            v.push((k.to_string(), val.to_string()));
        }
        v
    };

    let ok = sesphrd(
        &[
            "serve",
            "--check-config",
            "--config",
            &config("cloud-storage"),
        ],
        &env(&[]),
    );
    let (stdout, stderr) = (text(&ok.stdout), text(&ok.stderr));
    assert!(ok.status.success(), "{stderr}");
    assert!(
        stdout.contains("storage: postgres at postgres://app:<redacted>@127.0.0.1:1/sesphr")
            && stdout.contains("s3://records/ at http://127.0.0.1:1"),
        "{stdout}"
    );
    for secret in ["hunter2", "s3-secret-value"] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret));
    }

    // Refusals, each one readable line naming the key, exit 64.
    let url_file = dir.path().join("pg.url");
    std::fs::write(
        &url_file,
        "postgres://app:hunter2@db/sesphr?sslmode=disable\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&url_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cases: [(&str, Env, &str); 5] = [
        (
            "cloud-storage",
            env(&[("SESPHR_POSTGRES_URL", "postgres://app@db.example/sesphr")]),
            "ca_file",
        ),
        (
            "cloud-storage",
            env(&[("SESPHR_S3_ENDPOINT", "http://s3.example")])
                .into_iter()
                .filter(|(k, _)| k != "SESPHR_S3_ALLOW_HTTP")
                .collect(),
            "plain http",
        ),
        ("srs-node-1", env(&[]), "not for re-encryption nodes"),
        (
            "access-policy",
            env(&[("SESPHR_STORAGE_BACKEND", "mongodb")]),
            "mongodb",
        ),
        (
            "srs",
            env(&[("SESPHR_POSTGRES_URL_FILE", url_file.to_str().unwrap())])
                .into_iter()
                .filter(|(k, _)| k != "SESPHR_POSTGRES_URL")
                .collect(),
            "chmod 600",
        ),
    ];
    for (service, env, says) in cases {
        let out = sesphrd(
            &["serve", "--check-config", "--config", &config(service)],
            &env,
        );
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{service}: {err}");
        assert!(err.contains(says), "{service}: {err}");
        assert!(
            !err.contains("hunter2") && !err.contains("s3-secret-value"),
            "{err}"
        );
    }
}
