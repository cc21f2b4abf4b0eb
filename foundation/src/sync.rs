//! The one way the node takes a `std` mutex: a panic while one was held leaves data that is
//! still consistent for our uses (every critical section is a few plain assignments), so a
//! poisoned lock is taken as it is rather than spreading the panic to every later user.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, whether or not a panic poisoned it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
