//! What rabbitload and natsload share: their settings from the environment, the time stamp each
//! message carries in its first 16 bytes, and the report the benchmarks read, in loadgen's
//! words ("consumed N messages in S s: R msg/s; publish-to-handler latency p50 A ms, p99 B ms").

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The size of every message's body.
pub const PAYLOAD: usize = 1024;

/// The number in the environment variable `name`, or `default`.
pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// A message body stamped with the time now.
pub fn stamped_body() -> Vec<u8> {
    let mut body = vec![0u8; PAYLOAD];
    body[..16].copy_from_slice(&now_nanos().to_be_bytes());
    body
}

/// When the message with `body` was published, and now: what [`report`] takes.
pub fn handled(body: &[u8]) -> (u128, u128) {
    let sent = body
        .get(..16)
        .and_then(|stamp| stamp.try_into().ok())
        .map_or(0, u128::from_be_bytes);
    (sent, now_nanos())
}

/// Prints, after `broker: `, the throughput from the first publish to the last handled
/// message, and the publish-to-handler latency's p50 and p99, of `handled` ([`handled`]'s).
pub fn report(broker: &str, handled: &[(u128, u128)]) {
    let first_sent = handled.iter().map(|(sent, _)| *sent).min().unwrap_or(0);
    let last = handled.iter().map(|(_, at)| *at).max().unwrap_or(0);
    let seconds = Duration::from_nanos(last.saturating_sub(first_sent) as u64).as_secs_f64();
    let mut latencies: Vec<u128> = handled
        .iter()
        .map(|(sent, at)| at.saturating_sub(*sent))
        .collect();
    latencies.sort();
    let percentile = |p: f64| {
        let index = (latencies.len().saturating_sub(1) as f64 * p) as usize;
        latencies
            .get(index)
            .map_or(0.0, |nanos| *nanos as f64 / 1e6)
    };
    println!(
        "{broker}: consumed {} messages in {seconds:.2} s: {:.0} msg/s; publish-to-handler latency p50 {:.2} ms, p99 {:.2} ms",
        handled.len(),
        handled.len() as f64 / seconds,
        percentile(0.50),
        percentile(0.99)
    );
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos())
}
