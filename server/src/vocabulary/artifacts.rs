//! App binaries as members hand them to each other, on either engine: which one
//! ([`ArtifactRef`]: its file name in `deployments/.artifacts/`, its SHA-256 and size), why one
//! cannot be had ([`ArtifactError`]), and how one arrives ([`Landing`]): into a partial file in
//! `deployments/.incoming/`, resumed where an earlier transfer stopped, and verified whole
//! before it takes its name there. A partial or altered file is never one the node runs.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// An app binary, as the cluster's record of a deployment names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ArtifactRef {
    /// Its name in `.artifacts/` (`<app>-<first 16 hex digits of its SHA-256>`).
    pub file: String,
    /// Its SHA-256, 64 lowercase hex digits.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

impl ArtifactRef {
    /// Describes the file at `path` (reading it whole, to hash it).
    pub fn of_file(path: &Path) -> std::io::Result<ArtifactRef> {
        let mut file = File::open(path)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let read = file.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
            size += read as u64;
        }
        Ok(ArtifactRef {
            file: path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256: hasher.finish(),
            size,
        })
    }

    /// Whether it names a plain file of `.artifacts/` by the start of its SHA-256, as `cargo
    /// immutant deploy` names them: a record that says otherwise is refused, never followed
    /// to another path.
    pub fn check(&self) -> Result<(), ArtifactError> {
        let hex = self.sha256.len() == 64
            && self
                .sha256
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
        let named = self.file.rsplit_once('-').is_some_and(|(app, hash)| {
            immutant_protocol::names::is_deployment_name(app)
                && hex
                && self.sha256.starts_with(hash)
                && hash.len() == 16
        });
        match named {
            true => Ok(()),
            false => Err(ArtifactError::Invalid(self.file.clone())),
        }
    }
}

/// Why an artifact could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error(
        "'{0}' cannot name an artifact: artifacts are named <app>-<16 hex digits of their SHA-256>; deploy the app again with `cargo immutant deploy`"
    )]
    Invalid(String),
    #[error(
        "no member could give the artifact {file} ({reason}); it is fetched again in a moment, or deploy the app again with `cargo immutant deploy`"
    )]
    Unavailable { file: String, reason: String },
    #[error(
        "the artifact {file} that arrived is not the one deployed (its SHA-256 is {got}, not {wanted}); it was thrown away and is fetched again"
    )]
    Altered {
        file: String,
        got: String,
        wanted: String,
    },
    #[error("cannot store the artifact {file} in {folder}: {source}")]
    Storage {
        file: String,
        folder: PathBuf,
        source: std::io::Error,
    },
}

/// A SHA-256 as it is computed piece by piece.
pub struct Sha256(ring::digest::Context);

impl Sha256 {
    pub fn new() -> Self {
        Sha256(ring::digest::Context::new(&ring::digest::SHA256))
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest, in lowercase hex.
    pub fn finish(self) -> String {
        self.0
            .finish()
            .as_ref()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Sha256::new()
    }
}

/// An artifact arriving: the partial file `<incoming>/<sha256>.part`, locked while this node
/// writes it (two nodes of one install share the folder), and the hash of what it holds.
pub struct Landing {
    wanted: ArtifactRef,
    incoming: PathBuf,
    file: File,
    hasher: Sha256,
    written: u64,
}

impl Landing {
    /// Opens the partial file of `wanted` in `incoming` (made, private to the node's user, if
    /// missing), keeping what an earlier transfer left there: [`Landing::offset`] is where to
    /// go on. None if another node of the install is bringing it in now.
    pub fn open(incoming: &Path, wanted: &ArtifactRef) -> Result<Option<Landing>, ArtifactError> {
        wanted.check()?;
        let storage = |source| ArtifactError::Storage {
            file: wanted.file.clone(),
            folder: incoming.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(incoming).map_err(storage)?;
        std::fs::set_permissions(incoming, std::fs::Permissions::from_mode(0o700))
            .map_err(storage)?;
        let path = incoming.join(format!("{}.part", wanted.sha256));
        let mut file = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(storage)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(error)) => return Err(storage(error)),
        }
        // What an earlier transfer left: kept if it can be the start of the artifact.
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        let kept = file.metadata().map_err(storage)?.len();
        if kept <= wanted.size {
            let mut buffer = vec![0u8; 256 * 1024];
            loop {
                let read = file.read(&mut buffer).map_err(storage)?;
                if read == 0 {
                    break;
                }
                hasher.update(&buffer[..read]);
                written += read as u64;
            }
        }
        let mut landing = Landing {
            wanted: wanted.clone(),
            incoming: incoming.to_path_buf(),
            file,
            hasher,
            written,
        };
        if kept > wanted.size {
            landing.start_over()?;
        }
        Ok(Some(landing))
    }

    /// The artifact arriving.
    pub fn wanted(&self) -> &ArtifactRef {
        &self.wanted
    }

    /// How many bytes are here: where the transfer goes on.
    pub fn offset(&self) -> u64 {
        self.written
    }

    /// Whether every byte is here.
    pub fn is_whole(&self) -> bool {
        self.written == self.wanted.size
    }

    /// Throws away what arrived, to take the artifact from the start again.
    pub fn start_over(&mut self) -> Result<(), ArtifactError> {
        self.file
            .set_len(0)
            .and_then(|()| self.file.seek(SeekFrom::Start(0)).map(drop))
            .map_err(|source| self.storage(source))?;
        self.hasher = Sha256::new();
        self.written = 0;
        Ok(())
    }

    /// Adds `bytes`, the next part of the artifact. More than the artifact's size is an error.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), ArtifactError> {
        if self.written + bytes.len() as u64 > self.wanted.size {
            return Err(ArtifactError::Unavailable {
                file: self.wanted.file.clone(),
                reason: "a member sent more than its size".to_string(),
            });
        }
        self.file
            .seek(SeekFrom::Start(self.written))
            .and_then(|_| self.file.write_all(bytes))
            .map_err(|source| self.storage(source))?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Once every byte is here: checks its SHA-256, and makes it `<incoming>/<sha256>`, whole
    /// and on disk, executable by the node's user alone. Something else than the artifact is
    /// thrown away (the next transfer starts over).
    pub fn finish(mut self) -> Result<PathBuf, ArtifactError> {
        let got = std::mem::take(&mut self.hasher).finish();
        if !self.is_whole() || got != self.wanted.sha256 {
            let _ = self.start_over();
            return Err(ArtifactError::Altered {
                file: self.wanted.file.clone(),
                got,
                wanted: self.wanted.sha256.clone(),
            });
        }
        let whole = self.incoming.join(&self.wanted.sha256);
        self.file
            .sync_all()
            .and_then(|()| {
                self.file
                    .set_permissions(std::fs::Permissions::from_mode(0o700))
            })
            .and_then(|()| {
                std::fs::rename(
                    self.incoming.join(format!("{}.part", self.wanted.sha256)),
                    &whole,
                )
            })
            .map_err(|source| self.storage(source))?;
        Ok(whole)
    }

    fn storage(&self, source: std::io::Error) -> ArtifactError {
        ArtifactError::Storage {
            file: self.wanted.file.clone(),
            folder: self.incoming.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact_of(content: &[u8]) -> ArtifactRef {
        let mut hasher = Sha256::new();
        hasher.update(content);
        let sha256 = hasher.finish();
        ArtifactRef {
            file: format!("app-{}", &sha256[..16]),
            sha256,
            size: content.len() as u64,
        }
    }

    #[test]
    fn an_artifact_arrives_in_parts_resumes_after_a_cut_and_is_verified() {
        let incoming = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let wanted = artifact_of(&content);
        let mut landing = Landing::open(incoming.path(), &wanted).unwrap().unwrap();
        // Another node of the install waits while this one brings it in.
        assert!(Landing::open(incoming.path(), &wanted).unwrap().is_none());
        landing.write(&content[..30_000]).unwrap();
        drop(landing);

        let mut landing = Landing::open(incoming.path(), &wanted).unwrap().unwrap();
        assert_eq!(landing.offset(), 30_000);
        landing.write(&content[30_000..]).unwrap();
        assert!(landing.write(b"x").is_err(), "no byte beyond its size");
        let whole = landing.finish().unwrap();
        assert_eq!(std::fs::read(&whole).unwrap(), content);
        assert_eq!(ArtifactRef::of_file(&whole).unwrap().sha256, wanted.sha256);
    }

    #[test]
    fn a_file_that_is_not_the_artifact_is_thrown_away() {
        let incoming = tempfile::tempdir().unwrap();
        let wanted = artifact_of(b"the real one");
        let mut landing = Landing::open(incoming.path(), &wanted).unwrap().unwrap();
        landing.write(b"not the one!").unwrap();
        assert!(matches!(
            landing.finish(),
            Err(ArtifactError::Altered { .. })
        ));
        let landing = Landing::open(incoming.path(), &wanted).unwrap().unwrap();
        assert_eq!(landing.offset(), 0);
        assert!(!incoming.path().join(&wanted.sha256).exists());
    }

    #[test]
    fn only_an_artifact_named_for_its_hash_is_accepted() {
        let good = artifact_of(b"x");
        assert!(good.check().is_ok());
        for file in ["../app-0011", "app", ".hidden-00", "app-0123456789abcdef"] {
            let bad = ArtifactRef {
                file: file.to_string(),
                ..good.clone()
            };
            assert!(bad.check().is_err(), "{file}");
        }
        let bad_hash = ArtifactRef {
            sha256: "ZZ".repeat(32),
            ..good.clone()
        };
        assert!(bad_hash.check().is_err());
    }
}
