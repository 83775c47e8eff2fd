//! Retry delays, as IPA's tenacity policies compute them.

use std::time::Duration;

use rand::Rng;

/// Longest wait between lookups.
pub const LOOKUP_MAX: Duration = Duration::from_secs(60);

/// Random exponential backoff for lookup attempt `attempt` (1-based): uniform between `min`
/// and `min·2^(attempt-1)`, the upper bound capped at 60 s (and never below `min`).
pub fn lookup_delay(attempt: u32, min: Duration, rng: &mut impl Rng) -> Duration {
    let min_s = min.as_secs_f64();
    let cap = LOOKUP_MAX.as_secs_f64().max(min_s);
    let high = (min_s * 2f64.powi(attempt.saturating_sub(1).min(30) as i32)).clamp(min_s, cap);
    if high <= min_s {
        return min;
    }
    Duration::from_secs_f64(rng.gen_range(min_s..=high))
}

/// Extra pause after the n-th 409 (node locked) answer to a lookup: 5, 10, then 30 s.
pub fn conflict_pause(n: u32) -> Duration {
    Duration::from_secs(match n {
        0 => 0,
        1 => 5,
        2 => 10,
        _ => 30,
    })
}

/// Interval after a successful heartbeat: U(0.3, 0.6) × heartbeat_timeout, at least 5 s.
pub fn heartbeat_interval(timeout: Duration, rng: &mut impl Rng) -> Duration {
    let t = timeout.as_secs_f64() * rng.gen_range(0.3..=0.6);
    Duration::from_secs_f64(t.max(5.0))
}

/// Interval after a failed heartbeat: 5 × U(1, 2) seconds.
pub fn heartbeat_retry(rng: &mut impl Rng) -> Duration {
    Duration::from_secs_f64(5.0 * rng.gen_range(1.0..=2.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_backoff_bounds() {
        let mut rng = rand::thread_rng();
        let min = Duration::from_secs(1);
        for attempt in 1..40 {
            for _ in 0..200 {
                let d = lookup_delay(attempt, min, &mut rng);
                let high = (2f64.powi(attempt as i32 - 1)).clamp(1.0, 60.0);
                assert!(d >= min, "{attempt}: {d:?}");
                assert!(d.as_secs_f64() <= high + 1e-9, "{attempt}: {d:?} > {high}");
            }
        }
        assert_eq!(lookup_delay(1, min, &mut rng), min);
        // A lookup interval above the cap is honoured as the minimum.
        assert_eq!(
            lookup_delay(9, Duration::from_secs(90), &mut rng),
            Duration::from_secs(90)
        );
        // Reaches the 60 s cap eventually.
        assert!((0..1000).any(|_| lookup_delay(20, min, &mut rng) > Duration::from_secs(50)));
    }

    #[test]
    fn conflict_pauses() {
        let p: Vec<u64> = (1..6).map(|n| conflict_pause(n).as_secs()).collect();
        assert_eq!(p, vec![5, 10, 30, 30, 30]);
    }

    #[test]
    fn heartbeat_bounds() {
        let mut rng = rand::thread_rng();
        for _ in 0..1000 {
            let d = heartbeat_interval(Duration::from_secs(300), &mut rng).as_secs_f64();
            assert!((90.0..=180.0).contains(&d), "{d}");
            assert_eq!(
                heartbeat_interval(Duration::from_secs(4), &mut rng),
                Duration::from_secs(5)
            );
            let r = heartbeat_retry(&mut rng).as_secs_f64();
            assert!((5.0..=10.0).contains(&r), "{r}");
        }
    }
}
