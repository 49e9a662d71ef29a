//! `sesphr get`: where a record's plaintext goes while it downloads, and
//! what is left behind when the download fails or is interrupted.
//!
//! - `-o FILE`: into a temporary file beside FILE, renamed onto FILE only
//!   once the whole record authenticated; removed on failure and on
//!   SIGINT/SIGTERM (exit 130/143).
//! - stdout: each segment is written once it authenticated, so a record
//!   that fails later (tampered, truncated) has already written the
//!   segments before the failure; the command then fails.
//! - stdout with `--verify-first`: into an unlinked anonymous temporary
//!   file (it vanishes with the process, even on `kill -9`), copied to
//!   stdout only after the whole record verified; nothing reaches stdout on
//!   failure.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use sesphr_client::{ClientError, Progress, Record, Session};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Where `get` writes.
pub enum Target {
    File(PathBuf),
    Stdout { verify_first: bool },
}

/// SIGINT and SIGTERM, caught from before the first byte is written (their
/// default action would kill the process before it could clean up).
struct Interrupts {
    int: Signal,
    term: Signal,
}

impl Interrupts {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("cannot catch SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot catch SIGTERM")?,
        })
    }

    /// The signal's name and the exit code of a process it ended.
    async fn next(&mut self) -> (&'static str, u8) {
        tokio::select! {
            _ = self.int.recv() => ("SIGINT", 130),
            _ = self.term.recv() => ("SIGTERM", 143),
        }
    }
}

enum Outcome {
    Done(Result<Record, ClientError>),
    Interrupted(&'static str, u8),
}

/// Downloads into `out`, unless a signal comes first.
async fn race(
    s: &Session,
    record_id: &str,
    out: &mut (dyn Write + Send),
    progress: Progress,
    interrupts: &mut Interrupts,
) -> Outcome {
    tokio::select! {
        r = s.download(record_id, out, progress) => Outcome::Done(r),
        (name, code) = interrupts.next() => Outcome::Interrupted(name, code),
    }
}

fn interrupted(name: &str, code: u8, what: &str) -> ExitCode {
    eprintln!("sesphr: interrupted by {name}: {what}");
    ExitCode::from(code)
}

/// Runs `sesphr get`; `finish` clears the progress bar.
pub async fn run(
    s: &Session,
    record_id: &str,
    target: Target,
    progress: Progress,
    finish: impl FnOnce(),
) -> anyhow::Result<ExitCode> {
    let mut interrupts = Interrupts::install()?;
    match target {
        Target::File(path) => {
            // Plaintext lands under a temporary name and is renamed only
            // once the whole record authenticated.
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let mut tmp =
                tempfile::NamedTempFile::new_in(dir).with_context(|| dir.display().to_string())?;
            let outcome = race(s, record_id, tmp.as_file_mut(), progress, &mut interrupts).await;
            finish();
            match outcome {
                Outcome::Interrupted(name, code) => {
                    let removed = tmp.close().is_ok();
                    Ok(interrupted(
                        name,
                        code,
                        if removed {
                            "the partial download was removed"
                        } else {
                            "the partial download could not be removed"
                        },
                    ))
                }
                // Dropping `tmp` on the error path removes it.
                Outcome::Done(r) => {
                    r?;
                    tmp.persist(&path)
                        .with_context(|| path.display().to_string())?;
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Target::Stdout {
            verify_first: false,
        } => {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
            let outcome = race(s, record_id, &mut out, progress, &mut interrupts).await;
            finish();
            match outcome {
                Outcome::Interrupted(name, code) => {
                    let _ = out.flush();
                    Ok(interrupted(name, code, "the output is incomplete"))
                }
                Outcome::Done(r) => {
                    r?;
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Target::Stdout { verify_first: true } => {
            // Unlinked from the start: nothing of it survives the process.
            let mut tmp = tempfile::tempfile().context("cannot create a temporary file")?;
            let outcome = race(s, record_id, &mut tmp, progress, &mut interrupts).await;
            finish();
            match outcome {
                Outcome::Interrupted(name, code) => {
                    Ok(interrupted(name, code, "nothing was written"))
                }
                Outcome::Done(r) => {
                    r?;
                    tmp.seek(SeekFrom::Start(0))
                        .context("cannot read back the temporary file")?;
                    let mut stdout = std::io::stdout().lock();
                    std::io::copy(&mut tmp, &mut stdout).context("stdout")?;
                    stdout.flush().context("stdout")?;
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
    }
}
