//! Process metrics in the Prometheus standard names, read from `/proc/self` at scrape time.

use std::fmt::Write;

/// Returns the process metrics as exposition text (empty where `/proc` is missing).
pub fn render() -> String {
    let mut text = String::new();
    let Some(stat) = read_stat() else {
        return text;
    };
    let ticks_per_second = 100.0; // USER_HZ on Linux.
    let page_size = 4096.0;
    let cpu_seconds = (stat.utime + stat.stime) as f64 / ticks_per_second;
    let start_time = boot_time().map(|boot| boot + stat.starttime as f64 / ticks_per_second);
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.count())
        .ok();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            text,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        cpu_seconds,
    );
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        stat.rss_pages as f64 * page_size,
    );
    metric(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        stat.vsize as f64,
    );
    metric(
        "process_threads",
        "gauge",
        "Number of OS threads in the process.",
        stat.threads as f64,
    );
    if let Some(start_time) = start_time {
        metric(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            start_time,
        );
    }
    if let Some(open_fds) = open_fds {
        metric(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            open_fds as f64,
        );
    }
    text
}

struct Stat {
    utime: u64,
    stime: u64,
    threads: u64,
    starttime: u64,
    vsize: u64,
    rss_pages: u64,
}

fn read_stat() -> Option<Stat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may contain spaces; fields are counted after its closing parenthesis.
    let after_name = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        threads: field(20)?,
        starttime: field(22)?,
        vsize: field(23)?,
        rss_pages: field(24)?,
    })
}

fn boot_time() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|line| line.starts_with("btime "))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn process_metrics_are_read_on_linux() {
        let text = super::render();
        if cfg!(target_os = "linux") {
            assert!(text.contains("process_resident_memory_bytes "), "{text}");
            assert!(text.contains("process_cpu_seconds_total "), "{text}");
            assert!(text.contains("process_start_time_seconds "), "{text}");
        }
    }
}
