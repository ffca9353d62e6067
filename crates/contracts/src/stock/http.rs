//! [`Stock`] over HTTP: the orders service's view of a catalog that runs elsewhere.
//!
//! Calls go to the catalog instances of discovery in turn; a call that cannot reach one
//! instance (connection refused, 5xx, timeout) is repeated on the next, which is safe because
//! reservations are keyed by the order id and idempotent. Each call carries a service token.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use logicore_platform::auth::ServiceTokens;
use serde::Deserialize;

use super::{
    RESERVATIONS_PATH, ReserveLine, ReserveRequest, ReserveResponse, ReservedLine, Stock,
    StockError, StockFuture,
};
use crate::OrderId;

/// The service name of the catalog in discovery and in service tokens.
const CATALOG: &str = "catalog";

/// A catalog reached over HTTP.
#[derive(Debug, Clone)]
pub struct HttpStock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: reqwest::Client,
    instances: Vec<String>,
    next: AtomicUsize,
    tokens: ServiceTokens,
}

/// The refusal document of the internal API (a problem with `stock_error`).
#[derive(Deserialize)]
struct Refusal {
    stock_error: StockError,
}

fn unavailable(message: impl Into<String>) -> StockError {
    StockError::Unavailable {
        message: message.into(),
    }
}

impl HttpStock {
    /// A client of the catalog `instances` (base URLs), each call bounded by `timeout`,
    /// signed with `tokens`.
    pub fn new(instances: Vec<String>, tokens: ServiceTokens, timeout: Duration) -> HttpStock {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        HttpStock {
            inner: Arc::new(Inner {
                client,
                instances: instances
                    .into_iter()
                    .map(|url| url.trim_end_matches('/').to_owned())
                    .collect(),
                next: AtomicUsize::new(0),
                tokens,
            }),
        }
    }

    /// Sends the request `build` makes to each instance in turn until one answers below
    /// 500; returns that answer.
    async fn call(
        &self,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, StockError> {
        let instances = &self.inner.instances;
        if instances.is_empty() {
            return Err(unavailable("no catalog instance is listed in discovery"));
        }
        let first = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let mut last = String::new();
        for offset in 0..instances.len() {
            let base = &instances[(first + offset) % instances.len()];
            let mut request =
                build(&self.inner.client, base).bearer_auth(self.inner.tokens.token_for(CATALOG));
            if let Some(traceparent) = logicore_platform::bus::current_traceparent() {
                request = request.header("traceparent", traceparent);
            }
            match request.send().await {
                Ok(response) if !response.status().is_server_error() => return Ok(response),
                Ok(response) => last = format!("{base} answered {}", response.status()),
                Err(err) => last = format!("{base}: {err}"),
            }
            tracing::warn!(error = %last, "a catalog call failed; trying the next instance");
        }
        Err(unavailable(last))
    }
}

/// Reads a refusal: the catalog's [`StockError`], or what is wrong with the call.
async fn refusal(response: reqwest::Response) -> StockError {
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED {
        return unavailable(
            "the catalog refused the service token: internal.token_key must be the same in every role",
        );
    }
    let body = response.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<Refusal>(&body) {
        Ok(refusal) => refusal.stock_error,
        Err(_) => unavailable(format!(
            "the catalog answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )),
    }
}

impl Stock for HttpStock {
    fn reserve<'a>(
        &'a self,
        order: OrderId,
        lines: &'a [ReserveLine],
    ) -> StockFuture<'a, Vec<ReservedLine>> {
        let body = ReserveRequest {
            lines: lines.to_vec(),
        };
        Box::pin(async move {
            let response = self
                .call(|client, base| {
                    client
                        .put(format!("{base}{RESERVATIONS_PATH}/{order}"))
                        .json(&body)
                })
                .await?;
            if response.status() != StatusCode::OK {
                return Err(refusal(response).await);
            }
            let reserved: ReserveResponse = response
                .json()
                .await
                .map_err(|err| unavailable(format!("unreadable reservation: {err}")))?;
            Ok(reserved.lines)
        })
    }

    fn release(&self, order: OrderId) -> StockFuture<'_, ()> {
        Box::pin(async move {
            let response = self
                .call(|client, base| client.delete(format!("{base}{RESERVATIONS_PATH}/{order}")))
                .await?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(refusal(response).await)
            }
        })
    }
}
