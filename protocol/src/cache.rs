//! What a cache is, and what can be done with its entries.

use serde::{Deserialize, Serialize};

/// How a cache keeps its entries in a cluster (Infinispan's modes). A standalone node keeps
/// every cache local.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheMode {
    /// Each node has its own entries.
    Local,
    /// Every member that has the cache holds every entry.
    Replicated,
    /// Each entry lives on `owners` members, chosen by rendezvous hashing.
    #[default]
    Distributed,
    /// Each node has its own entries; a write on one removes the key from the others.
    Invalidated,
}

impl std::fmt::Display for CacheMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CacheMode::Local => "local",
            CacheMode::Replicated => "replicated",
            CacheMode::Distributed => "distributed",
            CacheMode::Invalidated => "invalidated",
        })
    }
}

/// A cache's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct CacheOptions {
    pub mode: CacheMode,
    /// How many members hold each entry of a distributed cache; 2 by default.
    pub owners: u32,
    /// Whether a write returns only once every owner has it; true by default.
    pub sync: bool,
    /// The default expiry of its entries.
    pub expiry: Expiry,
    /// Whether the node keeps the entries in its data directory, across restarts.
    pub persist: bool,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            mode: CacheMode::default(),
            owners: 2,
            sync: true,
            expiry: Expiry::default(),
            persist: false,
        }
    }
}

/// When an entry expires: `ttl-ms` after it was written, or `idle-ms` after it was last read
/// or written. None: never.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct Expiry {
    pub ttl_ms: Option<u64>,
    pub idle_ms: Option<u64>,
}

/// How `open-cache` treats a cache that exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Open {
    /// Makes a new cache; refused if one of that name exists in the cluster.
    Create,
    /// Uses the existing cache; none if there is none.
    Lookup,
    /// Uses the existing cache, or makes it.
    LookupOrCreate,
}

/// An operation on a cache's entries. Keys are strings; values are the frame's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum CacheOp {
    /// The value of `key`, as the node the app runs on holds it: it may not have the newest
    /// write yet, or (on the primary's node, or right after a handover) show one that is then
    /// not kept.
    Get { key: String },
    /// The value of `key` as the cache's primary holds it: every write that returned before
    /// this was asked is seen (a linearizable read).
    GetLatest { key: String },
    /// Sets `key` to the body; answers the previous value.
    Put {
        key: String,
        #[serde(default)]
        expiry: Option<Expiry>,
    },
    /// Sets `key` to the body if it has no value; answers the value it has otherwise.
    PutIfAbsent {
        key: String,
        #[serde(default)]
        expiry: Option<Expiry>,
    },
    /// Sets `key` to the new value if it has the expected one (compare and swap). The body is
    /// the expected value's `expected-len` bytes, then the new value. Answers the value before.
    Replace {
        key: String,
        expected_len: u64,
        #[serde(default)]
        expiry: Option<Expiry>,
    },
    /// Removes `key`; answers the value it had.
    Remove { key: String },
    /// Removes every entry.
    Clear {},
}

impl CacheOp {
    /// The key the operation is on (none for `clear`).
    pub fn key(&self) -> Option<&str> {
        match self {
            CacheOp::Get { key }
            | CacheOp::GetLatest { key }
            | CacheOp::Put { key, .. }
            | CacheOp::PutIfAbsent { key, .. }
            | CacheOp::Replace { key, .. }
            | CacheOp::Remove { key } => Some(key),
            CacheOp::Clear {} => None,
        }
    }

    /// The operation's name, as on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            CacheOp::Get { .. } => "get",
            CacheOp::GetLatest { .. } => "get-latest",
            CacheOp::Put { .. } => "put",
            CacheOp::PutIfAbsent { .. } => "put-if-absent",
            CacheOp::Replace { .. } => "replace",
            CacheOp::Remove { .. } => "remove",
            CacheOp::Clear {} => "clear",
        }
    }
}

/// What an operation did: whether the key had a value (the body, when `found`), and whether
/// the operation changed the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CacheOutcome {
    pub found: bool,
    pub applied: bool,
}

#[cfg(test)]
mod tests {
    use super::CacheOp;

    #[test]
    fn an_operations_kind_is_its_name_on_the_wire() {
        let key = || "k".to_string();
        let ops = [
            CacheOp::Get { key: key() },
            CacheOp::GetLatest { key: key() },
            CacheOp::Put {
                key: key(),
                expiry: None,
            },
            CacheOp::PutIfAbsent {
                key: key(),
                expiry: None,
            },
            CacheOp::Replace {
                key: key(),
                expected_len: 0,
                expiry: None,
            },
            CacheOp::Remove { key: key() },
            CacheOp::Clear {},
        ];
        for op in ops {
            let wire = serde_json::to_value(&op).unwrap();
            assert_eq!(wire["kind"], op.kind());
        }
    }
}
