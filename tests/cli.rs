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

    /// The operator profile `sesphrd dev` wrote.
    fn operator(&self) -> PathBuf {
        sesphr_server::daemon::dev_operator_dir(&self.path().join("mesh"))
    }

    /// `sesphr --home DIR/operator ARGS…`.
    fn admin(&self, args: &[&str]) -> Output {
        Command::new(common::bin("sesphr"))
            .arg("--home")
            .arg(self.operator())
            .args(args)
            .env("SESPHR_MESH", &self.mesh)
            .env_remove("SESPHR_HOME")
            .stdin(Stdio::null())
            .output()
            .expect("sesphr runs")
    }

    /// The operator's invitation of `id` as `role`: stdout holds the
    /// invitation alone; what to do with it goes to stderr.
    fn invite(&self, id: &str, role: &str) -> String {
        let out = self.admin(&["admin", "invite", "--id", id, "--role", role]);
        assert!(
            out.status.success(),
            "admin invite failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_invitation(&stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("valid until"), "{stderr}");
        stdout.trim().to_owned()
    }

    /// Enrols `user` as `role` with the operator's invitation.
    fn enroll_invited(&self, user: &str, role: &str) -> String {
        let invitation = self.invite(user, role);
        self.ok(
            user,
            &[
                "enroll",
                "--id",
                user,
                "--role",
                role,
                "--invite",
                &invitation,
            ],
        )
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

    /// Runs a command expected to fail after informational lines (such as
    /// `grant`'s grantee line); returns those lines and the error line.
    fn fails_after_notes(&self, user: &str, args: &[&str]) -> (Vec<String>, String) {
        let out = self.sesphr(user, args);
        assert!(
            !out.status.success(),
            "sesphr {args:?} unexpectedly succeeded"
        );
        let err = String::from_utf8(out.stderr).unwrap();
        let mut lines: Vec<String> = err.trim_end().lines().map(str::to_owned).collect();
        let last = lines.pop().unwrap_or_default();
        assert!(last.starts_with("sesphr: "), "{err:?}");
        (lines, last)
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

/// `text` is one line holding one invitation: `inv1-` and 64 hex digits.
fn assert_invitation(text: &str) {
    assert_eq!(text.lines().count(), 1, "one line: {text:?}");
    let token = text.trim_end();
    let hex = token
        .strip_prefix("inv1-")
        .unwrap_or_else(|| panic!("{token:?}"));
    assert!(
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{token:?}"
    );
}

#[test]
fn the_cli_contract_end_to_end() {
    let m = DevProcess::start();
    assert!(
        m.ok("alice", &["enroll", "--id", "alice", "--role", "patient"])
            .contains("/patient/alice")
    );
    m.enroll_invited("bob", "doctor");
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
    // The directory's role decides: a --role that contradicts it grants
    // nothing.
    let err = m.fails(
        "alice",
        &[
            "grant",
            "--partition",
            "medical",
            "--to",
            "bob",
            "--role",
            "nurse",
        ],
    );
    assert!(
        err.contains("bob is enrolled as doctor, not nurse"),
        "{err}"
    );
    assert!(!m.ok("alice", &["grants"]).contains("bob"));
    let out = m.sesphr(
        "alice",
        &[
            "grant",
            "--partition",
            "medical",
            "--to",
            "bob",
            "--role",
            "doctor",
            "--for",
            "30d",
        ],
    );
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("granting to bob: doctor, key fingerprint "),
        "grant shows the grantee first: {stderr}"
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
    m.enroll_invited("bob", "nurse");
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
    m.enroll_invited("bob", "doctor");
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
    let invitation = m.invite("bob", "doctor");
    let out = m.sesphr(
        "bob",
        &[
            "enroll",
            "--id",
            "bob",
            "--role",
            "doctor",
            "--invite",
            &invitation,
        ],
    );
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
    let (notes, err) = m.fails_after_notes(
        "alice",
        &["grant", "--partition", "personal", "--to", "bob"],
    );
    assert!(err.contains("grants --adopt"), "{err}");
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].starts_with("granting to bob: doctor"), "{notes:?}");
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

#[test]
fn operators_invite_and_invitations_are_single_use() {
    let m = DevProcess::start();
    // A patient registers herself on a dev mesh; a doctor cannot.
    m.ok("alice", &["enroll", "--id", "alice", "--role", "patient"]);
    let err = m.fails("bob", &["enroll", "--id", "bob", "--role", "doctor"]);
    assert!(err.contains("requires an invitation"), "{err}");
    assert!(
        err.contains("sesphr admin invite --id bob --role doctor"),
        "{err}"
    );
    assert!(!m.home("bob").join("profile.toml").exists());

    // The operator's invitation: stdout is the invitation alone.
    let out = m.admin(&[
        "admin",
        "invite",
        "--id",
        "bob",
        "--role",
        "doctor",
        "--valid-for",
        "12h",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let invitation = String::from_utf8(out.stdout).unwrap();
    assert_invitation(&invitation);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("valid until"), "{stderr}");
    assert!(
        stderr.contains("sesphr enroll --id bob --role doctor"),
        "{stderr}"
    );
    let invitation = invitation.trim();

    // An invitation is for its id and role only, and is not used up by a
    // refusal.
    let err = m.fails(
        "bob",
        &[
            "enroll", "--id", "bob", "--role", "nurse", "--invite", invitation,
        ],
    );
    assert!(err.contains("invitation is for role doctor"), "{err}");
    assert!(
        m.ok(
            "bob",
            &[
                "enroll", "--id", "bob", "--role", "doctor", "--invite", invitation
            ],
        )
        .contains("/practitioner/doctor/bob")
    );
    // Used once, it enrols no one else.
    let err = m.fails(
        "bob2",
        &[
            "enroll", "--id", "bob", "--role", "doctor", "--invite", invitation,
        ],
    );
    assert!(err.contains("already used"), "{err}");
    let err = m.fails(
        "eve",
        &[
            "enroll", "--id", "eve", "--role", "doctor", "--invite", invitation,
        ],
    );
    assert!(err.contains("already used"), "{err}");

    // Too long a validity is refused before anything is asked.
    let out = m.admin(&[
        "admin",
        "invite",
        "--id",
        "carol",
        "--role",
        "insurer",
        "--valid-for",
        "31d",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 30d"));
    // A user profile is not an operator's.
    let err = m.fails(
        "alice",
        &[
            "--home",
            m.home("alice").to_str().unwrap(),
            "admin",
            "invite",
            "--id",
            "carol",
            "--role",
            "insurer",
        ],
    );
    assert!(err.contains("no operator profile"), "{err}");

    // A patient invites her friend (the invitation from the environment),
    // not a practitioner.
    let out = m.sesphr("alice", &["invite", "--id", "dave", "--role", "friend"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dave = String::from_utf8(out.stdout).unwrap();
    assert_invitation(&dave);
    let enrolled = Command::new(common::bin("sesphr"))
        .args(["enroll", "--id", "dave", "--role", "friend"])
        .env("SESPHR_MESH", &m.mesh)
        .env("SESPHR_HOME", m.home("dave"))
        .env("SESPHR_INVITATION", dave.trim())
        .output()
        .unwrap();
    assert!(
        enrolled.status.success(),
        "{}",
        String::from_utf8_lossy(&enrolled.stderr)
    );
    let err = m.fails("alice", &["invite", "--id", "carol", "--role", "doctor"]);
    assert!(err.contains("invited by an operator"), "{err}");
    m.stop();
}

#[test]
fn renewal_keeps_the_profile_reading() {
    let m = DevProcess::start();
    m.ok("alice", &["enroll", "--id", "alice", "--role", "patient"]);
    m.enroll_invited("bob", "doctor");
    let file = m.path().join("f");
    write(&file, b"renewed and still reading");
    let id = m.ok(
        "alice",
        &["upload", "--partition", "medical", file.to_str().unwrap()],
    );
    let id = id.trim();
    m.ok("alice", &["grant", "--partition", "medical", "--to", "bob"]);

    let cert = m.home("bob").join("tls.pem");
    let key = m.home("bob").join("tls.key");
    let (cert_before, key_before) = (std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap());
    let out = m.sesphr("bob", &["renew"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expiry = String::from_utf8(out.stdout).unwrap();
    let expiry = time::OffsetDateTime::parse(
        expiry.trim(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap_or_else(|_| panic!("renew prints the new expiry: {expiry:?}"));
    assert!(expiry > time::OffsetDateTime::now_utc() + Duration::from_secs(29 * 86_400));
    assert_ne!(
        std::fs::read(&cert).unwrap(),
        cert_before,
        "a new certificate"
    );
    assert_eq!(std::fs::read(&key).unwrap(), key_before, "for the same key");
    assert_eq!(m.ok("bob", &["get", id]), "renewed and still reading");

    m.ok("bob", &["renew", "--new-key"]);
    assert_ne!(std::fs::read(&key).unwrap(), key_before, "a new key");
    assert_eq!(m.ok("bob", &["get", id]), "renewed and still reading");
    m.stop();
}

/// Puts a certificate the dev mesh's user CA issues for `identity`, valid
/// from `not_before` to `not_after` (seconds from now), into `home`.
fn install_cert(m: &DevProcess, home: &Path, identity: &str, not_before: i64, not_after: i64) {
    let pki = sesphr_mesh::pki::DevPki {
        dir: m.path().join("mesh").join("pki"),
    };
    let ca = pki.load_user_ca().unwrap();
    let identity: sesphr_identity::Identity = identity.parse().unwrap();
    let now = time::OffsetDateTime::now_utc();
    let issued = ca
        .issue_with_validity(
            &identity,
            now + time::Duration::seconds(not_before),
            now + time::Duration::seconds(not_after),
        )
        .unwrap();
    write(&home.join("tls.pem"), issued.cert_pem.as_bytes());
    write(&home.join("tls.key"), issued.key_pem.as_bytes());
}

fn cert_life(home: &Path) -> sesphr_client::admin::CertificateLife {
    let pem = std::fs::read_to_string(home.join("tls.pem")).unwrap();
    sesphr_client::admin::CertificateLife::of_pem(&pem).unwrap()
}

#[test]
fn certificates_renew_themselves_and_an_expired_one_re_enrols() {
    const DAY: i64 = 86_400;
    let m = DevProcess::start();
    m.ok("alice", &["enroll", "--id", "alice", "--role", "patient"]);
    let bob = m.enroll_invited("bob", "doctor");
    let bob = bob.trim();
    let file = m.path().join("f");
    write(&file, b"kept across re-enrolment");
    let id = m.ok(
        "alice",
        &["upload", "--partition", "medical", file.to_str().unwrap()],
    );
    let id = id.trim();
    m.ok("alice", &["grant", "--partition", "medical", "--to", "bob"]);

    // In the last third of its life, any command renews it first. (Issued
    // after the one the directory holds, which was back-dated 5 minutes: an
    // older certificate than the directory's is superseded and renews
    // nothing.)
    install_cert(&m, &m.home("bob"), bob, -200, 60);
    let out = m.sesphr("bob", &["get", id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"kept across re-enrolment");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("renewed your certificate"), "{stderr}");
    let now = sesphr_client::unix_now();
    assert!(cert_life(&m.home("bob")).not_after > now + 29 * DAY);
    // A fresh one is left alone.
    let out = m.sesphr("bob", &["ls", "--owner", "alice"]);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Expired: commands refuse with the way out, and so does renew.
    install_cert(&m, &m.home("bob"), bob, -31 * DAY, -DAY);
    let err = m.fails("bob", &["get", id]);
    assert!(err.contains("expired"), "{err}");
    assert!(err.contains("sesphr reenroll"), "{err}");
    let err = m.fails("bob", &["renew"]);
    assert!(err.contains("expired"), "{err}");
    assert!(err.contains("sesphr reenroll"), "{err}");

    // The operator re-invites bob (same id and role), bob re-enrols his
    // profile and reads again with his old grant.
    let out = m.admin(&["admin", "invite", "--id", "bob", "--role", "doctor"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = String::from_utf8(out.stdout).unwrap();
    assert_invitation(&again);
    assert!(String::from_utf8_lossy(&out.stderr).contains("re-invitation"));
    let out = m.sesphr("bob", &["reenroll", "--invite", again.trim()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(cert_life(&m.home("bob")).not_after > now + 29 * DAY);
    assert_eq!(m.ok("bob", &["get", id]), "kept across re-enrolment");
    let err = m.fails("bob", &["reenroll", "--invite", again.trim()]);
    assert!(err.contains("already used"), "{err}");
    // A re-invitation keeps the role.
    let out = m.admin(&["admin", "invite", "--id", "bob", "--role", "nurse"]);
    assert!(!out.status.success());
    // Expired again: the proof of bob's registered key alone re-enrols.
    install_cert(&m, &m.home("bob"), bob, -31 * DAY, -DAY);
    m.ok("bob", &["reenroll"]);
    assert_eq!(m.ok("bob", &["get", id]), "kept across re-enrolment");
    m.stop();
}

/// Runs `sesphr ARGS` as `user` until `done` holds of its output, at the
/// latest at `deadline`; whether it did.
fn poll(
    m: &DevProcess,
    user: &str,
    args: &[&str],
    deadline: Instant,
    done: impl Fn(&Output) -> bool,
) -> bool {
    loop {
        if done(&m.sesphr(user, args)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn operators_disable_and_enable_users() {
    let m = DevProcess::start();
    m.ok("alice", &["enroll", "--id", "alice", "--role", "patient"]);
    m.enroll_invited("bob", "doctor");
    let file = m.path().join("f");
    write(&file, b"for bob while enabled");
    let id = m.ok(
        "alice",
        &["upload", "--partition", "medical", file.to_str().unwrap()],
    );
    let id = id.trim();
    m.ok("alice", &["grant", "--partition", "medical", "--to", "bob"]);
    assert_eq!(m.ok("bob", &["get", id]), "for bob while enabled");
    // What bob does: reads through CloudStorage and the nodes, lists at
    // CloudStorage, renews at the SRS.
    let calls: [&[&str]; 3] = [&["get", id], &["ls", "--owner", "alice"], &["renew"]];

    let out = m.admin(&[
        "admin",
        "disable",
        "--id",
        "bob",
        "--reason",
        "left the clinic",
    ]);
    let disabled_at = Instant::now();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "disabled bob\n");
    let out = m.admin(&["admin", "disable", "--id", "bob"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("already disabled")
    );

    // Refused everywhere within 10 s (each service follows the deny list
    // on its own), with one line saying why.
    let deadline = disabled_at + Duration::from_secs(10);
    let refused = |o: &Output| {
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("user disabled")
    };
    for args in calls {
        assert!(
            poll(&m, "bob", args, deadline, refused),
            "bob's {args:?} was not refused within 10 s"
        );
        let err = m.fails("bob", args);
        assert!(err.contains("user disabled"), "{err}");
    }
    // No one grants to a disabled user.
    let (_, err) = m.fails_after_notes(
        "alice",
        &["grant", "--partition", "insurance", "--to", "bob"],
    );
    assert!(err.contains("disabled"), "{err}");

    let out = m.admin(&["admin", "enable", "--id", "bob", "--reason", "back"]);
    let enabled_at = Instant::now();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "enabled bob\n");
    let deadline = enabled_at + Duration::from_secs(10);
    for args in calls {
        assert!(
            poll(&m, "bob", args, deadline, |o| o.status.success()),
            "bob's {args:?} was not accepted again within 10 s"
        );
    }
    assert_eq!(m.ok("bob", &["get", id]), "for bob while enabled");
    let out = m.admin(&["admin", "enable", "--id", "bob"]);
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("not disabled")
    );
    m.stop();
}
