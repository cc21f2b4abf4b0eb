//! Locking shared state: the SDK's one poison-tolerant mutex helper.

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, even one a panicking thread held: the maps behind these stay consistent
/// (each change is one insert or remove), and a panic in one handler must not stop the app.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
