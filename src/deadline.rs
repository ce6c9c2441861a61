//! The time by which a request must be over: the Lambda invocation's deadline (less a
//! reserve for the close) when the runtime gives one, else `MAX_STREAM_SECONDS` from the
//! request's start. Set once per request by `routes::deadline` and read, through a
//! task-local, where the time is spent: the Dify client bounds the answer's stream by it,
//! the stream pump its close.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Kept back from Lambda's deadline for what follows a cut answer: the error event, the
/// Dify task's stop and the store writes, so they happen inside the invocation. At most a
/// quarter of the time left, for very short function timeouts.
pub const CLOSE_RESERVE: Duration = Duration::from_secs(2);

tokio::task_local! {
    static CURRENT: Deadline;
}

/// When the request's work must stop, and why.
#[derive(Debug, Clone)]
pub struct Deadline {
    /// The answer (or the wait for its start) is cut here.
    pub at: Instant,
    /// Where nothing may run any more (the invocation's end); `None` locally.
    pub hard: Option<Instant>,
    /// `MAX_STREAM_SECONDS` when that is the limit (for the message).
    pub max_stream: Option<Duration>,
    /// Set once Dify's answer has started: from then on the answer's stream enforces
    /// `at` itself and ends with an error the client can read.
    started: Arc<AtomicBool>,
}

impl Deadline {
    /// The deadline of a request starting now: `invocation_ms` is Lambda's deadline
    /// (ms since the Unix epoch), if the runtime gave one. Lambda never hands out an event
    /// already past its deadline; emulators do (`cargo lambda watch` sends one in the
    /// past), so such a deadline counts as none.
    pub fn for_request(invocation_ms: Option<u64>, max_stream: Duration) -> Deadline {
        let now = Instant::now();
        let left = invocation_ms
            .map(|ms| time_left(ms, SystemTime::now()))
            .filter(|left| !left.is_zero());
        match left {
            Some(left) => {
                let reserve = CLOSE_RESERVE.min(left / 4);
                // The stream limit still applies when the invocation is longer.
                let at = (now + left - reserve).min(now + max_stream);
                Deadline {
                    at,
                    hard: Some(now + left),
                    max_stream: (now + max_stream <= at).then_some(max_stream),
                    started: Arc::default(),
                }
            }
            None => Deadline {
                at: now + max_stream,
                hard: None,
                max_stream: Some(max_stream),
                started: Arc::default(),
            },
        }
    }

    /// Runs `work` with this deadline as the current one.
    pub async fn scope<F: Future>(self, work: F) -> F::Output {
        CURRENT.scope(self, work).await
    }

    /// The deadline of the request being served, if any (outside a request: none).
    pub fn current() -> Option<Deadline> {
        CURRENT.try_with(Deadline::clone).ok()
    }

    /// Notes that Dify's answer has started (its response head arrived).
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::Relaxed);
    }

    /// Whether Dify's answer has started.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// The limit, as messages name it.
    pub fn describe(&self) -> String {
        match self.max_stream {
            Some(limit) => format!("the limit of {} s", limit.as_secs()),
            None => "the function's time limit".to_string(),
        }
    }
}

/// Time from `now` to the Lambda deadline `deadline_ms`; zero once it has passed.
fn time_left(deadline_ms: u64, now: SystemTime) -> Duration {
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Duration::from_millis(deadline_ms.saturating_sub(now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(900);

    fn ms_from_now(ms: i64) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        (now + ms) as u64
    }

    #[test]
    fn time_left_counts_down_to_zero() {
        let now = UNIX_EPOCH + Duration::from_millis(10_000);
        assert_eq!(time_left(12_500, now), Duration::from_millis(2_500));
        assert_eq!(time_left(9_000, now), Duration::ZERO);
    }

    #[test]
    fn an_invocation_keeps_a_reserve_for_the_close() {
        let d = Deadline::for_request(Some(ms_from_now(10_000)), MAX);
        let now = Instant::now();
        let cut = d.at - now;
        let hard = d.hard.unwrap() - now;
        assert!(
            cut <= Duration::from_secs(8) && cut > Duration::from_secs(7),
            "{cut:?}"
        );
        assert!(
            hard <= Duration::from_secs(10) && hard > Duration::from_secs(9),
            "{hard:?}"
        );
        assert_eq!(d.describe(), "the function's time limit");
    }

    #[test]
    fn a_passed_deadline_counts_as_none() {
        let d = Deadline::for_request(Some(ms_from_now(-5_000)), MAX);
        assert_eq!(d.hard, None);
        assert!(d.at > Instant::now() + Duration::from_secs(800));
    }

    #[test]
    fn a_short_invocation_keeps_a_quarter_for_the_close() {
        let d = Deadline::for_request(Some(ms_from_now(2_000)), MAX);
        let cut = d.at - Instant::now();
        assert!(
            cut <= Duration::from_millis(1_500) && cut > Duration::from_millis(1_200),
            "{cut:?}"
        );
    }

    #[test]
    fn the_stream_limit_applies_when_shorter_or_without_lambda() {
        let limit = Duration::from_secs(30);
        let d = Deadline::for_request(Some(ms_from_now(900_000)), limit);
        assert!(d.at - Instant::now() <= limit);
        assert_eq!(d.describe(), "the limit of 30 s");
        let local = Deadline::for_request(None, limit);
        assert_eq!(local.hard, None);
        assert_eq!(local.describe(), "the limit of 30 s");
    }

    #[tokio::test]
    async fn the_deadline_is_current_only_inside_its_scope() {
        assert!(Deadline::current().is_none());
        let d = Deadline::for_request(None, MAX);
        let seen = d.clone().scope(async { Deadline::current() }).await;
        assert_eq!(seen.map(|s| s.at), Some(d.at));
    }
}
