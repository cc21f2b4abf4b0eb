//! Names in NATS: everything of one cluster lives under a prefix made from the cluster's name,
//! and names the user gives (queues, apps, nodes) are made into NATS tokens, reversibly.

use super::Nats;

/// This cluster's prefix on every stream, bucket and subject: `IMM_<cluster>`.
pub(super) fn cluster_prefix(cluster_name: &str) -> String {
    format!("IMM_{}", token(cluster_name))
}

impl Nats {
    /// The name of a stream or bucket of this cluster: `IMM_<cluster>_<what>`.
    pub fn name(&self, what: &str) -> String {
        format!("{}_{what}", self.prefix)
    }

    /// A subject of this cluster: `IMM_<cluster>.<what>`.
    pub fn subject(&self, what: &str) -> String {
        format!("{}.{what}", self.prefix)
    }
}

/// `name` as a NATS token (a stream name, a subject token, a key): ASCII letters, digits and
/// `-` stay, every other byte becomes `_` and its two hex digits.
pub fn token(name: &str) -> String {
    let mut token = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            token.push(byte as char);
        } else {
            token.push_str(&format!("_{byte:02X}"));
        }
    }
    token
}

/// The name [`token`] made `token` of.
pub fn untoken(token: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(token.len());
    let mut rest = token.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'_' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_of_letters_digits_and_dashes_and_undone() {
        for name in ["/queue/msg", "example", "a_b.c d*>", "ünï-code", ""] {
            let made = token(name);
            assert!(
                made.bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'),
                "{made}"
            );
            assert_eq!(untoken(&made).as_deref(), Some(name));
        }
        assert_eq!(token("/queue/msg"), "_2Fqueue_2Fmsg");
        assert_eq!(untoken("_2"), None);
    }
}
