//! A TCP relay the test controls: put it between the platform and a backend, then cut it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// Forwards every connection to `target` while open; when cut, drops every connection and
/// closes new ones at once (the port stays bound, as a crashed backend's host would).
pub struct Relay {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept_loop: AbortHandle,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let open = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (loop_open, loop_connections) = (Arc::clone(&open), Arc::clone(&connections));
        let accept_loop = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !loop_open.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut backend) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
                    }
                });
                loop_connections
                    .lock()
                    .expect("connections")
                    .push(task.abort_handle());
            }
        })
        .abort_handle();
        Relay {
            addr,
            open,
            connections,
            accept_loop,
        }
    }

    /// Drops every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().expect("connections").drain(..) {
            connection.abort();
        }
    }

    /// Relays again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.accept_loop.abort();
    }
}
