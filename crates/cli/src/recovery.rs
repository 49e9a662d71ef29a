//! `sesphr recovery …`: trustee recovery (docs/recovery.md, "Trustee
//! recovery"). `setup` and `status` run on a working profile; `start` and
//! `finish` on the new machine (`--home NEWDIR`); `approve` on each
//! trustee's profile.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use clap::Subcommand;
use sesphr_client::recovery::{self, RecoveryRequest};
use sesphr_client::restore::RestoreOptions;
use sesphr_client::sealed::{KdfParams, Passphrase};
use sesphr_client::{self as client, Profile};
use zeroize::Zeroizing;

use crate::{fmt_time, home, mesh_file, user_home};

/// The environment variable a new profile's passphrase comes from.
const PASSPHRASE_ENV: &str = "SESPHR_PASSPHRASE";

#[derive(Subcommand)]
pub enum Command {
    /// Split your master secret among trustees (enrolled users you trust),
    /// any THRESHOLD of whom can help you rebuild it on a new machine. Each
    /// share is sealed to one trustee's key as pinned in your profile
    /// (compare fingerprints with `sesphr whois` first); the SRS stores the
    /// sealed shares and cannot open them. Replaces an earlier setup.
    Setup {
        /// The trustees' user ids, comma-separated (2 to 10).
        #[arg(long, value_delimiter = ',', required = true)]
        trustees: Vec<String>,
        /// How many of them must approve a recovery (at least 2).
        #[arg(long)]
        threshold: u32,
    },
    /// Your recovery setup, and every audit entry of a share released to a
    /// trustee (or refused to anyone).
    Status,
    /// On the new machine: start recovering --id into --home NEWDIR. Prints
    /// the request code (send it to your trustees) on stdout and its
    /// fingerprint (read it out to them by phone) on stderr.
    Start {
        /// Your user id.
        #[arg(long)]
        id: String,
    },
    /// As a trustee: approve a recovery request. Check its fingerprint
    /// with the owner by phone first (--fingerprint, or the prompt); prints
    /// the approval to send back to them.
    Approve {
        /// The request code from `sesphr recovery start`.
        code: String,
        /// The fingerprint the owner read out to you; required when there
        /// is no terminal to confirm on.
        #[arg(long, value_name = "FP")]
        fingerprint: Option<String>,
    },
    /// On the new machine: finish with the trustees' approvals (each an
    /// argument, or a file holding one or more, or `-` for standard input).
    /// Writes the profile in --home NEWDIR, sealed under SESPHR_PASSPHRASE
    /// if it is set (or --passphrase).
    Finish {
        /// The approvals, or files of them.
        #[arg(required = true, value_name = "APPROVAL")]
        approvals: Vec<String>,
        /// A name for this device (default: the mesh names it).
        #[arg(long, value_name = "NAME")]
        device: Option<String>,
        /// Seal the new profile under a passphrase asked on the terminal.
        #[arg(long)]
        passphrase: bool,
    },
}

pub async fn run(
    command: Command,
    mesh: &Option<PathBuf>,
    home_dir: &Option<PathBuf>,
) -> anyhow::Result<()> {
    match command {
        Command::Setup {
            trustees,
            threshold,
        } => {
            let mesh = mesh_file(mesh)?;
            let profile = Profile::load(user_home(&mesh, home_dir).await?)?;
            let names: Vec<&str> = trustees.iter().map(|t| t.trim()).collect();
            let setup = recovery::setup(&mesh, &profile, &names, threshold).await?;
            println!(
                "{} of {}: {}",
                setup.threshold,
                setup.trustees.len(),
                setup.trustees.join(", ")
            );
            eprintln!(
                "recovery set up at {}: any {} of {} can help you rebuild your keys \
                 (`sesphr recovery start` on a new machine); fewer learn nothing",
                fmt_time(setup.created_at),
                setup.threshold,
                setup.trustees.join(", ")
            );
        }
        Command::Status => {
            let mesh = mesh_file(mesh)?;
            let profile = Profile::load(user_home(&mesh, home_dir).await?)?;
            let status = recovery::status(&mesh, &profile).await?;
            let mut out = std::io::stdout().lock();
            match &status.setup {
                Some(s) => writeln!(
                    out,
                    "{} of {}: {}\tset up {}",
                    s.threshold,
                    s.trustees.len(),
                    s.trustees.join(", "),
                    fmt_time(s.created_at)
                )?,
                None => eprintln!("no trustee recovery set up (`sesphr recovery setup`)"),
            }
            let p = client::printable;
            for e in &status.events {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    e.seq,
                    fmt_time(e.time),
                    p(&e.actor),
                    p(&e.action),
                    p(&e.outcome),
                    p(&e.detail)
                )?;
            }
            if !status.audit_listed {
                eprintln!(
                    "(only patients read their audit entries: share releases are not listed here)"
                );
            } else {
                let released = status
                    .events
                    .iter()
                    .filter(|e| recovery::is_share_release(e))
                    .count();
                eprintln!("{released} share release(s) in your audit trail");
            }
        }
        Command::Start { id } => {
            let home = home(home_dir)
                .map_err(|_| anyhow!("pass --home NEWDIR: where the recovered profile goes"))?;
            let request = recovery::start(home, &id)?;
            println!("{}", request.code());
            eprintln!(
                "recovery request for {id}, fingerprint {}\nsend the line above to your \
                 trustees and read them this fingerprint by phone; then run `sesphr recovery \
                 finish --home {} APPROVAL...` with their approvals",
                request.fingerprint_grouped(),
                home.display()
            );
        }
        Command::Approve { code, fingerprint } => {
            let mesh = mesh_file(mesh)?;
            let request = RecoveryRequest::parse(&code)?;
            confirm(&request, fingerprint.as_deref())?;
            let profile = Profile::load(user_home(&mesh, home_dir).await?)?;
            let approval = recovery::approve(&mesh, &profile, &code).await?;
            println!("{}", approval.text);
            eprintln!(
                "approved {}'s recovery request {} with your share ({} approvals needed); \
                 send the line above back to {} only",
                approval.owner_id,
                request.fingerprint_grouped(),
                approval.threshold,
                approval.owner_id
            );
        }
        Command::Finish {
            approvals,
            device,
            passphrase,
        } => {
            let mesh = mesh_file(mesh)?;
            let home = home(home_dir)
                .map_err(|_| anyhow!("pass --home NEWDIR: where `recovery start` ran"))?;
            let texts = read_approvals(&approvals)?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let seal = new_profile_passphrase(passphrase)?;
            let done = recovery::finish(
                &mesh,
                home,
                &refs,
                RestoreOptions {
                    device: device.as_deref(),
                    passphrase: seal.as_ref(),
                },
            )
            .await?;
            eprintln!(
                "recovered {} as device {} in {} with the approvals of {}: certificate valid \
                 until {}; remove the lost device (`sesphr device list`, `sesphr device \
                 remove NAME`){}",
                done.profile.identity,
                done.device,
                done.profile.home.display(),
                done.trustees.join(", "),
                fmt_time(done.not_after),
                if seal.is_some() {
                    ""
                } else {
                    "; the profile is unprotected (`sesphr passphrase set`)"
                }
            );
        }
    }
    Ok(())
}

/// The trustee confirms the request's fingerprint: `--fingerprint`, else
/// on the terminal.
fn confirm(request: &RecoveryRequest, given: Option<&str>) -> anyhow::Result<()> {
    let fp = request.fingerprint();
    if let Some(given) = given {
        if !recovery::fingerprint_matches(&fp, given) {
            bail!(
                "the request's fingerprint is {}, not the one given: do not approve it, it may \
                 not come from {}",
                request.fingerprint_grouped(),
                request.owner_id
            );
        }
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "no terminal to confirm on: pass --fingerprint with the fingerprint {} reads you",
            request.owner_id
        );
    }
    eprint!(
        "recovery request for {}, fingerprint\n  {}\ndoes {} read you exactly this (by phone \
         or in person)? [y/N] ",
        request.owner_id,
        request.fingerprint_grouped(),
        request.owner_id
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        bail!("not approved");
    }
    Ok(())
}

/// Each argument is an approval, a file of approvals (one a line), or `-`
/// (standard input).
fn read_approvals(args: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut lines_of = |text: &str| {
        out.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned),
        );
    };
    for arg in args {
        if arg == "-" {
            let mut text = String::new();
            std::io::stdin()
                .take(1 << 20)
                .read_to_string(&mut text)
                .context("standard input")?;
            lines_of(&text);
        } else if arg.trim().starts_with("sesphr-recovery-approval:") {
            lines_of(arg);
        } else {
            let path = Path::new(arg);
            if !path.is_file() {
                bail!(
                    "{}: neither an approval (sesphr-recovery-approval:…) nor a file",
                    client::printable(arg)
                );
            }
            let text = std::fs::read_to_string(path).with_context(|| arg.clone())?;
            lines_of(&text);
        }
    }
    Ok(out)
}

/// The passphrase the recovered profile is sealed under, if any.
fn new_profile_passphrase(ask: bool) -> anyhow::Result<Option<Passphrase>> {
    let given = match std::env::var(PASSPHRASE_ENV) {
        Ok(p) if !p.is_empty() => Some(Zeroizing::new(p)),
        _ if ask => {
            if !std::io::stdin().is_terminal() && !std::io::stderr().is_terminal() {
                bail!("no terminal to ask for the passphrase on; set {PASSPHRASE_ENV}");
            }
            let read = |prompt: &str| {
                rpassword::prompt_password(prompt)
                    .map(Zeroizing::new)
                    .map_err(|e| anyhow!("cannot read the passphrase ({e}); set {PASSPHRASE_ENV}"))
            };
            let first = read("new passphrase for the recovered profile: ")?;
            if *read("the same passphrase again: ")? != *first {
                bail!("the two passphrases differ; nothing was written");
            }
            if first.is_empty() {
                bail!("a passphrase may not be empty");
            }
            Some(first)
        }
        _ => None,
    };
    if given.is_some() && KdfParams::test_params_requested() {
        eprintln!(
            "sesphr: warning: SESPHR_KDF_TEST_PARAMS=1: sealed with insecure test parameters \
             (a passphrase guess costs microseconds); never set it outside test suites"
        );
    }
    Ok(given.map(Passphrase::new))
}
