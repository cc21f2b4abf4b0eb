//! Which properties hold secrets: their values are never shown, whoever shows them (the node's
//! management API and logs, the CLI's `Starting Immutant:` line).

/// What a secret's value is shown as.
pub const MASK: &str = "********";

/// Words that make a property's name a secret's.
const SECRET_WORDS: [&str; 5] = ["password", "secret", "token", "key", "credential"];

/// Whether the property `name` holds a secret: its name has one of the words above in it, in
/// any case.
pub fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|word| name.contains(word))
}

/// `value` as it may be shown for the property `name`.
pub fn shown<'a>(name: &str, value: &'a str) -> &'a str {
    match is_secret(name) {
        true => MASK,
        false => value,
    }
}

/// A command-line argument as it may be shown: `-Dname=value` with its value masked when
/// `name` is a secret's.
pub fn shown_arg(arg: &str) -> std::borrow::Cow<'_, str> {
    match arg.strip_prefix("-D").and_then(|rest| rest.split_once('=')) {
        Some((name, _)) if is_secret(name) => format!("-D{name}={MASK}").into(),
        _ => arg.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_names_are_masked() {
        assert!(is_secret("immutant.cluster.secret"));
        assert!(is_secret("app.db.Password"));
        assert!(is_secret("api.key"));
        assert!(!is_secret("immutant.cluster.name"));
        assert_eq!(shown("app.db.password", "hunter2"), MASK);
        assert_eq!(shown("app.db.host", "db"), "db");
        assert_eq!(
            shown_arg("-Dimmutant.cluster.secret=abc"),
            "-Dimmutant.cluster.secret=********"
        );
        assert_eq!(shown_arg("--clustered"), "--clustered");
    }
}
