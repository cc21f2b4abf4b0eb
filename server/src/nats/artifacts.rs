//! Artifacts on NATS: the app binaries members hand each other travel through one JetStream
//! object store of the cluster, each under its SHA-256. A member that has a binary publishes
//! it there once; the others bring it into their install's `deployments/.incoming/`, verified
//! whole before it is run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::object_store::{
    GetErrorKind, InfoErrorKind, ObjectMetadata, ObjectStore, PutErrorKind,
};
use tokio::io::AsyncReadExt;

use super::{Nats, NatsError};
use crate::vocabulary::artifacts::{ArtifactError, ArtifactRef, Landing};

/// How long a transfer waits for the next part before it gives up (NATS redelivers a lost
/// part within seconds).
const STALL: Duration = Duration::from_secs(30);

/// This cluster's artifacts in NATS.
pub struct NatsArtifacts {
    nats: Arc<Nats>,
    store: ObjectStore,
}

impl NatsArtifacts {
    /// Opens (making it if needed) this cluster's object store of artifacts, held by as many
    /// servers as its buckets. Artifacts stay until they are deleted.
    pub async fn open(nats: Arc<Nats>) -> Result<Arc<NatsArtifacts>, NatsError> {
        let bucket = nats.name("artifacts");
        // The stream an object store is, as the client makes one, made here to be asked again
        // while JetStream is busy.
        let stream = jetstream::stream::Config {
            name: format!("OBJ_{bucket}"),
            subjects: vec![format!("$O.{bucket}.C.>"), format!("$O.{bucket}.M.>")],
            storage: jetstream::stream::StorageType::File,
            num_replicas: nats.replicas,
            allow_rollup: true,
            // Reads an object's description from the stream's leader: a direct get may be
            // answered by a replica that has not heard of an object just published.
            allow_direct: false,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        };
        let failed = |error: String| nats.setup_error(format!("the object store {bucket}"), error);
        nats.stream(stream)
            .await
            .map_err(|error| failed(error.to_string()))?;
        let store = nats
            .jetstream
            .get_object_store(&bucket)
            .await
            .map_err(|error| failed(error.to_string()))?;
        Ok(Arc::new(NatsArtifacts { nats, store }))
    }

    /// Makes the artifact at `path` available to every member: uploads it, a part at a time,
    /// unless an object of its name and size is there already.
    pub async fn publish(&self, path: &Path, artifact: &ArtifactRef) -> Result<(), ArtifactError> {
        artifact.check()?;
        match self.store.info(&artifact.sha256).await {
            Ok(info) if !info.deleted && info.size as u64 == artifact.size => return Ok(()),
            Ok(_) => {}
            Err(error) if error.kind() == InfoErrorKind::NotFound => {}
            Err(error) => return Err(self.unavailable(artifact, error)),
        }
        let unreadable = |source| ArtifactError::Storage {
            file: artifact.file.clone(),
            folder: path.parent().unwrap_or(path).to_path_buf(),
            source,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(unreadable)?;
        let meta = ObjectMetadata {
            name: artifact.sha256.clone(),
            description: Some(artifact.file.clone()),
            ..Default::default()
        };
        match self.store.put(meta, &mut file).await {
            Ok(_) => Ok(()),
            Err(error) if error.kind() == PutErrorKind::ReadChunks => {
                Err(unreadable(std::io::Error::other(error)))
            }
            Err(error) => Err(self.unavailable(artifact, error)),
        }
    }

    /// Brings the artifact into `incoming`, verified: the whole file's path, or none if another
    /// node of this install is bringing it in now.
    pub async fn fetch(
        &self,
        artifact: &ArtifactRef,
        incoming: &Path,
    ) -> Result<Option<PathBuf>, ArtifactError> {
        let (wanted, folder) = (artifact.clone(), incoming.to_path_buf());
        let landing = blocking(artifact, incoming, move || Landing::open(&folder, &wanted));
        let Some(mut landing) = landing.await? else {
            return Ok(None);
        };
        let mut object = match self.store.get(&artifact.sha256).await {
            Ok(object) => object,
            Err(error) if error.kind() == GetErrorKind::NotFound => {
                return Err(ArtifactError::Unavailable {
                    file: artifact.file.clone(),
                    reason: format!("no member has published it to NATS at {}", self.nats.url),
                });
            }
            Err(error) => return Err(self.unavailable(artifact, error)),
        };
        // An object is read from its start only: what an earlier transfer left is thrown away.
        if landing.offset() > 0 {
            landing.start_over()?;
        }
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            let read = tokio::time::timeout(STALL, object.read(&mut buffer))
                .await
                .map_err(|_| {
                    let silent = format!("it sent nothing for {} s", STALL.as_secs());
                    self.unavailable(artifact, silent)
                })?
                .map_err(|error| self.unavailable(artifact, error))?;
            if read == 0 {
                break;
            }
            landing.write(&buffer[..read])?;
        }
        blocking(artifact, incoming, move || landing.finish())
            .await
            .map(Some)
    }

    /// The artifact cannot be had from NATS, for `reason`.
    fn unavailable(&self, artifact: &ArtifactRef, reason: impl std::fmt::Display) -> ArtifactError {
        ArtifactError::Unavailable {
            file: artifact.file.clone(),
            reason: format!("NATS at {}: {reason}", self.nats.url),
        }
    }
}

/// Runs `work` on the landing in `incoming` (hashing what is there, syncing to disk) off the
/// runtime's threads.
async fn blocking<T: Send + 'static>(
    artifact: &ArtifactRef,
    incoming: &Path,
    work: impl FnOnce() -> Result<T, ArtifactError> + Send + 'static,
) -> Result<T, ArtifactError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| ArtifactError::Storage {
            file: artifact.file.clone(),
            folder: incoming.to_path_buf(),
            source: std::io::Error::other(error),
        })?
}
