//! Telemetry: the one `tracing` subscriber stack of the process.
//!
//! Logs go to stdout (JSON, or human format on a terminal) and to a daily file
//! `<dir>/<prefix>.YYYY-MM-DD.log` as flat JSON lines (SPEC §6). Older files are gzip-compressed
//! and only the newest `max_files` are kept; [`retention`] does that, since tracing-appender does
//! neither.

pub mod batch;
mod json;
pub mod metrics;
mod process;
pub mod retention;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tracing_appender::rolling::{Builder as RollingBuilder, Rotation};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use json::FlatJson;

use self::batch::{BatchGuard, BatchWriter, Sink};

use crate::config::LogFormat;

/// How often rotated files are compressed and pruned.
const RETENTION_INTERVAL: Duration = Duration::from_secs(600);

/// Where and how the process logs.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// Level or filter directives.
    pub level: String,
    /// Stdout format.
    pub format: LogFormat,
    /// Directory of the log files; `None` logs to stdout only (one-shot commands).
    pub dir: Option<PathBuf>,
    /// File name prefix: `logicore`, or `logicore-<role>` for a single-role process.
    pub file_prefix: String,
    /// Files kept, the current one included.
    pub max_files: usize,
    /// `service` of lines that do not say which service wrote them.
    pub default_service: &'static str,
}

/// Keeps the writers flushing; drop it last, at exit (pending lines are written then).
#[derive(Debug)]
pub struct LogGuard {
    _writers: Vec<BatchGuard>,
}

/// Installs the global subscriber. Call once, early in `main`.
pub fn init_logging(settings: &LogSettings) -> anyhow::Result<LogGuard> {
    let filter = EnvFilter::try_new(&settings.level).context("invalid log.level")?;
    let file = settings
        .dir
        .as_deref()
        .map(|dir| file_sink(dir, settings))
        .transpose()?;
    let json_stdout = match settings.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    // Lines are written in batches by a background thread (see `batch`), so a request never
    // waits on a write system call or wakes a thread per line.
    let spawn = |name: &str, sinks: Vec<Sink>| {
        BatchWriter::spawn(name, sinks, json::dropped_lines_notice)
            .context("failed to start the log writer thread")
    };
    let stdout: Sink = Box::new(std::io::stdout());
    let registry = tracing_subscriber::registry().with(filter);
    let json_layer = || {
        tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson::new(settings.default_service))
    };
    let mut guards = Vec::new();
    let installed = if json_stdout {
        // The same JSON line goes to stdout and the file: format it once, write it twice.
        let (writer, guard) = spawn("log-writer", [stdout].into_iter().chain(file).collect())?;
        guards.push(guard);
        registry.with(json_layer().with_writer(writer)).try_init()
    } else {
        let file_layer = match file {
            Some(file) => {
                let (writer, guard) = spawn("log-file-writer", vec![file])?;
                guards.push(guard);
                Some(json_layer().with_writer(writer))
            }
            None => None,
        };
        let (writer, guard) = spawn("log-writer", vec![stdout])?;
        guards.push(guard);
        registry
            .with(file_layer)
            .with(tracing_subscriber::fmt::layer().with_writer(writer))
            .try_init()
    };
    installed.context("a logger is already installed")?;
    Ok(LogGuard { _writers: guards })
}

fn file_sink(dir: &Path, settings: &LogSettings) -> anyhow::Result<Sink> {
    // tracing-appender complains when the directory is missing; create it first.
    std::fs::create_dir_all(dir)
        .with_context(|| format!("failed to create the log directory {}", dir.display()))?;
    let appender = RollingBuilder::new()
        .rotation(Rotation::DAILY)
        .filename_prefix(&settings.file_prefix)
        .filename_suffix("log")
        .build(dir)
        .context("failed to open the log file")?;
    retention::spawn(
        dir.to_path_buf(),
        settings.file_prefix.clone(),
        settings.max_files,
        RETENTION_INTERVAL,
    );
    Ok(Box::new(appender))
}
