//! The host's monotonic clock, as a number both processes of a node can read: a singleton
//! lease's deadline is sent from the node to its app as a reading of this clock, so that neither
//! the time the frame spends on its way nor a pause of either process can stretch it.

/// Nanoseconds on the host's CLOCK_BOOTTIME: the same clock in every process of the host,
/// never set back, counting through a stopped process's pause and through the host's (or its
/// VM's) suspension, which CLOCK_MONOTONIC does not.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_BOOTTIME exists on every Linux this
    // runs on, and the call cannot fail with a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::monotonic_ns;

    #[test]
    fn the_clock_moves_forward_with_time() {
        let before = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let after = monotonic_ns();
        assert!(after >= before + 20_000_000, "{before} -> {after}");
    }
}
