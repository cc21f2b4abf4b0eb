//! A node's load factor, as mod_cluster's dynamic load provider gave it: how much room the node
//! has, 1 (none) to 100 (all), from how busy its processors are and how many web requests it
//! is serving. Balancers send new sessions where there is the most room.

/// Web requests in flight at which a node counts as fully busy.
const BUSY_REQUESTS: f64 = 100.0;

/// The load factor now, with `in_flight` web requests being served.
pub fn factor(in_flight: usize) -> i32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let cpu = load_average().map_or(0.0, |load| load / cpus);
    let requests = in_flight as f64 / BUSY_REQUESTS;
    from_busyness(&[cpu, requests])
}

/// `100 - load`, load being the mean busyness (0 to 1 each) in percent, clamped to 0-99.
fn from_busyness(busyness: &[f64]) -> i32 {
    let mean = busyness.iter().sum::<f64>() / busyness.len().max(1) as f64;
    let load = (mean * 100.0).round().clamp(0.0, 99.0) as i32;
    100 - load
}

/// The one-minute load average, where the system tells it.
fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_node_has_all_the_room_and_a_busy_one_almost_none() {
        assert_eq!(from_busyness(&[0.0, 0.0]), 100);
        assert_eq!(from_busyness(&[0.5, 0.5]), 50);
        assert_eq!(from_busyness(&[3.0, 2.0]), 1);
    }
}
