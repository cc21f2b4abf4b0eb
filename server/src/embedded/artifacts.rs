//! Artifacts over the mesh: a member fetches an app binary it lacks from a member that has it,
//! a part at a time, on a sealed link opened for the transfer (so that megabytes never hold up
//! the forwards and cache requests of the standing links). A transfer cut off goes on where it
//! stopped, from the next member that has the artifact. Each member answers from its install's
//! `deployments/.artifacts/` ([`ArtifactShelf`]), and only with a file named for the hash
//! asked for.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use immutant_contracts::descriptor::ARTIFACTS;
use immutant_protocol::Frame;

use super::cluster::Cluster;
use super::link::{self, LinkHeader};
use crate::vocabulary::artifacts::{ArtifactError, ArtifactRef, Landing};

/// The largest part of an artifact one frame carries: small enough to arrive within
/// [`PATIENCE`] on a slow link (some 2 s at 1 Mbit/s), so that a transfer moves on there too.
const PART: usize = 256 << 10;
/// How long a member may take to open the link, or to send a part, before the next is tried.
const PATIENCE: Duration = Duration::from_secs(10);

/// The artifacts this node gives other members: its install's `deployments/.artifacts/`.
pub struct ArtifactShelf {
    folder: PathBuf,
}

impl ArtifactShelf {
    pub fn new(deployments: &Path) -> Self {
        ArtifactShelf {
            folder: deployments.join(ARTIFACTS),
        }
    }

    /// Up to `max` bytes of the artifact `file` (whose SHA-256 is `sha256`) from `offset`;
    /// none if this node has no such artifact, or the name is not one of an artifact.
    pub async fn part(
        &self,
        file: String,
        sha256: String,
        offset: u64,
        max: usize,
    ) -> Option<Bytes> {
        let named = ArtifactRef {
            file,
            sha256,
            size: 0,
        };
        named.check().ok()?;
        let path = self.folder.join(&named.file);
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut file = std::fs::File::open(path)?;
            file.seek(SeekFrom::Start(offset))?;
            let mut part = Vec::with_capacity(max.min(PART));
            file.take(max.min(PART) as u64).read_to_end(&mut part)?;
            Ok(part)
        });
        read.await.ok()?.ok().map(Bytes::from)
    }
}

/// Fetches artifacts from the other members over sealed links.
pub struct ArtifactFetcher {
    cluster: Arc<Cluster>,
    /// The largest frame this node takes on a link.
    limit: usize,
}

impl ArtifactFetcher {
    pub fn new(cluster: Arc<Cluster>, max_message_size: u64) -> Self {
        ArtifactFetcher {
            cluster,
            limit: link::frame_limit(max_message_size),
        }
    }

    /// Brings `wanted` into `incoming`, verified, from the member `from` first, then from any
    /// other that has it; the whole file's path, or none if another node of this install is
    /// bringing it in now.
    pub async fn fetch(
        &self,
        wanted: &ArtifactRef,
        from: &str,
        incoming: &Path,
    ) -> Result<Option<PathBuf>, ArtifactError> {
        // Opening hashes what an earlier transfer left: off the async threads.
        let (folder, asked) = (incoming.to_path_buf(), wanted.clone());
        let opened = tokio::task::spawn_blocking(move || Landing::open(&folder, &asked)).await;
        let Some(mut landing) = opened.map_err(|error| ArtifactError::Storage {
            file: wanted.file.clone(),
            folder: incoming.to_path_buf(),
            source: std::io::Error::other(error),
        })??
        else {
            return Ok(None);
        };
        let view = self.cluster.view().borrow().clone();
        let mut members: Vec<_> = view
            .members
            .iter()
            .filter(|member| !member.is_self)
            .collect();
        members.sort_by_key(|member| member.name != from);
        let mut reasons = Vec::new();
        for member in members {
            if landing.is_whole() {
                break;
            }
            match self
                .fetch_from(&member.name, member.gossip_addr, &mut landing)
                .await
            {
                Ok(()) => {}
                Err(Failure::Storage(error)) => return Err(error),
                Err(Failure::Member(reason)) => reasons.push(format!("{}: {reason}", member.name)),
            }
        }
        if !landing.is_whole() {
            if reasons.is_empty() {
                reasons.push("no other member is in the view".to_string());
            }
            return Err(ArtifactError::Unavailable {
                file: wanted.file.clone(),
                reason: reasons.join("; "),
            });
        }
        // Syncs the whole file to disk: off the async threads.
        let finished = tokio::task::spawn_blocking(move || landing.finish()).await;
        finished
            .map_err(|error| ArtifactError::Storage {
                file: wanted.file.clone(),
                folder: incoming.to_path_buf(),
                source: std::io::Error::other(error),
            })?
            .map(Some)
    }

    /// Takes what is missing of the artifact from one member, a part at a time.
    async fn fetch_from(
        &self,
        member: &str,
        address: std::net::SocketAddr,
        landing: &mut Landing,
    ) -> Result<(), Failure> {
        let lost = |what: &str| Failure::Member(what.to_string());
        let dialed = tokio::time::timeout(
            PATIENCE,
            link::dial(&self.cluster, member, address, self.limit),
        );
        let (mut writer, mut reader) = match dialed.await {
            Ok(Ok(link)) => link,
            Ok(Err(error)) => return Err(Failure::Member(format!("no link ({error})"))),
            Err(_) => return Err(lost("no link in time")),
        };
        let wanted = landing.wanted().clone();
        tracing::info!(
            "fetching the artifact {} from {member} (from byte {} of {})",
            wanted.file,
            landing.offset(),
            wanted.size
        );
        while !landing.is_whole() {
            let offset = landing.offset();
            let ask = LinkHeader::ArtifactRequest {
                file: wanted.file.clone(),
                sha256: wanted.sha256.clone(),
                offset,
                max: self.limit - link::HEADER_ROOM,
            };
            if writer.send(Frame::new(ask)).await.is_err() {
                return Err(lost("the link broke"));
            }
            match tokio::time::timeout(PATIENCE, reader.next()).await {
                Ok(Some(Ok(Frame {
                    header: LinkHeader::ArtifactPart { offset: at, found },
                    body,
                }))) if at == offset => match (found, body.is_empty()) {
                    (false, _) => return Err(lost("it does not have the artifact")),
                    (true, true) => return Err(lost("its copy is shorter than the artifact")),
                    (true, false) => landing.write(&body).map_err(Failure::from)?,
                },
                Ok(_) => return Err(lost("the link broke")),
                Err(_) => return Err(lost("it sent nothing in time")),
            }
        }
        Ok(())
    }
}

/// Why a transfer from one member stopped.
enum Failure {
    /// The member could not give the rest: the next one is tried.
    Member(String),
    /// This node cannot store it: no member would help.
    Storage(ArtifactError),
}

impl From<ArtifactError> for Failure {
    fn from(error: ArtifactError) -> Self {
        match error {
            ArtifactError::Storage { .. } => Failure::Storage(error),
            other => Failure::Member(other.to_string()),
        }
    }
}
