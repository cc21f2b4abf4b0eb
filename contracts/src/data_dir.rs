//! Files in a node's data dir that the CLI reads: what the node writes there for it.

/// The secret a change to the node must carry (readable by the node's user alone).
pub const TOKEN_FILE: &str = "management.token";
/// The certificate the node's management API serves beyond loopback, for the CLI to trust.
pub const PIN_FILE: &str = "management.pin";
