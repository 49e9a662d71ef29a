//! A profile's secrets: a passphrase at rest (`sesphr passphrase
//! set|change|remove`), a backup file (`sesphr backup`), the recovery phrase
//! (`sesphr phrase show`) and restoring a profile from either (`sesphr
//! restore`, `sesphr device add --backup`).
//!
//! Where passphrases come from, for scripts and for people:
//! - `SESPHR_PASSPHRASE`: the profile's (or backup file's) passphrase; at
//!   `enroll` and `passphrase set`, the one to protect with.
//! - `SESPHR_NEW_PASSPHRASE`: the new one of `passphrase change`, and of a
//!   restore that seals under another passphrase than the backup's.
//! - Otherwise the terminal is asked (twice for a new passphrase), and
//!   only when a sealed file is read or a passphrase is chosen.
//! - `SESPHR_PHRASE`: the recovery phrase of `restore --phrase` (else the
//!   terminal, or standard input when it is not one).

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use sesphr_client::restore::{self, Backup, RestoreFrom, RestoreOptions, Restored};
use sesphr_client::sealed::{KdfParams, Passphrase, TEST_PARAMS_ENV};
use sesphr_client::{self as client, MeshFile, Profile};
use sesphr_identity::Role;
use zeroize::Zeroizing;

/// The profile's (or backup's) passphrase.
pub const PASSPHRASE_ENV: &str = "SESPHR_PASSPHRASE";
/// A new passphrase.
pub const NEW_PASSPHRASE_ENV: &str = "SESPHR_NEW_PASSPHRASE";
/// The recovery phrase.
pub const PHRASE_ENV: &str = "SESPHR_PHRASE";

/// `sesphr enroll`'s options about secrets.
#[derive(Args, Debug, Default)]
pub struct EnrollSecrets {
    /// Protect the new profile's keys with a passphrase from the start
    /// (asked on the terminal, or SESPHR_PASSPHRASE; setting that variable
    /// protects the profile even without this flag).
    #[arg(long)]
    pub passphrase: bool,
    /// Print the recovery phrase (24 words) once, on stderr: write it down
    /// and keep it offline; anyone who reads it holds your keys.
    #[arg(long)]
    pub show_phrase: bool,
}

/// The commands of this module.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Protect your profile's keys (master.key, tls.key) with a passphrase,
    /// change it, or remove it.
    ///
    /// The passphrase is asked on the terminal (SESPHR_PASSPHRASE, and for
    /// `change` SESPHR_NEW_PASSPHRASE, for scripts). A wrong one changes
    /// nothing.
    Passphrase {
        #[command(subcommand)]
        command: PassphraseCommand,
    },
    /// Write a backup file: your identity, keys, key epochs, grant ledger
    /// and pinned keys, sealed under a passphrase (the profile's, or the
    /// one asked for); restore it with `sesphr restore FILE`.
    Backup {
        /// Where to write it (mode 0600).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        /// Overwrite FILE if it exists.
        #[arg(long)]
        force: bool,
        /// Seal the backup under another passphrase than the profile's
        /// (asked twice, or SESPHR_NEW_PASSPHRASE).
        #[arg(long)]
        new_passphrase: bool,
    },
    /// Recreate your profile in a new --home from a backup file or your
    /// recovery phrase: a new TLS key and certificate (the old ones are
    /// not needed), your records and grants as they were.
    Restore {
        /// The backup file (`sesphr backup`).
        #[arg(required_unless_present = "phrase", conflicts_with = "phrase")]
        file: Option<PathBuf>,
        #[command(flatten)]
        how: RestoreArgs,
    },
    /// Your recovery phrase.
    Phrase {
        #[command(subcommand)]
        command: PhraseCommand,
    },
}

/// How a restored profile is set up.
#[derive(Args, Debug, Default)]
pub struct RestoreArgs {
    /// Restore from the recovery phrase (SESPHR_PHRASE, the terminal, or
    /// standard input) instead of a backup file; needs --id.
    #[arg(long, requires = "id")]
    pub phrase: bool,
    /// The user id the phrase's keys are registered under (with --phrase).
    #[arg(long, requires = "phrase")]
    pub id: Option<String>,
    /// The role they are registered under (with --phrase; default: the
    /// registered one).
    #[arg(long, requires = "phrase")]
    pub role: Option<String>,
    /// A name for this device (default: the mesh names it).
    #[arg(long, value_name = "NAME")]
    pub device: Option<String>,
    /// Seal the new profile under another passphrase than the backup's
    /// (asked twice, or SESPHR_NEW_PASSPHRASE).
    #[arg(long, conflicts_with = "no_passphrase")]
    pub new_passphrase: bool,
    /// Leave the new profile unprotected (from a backup; a phrase restore
    /// is unprotected unless --passphrase or SESPHR_PASSPHRASE).
    #[arg(long)]
    pub no_passphrase: bool,
    /// Protect a phrase-restored profile with a passphrase (asked, or
    /// SESPHR_PASSPHRASE).
    #[arg(long, requires = "phrase")]
    pub passphrase: bool,
}

#[derive(Subcommand, Debug)]
pub enum PassphraseCommand {
    /// Protect an unprotected profile (SESPHR_PASSPHRASE, or asked twice).
    Set,
    /// Change the passphrase (the current one from SESPHR_PASSPHRASE or
    /// asked; the new one from SESPHR_NEW_PASSPHRASE or asked twice).
    Change,
    /// Store the keys unprotected again (the current passphrase needed).
    Remove,
}

#[derive(Subcommand, Debug)]
pub enum PhraseCommand {
    /// Print your recovery phrase (24 words) on stdout: anyone who reads it
    /// holds your keys. Needs the passphrase of a protected profile.
    Show,
}

/// `sesphr device add`'s arguments.
#[derive(Args, Debug)]
pub struct DeviceAdd {
    /// The backup file of your first device (`sesphr backup`).
    #[arg(long, value_name = "FILE")]
    pub backup: PathBuf,
    /// A name for this device (default: the mesh names it).
    #[arg(long, value_name = "NAME")]
    pub device: Option<String>,
}

/// A passphrase once the terminal gave it, so one command asks once.
static ASKED: Mutex<Option<Zeroizing<String>>> = Mutex::new(None);

/// Installs the prompt every sealed profile file asks: SESPHR_PASSPHRASE,
/// else the terminal (once per command).
pub fn install_prompt() {
    client::set_passphrase_prompt(|path: &Path| {
        warn_if_weak(path);
        let dir = path.parent().unwrap_or(path).display().to_string();
        current_passphrase(&format!("passphrase of the profile in {dir}: "))
            .map(|p| p.0)
            .map_err(|e| e.to_string())
    });
}

/// The current passphrase (of the profile or a backup file), its source
/// recorded: `SESPHR_PASSPHRASE`, else the terminal.
struct Given(Zeroizing<String>);

fn current_passphrase(prompt: &str) -> anyhow::Result<Given> {
    if let Some(p) = env_secret(PASSPHRASE_ENV) {
        return Ok(Given(p));
    }
    let mut asked = ASKED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = asked.as_ref() {
        return Ok(Given(p.clone()));
    }
    let p = ask(prompt, PASSPHRASE_ENV)?;
    *asked = Some(p.clone());
    Ok(Given(p))
}

/// A new passphrase: from `env`, else asked twice on the terminal.
fn new_passphrase(env: &str, what: &str) -> anyhow::Result<Passphrase> {
    let p = match env_secret(env) {
        Some(p) => p,
        None => {
            let first = ask(&format!("new passphrase for {what}: "), env)?;
            let again = ask("the same passphrase again: ", env)?;
            if *first != *again {
                bail!("the two passphrases differ; nothing was changed");
            }
            first
        }
    };
    if p.is_empty() {
        bail!("a passphrase may not be empty; nothing was changed");
    }
    Ok(passphrase(p))
}

fn passphrase(p: Zeroizing<String>) -> Passphrase {
    Passphrase::new(p)
}

/// An environment variable holding a secret, if set and not empty.
fn env_secret(name: &str) -> Option<Zeroizing<String>> {
    std::env::var(name)
        .ok()
        .map(Zeroizing::new)
        .filter(|s| !s.is_empty())
}

/// Asks on the terminal without echo.
fn ask(prompt: &str, env: &str) -> anyhow::Result<Zeroizing<String>> {
    if !std::io::stdin().is_terminal() && !std::io::stderr().is_terminal() {
        bail!("no terminal to ask for the passphrase on; set {env}");
    }
    rpassword::prompt_password(prompt)
        .map(Zeroizing::new)
        .map_err(|e| anyhow!("cannot read the passphrase ({e}); set {env}"))
}

/// The warning a sealed file below the interactive cost deserves (it still
/// opens), unless the test parameters are asked for.
fn warn_if_weak(path: &Path) {
    if let Ok(bytes) = std::fs::read(path).map(Zeroizing::new)
        && let Some(warning) = client::sealed::weak_params_warning(&bytes)
    {
        eprintln!("sesphr: warning: {}: {warning}", path.display());
    }
}

/// The warning sealing with the test parameters deserves.
fn warn_if_test_params() {
    if KdfParams::test_params_requested() {
        eprintln!(
            "sesphr: warning: {TEST_PARAMS_ENV}=1: sealed with insecure test parameters \
             (a passphrase guess costs microseconds); never set it outside test suites"
        );
    }
}

/// The passphrase a new profile is sealed under at `enroll`, if any.
pub fn enroll_passphrase(opts: &EnrollSecrets) -> anyhow::Result<Option<Passphrase>> {
    if let Some(p) = env_secret(PASSPHRASE_ENV) {
        return Ok(Some(passphrase(p)));
    }
    if opts.passphrase {
        return Ok(Some(new_passphrase(PASSPHRASE_ENV, "your profile")?));
    }
    Ok(None)
}

/// After `enroll`: what protects the profile, and the phrase if asked for.
pub fn after_enroll(
    profile: &Profile,
    opts: &EnrollSecrets,
    protected: bool,
) -> anyhow::Result<()> {
    if protected {
        warn_if_test_params();
        eprintln!(
            "your keys are protected by your passphrase: every command asks for it \
             (or reads SESPHR_PASSPHRASE); it cannot be recovered, only replaced from a \
             backup or your recovery phrase"
        );
    } else {
        eprintln!(
            "your keys are stored unprotected in {}: `sesphr passphrase set` protects them; \
             `sesphr backup -o FILE` or `sesphr phrase show` guard against losing them",
            profile.home.display()
        );
    }
    if opts.show_phrase {
        print_phrase_warning();
        eprintln!(
            "{}",
            restore::recovery_phrase(&profile.master_secret()?).as_str()
        );
    }
    Ok(())
}

fn print_phrase_warning() {
    eprintln!(
        "your recovery phrase follows: write it down and keep it offline. With it and your \
         user id, anyone can act as you and read every record you own; `sesphr restore \
         --phrase --id ID` rebuilds your keys from it"
    );
}

/// Runs one of this module's commands.
pub async fn run(
    command: Command,
    mesh: &Option<PathBuf>,
    home: &Option<PathBuf>,
) -> anyhow::Result<()> {
    let home_dir = || {
        home.as_deref()
            .ok_or_else(|| anyhow!("no profile: pass --home DIR or set SESPHR_HOME"))
    };
    match command {
        Command::Passphrase { command } => {
            let profile = Profile::load(home_dir()?)?;
            let protected = profile.is_protected()?;
            match command {
                PassphraseCommand::Set => {
                    if protected {
                        bail!(
                            "{} is already protected by a passphrase; `sesphr passphrase \
                             change` changes it",
                            profile.home.display()
                        );
                    }
                    let new = new_passphrase(PASSPHRASE_ENV, "your profile")?;
                    profile.set_passphrase(Some(&new))?;
                    warn_if_test_params();
                    eprintln!(
                        "your keys in {} are now protected by your passphrase",
                        profile.home.display()
                    );
                }
                PassphraseCommand::Change => {
                    if !protected {
                        bail!(
                            "{} has no passphrase; `sesphr passphrase set` sets one",
                            profile.home.display()
                        );
                    }
                    let current = unlocked(profile)?;
                    let new = new_passphrase(NEW_PASSPHRASE_ENV, "your profile")?;
                    current.set_passphrase(Some(&new))?;
                    warn_if_test_params();
                    eprintln!("changed the passphrase of {}", current.home.display());
                }
                PassphraseCommand::Remove => {
                    if !protected {
                        bail!("{} has no passphrase", profile.home.display());
                    }
                    let current = unlocked(profile)?;
                    current.set_passphrase(None)?;
                    eprintln!(
                        "your keys in {} are stored unprotected now: anyone who copies the \
                         directory holds them",
                        current.home.display()
                    );
                }
            }
        }
        Command::Backup {
            output,
            force,
            new_passphrase: other,
        } => {
            let profile = Profile::load(home_dir()?)?;
            let protected = profile.is_protected()?;
            // A protected profile opens with its own passphrase, whatever
            // the backup is sealed under.
            let (profile, own) = if protected {
                let p = current_passphrase(&format!(
                    "passphrase of the profile in {}: ",
                    profile.home.display()
                ))?;
                warn_if_weak(&profile.home.join("master.key"));
                let own = passphrase(p.0);
                let profile = profile.with_passphrase(own.clone());
                profile.master_secret()?;
                (profile, Some(own))
            } else {
                (profile, None)
            };
            let seal_with = if other {
                new_passphrase(NEW_PASSPHRASE_ENV, "the backup")?
            } else if let Some(own) = own {
                own
            } else {
                new_passphrase(PASSPHRASE_ENV, "the backup")?
            };
            let backup = Backup::of_profile(&profile)?;
            backup.write(&output, &seal_with, force)?;
            warn_if_test_params();
            eprintln!(
                "wrote the backup of {} to {} (sealed under {}): keep it apart from this \
                 device; `sesphr restore {} --home NEWDIR` brings it back",
                profile.identity,
                output.display(),
                if other || !protected {
                    "the passphrase you chose"
                } else {
                    "your profile's passphrase"
                },
                output.display()
            );
        }
        Command::Restore { file, how } => {
            let mesh = mesh_file(mesh)?;
            let home = home_dir()?;
            let restored = match file {
                Some(file) => {
                    restore_backup(&mesh, home, &file, &how, how.device.as_deref()).await?
                }
                None => restore_phrase(&mesh, home, &how).await?,
            };
            report_restored(&restored, "restored");
        }
        Command::Phrase {
            command: PhraseCommand::Show,
        } => {
            let profile = Profile::load(home_dir()?)?;
            let master = profile.master_secret()?;
            print_phrase_warning();
            println!("{}", restore::recovery_phrase(&master).as_str());
        }
    }
    Ok(())
}

/// `sesphr device add --backup FILE`: a restore of the backup into a new
/// --home, as another device of the same user.
pub async fn device_add(
    args: DeviceAdd,
    mesh: &Option<PathBuf>,
    home: &Option<PathBuf>,
) -> anyhow::Result<()> {
    let mesh = mesh_file(mesh)?;
    let home = home
        .as_deref()
        .ok_or_else(|| anyhow!("pass --home NEWDIR: where this device's profile goes"))?;
    let how = RestoreArgs::default();
    let restored = restore_backup(&mesh, home, &args.backup, &how, args.device.as_deref()).await?;
    report_restored(&restored, "added");
    Ok(())
}

/// A protected profile with its passphrase checked (nothing is changed
/// with a wrong one).
fn unlocked(profile: Profile) -> anyhow::Result<Profile> {
    let p = current_passphrase(&format!(
        "current passphrase of the profile in {}: ",
        profile.home.display()
    ))?;
    warn_if_weak(&profile.home.join("master.key"));
    let profile = profile.with_passphrase(passphrase(p.0));
    profile.master_secret()?;
    Ok(profile)
}

fn mesh_file(path: &Option<PathBuf>) -> anyhow::Result<MeshFile> {
    let path = path.as_ref().ok_or_else(|| {
        anyhow!("no mesh: pass --mesh FILE or set SESPHR_MESH (sesphrd dev writes DIR/mesh.toml)")
    })?;
    Ok(MeshFile::load(path)?)
}

async fn restore_backup(
    mesh: &MeshFile,
    home: &Path,
    file: &Path,
    how: &RestoreArgs,
    device: Option<&str>,
) -> anyhow::Result<Restored> {
    // Read before anything else: a wrong passphrase or a damaged file is
    // refused before the mesh is asked or NEWDIR created.
    let given = current_passphrase(&format!("passphrase of {}: ", file.display()))?;
    let opened = passphrase(given.0);
    warn_if_weak(file);
    let backup = Backup::read(file, &opened)?;
    let seal = if how.no_passphrase {
        None
    } else if how.new_passphrase {
        Some(new_passphrase(NEW_PASSPHRASE_ENV, "the restored profile")?)
    } else {
        Some(opened)
    };
    eprintln!(
        "backup of {} made {}: asking the mesh for a certificate for a new TLS key",
        backup.identity(),
        fmt_time(backup.created_at())
    );
    let restored = restore::restore(
        mesh,
        home,
        RestoreFrom::Backup(Box::new(backup)),
        RestoreOptions {
            device,
            passphrase: seal.as_ref(),
        },
    )
    .await?;
    if seal.is_some() {
        warn_if_test_params();
    }
    Ok(restored)
}

async fn restore_phrase(
    mesh: &MeshFile,
    home: &Path,
    how: &RestoreArgs,
) -> anyhow::Result<Restored> {
    let user_id = how.id.clone().ok_or_else(|| {
        anyhow!("--phrase needs --id: the user id your keys are registered under")
    })?;
    let role: Option<Role> = how.role.as_deref().map(str::parse).transpose()?;
    let words = read_phrase()?;
    let master = restore::master_from_phrase(&words)?;
    let seal = if let Some(p) = env_secret(PASSPHRASE_ENV) {
        Some(passphrase(p))
    } else if how.passphrase {
        Some(new_passphrase(PASSPHRASE_ENV, "the restored profile")?)
    } else {
        None
    };
    let restored = restore::restore(
        mesh,
        home,
        RestoreFrom::Phrase {
            master,
            user_id,
            role,
        },
        RestoreOptions {
            device: how.device.as_deref(),
            passphrase: seal.as_ref(),
        },
    )
    .await?;
    if seal.is_some() {
        warn_if_test_params();
    }
    Ok(restored)
}

/// The recovery phrase: SESPHR_PHRASE, else asked on the terminal (not
/// echoed), else standard input.
fn read_phrase() -> anyhow::Result<Zeroizing<String>> {
    if let Some(p) = env_secret(PHRASE_ENV) {
        return Ok(p);
    }
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password("recovery phrase (24 words): ")
            .map(Zeroizing::new)
            .context("cannot read the recovery phrase");
    }
    let mut text = Zeroizing::new(String::new());
    std::io::stdin()
        .take(4096)
        .read_to_string(&mut text)
        .context("cannot read the recovery phrase from standard input")?;
    if text.trim().is_empty() {
        bail!("no recovery phrase: pass it on standard input or in {PHRASE_ENV}");
    }
    Ok(text)
}

fn report_restored(r: &Restored, verb: &str) {
    eprintln!(
        "{verb} {} as device {} in {}: certificate valid until {}",
        r.profile.identity,
        r.device,
        r.profile.home.display(),
        fmt_time(r.not_after)
    );
    for restore::RaisedEpoch {
        partition,
        was,
        now,
    } in &r.raised
    {
        eprintln!(
            "the mesh shows {partition} at key epoch {now} (the backup had {was}): new records \
             use {now}"
        );
    }
    if r.ca_changed {
        eprintln!(
            "note: the mesh file's CA differs from the one in the backup; the profile trusts \
             the mesh file's"
        );
    }
    if r.ledger && r.profile.role() == Role::Patient {
        eprintln!(
            "your grant ledger is as old as the backup: `sesphr grants` shows where it \
             disagrees with AccessPolicy"
        );
    }
    if verb == "restored" {
        eprintln!(
            "if a device of yours is lost, remove it: `sesphr device list`, then \
             `sesphr device remove NAME`"
        );
    }
    if !r.ledger && r.profile.role() == Role::Patient {
        eprintln!(
            "your grant ledger was not restored (a recovery phrase holds keys only): check \
             `sesphr grants`, then `sesphr grants --adopt` before your next rotation"
        );
    }
    if r.profile.is_protected().unwrap_or(false) {
        eprintln!("the profile is protected by a passphrase");
    }
    println!("{}", r.profile.identity);
}

fn fmt_time(t: i64) -> String {
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}
