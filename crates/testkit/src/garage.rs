//! A Garage cluster of one or more nodes on loopback, with one bucket and
//! one access key ready for S3 clients.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngCore;

use crate::process::{Server, run, wait_until};
use crate::{Error, Result, free_port, io};

/// What an S3 client needs to reach the cluster's bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Endpoint {
    /// `http://127.0.0.1:PORT` of one node's S3 API.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

#[derive(Debug)]
struct Node {
    config: PathBuf,
    s3_port: u16,
    server: Option<Server>,
    log: PathBuf,
}

/// A running cluster; every node is stopped and its files deleted on drop.
#[derive(Debug)]
pub struct Garage {
    bin: PathBuf,
    nodes: Vec<Node>,
    key_id: String,
    secret: String,
    _dir: tempfile::TempDir,
}

pub const BUCKET: &str = "sesphr";
pub const REGION: &str = "garage";

impl Garage {
    /// Starts `nodes` nodes (replication factor = `nodes`, at most 3),
    /// joins them into one layout, and makes bucket [`BUCKET`] with a key
    /// that may read and write it.
    pub fn start(nodes: usize) -> Result<Self> {
        if !(1..=3).contains(&nodes) {
            return Err(Error::Failed(format!("1 to 3 Garage nodes, not {nodes}")));
        }
        let bin = binary()?;
        let dir = tempfile::Builder::new()
            .prefix("sesphr-garage-")
            .tempdir()
            .map_err(io("tempdir"))?;
        let rpc_secret = random_hex(32);
        let mut list = Vec::new();
        for i in 1..=nodes {
            let node_dir = dir.path().join(format!("node-{i}"));
            std::fs::create_dir_all(&node_dir).map_err(io("mkdir node"))?;
            let (rpc, s3, admin) = (free_port()?, free_port()?, free_port()?);
            let config = node_dir.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = {nodes}
consistency_mode = "consistent"
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{rpc_secret}"
bootstrap_peers = []

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
                    meta = node_dir.join("meta").display(),
                    data = node_dir.join("data").display(),
                ),
            )
            .map_err(io("write garage.toml"))?;
            list.push(Node {
                config,
                s3_port: s3,
                server: None,
                log: node_dir.join("garage.log"),
            });
        }
        let mut g = Self {
            bin,
            nodes: list,
            key_id: format!("GK{}", random_hex(12)),
            secret: random_hex(32),
            _dir: dir,
        };
        for i in 0..nodes {
            g.start_node(i)?;
        }
        g.form_cluster()?;
        Ok(g)
    }

    /// The S3 endpoint of node `i` (0-based).
    pub fn s3(&self, i: usize) -> S3Endpoint {
        S3Endpoint {
            endpoint: format!("http://127.0.0.1:{}", self.nodes[i].s3_port),
            region: REGION.into(),
            bucket: BUCKET.into(),
            access_key_id: self.key_id.clone(),
            secret_access_key: self.secret.clone(),
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The process id of node `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].server.as_ref().and_then(|s| s.pid())
    }

    /// Stops node `i` (SIGKILL: a node lost, not shut down).
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut s) = self.nodes[i].server.take() {
            s.stop_with("KILL");
        }
    }

    /// (Re)starts node `i` and waits until it answers.
    pub fn start_node(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        let config = node.config.display().to_string();
        let mut server = Server::spawn(
            &format!("garage node {}", i + 1),
            &self.bin,
            &["-c", &config, "server"],
            &node.log,
            None,
        )?;
        let bin = self.bin.clone();
        wait_until("garage node", Duration::from_secs(30), || {
            server.ensure_running()?;
            Ok(run(&bin, &["-c", &config, "status"], None).is_ok())
        })?;
        node.server = Some(server);
        Ok(())
    }

    fn garage(&self, node: usize, args: &[&str]) -> Result<String> {
        let config = self.nodes[node].config.display().to_string();
        let mut all = vec!["-c", config.as_str()];
        all.extend_from_slice(args);
        run(&self.bin, &all, None)
    }

    fn form_cluster(&mut self) -> Result<()> {
        let mut ids = Vec::new();
        for i in 0..self.nodes.len() {
            let full = self.garage(i, &["node", "id", "-q"])?.trim().to_string();
            ids.push(full);
        }
        for full in ids.iter().skip(1) {
            self.garage(0, &["node", "connect", full])?;
        }
        for full in &ids {
            let id = full.split('@').next().unwrap_or(full);
            self.garage(0, &["layout", "assign", "-z", "dc1", "-c", "1G", id])?;
        }
        self.garage(0, &["layout", "apply", "--version", "1"])?;
        // Every node must have taken the layout before buckets are made.
        let n = self.nodes.len();
        wait_until("garage layout", Duration::from_secs(30), || {
            let status = self.garage(0, &["status"])?;
            Ok(status.matches("127.0.0.1").count() >= n && !status.contains("NO ROLE"))
        })?;
        self.garage(0, &["bucket", "create", BUCKET])?;
        self.garage(
            0,
            &[
                "key",
                "import",
                "--yes",
                "-n",
                "sesphr",
                &self.key_id,
                &self.secret,
            ],
        )?;
        self.garage(
            0,
            &[
                "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", "sesphr",
            ],
        )?;
        Ok(())
    }

    /// The log of node `i`, for a failing test's message.
    pub fn log(&self, i: usize) -> &Path {
        &self.nodes[i].log
    }
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// `$SESPHR_GARAGE_BIN`, else the cached build `scripts/tools/garage.sh`
/// makes (building it once if needed).
fn binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SESPHR_GARAGE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/tools/garage.sh");
    let out = run(Path::new("bash"), &[&script.display().to_string()], None).map_err(|e| {
        Error::Missing {
            what: "garage".into(),
            hint: format!("scripts/tools/garage.sh could not provide it: {e}"),
        }
    })?;
    Ok(PathBuf::from(out.trim()))
}
