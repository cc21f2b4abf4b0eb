//! The neutral vocabulary both engines speak, so that neither imports the other and nothing
//! above them needs to know which runs: membership (the view and its members), messaging's
//! refusals and queue statistics, caches' errors and statistics, and the lease events of
//! singleton drivers, the app binaries members hand each other, and the questions they ask of
//! each other's management.

pub mod artifacts;
pub mod cache;
pub mod membership;
pub mod messaging;
pub mod questions;
pub mod singletons;
