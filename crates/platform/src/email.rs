//! Outgoing e-mail: SMTP (lettre) or a directory of `.eml` files, chosen by `email.url`.
//!
//! Every message carries a deterministic `Message-ID` chosen by its sender, so a job that
//! sends it again after a crash sends *the same* message: receivers (and people) can tell a
//! retry from a second message, and the file sink writes each Message-ID at most once.

use std::path::{Path, PathBuf};

use lettre::message::{Mailbox, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::config::{ConfigError, ConnectionUrl};

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// `<local@domain>`, chosen by the sender and stable across retries.
    pub message_id: String,
    /// Recipient address.
    pub to: String,
    /// Recipient display name, if any.
    pub to_name: Option<String>,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub text: String,
}

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    /// The message cannot be sent as it is (bad address): retrying will not help.
    #[error("invalid message: {0}")]
    Invalid(String),
    /// The server or the disk failed: try again later.
    #[error("cannot send: {0}")]
    Transient(String),
}

/// What became of a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Handed over (to the SMTP server, or written to a new file).
    Delivered,
    /// The file sink already holds this Message-ID: nothing written.
    AlreadySent,
}

/// Sends e-mail; cheap to clone.
#[derive(Clone)]
pub struct Mailer {
    from: Mailbox,
    sink: Sink,
}

#[derive(Clone)]
enum Sink {
    Files(PathBuf),
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sink = match &self.sink {
            Sink::Files(dir) => format!("files in {}", dir.display()),
            Sink::Smtp(_) => "smtp".to_owned(),
        };
        formatter
            .debug_struct("Mailer")
            .field("from", &self.from.to_string())
            .field("sink", &sink)
            .finish()
    }
}

impl Mailer {
    /// The mailer for `url` (`file:///dir`, `smtp://[user:pass@]host:port[?tls=required]`,
    /// `smtps://...`) sending as `from`. Errors name the config key.
    /// Needs a tokio runtime for SMTP (the connection pool); [`Mailer::check`] does not.
    pub fn new(url: &ConnectionUrl, from: &str) -> Result<Mailer, ConfigError> {
        let (from, smtp) = Self::check(url, from)?;
        let sink = match smtp {
            Some(builder) => Sink::Smtp(
                builder
                    .timeout(Some(std::time::Duration::from_secs(30)))
                    .build(),
            ),
            None => Sink::Files(PathBuf::from(url.expose().trim_start_matches("file://"))),
        };
        Ok(Mailer { from, sink })
    }

    /// Checks `email.url` and `email.from` without connecting or starting anything.
    pub fn check(
        url: &ConnectionUrl,
        from: &str,
    ) -> Result<
        (
            Mailbox,
            Option<lettre::transport::smtp::AsyncSmtpTransportBuilder>,
        ),
        ConfigError,
    > {
        let from: Mailbox = from
            .parse()
            .map_err(|err| ConfigError::new("email.from", format!("not a mailbox: {err}")))?;
        match url.scheme() {
            "file" => Ok((from, None)),
            "smtp" | "smtps" => {
                let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose())
                    .map_err(|err| ConfigError::new("email.url", err.to_string()))?;
                Ok((from, Some(builder)))
            }
            other => Err(ConfigError::new(
                "email.url",
                format!("unknown scheme `{other}`; use file:// or smtp://"),
            )),
        }
    }

    /// Sends `email` (see [`Sent`]).
    pub async fn send(&self, email: &Email) -> Result<Sent, EmailError> {
        let message = self.build(email)?;
        match &self.sink {
            Sink::Files(dir) => write_once(dir, &email.message_id, &message.formatted()).await,
            Sink::Smtp(transport) => {
                transport.send(message).await.map_err(|err| {
                    if err.is_permanent() {
                        EmailError::Invalid(err.to_string())
                    } else {
                        EmailError::Transient(err.to_string())
                    }
                })?;
                Ok(Sent::Delivered)
            }
        }
    }

    fn build(&self, email: &Email) -> Result<lettre::Message, EmailError> {
        let address = email
            .to
            .parse()
            .map_err(|err| EmailError::Invalid(format!("recipient {}: {err}", email.to)))?;
        let to = Mailbox::new(email.to_name.clone(), address);
        lettre::Message::builder()
            .message_id(Some(email.message_id.clone()))
            .from(self.from.clone())
            .to(to)
            .subject(email.subject.clone())
            .header(ContentType::TEXT_PLAIN)
            .body(email.text.clone())
            .map_err(|err| EmailError::Invalid(err.to_string()))
    }
}

/// The file a Message-ID is written to: its characters outside `[A-Za-z0-9._@-]` become `_`.
pub fn file_name(message_id: &str) -> String {
    let name: String = message_id
        .trim_matches(|c| c == '<' || c == '>')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{name}.eml")
}

/// Writes `bytes` as the message's file unless it exists: written to a temporary file,
/// flushed, then hard-linked to its name (which fails when the name is taken), so a
/// reader never sees half a message and two senders never both write it.
async fn write_once(dir: &Path, message_id: &str, bytes: &[u8]) -> Result<Sent, EmailError> {
    let dir = dir.to_owned();
    let target = dir.join(file_name(message_id));
    let bytes = bytes.to_vec();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let transient =
            |err: std::io::Error| EmailError::Transient(format!("{}: {err}", dir.display()));
        std::fs::create_dir_all(&dir).map_err(transient)?;
        if target.exists() {
            return Ok(Sent::AlreadySent);
        }
        let temporary = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
        let written = std::fs::File::create_new(&temporary).and_then(|mut file| {
            file.write_all(&bytes)?;
            file.sync_all()
        });
        let linked = written.and_then(|()| std::fs::hard_link(&temporary, &target));
        let _ = std::fs::remove_file(&temporary);
        match linked {
            Ok(()) => Ok(Sent::Delivered),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(Sent::AlreadySent),
            Err(err) => Err(transient(err)),
        }
    })
    .await
    .map_err(|err| EmailError::Transient(err.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email() -> Email {
        Email {
            message_id: "<order-0190@logicore>".into(),
            to: "ada@example.com".into(),
            to_name: Some("Ada Lovelace".into()),
            subject: "Order Confirmation".into(),
            text: "Thank you.".into(),
        }
    }

    #[tokio::test]
    async fn the_file_sink_writes_each_message_id_once() {
        let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("{err}"));
        let url = ConnectionUrl::new(format!("file://{}", dir.path().display()));
        let mailer = Mailer::new(&url, "LogiCore <no-reply@localhost>")
            .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(mailer.send(&email()).await.ok(), Some(Sent::Delivered));
        let mut changed = email();
        changed.text = "A second text".into();
        assert_eq!(mailer.send(&changed).await.ok(), Some(Sent::AlreadySent));
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap_or_else(|err| panic!("{err}"))
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files, ["order-0190@logicore.eml"]);
        let text = std::fs::read_to_string(dir.path().join(&files[0])).unwrap_or_default();
        assert!(text.contains("Message-ID: <order-0190@logicore>"), "{text}");
        assert!(text.contains("Subject: Order Confirmation"), "{text}");
        assert!(
            text.contains("To: \"Ada Lovelace\" <ada@example.com>"),
            "{text}"
        );
        assert!(text.contains("Thank you."), "{text}");
    }

    #[tokio::test]
    async fn bad_addresses_are_permanent_errors_and_bad_urls_name_the_key() {
        let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("{err}"));
        let url = ConnectionUrl::new(format!("file://{}", dir.path().display()));
        let mailer = Mailer::new(&url, "no-reply@localhost").unwrap_or_else(|err| panic!("{err}"));
        let mut bad = email();
        bad.to = "not an address".into();
        assert!(matches!(
            mailer.send(&bad).await,
            Err(EmailError::Invalid(_))
        ));
        let err = Mailer::new(&url, "nobody").err().map(|err| err.key);
        assert_eq!(err.as_deref(), Some("email.from"));
        let err = Mailer::new(&ConnectionUrl::new("smtp://"), "a@b.c")
            .err()
            .map(|err| err.key);
        assert_eq!(err.as_deref(), Some("email.url"));
    }
}
