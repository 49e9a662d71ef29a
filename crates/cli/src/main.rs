//! `sesphr`: the SeSPHR command line for patients and practitioners.
//!
//! Machine-readable results go to stdout; progress and messages to stderr.
//! A failure exits non-zero with one readable line.

mod demo;
mod get;
mod recovery;
mod secrets;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sesphr_client::{self as client, GrantOptions, MeshFile, Patient, Progress, Session};
use sesphr_identity::Role;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Parser)]
#[command(
    name = "sesphr",
    version,
    about = "Share encrypted health records on a SeSPHR mesh"
)]
struct Cli {
    /// The mesh.toml of the mesh (`sesphrd dev` writes DIR/mesh.toml). Its
    /// optional `[timeouts]` section bounds every call, in milliseconds:
    /// `connect_ms` (TCP connect, then TLS handshake, each; default 10000),
    /// `unary_ms` (a whole unary call; 30000), `first_message_ms` (from the
    /// request to the first reply message; 30000), `idle_ms` (between two
    /// messages of a stream; 30000). A server that stays silent past one
    /// fails the command with a "deadline" error.
    #[arg(long, env = "SESPHR_MESH", global = true)]
    mesh: Option<PathBuf>,
    /// Your profile directory (keys, certificate); for `sesphr admin`, the
    /// operator's profile (`sesphrd dev` writes DIR/operator).
    #[arg(long, env = "SESPHR_HOME", global = true)]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enrol with the mesh: create keys locally and get a client certificate.
    ///
    /// Practitioners (doctor, nurse, pharmacist, insurer, researcher) need an
    /// invitation from an operator (`sesphr admin invite`), family and
    /// friends one from an operator or from the patient who names them
    /// (`sesphr invite`). A patient may register herself where the mesh
    /// allows it (`sesphrd dev` does). Prints your identity on stdout, your
    /// key fingerprint and the certificate's expiry on stderr.
    Enroll {
        #[arg(long)]
        id: String,
        /// patient, doctor, nurse, pharmacist, insurer, researcher, family,
        /// friend (family/friend = private domain, the rest public domain).
        #[arg(long)]
        role: String,
        /// The invitation (`inv1-…`) issued for this id and role; single
        /// use. Without one, only a patient on a mesh that allows
        /// self-registration can enrol.
        #[arg(
            long,
            env = "SESPHR_INVITATION",
            visible_alias = "invitation",
            value_name = "TOKEN",
            hide_env_values = true
        )]
        invite: Option<String>,
        #[command(flatten)]
        secrets: secrets::EnrollSecrets,
    },
    /// Invite a family member or friend to enrol (patients only); prints
    /// the invitation alone on stdout, to hand to them privately.
    Invite {
        /// The id they will enrol as.
        #[arg(long)]
        id: String,
        /// family or friend (practitioners are invited by an operator).
        #[arg(long)]
        role: String,
        /// How long it stays valid: 7d, 12h, 30m (default 7d, at most 30d).
        #[arg(long, value_name = "DUR")]
        valid_for: Option<String>,
    },
    /// Renew your certificate now (every command renews it by itself once
    /// it is in the last third of its life); prints the new expiry.
    ///
    /// An expired certificate cannot be renewed: run `sesphr reenroll`.
    Renew {
        /// Also replace the TLS key the certificate is for.
        #[arg(long)]
        new_key: bool,
    },
    /// Re-enrol an existing profile (after its certificate expired or its
    /// TLS key was lost): the same id, role, keys and grants, proven by a
    /// signature of your registered key; a new TLS key and certificate on a
    /// new device, and the profile's previous device is removed.
    Reenroll {
        /// An operator's re-invitation (`inv1-…`, `sesphr admin invite`),
        /// only where the mesh asks for one.
        #[arg(
            long,
            env = "SESPHR_INVITATION",
            visible_alias = "invitation",
            value_name = "TOKEN",
            hide_env_values = true
        )]
        invite: Option<String>,
    },
    /// Operator commands: invite users, disable and enable them. `--home`
    /// is the operator's profile (`sesphrd dev` writes DIR/operator).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Encrypt and upload a file; prints the new record id.
    Upload {
        #[arg(long)]
        partition: String,
        file: PathBuf,
    },
    /// Split a FHIR R4 Bundle into partitions and upload one record each.
    ImportFhir {
        bundle: PathBuf,
        /// JSON object overriding the resource type → partition map.
        #[arg(long)]
        map: Option<PathBuf>,
    },
    /// List records you may see.
    Ls {
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        partition: Option<String>,
    },
    /// Download and decrypt a record (to stdout without -o).
    ///
    /// To stdout, each segment is written as soon as it authenticated: if a
    /// later segment fails (tampered or truncated record), what came before
    /// is already written and the command fails. `--verify-first` writes
    /// nothing until the whole record verified. With -o, the plaintext goes
    /// to a temporary file beside FILE, renamed onto it only once the whole
    /// record verified, and removed on failure, SIGINT (exit 130) or
    /// SIGTERM (exit 143).
    Get {
        record_id: String,
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        /// To stdout: hold the plaintext in an unlinked temporary file
        /// (gone with the process, even on kill -9) and write it only after
        /// the whole record verified; nothing is written on failure.
        #[arg(long, conflicts_with = "output")]
        verify_first: bool,
    },
    /// Grant a user access to one of your partitions.
    ///
    /// Prints the grantee's enrolled role and key fingerprint (as the
    /// directory presents them and your profile pins them) before granting;
    /// compare the fingerprint with them out of band.
    Grant {
        #[arg(long)]
        partition: String,
        #[arg(long)]
        to: String,
        /// The role you expect the grantee to have: nothing is granted if
        /// the directory has them enrolled with another one.
        #[arg(long)]
        role: Option<String>,
        /// Expiry as RFC 3339 (e.g. 2027-01-01T00:00:00Z).
        #[arg(long, conflicts_with = "for_")]
        expires: Option<String>,
        /// Expiry as a duration from now: 30d, 12h, 15m, 90s.
        #[arg(long = "for")]
        for_: Option<String>,
        /// Records created before this stay closed: `now` or RFC 3339.
        #[arg(long)]
        not_before: Option<String>,
    },
    /// Withdraw a grant, then rotate the partition so that records written
    /// from now on are under a key the revoked user never had a path to.
    Revoke {
        #[arg(long)]
        partition: String,
        #[arg(long)]
        from: String,
        /// Keep the current key epoch. Until the next rotation, the SRS
        /// together with the revoked user could still open new records.
        #[arg(long)]
        no_rotate: bool,
    },
    /// Send re-encryption nodes what they are still owed (kfrag shares a
    /// node did not take, deletions a node did not hear); grant, revoke and
    /// rotate do this first anyway.
    Retry,
    /// Move a partition to a new key epoch for later uploads.
    Rotate {
        #[arg(long)]
        partition: String,
    },
    /// Grants given and received; for your own grants, also where
    /// AccessPolicy's list disagrees with the ledger in your profile.
    Grants {
        /// Start the ledger of a profile that has none from AccessPolicy's
        /// current list (check that list first; done once).
        #[arg(long)]
        adopt: bool,
    },
    /// Show a user's keys as the SRS presents them, their fingerprint and
    /// whether they match the keys your profile pinned.
    Whois { user_id: String },
    /// Pin a user's keys after checking their fingerprint with them out of
    /// band (needed when a pinned user's keys changed).
    Trust {
        user_id: String,
        /// The fingerprint the user told you (as `sesphr whois` prints it).
        #[arg(long)]
        fingerprint: String,
    },
    /// Your audit trail, each entry checked against a witnessed checkpoint
    /// of the log that extends the one this profile pinned before.
    Audit {
        /// Also print the checkpoint that was verified and pinned (its
        /// signed text and who cosigned it), on stderr.
        #[arg(long)]
        verify: bool,
        /// Also write the entries as a FHIR R4 Bundle of AuditEvents, each
        /// with its inclusion proof, to FILE.
        #[arg(long, value_name = "FILE")]
        export: Option<PathBuf>,
    },
    /// The whole audit log as an operator sees it, verified like `audit`
    /// and optionally exported as FHIR: authenticated by an operator
    /// certificate (e.g. `DIR/pki/operator.pem` of `sesphrd dev`).
    OperatorAudit {
        /// The operator's certificate (PEM).
        #[arg(long, value_name = "PEM")]
        cert: PathBuf,
        /// Its private key (PEM).
        #[arg(long, value_name = "PEM")]
        key: PathBuf,
        /// Where the operator's pinned checkpoint is kept.
        #[arg(long, value_name = "DIR")]
        pin_dir: PathBuf,
        /// Write every entry as a FHIR R4 Bundle of AuditEvents to FILE.
        #[arg(long, value_name = "FILE")]
        export: Option<PathBuf>,
    },
    /// Run the whole story on an in-process mesh (or on --mesh).
    Demo,
    #[command(flatten)]
    Secrets(secrets::Command),
    /// Your devices: each has its own TLS key and certificate for the same
    /// user id and keys.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Trustee recovery: trustees you choose, any t of them together, help
    /// you rebuild your keys on a new machine (docs/recovery.md).
    Recovery {
        #[command(subcommand)]
        command: recovery::Command,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Make this machine another device of yours from a backup file of
    /// the first (`sesphr backup`): --home NEWDIR is where its profile
    /// goes, with a new TLS key and certificate.
    Add(secrets::DeviceAdd),
    /// List your devices (`*` marks this one): name, when it was added,
    /// when its certificate expires.
    List,
    /// Remove one of your devices (a lost or retired machine): every
    /// certificate it got is revoked at once and it renews nothing. Run it
    /// from another device.
    Remove {
        /// The device's name (`sesphr device list`).
        name: String,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Issue a single-use invitation for ID to enrol as ROLE; prints the
    /// invitation alone on stdout (shown once: the mesh keeps its hash).
    ///
    /// For a user already enrolled with that role it is a re-invitation:
    /// they run `sesphr reenroll --invite TOKEN` on their existing profile.
    Invite {
        #[arg(long)]
        id: String,
        /// patient, doctor, nurse, pharmacist, insurer, researcher, family,
        /// friend.
        #[arg(long)]
        role: String,
        /// How long it stays valid: 7d, 12h, 30m (default 7d, at most 30d).
        #[arg(long, value_name = "DUR")]
        valid_for: Option<String>,
    },
    /// Disable a user: every service refuses their calls (within 10 s)
    /// and no one can grant to them. Audited.
    Disable {
        #[arg(long)]
        id: String,
        /// Why (kept in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Enable a disabled user again. Audited.
    Enable {
        #[arg(long)]
        id: String,
        /// Why (kept in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sesphr: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sesphr: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn one_line(e: &anyhow::Error) -> String {
    // Errors quote servers' messages: their control characters are escaped.
    client::printable(&client::error_line(e.as_ref())).into_owned()
}

fn mesh_file(path: &Option<PathBuf>) -> anyhow::Result<MeshFile> {
    let path = path.as_ref().ok_or_else(|| {
        anyhow!("no mesh: pass --mesh FILE or set SESPHR_MESH (sesphrd dev writes DIR/mesh.toml)")
    })?;
    Ok(MeshFile::load(path)?)
}

fn home(path: &Option<PathBuf>) -> anyhow::Result<&Path> {
    path.as_deref()
        .ok_or_else(|| anyhow!("no profile: pass --home DIR or set SESPHR_HOME"))
}

/// How long a certificate may have left before a failed renewal is worth
/// a warning on every command.
const EXPIRY_WARNING_SECS: i64 = 7 * 86_400;

/// The user profile in `path`, its certificate checked first: refused if
/// it has expired (`sesphr reenroll` helps then), renewed if it is in
/// the last third of its life. A failed renewal only warns: the
/// certificate still works, and the next command tries again.
async fn user_home<'a>(mesh: &MeshFile, path: &'a Option<PathBuf>) -> anyhow::Result<&'a Path> {
    let home = home(path)?;
    let profile = client::Profile::load(home)?;
    // A certificate that cannot be read is reported when the profile opens.
    let Ok(life) = profile.certificate_life() else {
        return Ok(home);
    };
    let now = client::unix_now();
    if life.expired(now) {
        bail!("{}", expired_hint(&profile, life.not_after));
    }
    match client::admin::renew_if_due(mesh, &profile).await {
        Ok(None) => {}
        Ok(Some(not_after)) => eprintln!(
            "sesphr: renewed your certificate (it was in the last third of its life): \
             valid until {}",
            fmt_time(not_after)
        ),
        Err(e) => eprintln!(
            "sesphr: warning: {}",
            renewal_warning(life.not_after, now, &one_line(&e.into()))
        ),
    }
    Ok(home)
}

/// What to do about an expired certificate.
fn expired_hint(profile: &client::Profile, not_after: i64) -> String {
    format!(
        "your certificate of {} expired at {}; run `sesphr reenroll`: it proves your \
         registered key and keeps your id and your grants",
        profile.identity,
        fmt_time(not_after)
    )
}

/// The one-line warning of a failed automatic renewal.
fn renewal_warning(not_after: i64, now: i64, why: &str) -> String {
    let left = not_after - now;
    if left <= EXPIRY_WARNING_SECS {
        let days = left / 86_400;
        let when = match days {
            0 => format!("in {} h", (left / 3_600).max(1)),
            1 => "in 1 day".to_owned(),
            d => format!("in {d} days"),
        };
        format!(
            "your certificate expires {when} ({}) and could not be renewed ({why}); \
             run `sesphr renew` before then, or `sesphr reenroll` afterwards",
            fmt_time(not_after)
        )
    } else {
        format!(
            "could not renew your certificate, valid until {} ({why}); the next command \
             tries again",
            fmt_time(not_after)
        )
    }
}

/// An enrolment's refusal, with what to do about it.
fn enroll_error(
    e: client::ClientError,
    id: &str,
    role: Role,
    had_invitation: bool,
) -> anyhow::Error {
    let message = e
        .status()
        .map(|s| s.message().to_owned())
        .unwrap_or_default();
    // Whom to ask for an invitation ("an invitation", "a new one").
    let ask = |what: &str| {
        if role.domain() == sesphr_identity::Domain::Private {
            format!(
                "ask an operator (`sesphr admin invite --id {id} --role {role}`) or the patient \
                 who names you (`sesphr invite --id {id} --role {role}`) for {what}"
            )
        } else {
            format!("ask an operator for {what} (`sesphr admin invite --id {id} --role {role}`)")
        }
    };
    let hint = match e.code() {
        Some(tonic::Code::PermissionDenied) if !had_invitation => {
            format!("{} and pass it with --invite TOKEN", ask("an invitation"))
        }
        Some(tonic::Code::PermissionDenied) if message.contains("already used") => {
            format!("an invitation enrols once: {}", ask("a new one"))
        }
        Some(tonic::Code::PermissionDenied) if message.contains("expired") => ask("a new one"),
        Some(tonic::Code::PermissionDenied) if message.contains("is for ") => {
            "pass the --id and --role the invitation was issued for".to_owned()
        }
        Some(tonic::Code::PermissionDenied)
            if message.contains("malformed") || message.contains("unknown") =>
        {
            "check that you copied the whole invitation (inv1- and 64 hex digits)".to_owned()
        }
        Some(tonic::Code::PermissionDenied) if message.contains("re-invitation") => {
            "a re-invitation is for an existing profile: run `sesphr reenroll --invite TOKEN` \
             with that profile's --home"
                .to_owned()
        }
        Some(tonic::Code::AlreadyExists) => format!(
            "if you are {id} and your certificate expired or your TLS key is lost, run \
             `sesphr reenroll` with your profile's --home; if the profile is lost, `sesphr \
             restore` from your backup or recovery phrase"
        ),
        _ => return e.into(),
    };
    anyhow!("{}; {hint}", one_line(&e.into()))
}

/// A re-enrolment's refusal, with what to do about it.
fn reenroll_error(e: client::ClientError, profile: &client::Profile) -> anyhow::Error {
    let message = e
        .status()
        .map(|s| s.message().to_owned())
        .unwrap_or_default();
    let ask = format!(
        "ask an operator for a re-invitation (`sesphr admin invite --id {} --role {}`)",
        profile.user_id(),
        profile.role()
    );
    let hint = match e.code() {
        Some(tonic::Code::PermissionDenied)
            if message.contains("already used") || message.contains("expired") =>
        {
            ask
        }
        Some(tonic::Code::PermissionDenied) if message.contains("is for ") => {
            format!("this profile is {}; {ask}", profile.identity)
        }
        Some(tonic::Code::PermissionDenied) if message.contains("key proof") => {
            "this profile's key is not the one registered for its id, or the mesh asks for an \
             operator's re-invitation: pass it with --invite TOKEN"
                .to_owned()
        }
        Some(tonic::Code::PermissionDenied) if message.contains("other keys") => {
            "this profile's keys are not the ones registered for its id: re-enrolment keeps \
             the registered keys, so only the profile that enrolled can use it"
                .to_owned()
        }
        Some(tonic::Code::PermissionDenied)
            if message.contains("malformed") || message.contains("unknown") =>
        {
            "check that you copied the whole invitation (inv1- and 64 hex digits)".to_owned()
        }
        _ => return e.into(),
    };
    anyhow!("{}; {hint}", one_line(&e.into()))
}

/// An invitation's text alone on stdout; what to do with it on stderr.
fn print_invitation(inv: &client::admin::Invitation, id: &str, role: Role) {
    println!("{}", inv.text.as_str());
    if inv.reenrollment {
        eprintln!(
            "re-invitation of {id} ({role}), single use, valid until {}: {id} runs \
             `sesphr reenroll --invite TOKEN` on their existing profile (same id, role, keys \
             and grants; a new certificate); it is shown once, hand it over privately",
            fmt_time(inv.expires_at)
        );
    } else {
        eprintln!(
            "invitation of {id} as {role}, single use, valid until {}: {id} runs \
             `sesphr enroll --id {id} --role {role} --invite TOKEN`; it is shown once, hand it \
             over privately",
            fmt_time(inv.expires_at)
        );
    }
}

/// The longest an invitation may stay valid (the SRS refuses more).
const MAX_INVITATION_SECS: i64 = 30 * 86_400;

/// An invitation's validity: a duration like 7d, 12h, 30m, at most 30d.
fn parse_validity(s: &str) -> anyhow::Result<std::time::Duration> {
    let secs = parse_duration(s)?;
    if secs > MAX_INVITATION_SECS {
        bail!("--valid-for {s}: an invitation stays valid for at most 30d");
    }
    Ok(std::time::Duration::from_secs(secs.unsigned_abs()))
}

fn parse_time(s: &str) -> anyhow::Result<i64> {
    if s == "now" {
        return Ok(client::unix_now());
    }
    let t = OffsetDateTime::parse(s, &Rfc3339).with_context(|| {
        format!("{s:?} is not `now` or an RFC 3339 time like 2027-01-01T00:00:00Z")
    })?;
    Ok(t.unix_timestamp())
}

fn parse_duration(s: &str) -> anyhow::Result<i64> {
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = num
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| anyhow!("{s:?} is not a duration like 30d, 12h, 15m or 90s"))?;
    let secs = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => bail!("{s:?} is not a duration like 30d, 12h, 15m or 90s"),
    };
    n.checked_mul(secs)
        .ok_or_else(|| anyhow!("{s:?} is too long"))
}

/// Writes `bytes` to `path` whole or not at all (a temp file beside it,
/// synced, then renamed over it).
fn write_new_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("{}: cannot create a file there", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("{}: write failed", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("{}: cannot write it", path.display()))?;
    Ok(())
}

/// One line per proven entry, tab-separated (entries newer than the
/// witnessed checkpoint are not shown: nothing vouches for them yet). The
/// entries' text is AccessPolicy's: no control character of it reaches the
/// terminal (or splits a line).
fn print_audit_entries(out: &mut impl Write, audit: &client::VerifiedAudit) -> std::io::Result<()> {
    let p = client::printable;
    for pe in audit.entries.iter().filter(|e| e.proof.is_some()) {
        let e = &pe.entry;
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            e.seq,
            fmt_time(e.time),
            p(&e.actor),
            p(&e.action),
            p(&e.owner_id),
            p(&e.partition),
            p(&e.subject),
            p(&e.outcome),
            p(&e.detail)
        )?;
    }
    Ok(())
}

/// One paragraph on what a verified audit read established.
fn audit_summary(a: &client::VerifiedAudit) -> String {
    let Some(head) = &a.head else {
        return "audit log: no witnessed checkpoint yet, and no entries about you".to_owned();
    };
    let proven = a.entries.len() - a.pending();
    let pin = match a.previous_size {
        None => "first checkpoint pinned".to_owned(),
        Some(s) if s == head.size => format!("unchanged since the pinned size {s}"),
        Some(s) => format!("consistent with the pinned size {s}"),
    };
    let witnesses = if a.witnesses.is_empty() {
        "no witnesses required".to_owned()
    } else {
        format!("cosigned by {}", a.witnesses.join(", "))
    };
    let mut line = format!(
        "audit log verified: {proven} entries about you included in the log at size {} (root {}, {}), {witnesses}; {pin}",
        head.size,
        hex::encode(head.root),
        fmt_time(head.time),
    );
    if a.pending() > 0 {
        line.push_str(&format!(
            "; {} newer entries are not yet in a witnessed checkpoint and are not shown (run again shortly)",
            a.pending()
        ));
    }
    line
}

fn fmt_time(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

/// A progress bar on stderr when it is a terminal; nothing otherwise.
fn progress(len: u64, verb: &str) -> (Progress, Option<ProgressBar>) {
    if !std::io::stderr().is_terminal() {
        return (client::no_progress(), None);
    }
    // Downloads learn their size only from the first message: a byte
    // counter instead of a bar.
    let (bar, template) = if len == 0 {
        (ProgressBar::no_length(), "{msg} {bytes} {bytes_per_sec}")
    } else {
        (
            ProgressBar::new(len),
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
    };
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(verb.to_owned());
    let b = bar.clone();
    (Arc::new(move |n| b.set_position(n)), Some(bar))
}

/// What went wrong at single re-encryption nodes while a command succeeded,
/// one line each on stderr.
fn print_notices(s: &Session) {
    for notice in s.notices.take() {
        eprintln!("sesphr: warning: {}", client::printable(&notice));
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    secrets::install_prompt();
    match cli.command {
        Command::Enroll {
            id,
            role,
            invite,
            secrets: protect,
        } => {
            let mesh = mesh_file(&cli.mesh)?;
            let role: Role = role.parse()?;
            let invite = zeroize::Zeroizing::new(invite.unwrap_or_default());
            let passphrase = secrets::enroll_passphrase(&protect)?;
            let profile = client::enroll_protected(
                &mesh,
                home(&cli.home)?,
                &id,
                role,
                &invite,
                passphrase.as_ref(),
            )
            .await
            .map_err(|e| enroll_error(e, &id, role, !invite.trim().is_empty()))?;
            eprintln!(
                "enrolled {} ({} domain)",
                profile.identity,
                match role.domain() {
                    sesphr_identity::Domain::Owner => "owner",
                    sesphr_identity::Domain::Private => "private",
                    sesphr_identity::Domain::Public => "public",
                }
            );
            eprintln!(
                "your key fingerprint: {} (tell it to those who grant to you or read your records)",
                client::own_fingerprint(&profile)?
            );
            if let Ok(life) = profile.certificate_life() {
                eprintln!(
                    "your certificate is valid until {} (later commands renew it by themselves)",
                    fmt_time(life.not_after)
                );
            }
            secrets::after_enroll(&profile, &protect, passphrase.is_some())?;
            println!("{}", profile.identity);
        }
        Command::Invite {
            id,
            role,
            valid_for,
        } => {
            let role: Role = role.parse()?;
            if role.domain() != sesphr_identity::Domain::Private {
                bail!(
                    "patients invite family and friends only (--role family or --role friend); \
                     a {role} is invited by an operator (`sesphr admin invite`)"
                );
            }
            let valid_for = valid_for.as_deref().map(parse_validity).transpose()?;
            let mesh = mesh_file(&cli.mesh)?;
            let patient = Patient::open(&mesh, user_home(&mesh, &cli.home).await?)?;
            let inv = patient.invite(&id, role, valid_for).await?;
            print_invitation(&inv, &id, role);
        }
        Command::Renew { new_key } => {
            let mesh = mesh_file(&cli.mesh)?;
            let profile = client::Profile::load(home(&cli.home)?)?;
            let not_after = client::admin::renew(&mesh, &profile, new_key).await?;
            eprintln!(
                "renewed the certificate of {}{}: valid until {}",
                profile.identity,
                if new_key { " (for a new TLS key)" } else { "" },
                fmt_time(not_after)
            );
            println!("{}", fmt_time(not_after));
        }
        Command::Reenroll { invite } => {
            let mesh = mesh_file(&cli.mesh)?;
            let home = home(&cli.home)?;
            let profile = client::Profile::load(home)?;
            let invite = invite.map(zeroize::Zeroizing::new);
            let not_after =
                client::admin::reenroll(&mesh, home, invite.as_ref().map(|i| i.as_str()))
                    .await
                    .map_err(|e| reenroll_error(e, &profile))?;
            eprintln!(
                "re-enrolled {} with the same keys and grants: a new TLS key and certificate, \
                 valid until {}",
                profile.identity,
                fmt_time(not_after)
            );
            println!("{}", fmt_time(not_after));
        }
        Command::Admin { command } => {
            let mesh = mesh_file(&cli.mesh)?;
            let home = cli.home.as_deref().ok_or_else(|| {
                anyhow!(
                    "no operator profile: pass --home DIR with the operator's profile \
                     (`sesphrd dev` writes DIR/operator)"
                )
            })?;
            let admin = client::admin::Admin::open(&mesh, home)?;
            match command {
                AdminCommand::Invite {
                    id,
                    role,
                    valid_for,
                } => {
                    let role: Role = role.parse()?;
                    let valid_for = valid_for.as_deref().map(parse_validity).transpose()?;
                    let inv = admin.invite(&id, role, valid_for).await?;
                    print_invitation(&inv, &id, role);
                }
                AdminCommand::Disable { id, reason } => {
                    let changed = admin.disable(&id, &reason).await?;
                    if changed {
                        println!("disabled {id}");
                        eprintln!(
                            "every service refuses {id}'s calls within 10 s and no one can grant \
                             to {id}; `sesphr admin enable --id {id}` undoes it"
                        );
                    } else {
                        println!("{id} was already disabled (unchanged)");
                    }
                }
                AdminCommand::Enable { id, reason } => {
                    let changed = admin.enable(&id, &reason).await?;
                    if changed {
                        println!("enabled {id}");
                        eprintln!("the services accept {id}'s calls again within 10 s");
                    } else {
                        println!("{id} was not disabled (unchanged)");
                    }
                }
            }
        }
        Command::Upload { partition, file } => {
            let mesh = mesh_file(&cli.mesh)?;
            let patient = Patient::open(&mesh, user_home(&mesh, &cli.home).await?)?;
            let f = std::fs::File::open(&file).with_context(|| file.display().to_string())?;
            let len = f
                .metadata()
                .with_context(|| file.display().to_string())?
                .len();
            let (cb, bar) = progress(len, "encrypting + uploading");
            let rec = patient.upload_dedup(&partition, f, len, cb).await;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            let (rec, stored) = rec?;
            eprintln!(
                "stored ({stored}): {len} bytes in {partition}, epoch {}",
                rec.epoch
            );
            println!("{}", rec.record_id);
        }
        Command::ImportFhir { bundle, map } => {
            let mesh = mesh_file(&cli.mesh)?;
            let patient = Patient::open(&mesh, user_home(&mesh, &cli.home).await?)?;
            let text =
                std::fs::read_to_string(&bundle).with_context(|| bundle.display().to_string())?;
            let map = match map {
                Some(p) => client::fhir::PartitionMap::with_overrides(
                    &std::fs::read_to_string(&p).with_context(|| p.display().to_string())?,
                )?,
                None => Default::default(),
            };
            for (partition, rec) in patient.import_fhir(&text, &map).await? {
                println!("{partition} {}", rec.record_id);
            }
        }
        Command::Ls { owner, partition } => {
            let mesh = mesh_file(&cli.mesh)?;
            let s = Session::open(&mesh, user_home(&mesh, &cli.home).await?)?;
            let mut out = stdout.lock();
            for r in s.list(owner.as_deref(), partition.as_deref()).await? {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    r.record_id,
                    r.owner_id,
                    r.partition,
                    r.epoch,
                    fmt_time(r.created_at),
                    r.ciphertext_size
                )?;
            }
        }
        Command::Get {
            record_id,
            output,
            verify_first,
        } => {
            let mesh = mesh_file(&cli.mesh)?;
            let s = Session::open(&mesh, user_home(&mesh, &cli.home).await?)?;
            let (cb, bar) = progress(0, "downloading + decrypting");
            let target = match output {
                Some(path) => get::Target::File(path),
                None => get::Target::Stdout { verify_first },
            };
            let finish = move || {
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                }
            };
            return get::run(&s, &record_id, target, cb, finish).await;
        }
        Command::Grant {
            partition,
            to,
            role,
            expires,
            for_,
            not_before,
        } => {
            let expected_role: Option<Role> = role.as_deref().map(str::parse).transpose()?;
            let expires_at = match (expires, for_) {
                (Some(t), _) => Some(parse_time(&t)?),
                (None, Some(d)) => Some(client::unix_now() + parse_duration(&d)?),
                (None, None) => None,
            };
            let not_before = not_before.map(|t| parse_time(&t)).transpose()?;
            let mesh = mesh_file(&cli.mesh)?;
            let patient = Patient::open(&mesh, user_home(&mesh, &cli.home).await?)?;
            // Who the grant goes to, as the directory has them enrolled:
            // their role decides the grant, whatever --role said.
            if to == patient.user_id() {
                bail!("you already own your records");
            }
            let (keys, status) = patient.whois(&to).await?;
            if let Some(expected) = expected_role
                && expected != keys.role
            {
                bail!(
                    "{to} is enrolled as {}, not {expected}; nothing was granted \
                     (`sesphr whois {to}` shows who they are)",
                    keys.role
                );
            }
            let pin = match status {
                client::PinStatus::Pinned => "matches your pin",
                client::PinStatus::New => "new to you: pinned now, compare it with them",
                // The grant refuses a changed key, saying what to do.
                client::PinStatus::Changed { .. } => "",
            };
            if !pin.is_empty() {
                eprintln!(
                    "granting to {to}: {}, key fingerprint {} ({pin})",
                    keys.role,
                    keys.fingerprint()
                );
            }
            let g = patient
                .grant(
                    &partition,
                    &to,
                    GrantOptions {
                        not_before,
                        expires_at,
                    },
                )
                .await?;
            print_notices(&patient);
            eprintln!(
                "granted {} ({}) {} from epoch {}{}{}",
                g.grantee_id,
                g.grantee_role,
                g.partition,
                g.epoch_min,
                if g.not_before > 0 {
                    format!(", records from {}", fmt_time(g.not_before))
                } else {
                    String::new()
                },
                g.expires_at
                    .map(|e| format!(", until {}", fmt_time(e)))
                    .unwrap_or_default()
            );
        }
        Command::Revoke {
            partition,
            from,
            no_rotate,
        } => {
            let mesh = mesh_file(&cli.mesh)?;
            let patient = Patient::open(&mesh, user_home(&mesh, &cli.home).await?)?;
            patient.revoke(&partition, &from).await?;
            print_notices(&patient);
            if no_rotate {
                eprintln!(
                    "revoked {from}'s access to {partition} (not rotated: run `sesphr rotate --partition {partition}` before writing records {from} must not read)"
                );
            } else {
                let epoch = patient.rotate(&partition).await.with_context(|| {
                    format!(
                        "revoked {from}'s access to {partition}, but the rotation failed; run `sesphr rotate --partition {partition}`"
                    )
                })?;
                eprintln!(
                    "revoked {from}'s access to {partition}; new records use key epoch {epoch}"
                );
            }
        }
        Command::Retry => {
            let mesh = mesh_file(&cli.mesh)?;
            let patient = Patient::open(&mesh, user_home(&mesh, &cli.home).await?)?;
            let before = patient.pending_node_ops()?.len();
            let still = patient.retry_pending().await?;
            eprintln!(
                "{} of {before} owed node operation(s) delivered; {still} still owed",
                before - still.min(before)
            );
            if still > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Rotate { partition } => {
            let mesh = mesh_file(&cli.mesh)?;
            let patient = Patient::open(&mesh, user_home(&mesh, &cli.home).await?)?;
            let epoch = patient.rotate(&partition).await?;
            print_notices(&patient);
            eprintln!("{partition} now uses key epoch {epoch} for new records");
            println!("{epoch}");
        }
        Command::Whois { user_id } => {
            let mesh = mesh_file(&cli.mesh)?;
            let s = Session::open(&mesh, user_home(&mesh, &cli.home).await?)?;
            let (keys, status) = s.whois(&user_id).await?;
            let status = match status {
                client::PinStatus::Pinned => "pinned (matches the keys you used before)".to_owned(),
                client::PinStatus::New => "not pinned yet (pinned on first use)".to_owned(),
                client::PinStatus::Changed { pinned } => {
                    format!(
                        "CHANGED: you pinned {pinned}; check with {user_id} before `sesphr trust`"
                    )
                }
            };
            println!("{}\t{}\t{}", keys.user_id, keys.role, keys.fingerprint());
            eprintln!("{status}");
        }
        Command::Trust {
            user_id,
            fingerprint,
        } => {
            let mesh = mesh_file(&cli.mesh)?;
            let s = Session::open(&mesh, user_home(&mesh, &cli.home).await?)?;
            let keys = s.trust(&user_id, &fingerprint).await?;
            eprintln!(
                "pinned {} ({}) {}",
                keys.user_id,
                keys.role,
                keys.fingerprint()
            );
        }
        Command::Grants { adopt: true } => {
            let mesh = mesh_file(&cli.mesh)?;
            let patient = Patient::open(&mesh, user_home(&mesh, &cli.home).await?)?;
            let n = patient.adopt_ledger().await?;
            eprintln!("your grant ledger now holds the {n} grant(s) AccessPolicy listed");
        }
        Command::Grants { adopt: false } => {
            let mesh = mesh_file(&cli.mesh)?;
            let s = Session::open(&mesh, user_home(&mesh, &cli.home).await?)?;
            let (g, disagreements) = if s.profile.role() == Role::Patient {
                Patient { session: s }.audit_grants().await?
            } else {
                (s.grants().await?, Vec::new())
            };
            let mut out = stdout.lock();
            for (dir, list) in [("given", g.given), ("received", g.received)] {
                for g in list {
                    writeln!(
                        out,
                        "{dir}\t{}\t{}\t{}\t{}\tepochs {}..{}\tnot_before {}\texpires {}",
                        g.owner_id,
                        g.partition,
                        g.grantee_id,
                        g.grantee_role,
                        g.epoch_min,
                        g.epoch_max.map(|e| e.to_string()).unwrap_or_default(),
                        fmt_time(g.not_before),
                        g.expires_at.map(fmt_time).unwrap_or_else(|| "never".into())
                    )?;
                }
            }
            for d in &disagreements {
                eprintln!("ledger disagrees: {d}");
            }
            if !disagreements.is_empty() {
                bail!(
                    "AccessPolicy's grants disagree with your ledger in {} place(s); rotations follow your ledger",
                    disagreements.len()
                );
            }
        }
        Command::Audit { verify, export } => {
            let mesh = mesh_file(&cli.mesh)?;
            let s = Session::open(&mesh, user_home(&mesh, &cli.home).await?)?;
            // Verified before anything is printed or written: a log that was
            // tampered with shows nothing but the one line saying how.
            let audit = s.verified_audit().await?;
            if let Some(path) = &export {
                let bundle = client::audit_export::fhir_bundle(
                    &audit,
                    OffsetDateTime::now_utc().unix_timestamp(),
                );
                let text = serde_json::to_vec_pretty(&bundle)?;
                write_new_file(path, &text)?;
            }
            print_audit_entries(&mut stdout.lock(), &audit)?;
            let p = client::printable;
            eprintln!("{}", audit_summary(&audit));
            if verify && let Some(head) = &audit.head {
                // Parsed strictly: printable ASCII only.
                eprint!("pinned checkpoint:\n{}", head.body());
                for c in &audit.cosignatures {
                    eprintln!("cosigned by {} at {}", p(&c.witness), fmt_time(c.time));
                }
            }
            if let Some(path) = &export {
                eprintln!(
                    "wrote {} AuditEvents to {}",
                    audit.entries.len(),
                    path.display()
                );
            }
        }
        Command::OperatorAudit {
            cert,
            key,
            pin_dir,
            export,
        } => {
            let mesh = mesh_file(&cli.mesh)?;
            let audit = client::audit_log::verified_audit_as(&mesh, &cert, &key, &pin_dir).await?;
            match &export {
                Some(path) => {
                    let bundle = client::audit_export::fhir_bundle(
                        &audit,
                        OffsetDateTime::now_utc().unix_timestamp(),
                    );
                    write_new_file(path, &serde_json::to_vec_pretty(&bundle)?)?;
                    eprintln!(
                        "wrote {} AuditEvents to {}",
                        audit.entries.len(),
                        path.display()
                    );
                }
                None => print_audit_entries(&mut stdout.lock(), &audit)?,
            }
            eprintln!("{}", audit_summary(&audit));
        }
        Command::Secrets(command) => secrets::run(command, &cli.mesh, &cli.home).await?,
        Command::Recovery { command } => recovery::run(command, &cli.mesh, &cli.home).await?,
        Command::Device {
            command: DeviceCommand::Add(args),
        } => secrets::device_add(args, &cli.mesh, &cli.home).await?,
        Command::Device {
            command: DeviceCommand::List,
        } => {
            let mesh = mesh_file(&cli.mesh)?;
            let profile = client::Profile::load(user_home(&mesh, &cli.home).await?)?;
            let devices = client::admin::list_devices(&mesh, &profile).await?;
            let mut stdout = std::io::stdout().lock();
            for d in &devices {
                writeln!(
                    stdout,
                    "{} {}\tadded {}\tcertificate until {}",
                    if d.current { "*" } else { " " },
                    d.name,
                    fmt_time(d.added_at),
                    fmt_time(d.not_after)
                )?;
            }
        }
        Command::Device {
            command: DeviceCommand::Remove { name },
        } => {
            let mesh = mesh_file(&cli.mesh)?;
            let profile = client::Profile::load(user_home(&mesh, &cli.home).await?)?;
            let until = client::admin::remove_device(&mesh, &profile, &name).await?;
            if until > 0 {
                eprintln!(
                    "removed device {name} of {}: its certificates are revoked (they would \
                     have expired at {})",
                    profile.identity,
                    fmt_time(until)
                );
            } else {
                eprintln!("removed device {name} of {}", profile.identity);
            }
        }
        Command::Demo => {
            // Against a mesh, the operator profile is --home, else the dev
            // layout's DIR/operator beside DIR/mesh.toml.
            let mesh = match &cli.mesh {
                Some(p) => {
                    let operator = match &cli.home {
                        Some(h) => h.clone(),
                        None => p.parent().unwrap_or(Path::new(".")).join("operator"),
                    };
                    Some((MeshFile::load(p)?, operator))
                }
                None => None,
            };
            let mut out = std::io::stdout();
            let report = demo::run(mesh, &mut out).await?;
            if !report.passed() {
                bail!("demo failed: {}", report.failures.join("; "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_renewal_warns_louder_in_the_last_week() {
        let now = 1_800_000_000;
        let soon = renewal_warning(now + 3 * 86_400 + 60, now, "SRS: unavailable");
        assert!(
            soon.starts_with("your certificate expires in 3 days"),
            "{soon}"
        );
        assert!(
            soon.contains("could not be renewed (SRS: unavailable)"),
            "{soon}"
        );
        assert!(soon.contains("sesphr renew"), "{soon}");
        let hours = renewal_warning(now + 5 * 3_600, now, "x");
        assert!(
            hours.starts_with("your certificate expires in 5 h"),
            "{hours}"
        );
        let later = renewal_warning(now + 9 * 86_400, now, "x");
        assert!(
            later.starts_with("could not renew your certificate"),
            "{later}"
        );
        for w in [soon, hours, later] {
            assert!(!w.contains('\n'));
        }
    }

    #[test]
    fn invitation_validity_is_a_duration_of_at_most_30_days() {
        assert_eq!(parse_validity("7d").unwrap().as_secs(), 7 * 86_400);
        assert_eq!(parse_validity("12h").unwrap().as_secs(), 12 * 3_600);
        assert_eq!(parse_validity("30m").unwrap().as_secs(), 1_800);
        assert_eq!(parse_validity("30d").unwrap().as_secs(), 30 * 86_400);
        assert!(
            parse_validity("31d")
                .unwrap_err()
                .to_string()
                .contains("at most 30d")
        );
        assert!(parse_validity("soon").is_err());
        assert!(parse_validity("0d").is_err());
    }

    #[test]
    fn the_command_line_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "sesphr",
            "--home",
            "op",
            "admin",
            "invite",
            "--id",
            "bob",
            "--role",
            "doctor",
            "--valid-for",
            "12h",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Admin {
                command: AdminCommand::Invite { .. }
            }
        ));
        // `--invitation` is an alias of `--invite`.
        let cli = Cli::try_parse_from([
            "sesphr",
            "enroll",
            "--id",
            "bob",
            "--role",
            "doctor",
            "--invitation",
            "inv1-x",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Enroll {
                invite: Some(_),
                ..
            }
        ));
    }
}
