//! Time arithmetic every layer shares: the one place that says what "no limit" means.

use std::time::{Duration, Instant};

/// `at + wait`, or a moment centuries away when that would overflow (a `Duration::MAX`
/// setting means "no limit", not a panic).
pub(crate) fn saturating_add(at: Instant, wait: Duration) -> Instant {
    at.checked_add(wait)
        .unwrap_or_else(|| at + Duration::from_secs(100 * 365 * 24 * 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_limit_is_far_away_not_a_panic() {
        let now = Instant::now();
        assert_eq!(
            saturating_add(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert!(saturating_add(now, Duration::MAX) > now + Duration::from_secs(365 * 24 * 3600));
    }
}
