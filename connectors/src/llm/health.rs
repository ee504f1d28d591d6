//! Whether the LLM side is up: the outage detector that turns a run of
//! failures into backpressure instead of dead letters.
//!
//! Every HTTP attempt reports here. A success clears the count; after
//! `outage_after_failures` consecutive failures of the LLM side (connection,
//! timeout, 5xx, 429, 401/403/404) the client declares an **outage**: the
//! sources stop reading (they watch [`LlmHealth::paused`]), in-flight calls
//! keep retrying with capped backoff, `/readyz` answers 503 with the reason,
//! and one warning a minute says what the engine waits for. The first answer
//! from any endpoint ends the outage and everything resumes where it was.
//!
//! Until the start-up check has reached an endpoint the state is "not yet
//! answered", which pauses the sources the same way: nothing is consumed
//! before the LLM has been seen.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// How often a continuing outage is logged.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The LLM side's state as the engine shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthStatus {
    /// An endpoint answered since the last outage began.
    pub up: bool,
    /// When the outage (or the wait for a first answer) began.
    pub down_since: Option<SystemTime>,
    /// The last failure, redacted (no key, no credentials in URLs).
    pub last_error: Option<String>,
    /// Consecutive failures so far.
    pub consecutive_failures: u32,
}

impl HealthStatus {
    /// One line for `/readyz` and logs: `LLM unavailable since T (Ns): last error`.
    pub fn describe(&self) -> String {
        if self.up {
            return "LLM up".to_owned();
        }
        let since = self.down_since.map(|t| {
            let secs = t
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let ago = SystemTime::now()
                .duration_since(t)
                .unwrap_or_default()
                .as_secs();
            format!(" since {} ({ago} s)", rfc3339(secs))
        });
        format!(
            "LLM unavailable{}: {}",
            since.unwrap_or_default(),
            self.last_error
                .as_deref()
                .unwrap_or("no endpoint has answered yet")
        )
    }
}

#[derive(Debug)]
struct State {
    consecutive: u32,
    down_since: Option<(Instant, SystemTime)>,
    last_error: Option<String>,
    last_warned: Option<Instant>,
    /// Set once, never cleared: the client failed in a way no retry mends (a panic).
    fatal: Option<String>,
}

/// The process-wide outage detector. Clones share it.
#[derive(Clone, Debug)]
pub struct LlmHealth {
    state: Arc<Mutex<State>>,
    /// Mirrors "not up" for the sources, which read it on every activation.
    paused: Arc<AtomicBool>,
    threshold: u32,
}

impl LlmHealth {
    /// A detector declaring an outage after `threshold` consecutive failures.
    /// It starts *down* ("no endpoint has answered yet") until the first
    /// success or [`LlmHealth::mark_up`].
    pub fn new(threshold: u32) -> Self {
        LlmHealth {
            state: Arc::new(Mutex::new(State {
                consecutive: 0,
                down_since: Some((Instant::now(), SystemTime::now())),
                last_error: None,
                last_warned: Some(Instant::now()),
                fatal: None,
            })),
            paused: Arc::new(AtomicBool::new(true)),
            threshold: threshold.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The flag the sources watch: set while the LLM side is down.
    pub fn paused(&self) -> Arc<AtomicBool> {
        self.paused.clone()
    }

    /// Whether the LLM side is up now.
    pub fn is_up(&self) -> bool {
        !self.paused.load(Ordering::Relaxed)
    }

    /// An endpoint answered (any HTTP answer that is not a fault of the
    /// LLM side counts: a 400 about the request proves the server is there).
    pub fn record_success(&self) {
        if self.is_up() && self.lock().consecutive == 0 {
            return; // the hot path: nothing to change
        }
        let mut s = self.lock();
        s.consecutive = 0;
        if let Some((started, _)) = s.down_since.take() {
            if s.last_error.is_some() {
                tracing::warn!(
                    "LLM available again after {:.0} s; resuming",
                    started.elapsed().as_secs_f64()
                );
            }
            s.last_warned = None;
        }
        self.paused.store(false, Ordering::Relaxed);
    }

    /// The start-up check reached every endpoint: up, without a log line.
    pub fn mark_up(&self) {
        let mut s = self.lock();
        s.consecutive = 0;
        s.down_since = None;
        s.last_warned = None;
        self.paused.store(false, Ordering::Relaxed);
    }

    /// A failure of the LLM side; `error` is already redacted.
    pub fn record_failure(&self, error: &str) {
        let mut s = self.lock();
        s.consecutive = s.consecutive.saturating_add(1);
        s.last_error = Some(error.to_owned());
        if s.down_since.is_none() && s.consecutive >= self.threshold {
            s.down_since = Some((Instant::now(), SystemTime::now()));
            s.last_warned = Some(Instant::now());
            self.paused.store(true, Ordering::Relaxed);
            tracing::warn!(
                failures = s.consecutive,
                "LLM unavailable: {error}; pausing the input and retrying until it answers"
            );
        } else if s.down_since.is_some() && s.last_warned.is_none_or(|t| t.elapsed() >= WARN_EVERY)
        {
            s.last_warned = Some(Instant::now());
            let secs = s
                .down_since
                .map(|(t, _)| t.elapsed().as_secs())
                .unwrap_or(0);
            tracing::warn!("LLM still unavailable after {secs} s: {error}; input paused, retrying");
        }
    }

    /// The client failed in a way no retry mends (a call panicked): the engine must stop. The
    /// first such failure is kept.
    pub fn record_fatal(&self, error: &str) {
        let mut s = self.lock();
        if s.fatal.is_none() {
            tracing::error!("LLM client failed: {error}; stopping the engine");
            s.fatal = Some(error.to_owned());
        }
    }

    /// The fatal failure, if one happened ([`LlmHealth::record_fatal`]).
    pub fn fatal(&self) -> Option<String> {
        self.lock().fatal.clone()
    }

    /// How long the current outage has lasted (`None` while up).
    pub fn outage(&self) -> Option<Duration> {
        self.lock().down_since.map(|(t, _)| t.elapsed())
    }

    /// A snapshot for `/readyz`, the metrics and the dashboard.
    pub fn status(&self) -> HealthStatus {
        let s = self.lock();
        HealthStatus {
            up: s.down_since.is_none(),
            down_since: s.down_since.map(|(_, t)| t),
            last_error: s.last_error.clone(),
            consecutive_failures: s.consecutive,
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch (UTC).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_down_until_an_answer() {
        let h = LlmHealth::new(3);
        assert!(!h.is_up());
        assert!(h.paused().load(Ordering::Relaxed));
        assert!(
            h.status()
                .describe()
                .contains("no endpoint has answered yet")
        );
        h.record_success();
        assert!(h.is_up());
        assert_eq!(h.outage(), None);
        assert_eq!(h.status().describe(), "LLM up");
    }

    #[test]
    fn outage_after_consecutive_failures_and_recovery() {
        let h = LlmHealth::new(3);
        h.mark_up();
        h.record_failure("connection refused");
        h.record_failure("connection refused");
        assert!(h.is_up(), "two failures are a blip, not an outage");
        h.record_success();
        h.record_failure("a");
        h.record_failure("b");
        assert!(h.is_up(), "a success in between resets the count");
        h.record_failure("server error 503 from http://x/v1: loading");
        assert!(!h.is_up());
        assert!(h.outage().is_some());
        let st = h.status();
        assert_eq!(st.consecutive_failures, 3);
        let line = st.describe();
        assert!(line.starts_with("LLM unavailable since "), "{line}");
        assert!(line.ends_with("loading"), "{line}");
        h.record_success();
        assert!(h.is_up());
        assert!(!h.paused().load(Ordering::Relaxed));
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_054_400), "2026-11-30T16:00:00Z");
        assert_eq!(rfc3339(951_825_599), "2000-02-29T11:59:59Z");
    }
}
