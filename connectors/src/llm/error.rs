//! Errors of the LLM client, with a stable `kind()` for metrics and dead
//! letters.
//!
//! Messages never carry the API key: server texts are passed through
//! [`Redactor`] (which blanks the key wherever it appears and bounds the
//! length) and endpoint URLs are shown without user info or query string.

use std::fmt;
use std::time::Duration;

/// Longest server message kept in an error, in characters.
const MAX_MESSAGE_CHARS: usize = 300;

/// Who caused a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The world around the document: server down or overloaded, network,
    /// quota, credentials, shutdown. Retried; never a dead letter.
    World,
    /// The document (or what the model made of it): a dead letter.
    Document,
    /// The engine's own configuration: stop.
    Config,
}

/// Why a call failed.
#[derive(Clone, PartialEq, Eq)]
pub enum LlmError {
    /// HTTP 429 (after all retries).
    RateLimited {
        endpoint: String,
        retry_after: Option<Duration>,
        message: String,
    },
    /// HTTP 5xx, or a 200 whose body is not a chat completion.
    ServerError {
        endpoint: String,
        status: u16,
        message: String,
    },
    /// No complete answer within `timeout_secs` (or HTTP 408).
    Timeout { endpoint: String },
    /// Could not connect, or the connection broke mid-answer.
    Connection { endpoint: String, message: String },
    /// The answer holds no JSON object (after the malformed-answer retries).
    MalformedAnswer {
        /// Start of the answer's text, for the dead letter.
        content: String,
        finish_reason: Option<String>,
    },
    /// HTTP 400 saying the prompt does not fit the model's context window.
    ContextTooLong { endpoint: String, message: String },
    /// The server's content filter refused the request or cut the answer.
    ContentFilter { endpoint: String, message: String },
    /// HTTP 4xx other than 408/429: the request itself is wrong (or, for
    /// 401/403/404, the key or the model is; see [`LlmError::fault`]).
    ClientError {
        endpoint: String,
        status: u16,
        message: String,
    },
    /// A 5xx or timeout that kept hitting this one request while the server
    /// answered others: the request (the document) is the cause. `kind` is
    /// the kind of the last failure (`server_error`, `timeout`).
    Persistent { kind: &'static str, message: String },
    /// The client was closed before the call finished, or the runtime that
    /// ran it shut down.
    Cancelled,
    /// The request cannot be sent (no model named, body not serializable).
    InvalidRequest(String),
    /// The client cannot be built from its configuration.
    Config(String),
    /// The call panicked inside the client (a bug, or a peer's answer the
    /// code did not foresee): the engine stops with this error rather than
    /// hold the document forever.
    Internal(String),
}

impl LlmError {
    /// Short stable name of the error's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            LlmError::RateLimited { .. } => "rate_limited",
            LlmError::ServerError { .. } => "server_error",
            LlmError::Timeout { .. } => "timeout",
            LlmError::Connection { .. } => "connection",
            LlmError::MalformedAnswer { .. } => "malformed_answer",
            LlmError::ClientError { .. } => "client_error",
            LlmError::ContextTooLong { .. } => "context_too_long",
            LlmError::ContentFilter { .. } => "content_filter",
            LlmError::Persistent { kind, .. } => kind,
            LlmError::Cancelled => "cancelled",
            LlmError::InvalidRequest(_) => "invalid_request",
            LlmError::Config(_) => "config",
            LlmError::Internal(_) => "internal",
        }
    }

    /// Whose fault the error is: the rule of the engine is that only a
    /// [`Fault::Document`] may become a dead letter.
    pub fn fault(&self) -> Fault {
        match self {
            LlmError::RateLimited { .. }
            | LlmError::ServerError { .. }
            | LlmError::Timeout { .. }
            | LlmError::Connection { .. }
            | LlmError::Cancelled => Fault::World,
            // A revoked key, a quota on the account, a model being reloaded:
            // none of these is the document's doing.
            LlmError::ClientError {
                status: 401..=404, ..
            } => Fault::World,
            LlmError::ClientError { .. }
            | LlmError::MalformedAnswer { .. }
            | LlmError::ContextTooLong { .. }
            | LlmError::ContentFilter { .. }
            | LlmError::Persistent { .. }
            | LlmError::InvalidRequest(_) => Fault::Document,
            LlmError::Config(_) | LlmError::Internal(_) => Fault::Config,
        }
    }

    /// Whether another attempt may succeed (a fault of the LLM side, or an
    /// answer that may come out well-formed next time).
    pub fn is_retriable(&self) -> bool {
        matches!(self, LlmError::MalformedAnswer { .. })
            || (self.fault() == Fault::World && *self != LlmError::Cancelled)
    }
}

impl fmt::Display for LlmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LlmError::RateLimited {
                endpoint,
                retry_after,
                message,
            } => {
                write!(f, "rate limited by {endpoint}")?;
                if let Some(d) = retry_after {
                    write!(f, " (retry after {:.1}s)", d.as_secs_f64())?;
                }
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            LlmError::ServerError {
                endpoint,
                status,
                message,
            } => write!(f, "server error {status} from {endpoint}: {message}"),
            LlmError::Timeout { endpoint } => write!(f, "timed out waiting for {endpoint}"),
            LlmError::Connection { endpoint, message } => {
                write!(f, "connection to {endpoint} failed: {message}")
            }
            LlmError::MalformedAnswer {
                content,
                finish_reason,
            } => {
                write!(f, "answer holds no JSON object")?;
                if let Some(r) = finish_reason {
                    write!(f, " (finish_reason {r})")?;
                }
                write!(f, ": {content:?}")
            }
            LlmError::ClientError {
                endpoint,
                status,
                message,
            } => write!(f, "request rejected with {status} by {endpoint}: {message}"),
            LlmError::ContextTooLong { endpoint, message } => {
                write!(f, "prompt too long for the model at {endpoint}: {message}")
            }
            LlmError::ContentFilter { endpoint, message } => {
                write!(f, "refused by the content filter of {endpoint}: {message}")
            }
            LlmError::Persistent { message, .. } => f.write_str(message),
            LlmError::Cancelled => write!(f, "cancelled: the LLM client was closed"),
            LlmError::InvalidRequest(m) => write!(f, "invalid LLM request: {m}"),
            LlmError::Config(m) => write!(f, "LLM client configuration: {m}"),
            LlmError::Internal(m) => write!(f, "the LLM client failed internally: {m}"),
        }
    }
}

// Debug shows the same (already redacted) text, plus the kind.
impl fmt::Debug for LlmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LlmError({}: {self})", self.kind())
    }
}

impl std::error::Error for LlmError {}

/// Makes server texts and URLs safe to put in errors and logs.
#[derive(Clone, Default)]
pub struct Redactor {
    secret: Option<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Redactor { .. }")
    }
}

impl Redactor {
    /// A redactor blanking `secret` (ignored when empty).
    pub fn new(secret: Option<&str>) -> Self {
        Redactor {
            secret: secret.filter(|s| !s.is_empty()).map(str::to_owned),
        }
    }

    /// `text` with the secret (and any prefix of 8+ characters of it, as
    /// servers echo truncated keys) blanked, cut to a bounded length.
    pub fn message(&self, text: &str) -> String {
        let mut s = text.trim().to_owned();
        if let Some(secret) = &self.secret {
            s = s.replace(secret.as_str(), "[redacted]");
            // Servers often echo a truncated key ("sk-abc123***"): blank any
            // run of 8 or more of its leading characters.
            let chars: Vec<char> = secret.chars().collect();
            let mut n = chars.len();
            while n >= 8 {
                let prefix: String = chars[..n].iter().collect();
                if s.contains(&prefix) {
                    s = s.replace(&prefix, "[redacted]");
                }
                n -= 1;
            }
        }
        if s.chars().count() > MAX_MESSAGE_CHARS {
            s = s.chars().take(MAX_MESSAGE_CHARS).collect::<String>() + "…";
        }
        s
    }
}

/// `url` without user info and query string (which may hold credentials).
pub fn display_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.to_string().trim_end_matches('/').to_owned()
        }
        Err(_) => "<invalid url>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_stable() {
        let e = |s: &str| s.to_owned();
        let all = [
            (
                LlmError::RateLimited {
                    endpoint: e("x"),
                    retry_after: None,
                    message: e(""),
                },
                "rate_limited",
                true,
            ),
            (
                LlmError::ServerError {
                    endpoint: e("x"),
                    status: 500,
                    message: e(""),
                },
                "server_error",
                true,
            ),
            (LlmError::Timeout { endpoint: e("x") }, "timeout", true),
            (
                LlmError::Connection {
                    endpoint: e("x"),
                    message: e(""),
                },
                "connection",
                true,
            ),
            (
                LlmError::MalformedAnswer {
                    content: e(""),
                    finish_reason: None,
                },
                "malformed_answer",
                true,
            ),
            (
                LlmError::ClientError {
                    endpoint: e("x"),
                    status: 400,
                    message: e(""),
                },
                "client_error",
                false,
            ),
            (
                LlmError::ClientError {
                    endpoint: e("x"),
                    status: 401,
                    message: e(""),
                },
                "client_error",
                true,
            ),
            (
                LlmError::ContextTooLong {
                    endpoint: e("x"),
                    message: e(""),
                },
                "context_too_long",
                false,
            ),
            (
                LlmError::ContentFilter {
                    endpoint: e("x"),
                    message: e(""),
                },
                "content_filter",
                false,
            ),
            (LlmError::Cancelled, "cancelled", false),
            (LlmError::InvalidRequest(e("")), "invalid_request", false),
            (LlmError::Config(e("")), "config", false),
            (LlmError::Internal(e("")), "internal", false),
        ];
        for (err, kind, retriable) in all {
            assert_eq!(err.kind(), kind);
            assert_eq!(err.is_retriable(), retriable, "{kind}");
            // Every retriable error but a malformed answer is the world's fault.
            if retriable && kind != "malformed_answer" {
                assert_eq!(err.fault(), Fault::World, "{kind}");
            }
            assert!(format!("{err:?}").contains(kind));
        }
    }

    #[test]
    fn faults_of_the_world_and_of_the_document() {
        let client = |status| LlmError::ClientError {
            endpoint: "x".into(),
            status,
            message: String::new(),
        };
        for s in [401, 403, 404] {
            assert_eq!(client(s).fault(), Fault::World, "{s}");
        }
        for s in [400, 413, 422] {
            assert_eq!(client(s).fault(), Fault::Document, "{s}");
        }
        assert_eq!(LlmError::Cancelled.fault(), Fault::World);
        assert_eq!(LlmError::Config("x".into()).fault(), Fault::Config);
        assert_eq!(
            LlmError::Timeout {
                endpoint: "x".into()
            }
            .fault(),
            Fault::World
        );
    }

    #[test]
    fn redactor_blanks_secret_and_truncated_echoes() {
        let r = Redactor::new(Some("sk-test-0123456789abcdef"));
        let m = r.message("Incorrect API key provided: sk-test-0123456789abcdef.");
        assert!(!m.contains("0123456789"), "{m}");
        let m = r.message("Incorrect API key provided: sk-test-0123****cdef.");
        assert!(!m.contains("sk-test-0123"), "{m}");
        assert!(m.contains("[redacted]"), "{m}");
        let long = "x".repeat(1000);
        assert_eq!(r.message(&long).chars().count(), MAX_MESSAGE_CHARS + 1);
        assert_eq!(Redactor::new(Some("")).message(" a "), "a");
    }

    #[test]
    fn urls_lose_credentials() {
        assert_eq!(
            display_url("https://user:pw@api.example.com/v1?key=abc"),
            "https://api.example.com/v1"
        );
        assert_eq!(
            display_url("http://127.0.0.1:8000/v1/"),
            "http://127.0.0.1:8000/v1"
        );
        assert_eq!(display_url("::"), "<invalid url>");
    }
}
