//! Subscription usage windows (claude.ai logins; the CLI reports none for an API key): a
//! window past its warning threshold is logged once per session, and a window used up
//! pauses every item on the shared throttle until it resets, after which the item that hit
//! it is asked again.

use std::time::{Duration, Instant, SystemTime};

use std::collections::HashSet;

use super::Admission;
use crate::backend::{RateLimitInfo, WindowStatus};
use crate::error::utc_time;
use crate::{stats, UsageWindow};

/// Subscription usage windows the session has logged about.
#[derive(Default)]
pub(crate) struct UsageWindowsSeen {
    /// Windows whose warning was logged.
    warned: HashSet<UsageWindow>,
    /// The end of the usage-limit pause in force, if one was ever made.
    paused_until: Option<Instant>,
}

/// Waited past the reset the CLI gave: the two clocks may differ by a little, and a call
/// refused again costs nothing but another pause.
pub(crate) const RESET_MARGIN: Duration = Duration::from_secs(2);
/// The pause when the CLI gave no usable reset time: long enough not to hammer the API,
/// short enough that a window that has reset is not waited for long. The next refusal
/// usually brings a reset time.
pub(crate) const UNKNOWN_RESET_WAIT: Duration = Duration::from_secs(5 * 60);
/// No window is longer than a week: a reset further away is not believed.
const LONGEST_RESET: Duration = Duration::from_secs(8 * 24 * 3600);

impl Admission {
    /// A window's state as the CLI reported it: a warning is logged once per session and window.
    pub(super) fn note_window(&self, info: &RateLimitInfo) {
        if info.status != WindowStatus::Warning
            || !self.usage_windows.lock().warned.insert(info.window.clone())
        {
            return;
        }
        let percent = |share: f64| format!("{:.0}%", share * 100.0);
        let used = info.utilization.map_or_else(
            || "nearly used up".to_string(),
            |u| format!("{} used", percent(u)),
        );
        let threshold = info
            .surpassed_threshold
            .map(|t| format!(", past the {} warning threshold", percent(t)))
            .unwrap_or_default();
        let resets = match info
            .resets_at()
            .map(|at| (at, at.duration_since(SystemTime::now())))
        {
            Some((at, Ok(left))) => format!("; it resets at {} (in {})", utc_time(at), human(left)),
            _ => String::new(),
        };
        log::warn!(
            "the subscription's {} usage window is {used}{threshold}{resets}. When it is used up, \
         claude-rayon pauses every item until it resets",
            info.window
        );
    }

    /// A call was refused because `window` is used up. Pauses every item on the throttle until
    /// it resets (`resets_at` plus a margin, or a fixed wait when the CLI's time is missing or
    /// not believable) and returns true, or returns false when the reset is further away than
    /// the session waits (the item then fails with the error, which stops the run).
    pub(super) fn wait_for_reset(
        &self,
        window: &UsageWindow,
        resets_at: Option<SystemTime>,
    ) -> bool {
        let now = Instant::now();
        let left = resets_at.map(|at| at.duration_since(SystemTime::now()));
        let (wait, doubt) = match left {
            Some(Ok(left)) if left <= LONGEST_RESET => (left + RESET_MARGIN, None),
            Some(Ok(_)) => (
                UNKNOWN_RESET_WAIT,
                Some(format!(
                    "the CLI says it resets at {}, more than 8 days away, which no window is",
                    utc_time(resets_at.expect("matched Some"))
                )),
            ),
            Some(Err(_)) => (
                UNKNOWN_RESET_WAIT,
                Some(format!(
                "the CLI says it reset at {}, which has passed (is this machine's clock right?)",
                utc_time(resets_at.expect("matched Some"))
            )),
            ),
            None => (
                UNKNOWN_RESET_WAIT,
                Some("the CLI gave no reset time".to_string()),
            ),
        };
        if wait > self.settings.max_usage_limit_wait {
            log::debug!(
                "the subscription's {window} usage limit is reached and resets in {}, longer than \
             max_usage_limit_wait ({}): failing the run",
                human(wait),
                human(self.settings.max_usage_limit_wait)
            );
            return false;
        }
        let until = crate::clock::saturating_add(now, wait);
        let mut seen = self.usage_windows.lock();
        // Every item in flight is refused the same way: one pause, said and counted once.
        let new_pause = seen.paused_until.is_none_or(|end| end <= now);
        seen.paused_until = Some(seen.paused_until.map_or(until, |end| end.max(until)));
        drop(seen);
        if new_pause {
            stats::add(&self.counters.usage_limit_pauses, 1);
            let when = match (resets_at, &doubt) {
                (Some(at), None) => {
                    format!("until {} (in {})", utc_time(at + RESET_MARGIN), human(wait))
                }
                _ => format!("for {}", human(wait)),
            };
            let doubt = doubt.map(|d| format!(" ({d})")).unwrap_or_default();
            log::warn!(
                "the subscription's {window} usage limit is reached{doubt}; pausing every item \
             {when}, then asking again. SessionBuilder::max_usage_limit_wait sets how long to \
             wait; a cancel or close ends the wait"
            );
        } else {
            log::debug!("another item hit the {window} usage limit during its pause");
        }
        self.counters.usage_limit_clock.lock().pause(now, until);
        self.throttle.pause_until(until);
        true
    }
}

/// A duration as a person reads it: `2h 13m`, `4d 3h`, `45s`.
fn human(duration: Duration) -> String {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3_600,
        secs % 3_600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) if s > 0 => format!("{m}m {s}s"),
        (0, 0, _) => format!("{m}m"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_a_person_says_them() {
        let s = Duration::from_secs;
        assert_eq!(human(s(45)), "45s");
        assert_eq!(human(Duration::from_millis(1_200)), "2s");
        assert_eq!(human(s(300)), "5m");
        assert_eq!(human(s(302)), "5m 2s");
        assert_eq!(human(s(2 * 3600 + 13 * 60 + 5)), "2h 13m");
        assert_eq!(human(s(4 * 86_400 + 3 * 3600)), "4d 3h");
    }
}
