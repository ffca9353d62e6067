//! A total deadline on request bodies, so a client that trickles its body (slowloris on the
//! body) cannot hold a connection and an upstream call open for ever.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Sleep;

/// The error a body yields once its deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received within {0:?}")]
pub struct BodyTimeout(Duration);

/// Set when a body missed its deadline, so the proxy can answer 408 whatever the upstream
/// made of the truncated body.
#[derive(Debug, Clone, Default)]
pub struct TimedOut(Arc<AtomicBool>);

impl TimedOut {
    /// Returns true once the body's deadline has passed while it was still being read.
    pub fn happened(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Wraps `body` so that reading it fails once `timeout` has passed since now.
pub fn with_deadline(body: Body, timeout: Duration) -> (Body, TimedOut) {
    let timed_out = TimedOut::default();
    let body = DeadlineBody {
        inner: body,
        deadline: Box::pin(tokio::time::sleep(timeout)),
        timeout,
        timed_out: timed_out.clone(),
    };
    (Body::new(body), timed_out)
}

struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
    timed_out: TimedOut,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.inner.is_end_stream() {
            return Poll::Ready(None);
        }
        // Checked before every frame: a client dripping one byte at a time still hits it.
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.timed_out.0.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(self.timeout)))));
        }
        Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
