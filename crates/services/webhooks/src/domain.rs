//! Webhook endpoints, deliveries and attempts, and the rules for their fields.

use chrono::{DateTime, Utc};
use logicore_platform::http::FieldError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::guard::TargetGuard;

/// Longest accepted URL.
const MAX_URL_LEN: usize = 2048;
/// Most event types per endpoint.
const MAX_EVENT_TYPES: usize = 50;
/// Longest description.
const MAX_DESCRIPTION_LEN: usize = 500;

/// A new endpoint (`POST /api/v1/webhooks/endpoints`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointIn {
    /// Where events are POSTed: http(s), a public address.
    #[schema(required = true)]
    pub url: Option<String>,
    /// Event types to receive (`order.created`), or patterns (`order.*`, `#` for all).
    #[schema(required = true)]
    pub event_types: Option<Vec<String>>,
    /// Free text.
    pub description: Option<String>,
}

/// A checked [`EndpointIn`].
#[derive(Debug, Clone)]
pub struct EndpointFields {
    /// Target URL.
    pub url: String,
    /// Types or patterns.
    pub event_types: Vec<String>,
    /// Free text.
    pub description: Option<String>,
}

/// An event type or an AMQP-style pattern: dot-separated words of `a-z`, `0-9`, `_`, or `*`
/// (one word) and `#` (any number of words).
fn valid_event_type(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 100
        && text.split('.').all(|word| {
            word == "*"
                || word == "#"
                || (!word.is_empty()
                    && word
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
        })
}

impl EndpointIn {
    /// Checks every field, naming each bad one.
    pub fn check(self, guard: &TargetGuard) -> Result<EndpointFields, Vec<FieldError>> {
        let mut errors = Vec::new();
        let url = match self.url.as_deref().map(str::trim) {
            None | Some("") => {
                errors.push(FieldError::new("/url", "is required"));
                None
            }
            Some(text) if text.len() > MAX_URL_LEN => {
                errors.push(FieldError::new("/url", "must be at most 2048 characters"));
                None
            }
            Some(text) => match reqwest::Url::parse(text) {
                Err(err) => {
                    errors.push(FieldError::new("/url", format!("is not a URL: {err}")));
                    None
                }
                Ok(url) => match guard.check_url(&url) {
                    Err(refused) => {
                        errors.push(FieldError::new("/url", refused.0));
                        None
                    }
                    Ok(()) => Some(url.to_string()),
                },
            },
        };
        let event_types = match self.event_types {
            None => {
                errors.push(FieldError::new("/event_types", "is required"));
                None
            }
            Some(types) if types.is_empty() => {
                errors.push(FieldError::new(
                    "/event_types",
                    "must list at least one event type",
                ));
                None
            }
            Some(types) if types.len() > MAX_EVENT_TYPES => {
                errors.push(FieldError::new(
                    "/event_types",
                    "must list at most 50 event types",
                ));
                None
            }
            Some(types) => {
                let before = errors.len();
                for (index, text) in types.iter().enumerate() {
                    if !valid_event_type(text) {
                        errors.push(FieldError::new(
                            format!("/event_types/{index}"),
                            "must be an event type such as order.created, or a pattern such as order.* or #",
                        ));
                    }
                }
                (errors.len() == before).then_some(types)
            }
        };
        let description = self.description.map(|text| text.trim().to_owned());
        if description
            .as_ref()
            .is_some_and(|text| text.chars().count() > MAX_DESCRIPTION_LEN)
        {
            errors.push(FieldError::new(
                "/description",
                "must be at most 500 characters",
            ));
        }
        match (url, event_types) {
            (Some(url), Some(event_types)) if errors.is_empty() => Ok(EndpointFields {
                url,
                event_types,
                description: description.filter(|text| !text.is_empty()),
            }),
            _ => Err(errors),
        }
    }
}

/// An endpoint as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Endpoint {
    /// Its id.
    pub id: Uuid,
    /// Target URL.
    pub url: String,
    /// Event types or patterns it receives.
    pub event_types: Vec<String>,
    /// Free text.
    pub description: Option<String>,
    /// The signing secret (`whsec_...`); only in the answers of create and rotate-secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// True once deliveries stopped (the receiver answered 410 Gone).
    pub disabled: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// Who owns it.
    #[serde(skip)]
    pub owner_id: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Not delivered yet; another attempt will come.
    Pending,
    /// A 2xx answer came.
    Delivered,
    /// Given up (schedule exhausted, endpoint disabled or deleted).
    Failed,
}

impl DeliveryStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    /// Reads the stored spelling.
    pub fn parse(text: &str) -> Option<DeliveryStatus> {
        match text {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// One event on its way to one endpoint, with its latest attempt.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Delivery {
    /// Its id.
    pub id: Uuid,
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// The event (also the `webhook-id` header of every attempt).
    pub event_id: Uuid,
    /// The event type.
    pub event_type: String,
    /// Attempts made so far.
    pub attempt: i32,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// HTTP status of the latest attempt, when one came.
    pub response_status: Option<i32>,
    /// Duration of the latest attempt.
    pub latency_ms: Option<i64>,
    /// Why the latest attempt failed.
    pub error: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// When the next attempt is due (pending deliveries).
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Attempt {
    /// 1 for the first.
    pub attempt: i32,
    /// HTTP status, when an answer came.
    pub response_status: Option<i32>,
    /// How long it took.
    pub latency_ms: i64,
    /// The first bytes of the answer.
    pub response_excerpt: Option<String>,
    /// Why it failed (connection, timeout, refused target, non-2xx).
    pub error: Option<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_are_words_or_patterns() {
        for good in [
            "order.created",
            "order.*",
            "#",
            "product.#",
            "user_registered",
        ] {
            assert!(valid_event_type(good), "{good}");
        }
        for bad in [
            "",
            "Order.Created",
            "order..created",
            "order.",
            "a b",
            "order.cré",
        ] {
            assert!(!valid_event_type(bad), "{bad}");
        }
    }
}
