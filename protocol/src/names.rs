//! What may name the things that become file names: deployments (`deployments/<name>.toml`)
//! and nodes (`<home>/nodes/<name>.json`, data dirs). Both the node and the CLI check names
//! with these, so a name one accepts the other does too.

/// Whether `name` can name a deployment: ASCII letters, digits, `-` and `_`, at least one.
pub fn is_deployment_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Whether `name` can name a node: ASCII letters, digits, `-`, `_` and `.` (so that a host's
/// name will do), not starting with `.`, at most 64 characters.
pub fn is_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_leave_their_folder_are_refused() {
        assert!(is_deployment_name("my-app_2"));
        assert!(!is_deployment_name("../escape"));
        assert!(!is_deployment_name("a.b"));
        assert!(!is_deployment_name(""));
        assert!(is_node_name("host-1.example.com"));
        assert!(!is_node_name("../../escape"));
        assert!(!is_node_name(".."));
        assert!(!is_node_name("a/b"));
        assert!(!is_node_name(&"n".repeat(65)));
    }
}
