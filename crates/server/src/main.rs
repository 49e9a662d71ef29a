//! `sesphrd`: the SeSPHR mesh daemon.
//!
//! - `sesphrd dev --data-dir DIR` runs CloudStorage, SRS and AccessPolicy in
//!   one process on 127.0.0.1 (ports 50051-50053), creating a dev PKI and
//!   `DIR/mesh.toml` on first start.
//! - `sesphrd serve --service NAME --config FILE` runs one service for a real
//!   deployment (`--check-config` only validates).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use sesphr_identity::Service;
use sesphr_server::config::{Env, ServeConfig};
use sesphr_server::daemon::{DEV_BASE_PORT, DevMesh, DevOptions, ServiceParams, run_service};
use tracing_subscriber::EnvFilter;

/// `EX_USAGE`: the configuration or command line is wrong.
const EXIT_USAGE: u8 = 64;

#[derive(Parser)]
#[command(name = "sesphrd", version, about = "SeSPHR mesh daemon")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole mesh in one process on loopback, with a dev PKI.
    Dev {
        /// Where the PKI, mesh.toml and the three sled databases live.
        #[arg(long, env = "SESPHR_DATA_DIR")]
        data_dir: PathBuf,
        /// CloudStorage port; the SRS uses +1 and AccessPolicy +2.
        #[arg(long, default_value_t = DEV_BASE_PORT)]
        base_port: u16,
        /// Trust domain of the generated identities.
        #[arg(long, default_value = sesphr_identity::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
    },
    /// Run one service from a TOML config (SESPHR_* variables override it).
    Serve {
        #[arg(long, value_parser = parse_service)]
        service: Service,
        #[arg(long)]
        config: PathBuf,
        /// Only validate the configuration and the files it names, then exit.
        #[arg(long)]
        check_config: bool,
    },
}

fn parse_service(s: &str) -> Result<Service, String> {
    s.parse()
        .map_err(|e: sesphr_identity::IdentityError| e.to_string())
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sesphrd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sesphrd: {}", sesphr_mesh::error_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Dev {
            data_dir,
            base_port,
            trust_domain,
        } => {
            let mut opts = DevOptions::new(data_dir);
            opts.base_port = base_port;
            opts.trust_domain = trust_domain;
            // The same SESPHR_* limit, transport and dedup variables as `serve`.
            let mut errors = Vec::new();
            opts.limits =
                sesphr_server::config::LimitsSection::default().resolve(&Env, &mut errors);
            opts.transport =
                sesphr_server::config::TransportSection::default().resolve(&Env, &mut errors);
            if let Some(scope) = std::env::var(sesphr_server::config::ENV_DEDUP_SCOPE)
                .ok()
                .filter(|s| !s.is_empty())
            {
                match scope.parse() {
                    Ok(s) => opts.dedup_scope = s,
                    Err(e) => {
                        errors.push(format!("{}: {e}", sesphr_server::config::ENV_DEDUP_SCOPE))
                    }
                }
            }
            if !errors.is_empty() {
                eprintln!("sesphrd: {}", sesphr_server::config::ConfigErrors(errors));
                return Ok(ExitCode::from(EXIT_USAGE));
            }
            let mesh = DevMesh::start(opts).await?;
            mesh.wait_ready(std::time::Duration::from_secs(30))
                .await
                .map_err(|s| anyhow::anyhow!(s.message().to_owned()))?;
            for (service, url) in [
                (Service::CloudStorage, &mesh.mesh.cloud_storage),
                (Service::Srs, &mesh.mesh.srs),
                (Service::AccessPolicy, &mesh.mesh.access_policy),
            ] {
                println!("{service} serving on {url}");
            }
            println!("mesh file: {}", mesh.mesh_file.display());
            shutdown_signal().await;
            mesh.shutdown().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            service,
            config,
            check_config,
        } => {
            let cfg = match ServeConfig::load(&config, service, &Env) {
                Ok(cfg) => cfg,
                Err(errors) => {
                    eprintln!("sesphrd: {errors}");
                    return Ok(ExitCode::from(EXIT_USAGE));
                }
            };
            if check_config {
                // Also load every file the config names.
                sesphr_mesh::tls::TlsMaterial::load(&cfg.tls).context("tls")?;
                println!("configuration of {service} is valid");
                return Ok(ExitCode::SUCCESS);
            }
            sesphr_mesh::tls::install_crypto_provider();
            let params = ServiceParams::from_config(&cfg).await?;
            tracing::info!(%service, listen = %cfg.listen, health = ?cfg.health_listen, trust_domain = %cfg.trust_domain, "starting");
            run_service(params, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
