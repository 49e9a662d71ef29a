//! `sesphr-testkit up --dir DIR [--postgres] [--garage N]`: starts the
//! servers a shell test needs (scripts/scale-test.sh), writes their
//! coordinates to `DIR/env` (shell `KEY=value` lines) and `DIR/ready`, then
//! waits until its standard input closes (or it is killed), stopping every
//! server on the way out.
//!
//! Keys written: `PG_URL`, `S3_BUCKET`, `S3_REGION`, `S3_ACCESS_KEY_ID`,
//! `S3_SECRET_ACCESS_KEY`, `S3_ENDPOINT_<i>` and `GARAGE_PID_<i>` for nodes
//! 1..=N, `PG_PID`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use sesphr_testkit::{Garage, Postgres};

struct Args {
    dir: PathBuf,
    postgres: bool,
    garage: usize,
}

fn parse() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("up") {
        return Err("usage: sesphr-testkit up --dir DIR [--postgres] [--garage N]".into());
    }
    let (mut dir, mut postgres, mut garage) = (None, false, 0);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => dir = args.next().map(PathBuf::from),
            "--postgres" => postgres = true,
            "--garage" => {
                garage = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or("--garage takes a node count (1 to 3)")?
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        dir: dir.ok_or("--dir DIR is required")?,
        postgres,
        garage,
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sesphr-testkit: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args = parse()?;
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let mut env = String::new();
    let pg = if args.postgres {
        let pg = Postgres::start().map_err(|e| e.to_string())?;
        env += &format!("PG_URL='{}?sslmode=disable'\n", pg.url());
        env += &format!("PG_PID={}\n", pg.pid().unwrap_or(0));
        Some(pg)
    } else {
        None
    };
    let garage = if args.garage > 0 {
        let g = Garage::start(args.garage).map_err(|e| e.to_string())?;
        let s3 = g.s3(0);
        env += &format!(
            "S3_BUCKET={}\nS3_REGION={}\nS3_ACCESS_KEY_ID={}\nS3_SECRET_ACCESS_KEY={}\n",
            s3.bucket, s3.region, s3.access_key_id, s3.secret_access_key
        );
        for i in 0..g.len() {
            env += &format!("S3_ENDPOINT_{}={}\n", i + 1, g.s3(i).endpoint);
            env += &format!("GARAGE_PID_{}={}\n", i + 1, g.pid(i).unwrap_or(0));
        }
        Some(g)
    } else {
        None
    };
    let write = |name: &str, text: &str| {
        let path = args.dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    write("env", &env)?;
    write("ready", "")?;
    // Until the caller closes our stdin (or exits): then stop everything.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(garage);
    drop(pg);
    Ok(())
}
