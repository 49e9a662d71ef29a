//! A profile's secrets from the CLI, on a `sesphrd dev` process: a
//! passphrase at rest (set, change, remove; a wrong one changes nothing), a
//! backup file and the recovery phrase bringing back a deleted profile
//! (every record readable, the doctor's access intact, epochs reconciled
//! with the mesh), and the clear one-line refusals of a wrong passphrase, a
//! damaged backup and a mistyped phrase.
//!
//! Every command seals with the insecure test cost
//! (`SESPHR_KDF_TEST_PARAMS=1`) to stay fast.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use tempfile::TempDir;

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

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn home(&self, user: &str) -> PathBuf {
        self.path().join("users").join(user)
    }

    /// `sesphr ARGS…` with `--home HOME` and `env` (nothing else of the
    /// caller's environment about profiles or passphrases).
    fn run(&self, home: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut cmd = Command::new(common::bin("sesphr"));
        cmd.args(args)
            .env("SESPHR_MESH", &self.mesh)
            .env("SESPHR_HOME", home)
            .env("SESPHR_KDF_TEST_PARAMS", "1")
            .env_remove("SESPHR_PASSPHRASE")
            .env_remove("SESPHR_NEW_PASSPHRASE")
            .env_remove("SESPHR_PHRASE")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("sesphr runs")
    }

    fn ok(&self, home: &Path, env: &[(&str, &str)], args: &[&str]) -> (String, String) {
        let out = self.run(home, env, args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "sesphr {args:?} failed: {stderr}");
        (String::from_utf8(out.stdout).unwrap(), stderr)
    }

    /// A command that must fail with one line on stderr; returns it.
    fn fails(&self, home: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
        let out = self.run(home, env, args);
        assert!(
            !out.status.success(),
            "sesphr {args:?} unexpectedly succeeded"
        );
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
        assert!(err.starts_with("sesphr: "), "{err:?}");
        err
    }

    fn invite(&self, id: &str, role: &str) -> String {
        let operator = sesphr_server::daemon::dev_operator_dir(&self.path().join("mesh"));
        let (out, _) = self.ok(
            &operator,
            &[],
            &[
                "--home",
                operator.to_str().unwrap(),
                "admin",
                "invite",
                "--id",
                id,
                "--role",
                role,
            ],
        );
        out.trim().to_owned()
    }

    fn upload(&self, home: &Path, env: &[(&str, &str)], partition: &str, text: &str) -> String {
        let file = self
            .path()
            .join(format!("upload-{partition}-{}", text.len()));
        std::fs::write(&file, text).unwrap();
        let (id, _) = self.ok(
            home,
            env,
            &["upload", "--partition", partition, file.to_str().unwrap()],
        );
        id.trim().to_owned()
    }

    fn get(&self, home: &Path, env: &[(&str, &str)], id: &str) -> String {
        self.ok(home, env, &["get", id]).0
    }
}

/// Every file of a directory and its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn is_sealed(path: &Path) -> bool {
    std::fs::read(path)
        .unwrap()
        .starts_with(b"sesphr-sealed-v1\n")
}

/// The 24 words `enroll --show-phrase` printed after its warning.
fn phrase_of(stderr: &str) -> String {
    let mut lines = stderr.lines();
    lines
        .find(|l| l.starts_with("your recovery phrase follows"))
        .expect("the warning");
    let phrase = lines.next().expect("the phrase").to_owned();
    assert_eq!(phrase.split(' ').count(), 24, "{phrase}");
    phrase
}

#[test]
fn a_deleted_profile_comes_back_from_its_backup_and_from_its_phrase() {
    let m = Dev::start();
    let alice = m.home("alice");
    let bob = m.home("bob");
    let none: &[(&str, &str)] = &[];
    let (_, stderr) = m.ok(
        &alice,
        none,
        &[
            "enroll",
            "--id",
            "alice",
            "--role",
            "patient",
            "--show-phrase",
        ],
    );
    let phrase = phrase_of(&stderr);
    assert!(stderr.contains("unprotected"), "{stderr}");
    let invitation = m.invite("bob", "doctor");
    m.ok(
        &bob,
        none,
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
    let r1 = m.upload(&alice, none, "medical", "blood pressure 120/80");
    let r2 = m.upload(&alice, none, "personal", "allergic to penicillin");
    m.ok(
        &alice,
        none,
        &["grant", "--partition", "medical", "--to", "bob"],
    );
    assert_eq!(m.get(&bob, none, &r1), "blood pressure 120/80");

    // The backup, refused over an existing file, then made.
    let backup = m.path().join("alice.backup");
    let pw = [("SESPHR_PASSPHRASE", "correct horse battery staple")];
    let (_, stderr) = m.ok(&alice, &pw, &["backup", "-o", backup.to_str().unwrap()]);
    assert!(stderr.contains("wrote the backup of"), "{stderr}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(is_sealed(&backup));
    let before = std::fs::read(&backup).unwrap();
    let err = m.fails(&alice, &pw, &["backup", "-o", backup.to_str().unwrap()]);
    assert!(err.contains("already exists; pass --force"), "{err}");
    assert_eq!(std::fs::read(&backup).unwrap(), before);

    // After the backup: a rotation and a record under the new epoch.
    assert_eq!(
        m.ok(&alice, none, &["rotate", "--partition", "medical"])
            .0
            .trim(),
        "1"
    );
    let r3 = m.upload(&alice, none, "medical", "cholesterol 190");
    assert_eq!(m.get(&bob, none, &r3), "cholesterol 190");

    // The laptop is lost.
    std::fs::remove_dir_all(&alice).unwrap();

    // A wrong passphrase, a damaged file, a mistyped phrase: one line
    // each, and the new home is not created.
    let restored = m.home("alice-restored");
    let target = restored.to_str().unwrap();
    let err = m.fails(
        &restored,
        &[("SESPHR_PASSPHRASE", "wrong horse")],
        &["restore", backup.to_str().unwrap(), "--home", target],
    );
    assert_eq!(
        err.trim_end(),
        format!("sesphr: wrong passphrase for {}", backup.display())
    );
    assert!(!restored.exists());
    let damaged = m.path().join("damaged.backup");
    let mut bytes = before.clone();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x04;
    std::fs::write(&damaged, &bytes).unwrap();
    let err = m.fails(
        &restored,
        &pw,
        &["restore", damaged.to_str().unwrap(), "--home", target],
    );
    assert!(err.contains("corrupted"), "{err}");
    assert!(!restored.exists());
    let mistyped = phrase.replacen(phrase.split(' ').nth(3).unwrap(), "zzzz", 1);
    let err = m.fails(
        &restored,
        &[("SESPHR_PHRASE", &mistyped)],
        &["restore", "--phrase", "--id", "alice", "--home", target],
    );
    assert!(err.contains("is not in the BIP-39 English list"), "{err}");
    // Two words swapped: the checksum catches it (the first swap that
    // changes the phrase's checksum; 255 in 256 do).
    let swapped = (0..23)
        .map(|i| {
            let mut words: Vec<&str> = phrase.split(' ').collect();
            words.swap(i, i + 1);
            words.join(" ")
        })
        .find(|w| sesphr_client::restore::master_from_phrase(w).is_err())
        .expect("a swap the checksum catches");
    let err = m.fails(
        &restored,
        &[("SESPHR_PHRASE", &swapped)],
        &["restore", "--phrase", "--id", "alice", "--home", target],
    );
    assert!(err.contains("checksum does not match"), "{err}");
    assert!(!restored.exists());

    // The backup restores: a new device, the epoch the mesh shows, every
    // record readable, sealed under the backup's passphrase.
    let (stdout, stderr) = m.ok(
        &restored,
        &pw,
        &["restore", backup.to_str().unwrap(), "--home", target],
    );
    assert!(stdout.contains("/patient/alice"), "{stdout}");
    assert!(
        stderr.contains("the mesh shows medical at key epoch 1 (the backup had 0)"),
        "{stderr}"
    );
    assert!(is_sealed(&restored.join("master.key")));
    assert!(is_sealed(&restored.join("tls.key")));
    assert!(restored.join("grants.toml").exists());
    for (id, text) in [
        (&r1, "blood pressure 120/80"),
        (&r2, "allergic to penicillin"),
        (&r3, "cholesterol 190"),
    ] {
        assert_eq!(m.get(&restored, &pw, id), text);
    }
    // New records use epoch 1, and the doctor still reads them.
    let (r4_out, r4_err) = {
        let file = m.path().join("r4");
        std::fs::write(&file, "glucose 5.1").unwrap();
        m.ok(
            &restored,
            &pw,
            &["upload", "--partition", "medical", file.to_str().unwrap()],
        )
    };
    assert!(r4_err.contains("epoch 1"), "{r4_err}");
    let r4 = r4_out.trim().to_owned();
    assert_eq!(m.get(&bob, none, &r4), "glucose 5.1");
    assert_eq!(m.get(&bob, none, &r1), "blood pressure 120/80");
    // The ledger came back: rotations still include bob.
    assert_eq!(
        m.ok(&restored, &pw, &["rotate", "--partition", "medical"])
            .0
            .trim(),
        "2"
    );
    let r5 = m.upload(&restored, &pw, "medical", "weight 61 kg");
    assert_eq!(m.get(&bob, none, &r5), "weight 61 kg");

    // From the phrase alone, into a third home, unprotected.
    let from_phrase = m.home("alice-phrase");
    let (_, stderr) = m.ok(
        &from_phrase,
        &[("SESPHR_PHRASE", &format!("  {}\n", phrase.to_uppercase()))],
        &[
            "restore",
            "--phrase",
            "--id",
            "alice",
            "--home",
            from_phrase.to_str().unwrap(),
        ],
    );
    assert!(stderr.contains("grants --adopt"), "{stderr}");
    assert!(!is_sealed(&from_phrase.join("master.key")));
    for (id, text) in [
        (&r1, "blood pressure 120/80"),
        (&r2, "allergic to penicillin"),
        (&r3, "cholesterol 190"),
        (&r4, "glucose 5.1"),
        (&r5, "weight 61 kg"),
    ] {
        assert_eq!(m.get(&from_phrase, none, id), text);
    }
    // Its epochs come from the mesh: new records go to epoch 2.
    let (_, up) = {
        let file = m.path().join("r6");
        std::fs::write(&file, "pulse 64").unwrap();
        m.ok(
            &from_phrase,
            none,
            &["upload", "--partition", "medical", file.to_str().unwrap()],
        )
    };
    assert!(up.contains("epoch 2"), "{up}");
    // A second device from the same backup: both read and upload.
    let laptop = m.home("alice-laptop");
    let (_, stderr) = m.ok(
        &laptop,
        &pw,
        &[
            "device",
            "add",
            "--backup",
            backup.to_str().unwrap(),
            "--home",
            laptop.to_str().unwrap(),
            "--device",
            "laptop",
        ],
    );
    assert!(stderr.contains("as device laptop"), "{stderr}");
    assert_eq!(m.get(&laptop, &pw, &r5), "weight 61 kg");
    let r7 = m.upload(&laptop, &pw, "personal", "second device");
    assert_eq!(m.get(&restored, &pw, &r7), "second device");
    // The phrase shown later is the same one.
    let (shown, _) = m.ok(&restored, &pw, &["phrase", "show"]);
    assert_eq!(shown.trim(), phrase);
}

#[test]
fn a_passphrase_protects_the_keys_at_rest() {
    let m = Dev::start();
    let alice = m.home("alice");
    let pw = [("SESPHR_PASSPHRASE", "first passphrase")];
    let (_, stderr) = m.ok(
        &alice,
        &pw,
        &["enroll", "--id", "alice", "--role", "patient"],
    );
    assert!(stderr.contains("protected by your passphrase"), "{stderr}");
    assert!(stderr.contains("SESPHR_KDF_TEST_PARAMS"), "{stderr}");
    assert!(is_sealed(&alice.join("master.key")));
    assert!(is_sealed(&alice.join("tls.key")));
    let id = m.upload(&alice, &pw, "medical", "sealed at rest");
    assert_eq!(m.get(&alice, &pw, &id), "sealed at rest");

    // No passphrase, or a wrong one: one line, and nothing changes.
    let files = snapshot(&alice);
    let err = m.fails(&alice, &[], &["get", &id]);
    assert!(err.contains("is protected by a passphrase"), "{err}");
    assert!(err.contains("SESPHR_PASSPHRASE"), "{err}");
    let wrong = [("SESPHR_PASSPHRASE", "not it")];
    let err = m.fails(&alice, &wrong, &["get", &id]);
    assert_eq!(
        err.trim_end(),
        format!(
            "sesphr: wrong passphrase for {}",
            alice.join("master.key").display()
        )
    );
    let err = m.fails(
        &alice,
        &[
            ("SESPHR_PASSPHRASE", "not it"),
            ("SESPHR_NEW_PASSPHRASE", "second"),
        ],
        &["passphrase", "change"],
    );
    assert!(err.contains("wrong passphrase for"), "{err}");
    let err = m.fails(&alice, &wrong, &["passphrase", "remove"]);
    assert!(err.contains("wrong passphrase for"), "{err}");
    let err = m.fails(&alice, &wrong, &["phrase", "show"]);
    assert!(err.contains("wrong passphrase for"), "{err}");
    let err = m.fails(&alice, &pw, &["passphrase", "set"]);
    assert!(err.contains("already protected"), "{err}");
    assert_eq!(
        snapshot(&alice),
        files,
        "a refused command changed the profile"
    );

    // A renewal with a new TLS key keeps it sealed.
    m.ok(&alice, &pw, &["renew", "--new-key"]);
    assert!(is_sealed(&alice.join("tls.key")));
    assert_eq!(m.get(&alice, &pw, &id), "sealed at rest");

    // Change: the old one no longer opens it, the new one does.
    let second = [("SESPHR_PASSPHRASE", "second passphrase")];
    m.ok(
        &alice,
        &[
            ("SESPHR_PASSPHRASE", "first passphrase"),
            ("SESPHR_NEW_PASSPHRASE", "second passphrase"),
        ],
        &["passphrase", "change"],
    );
    let err = m.fails(&alice, &pw, &["get", &id]);
    assert!(err.contains("wrong passphrase"), "{err}");
    assert_eq!(m.get(&alice, &second, &id), "sealed at rest");
    let id2 = m.upload(&alice, &second, "medical", "after the change");
    assert!(!alice.join("master.key.next").exists());
    assert!(!alice.join("secrets.commit").exists());

    // Remove: plain files again, read without a passphrase.
    m.ok(&alice, &second, &["passphrase", "remove"]);
    assert!(!is_sealed(&alice.join("master.key")));
    let hex = std::fs::read_to_string(alice.join("master.key")).unwrap();
    assert_eq!(hex.trim().len(), 64);
    assert!(
        std::fs::read_to_string(alice.join("tls.key"))
            .unwrap()
            .starts_with("-----BEGIN")
    );
    assert_eq!(m.get(&alice, &[], &id2), "after the change");
    let err = m.fails(&alice, &[], &["passphrase", "remove"]);
    assert!(err.contains("has no passphrase"), "{err}");

    // Set again: sealed, and it works.
    let third = [("SESPHR_PASSPHRASE", "third passphrase")];
    m.ok(&alice, &third, &["passphrase", "set"]);
    assert!(is_sealed(&alice.join("master.key")));
    assert!(is_sealed(&alice.join("tls.key")));
    assert_eq!(m.get(&alice, &third, &id), "sealed at rest");
    // Its backup is sealed under the same passphrase.
    let backup = m.path().join("b");
    m.ok(&alice, &third, &["backup", "-o", backup.to_str().unwrap()]);
    let err = m.fails(
        &m.home("x"),
        &pw,
        &[
            "restore",
            backup.to_str().unwrap(),
            "--home",
            m.home("x").to_str().unwrap(),
        ],
    );
    assert!(err.contains("wrong passphrase"), "{err}");
    assert!(!m.home("x").exists());
    // --new-passphrase: the profile opens with its own, the backup is
    // sealed under the new one.
    let other = m.path().join("b2");
    m.ok(
        &alice,
        &[
            ("SESPHR_PASSPHRASE", "third passphrase"),
            ("SESPHR_NEW_PASSPHRASE", "backup passphrase"),
        ],
        &["backup", "--new-passphrase", "-o", other.to_str().unwrap()],
    );
    use sesphr_client::sealed::Passphrase;
    let given = |s: &str| Passphrase::new(zeroize::Zeroizing::new(s.to_owned()));
    let opened = sesphr_client::restore::Backup::read(&other, &given("backup passphrase")).unwrap();
    assert_eq!(
        opened.identity().to_string(),
        "spiffe://sesphr.local/patient/alice"
    );
    assert!(sesphr_client::restore::Backup::read(&other, &given("third passphrase")).is_err());
    assert!(is_sealed(&alice.join("master.key")));
    assert_eq!(m.get(&alice, &third, &id), "sealed at rest");
}

/// A change of passphrase interrupted after its commit marker rolls
/// forward on the next command; one interrupted before it is dropped.
#[test]
fn an_interrupted_change_of_passphrase_never_leaves_a_half_sealed_profile() {
    use sesphr_client::sealed::{self, KdfParams, Passphrase};
    use zeroize::Zeroizing;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let identity =
        sesphr_identity::Identity::user("sesphr.local", sesphr_identity::Role::Patient, "alice")
            .unwrap();
    let master = sesphr_crypto::MasterSecret::generate(&mut rand::rng());
    let pass =
        |s: &str| Passphrase::new(Zeroizing::new(s.to_owned())).with_kdf(KdfParams::INSECURE_TEST);
    let (_, key_pem) = sesphr_mesh::pki::make_csr().unwrap();
    let profile = sesphr_client::Profile::create_with(
        home,
        &identity,
        &master,
        &key_pem,
        "cert",
        "ca",
        sesphr_client::NewProfile {
            passphrase: Some(&pass("old")),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        profile.master_secret().unwrap().to_bytes(),
        master.to_bytes()
    );
    // Crash after both new files were written and the marker committed,
    // before the renames: the next load finishes the change.
    let hex = hex::encode(master.to_bytes().as_slice());
    let new_master = sealed::seal("master.key", hex.as_bytes(), &pass("new")).unwrap();
    let new_tls = sealed::seal("tls.key", key_pem.as_bytes(), &pass("new")).unwrap();
    std::fs::write(home.join("master.key.next"), &new_master).unwrap();
    std::fs::write(home.join("tls.key.next"), &new_tls).unwrap();
    std::fs::write(home.join("secrets.commit"), b"").unwrap();
    let loaded = sesphr_client::Profile::load(home)
        .unwrap()
        .with_passphrase(pass("new"));
    assert_eq!(
        loaded.master_secret().unwrap().to_bytes(),
        master.to_bytes()
    );
    assert_eq!(loaded.tls_key_pem().unwrap().as_str(), key_pem);
    assert!(!home.join("secrets.commit").exists());
    // Crash before the marker: the replacements are dropped, the old
    // passphrase still opens both files.
    std::fs::write(
        home.join("master.key.next"),
        sealed::seal("master.key", hex.as_bytes(), &pass("newer")).unwrap(),
    )
    .unwrap();
    let loaded = sesphr_client::Profile::load(home)
        .unwrap()
        .with_passphrase(pass("new"));
    assert_eq!(
        loaded.master_secret().unwrap().to_bytes(),
        master.to_bytes()
    );
    assert!(!home.join("master.key.next").exists());
    let err = sesphr_client::Profile::load(home)
        .unwrap()
        .with_passphrase(pass("newer"))
        .master_secret()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("wrong passphrase for {}", home.join("master.key").display())
    );
}

/// The SDK: a protected profile opens with its passphrase given, and
/// refuses with one clear error without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_profile_opens_through_the_sdk_with_its_passphrase() {
    use sesphr_client::sealed::{KdfParams, Passphrase};
    use sesphr_client::{Patient, Profile};
    let s = common::Sandbox::start().await;
    let mesh = s.mesh_file();
    let home = s.home("alice");
    let pass = Passphrase::new(zeroize::Zeroizing::new("sdk passphrase".to_owned()))
        .with_kdf(KdfParams::INSECURE_TEST);
    sesphr_client::enroll_protected(
        &mesh,
        &home,
        "alice",
        sesphr_identity::Role::Patient,
        "",
        Some(&pass),
    )
    .await
    .unwrap();
    assert!(is_sealed(&home.join("master.key")));
    let err = Patient::open(&mesh, &home).err().expect("refused");
    assert!(
        err.to_string().contains("is protected by a passphrase"),
        "{err}"
    );
    let alice = Patient::open_profile(
        &mesh,
        Profile::load(&home).unwrap().with_passphrase(pass.clone()),
    )
    .unwrap();
    let rec = common::upload(&alice, "medical", b"through the SDK").await;
    assert_eq!(
        common::download(&alice, &rec.record_id).await.unwrap(),
        b"through the SDK"
    );
    let profile = Profile::load(&home).unwrap().with_passphrase(pass);
    assert!(
        sesphr_client::reconcile_epochs(&mesh, &profile)
            .await
            .unwrap()
            .is_empty()
    );
    s.shutdown().await;
}
