//! The command line: global flags and subcommands (SPEC §1).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::assembly::Roles;

/// LogiCore: one binary that runs the whole logistics commerce platform, or one role of it.
#[derive(Debug, Parser)]
#[command(name = "logicore", version, about, long_about = None)]
pub struct Cli {
    /// Config file (default: ./logicore.toml when present).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory for the embedded database, logs and keys.
    #[arg(long, global = true, value_name = "DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every role in one process on embedded defaults (gateway, admin, services).
    Up,
    /// Run the gateway role alone.
    Gateway,
    /// Run one service alone.
    Service {
        /// Which service.
        name: ServiceName,
    },
    /// Run the worker role alone (jobs and event consumers).
    Worker,
    /// Apply database migrations, or show their state.
    Migrate {
        /// Show applied and pending migrations instead of applying.
        #[arg(long)]
        status: bool,
    },
    /// Validate or print the configuration.
    Config {
        /// `check` or `show`.
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Manage accounts.
    Users {
        /// What to do with users.
        #[command(subcommand)]
        action: UsersAction,
    },
    /// Manage field-encryption and token-signing keys.
    Keys {
        /// What to do with keys.
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Inspect and manage background jobs.
    Jobs {
        /// What to do with jobs.
        #[command(subcommand)]
        action: JobsAction,
    },
}

/// A service that can run as its own role.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ServiceName {
    /// Accounts, tokens, OAuth.
    Users,
    /// Products and categories.
    Catalog,
    /// Orders.
    Orders,
    /// Webhook endpoints and deliveries.
    Webhooks,
}

/// `logicore config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate the configuration; exit 2 naming the first bad key.
    Check,
    /// Print the effective configuration with secrets redacted.
    Show,
}

/// `logicore users ...`.
#[derive(Debug, Subcommand)]
pub enum UsersAction {
    /// Create an account.
    Create {
        /// E-mail address.
        #[arg(long)]
        email: String,
        /// Role to grant (repeatable).
        #[arg(long)]
        role: Vec<String>,
        /// Read the password from standard input instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
}

/// `logicore keys ...`.
#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Print a new field-encryption key.
    Generate,
    /// Add a new active key to the key ring.
    Rotate,
    /// Re-encrypt stored fields under the active key.
    Rewrap,
    /// Start signing tokens with a new key.
    JwtRotate,
}

/// `logicore jobs ...`.
#[derive(Debug, Subcommand)]
pub enum JobsAction {
    /// List jobs, most recently changed first.
    List {
        /// Only jobs in this state: available, running, completed or dead.
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// Make dead jobs runnable again with a fresh set of attempts.
    Retry {
        /// The job to retry.
        id: Option<String>,
        /// Every dead job.
        #[arg(long, conflicts_with = "id")]
        all_dead: bool,
    },
    /// Delete completed jobs.
    Purge {
        /// Only those finished longer ago than this (a duration such as `7d`, `12h`).
        #[arg(long, default_value = "7d")]
        older_than: String,
    },
}

impl Command {
    /// Returns the roles of a serving command (`up`, `gateway`, `service ...`).
    pub fn roles(&self) -> Option<Roles> {
        match self {
            Command::Up => Some(Roles::All),
            Command::Gateway => Some(Roles::Gateway),
            Command::Service {
                name: ServiceName::Catalog,
            } => Some(Roles::Catalog),
            Command::Service {
                name: ServiceName::Users,
            } => Some(Roles::Users),
            Command::Service {
                name: ServiceName::Orders,
            } => Some(Roles::Orders),
            Command::Service {
                name: ServiceName::Webhooks,
            } => Some(Roles::Webhooks),
            Command::Worker => Some(Roles::Worker),
            _ => None,
        }
    }

    /// Returns the command line of a command this build does not have yet, if it is one.
    pub fn not_yet_supported(&self) -> Option<&'static str> {
        match self {
            Command::Up | Command::Gateway | Command::Migrate { .. } | Command::Config { .. } => {
                None
            }
            Command::Service {
                name: ServiceName::Catalog,
            } => None,
            Command::Service {
                name: ServiceName::Users,
            } => None,
            Command::Service {
                name: ServiceName::Orders,
            } => None,
            Command::Service {
                name: ServiceName::Webhooks,
            } => None,
            Command::Worker => None,
            Command::Users { .. } => None,
            Command::Keys { .. } => None,
            Command::Jobs { .. } => None,
        }
    }
}
