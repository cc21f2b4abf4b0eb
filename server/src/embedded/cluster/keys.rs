//! The keys each member gossips about itself, and what their values mean.

/// The gossiped key of an app a member has deployed and running.
pub const APP_KEY_PREFIX: &str = "app:";
/// The gossiped key of a destination a member's apps consume from; its value is `durable` when a
/// durable subscriber wants it.
pub const INTEREST_KEY_PREFIX: &str = "interest:";
/// The gossiped key of a cache a member holds; its value is the cache's options, as JSON.
pub const CACHE_KEY_PREFIX: &str = "cache:";
/// The gossiped key of the fencing epoch a member took an app's singletons over with.
pub const EPOCH_KEY_PREFIX: &str = "epoch:";
/// The gossiped key a member sets as it leaves gracefully.
pub const LEAVING_KEY: &str = "leaving";
/// The gossiped key holding a member's management URL.
pub const MANAGEMENT_KEY: &str = "management";
