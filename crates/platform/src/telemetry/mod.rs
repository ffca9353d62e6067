//! Telemetry: the one `tracing` subscriber stack of the process.
//!
//! Logs go to stdout (JSON, or human format on a terminal) and to a daily file
//! `<dir>/<prefix>.YYYY-MM-DD.log` as flat JSON lines (SPEC §6). Older files are gzip-compressed
//! and only the newest `max_files` are kept; [`retention`] does that, since tracing-appender does
//! neither.

mod json;
pub mod metrics;
mod process;
pub mod retention;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{Builder as RollingBuilder, Rotation};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use json::FlatJson;

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

/// Keeps the writers flushing; drop it last, at exit.
#[derive(Debug)]
pub struct LogGuard {
    _file: Option<WorkerGuard>,
    _stdout: WorkerGuard,
}

/// Installs the global subscriber. Call once, early in `main`.
pub fn init_logging(settings: &LogSettings) -> anyhow::Result<LogGuard> {
    let filter = EnvFilter::try_new(&settings.level).context("invalid log.level")?;
    let (file, file_guard) = match &settings.dir {
        Some(dir) => {
            let (writer, guard) = file_writer(dir, settings)?;
            (Some(writer), Some(guard))
        }
        None => (None, None),
    };
    let json_stdout = match settings.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    // Lines are written by a background thread, so a request never waits on a write syscall.
    let (stdout, stdout_guard) = tracing_appender::non_blocking(std::io::stdout());
    let registry = tracing_subscriber::registry().with(filter);
    let json_layer = || {
        tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson::new(settings.default_service))
    };
    let installed = match (json_stdout, file) {
        // The same JSON line goes to both: format it once.
        (true, Some(file)) => registry
            .with(json_layer().with_writer(stdout.and(file)))
            .try_init(),
        (true, None) => registry.with(json_layer().with_writer(stdout)).try_init(),
        (false, file) => registry
            .with(file.map(|file| json_layer().with_writer(file)))
            .with(tracing_subscriber::fmt::layer().with_writer(stdout))
            .try_init(),
    };
    installed.context("a logger is already installed")?;
    Ok(LogGuard {
        _file: file_guard,
        _stdout: stdout_guard,
    })
}

fn file_writer(
    dir: &Path,
    settings: &LogSettings,
) -> anyhow::Result<(tracing_appender::non_blocking::NonBlocking, WorkerGuard)> {
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
    Ok(tracing_appender::non_blocking(appender))
}
