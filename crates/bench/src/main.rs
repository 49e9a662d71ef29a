//! `sesphr-bench`: the mesh load generator (see `sesphr::bench` and
//! `docs/BENCHMARKS.md`). `bash scripts/bench.sh` builds it in release mode
//! and runs it against a `sesphrd dev` it spawns.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sesphr_bench as bench;

#[derive(Parser)]
#[command(name = "sesphr-bench", about = "Load generator for a SeSPHR mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Spawn `sesphrd dev`, drive it over mTLS, print a Markdown table.
    Run {
        /// The `sesphrd` binary to spawn.
        #[arg(long, default_value = "target/release/sesphrd")]
        sesphrd: PathBuf,
        /// Scratch directory (mesh data, user profiles); removed afterwards.
        #[arg(long, default_value = "target/bench-work")]
        work_dir: PathBuf,
        /// Seconds each timed workload runs.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrent clients of the ReEncrypt workload.
        #[arg(long, default_value_t = 64)]
        reencrypt_clients: usize,
        /// Concurrent clients of the 1 MiB upload+download and echo workloads.
        #[arg(long, default_value_t = 8)]
        stream_clients: usize,
        /// Concurrent clients of the mixed workload.
        #[arg(long, default_value_t = 32)]
        mixed_clients: usize,
        /// Concurrent connections of the AccessPolicy Check workload.
        #[arg(long, default_value_t = 64)]
        check_clients: usize,
        /// Concurrent grantees of the concurrent-read workload.
        #[arg(long, default_value_t = 64)]
        read_clients: usize,
        /// Record counts of the revocation workload.
        #[arg(long, value_delimiter = ',', default_value = "10,10000")]
        revoke_records: Vec<usize>,
        /// MiB of the record streamed for the memory measurement (0: skip).
        #[arg(long, default_value_t = 1024)]
        memory_mib: u64,
        /// Only these workloads: reencrypt, read, check, concurrent-read,
        /// updown, mixed, revoke, memory; and scale (PostgreSQL + a 3-node
        /// Garage, 1 and 2 CloudStorage replicas vs. plain S3: only when named).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Serve the plain mTLS echo service (the baseline), with the dev PKI's
    /// cloud-storage identity; prints `echo listening on ADDR`.
    EchoServer {
        #[arg(long)]
        pki: PathBuf,
        /// Also write and fsync what is received under this directory, and
        /// serve downloads from it (the durable baseline).
        #[arg(long)]
        store: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse().command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sesphr-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::EchoServer { pki, store } => {
            sesphr_mesh::tls::install_crypto_provider();
            let tls = bench::echo_server_tls(&pki, "cloud-storage")?;
            let echo = match store {
                Some(dir) => bench::EchoServer::durable(&dir)?,
                None => bench::EchoServer::plain(),
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            println!("echo listening on {}", listener.local_addr()?);
            bench::serve_echo(listener, &tls, echo).await
        }
        Command::Run {
            sesphrd,
            work_dir,
            seconds,
            reencrypt_clients,
            stream_clients,
            mixed_clients,
            check_clients,
            read_clients,
            revoke_records,
            memory_mib,
            only,
        } => {
            let _ = std::fs::remove_dir_all(&work_dir);
            let opts = bench::Options {
                sesphrd: std::path::absolute(sesphrd)?,
                exe: std::env::current_exe()?,
                work_dir: std::path::absolute(&work_dir)?,
                duration: Duration::from_secs(seconds),
                reencrypt_clients,
                stream_clients,
                mixed_clients,
                check_clients,
                read_clients,
                revoke_records,
                memory_bytes: memory_mib << 20,
                only,
            };
            let rows = bench::run(&opts).await;
            let _ = std::fs::remove_dir_all(&work_dir);
            let rows = rows?;
            println!("{}", bench::markdown(&rows));
            Ok(())
        }
    }
}
