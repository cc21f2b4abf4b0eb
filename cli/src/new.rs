//! `new`: scaffolds an app from a project template, as `lein immutant new` did. The templates,
//! the folders of `templates/` in the source tree, are built into the CLI.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use include_dir::{Dir, DirEntry, include_dir};

use crate::install::{self, release};
use crate::locations::Locations;

/// The templates, one folder each.
static TEMPLATES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../templates");

/// The template `new` uses unless told otherwise.
pub const DEFAULT_TEMPLATE: &str = "default";

/// A template file's name ends with this when the file must not be what it is in the source
/// tree (a `Cargo.toml` there would be a package of its own); it is written without it.
const TEMPLATE_SUFFIX: &str = ".template";

/// Names an app cannot have: Rust's keywords, and the crates an app links.
const RESERVED_NAMES: [&str; 54] = [
    "abstract",
    "as",
    "async",
    "await",
    "become",
    "box",
    "break",
    "const",
    "continue",
    "crate",
    "do",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "final",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "override",
    "priv",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "where",
    "while",
    "yield",
    "immutant",
    "immutant_protocol",
    "tokio",
];

/// Generates the project `name` in the current folder from `template`, its SDK dependency
/// pointing at the installed SDK sources (installing a server first if there is none). Returns
/// the project's folder.
pub fn new(locations: &Locations, name: &str, template: &str) -> Result<PathBuf> {
    check_crate_name(name)?;
    let files = find_template(template)?;
    let dir = std::path::absolute(name).with_context(|| format!("cannot resolve {name}"))?;
    if dir.symlink_metadata().is_ok() {
        bail!(
            "{} already exists; choose another name or remove it",
            dir.display()
        );
    }
    install::ensure_installed(locations)?;
    let sdk = release::sdk_sources(&locations.home);
    let sdk = std::fs::canonicalize(&sdk).with_context(|| {
        format!(
            "the Immutant install {} has no SDK sources ({}); reinstall it with `cargo immutant install --force`",
            locations.home.display(),
            sdk.display()
        )
    })?;
    println!("Generating a project called {name} based on the '{template}' template.");
    let parent = dir.parent().context("a project needs a parent folder")?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}-"))
        .tempdir_in(parent)
        .with_context(|| format!("cannot write in {}", parent.display()))?;
    render(files, name, &sdk, staging.path())?;
    std::fs::rename(staging.path(), &dir)
        .with_context(|| format!("cannot move the project into {}", dir.display()))?;
    Ok(dir)
}

/// Checks that `name` can name a crate, and so the app.
fn check_crate_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let well_formed = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !well_formed {
        bail!(
            "'{name}' is not a valid crate name: it must start with an ASCII letter and have only \
             ASCII letters, digits, - and _ (such as my-app)"
        );
    }
    if RESERVED_NAMES.contains(&name.replace('-', "_").as_str()) {
        bail!(
            "'{name}' cannot name an app: it is a Rust keyword or a crate the app links; choose another"
        );
    }
    Ok(())
}

/// The template called `name`.
fn find_template(name: &str) -> Result<&'static Dir<'static>> {
    if let Some(template) = TEMPLATES.dirs().find(|dir| dir.path() == Path::new(name)) {
        return Ok(template);
    }
    let mut names: Vec<String> = TEMPLATES
        .dirs()
        .map(|dir| dir.path().display().to_string())
        .collect();
    names.sort();
    bail!(
        "there is no template called '{name}'; the templates are: {}",
        names.join(", ")
    )
}

/// Writes the files of `template` into `dir`, with `{{name}}` replaced by `name` and
/// `{{sdk_path}}` by `sdk` in every text file, and the `.template` suffix dropped from names.
fn render(template: &Dir, name: &str, sdk: &Path, dir: &Path) -> Result<()> {
    for entry in template.entries() {
        match entry {
            DirEntry::Dir(folder) => render(folder, name, sdk, dir)?,
            DirEntry::File(file) => {
                // Paths inside the embedded tree start with the template's own folder.
                let relative = file
                    .path()
                    .iter()
                    .skip(1)
                    .collect::<PathBuf>()
                    .to_string_lossy()
                    .into_owned();
                let relative = relative.strip_suffix(TEMPLATE_SUFFIX).unwrap_or(&relative);
                let path = dir.join(relative);
                if let Some(folder) = path.parent() {
                    std::fs::create_dir_all(folder)
                        .with_context(|| format!("cannot create {}", folder.display()))?;
                }
                let content = match file.contents_utf8() {
                    Some(text) => text
                        .replace("{{name}}", name)
                        .replace("{{sdk_path}}", &sdk.to_string_lossy())
                        .into_bytes(),
                    None => file.contents().to_vec(),
                };
                std::fs::write(&path, content)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_template_renders_with_the_name_and_sdk_path() {
        let dir = tempfile::tempdir().unwrap();
        render(
            find_template(DEFAULT_TEMPLATE).unwrap(),
            "example",
            Path::new("/opt/immutant/sources/sdk"),
            dir.path(),
        )
        .unwrap();
        let manifest = std::fs::read_to_string(dir.path().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("name = \"example\""), "{manifest}");
        assert!(
            manifest.contains("immutant = { path = \"/opt/immutant/sources/sdk\" }"),
            "{manifest}"
        );
        let manifest: toml::Table = toml::from_str(&manifest).unwrap();
        assert!(manifest["package"]["metadata"]["immutant"].is_table());
        for file in ["src/main.rs", "README.md", ".gitignore"] {
            let text = std::fs::read_to_string(dir.path().join(file)).unwrap();
            assert!(
                !text.contains("{{"),
                "{file} has a placeholder left: {text}"
            );
        }
        assert!(!dir.path().join("Cargo.toml.template").exists());
    }

    #[test]
    fn crate_names_are_checked() {
        for good in ["example", "my-app", "my_app2"] {
            assert!(check_crate_name(good).is_ok(), "{good}");
        }
        for bad in ["9lives", "my app", "", "-x", "a/b", "é"] {
            let error = check_crate_name(bad).unwrap_err().to_string();
            assert!(error.contains("not a valid crate name"), "{error}");
        }
        for reserved in ["fn", "immutant", "tokio"] {
            let error = check_crate_name(reserved).unwrap_err().to_string();
            assert!(error.contains("cannot name an app"), "{error}");
        }
    }

    #[test]
    fn an_unknown_template_lists_the_templates() {
        let error = find_template("nope").unwrap_err().to_string();
        assert!(error.contains("the templates are: default"), "{error}");
    }
}
