//! Exponential backoff with jitter, for retries that peers tend to start together: sidecars that
//! lost NATS at once, clients whose sidecar restarted.

use std::time::Duration;

pub struct Backoff {
    first: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            step: first,
        }
    }

    /// The next wait: the current step plus up to a quarter more, drawn afresh each time so that
    /// peers do not come back in step; the step doubles up to the maximum.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.step + self.step.mul_f64(random_fraction() / 4.0);
        self.step = (self.step * 2).min(self.max);
        wait
    }

    /// Starts again from the first step, after a success.
    pub fn reset(&mut self) {
        self.step = self.first;
    }
}

/// A number in [0, 1), different on each call (the standard library's per-instance random hash
/// keys), so no random-number crate is needed for jitter.
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_maximum_with_at_most_a_quarter_of_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let steps = [100, 200, 350, 350];
        for step in steps {
            let wait = backoff.next_wait().as_secs_f64() * 1000.0;
            assert!(
                wait >= step as f64 && wait <= step as f64 * 1.25,
                "{wait} for {step}"
            );
        }
        backoff.reset();
        assert!(backoff.next_wait() < Duration::from_millis(126));
    }
}
