//! `install`: puts a server under `<base>/releases/<version>` and links `current` to it. The
//! server is built from this CLI's source tree, or taken prebuilt from a path or an http(s) URL.

mod download;
pub mod release;
mod secret;
mod source;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::list;
use crate::locations::Locations;
use release::{Artifact, InstallRecord};
pub use source::SourceTree;

/// What to install, and where.
#[derive(Debug, Clone, Default)]
pub struct InstallRequest {
    /// The version asked for; it must be the one the source gives.
    pub version: Option<String>,
    /// Install here instead of `<base>/releases/<version>`; such an install is not linked.
    pub dir: Option<PathBuf>,
    /// A prebuilt binary or `.tar.gz`, by path or http(s) URL; `None` builds from source.
    pub from: Option<String>,
    /// Reinstall a version that is already there.
    pub force: bool,
}

/// Makes sure the home has a server: when it has none, installs one built from this CLI's
/// source tree, and says so. `run`, `new` and `deploy` need one.
pub fn ensure_installed(locations: &Locations) -> Result<()> {
    if locations.server().is_file() {
        return Ok(());
    }
    if let Some(variable) = locations.home_from {
        bail!(
            "{variable} is {}, which has no {}; point it at an install or unset it",
            locations.home.display(),
            crate::locations::SERVER_BINARY
        );
    }
    eprintln!(
        "No Immutant installed, installing one built from {}",
        SourceTree::of_this_cli().root.display()
    );
    install(locations, &InstallRequest::default())?;
    Ok(())
}

/// Installs a server as `request` says, and returns its folder.
pub fn install(locations: &Locations, request: &InstallRequest) -> Result<PathBuf> {
    let scratch = tempfile::tempdir().context("cannot create a temporary folder")?;
    let artifact = match &request.from {
        None => {
            let tree = SourceTree::of_this_cli();
            let plan = tree.plan()?;
            check_version(
                request,
                &plan.version,
                &format!("the source tree {}", tree.root.display()),
            )?;
            let dir = install_dir(locations, request, &plan.version);
            if release::is_installed(&dir) && !request.force {
                return already_installed(locations, &plan.version, &dir);
            }
            Artifact {
                binary: tree.build_server(&plan)?,
                configs: None,
                record: InstallRecord {
                    version: plan.version,
                    from: format!("source {}", tree.root.display()),
                },
            }
        }
        Some(from) => fetch(from, scratch.path())?,
    };
    let version = &artifact.record.version;
    if request.from.is_some() {
        check_version(
            request,
            version,
            request.from.as_deref().unwrap_or_default(),
        )?;
    }
    let dir = install_dir(locations, request, version);
    if release::is_installed(&dir) && !request.force {
        return already_installed(locations, version, &dir);
    }
    release::stage(&artifact, &dir)?;
    println!("Installed Immutant {version} to {}", dir.display());
    link_if_managed(locations, &dir)?;
    list::print_installs(locations)?;
    Ok(dir)
}

/// Gets a prebuilt server from a path or URL into `scratch`.
fn fetch(from: &str, scratch: &Path) -> Result<Artifact> {
    let is_url = from.starts_with("http://") || from.starts_with("https://");
    let file = if is_url {
        download::download(from, scratch)?
    } else {
        let path = PathBuf::from(from);
        if !path.is_file() {
            bail!(
                "{from} is not a file; give --from the path or http(s) URL of an immutant-server binary or .tar.gz release"
            );
        }
        download::verify_local(&path)?;
        path
    };
    let (binary, configs) = if download::is_tarball(from) {
        let root = download::unpack(&file, &scratch.join("unpacked"))?;
        let configs = Some(root.join("config")).filter(|dir| dir.is_dir());
        (root.join(crate::locations::SERVER_BINARY), configs)
    } else {
        if is_url {
            release::set_executable(&file)?;
        }
        (file, None)
    };
    let version = release::server_version(&binary)?;
    Ok(Artifact {
        binary,
        configs,
        record: InstallRecord {
            version,
            from: from.to_string(),
        },
    })
}

fn check_version(request: &InstallRequest, version: &str, source: &str) -> Result<()> {
    match &request.version {
        Some(asked) if asked != version => bail!(
            "{source} gives Immutant {version}, not {asked}; to install {asked}, give --from the path or URL of a {asked} server"
        ),
        _ => Ok(()),
    }
}

fn install_dir(locations: &Locations, request: &InstallRequest, version: &str) -> PathBuf {
    match &request.dir {
        Some(dir) => std::path::absolute(dir).unwrap_or_else(|_| dir.clone()),
        None => locations.releases().join(version),
    }
}

fn already_installed(locations: &Locations, version: &str, dir: &Path) -> Result<PathBuf> {
    println!(
        "Version {version} already installed to {}, not installing (use --force to reinstall)",
        dir.display()
    );
    link_if_managed(locations, dir)?;
    Ok(dir.to_path_buf())
}

fn link_if_managed(locations: &Locations, dir: &Path) -> Result<()> {
    if locations.is_managed(dir) {
        release::link_current(&locations.current(), dir)
    } else {
        println!(
            "{} is unmanaged, not linking {}",
            dir.display(),
            locations.current().display()
        );
        Ok(())
    }
}
