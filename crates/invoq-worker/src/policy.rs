//! Lambda's retry rules for asynchronous invocation (lambda-spec.md §2), as a pure function
//! of the event, what its attempt did, the settings and the time, so they are tested with
//! plain numbers instead of sleeps.
//!
//! - Function errors (handler error, timeout, crash) retry up to `MaximumRetryAttempts`
//!   times, about 60 s and then 120 s later.
//! - Throttles and system errors back off exponentially from 1 s to 5 min and do not use up
//!   retries.
//! - Look-ahead on age: when the next attempt would start past `MaximumEventAgeInSeconds`,
//!   the event ends now with EventAgeExceeded.
//!
//! Every wait and age limit is multiplied by the time scale (`INVOQ_TIME_SCALE`).

use std::time::Duration;

use invoq_domain::asynchronous::{AsyncSettings, Condition, QueuedInvocation, doubling_backoff};

/// The first function-error retry waits this long, the second twice as long.
const FUNCTION_ERROR_RETRY_BASE: Duration = Duration::from_secs(60);

/// What one attempt came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptResult {
    Succeeded,
    /// The function ran and failed: Unhandled error, timeout, crash, init error.
    FunctionError,
    /// The invocation did not run: throttled, or the runtime failed.
    NotRun,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    Finish(Condition),
    RetryAfter(Duration),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Multiplies every wait and age limit; 1.0 is Lambda's real time.
    pub time_scale: f64,
}

impl RetryPolicy {
    /// Whether the event is already too old to run at all (it waited out its age in the
    /// queue, behind throttles or a backlog).
    pub fn expired(&self, event: &QueuedInvocation, settings: &AsyncSettings, now_ms: u64) -> bool {
        age(event, now_ms) > self.scale(settings.maximum_event_age)
    }

    /// Settles an attempt. `event` already counts it (`attempts` or `throttles`).
    pub fn decide(
        &self,
        event: &QueuedInvocation,
        result: AttemptResult,
        settings: &AsyncSettings,
        now_ms: u64,
    ) -> Decision {
        let delay = match result {
            AttemptResult::Succeeded => return Decision::Finish(Condition::Success),
            AttemptResult::FunctionError => {
                if event.attempts > settings.maximum_retry_attempts {
                    return Decision::Finish(Condition::RetriesExhausted);
                }
                FUNCTION_ERROR_RETRY_BASE * event.attempts
            }
            AttemptResult::NotRun => doubling_backoff(event.throttles),
        };
        let delay = self.scale(delay);
        if age(event, now_ms) + delay > self.scale(settings.maximum_event_age) {
            return Decision::Finish(Condition::EventAgeExceeded);
        }
        Decision::RetryAfter(delay)
    }

    fn scale(&self, duration: Duration) -> Duration {
        duration.mul_f64(self.time_scale)
    }
}

fn age(event: &QueuedInvocation, now_ms: u64) -> Duration {
    Duration::from_millis(now_ms.saturating_sub(event.accepted_at_ms))
}

#[cfg(test)]
mod tests {
    use invoq_domain::asynchronous::{EventInvokeConfig, JsonText, QueuedInvocation};

    use super::*;

    const REAL_TIME: RetryPolicy = RetryPolicy { time_scale: 1.0 };
    const SECOND: u64 = 1_000;

    fn settings(retries: Option<u32>, max_age_seconds: Option<u32>) -> AsyncSettings {
        let config = EventInvokeConfig {
            maximum_retry_attempts: retries,
            maximum_event_age_seconds: max_age_seconds,
            ..EventInvokeConfig::default()
        };
        AsyncSettings::new(Some(config), None, Default::default())
    }

    fn event(attempts: u32, throttles: u32) -> QueuedInvocation {
        QueuedInvocation {
            request_id: "id".into(),
            function_name: "f".into(),
            qualifier: "$LATEST".into(),
            invoked_function_arn: "arn".into(),
            payload: JsonText::parse(b"{}").unwrap(),
            accepted_at_ms: 0,
            attempts,
            throttles,
            chain_depth: 0,
        }
    }

    #[test]
    fn function_errors_retry_after_one_then_two_minutes_by_default() {
        let settings = settings(None, None);
        assert_eq!(
            REAL_TIME.decide(
                &event(1, 0),
                AttemptResult::FunctionError,
                &settings,
                SECOND
            ),
            Decision::RetryAfter(Duration::from_secs(60))
        );
        assert_eq!(
            REAL_TIME.decide(
                &event(2, 0),
                AttemptResult::FunctionError,
                &settings,
                61 * SECOND
            ),
            Decision::RetryAfter(Duration::from_secs(120))
        );
        assert_eq!(
            REAL_TIME.decide(
                &event(3, 0),
                AttemptResult::FunctionError,
                &settings,
                182 * SECOND
            ),
            Decision::Finish(Condition::RetriesExhausted)
        );
    }

    #[test]
    fn maximum_retry_attempts_bounds_the_attempts() {
        for retries in 0..=2u32 {
            let settings = settings(Some(retries), None);
            let last = event(retries + 1, 0);
            assert_eq!(
                REAL_TIME.decide(&last, AttemptResult::FunctionError, &settings, SECOND),
                Decision::Finish(Condition::RetriesExhausted),
                "{retries} retries"
            );
            if retries > 0 {
                let before_last = event(retries, 0);
                assert!(matches!(
                    REAL_TIME.decide(
                        &before_last,
                        AttemptResult::FunctionError,
                        &settings,
                        SECOND
                    ),
                    Decision::RetryAfter(_)
                ));
            }
        }
    }

    #[test]
    fn age_look_ahead_matches_aws_for_60_and_90_seconds() {
        // MaximumEventAgeInSeconds 60: the first retry would start at 61 s: no retry.
        let sixty = settings(None, Some(60));
        assert_eq!(
            REAL_TIME.decide(&event(1, 0), AttemptResult::FunctionError, &sixty, SECOND),
            Decision::Finish(Condition::EventAgeExceeded)
        );
        // 90: one retry at about 60 s; the next would start at about 181 s.
        let ninety = settings(None, Some(90));
        assert_eq!(
            REAL_TIME.decide(&event(1, 0), AttemptResult::FunctionError, &ninety, SECOND),
            Decision::RetryAfter(Duration::from_secs(60))
        );
        assert_eq!(
            REAL_TIME.decide(
                &event(2, 0),
                AttemptResult::FunctionError,
                &ninety,
                61 * SECOND
            ),
            Decision::Finish(Condition::EventAgeExceeded)
        );
    }

    #[test]
    fn throttles_back_off_exponentially_to_five_minutes_without_using_retries() {
        let settings = settings(Some(0), None);
        let delays: Vec<Decision> = (1..=11)
            .map(|throttles| {
                REAL_TIME.decide(
                    &event(0, throttles),
                    AttemptResult::NotRun,
                    &settings,
                    SECOND,
                )
            })
            .collect();
        let seconds = [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300];
        for (decision, expected) in delays.iter().zip(seconds) {
            assert_eq!(
                *decision,
                Decision::RetryAfter(Duration::from_secs(expected))
            );
        }
        // They stop only at the age limit.
        assert_eq!(
            REAL_TIME.decide(
                &event(0, 40),
                AttemptResult::NotRun,
                &settings,
                21_500 * SECOND
            ),
            Decision::Finish(Condition::EventAgeExceeded)
        );
    }

    #[test]
    fn the_time_scale_shrinks_waits_and_limits_alike() {
        let fast = RetryPolicy { time_scale: 0.001 };
        let ninety = settings(None, Some(90));
        assert_eq!(
            fast.decide(&event(1, 0), AttemptResult::FunctionError, &ninety, 1),
            Decision::RetryAfter(Duration::from_millis(60))
        );
        assert_eq!(
            fast.decide(&event(2, 0), AttemptResult::FunctionError, &ninety, 61),
            Decision::Finish(Condition::EventAgeExceeded)
        );
        assert!(fast.expired(&event(0, 0), &ninety, 91));
        assert!(!fast.expired(&event(0, 0), &ninety, 89));
    }

    #[test]
    fn success_is_final_at_once() {
        let settings = settings(None, None);
        assert_eq!(
            REAL_TIME.decide(&event(3, 0), AttemptResult::Succeeded, &settings, 0),
            Decision::Finish(Condition::Success)
        );
    }
}
