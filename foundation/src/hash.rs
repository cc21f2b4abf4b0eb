//! A hash every member of a cluster computes alike, for what members must agree on without
//! asking each other (which members own a cache key, a node's tag in versions and epochs).
//! `std`'s `DefaultHasher` may change its algorithm between Rust releases, so two nodes built
//! by different toolchains could disagree; this one is fixed: XXH3, 64 bits, seed 0, over each
//! part as its length (8 bytes, little-endian) then its bytes, so that no two lists of parts
//! read alike.

use xxhash_rust::xxh3::Xxh3;

/// The fixed hash of `parts`, in order.
pub fn fixed_hash(parts: &[&str]) -> u64 {
    let mut hasher = Xxh3::new();
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.digest()
}

#[cfg(test)]
mod tests {
    use super::fixed_hash;

    #[test]
    fn the_hash_is_xxh3_of_each_part_after_its_length() {
        // XXH3-64 of no input, as its specification's test vectors give it.
        assert_eq!(fixed_hash(&[]), 0x2d06_8005_38d3_94c2);
        assert_eq!(
            fixed_hash(&["one"]),
            xxhash_rust::xxh3::xxh3_64(b"\x03\0\0\0\0\0\0\0one")
        );
    }

    #[test]
    fn known_outputs_never_change() {
        // Pinned: a change here would split a cluster of mixed builds on who owns what.
        assert_eq!(fixed_hash(&["one"]), PINNED_ONE);
        assert_eq!(fixed_hash(&["key", "node-a"]), PINNED_KEY_NODE_A);
    }

    #[test]
    fn parts_do_not_run_into_each_other() {
        assert_ne!(fixed_hash(&["ab", "c"]), fixed_hash(&["a", "bc"]));
    }

    const PINNED_ONE: u64 = 0x2ab0bb3e860a2035;
    const PINNED_KEY_NODE_A: u64 = 0xf9f886de499aa136;
}
