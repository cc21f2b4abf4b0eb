//! The node's two clocks: wall-clock time in Unix milliseconds ([`now_ms`]), which members
//! compare (a node's generation, message expiry, cache entry expiry), and the host's boot clock
//! ([`monotonic_ns`]), which never goes back and counts through pauses, for leases and
//! deadlines that must not stretch.

pub use immutant_protocol::clock::monotonic_ns;

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}
