//! What an app may ask of caches, on either engine: the name a cache needs, why an operation
//! fails, and what the management API shows of a cache.

use immutant_protocol::CacheMode;

/// Why a cache operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("no cache named '{0}' is open on this node; open it first (App::cache)")]
    NotOpen(String),
    #[error(
        "a cache named '{name}' exists already ({mode}); use lookup_or_create to share it, or clear it to empty it"
    )]
    Exists { name: String, mode: CacheMode },
    #[error("{0}")]
    Invalid(String),
    #[error("the member {0} cannot be reached")]
    Unreachable(String),
    #[error(
        "cache '{cache}' did not answer in time for key '{key}' (the cluster or its storage may be changing), so the operation may or may not have been done; try again"
    )]
    Unavailable { cache: String, key: String },
    #[error(
        "cache '{cache}' takes no operations on this side of the cluster: it sees {members} members, fewer than the quorum of {quorum} (-Dimmutant.singleton.quorum); nothing was done, try again once the cluster is whole"
    )]
    NoQuorum {
        cache: String,
        members: usize,
        quorum: u32,
    },
    #[error(
        "{node} does not apply the writes to cache '{cache}' now (its primary is changing); try again"
    )]
    NotPrimary { cache: String, node: String },
    #[error("the cache storage failed: {0}")]
    Storage(String),
}

/// The longest name a cache may have, in bytes: a cache's name goes round the cluster in its
/// holders' gossip (and in its primary's lease), whose datagrams are small.
const MAX_NAME_BYTES: usize = 200;

/// The start of the names of the server's own caches.
const SERVER_PREFIX: &str = "immutant.";

/// Refuses an app `app` a cache of the server's (named `immutant.<what>/...`) unless it is one
/// of its own (`immutant.<what>/<app>`): a job's progress and an app's web sessions are the
/// app's alone.
pub fn check_reach(name: &str, app: &str) -> Result<(), CacheError> {
    let Some(rest) = name.strip_prefix(SERVER_PREFIX) else {
        return Ok(());
    };
    match rest.split_once('/') {
        Some((_, owner)) if owner == app => Ok(()),
        _ => Err(CacheError::Invalid(format!(
            "the cache '{name}' is the server's: an app may use only its own caches whose names start with `{SERVER_PREFIX}` (`{SERVER_PREFIX}<what>/{app}`); give yours another name"
        ))),
    }
}

/// Refuses a cache without a name, or with one too long.
pub fn check_name(name: &str) -> Result<(), CacheError> {
    if name.trim().is_empty() {
        return Err(CacheError::Invalid(
            "a cache needs a name; give it one, such as \"sessions\"".to_string(),
        ));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(CacheError::Invalid(format!(
            "a cache's name may be {MAX_NAME_BYTES} bytes long at most, and '{}…' is {}; give it a shorter one",
            name.chars().take(40).collect::<String>(),
            name.len()
        )));
    }
    Ok(())
}

/// What the management API shows of a cache: the contract's type (its mode named as
/// [`CacheMode`] displays it).
pub use immutant_contracts::status::CacheStats;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_reaches_its_own_server_caches_and_no_others() {
        assert!(check_reach("sessions", "shop").is_ok());
        assert!(check_reach("immutant.web.sessions/shop", "shop").is_ok());
        assert!(check_reach("immutant.jobs/shop", "shop").is_ok());
        for name in [
            "immutant.jobs/other",
            "immutant.web.sessions/shop2",
            "immutant.deployments",
            "immutant.jobs/shop/x",
        ] {
            let refused = check_reach(name, "shop").unwrap_err().to_string();
            assert!(refused.contains("is the server's"), "{name}: {refused}");
        }
    }
}
