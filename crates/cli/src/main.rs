//! The `logicore` binary: parse the command line, load the config (exit 2 on a bad key), then
//! run the command. Runtime failures exit 1.

mod assembly;
mod cli;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use logicore_platform::config::{self, Config, ConfigSource};
use logicore_platform::crypto::{self, KeyRing};
use logicore_platform::db::{apply_migrations, migration_status};
use logicore_platform::lifecycle;
use logicore_platform::telemetry::{self, LogGuard, LogSettings};
use tokio_util::sync::CancellationToken;

use crate::assembly::Roles;
use crate::cli::{Cli, Command, ConfigAction, JobsAction, KeysAction, UsersAction};

/// mimalloc keeps freed large blocks for reuse; glibc's malloc maps and unmaps every block
/// over 128 KiB, which made each compressed response pay for fresh zeroed pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for configuration and usage errors (clap uses it too).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(command_line) = cli.command.not_yet_supported() {
        eprintln!("logicore: `{command_line}` is not yet supported by this build");
        return ExitCode::from(EXIT_CONFIG);
    }
    let source = ConfigSource::from_process(cli.config.clone(), Some(cli.data_dir.clone()));
    let config = match config::load(&source) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("logicore: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(roles) = cli.command.roles()
        && let Err(err) = assembly::check(&config, roles)
    {
        eprintln!("logicore: {err}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let runtime = match runtime_builder().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("logicore: failed to start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config, source)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "fatal");
            eprintln!("logicore: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// A multi-threaded runtime, or a single-threaded one when `TOKIO_WORKER_THREADS=1` asks for
/// one worker (one core: no work-stealing or cross-thread wake-ups to pay for).
fn runtime_builder() -> tokio::runtime::Builder {
    let one_worker = std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|value| value.trim() == "1");
    if one_worker {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
}

async fn run(command: Command, config: Config, source: ConfigSource) -> anyhow::Result<()> {
    if let Some(roles) = command.roles() {
        return serve(config, source, roles).await;
    }
    match command {
        Command::Migrate { status } => migrate(config, status).await,
        Command::Config {
            action: ConfigAction::Check,
        } => {
            println!("config OK");
            Ok(())
        }
        Command::Config {
            action: ConfigAction::Show,
        } => {
            print!("{}", config.to_redacted_toml());
            Ok(())
        }
        Command::Keys {
            action: KeysAction::Generate,
        } => {
            println!("{}", KeyRing::generate_entry());
            Ok(())
        }
        Command::Keys {
            action: KeysAction::Rotate,
        } => rotate_keys(&config),
        Command::Keys {
            action: KeysAction::Rewrap,
        } => rewrap_keys(&config).await,
        Command::Keys {
            action: KeysAction::JwtRotate,
        } => rotate_jwt_key(&config).await,
        Command::Users {
            action:
                UsersAction::Create {
                    email,
                    role,
                    password_stdin,
                },
        } => create_user(&config, email, role, password_stdin).await,
        Command::Jobs { action } => jobs_command(&config, action).await,
        other => anyhow::bail!("{other:?} is not yet supported"),
    }
}

/// `logicore jobs list|retry|purge`.
async fn jobs_command(config: &Config, action: JobsAction) -> anyhow::Result<()> {
    use logicore_platform::jobs::{JobState, Jobs};
    let _log_guard = init_logging(config, None)?;
    let db = assembly::open_migrated_database(config).await?;
    let jobs = Jobs::new(db.clone());
    let result = async {
        match action {
            JobsAction::List { state, limit } => {
                let state = state
                    .map(|text| {
                        JobState::parse(&text).ok_or_else(|| {
                            anyhow::anyhow!("--state must be available, running, completed or dead")
                        })
                    })
                    .transpose()?;
                let rows = jobs.list(state, limit).await?;
                println!(
                    "{:<36}  {:<24}  {:<9}  {:>8}  {:<24}  last error",
                    "id", "kind", "state", "attempts", "run at"
                );
                for row in rows {
                    println!(
                        "{:<36}  {:<24}  {:<9}  {:>8}  {:<24}  {}",
                        row.id,
                        row.kind,
                        row.state,
                        format!("{}/{}", row.attempts, row.max_attempts),
                        row.run_at
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        row.last_error.unwrap_or_default()
                    );
                }
                Ok(())
            }
            JobsAction::Retry { id, all_dead } => {
                let ids = match (id, all_dead) {
                    (Some(id), _) => vec![
                        id.parse::<uuid::Uuid>()
                            .map_err(|_| anyhow::anyhow!("`{id}` is not a job id"))?,
                    ],
                    (None, true) => jobs
                        .list(Some(JobState::Dead), u64::MAX >> 1)
                        .await?
                        .into_iter()
                        .map(|row| row.id)
                        .collect(),
                    (None, false) => anyhow::bail!("name a job id, or --all-dead"),
                };
                let mut retried = 0;
                for id in &ids {
                    if jobs.retry(*id).await? {
                        retried += 1;
                    } else {
                        eprintln!("{id}: no such dead or waiting job");
                    }
                }
                println!("{retried} job(s) will run again");
                if retried == ids.len() {
                    Ok(())
                } else {
                    anyhow::bail!("{} job(s) could not be retried", ids.len() - retried)
                }
            }
            JobsAction::Purge { older_than } => {
                let age = humantime::parse_duration(&older_than)
                    .map_err(|err| anyhow::anyhow!("--older-than: {err}"))?;
                let before = chrono::Utc::now()
                    - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
                let purged = jobs.purge(before).await?;
                println!("{purged} completed job(s) purged");
                Ok(())
            }
        }
    }
    .await;
    db.close().await;
    result
}

/// `logicore users create`: an account with the given roles; the password comes from stdin
/// or is generated and printed once.
async fn create_user(
    config: &Config,
    email: String,
    roles: Vec<String>,
    password_stdin: bool,
) -> anyhow::Result<()> {
    let _log_guard = init_logging(config, None)?;
    let password = if password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        Some(line.trim_end_matches(['\r', '\n']).to_owned())
    } else {
        None
    };
    let generated = password
        .is_none()
        .then(|| KeyRing::generate_entry()[..20].replace(':', "x"));
    let roles = if roles.is_empty() {
        vec!["customer".to_owned()]
    } else {
        roles
    };
    let db = assembly::open_database(config).await?;
    apply_migrations(&db, &assembly::all_migrations())
        .await
        .context("failed to apply migrations")?;
    let name = email.split('@').next().unwrap_or("user").to_owned();
    let created = logicore_users::service::create_account(
        &db,
        email,
        password.or_else(|| generated.clone()).unwrap_or_default(),
        name,
        &roles,
    )
    .await;
    db.close().await;
    let user = created.map_err(|err| match err {
        logicore_users::UsersError::Invalid(errors) => anyhow::anyhow!(
            "{}",
            errors
                .iter()
                .map(|error| format!("{}: {}", error.field.trim_start_matches('/'), error.message))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        other => anyhow::anyhow!("{other}"),
    })?;
    println!(
        "created {} ({}) with roles {}",
        user.email, user.id, user.roles
    );
    if let Some(password) = generated {
        println!("password: {password}  (shown once)");
    }
    Ok(())
}

/// The field-encryption ring (never generated here) and the migrated database.
async fn open_keys_and_database(
    config: &Config,
) -> anyhow::Result<(KeyRing, logicore_platform::db::Db)> {
    let env = std::env::var(crypto::KEYS_VAR).ok();
    let (ring, _) = KeyRing::load(env.as_deref(), &config.key_file(), false)?;
    let db = assembly::open_database(config).await?;
    apply_migrations(&db, &assembly::all_migrations())
        .await
        .context("failed to apply migrations")?;
    Ok((ring, db))
}

/// A new token-signing key; running services sign with it within seconds.
async fn rotate_jwt_key(config: &Config) -> anyhow::Result<()> {
    let _log_guard = init_logging(config, None)?;
    let (ring, db) = open_keys_and_database(config).await?;
    let rotated = logicore_users::service::rotate_signing_key(&db, &ring).await;
    db.close().await;
    let kid = rotated.map_err(|err| anyhow::anyhow!("{err}"))?;
    println!(
        "new token-signing key `{kid}`: running services sign with it within 5 s; older keys stay in the JWKS until their tokens expire"
    );
    Ok(())
}

/// Re-encrypts every stored field under the active key, online and resumable, reporting
/// progress on stderr.
async fn rewrap_keys(config: &Config) -> anyhow::Result<()> {
    let _log_guard = init_logging(config, None)?;
    let (ring, db) = open_keys_and_database(config).await?;
    let ring = std::sync::Arc::new(ring);
    let result = logicore_users::rewrap::rewrap(&db, &ring, |done, seen| {
        eprint!(
            "\rrewrapping under `{}`: {done} re-encrypted, {seen} looked at",
            ring.active_kid()
        );
    })
    .await;
    eprintln!();
    let webhooks = assembly::webhooks_service(
        config,
        &db,
        logicore_platform::jobs::Jobs::new(db.clone()),
        std::sync::Arc::clone(&ring),
    );
    let secrets = webhooks.rewrap().await;
    db.close().await;
    let rewrapped = result.map_err(|err| anyhow::anyhow!("{err}"))?;
    let (secrets, _) = secrets.map_err(|err| anyhow::anyhow!("{err}"))?;
    let rewrapped = rewrapped + secrets;
    println!(
        "{rewrapped} value(s) re-encrypted under `{}`; keys other than it can be removed once every process has restarted",
        ring.active_kid()
    );
    Ok(())
}

/// Adds a new active field-encryption key: to the key file, or (keys from the environment)
/// prints the new value of `LOGICORE_ENCRYPTION_KEYS`. Old keys stay to decrypt old values
/// until `logicore keys rewrap` has moved them.
fn rotate_keys(config: &Config) -> anyhow::Result<()> {
    let entry = KeyRing::generate_entry();
    let kid = entry.split(':').next().unwrap_or_default().to_owned();
    if let Ok(current) = std::env::var(crypto::KEYS_VAR)
        && !current.trim().is_empty()
    {
        KeyRing::parse(&current, crypto::KEYS_VAR)?;
        println!("# the keys come from {}; set it to:", crypto::KEYS_VAR);
        println!("{entry},{}", current.trim());
        return Ok(());
    }
    let path = config.key_file();
    let current = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no key file at {} (and {} is not set); `logicore up` creates one on first start",
            path.display(),
            crypto::KEYS_VAR
        )
    })?;
    KeyRing::parse(&current, &path.display().to_string())?;
    crypto::replace_key_file(&path, &format!("{entry}\n{current}"))?;
    println!("new active key `{kid}` added to {}", path.display());
    Ok(())
}

/// Installs logging; `roles` decides the file name and `service`; `None` = stdout only.
fn init_logging(config: &Config, roles: Option<Roles>) -> anyhow::Result<LogGuard> {
    let (file_prefix, default_service) = roles.unwrap_or(Roles::All).log_identity();
    telemetry::init_logging(&LogSettings {
        level: config.log.level.clone(),
        format: config.log.format,
        dir: roles.map(|_| config.log_dir()),
        file_prefix: file_prefix.to_owned(),
        max_files: config.log.max_files as usize,
        default_service,
    })
}

async fn serve(config: Config, source: ConfigSource, roles: Roles) -> anyhow::Result<()> {
    let _log_guard = init_logging(&config, Some(roles))?;
    let shutdown = CancellationToken::new();
    lifecycle::cancel_on_signals(shutdown.clone()).context("failed to install signal handlers")?;
    let hangups = lifecycle::Hangups::register().context("failed to install the SIGHUP handler")?;
    let metrics = telemetry::metrics::install()?;
    logicore_gateway::metrics::describe();
    let process = assembly::Process::build(&config, &source, roles, Some(metrics)).await?;
    process.run(shutdown, hangups).await;
    Ok(())
}

async fn migrate(config: Config, status_only: bool) -> anyhow::Result<()> {
    let _log_guard = init_logging(&config, None)?;
    let db = assembly::open_database(&config).await?;
    let migrations = assembly::all_migrations();
    if status_only {
        let statuses = migration_status(&db, &migrations)
            .await
            .context("failed to read the migration state")?;
        println!("{:<12} {:<28} name", "version", "applied at");
        for status in statuses {
            let applied = status
                .applied_at
                .map_or_else(|| "pending".to_owned(), |at| at.to_rfc3339());
            println!("{:<12} {:<28} {}", status.version, applied, status.name);
        }
    } else {
        let applied = apply_migrations(&db, &migrations)
            .await
            .context("failed to apply migrations")?;
        println!("{} migration(s) applied", applied.len());
    }
    db.close().await;
    Ok(())
}
