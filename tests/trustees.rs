//! Trustee recovery on a running mesh: a patient who stored records and
//! granted a doctor splits her master secret 2-of-3 among trustees, loses
//! her profile, and two of them bring it back on a new machine (every
//! record readable, the doctor's access intact, the epochs the mesh shows);
//! one trustee alone cannot; a non-trustee asking for a share hears the
//! same NOT_FOUND as for a user without a setup; every release is in the
//! owner's audit entries; a tampered approval fails clearly. Then the same
//! story through the `sesphr` binary.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::{Sandbox, download, upload};
use sesphr::proto;
use sesphr_client::recovery::{self, RecoveryRequest};
use sesphr_client::restore::RestoreOptions;
use sesphr_client::{GrantOptions, Patient, Profile};
use sesphr_identity::Role;
use tempfile::TempDir;
use tonic::Code;

fn flip_one_char(approval: &str) -> String {
    let mut bytes = approval.as_bytes().to_vec();
    let i = approval.len() - 40;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_trustees_bring_back_a_lost_profile() {
    let s = Sandbox::start().await;
    let mesh = s.mesh_file();
    let alice = s.patient("alice").await;
    let bob = s.practitioner("bob", Role::Doctor).await;
    for t in ["carol", "dave", "erin", "mallory"] {
        s.patient(t).await;
    }
    let r1 = upload(&alice, "medical", b"blood pressure 120/80").await;
    let r2 = upload(&alice, "personal", b"allergic to penicillin").await;
    alice
        .grant("medical", "bob", GrantOptions::default())
        .await
        .unwrap();
    // A rotation the new profile must learn from the mesh: r3 is epoch 1.
    assert_eq!(alice.rotate("medical").await.unwrap(), 1);
    let r3 = upload(&alice, "medical", b"after the rotation").await;
    assert_eq!(
        download(&bob, &r3.record_id).await.unwrap(),
        b"after the rotation"
    );

    // Bad setups are refused before anything is sent.
    let profile = Profile::load(&s.home("alice")).unwrap();
    for (trustees, t) in [
        (&["carol", "dave"][..], 3),
        (&["carol", "dave"][..], 1),
        (&["carol", "carol"][..], 2),
        (&["carol", "alice"][..], 2),
    ] {
        assert!(recovery::setup(&mesh, &profile, trustees, t).await.is_err());
    }
    assert!(
        recovery::status(&mesh, &profile)
            .await
            .unwrap()
            .setup
            .is_none()
    );
    let setup = recovery::setup(&mesh, &profile, &["erin", "carol", "dave"], 2)
        .await
        .unwrap();
    assert_eq!(setup.trustees, ["carol", "dave", "erin"]);
    let status = recovery::status(&mesh, &profile).await.unwrap();
    assert_eq!(status.setup, Some(setup.clone()));
    assert!(status.events.iter().all(|e| !recovery::is_share_release(e)));
    drop(alice);

    // The laptop is lost.
    std::fs::remove_dir_all(s.home("alice")).unwrap();

    // The new machine asks.
    let new_home = s.home("alice-new");
    let request = recovery::start(&new_home, "alice").unwrap();
    let code = request.code();
    assert_eq!(RecoveryRequest::parse(&code).unwrap(), request);

    // A non-trustee hears what a trustee of someone without a setup hears.
    let mallory = s.session("mallory");
    let ask = |owner: &str| proto::GetRecoveryShareRequest {
        owner_id: owner.into(),
        request_fingerprint: request.fingerprint(),
    };
    let not_trustee = mallory
        .clients
        .srs
        .clone()
        .get_recovery_share(ask("alice"))
        .await
        .unwrap_err();
    let no_setup = mallory
        .clients
        .srs
        .clone()
        .get_recovery_share(ask("bob"))
        .await
        .unwrap_err();
    assert_eq!(not_trustee.code(), Code::NotFound);
    assert_eq!(no_setup.code(), Code::NotFound);
    let err = recovery::approve(&mesh, &Profile::load(&s.home("mallory")).unwrap(), &code)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not one of their trustees"),
        "{err}"
    );

    // Two trustees approve.
    let approve = |who: &str| {
        let profile = Profile::load(&s.home(who)).unwrap();
        let mesh = mesh.clone();
        let code = code.clone();
        async move { recovery::approve(&mesh, &profile, &code).await.unwrap() }
    };
    let from_carol = approve("carol").await;
    let from_erin = approve("erin").await;
    assert_eq!(from_carol.threshold, 2);
    assert_eq!(from_carol.request_fingerprint, request.fingerprint());

    // One trustee alone cannot recover; a tampered approval fails; a
    // duplicate counts once. Nothing is written by any of them.
    let none = RestoreOptions::default();
    let refusals = [
        (
            vec![from_carol.text.as_str()],
            "2 trustees must approve, 1 did",
        ),
        (
            vec![from_carol.text.as_str(), from_carol.text.as_str()],
            "carol approved twice",
        ),
    ];
    for (approvals, want) in refusals {
        let err = recovery::finish(&mesh, &new_home, &approvals, none)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
    let tampered = flip_one_char(&from_erin.text);
    let err = recovery::finish(&mesh, &new_home, &[&from_carol.text, &tampered], none)
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("approval 2: "), "{err}");
    assert!(!Profile::exists(&new_home));
    assert!(recovery::pending_request(&new_home).unwrap().is_some());

    // Two approvals: the profile is back.
    let recovered = recovery::finish(
        &mesh,
        &new_home,
        &[&from_erin.text, &from_carol.text],
        RestoreOptions {
            device: Some("new-laptop"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(recovered.device, "new-laptop");
    assert_eq!(recovered.trustees, ["erin", "carol"]);
    assert_eq!(recovered.epochs.get("medical"), Some(&1));
    assert!(recovery::pending_request(&new_home).unwrap().is_none());
    assert!(!new_home.join(recovery::REQUEST_FILE).exists());

    let alice = Patient::open(&mesh, &new_home).unwrap();
    for (r, want) in [
        (&r1, &b"blood pressure 120/80"[..]),
        (&r2, b"allergic to penicillin"),
        (&r3, b"after the rotation"),
    ] {
        assert_eq!(download(&alice, &r.record_id).await.unwrap(), want);
    }
    // The doctor's access continues, for old records and new ones.
    assert_eq!(
        download(&bob, &r1.record_id).await.unwrap(),
        b"blood pressure 120/80"
    );
    let r4 = upload(&alice, "medical", b"written after the recovery").await;
    assert_eq!(r4.epoch, 1);
    assert_eq!(
        download(&bob, &r4.record_id).await.unwrap(),
        b"written after the recovery"
    );

    // The owner sees each release, and the refusal, in her audit entries.
    let status = recovery::status(&mesh, &alice.profile).await.unwrap();
    assert_eq!(status.setup, Some(setup));
    let releases: Vec<_> = status
        .events
        .iter()
        .filter(|e| recovery::is_share_release(e))
        .collect();
    assert_eq!(releases.len(), 2, "{:#?}", status.events);
    for (entry, who) in releases.iter().zip(["carol", "erin"]) {
        assert!(entry.detail.contains(who), "{entry:?}");
        assert!(entry.detail.contains(&request.fingerprint()), "{entry:?}");
    }
    assert!(
        status.events.iter().any(|e| e.action.starts_with("denied:")
            && e.detail.contains("mallory")
            || e.outcome == "denied" && e.subject.contains("mallory")),
        "{:#?}",
        status.events
    );

    // A finished request cannot be finished again.
    let err = recovery::finish(&mesh, &new_home, &[&from_carol.text], none)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already holds a profile"), "{err}");
}

/// A `sesphrd dev` process and the `sesphr` binary.
struct Dev {
    child: Child,
    dir: TempDir,
    mesh: PathBuf,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dev {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (child, mesh) = common::process::start_sesphrd(&dir.path().join("mesh"));
        Dev { child, dir, mesh }
    }

    fn home(&self, user: &str) -> PathBuf {
        self.dir.path().join("users").join(user)
    }

    fn run(&self, home: &Path, args: &[&str]) -> Output {
        Command::new(common::bin("sesphr"))
            .args(args)
            .env("SESPHR_MESH", &self.mesh)
            .env("SESPHR_HOME", home)
            .env_remove("SESPHR_PASSPHRASE")
            .stdin(Stdio::null())
            .output()
            .expect("sesphr runs")
    }

    fn ok(&self, home: &Path, args: &[&str]) -> (String, String) {
        let out = self.run(home, args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "sesphr {args:?} failed: {stderr}");
        (String::from_utf8(out.stdout).unwrap(), stderr)
    }

    fn fails(&self, home: &Path, args: &[&str]) -> String {
        let out = self.run(home, args);
        assert!(!out.status.success(), "sesphr {args:?} succeeded");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
        assert!(err.starts_with("sesphr: "), "{err:?}");
        err
    }

    fn invite(&self, id: &str, role: &str) -> String {
        let operator = sesphr_server::daemon::dev_operator_dir(&self.dir.path().join("mesh"));
        let op = operator.to_str().unwrap();
        let (out, _) = self.ok(
            &operator,
            &["--home", op, "admin", "invite", "--id", id, "--role", role],
        );
        out.trim().to_owned()
    }
}

#[test]
fn the_cli_recovers_a_profile_from_two_trustees() {
    let m = Dev::start();
    let alice = m.home("alice");
    for user in ["alice", "carol", "dave", "erin"] {
        m.ok(
            &m.home(user),
            &["enroll", "--id", user, "--role", "patient"],
        );
    }
    let invitation = m.invite("bob", "doctor");
    let bob = m.home("bob");
    m.ok(
        &bob,
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
    let file = m.dir.path().join("note.txt");
    std::fs::write(&file, "blood pressure 120/80").unwrap();
    let (r1, _) = m.ok(
        &alice,
        &["upload", "--partition", "medical", file.to_str().unwrap()],
    );
    let r1 = r1.trim().to_owned();
    m.ok(&alice, &["grant", "--partition", "medical", "--to", "bob"]);

    let err = m.fails(
        &alice,
        &[
            "recovery",
            "setup",
            "--trustees",
            "carol",
            "--threshold",
            "2",
        ],
    );
    assert!(err.contains("threshold 2 of 1"), "{err}");
    let (out, _) = m.ok(
        &alice,
        &[
            "recovery",
            "setup",
            "--trustees",
            "carol,dave,erin",
            "--threshold",
            "2",
        ],
    );
    assert_eq!(out.trim(), "2 of 3: carol, dave, erin");
    let (out, _) = m.ok(&alice, &["recovery", "status"]);
    assert!(
        out.starts_with("2 of 3: carol, dave, erin\tset up "),
        "{out}"
    );

    std::fs::remove_dir_all(&alice).unwrap();
    let new_home = m.home("alice-new");
    let (code, stderr) = m.ok(&new_home, &["recovery", "start", "--id", "alice"]);
    let code = code.trim().to_owned();
    assert!(code.starts_with("sesphr-recovery-request:alice:"), "{code}");
    let fingerprint = stderr
        .lines()
        .next()
        .and_then(|l| l.split("fingerprint ").nth(1))
        .expect("the fingerprint on stderr")
        .to_owned();
    assert_eq!(fingerprint.replace(' ', "").len(), 64, "{fingerprint}");

    // Without a confirmed fingerprint no share is released.
    let carol = m.home("carol");
    let err = m.fails(&carol, &["recovery", "approve", &code]);
    assert!(err.contains("pass --fingerprint"), "{err}");
    let err = m.fails(
        &carol,
        &["recovery", "approve", &code, "--fingerprint", "0000"],
    );
    assert!(err.contains("do not approve it"), "{err}");
    let approve = |who: &str| {
        let (out, stderr) = m.ok(
            &m.home(who),
            &["recovery", "approve", &code, "--fingerprint", &fingerprint],
        );
        assert!(
            stderr.contains("approved alice's recovery request"),
            "{stderr}"
        );
        out.trim().to_owned()
    };
    let from_carol = approve("carol");
    let from_dave = approve("dave");

    let err = m.fails(&new_home, &["recovery", "finish", &from_carol]);
    assert!(
        err.contains("2 trustees must approve, 1 did (carol)"),
        "{err}"
    );
    let err = m.fails(
        &new_home,
        &[
            "recovery",
            "finish",
            &from_carol,
            &flip_one_char(&from_dave),
        ],
    );
    assert!(err.contains("approval 2: "), "{err}");
    assert!(!Profile::exists(&new_home));

    // The approvals from a file, one a line.
    let approvals = m.dir.path().join("approvals.txt");
    std::fs::write(&approvals, format!("{from_carol}\n\n{from_dave}\n")).unwrap();
    let (_, stderr) = m.ok(
        &new_home,
        &["recovery", "finish", approvals.to_str().unwrap()],
    );
    assert!(
        stderr.contains("recovered") && stderr.contains("carol, dave"),
        "{stderr}"
    );
    let (text, _) = m.ok(&new_home, &["get", &r1]);
    assert_eq!(text, "blood pressure 120/80");
    let (text, _) = m.ok(&bob, &["get", &r1]);
    assert_eq!(text, "blood pressure 120/80");
    let (out, stderr) = m.ok(&new_home, &["recovery", "status"]);
    assert!(stderr.contains("2 share release(s)"), "{stderr}");
    assert_eq!(out.matches("GetRecoveryShare").count(), 2, "{out}");
}
