//! The mesh load generator behind `sesphr-bench` (see `docs/BENCHMARKS.md`,
//! section "Mesh").
//!
//! It drives a running `sesphrd dev` over mTLS with N concurrent clients for
//! a bounded time per workload, and prints throughput and p50/p99 latency:
//!
//! - `ReEncrypt` RPCs, next to the raw `reencrypt` operation rate on all
//!   cores measured in the same run;
//! - upload + download of 1 MiB records, next to the same bytes streamed over
//!   a plain tonic mTLS echo service ([`EchoServer`]: no crypto, no storage,
//!   run in a process of its own like the mesh) and over the same service
//!   writing, fsyncing and reading back what it moves (the durable
//!   baseline);
//! - a mixed patient/practitioner workload;
//! - the server's peak resident memory (VmHWM of a fresh `sesphrd`) while
//!   one 1 GiB record is uploaded and downloaded;
//! - revocation time with 10 and 10,000 records in the partition;
//! - AccessPolicy `Check`s per second from many CloudStorage connections,
//!   and many grantees reading at once.
//!
//! Every loop is bounded by time or count; everything talks to loopback.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, RngCore, SeedableRng};
use tonic::transport::Channel;

use sesphr::proto;
use sesphr_client::{self as client, MeshFile, Patient, Practitioner, Session};
use sesphr_crypto as crypto;
use sesphr_identity::Role;
use sesphr_mesh::tls::{self, TlsFiles, TlsMaterial};

mod echo;
pub use echo::{EchoChunk, EchoClient, EchoServer, EchoSize, serve_echo};

// ---- statistics ----------------------------------------------------------

/// What one workload measured.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub ops: u64,
    pub bytes: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Stats {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`-th percentile latency (0..=100), in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let mut v = self.latencies.clone();
        v.sort_unstable();
        let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[idx.min(v.len() - 1)].as_secs_f64() * 1e3
    }

    fn merge(&mut self, other: Stats) {
        self.ops += other.ops;
        self.bytes += other.bytes;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies.extend(other.latencies);
    }

    fn record(&mut self, started: Instant, result: Result<u64, String>) {
        match result {
            Ok(bytes) => {
                self.ops += 1;
                self.bytes += bytes;
                self.latencies.push(started.elapsed());
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

/// Runs `op(client, iteration)` in a loop on every client concurrently
/// until `duration` has passed. `op` returns the bytes it moved.
pub async fn drive<C, F, Fut>(clients: &[Arc<C>], duration: Duration, op: F) -> Stats
where
    C: Send + Sync + 'static,
    F: Fn(Arc<C>, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<u64, String>> + Send + 'static,
{
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .map(|c| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut stats = Stats::default();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let r = op(c.clone(), i).await;
                    stats.record(t, r);
                    i += 1;
                }
                stats
            })
        })
        .collect();
    let mut total = Stats::default();
    for t in tasks {
        total.merge(t.await.expect("load task panicked"));
    }
    total.elapsed = started.elapsed();
    total
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

// ---- processes -------------------------------------------------------------

/// A spawned `sesphrd dev` on free loopback ports.
pub struct Daemon {
    child: Child,
    pub mesh: MeshFile,
    pub data_dir: PathBuf,
}

impl Daemon {
    pub fn spawn(sesphrd: &Path, data_dir: &Path) -> anyhow::Result<Self> {
        Self::spawn_with(sesphrd, data_dir, &[])
    }

    /// [`spawn`](Self::spawn) with more `sesphrd dev` arguments (e.g.
    /// `--srs-nodes 5 --threshold 3`).
    pub fn spawn_with(sesphrd: &Path, data_dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_env(sesphrd, data_dir, extra, &[])
    }

    /// [`spawn_with`](Self::spawn_with) with more environment variables
    /// (e.g. the `SESPHR_STORAGE_*` ones).
    pub fn spawn_env(
        sesphrd: &Path,
        data_dir: &Path,
        extra: &[&str],
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(sesphrd)
            .args(["dev", "--data-dir"])
            .arg(data_dir)
            .args(["--base-port", "0"])
            .args(extra)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "error")
            // Every bench client connects from 127.0.0.1: one peer address
            // holds all the connections the per-peer cap would otherwise
            // spread over many hosts.
            .env(sesphr_server::config::ENV_MAX_CONNECTIONS_PER_PEER, "4096")
            .env(sesphr_server::config::ENV_MAX_CONNECTIONS, "4096")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", sesphrd.display()))?;
        let path = read_line_with(&mut child, "mesh file: ", Duration::from_secs(60))?;
        let mesh = MeshFile::load(Path::new(&path)).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Self {
            child,
            mesh,
            data_dir: data_dir.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak and current resident memory of the daemon, in bytes.
    pub fn memory(&self) -> (u64, u64) {
        proc_memory(self.pid())
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.data_dir.join("pki")
    }

    /// The dev operator, who invites the practitioners a run enrolls.
    pub fn operator(&self) -> anyhow::Result<client::admin::Admin> {
        Ok(client::admin::Admin::open(
            &self.mesh,
            &self.data_dir.join("operator"),
        )?)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM first: the daemon drains and closes its databases.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the child's stdout until a line starts with `prefix`; the rest of
/// the line. Later output is drained in the background.
fn read_line_with(child: &mut Child, prefix: &str, patience: Duration) -> anyhow::Result<String> {
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let prefix = prefix.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(&prefix) {
                let _ = tx.send(rest.to_owned());
            }
        }
    });
    rx.recv_timeout(patience)
        .map_err(|_| anyhow::anyhow!("the child did not report its address in time"))
}

/// VmHWM and VmRSS of a process, in bytes (0 if unknown).
pub fn proc_memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// CPU seconds (user + system) a process has used so far.
pub fn proc_cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU used by the server and by this load generator over a workload.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSplit {
    pub server: f64,
    pub client: f64,
    pub wall: f64,
}

impl CpuSplit {
    fn start(server_pid: u32) -> (u32, f64, f64, Instant) {
        (
            server_pid,
            proc_cpu_secs(&server_pid.to_string()),
            proc_cpu_secs("self"),
            Instant::now(),
        )
    }

    fn since((pid, s0, c0, t0): (u32, f64, f64, Instant)) -> Self {
        Self {
            server: proc_cpu_secs(&pid.to_string()) - s0,
            client: proc_cpu_secs("self") - c0,
            wall: t0.elapsed().as_secs_f64(),
        }
    }

    /// E.g. "server 1.2 cores, load generator 0.7 cores".
    pub fn describe(&self) -> String {
        format!(
            "server {:.2} cores, load generator {:.2} cores",
            self.server / self.wall,
            self.client / self.wall
        )
    }
}

/// A spawned `sesphr-bench echo-server`.
pub struct EchoProcess {
    child: Child,
    pub url: String,
}

impl EchoProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `store`: run the durable baseline, keeping its objects there.
    pub fn spawn(exe: &Path, pki: &Path, store: Option<&Path>) -> anyhow::Result<Self> {
        let mut cmd = Command::new(exe);
        cmd.args(["echo-server", "--pki"]).arg(pki);
        if let Some(dir) = store {
            cmd.arg("--store").arg(dir);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let addr = read_line_with(&mut child, "echo listening on ", Duration::from_secs(30))?;
        Ok(Self {
            child,
            url: format!("https://{addr}"),
        })
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// TLS material of a dev-PKI identity (`cloud-storage`, `operator`, …).
pub fn pki_tls(pki: &Path, name: &str) -> anyhow::Result<TlsMaterial> {
    Ok(TlsMaterial::load(&TlsFiles {
        cert: pki.join(format!("{name}.pem")),
        key: pki.join(format!("{name}.key")),
        ca: pki.join("ca.pem"),
    })?)
}

/// The echo server's TLS: the dev PKI's `name` identity, accepting client
/// certificates from both of the mesh's roots (services and operator from
/// the service CA, enrolled users from the user CA), as the mesh does.
pub fn echo_server_tls(pki: &Path, name: &str) -> anyhow::Result<TlsMaterial> {
    let read = |file: &str| {
        let path = pki.join(file);
        std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    };
    let roots = format!("{}\n{}", read("ca.pem")?, read("user-ca.pem")?);
    Ok(TlsMaterial::from_pem(
        read(&format!("{name}.pem"))?,
        zeroize::Zeroizing::new(read(&format!("{name}.key"))?),
        roots,
    )?)
}

// ---- users -------------------------------------------------------------------

/// Enrols `n` users named `{prefix}{i}` with `role`, concurrently:
/// patients register themselves, others by the operator's invitation.
async fn enroll_many(
    mesh: &MeshFile,
    homes: &Path,
    ops: &client::admin::Admin,
    prefix: &str,
    n: usize,
    role: Role,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        let futs = chunk.iter().map(|i| {
            let id = format!("{prefix}{i}");
            let home = homes.join(&id);
            async move {
                let invitation = ops.enrolment_invitation(&id, role).await?;
                client::enroll(mesh, &home, &id, role, &invitation).await?;
                Ok::<_, client::ClientError>(home)
            }
        });
        for r in futures::future::join_all(futs).await {
            out.push(r?);
        }
    }
    Ok(out)
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

async fn upload_bytes(
    p: &Patient,
    partition: &str,
    data: Vec<u8>,
) -> Result<client::Record, String> {
    let len = data.len() as u64;
    p.upload(
        partition,
        std::io::Cursor::new(data),
        len,
        client::no_progress(),
    )
    .await
    .map_err(err)
}

async fn download_len(s: &Session, record_id: &str) -> Result<u64, String> {
    let mut sink = CountingSink(0);
    s.download(record_id, &mut sink, client::no_progress())
        .await
        .map_err(err)?;
    Ok(sink.0)
}

struct CountingSink(u64);

impl std::io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// ---- workloads -----------------------------------------------------------------

/// Options of a run.
#[derive(Debug, Clone)]
pub struct Options {
    pub sesphrd: PathBuf,
    /// This binary (for the echo server process).
    pub exe: PathBuf,
    pub work_dir: PathBuf,
    pub duration: Duration,
    /// Concurrent clients of the ReEncrypt workload.
    pub reencrypt_clients: usize,
    /// Concurrent clients of the 1 MiB upload+download and echo workloads.
    pub stream_clients: usize,
    /// Concurrent clients of the mixed workload.
    pub mixed_clients: usize,
    /// Concurrent CloudStorage connections of the AccessPolicy `Check`
    /// workload.
    pub check_clients: usize,
    /// Concurrent grantees of the concurrent grantee-read workload.
    pub read_clients: usize,
    /// Record counts of the revocation workload.
    pub revoke_records: Vec<usize>,
    /// Size of the record streamed for the memory measurement (0: skip).
    pub memory_bytes: u64,
    /// Which workloads to run (empty: all).
    pub only: Vec<String>,
}

impl Options {
    fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

/// One row of the result table.
#[derive(Debug, Clone)]
pub struct Row {
    pub workload: String,
    pub clients: String,
    pub stats: Option<Stats>,
    /// Free text: the comparison or the measured figure.
    pub figure: String,
    pub target: String,
    pub met: Option<bool>,
}

/// The raw `reencrypt` rate on all cores (no network, no policy), and the
/// rate of the kfrag verification the SRS repeats on every call.
pub fn raw_crypto_rates(duration: Duration) -> (f64, f64) {
    let mut rng = rand::rng();
    let owner = crypto::SecretKey::generate(&mut rng);
    let grantee = crypto::SecretKey::generate(&mut rng);
    let signer = crypto::MasterSecret::generate(&mut rng).signing_key();
    let kfrags = crypto::generate_kfrags(&mut rng, &owner, &grantee.public_key(), &signer, 1, 1)
        .expect("kfrags");
    let (capsule, _) = crypto::encapsulate(&mut rng, &owner.public_key());
    let kfrag_bytes = kfrags[0].to_bytes().to_vec();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let run = |work: Arc<dyn Fn() + Send + Sync>| {
        let deadline = Instant::now() + duration;
        let started = Instant::now();
        let handles: Vec<_> = (0..cores)
            .map(|_| {
                let work = work.clone();
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        work();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        total as f64 / started.elapsed().as_secs_f64()
    };
    let kfrag = Arc::new(kfrags[0].clone());
    let cap = Arc::new(capsule);
    let reenc = run(Arc::new(move || {
        let _ = crypto::reencrypt(&mut rand::rng(), &cap, &kfrag);
    }));
    let (vk, dpk, rpk) = (
        signer.verifying_key(),
        owner.public_key(),
        grantee.public_key(),
    );
    let verify = run(Arc::new(move || {
        let k = crypto::KeyFrag::from_bytes(&kfrag_bytes).expect("kfrag parses");
        k.verify(&vk, &dpk, &rpk).expect("kfrag verifies");
    }));
    (reenc, verify)
}

/// ReEncrypt RPCs: `n` practitioners, each granted alice's `medical`.
async fn reencrypt_workload(
    d: &Daemon,
    homes: &Path,
    n: usize,
    batches: &[usize],
    duration: Duration,
) -> anyhow::Result<Vec<(usize, Stats, CpuSplit)>> {
    let ops = d.operator()?;
    enroll_many(&d.mesh, homes, &ops, "owner", 1, Role::Patient).await?;
    let alice = Patient::open(&d.mesh, &homes.join("owner0"))?;
    let rec = upload_bytes(&alice, "medical", b"lab results".to_vec())
        .await
        .map_err(anyhow::Error::msg)?;
    let docs = enroll_many(&d.mesh, homes, &ops, "doc", n, Role::Doctor).await?;
    for i in 0..n {
        alice
            .grant("medical", &format!("doc{i}"), Default::default())
            .await?;
    }
    let capsule = crypto::RecordHeader::from_bytes(&rec.record_header)?
        .capsule()
        .to_bytes()
        .to_vec();
    let clients: Vec<Arc<Practitioner>> = docs
        .iter()
        .map(|h| Practitioner::open(&d.mesh, h).map(Arc::new))
        .collect::<Result<_, _>>()?;
    // Warm the connections.
    for c in &clients {
        c.session.grants().await?;
    }
    let mut out = Vec::new();
    for &batch in batches {
        let req = proto::ReEncryptRequest {
            owner_id: rec.owner_id.to_string(),
            partition: rec.partition.to_string(),
            epoch: rec.epoch,
            capsules: vec![capsule.clone(); batch],
            record_id: rec.record_id.to_string(),
        };
        let cpu = CpuSplit::start(d.pid());
        let stats = drive(&clients, duration, move |c: Arc<Practitioner>, _| {
            // One node's throughput: node 1 answers every call.
            let mut node = c.session.clients.nodes.nodes[0].client.clone();
            let req = req.clone();
            async move {
                let r = node.re_encrypt(req).await.map_err(err)?.into_inner();
                if r.cfrags.len() != batch {
                    return Err("wrong number of results".into());
                }
                Ok(0)
            }
        })
        .await;
        out.push((batch, stats, CpuSplit::since(cpu)));
    }
    Ok(out)
}

/// AccessPolicy `Check`s as CloudStorage asks them: `n` connections with
/// the dev PKI's CloudStorage identity, each asking about its own granted
/// doctor (so every check is allowed and audited individually, none
/// coalesced).
async fn check_workload(
    d: &Daemon,
    homes: &Path,
    n: usize,
    duration: Duration,
) -> anyhow::Result<(Stats, CpuSplit)> {
    use sesphr::proto::access_policy_client::AccessPolicyClient;
    let ops = d.operator()?;
    enroll_many(&d.mesh, homes, &ops, "chkowner", 1, Role::Patient).await?;
    let owner = Patient::open(&d.mesh, &homes.join("chkowner0"))?;
    let rec = upload_bytes(&owner, "medical", b"lab results".to_vec())
        .await
        .map_err(anyhow::Error::msg)?;
    enroll_many(&d.mesh, homes, &ops, "chkdoc", n, Role::Doctor).await?;
    for i in 0..n {
        owner
            .grant("medical", &format!("chkdoc{i}"), Default::default())
            .await?;
    }
    let tls = pki_tls(&d.pki_dir(), "cloud-storage")?;
    let server = sesphr_identity::Identity::service(
        &d.mesh.trust_domain,
        sesphr_identity::Service::AccessPolicy,
    );
    let clients: Vec<Arc<(AccessPolicyClient<Channel>, proto::CheckRequest)>> = (0..n)
        .map(|i| {
            let ch = tls::channel(
                &d.mesh.access_policy,
                tls.client_config(),
                &server,
                Duration::from_secs(60),
            )?;
            let req = proto::CheckRequest {
                owner_id: rec.owner_id.to_string(),
                partition: rec.partition.to_string(),
                grantee_id: format!("chkdoc{i}"),
                grantee_role: proto::Role::Doctor as i32,
                epoch: rec.epoch,
                record_created_at: None,
                record_id: rec.record_id.to_string(),
                action: proto::CheckAction::Reencrypt as i32,
            };
            Ok(Arc::new((AccessPolicyClient::new(ch), req)))
        })
        .collect::<anyhow::Result<_>>()?;
    let check = |c: Arc<(AccessPolicyClient<Channel>, proto::CheckRequest)>, _| async move {
        let (client, req) = &*c;
        let r = client
            .clone()
            .check(req.clone())
            .await
            .map_err(err)?
            .into_inner();
        if !r.allowed {
            return Err(format!("denied: {}", r.reason));
        }
        Ok(0)
    };
    // Warm the connections.
    for c in &clients {
        check(c.clone(), 0).await.map_err(anyhow::Error::msg)?;
    }
    let cpu = CpuSplit::start(d.pid());
    let stats = drive(&clients, duration, check).await;
    Ok((stats, CpuSplit::since(cpu)))
}

/// `n` grantees reading one small record at once (each read: the record
/// from CloudStorage, then the cfrags from the nodes), on the run's mesh.
async fn concurrent_read_workload(
    d: &Daemon,
    homes: &Path,
    n: usize,
    duration: Duration,
) -> anyhow::Result<(Stats, CpuSplit)> {
    let ops = d.operator()?;
    enroll_many(&d.mesh, homes, &ops, "rdowner", 1, Role::Patient).await?;
    let owner = Patient::open(&d.mesh, &homes.join("rdowner0"))?;
    let rec = upload_bytes(&owner, "medical", b"lab results".to_vec())
        .await
        .map_err(anyhow::Error::msg)?;
    let docs = enroll_many(&d.mesh, homes, &ops, "rddoc", n, Role::Doctor).await?;
    for i in 0..n {
        owner
            .grant("medical", &format!("rddoc{i}"), Default::default())
            .await?;
    }
    let clients: Vec<Arc<Practitioner>> = docs
        .iter()
        .map(|h| Practitioner::open(&d.mesh, h).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let id = rec.record_id.to_string();
    // Warm the connections.
    for c in &clients {
        download_len(&c.session, &id)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    let cpu = CpuSplit::start(d.pid());
    let stats = drive(&clients, duration, move |c: Arc<Practitioner>, _| {
        let id = id.clone();
        async move { download_len(&c.session, &id).await }
    })
    .await;
    Ok((stats, CpuSplit::since(cpu)))
}

const MIB: usize = 1 << 20;

/// 1 MiB records: upload then download (the owner's own path: encrypt,
/// stream, store; fetch, stream, decrypt).
/// One grantee reading one small record again and again (each read: the
/// record from CloudStorage, then t cfrags from the nodes in parallel), on a
/// fresh `t`-of-`n` mesh; sequential, so the latency is the fan-out's.
async fn grantee_read_workload(
    o: &Options,
    (threshold, nodes): (u8, u8),
    duration: Duration,
) -> anyhow::Result<Stats> {
    let dir = o.work_dir.join(format!("read-{threshold}-of-{nodes}"));
    let _ = std::fs::remove_dir_all(&dir);
    let d = Daemon::spawn_with(
        &o.sesphrd,
        &dir.join("mesh"),
        &[
            "--srs-nodes",
            &nodes.to_string(),
            "--threshold",
            &threshold.to_string(),
        ],
    )?;
    let homes = dir.join("users");
    let ops = d.operator()?;
    enroll_many(&d.mesh, &homes, &ops, "owner", 1, Role::Patient).await?;
    let docs = enroll_many(&d.mesh, &homes, &ops, "reader", 1, Role::Doctor).await?;
    let alice = Patient::open(&d.mesh, &homes.join("owner0"))?;
    let rec = upload_bytes(&alice, "medical", b"lab results".to_vec())
        .await
        .map_err(anyhow::Error::msg)?;
    alice
        .grant("medical", "reader0", Default::default())
        .await?;
    let reader = Arc::new(Practitioner::open(&d.mesh, &docs[0])?);
    // Warm the connections to every node.
    download_len(&reader.session, rec.record_id.as_ref())
        .await
        .map_err(anyhow::Error::msg)?;
    let id = rec.record_id.to_string();
    Ok(drive(&[reader], duration, move |c: Arc<Practitioner>, _| {
        let id = id.clone();
        async move { download_len(&c.session, &id).await }
    })
    .await)
}

async fn updown_workload(
    d: &Daemon,
    homes: &Path,
    n: usize,
    duration: Duration,
) -> anyhow::Result<Stats> {
    let ops = d.operator()?;
    let homes = enroll_many(&d.mesh, homes, &ops, "streamer", n, Role::Patient).await?;
    updown_over(std::slice::from_ref(&d.mesh), &homes, duration).await
}

/// 1 MiB up + down per client and iteration, client `i` (profile
/// `homes[i]`) through `meshes[i % meshes.len()]`.
async fn updown_over(
    meshes: &[MeshFile],
    homes: &[PathBuf],
    duration: Duration,
) -> anyhow::Result<Stats> {
    let clients: Vec<Arc<(Patient, Vec<u8>)>> = homes
        .iter()
        .enumerate()
        .map(|(i, h)| {
            Ok(Arc::new((
                Patient::open(&meshes[i % meshes.len()], h)?,
                random_bytes(MIB, i as u64),
            )))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(drive(
        &clients,
        duration,
        |c: Arc<(Patient, Vec<u8>)>, _| async move {
            let (p, data) = &*c;
            let rec = upload_bytes(p, "medical", data.clone()).await?;
            let got = download_len(p, &rec.record_id).await?;
            if got != MIB as u64 {
                return Err(format!("downloaded {got} bytes"));
            }
            // The same bytes moved both ways (ciphertext, as on the wire).
            Ok(2 * rec.ciphertext_size)
        },
    )
    .await)
}

/// What the SDK sends for a record of `plain` bytes: the ciphertext's
/// length, and the chunk size (one message per segment, with its tag and
/// owner signature).
fn as_the_sdk_sends(plain: u64) -> (u64, usize) {
    let size = client::ciphertext_len(plain, crypto::record::DEFAULT_SEGMENT_SIZE as u64);
    let chunk = crypto::record::DEFAULT_SEGMENT_SIZE as usize + crypto::record::SEGMENT_OVERHEAD;
    (size, chunk)
}

/// The same bytes as the 1 MiB records over an echo server in a process of
/// its own (the durable one when `store` is given; its objects are removed
/// afterwards): up then down, in the chunks the SDK sends. Also the
/// server's and load generator's CPU.
async fn echo_workload(
    o: &Options,
    pki: &Path,
    store: Option<&Path>,
    tls: &[TlsMaterial],
) -> anyhow::Result<(Stats, CpuSplit)> {
    let (size, chunk) = as_the_sdk_sends(MIB as u64);
    let echo = EchoProcess::spawn(&o.exe, pki, store)?;
    let clients: Vec<Arc<EchoClient>> = tls
        .iter()
        .map(|t| EchoClient::connect(&echo.url, t).map(Arc::new))
        .collect::<anyhow::Result<_>>()?;
    let cpu = CpuSplit::start(echo.pid());
    let stats = drive(
        &clients,
        o.duration,
        move |c: Arc<EchoClient>, _| async move {
            let (up, object) = c.up(size, chunk).await.map_err(err)?;
            let down = c.down(size, chunk, object).await.map_err(err)?;
            if up != size || down != size {
                return Err(format!("echo moved {up}/{down} of {size} bytes"));
            }
            Ok(up + down)
        },
    )
    .await;
    let cpu = CpuSplit::since(cpu);
    drop(echo);
    if let Some(dir) = store {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok((stats, cpu))
}

/// A clinic at work: a quarter patients, the rest practitioners.
async fn mixed_workload(
    d: &Daemon,
    homes: &Path,
    n: usize,
    duration: Duration,
) -> anyhow::Result<(Stats, BTreeMap<&'static str, Stats>)> {
    let ops = d.operator()?;
    let n_patients = (n / 4).max(1);
    let n_staff = n.saturating_sub(n_patients).max(1);
    let p_homes = enroll_many(&d.mesh, homes, &ops, "patient", n_patients, Role::Patient).await?;
    let s_homes = enroll_many(&d.mesh, homes, &ops, "staff", n_staff, Role::Nurse).await?;
    let patients: Vec<Patient> = p_homes
        .iter()
        .map(|h| Patient::open(&d.mesh, h))
        .collect::<Result<_, _>>()?;
    // Each patient: 8 medical records of 16 KiB, granted to every staff member.
    let mut records: Vec<Vec<client::RecordId>> = Vec::new();
    for (pi, p) in patients.iter().enumerate() {
        let mut ids = Vec::new();
        for r in 0..8 {
            let rec = upload_bytes(p, "medical", random_bytes(16 << 10, (pi * 100 + r) as u64))
                .await
                .map_err(anyhow::Error::msg)?;
            ids.push(rec.record_id);
        }
        records.push(ids);
        for s in 0..n_staff {
            p.grant("medical", &format!("staff{s}"), Default::default())
                .await?;
        }
    }
    let records = Arc::new(records);
    enum Actor {
        Patient(Patient, usize),
        Staff(Practitioner),
    }
    let mut actors: Vec<Arc<Actor>> = patients
        .into_iter()
        .enumerate()
        .map(|(i, p)| Arc::new(Actor::Patient(p, i)))
        .collect();
    for h in &s_homes {
        actors.push(Arc::new(Actor::Staff(Practitioner::open(&d.mesh, h)?)));
    }
    let kinds = Arc::new(std::sync::Mutex::new(BTreeMap::<&'static str, Stats>::new()));
    let k2 = kinds.clone();
    let total = drive(&actors, duration, move |a: Arc<Actor>, i| {
        let records = records.clone();
        let kinds = k2.clone();
        async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(i ^ (Arc::as_ptr(&a) as u64));
            let roll: u32 = rng.random_range(0..100);
            let t = Instant::now();
            let (kind, r): (&'static str, Result<u64, String>) = match &*a {
                Actor::Staff(s) => {
                    let owner = rng.random_range(0..records.len());
                    if roll < 70 {
                        let id = &records[owner][rng.random_range(0..records[owner].len())];
                        ("staff: read a granted record", download_len(s, id).await)
                    } else if roll < 90 {
                        let owner_id = format!("patient{owner}");
                        (
                            "staff: list a patient's records",
                            s.list(Some(&owner_id), None).await.map(|_| 0).map_err(err),
                        )
                    } else {
                        (
                            "staff: list grants",
                            s.grants().await.map(|_| 0).map_err(err),
                        )
                    }
                }
                Actor::Patient(p, pi) => {
                    if roll < 40 {
                        let data = random_bytes(16 << 10, i);
                        (
                            "patient: upload 16 KiB",
                            upload_bytes(p, "medical", data).await.map(|_| 16 << 10),
                        )
                    } else if roll < 70 {
                        let id = &records[*pi][rng.random_range(0..records[*pi].len())];
                        ("patient: read own record", download_len(p, id).await)
                    } else if roll < 90 {
                        (
                            "patient: list own records",
                            p.list(None, None).await.map(|_| 0).map_err(err),
                        )
                    } else {
                        (
                            "patient: list grants",
                            p.grants().await.map(|_| 0).map_err(err),
                        )
                    }
                }
            };
            let mut k = kinds.lock().unwrap_or_else(|p| p.into_inner());
            k.entry(kind).or_default().record(t, r.clone());
            r
        }
    })
    .await;
    let mut per_kind = std::mem::take(&mut *kinds.lock().unwrap_or_else(|p| p.into_inner()));
    for s in per_kind.values_mut() {
        s.elapsed = total.elapsed;
    }
    Ok((total, per_kind))
}

/// What the one-big-record run measured.
struct BigRecord {
    baseline: u64,
    peak: u64,
    up: Duration,
    down: Duration,
    echo_up: Duration,
    echo_down: Duration,
    durable_up: Duration,
    durable_down: Duration,
}

/// Peak resident memory of a fresh daemon while one `bytes`-long record is
/// uploaded and downloaded, and the same bytes over the echo service.
async fn memory_workload(o: &Options, bytes: u64) -> anyhow::Result<BigRecord> {
    let dir = o.work_dir.join("memory");
    let d = Daemon::spawn(&o.sesphrd, &dir.join("mesh"))?;
    let homes = dir.join("users");
    enroll_many(&d.mesh, &homes, &d.operator()?, "big", 1, Role::Patient).await?;
    let p = Patient::open(&d.mesh, &homes.join("big0"))?;
    // A small record first, so the baseline includes every code path.
    upload_bytes(&p, "medical", vec![1; 4096])
        .await
        .map_err(anyhow::Error::msg)?;
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
    // The same bytes, one stream each way, over the plain echo service and
    // over the durable one.
    let tls = client::Profile::load(&homes.join("big0"))?.tls()?;
    let (size, chunk) = as_the_sdk_sends(bytes);
    let mut times = Vec::new();
    for store in [None, Some(dir.join("echo-objects"))] {
        let echo = EchoProcess::spawn(&o.exe, &d.pki_dir(), store.as_deref())?;
        let c = EchoClient::connect(&echo.url, &tls)?;
        let t = Instant::now();
        let (up, object) = c.up(size, chunk).await?;
        anyhow::ensure!(up == size, "echo up");
        let echo_up = t.elapsed();
        let t = Instant::now();
        anyhow::ensure!(c.down(size, chunk, object).await? == size, "echo down");
        times.push((echo_up, t.elapsed()));
    }
    let [(echo_up, echo_down), (durable_up, durable_down)] = times[..] else {
        unreachable!("two baselines were run")
    };
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(BigRecord {
        baseline,
        peak,
        up,
        down,
        echo_up,
        echo_down,
        durable_up,
        durable_down,
    })
}

/// Revocation latency with `records` records in the partition: `rounds`
/// grant/revoke cycles, only the revoke timed (AccessPolicy + SRS, as
/// `sesphr revoke` does it).
async fn revoke_workload(
    d: &Daemon,
    homes: &Path,
    records: usize,
    rounds: usize,
) -> anyhow::Result<(Stats, Duration)> {
    let ops = d.operator()?;
    let owner = format!("rev{records}x");
    enroll_many(&d.mesh, homes, &ops, &owner, 1, Role::Patient).await?;
    let grantee = format!("revdoc{records}x");
    enroll_many(&d.mesh, homes, &ops, &grantee, 1, Role::Doctor).await?;
    let (owner, grantee) = (format!("{owner}0"), format!("{grantee}0"));
    let p = Arc::new(Patient::open(&d.mesh, &homes.join(&owner))?);
    // Fill the partition: 32 uploads in flight, 64 bytes each.
    let t = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (p, next) = (p.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= records {
                        return Ok::<_, String>(());
                    }
                    // One identity uploading this fast meets its rate
                    // limit; like any client, wait and retry.
                    let mut tries = 0;
                    loop {
                        let len = 64;
                        let r = p
                            .upload(
                                "medical",
                                std::io::Cursor::new(vec![i as u8; len]),
                                len as u64,
                                client::no_progress(),
                            )
                            .await;
                        match r {
                            Ok(_) => break,
                            Err(e)
                                if e.code() == Some(tonic::Code::ResourceExhausted)
                                    && tries < 1000 =>
                            {
                                tries += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await?.map_err(anyhow::Error::msg)?;
    }
    let fill = t.elapsed();
    let listed = p.list(None, Some("medical")).await?.len();
    anyhow::ensure!(listed == records, "listed {listed} of {records} records");
    let mut stats = Stats::default();
    let mut revoking = Duration::ZERO;
    for _ in 0..rounds {
        p.grant("medical", &grantee, Default::default()).await?;
        let t = Instant::now();
        let r = p.revoke("medical", &grantee).await.map(|_| 0).map_err(err);
        revoking += t.elapsed();
        stats.record(t, r);
    }
    // ops/s counts revocations per second of revoking, grants excluded.
    stats.elapsed = revoking;
    Ok((stats, fill))
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// Runs the selected workloads and returns the table rows (on a failure,
/// what was measured until then goes to stderr).
mod scale;

pub async fn run(o: &Options) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let result = run_into(o, &mut rows).await;
    if result.is_err() && !rows.is_empty() {
        eprintln!("measured before the failure:\n{}", markdown(&rows));
    }
    result.map(|()| rows)
}

async fn run_into(o: &Options, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    sesphr_mesh::tls::install_crypto_provider();
    std::fs::create_dir_all(&o.work_dir)?;
    if scale::wanted(o) {
        scale::scale_rows(o, rows).await?;
        if o.only.len() == 1 {
            return Ok(());
        }
    }
    let d = Daemon::spawn(&o.sesphrd, &o.work_dir.join("mesh"))?;
    let homes = o.work_dir.join("users");
    eprintln!(
        "sesphrd dev running (pid {}), mesh file in {}",
        d.pid(),
        d.data_dir.display()
    );

    if o.wants("reencrypt") {
        eprintln!("raw crypto rates on all cores ...");
        let secs = o.duration.min(Duration::from_secs(5));
        let (raw, verify) = raw_crypto_rates(secs);
        rows.push(Row {
            workload: "raw `reencrypt` (in process, all cores)".into(),
            clients: format!(
                "{} threads",
                std::thread::available_parallelism().map_or(1, |n| n.get())
            ),
            stats: None,
            figure: format!("{raw:.0} ops/s; kfrag parse+verify {verify:.0} ops/s"),
            target: String::new(),
            met: None,
        });
        eprintln!("ReEncrypt RPCs with {} clients ...", o.reencrypt_clients);
        let runs =
            reencrypt_workload(&d, &homes, o.reencrypt_clients, &[1, 16], o.duration).await?;
        for (batch, s, cpu) in runs {
            let capsules = s.ops_per_sec() * batch as f64;
            let ratio = capsules / raw;
            let p99 = s.percentile_ms(99.0);
            if batch == 1 {
                rows.push(Row {
                    workload: "`ReEncrypt` RPC, 1 capsule per call".into(),
                    clients: o.reencrypt_clients.to_string(),
                    figure: format!("{ratio:.2}× raw; {}", cpu.describe()),
                    target: "≥ 0.8× raw, p99 < 20 ms".into(),
                    met: Some(ratio >= 0.8 && p99 < 20.0 && s.errors == 0),
                    stats: Some(s),
                });
            } else {
                rows.push(Row {
                    workload: format!("`ReEncrypt` RPC, {batch} capsules per call"),
                    clients: o.reencrypt_clients.to_string(),
                    figure: format!(
                        "{capsules:.0} capsules/s = {ratio:.2}× raw; {}",
                        cpu.describe()
                    ),
                    target: String::new(),
                    met: None,
                    stats: Some(s),
                });
            }
        }
    }
    if o.wants("read") {
        let mut base = None;
        for (t, n) in [(1u8, 1u8), (2, 3), (3, 5)] {
            eprintln!("grantee reads on a {t}-of-{n} mesh ...");
            let s = grantee_read_workload(o, (t, n), o.duration).await?;
            let p50 = s.percentile_ms(50.0);
            let base_p50 = *base.get_or_insert(p50);
            rows.push(Row {
                workload: format!("grantee read of a small record, {t}-of-{n} nodes"),
                clients: "1".into(),
                figure: format!(
                    "p50 {p50:.2} ms = {:.2}× 1-of-1, p99 {:.2} ms",
                    p50 / base_p50,
                    s.percentile_ms(99.0)
                ),
                target: "little more than the slowest of t parallel calls".into(),
                met: None,
                stats: Some(s),
            });
        }
    }
    if o.wants("check") {
        eprintln!("AccessPolicy checks with {} clients ...", o.check_clients);
        let (s, cpu) = check_workload(&d, &homes, o.check_clients, o.duration).await?;
        rows.push(Row {
            workload: "AccessPolicy `Check` (allowed, audited), from CloudStorage".into(),
            clients: o.check_clients.to_string(),
            figure: cpu.describe(),
            target: String::new(),
            met: None,
            stats: Some(s),
        });
    }
    if o.wants("concurrent-read") {
        eprintln!("grantee reads with {} clients ...", o.read_clients);
        let (s, cpu) = concurrent_read_workload(&d, &homes, o.read_clients, o.duration).await?;
        rows.push(Row {
            workload: format!(
                "grantee read of a small record, {} clients, {}-of-{} nodes",
                o.read_clients,
                d.mesh.threshold,
                d.mesh.srs_nodes.len()
            ),
            clients: o.read_clients.to_string(),
            figure: cpu.describe(),
            target: String::new(),
            met: None,
            stats: Some(s),
        });
    }
    if o.wants("updown") {
        eprintln!(
            "echo server and 1 MiB up+down with {} clients ...",
            o.stream_clients
        );
        let streamer_homes = enroll_many(
            &d.mesh,
            &homes,
            &d.operator()?,
            "echoer",
            o.stream_clients,
            Role::Patient,
        )
        .await?;
        let tls: Vec<TlsMaterial> = streamer_homes
            .iter()
            .map(|h| client::Profile::load(h).and_then(|p| p.tls()))
            .collect::<Result<_, client::ClientError>>()?;
        let (e, echo_cpu) = echo_workload(o, &d.pki_dir(), None, &tls).await?;
        let objects = o.work_dir.join("echo-objects");
        let (durable, durable_cpu) = echo_workload(o, &d.pki_dir(), Some(&objects), &tls).await?;
        let cpu = CpuSplit::start(d.pid());
        let s = updown_workload(&d, &homes, o.stream_clients, o.duration).await?;
        let cpu = CpuSplit::since(cpu);
        let ratio = s.mib_per_sec() / e.mib_per_sec();
        let durable_ratio = s.mib_per_sec() / durable.mib_per_sec();
        rows.push(Row {
            workload: "plain tonic mTLS echo, 1 MiB up + down (baseline)".into(),
            clients: o.stream_clients.to_string(),
            figure: echo_cpu.describe(),
            target: String::new(),
            met: None,
            stats: Some(e),
        });
        rows.push(Row {
            workload: "durable echo (writes + fsyncs, reads back), 1 MiB up + down".into(),
            clients: o.stream_clients.to_string(),
            figure: durable_cpu.describe(),
            target: String::new(),
            met: None,
            stats: Some(durable),
        });
        rows.push(Row {
            workload: "encrypted 1 MiB record upload + download".into(),
            clients: o.stream_clients.to_string(),
            figure: format!(
                "{ratio:.2}× echo, {durable_ratio:.2}× durable echo; {}",
                cpu.describe()
            ),
            target: "≥ 0.8× echo".into(),
            met: Some(ratio >= 0.8 && s.errors == 0),
            stats: Some(s),
        });
    }
    if o.wants("mixed") {
        eprintln!("mixed workload with {} clients ...", o.mixed_clients);
        let (total, kinds) = mixed_workload(&d, &homes, o.mixed_clients, o.duration).await?;
        rows.push(Row {
            workload: "mixed clinic workload (all operations)".into(),
            clients: o.mixed_clients.to_string(),
            figure: String::new(),
            target: String::new(),
            met: None,
            stats: Some(total),
        });
        for (kind, s) in kinds {
            rows.push(Row {
                workload: format!("  {kind}"),
                clients: String::new(),
                figure: String::new(),
                target: String::new(),
                met: None,
                stats: Some(s),
            });
        }
    }
    if o.wants("revoke") {
        let mut medians = Vec::new();
        for &n in &o.revoke_records {
            eprintln!("revocation with {n} records ...");
            let (s, fill) = revoke_workload(&d, &homes, n, 20).await?;
            medians.push(s.percentile_ms(50.0));
            rows.push(Row {
                workload: format!("revoke (AccessPolicy + SRS) with {n} records"),
                clients: "1".into(),
                figure: format!(
                    "filling took {:.1} s ({:.0} uploads/s)",
                    fill.as_secs_f64(),
                    n as f64 / fill.as_secs_f64()
                ),
                target: "independent of record count".into(),
                met: None,
                stats: Some(s),
            });
        }
        if medians.len() >= 2 {
            let (lo, hi) = (medians[0], medians[medians.len() - 1]);
            let same = hi <= lo * 2.0 + 1.0;
            if let Some(last) = rows.last_mut() {
                last.figure = format!("{}; median {:.2}× the smallest", last.figure, hi / lo);
                last.met = Some(same);
            }
        }
    }
    drop(d);
    if o.wants("memory") && o.memory_bytes > 0 {
        eprintln!(
            "memory: streaming {} MiB through a fresh sesphrd ...",
            mib(o.memory_bytes)
        );
        let big = memory_workload(o, o.memory_bytes).await?;
        let m = mib(o.memory_bytes);
        let rate = |d: Duration| m / d.as_secs_f64();
        // A ratio of rates is the inverse ratio of times.
        let vs = |ours: Duration, base: Duration| base.as_secs_f64() / ours.as_secs_f64();
        let (up, down) = (vs(big.up, big.echo_up), vs(big.down, big.echo_down));
        rows.push(Row {
            workload: format!("one {m} MiB record, upload then download"),
            clients: "1".into(),
            stats: None,
            figure: format!(
                "up {:.0} MiB/s ({up:.2}× echo, {:.2}× durable echo), down {:.0} MiB/s ({down:.2}× echo, {:.2}× durable echo); echo up {:.0}, down {:.0}; durable echo up {:.0}, down {:.0} MiB/s",
                rate(big.up),
                vs(big.up, big.durable_up),
                rate(big.down),
                vs(big.down, big.durable_down),
                rate(big.echo_up),
                rate(big.echo_down),
                rate(big.durable_up),
                rate(big.durable_down),
            ),
            target: "≥ 0.8× echo each way".into(),
            met: Some(up >= 0.8 && down >= 0.8),
        });
        rows.push(Row {
            workload: "server VmHWM while streaming that record".into(),
            clients: "1".into(),
            stats: None,
            figure: format!(
                "peak {:.1} MiB (baseline {:.1} MiB)",
                mib(big.peak),
                mib(big.baseline)
            ),
            target: "< 64 MiB".into(),
            met: Some(big.peak < 64 << 20),
        });
    }
    Ok(())
}

/// The rows as a Markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| workload | clients | ops/s | MiB/s | p50 ms | p99 ms | errors | figure | target | met |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let (ops, mibs, p50, p99, errors) = match &r.stats {
            Some(s) => (
                format!("{:.0}", s.ops_per_sec()),
                if s.bytes > 0 {
                    format!("{:.0}", s.mib_per_sec())
                } else {
                    String::new()
                },
                format!("{:.2}", s.percentile_ms(50.0)),
                format!("{:.2}", s.percentile_ms(99.0)),
                s.errors.to_string(),
            ),
            None => Default::default(),
        };
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        out.push_str(&format!(
            "| {} | {} | {ops} | {mibs} | {p50} | {p99} | {errors} | {} | {} | {met} |\n",
            r.workload, r.clients, r.figure, r.target
        ));
    }
    for r in rows {
        if let Some(e) = r.stats.as_ref().and_then(|s| s.first_error.as_ref()) {
            out.push_str(&format!("\nfirst error of {}: {e}\n", r.workload));
        }
    }
    out
}
