//! Starting and stopping a server process that cannot outlive its owner.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result, io};

/// A running server; stopped (SIGTERM, then SIGKILL after 10 s) on drop.
#[derive(Debug)]
pub struct Server {
    name: String,
    child: Option<Child>,
    pub(crate) log: std::path::PathBuf,
}

/// The user a server must run as when we are root (PostgreSQL refuses to
/// run as root), as `setpriv` arguments.
#[derive(Debug, Clone)]
pub(crate) struct RunAs {
    pub user: String,
}

impl Server {
    /// Starts `program args…` with stdout and stderr to `log`.
    pub(crate) fn spawn(
        name: &str,
        program: &Path,
        args: &[&str],
        log: &Path,
        run_as: Option<&RunAs>,
    ) -> Result<Self> {
        let out = std::fs::File::create(log).map_err(io(format!("create {}", log.display())))?;
        let err = out.try_clone().map_err(io("dup log"))?;
        let mut cmd = Command::new("setpriv");
        cmd.arg("--pdeathsig").arg("TERM");
        if let Some(r) = run_as {
            cmd.args(["--reuid", &r.user, "--regid", &r.user, "--init-groups"]);
        }
        cmd.arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .map_err(io(format!("start {name} ({})", program.display())))?;
        Ok(Self {
            name: name.into(),
            child: Some(child),
            log: log.into(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The last lines of the server's log, for an error message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Fails with the log's tail if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if self.is_running() {
            Ok(())
        } else {
            Err(Error::Failed(format!(
                "{} exited; its log ends:\n{}",
                self.name,
                self.log_tail()
            )))
        }
    }

    /// Stops the server: `signal` first, SIGKILL if it is still up after 10 s.
    pub fn stop_with(&mut self, signal: &str) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_with("TERM");
    }
}

/// Runs `program args…` to completion; its stdout on success, or an error
/// carrying its output.
pub(crate) fn run(program: &Path, args: &[&str], run_as: Option<&RunAs>) -> Result<String> {
    let mut cmd = if let Some(r) = run_as {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", &r.user, "--regid", &r.user, "--init-groups"])
            .arg(program);
        c
    } else {
        Command::new(program)
    };
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(io(format!("run {}", program.display())))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Failed(format!(
            "{} {} failed ({}): {}{}",
            program.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// Polls `ready` every 50 ms for at most `limit`.
pub(crate) fn wait_until(
    what: &str,
    limit: Duration,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    loop {
        match ready() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(Error::Failed(format!(
                "{what} not ready after {limit:?} {last}"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
