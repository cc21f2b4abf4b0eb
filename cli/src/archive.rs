//! `archive`: packs an app into `<target dir>/<name>.ima`, a file that deploys anywhere without
//! the project: a `.tar.gz` holding `descriptor.toml` (an [`ArchivedDescriptor`]) and
//! `bin/<name>`, the app built in release mode. Also unpacks one, for `deploy --archive`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use crate::descriptor::{self, ArchivedDescriptor};
use crate::project::{Overrides, Project};

/// An archive's file extension.
pub const EXTENSION: &str = "ima";

/// The descriptor's path inside an archive.
const DESCRIPTOR: &str = "descriptor.toml";

/// Builds the project in `path` and packs it into `<target dir>/<name>.ima`; returns its path.
pub fn archive(path: &Path, overrides: &Overrides) -> Result<PathBuf> {
    let project = Project::read(path)?;
    let app = project.app(overrides)?;
    let binary = project
        .build(&project.target_dir)
        .context("no archive was made")?;
    std::fs::create_dir_all(&project.target_dir)
        .with_context(|| format!("cannot create {}", project.target_dir.display()))?;
    let file = project.target_dir.join(format!("{}.{EXTENSION}", app.name));
    let temporary = tempfile::Builder::new()
        .prefix(&format!(".{}.{EXTENSION}.", app.name))
        .tempfile_in(&project.target_dir)
        .with_context(|| format!("cannot write in {}", project.target_dir.display()))?;
    pack(&app, &binary, temporary.as_file())
        .with_context(|| format!("cannot write {}", temporary.path().display()))?;
    temporary
        .persist(&file)
        .with_context(|| format!("cannot replace {}", file.display()))?;
    println!("Created {}", file.display());
    Ok(file)
}

/// Writes the archive of `app`, whose binary is `binary`, to `out`.
fn pack(app: &ArchivedDescriptor, binary: &Path, out: &std::fs::File) -> Result<()> {
    let descriptor = toml::to_string(app).context("cannot write the descriptor as TOML")?;
    let program =
        std::fs::read(binary).with_context(|| format!("cannot read {}", binary.display()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let mut tar = tar::Builder::new(GzEncoder::new(out, Compression::default()));
    for (path, content, mode) in [
        (DESCRIPTOR.to_string(), descriptor.as_bytes(), 0o644),
        (format!("bin/{}", app.name), program.as_slice(), 0o755),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(mode);
        header.set_mtime(now);
        tar.append_data(&mut header, path, content)?;
    }
    tar.into_inner()?.finish()?.sync_all()?;
    Ok(())
}

/// An archive unpacked into a temporary folder, removed when this is dropped.
#[derive(Debug)]
pub struct Unpacked {
    pub app: ArchivedDescriptor,
    /// The app's binary, in the temporary folder.
    pub binary: PathBuf,
    /// The archive's absolute path.
    pub root: PathBuf,
    _folder: tempfile::TempDir,
}

/// Unpacks the archive `file`.
pub fn unpack(file: &Path) -> Result<Unpacked> {
    let root = std::fs::canonicalize(file).with_context(|| {
        format!(
            "cannot open the archive {}; make one with `cargo immutant archive`",
            file.display()
        )
    })?;
    let not_an_archive = || {
        format!(
            "{} is not an Immutant archive (.{EXTENSION}); make one with `cargo immutant archive`",
            root.display()
        )
    };
    let folder = tempfile::Builder::new()
        .prefix("immutant-archive-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    let reader =
        std::fs::File::open(&root).with_context(|| format!("cannot open {}", root.display()))?;
    tar::Archive::new(GzDecoder::new(reader))
        .unpack(folder.path())
        .with_context(not_an_archive)?;
    let text = std::fs::read_to_string(folder.path().join(DESCRIPTOR))
        .with_context(|| format!("it has no {DESCRIPTOR}"))
        .with_context(not_an_archive)?;
    let app: ArchivedDescriptor = toml::from_str(&text)
        .with_context(|| format!("its {DESCRIPTOR} is not valid"))
        .with_context(not_an_archive)?;
    descriptor::check_name(&app.name).with_context(not_an_archive)?;
    let binary = folder.path().join("bin").join(&app.name);
    if !binary.is_file() {
        bail!("{}: it has no bin/{}", not_an_archive(), app.name);
    }
    Ok(Unpacked {
        app,
        binary,
        root,
        _folder: folder,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archive_unpacks_to_what_was_packed() {
        let folder = tempfile::tempdir().unwrap();
        let binary = folder.path().join("program");
        std::fs::write(&binary, b"#!/bin/sh\necho hello\n").unwrap();
        let mut settings = toml::Table::new();
        settings.insert("greeting".into(), "hi".into());
        let app = ArchivedDescriptor {
            name: "hello".into(),
            context_path: Some("/hi".into()),
            virtual_host: vec!["example.com".into()],
            settings,
        };
        let file = folder.path().join("hello.ima");
        pack(&app, &binary, &std::fs::File::create(&file).unwrap()).unwrap();

        let unpacked = unpack(&file).unwrap();
        assert_eq!(unpacked.app, app);
        assert_eq!(
            std::fs::read(&unpacked.binary).unwrap(),
            std::fs::read(&binary).unwrap()
        );
        assert_eq!(unpacked.root, std::fs::canonicalize(&file).unwrap());
    }

    #[test]
    fn a_file_that_is_no_archive_is_refused() {
        let folder = tempfile::tempdir().unwrap();
        let file = folder.path().join("hello.ima");
        std::fs::write(&file, "not a tarball").unwrap();
        let error = format!("{:#}", unpack(&file).unwrap_err());
        assert!(error.contains("is not an Immutant archive"), "{error}");
    }
}
