//! Retention of log files: files of past days are gzip-compressed and only the newest
//! `max_files` are kept (the current, uncompressed one included).

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::NaiveDate;
use flate2::Compression;
use flate2::write::GzEncoder;

/// Runs [`compress_and_prune`] now and then every `interval`, on a thread of its own.
pub fn spawn(dir: PathBuf, prefix: String, max_files: usize, interval: Duration) {
    let spawned = std::thread::Builder::new()
        .name("log-retention".into())
        .spawn(move || {
            loop {
                let today = chrono::Utc::now().date_naive();
                if let Err(err) = compress_and_prune(&dir, &prefix, max_files, today) {
                    tracing::warn!(error = %err, dir = %dir.display(), "log retention failed");
                }
                std::thread::sleep(interval);
            }
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "cannot start log retention");
    }
}

/// One log file of ours, by its date.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LogFile {
    path: PathBuf,
    date: NaiveDate,
    compressed: bool,
}

/// Compresses every `<prefix>.<date>.log` older than `today` and deletes all but the newest
/// `max_files` dates. Compression writes a temporary file and renames it, so a crash never
/// leaves a truncated archive in place of a log.
pub fn compress_and_prune(
    dir: &Path,
    prefix: &str,
    max_files: usize,
    today: NaiveDate,
) -> io::Result<()> {
    for file in list(dir, prefix)? {
        if !file.compressed && file.date < today {
            compress(&file.path)?;
        }
    }
    let mut files = list(dir, prefix)?;
    files.sort_by(|a, b| b.date.cmp(&a.date).then(a.compressed.cmp(&b.compressed)));
    for stale in files.iter().skip(max_files.max(1)) {
        fs::remove_file(&stale.path)?;
    }
    Ok(())
}

fn list(dir: &Path, prefix: &str) -> io::Result<Vec<LogFile>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
            continue;
        };
        let Some(rest) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('.'))
        else {
            continue;
        };
        let (date, compressed) = if let Some(date) = rest.strip_suffix(".log.gz") {
            (date, true)
        } else if let Some(date) = rest.strip_suffix(".log") {
            (date, false)
        } else {
            continue;
        };
        let Ok(date) = NaiveDate::parse_from_str(date, "%Y-%m-%d") else {
            continue;
        };
        files.push(LogFile {
            path,
            date,
            compressed,
        });
    }
    Ok(files)
}

fn compress(path: &Path) -> io::Result<()> {
    let archive = path.with_extension("log.gz");
    if !archive.exists() {
        let temporary = path.with_extension("log.gz.tmp");
        let mut input = BufReader::new(File::open(path)?);
        let mut encoder = GzEncoder::new(
            BufWriter::new(File::create(&temporary)?),
            Compression::default(),
        );
        io::copy(&mut input, &mut encoder)?;
        encoder
            .finish()?
            .into_inner()
            .map_err(|err| err.into_error())?
            .sync_all()?;
        fs::rename(&temporary, &archive)?;
    }
    fs::remove_file(path)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use flate2::read::GzDecoder;

    use super::*;

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn past_days_are_compressed_and_today_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("logicore.2026-11-24.log"), "old line\n").unwrap();
        fs::write(dir.path().join("logicore.2026-11-25.log"), "today\n").unwrap();
        fs::write(dir.path().join("unrelated.txt"), "x").unwrap();
        compress_and_prune(dir.path(), "logicore", 14, day("2026-11-25")).unwrap();
        assert_eq!(
            names(dir.path()),
            [
                "logicore.2026-11-24.log.gz",
                "logicore.2026-11-25.log",
                "unrelated.txt"
            ]
        );
        let mut text = String::new();
        GzDecoder::new(File::open(dir.path().join("logicore.2026-11-24.log.gz")).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "old line\n");
    }

    #[test]
    fn only_the_newest_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        for day_of_month in 1..=20 {
            let name = format!("logicore.2026-11-{day_of_month:02}.log");
            fs::write(dir.path().join(name), "x\n").unwrap();
        }
        compress_and_prune(dir.path(), "logicore", 14, day("2026-11-20")).unwrap();
        let kept = names(dir.path());
        assert_eq!(kept.len(), 14);
        assert_eq!(kept.first().unwrap(), "logicore.2026-11-07.log.gz");
        assert_eq!(kept.last().unwrap(), "logicore.2026-11-20.log");
    }

    #[test]
    fn other_prefixes_are_not_touched() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("logicore-gateway.2026-11-01.log"), "x").unwrap();
        compress_and_prune(dir.path(), "logicore", 1, day("2026-11-20")).unwrap();
        assert_eq!(names(dir.path()), ["logicore-gateway.2026-11-01.log"]);
    }
}
