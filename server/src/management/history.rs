//! Each queue's recent past, sampled every second: its depth over the last five minutes (the
//! console draws it) and its rates in and out over the last ten seconds (`status` shows them).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use immutant_contracts::status::Rates;

use crate::engine::Messaging;
use crate::vocabulary::messaging::QueueStats;
use immutant_foundation::clock::now_ms;
use immutant_foundation::shutdown::Shutdown;
use immutant_foundation::sync::lock;

/// How many samples are kept for a queue: five minutes' worth.
const KEPT: usize = 300;
/// How many samples back rates are measured over.
const RATE_SPAN: usize = 10;

/// One second of a queue.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at_ms: u64,
    depth: u64,
    published: u64,
    delivered: u64,
}

/// The samples of every queue of the node.
#[derive(Debug, Default)]
pub struct QueueHistory {
    queues: Mutex<BTreeMap<String, VecDeque<Sample>>>,
}

impl QueueHistory {
    /// Samples `broker`'s queues every second until `shutdown`.
    pub fn start(broker: Messaging, shutdown: Shutdown) -> Arc<QueueHistory> {
        let history = Arc::new(QueueHistory::default());
        let sampler = history.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = every.tick() => sampler.record(&broker.stats(), now_ms()),
                    _ = shutdown.cancelled() => return,
                }
            }
        });
        history
    }

    /// Adds a sample of each queue in `stats`, taken at `at_ms`; forgets queues no longer there.
    fn record(&self, stats: &[QueueStats], at_ms: u64) {
        let mut queues = lock(&self.queues);
        let present: std::collections::BTreeSet<&str> =
            stats.iter().map(|queue| queue.name.as_str()).collect();
        queues.retain(|name, _| present.contains(name.as_str()));
        for queue in stats {
            let samples = queues.entry(queue.name.clone()).or_default();
            if samples.len() == KEPT {
                samples.pop_front();
            }
            samples.push_back(Sample {
                at_ms,
                depth: queue.depth,
                published: queue.published,
                delivered: queue.delivered,
            });
        }
    }

    /// The queue's rates over its last ten seconds of samples (zero until it has two).
    pub fn rates(&self, queue: &str) -> Rates {
        let queues = lock(&self.queues);
        let Some(samples) = queues.get(queue) else {
            return Rates::default();
        };
        let (Some(last), Some(first)) = (
            samples.back(),
            samples.iter().rev().nth(RATE_SPAN).or(samples.front()),
        ) else {
            return Rates::default();
        };
        let seconds = last.at_ms.saturating_sub(first.at_ms) as f64 / 1000.0;
        if seconds <= 0.0 {
            return Rates::default();
        }
        Rates {
            rate_in: last.published.saturating_sub(first.published) as f64 / seconds,
            rate_out: last.delivered.saturating_sub(first.delivered) as f64 / seconds,
        }
    }

    /// The queue's depth at each sample kept, oldest first, as `[unix ms, depth]`.
    pub fn depths(&self, queue: &str) -> Vec<[u64; 2]> {
        lock(&self.queues)
            .get(queue)
            .map_or_else(Vec::new, |samples| {
                samples
                    .iter()
                    .map(|sample| [sample.at_ms, sample.depth])
                    .collect()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(depth: u64, published: u64, delivered: u64) -> QueueStats {
        QueueStats {
            name: "/queue/work".to_string(),
            kind: "queue".to_string(),
            depth,
            in_flight: 0,
            consumers: 1,
            published,
            delivered,
            redelivered: 0,
            dead_lettered: 0,
            expired: 0,
        }
    }

    #[test]
    fn rates_are_measured_over_the_last_ten_seconds() {
        let history = QueueHistory::default();
        assert_eq!(history.rates("/queue/work"), Rates::default());
        for second in 0..20u64 {
            // 100 in and 50 out a second for the first ten seconds, then 10 in and 20 out.
            let (published, delivered) = match second {
                0..10 => (second * 100, second * 50),
                _ => (900 + (second - 9) * 10, 450 + (second - 9) * 20),
            };
            history.record(&[stats(5, published, delivered)], second * 1000);
        }
        assert_eq!(
            history.rates("/queue/work"),
            Rates {
                rate_in: 10.0,
                rate_out: 20.0
            }
        );
        assert_eq!(history.depths("/queue/work").len(), 20);
        assert_eq!(history.depths("/queue/work")[0], [0, 5]);
    }

    #[test]
    fn it_keeps_five_minutes_and_forgets_queues_that_went() {
        let history = QueueHistory::default();
        for second in 0..400u64 {
            history.record(&[stats(second, 0, 0)], second * 1000);
        }
        let depths = history.depths("/queue/work");
        assert_eq!(depths.len(), KEPT);
        assert_eq!(depths[0], [100_000, 100]);
        history.record(&[], 400_000);
        assert!(history.depths("/queue/work").is_empty());
    }
}
