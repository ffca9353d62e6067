//! Sending: one `webhooks.deliver` job per delivery makes the attempts of the retry
//! schedule. Each attempt signs the stored body (Standard Webhooks, `webhook-id` = the event
//! id, the same on every attempt), POSTs it to a checked address without following
//! redirects, and records status, latency and the first bytes of the answer. 2xx delivers;
//! 410 Gone disables the endpoint; anything else waits for the next step of the schedule
//! (with ±10 % jitter, and at least the receiver's `Retry-After`).

use std::time::{Duration, Instant};

use chrono::Utc;
use logicore_platform::jobs::Job;
use logicore_platform::jobs::worker::JobError;
use reqwest::StatusCode;
use uuid::Uuid;

use crate::domain::DeliveryStatus;
use crate::guard::refusal_in;
use crate::service::{WebhooksService, now};
use crate::signature;
use crate::store::AttemptRecord;

/// Bytes of an answer kept in the attempt log.
const EXCERPT_BYTES: usize = 1024;

/// Pause after a failure of this side (the database) before the attempt is made again.
const INTERNAL_RETRY: Duration = Duration::from_secs(5);

/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How one attempt ended.
#[derive(Debug)]
struct Outcome {
    status: Option<StatusCode>,
    latency: Duration,
    excerpt: Option<String>,
    error: Option<String>,
    retry_after: Option<Duration>,
}

/// Reads `Retry-After`: delay-seconds or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delay = (date.with_timezone(&Utc) - Utc::now()).to_std().ok()?;
    Some(delay.min(MAX_RETRY_AFTER))
}

/// `delay` ± 10 %.
fn jittered(delay: Duration) -> Duration {
    let unit = logicore_platform::jobs::random_unit();
    delay.mul_f64(0.9 + 0.2 * unit)
}

impl WebhooksService {
    /// The delay before attempt `next` (1-based) of the schedule, or `None` after the last.
    pub fn scheduled_delay(&self, next: u32) -> Option<Duration> {
        let index = usize::try_from(next).ok()?.checked_sub(1)?;
        self.settings.retry_schedule.get(index).copied()
    }

    /// Attempts allowed by the schedule.
    pub fn scheduled_attempts(&self) -> u32 {
        u32::try_from(self.settings.retry_schedule.len().max(1)).unwrap_or(u32::MAX)
    }

    async fn send(&self, url: &str, keys: &[Vec<u8>], event_id: Uuid, body: String) -> Outcome {
        let started = Instant::now();
        let fail = |error: String| Outcome {
            status: None,
            latency: started.elapsed(),
            excerpt: None,
            error: Some(error),
            retry_after: None,
        };
        // IP literals are not resolved by the client: the guard checks them here.
        let target = match reqwest::Url::parse(url) {
            Ok(target) => target,
            Err(err) => return fail(format!("the endpoint URL is invalid: {err}")),
        };
        if let Err(refused) = self.settings.guard.check_url(&target) {
            return fail(format!("refused: {refused}"));
        }
        let id = event_id.to_string();
        let timestamp = Utc::now().timestamp();
        let signature = signature::header(keys, &id, timestamp, body.as_bytes());
        let request = self
            .client
            .post(target)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature);
        let request = match logicore_platform::bus::current_traceparent() {
            Some(traceparent) => request.header("traceparent", traceparent),
            None => request,
        };
        let mut response = match request.body(body).send().await {
            Ok(response) => response,
            Err(err) => {
                let message = match refusal_in(&err) {
                    Some(refused) => format!("refused: {refused}"),
                    None if err.is_timeout() => {
                        format!("no answer within {:?}", self.settings.timeout)
                    }
                    None => format!("{err}"),
                };
                return fail(message);
            }
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let mut excerpt = Vec::new();
        while excerpt.len() < EXCERPT_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        excerpt.truncate(EXCERPT_BYTES);
        let excerpt = (!excerpt.is_empty()).then(|| String::from_utf8_lossy(&excerpt).into_owned());
        Outcome {
            status: Some(status),
            latency: started.elapsed(),
            excerpt,
            error: (!status.is_success()).then(|| format!("the receiver answered {status}")),
            retry_after,
        }
    }

    /// The `webhooks.deliver` job: one attempt of a delivery.
    pub async fn deliver(&self, job: &Job) -> Result<(), JobError> {
        let delivery_id = job
            .payload
            .get("delivery_id")
            .and_then(|id| id.as_str())
            .and_then(|id| id.parse::<Uuid>().ok())
            .ok_or_else(|| JobError::Discard("the payload has no delivery_id".into()))?;
        let result = self.attempt(job, delivery_id).await;
        if let Err(JobError::Retry(why)) = &result {
            // Not an answer of the receiver but a failure here (the database): try again
            // soon; when the job's attempts are used up, the delivery is marked failed so a
            // person can send it again.
            if job.attempt >= job.max_attempts {
                let reason = format!("gave up after an internal error: {why}");
                if let Err(err) = self.store.give_up(delivery_id, &reason, now()).await {
                    tracing::error!(delivery = %delivery_id, error = %err, "cannot mark a webhook delivery failed");
                }
                return Err(JobError::Discard(reason));
            }
            return Err(JobError::RetryAfter {
                message: why.clone(),
                delay: INTERNAL_RETRY,
            });
        }
        result
    }

    /// One attempt of `delivery_id`.
    async fn attempt(&self, job: &Job, delivery_id: Uuid) -> Result<(), JobError> {
        let retry = |err: &dyn std::fmt::Display| JobError::Retry(err.to_string());
        let Some(delivery) = self
            .store
            .delivery(delivery_id)
            .await
            .map_err(|e| retry(&e))?
        else {
            // Its endpoint was deleted.
            return Ok(());
        };
        if delivery.status == DeliveryStatus::Delivered {
            return Ok(());
        }
        let endpoint = self
            .store
            .endpoint(delivery.endpoint_id)
            .await
            .map_err(|e| retry(&e))?;
        let Some(endpoint) = endpoint.filter(|endpoint| !endpoint.disabled) else {
            self.store
                .give_up(delivery_id, "the endpoint is disabled", now())
                .await
                .map_err(|e| retry(&e))?;
            return Ok(());
        };
        let body = self
            .store
            .delivery_body(delivery_id)
            .await
            .map_err(|e| retry(&e))?
            .unwrap_or_default();
        let keys = match self.signing_keys(&endpoint) {
            Ok(keys) if !keys.is_empty() => keys,
            // A secret that cannot be read will not become readable by waiting (keys
            // missing from the ring): give up rather than send unsigned messages.
            Ok(_) | Err(_) => {
                let reason = "the endpoint's signing secret cannot be read (encryption keys?)";
                tracing::error!(endpoint = %endpoint.id, "{reason}");
                self.store
                    .give_up(delivery_id, reason, now())
                    .await
                    .map_err(|e| retry(&e))?;
                return Err(JobError::Discard(reason.into()));
            }
        };
        let outcome = self
            .send(&endpoint.url, &keys, delivery.event_id, body)
            .await;

        let attempt = delivery.attempt + 1;
        let manual = job.payload.get("manual").is_some();
        let gone = outcome.status == Some(StatusCode::GONE);
        let delivered = outcome.status.is_some_and(|status| status.is_success());
        // The next attempt of the schedule, unless this was the last (a manual retry is one
        // attempt).
        let next = (!delivered && !gone && !manual && job.attempt < job.max_attempts)
            .then(|| self.scheduled_delay(job.attempt + 1))
            .flatten()
            .map(|delay| jittered(delay).max(outcome.retry_after.unwrap_or_default()));
        let status = if delivered {
            DeliveryStatus::Delivered
        } else if next.is_some() {
            DeliveryStatus::Pending
        } else {
            DeliveryStatus::Failed
        };
        let at = now();
        let record = AttemptRecord {
            delivery_id,
            attempt,
            response_status: outcome.status.map(|status| i32::from(status.as_u16())),
            latency_ms: i64::try_from(outcome.latency.as_millis()).unwrap_or(i64::MAX),
            response_excerpt: outcome.excerpt,
            error: outcome.error.clone(),
            status,
            next_attempt_at: next
                .map(|delay| at + chrono::Duration::from_std(delay).unwrap_or_default()),
            at,
        };
        let disable = gone.then_some("the receiver answered 410 Gone");
        self.store
            .record_attempt(&record, endpoint.id, disable)
            .await
            .map_err(|e| retry(&e))?;
        let outcome_label = if delivered {
            "delivered"
        } else if gone {
            "gone"
        } else if next.is_some() {
            "retry"
        } else {
            "failed"
        };
        metrics::counter!("webhook_attempts_total", "outcome" => outcome_label).increment(1);
        metrics::histogram!("webhook_attempt_duration_seconds").record(outcome.latency);
        if gone {
            tracing::warn!(endpoint = %endpoint.id, "webhook endpoint disabled: it answered 410 Gone");
        }
        match (delivered || gone, next) {
            (true, _) => Ok(()),
            (false, Some(delay)) => Err(JobError::RetryAfter {
                message: outcome.error.unwrap_or_default(),
                delay,
            }),
            (false, None) => Err(JobError::Discard(format!(
                "webhook delivery failed for good: {}",
                outcome.error.unwrap_or_default()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("retry-after", "120".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(120)));
        let later = (Utc::now() + chrono::Duration::seconds(300)).to_rfc2822();
        headers.insert("retry-after", later.parse().unwrap());
        let delay = retry_after(&headers).unwrap();
        assert!(delay > Duration::from_secs(290) && delay <= Duration::from_secs(300));
        headers.insert("retry-after", "999999999".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        headers.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let delay = jittered(Duration::from_secs(100));
            assert!(delay >= Duration::from_secs(90) && delay <= Duration::from_secs(110));
        }
    }
}
