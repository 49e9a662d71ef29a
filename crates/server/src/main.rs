//! `sesphrd`: the SeSPHR mesh daemon.
//!
//! - `sesphrd dev --data-dir DIR` runs CloudStorage, SRS and AccessPolicy in
//!   one process on 127.0.0.1 (ports 50051-50053), creating a dev PKI and
//!   `DIR/mesh.toml` on first start.
//! - `sesphrd serve --service NAME --config FILE` runs one service for a real
//!   deployment (`--check-config` only validates).
//! - `sesphrd migrate --config FILE` copies a stopped service's sled store
//!   into the PostgreSQL (+ S3) storage FILE names.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use sesphr_identity::Service;
use sesphr_server::config::{Env, ServeConfig, ServiceKind};
use sesphr_server::daemon::{
    DEV_BASE_PORT, DevLayout, DevMesh, DevOptions, ServiceParams, run_service,
};
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
        /// Where the PKI, mesh.toml, serve/ configs and the sled databases live.
        #[arg(long, env = "SESPHR_DATA_DIR")]
        data_dir: PathBuf,
        /// CloudStorage port; the SRS setup service uses +1, AccessPolicy
        /// +2, re-encryption node i +2+i (0: free ports).
        #[arg(long, default_value_t = DEV_BASE_PORT)]
        base_port: u16,
        /// Trust domain of the generated identities.
        #[arg(long, default_value = sesphr_identity::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Re-encryption nodes (default: as first dealt, 3 for a new directory).
        #[arg(long)]
        srs_nodes: Option<u8>,
        /// How many nodes a read needs (default: as first dealt, 2 for a new
        /// directory, a majority when only --srs-nodes is given).
        #[arg(long)]
        threshold: Option<u8>,
        /// Write the PKI, mesh.toml and DIR/serve/*.toml, then exit: run the
        /// mesh as separate `sesphrd serve --config DIR/serve/<name>.toml`.
        #[arg(long)]
        configure_only: bool,
    },
    /// Deal a new dedup OPRF key t-of-n to the re-encryption nodes: writes
    /// OUT/srs-node-<i>.share (0600, one per node) and OUT/oprf-public.toml
    /// (the public shares clients list in mesh.toml).
    DealOprf {
        #[arg(long)]
        threshold: u8,
        #[arg(long)]
        nodes: u8,
        #[arg(long)]
        out: PathBuf,
    },
    /// Make the audit log's signing key and one key per witness in OUT (kept
    /// if already there: OUT/log.key, OUT/<witness>.key, 0600, with .pub
    /// beside each), and print the `[audit]` section clients put in their
    /// mesh file.
    AuditKeys {
        #[arg(long)]
        out: PathBuf,
        /// Trust domain (the checkpoints' origin is `<td>/audit`).
        #[arg(long, default_value = sesphr_identity::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// A witness name: `cloud-storage` or `srs-node-<i>`; repeat it.
        #[arg(long = "witness", value_name = "NAME")]
        witnesses: Vec<String>,
    },
    /// Split a dev directory that ran a single SRS (an earlier sesphrd) into
    /// the setup service and re-encryption node 1 (1-of-1), keeping every
    /// record, grant and content key readable.
    MigrateSrs {
        #[arg(long, env = "SESPHR_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Copy a stopped service's sled store into the PostgreSQL (and S3)
    /// storage its serve config names (`[storage]`); the sled directory is
    /// left as it was.
    Migrate {
        /// cloud-storage, srs or access-policy (default: the config's
        /// `service`).
        #[arg(long, value_parser = parse_service)]
        service: Option<ServiceKind>,
        /// The serve config naming the destination.
        #[arg(long)]
        config: PathBuf,
        /// The sled data directory to copy (default: the config's data_dir).
        #[arg(long)]
        from_dir: Option<PathBuf>,
    },
    /// Run one service or re-encryption node from a TOML config (SESPHR_*
    /// variables override it).
    Serve {
        /// cloud-storage, srs, access-policy or srs-node (default: the
        /// config's `service`).
        #[arg(long, value_parser = parse_service)]
        service: Option<ServiceKind>,
        #[arg(long)]
        config: PathBuf,
        /// Only validate the configuration and the files it names, then exit.
        #[arg(long)]
        check_config: bool,
    },
}

fn parse_service(s: &str) -> Result<ServiceKind, String> {
    s.parse()
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
            srs_nodes,
            threshold,
            configure_only,
        } => {
            let mut opts = DevOptions::new(data_dir);
            opts.base_port = base_port;
            opts.trust_domain = trust_domain;
            opts.srs_nodes = srs_nodes;
            opts.threshold = threshold;
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
            // SESPHR_STORAGE_BACKEND=postgres (and the SESPHR_POSTGRES_* and
            // SESPHR_S3_* variables) put CloudStorage, AccessPolicy and the
            // setup service on shared storage.
            opts.storage = sesphr_server::storage::StorageSection::default().resolve(
                ServiceKind::Service(Service::CloudStorage),
                &Env,
                &mut errors,
            );
            if !errors.is_empty() {
                eprintln!("sesphrd: {}", sesphr_server::config::ConfigErrors(errors));
                return Ok(ExitCode::from(EXIT_USAGE));
            }
            if configure_only {
                let layout = DevLayout::prepare(&opts).await?;
                for (served, path) in &layout.serve_files {
                    println!("{served}: sesphrd serve --config {}", path.display());
                }
                println!("mesh file: {}", layout.mesh_file.display());
                return Ok(ExitCode::SUCCESS);
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
            for node in &mesh.mesh.srs_nodes {
                println!("srs-node-{} serving on {}", node.index, node.url);
            }
            println!(
                "re-encryption: any {} of {} nodes",
                mesh.mesh.threshold,
                mesh.mesh.srs_nodes.len()
            );
            println!("mesh file: {}", mesh.mesh_file.display());
            shutdown_signal().await;
            mesh.shutdown().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::DealOprf {
            threshold,
            nodes,
            out,
        } => {
            let dealing = sesphr_server::dealing::deal(&out, threshold, nodes, None)?;
            for share in &dealing.srs_nodes {
                let index = sesphr_identity::NodeIndex::new(u32::from(share.index))?;
                println!(
                    "srs-node-{}: {}",
                    share.index,
                    sesphr_server::dealing::share_path(&out, index).display()
                );
            }
            println!(
                "public shares ({}-of-{}): {}",
                dealing.threshold,
                dealing.nodes(),
                sesphr_server::dealing::public_path(&out).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::AuditKeys {
            out,
            trust_domain,
            witnesses,
        } => {
            let valid = |name: &str| {
                name == sesphr_identity::Service::CloudStorage.as_str()
                    || name
                        .strip_prefix("srs-node-")
                        .and_then(|i| i.parse::<u32>().ok())
                        .is_some_and(|i| sesphr_identity::NodeIndex::new(i).is_ok())
            };
            if let Some(bad) = witnesses.iter().find(|w| !valid(w)) {
                anyhow::bail!("--witness {bad:?}: witnesses are cloud-storage or srs-node-<1..16>");
            }
            let log = sesphr_server::daemon::ensure_key_pair(&out, "log")?;
            let mut section = sesphr_client::AuditSection {
                origin: Some(sesphr_tlog::audit_origin(&trust_domain)),
                log_key: log.to_hex(),
                witness_quorum: Some(sesphr_tlog::majority(witnesses.len())),
                witnesses: Vec::new(),
            };
            for name in &witnesses {
                let key = sesphr_server::daemon::ensure_key_pair(&out, name)?;
                section.witnesses.push(sesphr_client::WitnessEntry {
                    name: name.clone(),
                    key: key.to_hex(),
                });
            }
            #[derive(serde::Serialize)]
            struct Snippet {
                audit: sesphr_client::AuditSection,
            }
            print!(
                "# the [audit] section of the clients' mesh.toml\n{}",
                toml::to_string(&Snippet { audit: section })?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::MigrateSrs { data_dir } => {
            let done = sesphr_server::migrate::migrate_single_srs(&data_dir)?;
            println!(
                "{}: split into the setup service (srs/) and re-encryption node 1 \
                 (srs-node-1/, {} kfrag set(s)), 1-of-1; start it with `sesphrd dev --data-dir {}`",
                data_dir.display(),
                done.kfrag_sets,
                data_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate {
            service,
            config,
            from_dir,
        } => {
            let Some(cfg) = load_serve_config(&config, service) else {
                return Ok(ExitCode::from(EXIT_USAGE));
            };
            sesphr_mesh::tls::install_crypto_provider();
            let line = tokio::task::spawn_blocking(move || {
                sesphr_server::move_store::migrate(&cfg, from_dir.as_deref())
            })
            .await??;
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            service,
            config,
            check_config,
        } => {
            let Some(cfg) = load_serve_config(&config, service) else {
                return Ok(ExitCode::from(EXIT_USAGE));
            };
            if check_config {
                // Also load every file the config names.
                let tls = sesphr_mesh::tls::TlsMaterial::load(&cfg.tls).context("tls")?;
                sesphr_mesh::tls::install_crypto_provider();
                sesphr_mesh::trust::TrustRoots::load(&cfg.tls.ca, &cfg.user_ca)
                    .context("tls.ca and tls.user_ca")?;
                sesphr_server::daemon::read_srs_params(&cfg)?;
                let service = cfg.service;
                if let Some(node) = &cfg.srs_node {
                    let share = sesphr_server::daemon::read_oprf_share(&node.oprf_share_file)?;
                    let id = tls.identity()?;
                    match id.as_srs_node() {
                        Some(i) if i.get() == share.index() => {}
                        Some(i) => anyhow::bail!(
                            "{}: share {} is not node {i}'s",
                            node.oprf_share_file.display(),
                            share.index()
                        ),
                        None => anyhow::bail!(
                            "tls.cert names {id}, not a re-encryption node (service/srs-node/<i>)"
                        ),
                    }
                }
                if let Some(log) = &cfg.audit_log {
                    sesphr_server::daemon::read_signing_key(&log.log_key_file)?;
                }
                if let Some(w) = &cfg.witness {
                    let key = sesphr_server::daemon::read_signing_key(&w.key_file)?;
                    let log = sesphr_server::daemon::read_public_key(&w.log_public_key_file)?;
                    if key.public_key() == log {
                        anyhow::bail!(
                            "{}: the witness key is the audit log's own key: a witness must be independent of the log",
                            w.key_file.display()
                        );
                    }
                }
                println!("storage: {}", cfg.storage.describe(&cfg.data_dir));
                println!("configuration of {service} is valid");
                return Ok(ExitCode::SUCCESS);
            }
            sesphr_mesh::tls::install_crypto_provider();
            let params = ServiceParams::from_config(&cfg).await?;
            tracing::info!(service = %params.service, listen = %cfg.listen, health = ?cfg.health_listen, trust_domain = %cfg.trust_domain, storage = %cfg.storage.describe(&cfg.data_dir), "starting");
            run_service(params, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A serve config with its `SESPHR_*` overrides, or `None` once every
/// problem has been printed (the caller exits with `EX_USAGE`).
fn load_serve_config(path: &std::path::Path, service: Option<ServiceKind>) -> Option<ServeConfig> {
    match ServeConfig::load(path, service, &Env) {
        Ok(cfg) => Some(cfg),
        Err(errors) => {
            eprintln!("sesphrd: {errors}");
            None
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
