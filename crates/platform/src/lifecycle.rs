//! Process lifecycle: the shutdown token and the signals that cancel it.

use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` on SIGTERM or SIGINT (Ctrl-C).
///
/// The handlers are registered before this returns, so call it before binding listeners:
/// a signal that arrives at any later point shuts down gracefully instead of killing the
/// process with the default action.
pub fn cancel_on_signals(shutdown: CancellationToken) -> std::io::Result<()> {
    let signals = Signals::register()?;
    tokio::spawn(async move {
        signals.recv().await;
        tracing::info!("shutdown requested");
        shutdown.cancel();
    });
    Ok(())
}

#[cfg(unix)]
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn register() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn register() -> std::io::Result<Self> {
        Ok(Signals)
    }

    async fn recv(self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// SIGHUP, the conventional "reload your configuration" signal.
///
/// Register it before binding, like [`cancel_on_signals`]: SIGHUP's default action ends the
/// process.
#[derive(Debug)]
pub struct Hangups {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Hangups {
    /// Registers the SIGHUP handler.
    pub fn register() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Hangups {
                signal: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Hangups {})
    }

    /// Waits for the next SIGHUP (forever where there is none).
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        if self.signal.recv().await.is_some() {
            return;
        }
        std::future::pending::<()>().await;
    }
}
