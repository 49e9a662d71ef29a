//! The `sesphr` and `sesphrd` binaries as a user runs them: `sesphrd dev` in
//! its own process, the CLI against it, exit codes and one-line errors.

use crate::common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A `sesphrd dev` process on free loopback ports.
struct DevProcess {
    child: Child,
    dir: Option<TempDir>,
    mesh: PathBuf,
}

impl DevProcess {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir)
    }

    fn start_in(dir: TempDir) -> Self {
        let (child, mesh) = common::process::start_sesphrd(&dir.path().join("mesh"));
        DevProcess {
            child,
            dir: Some(dir),
            mesh,
        }
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().expect("running").path()
    }

    fn home(&self, user: &str) -> PathBuf {
        self.path().join("users").join(user)
    }

    fn sesphr(&self, user: &str, args: &[&str]) -> Output {
        Command::new(common::bin("sesphr"))
            .args(args)
            .env("SESPHR_MESH", &self.mesh)
            .env("SESPHR_HOME", self.home(user))
            .stdin(Stdio::null())
            .output()
            .expect("sesphr runs")
    }

    fn ok(&self, user: &str, args: &[&str]) -> String {
        let out = self.sesphr(user, args);
        assert!(
            out.status.success(),
            "sesphr {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command expected to fail; returns its single stderr line.
    fn fails(&self, user: &str, args: &[&str]) -> String {
        let out = self.sesphr(user, args);
        assert!(
            !out.status.success(),
            "sesphr {args:?} unexpectedly succeeded"
        );
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
        assert!(err.starts_with("sesphr: "), "{err:?}");
        err
    }

    /// Graceful stop (SIGTERM), bounded.
    fn stop(mut self) -> TempDir {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "sesphrd exited with {status}");
                return self.dir.take().expect("running");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("sesphrd did not stop on SIGTERM");
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn the_cli_contract_end_to_end() {
    let m = DevProcess::start();
    assert!(
        m.ok("alice", &["enroll", "--id", "alice", "--role", "patient"])
            .contains("/patient/alice")
    );
    m.ok("bob", &["enroll", "--id", "bob", "--role", "doctor"]);
    let file = m.path().join("note.txt");
    write(&file, b"blood pressure 120/80\n");

    let up = m.sesphr(
        "alice",
        &["upload", "--partition", "medical", file.to_str().unwrap()],
    );
    assert!(up.status.success());
    assert!(String::from_utf8_lossy(&up.stderr).contains("stored (new)"));
    let id = String::from_utf8(up.stdout).unwrap();
    let id = id.trim();
    // The same file again is deduplicated, and still a record of its own.
    let again = m.sesphr(
        "alice",
        &["upload", "--partition", "medical", file.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("stored (deduplicated)"), "{stderr}");
    assert_ne!(String::from_utf8(again.stdout).unwrap().trim(), id);
    assert_eq!(id.lines().count(), 1, "upload prints the record id alone");
    assert!(m.ok("alice", &["ls"]).contains(id));
    assert_eq!(
        m.ok("alice", &["get", id]).as_bytes(),
        b"blood pressure 120/80\n"
    );

    let err = m.fails("bob", &["get", id]);
    assert!(err.contains("permission denied"), "{err}");
    m.ok(
        "alice",
        &[
            "grant",
            "--partition",
            "medical",
            "--to",
            "bob",
            "--for",
            "30d",
        ],
    );
    let out = m.path().join("bob-copy.txt");
    m.ok("bob", &["get", id, "-o", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), b"blood pressure 120/80\n");
    assert!(m.ok("bob", &["ls", "--owner", "alice"]).contains(id));
    assert!(
        m.ok("bob", &["grants"])
            .contains("received\talice\tmedical\tbob\tdoctor")
    );

    m.ok(
        "alice",
        &["revoke", "--partition", "medical", "--from", "bob"],
    );
    let err = m.fails(
        "bob",
        &["get", id, "-o", out.with_extension("2").to_str().unwrap()],
    );
    assert!(err.contains("permission denied"), "{err}");
    assert!(
        !out.with_extension("2").exists(),
        "no partial output after a refusal"
    );

    // The revoke rotated the partition (to epoch 1); rotating again gives 2.
    assert_eq!(
        m.ok("alice", &["rotate", "--partition", "medical"]).trim(),
        "2"
    );
    // `--no-rotate` keeps the epoch.
    m.ok("alice", &["grant", "--partition", "medical", "--to", "bob"]);
    m.ok(
        "alice",
        &[
            "revoke",
            "--partition",
            "medical",
            "--from",
            "bob",
            "--no-rotate",
        ],
    );
    assert_eq!(
        m.ok("alice", &["rotate", "--partition", "medical"]).trim(),
        "3"
    );
    let audit = m.ok("alice", &["audit", "--verify"]);
    for action in ["grant", "revoke", "check:read", "check:reencrypt"] {
        assert!(audit.contains(action), "audit lacks {action}:\n{audit}");
    }
    m.stop();
}

#[test]
fn fhir_import_and_clear_errors() {
    let m = DevProcess::start();
    m.ok("alice", &["enroll", "--id", "alice", "--role", "patient"]);
    let bundle = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/bundle.json");
    let out = m.ok("alice", &["import-fhir", bundle]);
    let lines: Vec<(&str, &str)> = out
        .lines()
        .map(|l| l.split_once(' ').expect("PARTITION RECORD_ID"))
        .collect();
    let partitions: Vec<&str> = lines.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        partitions,
        ["insurance", "medical", "other", "personal", "prescriptions"]
    );
    for (partition, id) in &lines {
        let text = m.ok("alice", &["get", id]);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["resourceType"], "Bundle", "{partition}");
        for e in v["entry"].as_array().unwrap() {
            let ty = e["resource"]["resourceType"].as_str().unwrap();
            let map = sesphr_client::fhir::PartitionMap::default();
            assert_eq!(map.partition_of(ty), *partition);
        }
    }

    let not_fhir = m.path().join("x.json");
    write(&not_fhir, br#"{"resourceType": "Patient", "id": "p"}"#);
    let err = m.fails("alice", &["import-fhir", not_fhir.to_str().unwrap()]);
    assert!(err.contains("not a FHIR Bundle"), "{err}");
    let err = m.fails("carol", &["enroll", "--id", "carol", "--role", "wizard"]);
    assert!(err.contains("unknown role"), "{err}");
    let err = m.fails(
        "alice",
        &["upload", "--partition", "medical", "/nonexistent"],
    );
    assert!(err.contains("/nonexistent"), "{err}");
    let err = m.fails(
        "alice",
        &[
            "grant",
            "--partition",
            "medical",
            "--to",
            "bob",
            "--for",
            "soon",
        ],
    );
    assert!(err.contains("duration"), "{err}");
    let err = m.fails("alice", &["get", "no such id"]);
    assert!(err.contains("not a valid record id"), "{err}");
    let err = m.fails("nobody", &["ls"]);
    assert!(err.contains("no profile"), "{err}");
    m.stop();
}

#[test]
fn demo_passes() {
    let out = Command::new(common::bin("sesphr"))
        .arg("demo")
        .env_remove("SESPHR_MESH")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("9 checks, 0 failed"), "{stdout}");
}

#[test]
fn restart_keeps_records_grants_and_audit() {
    let m = DevProcess::start();
    m.ok("alice", &["enroll", "--id", "alice", "--role", "patient"]);
    m.ok("bob", &["enroll", "--id", "bob", "--role", "nurse"]);
    let file = m.path().join("f");
    write(&file, b"kept");
    let id = m.ok(
        "alice",
        &["upload", "--partition", "medical", file.to_str().unwrap()],
    );
    m.ok("alice", &["grant", "--partition", "medical", "--to", "bob"]);
    let dir = m.stop();
    let m = DevProcess::start_in(dir);
    assert_eq!(m.ok("bob", &["get", id.trim()]), "kept");
    assert!(m.ok("alice", &["audit", "--verify"]).contains("grant"));
    m.stop();
}

/// Peak resident memory (VmHWM) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `sesphr` while sampling its peak RSS; returns (output, peak KiB).
fn sesphr_measured(m: &DevProcess, user: &str, args: &[&str]) -> (Output, u64) {
    let mut child = Command::new(common::bin("sesphr"))
        .args(args)
        .env("SESPHR_MESH", &m.mesh)
        .env("SESPHR_HOME", m.home(user))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        stdout.read_to_end(&mut s).unwrap();
        s
    });
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
        }
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = child.wait_with_output().unwrap();
    out.stdout = reader.join().unwrap();
    (out, peak)
}

#[test]
fn a_200_mib_record_streams_in_bounded_memory() {
    const SIZE: usize = 200 << 20;
    let m = DevProcess::start();
    m.ok("alice", &["enroll", "--id", "alice", "--role", "patient"]);
    m.ok("bob", &["enroll", "--id", "bob", "--role", "doctor"]);
    let file = m.path().join("big.bin");
    {
        // Incompressible, reproducible content without holding it twice.
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..SIZE / 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            f.write_all(&x.to_le_bytes()).unwrap();
        }
    }
    let server_before = peak_rss_kib(m.child.id()).unwrap();
    let (up, up_peak) = sesphr_measured(
        &m,
        "alice",
        &["upload", "--partition", "imaging", file.to_str().unwrap()],
    );
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let id = String::from_utf8(up.stdout).unwrap().trim().to_owned();
    m.ok("alice", &["grant", "--partition", "imaging", "--to", "bob"]);
    let copy = m.path().join("copy.bin");
    let (down, down_peak) = sesphr_measured(&m, "bob", &["get", &id, "-o", copy.to_str().unwrap()]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let server_peak = peak_rss_kib(m.child.id()).unwrap();
    let same = {
        use std::io::Read;
        let (mut a, mut b) = (
            std::fs::File::open(&file).unwrap(),
            std::fs::File::open(&copy).unwrap(),
        );
        let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        let mut equal = true;
        loop {
            let n = a.read(&mut x).unwrap();
            let mut got = 0;
            while got < n {
                let k = b.read(&mut y[got..n]).unwrap();
                if k == 0 {
                    break;
                }
                got += k;
            }
            if n == 0 {
                equal &= b.read(&mut y).unwrap() == 0;
                break;
            }
            if got != n || x[..n] != y[..n] {
                equal = false;
                break;
            }
        }
        equal
    };
    assert!(same, "downloaded copy differs");
    eprintln!(
        "200 MiB record: client peak RSS upload {} MiB, download {} MiB; server peak RSS {} MiB (before {} MiB)",
        up_peak / 1024,
        down_peak / 1024,
        server_peak / 1024,
        server_before / 1024
    );
    // Bounded by a few 1 MiB segments, not by the 200 MiB record.
    assert!(up_peak < 64 * 1024, "upload client peak {up_peak} KiB");
    assert!(
        down_peak < 64 * 1024,
        "download client peak {down_peak} KiB"
    );
    m.stop();
}

#[test]
fn fingerprints_whois_trust_and_the_ledger_from_the_cli() {
    let m = DevProcess::start();
    m.ok("alice", &["enroll", "--id", "alice", "--role", "patient"]);
    let out = m.sesphr("bob", &["enroll", "--id", "bob", "--role", "doctor"]);
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let bob_fp = stderr
        .split("your key fingerprint: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("enroll prints the fingerprint: {stderr}"))
        .to_owned();
    assert_eq!(bob_fp.len(), 39, "{bob_fp}");

    // whois: what the SRS presents, before and after first use.
    let out = m.sesphr("alice", &["whois", "bob"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("bob\tdoctor\t{bob_fp}\n")
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not pinned yet"));
    let out = m.sesphr("alice", &["grant", "--partition", "medical", "--to", "bob"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&bob_fp),
        "grant prints the grantee's fingerprint"
    );
    let out = m.sesphr("alice", &["whois", "bob"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("pinned"));

    // trust: a wrong fingerprint is one clear line and pins nothing.
    let wrong = "0000-0000-0000-0000-0000-0000-0000-0000";
    let err = m.fails("alice", &["trust", "bob", "--fingerprint", wrong]);
    assert!(err.contains("nothing was pinned"), "{err}");
    m.ok("alice", &["trust", "bob", "--fingerprint", &bob_fp]);
    let err = m.fails("alice", &["whois", "no-such-user"]);
    assert!(err.contains("not found"), "{err}");

    // The ledger and AccessPolicy agree: `grants` lists and exits 0.
    let grants = m.ok("alice", &["grants"]);
    assert!(grants.contains("given\talice\tmedical\tbob"), "{grants}");
    m.ok(
        "alice",
        &["revoke", "--partition", "medical", "--from", "bob"],
    );
    m.ok("alice", &["grants"]);

    // A profile without a ledger refuses to grant (nothing is sent) until
    // it adopts AccessPolicy's list, once.
    m.ok(
        "alice",
        &["grant", "--partition", "insurance", "--to", "bob"],
    );
    std::fs::remove_file(m.home("alice").join("grants.toml")).unwrap();
    let err = m.fails(
        "alice",
        &["grant", "--partition", "personal", "--to", "bob"],
    );
    assert!(err.contains("grants --adopt"), "{err}");
    let err = m.fails("alice", &["rotate", "--partition", "insurance"]);
    assert!(err.contains("no grant ledger"), "{err}");
    m.ok("alice", &["grants", "--adopt"]);
    let err = m.fails("alice", &["grants", "--adopt"]);
    assert!(err.contains("only adopted once"), "{err}");
    m.ok("alice", &["grants"]);
    m.ok("alice", &["rotate", "--partition", "insurance"]);
    assert!(!m.ok("alice", &["grants"]).contains("personal"));
    m.stop();
}
