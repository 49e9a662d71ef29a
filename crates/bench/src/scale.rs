//! The scale-out workload (`--only scale`): 1 MiB encrypted records up and
//! down at `stream_clients` clients through one and then two CloudStorage
//! replicas whose metadata is in PostgreSQL and ciphertext in a 3-node
//! Garage cluster, next to plain S3 PUT + GET of the same bytes to the same
//! Garage (what a user storing plaintext would pick instead).
//!
//! The servers are real: PostgreSQL and Garage as `sesphr-testkit` starts
//! them, `sesphrd dev` on PostgreSQL + S3, and a second CloudStorage as its
//! own `sesphrd serve` on the same storage.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStoreExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use sesphr_testkit::{Garage, Postgres};

use super::*;

/// A child process killed when dropped.
struct Replica(Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn storage_env(pg: &Postgres, garage: &Garage, node: usize) -> Vec<(String, String)> {
    let s3 = garage.s3(node);
    vec![
        ("SESPHR_STORAGE_BACKEND".into(), "postgres".into()),
        (
            "SESPHR_POSTGRES_URL".into(),
            format!("{}?sslmode=disable", pg.url()),
        ),
        ("SESPHR_S3_ENDPOINT".into(), s3.endpoint.clone()),
        ("SESPHR_S3_BUCKET".into(), s3.bucket.clone()),
        ("SESPHR_S3_REGION".into(), s3.region.clone()),
        ("SESPHR_S3_ALLOW_HTTP".into(), "true".into()),
        ("SESPHR_S3_ACCESS_KEY_ID".into(), s3.access_key_id.clone()),
        (
            "SESPHR_S3_SECRET_ACCESS_KEY".into(),
            s3.secret_access_key.clone(),
        ),
    ]
}

fn plain_s3(garage: &Garage) -> anyhow::Result<AmazonS3> {
    let s3 = garage.s3(0);
    Ok(AmazonS3Builder::new()
        .with_endpoint(&s3.endpoint)
        .with_region(&s3.region)
        .with_bucket_name(&s3.bucket)
        .with_access_key_id(&s3.access_key_id)
        .with_secret_access_key(s3.secret_access_key.as_str())
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .build()?)
}

/// Plain PUT then GET of 1 MiB per client and iteration.
async fn plain_s3_workload(store: Arc<AmazonS3>, n: usize, duration: Duration) -> Stats {
    let clients: Vec<Arc<(Arc<AmazonS3>, usize, Bytes)>> = (0..n)
        .map(|i| {
            Arc::new((
                store.clone(),
                i,
                Bytes::from(random_bytes(MIB, 1000 + i as u64)),
            ))
        })
        .collect();
    drive(&clients, duration, |c, iteration| async move {
        let (store, i, data) = &*c;
        let path = ObjectPath::from(format!("bench-plain/{i}/{iteration}"));
        store.put(&path, data.clone().into()).await.map_err(err)?;
        let got = store
            .get(&path)
            .await
            .map_err(err)?
            .bytes()
            .await
            .map_err(err)?;
        if got.len() != MIB {
            return Err(format!("got {} bytes back", got.len()));
        }
        Ok(2 * MIB as u64)
    })
    .await
}

/// Starts a second CloudStorage on the dev mesh's storage, on a free port;
/// returns it and the mesh file that points at it.
fn second_replica(
    o: &Options,
    d: &Daemon,
    env: &[(String, String)],
) -> anyhow::Result<(Replica, MeshFile)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let config = d.data_dir.join("serve").join("cloud-storage.toml");
    let mut child = Command::new(&o.sesphrd)
        .args(["serve", "--config"])
        .arg(&config)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env(sesphr_server::config::ENV_LISTEN, &listen)
        .env(
            sesphr_server::config::ENV_DATA_DIR,
            o.work_dir.join("cloud-storage-b"),
        )
        .env(sesphr_server::config::ENV_MAX_CONNECTIONS_PER_PEER, "4096")
        .env(sesphr_server::config::ENV_MAX_CONNECTIONS, "4096")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", o.sesphrd.display()))?;
    // "serving" is logged once the listener is bound and the store open.
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("serving") {
                let _ = tx.send(());
            }
        }
    });
    let replica = Replica(child);
    rx.recv_timeout(Duration::from_secs(60))
        .map_err(|_| anyhow::anyhow!("the second CloudStorage did not start in 60 s"))?;
    let mut mesh = d.mesh.clone();
    mesh.cloud_storage = format!("https://{listen}");
    Ok((replica, mesh))
}

pub(crate) async fn scale_rows(o: &Options, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    eprintln!("starting PostgreSQL and a 3-node Garage cluster ...");
    // Started on this thread (the runtime's main thread, which outlives
    // the run), never on a pool thread: the servers die with the thread
    // that started them (sesphr-testkit).
    let (pg, garage) = (Postgres::start()?, Garage::start(3)?);
    let n = o.stream_clients;

    eprintln!("plain S3 PUT + GET of 1 MiB with {n} clients ...");
    let plain = plain_s3_workload(Arc::new(plain_s3(&garage)?), n, o.duration).await;
    let plain_rate = plain.mib_per_sec();
    rows.push(Row {
        workload: "plain S3 PUT + GET of 1 MiB to Garage (baseline, no encryption)".into(),
        clients: n.to_string(),
        figure: String::new(),
        target: String::new(),
        met: None,
        stats: Some(plain),
    });

    let env = storage_env(&pg, &garage, 0);
    let d = Daemon::spawn_env(&o.sesphrd, &o.work_dir.join("scale-mesh"), &[], &env)?;
    let homes = enroll_many(
        &d.mesh,
        &o.work_dir.join("scale-users"),
        &d.operator()?,
        "scaler",
        n,
        Role::Patient,
    )
    .await?;
    eprintln!("1 MiB up + down through 1 CloudStorage replica ...");
    let one = updown_over(std::slice::from_ref(&d.mesh), &homes, o.duration).await?;
    let one_rate = one.mib_per_sec();
    rows.push(Row {
        workload: "encrypted 1 MiB record up + down, 1 CloudStorage on PostgreSQL + Garage".into(),
        clients: n.to_string(),
        figure: format!("{:.2}× plain S3", one_rate / plain_rate),
        target: String::new(),
        met: None,
        stats: Some(one),
    });

    let (replica, mesh_b) = second_replica(o, &d, &storage_env(&pg, &garage, 1))?;
    eprintln!("1 MiB up + down through 2 CloudStorage replicas ...");
    let two = updown_over(&[d.mesh.clone(), mesh_b], &homes, o.duration).await?;
    let two_rate = two.mib_per_sec();
    rows.push(Row {
        workload: "encrypted 1 MiB record up + down, 2 CloudStorage replicas, clients split".into(),
        clients: n.to_string(),
        figure: format!(
            "{:.2}× plain S3, {:.2}× 1 replica",
            two_rate / plain_rate,
            two_rate / one_rate
        ),
        target: String::new(),
        met: None,
        stats: Some(two),
    });
    drop(replica);

    // AccessPolicy's `Check` (each allowed and audited as its own entry):
    // on PostgreSQL every append is its own locked transaction, on sled
    // concurrent ones share a group commit. Same clients, same run.
    eprintln!(
        "AccessPolicy checks with {} clients, PostgreSQL ...",
        o.check_clients
    );
    let (pg_checks, pg_cpu) = check_workload(
        &d,
        &o.work_dir.join("scale-check-users"),
        o.check_clients,
        o.duration,
    )
    .await?;
    let sled = Daemon::spawn(&o.sesphrd, &o.work_dir.join("scale-sled-mesh"))?;
    eprintln!(
        "AccessPolicy checks with {} clients, sled ...",
        o.check_clients
    );
    let (sled_checks, sled_cpu) = check_workload(
        &sled,
        &o.work_dir.join("scale-sled-users"),
        o.check_clients,
        o.duration,
    )
    .await?;
    drop(sled);
    let ratio = pg_checks.ops_per_sec() / sled_checks.ops_per_sec();
    rows.push(Row {
        workload: "AccessPolicy `Check` (allowed, audited), sled (group commit)".into(),
        clients: o.check_clients.to_string(),
        figure: sled_cpu.describe(),
        target: String::new(),
        met: None,
        stats: Some(sled_checks),
    });
    rows.push(Row {
        workload: "AccessPolicy `Check` (allowed, audited), PostgreSQL".into(),
        clients: o.check_clients.to_string(),
        figure: format!("{ratio:.2}× sled; {}", pg_cpu.describe()),
        target: String::new(),
        met: None,
        stats: Some(pg_checks),
    });

    if o.memory_bytes > 0 {
        let bytes = o.memory_bytes;
        eprintln!(
            "one {} MiB record up and down on PostgreSQL + Garage ...",
            bytes >> 20
        );
        let p = Patient::open(&d.mesh, &homes[0])?;
        let (baseline, _) = d.memory();
        let t = Instant::now();
        let rec = p
            .upload(
                "medical",
                std::io::repeat(0x61).take(bytes),
                bytes,
                client::no_progress(),
            )
            .await?;
        let up = t.elapsed();
        let t = Instant::now();
        let got = download_len(&p, &rec.record_id)
            .await
            .map_err(anyhow::Error::msg)?;
        let down = t.elapsed();
        anyhow::ensure!(got == bytes, "downloaded {got} of {bytes} bytes");
        let (peak, _) = d.memory();
        let rate = |d: Duration| mib(bytes) / d.as_secs_f64();
        rows.push(Row {
            workload: format!(
                "one {} MiB record, PostgreSQL + Garage (multipart up, ranged reads down)",
                bytes >> 20
            ),
            clients: "1".into(),
            figure: format!(
                "up {:.0} MiB/s, down {:.0} MiB/s; mesh process peak RSS {:.0} MiB (baseline {:.0} MiB)",
                rate(up),
                rate(down),
                mib(peak),
                mib(baseline)
            ),
            target: "bounded memory".into(),
            met: Some(peak.saturating_sub(baseline) < 256 << 20),
            stats: None,
        });
    }
    drop(d);
    drop((pg, garage));
    Ok(())
}

/// Whether the run asked for the scale workload by name (it needs Garage,
/// built once per machine, so it is never part of "all").
pub(crate) fn wanted(o: &Options) -> bool {
    o.only.iter().any(|w| w == "scale")
}
