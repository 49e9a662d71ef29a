//! `sesphr demo`: the SeSPHR story, end to end, with every expected allow
//! and deny checked.
//!
//! Patient alice imports a FHIR bundle; she grants doctor bob `medical`,
//! insurer carol `insurance` and friend dave `personal` for one hour. Each
//! reads what they may and is refused what they may not. Alice revokes bob,
//! and bob is refused. The audit trail is printed and verified.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use sesphr_identity::Role;

use sesphr_client::{self as client, ClientError, GrantOptions, MeshFile, Patient, Session};
use sesphr_server::daemon::{DevMesh, DevOptions};

/// Outcome of the story.
#[derive(Debug, Default)]
pub struct DemoReport {
    pub checks: usize,
    pub failures: Vec<String>,
}

impl DemoReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs the story against `mesh`, or against a fresh in-process mesh in a
/// temp dir when `mesh` is `None`. Narration goes to `out`.
///
/// Practitioners are invited by the operator whose profile is in
/// `operator` (a dev mesh's `DIR/operator`; the in-process mesh's own when
/// `mesh` is `None`); the friend by the patient.
pub async fn run(
    mesh: Option<(MeshFile, std::path::PathBuf)>,
    out: &mut (dyn Write + Send),
) -> Result<DemoReport, DemoError> {
    let work = tempfile::tempdir().map_err(|e| DemoError::Setup(e.to_string()))?;
    let (mesh_file, operator, dev, suffix) = match mesh {
        Some((m, operator)) => {
            // Fresh user ids, so the story can run against a mesh repeatedly.
            let suffix = format!("-{}", &hex::encode(rand::random::<[u8; 3]>()));
            (m, operator, None, suffix)
        }
        None => {
            let dev = DevMesh::start(DevOptions::new(work.path().join("mesh")).ephemeral())
                .await
                .map_err(|e| DemoError::Setup(e.to_string()))?;
            dev.wait_ready(std::time::Duration::from_secs(30))
                .await
                .map_err(|e| DemoError::Setup(e.message().to_owned()))?;
            let operator = sesphr_server::daemon::dev_operator_dir(&work.path().join("mesh"));
            (dev.mesh.clone(), operator, Some(dev), String::new())
        }
    };
    let result = story(&mesh_file, &operator, work.path(), &suffix, out).await;
    if let Some(dev) = dev {
        dev.shutdown()
            .await
            .map_err(|e| DemoError::Setup(e.to_string()))?;
    }
    result
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo setup failed: {0}")]
    Setup(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("writing the narration failed: {0}")]
    Output(#[from] std::io::Error),
}

async fn story(
    mesh: &MeshFile,
    operator: &Path,
    dir: &Path,
    suffix: &str,
    out: &mut (dyn Write + Send),
) -> Result<DemoReport, DemoError> {
    let ops = client::admin::Admin::open(mesh, operator)?;
    let name = |n: &str| format!("{n}{suffix}");
    let home = |n: &str| dir.join("users").join(name(n));
    let cast = [
        ("alice", Role::Patient),
        ("bob", Role::Doctor),
        ("carol", Role::Insurer),
        ("dave", Role::Friend),
    ];
    writeln!(out, "== enrolment")?;
    for (who, role) in cast {
        // The patient registers herself; the operator invites the
        // practitioners, the patient her friend.
        let invitation = match role {
            Role::Patient => zeroize::Zeroizing::new(String::new()),
            Role::Friend | Role::Family => {
                let patient = client::Patient::open(mesh, &home("alice"))?;
                patient.invite(&name(who), role, None).await?.text
            }
            _ => ops.invite(&name(who), role, None).await?.text,
        };
        client::enroll(mesh, &home(who), &name(who), role, &invitation).await?;
        writeln!(
            out,
            "  {} enrolled as {role} ({:?} domain)",
            name(who),
            role.domain()
        )?;
    }
    let alice = Patient::open(mesh, &home("alice"))?;
    writeln!(out, "== alice imports her FHIR bundle")?;
    let bundle = client::fhir::sample_bundle(&name("alice")).to_string();
    let records: BTreeMap<String, client::RecordId> = alice
        .import_fhir(&bundle, &Default::default())
        .await?
        .into_iter()
        .map(|(p, r)| (p, r.record_id))
        .collect();
    for (p, id) in &records {
        writeln!(out, "  {p:<14} {id}")?;
    }
    writeln!(out, "== alice grants")?;
    let hour = client::unix_now() + 3600;
    for (who, partition, expires) in [
        ("bob", "medical", None),
        ("carol", "insurance", None),
        ("dave", "personal", Some(hour)),
    ] {
        let opts = GrantOptions {
            not_before: None,
            expires_at: expires,
        };
        alice.grant(partition, &name(who), opts).await?;
        let until = if expires.is_some() { " for 1 h" } else { "" };
        writeln!(out, "  {} may read {partition}{until}", name(who))?;
    }
    let mut report = DemoReport::default();
    let sessions: BTreeMap<&str, Session> = ["bob", "carol", "dave"]
        .into_iter()
        .map(|w| Session::open(mesh, &home(w)).map(|s| (w, s)))
        .collect::<Result<_, _>>()?;
    writeln!(out, "== everyone reads")?;
    let expectations = [
        ("bob", "medical", true),
        ("bob", "insurance", false),
        ("bob", "personal", false),
        ("carol", "insurance", true),
        ("carol", "medical", false),
        ("dave", "personal", true),
        ("dave", "prescriptions", false),
    ];
    for (who, partition, allowed) in expectations {
        expect_read(
            &sessions[who],
            &records[partition],
            partition,
            allowed,
            &mut report,
            out,
        )
        .await?;
    }
    writeln!(out, "== alice revokes bob's access to medical")?;
    alice.revoke("medical", &name("bob")).await?;
    expect_read(
        &sessions["bob"],
        &records["medical"],
        "medical",
        false,
        &mut report,
        out,
    )
    .await?;

    writeln!(
        out,
        "== alice's audit trail, each entry proven in a witnessed checkpoint"
    )?;
    report.checks += 1;
    match alice.verified_audit().await {
        Ok(audit) => {
            for p in &audit.entries {
                let e = &p.entry;
                writeln!(
                    out,
                    "  #{:<4} {:<34} {:<24} {:<14} {:<8} {}",
                    e.seq, e.action, e.subject, e.partition, e.outcome, e.detail
                )?;
            }
            match &audit.head {
                Some(head) => writeln!(
                    out,
                    "  {} entries included in the log at size {}, cosigned by {}",
                    audit.entries.len() - audit.pending(),
                    head.size,
                    audit.witnesses.join(", ")
                )?,
                None => report
                    .failures
                    .push("the audit log has no witnessed checkpoint".into()),
            }
        }
        Err(e) => report
            .failures
            .push(format!("the audit log does not verify: {e}")),
    }
    writeln!(
        out,
        "== {} checks, {} failed",
        report.checks,
        report.failures.len()
    )?;
    Ok(report)
}

async fn expect_read(
    session: &Session,
    record_id: &str,
    partition: &str,
    allowed: bool,
    report: &mut DemoReport,
    out: &mut (dyn Write + Send),
) -> Result<(), DemoError> {
    let mut sink = Vec::new();
    let result = session
        .download(record_id, &mut sink, client::no_progress())
        .await;
    let who = format!("{} ({})", session.user_id(), session.profile.role());
    report.checks += 1;
    let line = match (&result, allowed) {
        (Ok(_), true) => format!(
            "  ok   {who} reads {partition}: allowed ({} bytes)",
            sink.len()
        ),
        (Err(e), false) if e.code() == Some(tonic::Code::PermissionDenied) => {
            format!("  ok   {who} reads {partition}: denied")
        }
        (Ok(_), false) => {
            let f = format!("{who} read {partition} but should have been denied");
            report.failures.push(f.clone());
            format!("  FAIL {f}")
        }
        (Err(e), _) => {
            let f = format!("{who} reading {partition}: {e}");
            report.failures.push(f.clone());
            format!("  FAIL {f}")
        }
    };
    writeln!(out, "{line}")?;
    Ok(())
}
