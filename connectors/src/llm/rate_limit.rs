//! Pacing of LLM requests: token buckets for requests/tokens per minute, the
//! global cool-down after a rate-limit answer, `Retry-After` parsing and the
//! exponential backoff with full jitter used between retries.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// A token bucket refilled continuously at `per_minute / 60` tokens per
/// second, holding at most one second's worth (but at least one token).
///
/// Acquisition is by reservation: the tokens are taken at once, possibly
/// driving the balance negative, and the caller sleeps until the balance it
/// left behind has been refilled. Waiters are therefore served in arrival
/// order with a single lock per acquisition, and a request larger than the
/// bucket simply waits longer instead of never fitting.
#[derive(Debug)]
pub struct TokenBucket {
    rate_per_sec: f64,
    capacity: f64,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `per_minute` tokens per minute (`per_minute > 0`).
    pub fn per_minute(per_minute: u32) -> Self {
        let rate_per_sec = f64::from(per_minute.max(1)) / 60.0;
        let capacity = rate_per_sec.max(1.0);
        TokenBucket {
            rate_per_sec,
            capacity,
            state: Mutex::new(BucketState {
                tokens: capacity,
                last: Instant::now(),
            }),
        }
    }

    fn refill(&self, st: &mut BucketState, now: Instant) {
        let dt = now.saturating_duration_since(st.last).as_secs_f64();
        st.tokens = (st.tokens + dt * self.rate_per_sec).min(self.capacity);
        st.last = now;
    }

    /// Takes `n` tokens and returns how long the caller must wait before
    /// going ahead (zero when the bucket held enough).
    pub fn reserve(&self, n: f64) -> Duration {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.refill(&mut st, now);
        st.tokens -= n;
        if st.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-st.tokens / self.rate_per_sec)
        }
    }

    /// Takes `n` tokens, sleeping as long as the reservation requires.
    pub async fn acquire(&self, n: f64) {
        let wait = self.reserve(n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Corrects an earlier reservation by `delta` tokens: positive takes more
    /// (actual usage above the estimate), negative gives back.
    pub fn adjust(&self, delta: f64) {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.refill(&mut st, now);
        st.tokens = (st.tokens - delta).min(self.capacity);
    }

    /// Tokens currently available (negative while reservations are pending).
    pub fn available(&self) -> f64 {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.refill(&mut st, Instant::now());
        st.tokens
    }
}

/// A pause shared by all requests of the process, set by a 429 answer: no
/// request is sent before it ends. Lock-free: the end is kept as nanoseconds
/// since the cool-down's creation and only ever moves forward.
#[derive(Debug)]
pub struct CoolDown {
    origin: Instant,
    until_nanos: AtomicU64,
}

impl Default for CoolDown {
    fn default() -> Self {
        CoolDown {
            origin: Instant::now(),
            until_nanos: AtomicU64::new(0),
        }
    }
}

impl CoolDown {
    /// Extends the pause to at least `now + d`.
    pub fn extend(&self, d: Duration) {
        let until = Instant::now() + d;
        let nanos = until.saturating_duration_since(self.origin).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
        self.until_nanos.fetch_max(nanos, Ordering::AcqRel);
    }

    /// Time left in the pause (zero when none is active).
    pub fn remaining(&self) -> Duration {
        let until = self.origin + Duration::from_nanos(self.until_nanos.load(Ordering::Acquire));
        until.saturating_duration_since(Instant::now())
    }

    /// Sleeps until no pause is active (re-checking, since another 429 may
    /// extend it meanwhile).
    pub async fn wait(&self) {
        loop {
            let left = self.remaining();
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left).await;
        }
    }
}

/// Longest `Retry-After` honoured; larger values are clamped to it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Parses a `Retry-After` value: delay-seconds (integer or decimal) or an
/// HTTP date, relative to `now`. A date in the past means zero.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    let d = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else if let Ok(secs) = v.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return None;
        }
        Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64()))
    } else {
        let when = httpdate::parse_http_date(v).ok()?;
        when.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(d.min(MAX_RETRY_AFTER))
}

/// Exponential backoff with full jitter: a uniformly random delay in
/// `[0, min(max, base * 2^retry)]` for the `retry`-th retry (0-based).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Upper bound of the delay before retry number `retry` (0-based).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u64.checked_shl(retry.min(63)).unwrap_or(u64::MAX);
        let ms = u64::try_from(self.base.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_mul(factor);
        Duration::from_millis(ms).min(self.max)
    }

    /// A random delay before retry number `retry` (0-based).
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = u64::try_from(self.ceiling(retry).as_micros()).unwrap_or(u64::MAX);
        if ceiling == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(rand::random_range(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_reserves_and_refills() {
        let b = TokenBucket::per_minute(600); // 10/s, capacity 10
        for _ in 0..10 {
            assert_eq!(b.reserve(1.0), Duration::ZERO);
        }
        let w = b.reserve(1.0);
        assert!(
            w > Duration::from_millis(50) && w <= Duration::from_millis(100),
            "{w:?}"
        );
        // The next waiter queues behind the previous one.
        let w2 = b.reserve(1.0);
        assert!(w2 > w, "{w:?} {w2:?}");
    }

    #[test]
    fn bucket_large_request_waits_proportionally() {
        let b = TokenBucket::per_minute(60); // 1/s, capacity 1
        assert_eq!(b.reserve(1.0), Duration::ZERO);
        let w = b.reserve(5.0);
        assert!(
            w > Duration::from_millis(4900) && w <= Duration::from_secs(5),
            "{w:?}"
        );
    }

    #[test]
    fn bucket_adjust_takes_and_refunds() {
        let b = TokenBucket::per_minute(6000); // 100/s, capacity 100
        b.reserve(50.0);
        b.adjust(30.0); // used 80 in total
        assert!(b.available() < 21.0);
        b.adjust(-1000.0); // refund is capped at capacity
        assert!(b.available() <= 100.0);
    }

    #[tokio::test]
    async fn bucket_acquire_sleeps() {
        let b = TokenBucket::per_minute(600); // 10/s, capacity 10
        let t0 = Instant::now();
        b.acquire(10.0).await;
        assert!(t0.elapsed() < Duration::from_millis(50));
        b.acquire(1.0).await;
        assert!(
            t0.elapsed() >= Duration::from_millis(95),
            "{:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn cooldown_extends_monotonically() {
        let c = CoolDown::default();
        assert_eq!(c.remaining(), Duration::ZERO);
        c.extend(Duration::from_secs(10));
        let r = c.remaining();
        assert!(r > Duration::from_secs(9) && r <= Duration::from_secs(10));
        c.extend(Duration::from_secs(1)); // does not shorten
        assert!(c.remaining() > Duration::from_secs(9));
    }

    #[tokio::test]
    async fn cooldown_wait_returns_after_pause() {
        let c = CoolDown::default();
        c.extend(Duration::from_millis(50));
        let t0 = Instant::now();
        c.wait().await;
        assert!(t0.elapsed() >= Duration::from_millis(50));
        assert_eq!(c.remaining(), Duration::ZERO);
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after("999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
        let date = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(7)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
    }

    #[test]
    fn backoff_ceiling_and_jitter() {
        let b = Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(500));
        assert_eq!(b.ceiling(1), Duration::from_millis(1000));
        assert_eq!(b.ceiling(5), Duration::from_millis(16_000));
        assert_eq!(b.ceiling(6), Duration::from_secs(30));
        assert_eq!(b.ceiling(200), Duration::from_secs(30));
        let delays: Vec<Duration> = (0..200).map(|_| b.delay(3)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(4000)));
        // Full jitter: the delays are spread, not all equal to the ceiling.
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 100);
        let zero = Backoff {
            base: Duration::ZERO,
            max: Duration::ZERO,
        };
        assert_eq!(zero.delay(4), Duration::ZERO);
    }
}
