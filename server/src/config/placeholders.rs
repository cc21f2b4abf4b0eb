//! `${property}`, `${property:default}` and `${env.NAME}` in config values, resolved the way
//! JBoss resolved expressions in `standalone.xml`.

use std::collections::BTreeSet;

use super::{ConfigError, Properties};

/// Resolves placeholders against a node's properties, remembering which properties it read.
pub struct Resolver<'a> {
    properties: &'a Properties,
    file: String,
    /// Every property name a placeholder asked for.
    pub referenced: BTreeSet<String>,
}

impl<'a> Resolver<'a> {
    /// A resolver for the config file named `file` (used in errors).
    pub fn new(properties: &'a Properties, file: &str) -> Self {
        Resolver {
            properties,
            file: file.to_string(),
            referenced: BTreeSet::new(),
        }
    }

    /// Resolves every placeholder in every string of a TOML document. A string that is one
    /// placeholder and nothing else takes the type its value reads as, so that
    /// `port = "${jboss.http.port}"` is a number.
    pub fn resolve_document(&mut self, value: &mut toml::Value) -> Result<(), ConfigError> {
        match value {
            toml::Value::String(text) => {
                let whole = is_one_placeholder(text);
                let resolved = self.resolve(text)?;
                *value = match (whole, resolved.parse::<i64>(), resolved.parse::<bool>()) {
                    (true, Ok(number), _) => toml::Value::Integer(number),
                    (true, _, Ok(flag)) => toml::Value::Boolean(flag),
                    _ => toml::Value::String(resolved),
                };
            }
            toml::Value::Array(items) => {
                for item in items {
                    self.resolve_document(item)?;
                }
            }
            toml::Value::Table(table) => {
                for (_, item) in table.iter_mut() {
                    self.resolve_document(item)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Resolves the placeholders in one piece of text.
    pub fn resolve(&mut self, text: &str) -> Result<String, ConfigError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| ConfigError::UnterminatedPlaceholder {
                    file: self.file.clone(),
                    text: text.to_string(),
                })?;
            out.push_str(&self.lookup(&after[..end])?);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn lookup(&mut self, expression: &str) -> Result<String, ConfigError> {
        let (name, default) = match expression.split_once(':') {
            Some((name, default)) => (name, Some(default)),
            None => (expression, None),
        };
        let value = match name.strip_prefix("env.") {
            Some(variable) => std::env::var(variable).ok(),
            None => {
                self.referenced.insert(name.to_string());
                self.properties.get(name)
            }
        };
        value
            .or_else(|| default.map(str::to_string))
            .ok_or_else(|| ConfigError::UnresolvedProperty {
                file: self.file.clone(),
                name: name.to_string(),
            })
    }
}

fn is_one_placeholder(text: &str) -> bool {
    text.starts_with("${") && text.ends_with('}') && text.matches("${").count() == 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn properties() -> Properties {
        Properties::new(
            [("app.greeting".to_string(), "hello world".to_string())],
            PathBuf::from("/opt/imm"),
        )
        .unwrap()
    }

    #[test]
    fn resolves_given_known_default_and_inline_default() {
        let properties = properties();
        let mut resolver = Resolver::new(&properties, "test.toml");
        assert_eq!(
            resolver.resolve("say ${app.greeting}!").unwrap(),
            "say hello world!"
        );
        assert_eq!(resolver.resolve("${jboss.http.port}").unwrap(), "8080");
        assert_eq!(resolver.resolve("${my.own:7}-${other:x}").unwrap(), "7-x");
        assert!(resolver.referenced.contains("my.own"));
    }

    #[test]
    fn an_unset_property_without_default_is_an_error_naming_it() {
        let properties = properties();
        let error = Resolver::new(&properties, "test.toml")
            .resolve("${my.own}")
            .unwrap_err();
        assert!(error.to_string().contains("my.own"), "{error}");
        let error = Resolver::new(&properties, "test.toml")
            .resolve("${oops")
            .unwrap_err();
        assert!(error.to_string().contains("${oops"), "{error}");
    }

    #[test]
    fn a_lone_placeholder_takes_the_type_of_its_value() {
        let properties = properties();
        let mut document: toml::Value =
            toml::from_str("a = \"${jboss.http.port}\"\nb = \"port ${jboss.http.port}\"").unwrap();
        Resolver::new(&properties, "test.toml")
            .resolve_document(&mut document)
            .unwrap();
        assert_eq!(document["a"], toml::Value::Integer(8080));
        assert_eq!(document["b"], toml::Value::String("port 8080".into()));
    }
}
