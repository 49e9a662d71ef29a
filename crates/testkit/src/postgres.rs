//! A PostgreSQL server of its own in a temporary directory, on loopback.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{RunAs, Server, run, wait_until};
use crate::{Error, Result, free_port, io};

/// The database user every URL names (trust authentication, loopback only).
const USER: &str = "sesphr";

/// A running PostgreSQL; stopped and deleted on drop.
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    port: u16,
    run_as: Option<RunAs>,
    server: Server,
    // Dropped last: the server's files.
    _dir: tempfile::TempDir,
}

impl Postgres {
    /// initdb + start on a free loopback port, with a database `sesphr`.
    pub fn start() -> Result<Self> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("sesphr-pg-")
            .tempdir()
            .map_err(io("tempdir"))?;
        // PostgreSQL refuses to run as root; as root, run it as `postgres`
        // (the user Debian's package creates) in a directory it owns.
        let run_as = is_root().then(|| RunAs {
            user: "postgres".into(),
        });
        if let Some(r) = &run_as {
            run(
                Path::new("chown"),
                &["-R", &format!("{0}:{0}", r.user), &path(dir.path())],
                None,
            )?;
        }
        let data = dir.path().join("data");
        run(
            &bin.join("initdb"),
            &[
                "-D",
                &path(&data),
                "-U",
                USER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            run_as.as_ref(),
        )?;
        let port = free_port()?;
        let port_s = port.to_string();
        let log = dir.path().join("postgres.log");
        let mut server = Server::spawn(
            "postgres",
            &bin.join("postgres"),
            &[
                "-D",
                &path(&data),
                "-h",
                "127.0.0.1",
                "-p",
                &port_s,
                "-k",
                &path(dir.path()),
                "-c",
                "max_connections=200",
            ],
            &log,
            run_as.as_ref(),
        )?;
        let isready = bin.join("pg_isready");
        wait_until("postgres", Duration::from_secs(30), || {
            server.ensure_running()?;
            Ok(std::process::Command::new(&isready)
                .args(["-q", "-h", "127.0.0.1", "-p", &port_s, "-U", USER])
                .status()
                .map(|s| s.success())
                .unwrap_or(false))
        })?;
        let pg = Self {
            bin,
            port,
            run_as,
            server,
            _dir: dir,
        };
        pg.create_database("sesphr")?;
        Ok(pg)
    }

    /// `postgres://sesphr@127.0.0.1:PORT/sesphr`.
    pub fn url(&self) -> String {
        self.url_of("sesphr")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates another empty database and returns its URL (one server, many
    /// isolated tests).
    pub fn create_database(&self, name: &str) -> Result<String> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(Error::Failed(format!("bad database name {name:?}")));
        }
        run(
            &self.bin.join("createdb"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                name,
            ],
            self.run_as.as_ref(),
        )?;
        Ok(self.url_of(name))
    }

    fn url_of(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The server's process id (a test may stop it to see failures).
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// Fast shutdown now (the handle stays, the server is gone).
    pub fn stop(&mut self) {
        self.server.stop_with("INT");
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.server.stop_with("INT");
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// `$SESPHR_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SESPHR_PG_BIN") {
        return Ok(PathBuf::from(p));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).ok_or_else(|| Error::Missing {
        what: "PostgreSQL (/usr/lib/postgresql/*/bin/postgres)".into(),
        hint: "run scripts/tools/postgres.sh (installs Debian's postgresql)".into(),
    })
}
