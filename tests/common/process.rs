//! `sesphrd dev` as a separate process (for tests of the binaries, restarts
//! and kill -9).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Starts `sesphrd dev` on `data_dir` with free loopback ports; returns the
/// child once it printed its mesh file (and that file's path).
pub fn start_sesphrd(data_dir: &Path) -> (Child, PathBuf) {
    let mut dev = Command::new(super::bin("sesphrd"));
    dev.args(["dev", "--base-port", "0"]);
    start_sesphrd_with(data_dir, dev)
}

/// [`start_sesphrd`] with a `sesphrd dev …` command of the caller's (its
/// `--data-dir` is added here).
pub fn start_sesphrd_with(data_dir: &Path, mut dev: Command) -> (Child, PathBuf) {
    let mut child = dev
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sesphrd starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(path) = line.strip_prefix("mesh file: ") {
                let _ = tx.send(PathBuf::from(path));
            }
        }
    });
    let mesh = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("sesphrd dev reports its mesh file");
    (child, mesh)
}
