//! App binaries shared among members, on whichever engine runs: the embedded engine's members
//! fetch them from each other over the mesh's sealed links; on NATS they are kept in a
//! JetStream object store. Either way an artifact is named by its SHA-256 and verified before
//! it takes its place.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::embedded::artifacts::ArtifactFetcher;
use crate::nats::artifacts::NatsArtifacts;
use crate::vocabulary::artifacts::{ArtifactError, ArtifactRef};

/// Where a clustered node gets the artifacts it lacks, and makes its own available.
#[derive(Clone)]
pub enum Artifacts {
    /// From the other members, which answer from their deployments folders.
    Embedded(Arc<ArtifactFetcher>),
    /// Through the cluster's object store in NATS.
    Nats(Arc<NatsArtifacts>),
}

impl Artifacts {
    /// Makes the artifact at `path` (which `artifact` describes) available to every member. On
    /// the embedded engine it already is: members fetch it from this node's folder.
    pub async fn publish(&self, path: &Path, artifact: &ArtifactRef) -> Result<(), ArtifactError> {
        match self {
            Artifacts::Embedded(_) => Ok(()),
            Artifacts::Nats(store) => store.publish(path, artifact).await,
        }
    }

    /// Brings `artifact` into `incoming`, verified (from the member `from` first, where members
    /// give it); the whole file's path, or none if another node of this install is bringing it
    /// in now.
    pub async fn fetch(
        &self,
        artifact: &ArtifactRef,
        from: &str,
        incoming: &Path,
    ) -> Result<Option<PathBuf>, ArtifactError> {
        match self {
            Artifacts::Embedded(fetcher) => fetcher.fetch(artifact, from, incoming).await,
            Artifacts::Nats(store) => store.fetch(artifact, incoming).await,
        }
    }
}
