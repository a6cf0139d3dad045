//! Packet-up pacing as Xray's upload loop does it: before each POST, sleep a draw of
//! `scMinPostsIntervalMs` minus the time since the previous POST began, and only when the
//! range's `from` is above 0 (`"0-50"` means no pacing at all, as in Go).

use crate::xhttp::range::Range;
use rand::Rng;
use std::time::Duration;

/// How long to wait before the next POST. `since_last` is the time since the previous POST
/// began (`None` for the first, which never waits).
pub fn pause_before_post<R: Rng + ?Sized>(
    interval: Range,
    since_last: Option<Duration>,
    rng: &mut R,
) -> Duration {
    if interval.from <= 0 {
        return Duration::ZERO;
    }
    let Some(since) = since_last else {
        return Duration::ZERO;
    };
    let gap = Duration::from_millis(interval.draw(rng).max(0) as u64);
    gap.saturating_sub(since)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_only_when_from_is_positive() {
        let mut rng = rand::rng();
        let ms = Duration::from_millis;
        let r = Range::fixed(30);
        assert_eq!(pause_before_post(r, None, &mut rng), Duration::ZERO);
        assert_eq!(pause_before_post(r, Some(ms(10)), &mut rng), ms(20));
        assert_eq!(pause_before_post(r, Some(ms(45)), &mut rng), Duration::ZERO);
        // from = 0: Go does not sleep, whatever `to` is.
        for from in [0, -5] {
            let r = Range::new(from, 50);
            for _ in 0..50 {
                assert_eq!(pause_before_post(r, Some(ms(0)), &mut rng), Duration::ZERO);
            }
        }
        let r = Range::new(10, 20);
        for _ in 0..50 {
            let w = pause_before_post(r, Some(ms(0)), &mut rng);
            assert!(w >= ms(10) && w < ms(20), "{w:?}");
        }
    }
}
