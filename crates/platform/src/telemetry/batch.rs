//! A batching log writer: requests append their formatted line to a shared buffer, and one
//! background thread writes the buffer to every sink (stdout, the daily file) every
//! [`FLUSH_INTERVAL`] or as soon as [`FLUSH_BYTES`] are pending.
//!
//! This is nginx's `access_log ... buffer= flush=` in spirit: a busy gateway pays one write
//! system call per batch instead of a thread wake-up (and a write) per line and per sink. When the
//! sinks cannot keep up and [`MAX_PENDING`] bytes are waiting, further lines are dropped and
//! counted rather than blocking requests or growing memory without bound; the writer then logs
//! how many it dropped. Dropping the [`BatchGuard`] writes whatever is pending.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Longest time a line waits before it is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Pending bytes that wake the writer before the interval is over.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// Pending bytes beyond which new lines are dropped (and counted).
pub const MAX_PENDING: usize = 16 * 1024 * 1024;

/// A sink the writer thread writes batches to.
pub type Sink = Box<dyn Write + Send>;

#[derive(Default)]
struct State {
    buffer: Vec<u8>,
    dropped: u64,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while appending leaves the buffer usable: keep logging.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `MakeWriter` handed to `tracing_subscriber`; cheap to clone.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BatchWriter {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BatchWriter")
            .finish_non_exhaustive()
    }
}

/// Stops the writer thread after writing everything pending; keep it alive until exit.
pub struct BatchGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for BatchGuard {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("BatchGuard").finish_non_exhaustive()
    }
}

impl BatchWriter {
    /// Starts the writer thread over `sinks`. `dropped_notice` formats the line written when
    /// lines had to be dropped (it receives how many).
    pub fn spawn(
        name: &str,
        sinks: Vec<Sink>,
        dropped_notice: fn(u64) -> String,
    ) -> io::Result<(BatchWriter, BatchGuard)> {
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn({
            let shared = Arc::clone(&shared);
            move || write_batches(&shared, sinks, dropped_notice)
        })?;
        Ok((
            BatchWriter {
                shared: Arc::clone(&shared),
            },
            BatchGuard {
                shared,
                thread: Some(thread),
            },
        ))
    }

    fn append(&self, line: &[u8]) {
        let mut state = self.shared.lock();
        if state.buffer.len() + line.len() > MAX_PENDING {
            state.dropped += 1;
            return;
        }
        let was_below = state.buffer.len() < FLUSH_BYTES;
        state.buffer.extend_from_slice(line);
        let crossed = was_below && state.buffer.len() >= FLUSH_BYTES;
        drop(state);
        if crossed {
            self.shared.wake.notify_one();
        }
    }
}

fn write_batches(shared: &Shared, mut sinks: Vec<Sink>, dropped_notice: fn(u64) -> String) {
    let mut batch = Vec::new();
    loop {
        let (dropped, closed) = {
            let mut state = shared.lock();
            if !state.closed && state.buffer.len() < FLUSH_BYTES {
                state = shared
                    .wake
                    .wait_timeout(state, FLUSH_INTERVAL)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            std::mem::swap(&mut state.buffer, &mut batch);
            (std::mem::take(&mut state.dropped), state.closed)
        };
        if dropped > 0 {
            batch.extend_from_slice(dropped_notice(dropped).as_bytes());
        }
        if !batch.is_empty() {
            for sink in &mut sinks {
                // Nowhere left to report a failing log sink; the other sinks still get the batch.
                let _ = sink.write_all(&batch).and_then(|()| sink.flush());
            }
            batch.clear();
        }
        if closed {
            return;
        }
    }
}

impl Drop for BatchGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One event's writer: appends what it is given to the batch.
#[derive(Debug)]
pub struct LineWriter<'a> {
    writer: &'a BatchWriter,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.writer.append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { writer: self }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn notice(dropped: u64) -> String {
        format!("dropped {dropped}\n")
    }

    #[test]
    fn every_sink_gets_every_line_in_order_by_the_time_the_guard_is_dropped() {
        let (first, second) = (Captured::default(), Captured::default());
        let (writer, guard) = BatchWriter::spawn(
            "test-log",
            vec![Box::new(first.clone()), Box::new(second.clone())],
            notice,
        )
        .unwrap();
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for line in 0..1000 {
                        // One write per line, as the fmt layer does.
                        let text = format!("{thread} {line}\n");
                        writer.make_writer().write_all(text.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        let text = first.text();
        assert_eq!(text, second.text());
        for thread in 0..4 {
            let lines: Vec<u32> = text
                .lines()
                .filter_map(|line| line.strip_prefix(&format!("{thread} ")))
                .map(|line| line.parse().unwrap())
                .collect();
            assert_eq!(lines, (0..1000).collect::<Vec<_>>(), "thread {thread}");
        }
    }

    #[test]
    fn a_line_is_written_within_the_flush_interval_without_shutting_down() {
        let sink = Captured::default();
        let (writer, _guard) =
            BatchWriter::spawn("test-log", vec![Box::new(sink.clone())], notice).unwrap();
        writeln!(writer.make_writer(), "hello").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.text().is_empty() {
            assert!(Instant::now() < deadline, "the line was never written");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(sink.text(), "hello\n");
    }

    /// A sink that blocks until released, so the buffer fills up behind it.
    struct Stuck(Arc<(Mutex<bool>, Condvar)>, Captured);

    impl Write for Stuck {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let (released, changed) = &*self.0;
            let mut released = released.lock().unwrap();
            while !*released {
                released = changed.wait(released).unwrap();
            }
            self.1.write(bytes)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_beyond_the_bound_are_dropped_counted_and_reported() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let sink = Captured::default();
        let (writer, guard) = BatchWriter::spawn(
            "test-log",
            vec![Box::new(Stuck(Arc::clone(&gate), sink.clone()))],
            notice,
        )
        .unwrap();
        // The first line goes out (and blocks the writer); the rest pile up behind it.
        writeln!(writer.make_writer(), "first").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !writer.shared.lock().buffer.is_empty() {
            assert!(Instant::now() < deadline, "the writer never took the batch");
            std::thread::sleep(Duration::from_millis(5));
        }
        // One write per line, as the fmt layer does.
        let mut line = vec![b'x'; 1023];
        line.push(b'\n');
        let fitting = MAX_PENDING / line.len();
        for _ in 0..fitting + 10 {
            writer.make_writer().write_all(&line).unwrap();
        }
        let (released, changed) = &*gate;
        *released.lock().unwrap() = true;
        changed.notify_all();
        drop(guard);
        let text = sink.text();
        assert!(text.starts_with("first\n"));
        let kept = text.lines().filter(|line| line.starts_with('x')).count();
        assert_eq!(kept, fitting, "lines kept within the bound");
        assert!(
            text.ends_with(&format!("dropped {}\n", 10)),
            "{}",
            &text[text.len() - 40..]
        );
    }
}
