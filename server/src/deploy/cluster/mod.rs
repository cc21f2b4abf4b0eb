//! Cluster-wide deployments: the cluster keeps one record of what is deployed (the replicated
//! cache `immutant.deployments`; a key-value bucket on NATS), and every member's install
//! follows it. A descriptor that appears in a member's deployments folder (written by `cargo
//! immutant deploy`, the console, or by hand) and is newer than the record is recorded, its
//! artifact made available to the others; a record newer than what a folder holds is written
//! into it, its artifact fetched and verified first, and the folder's scanner deploys it as it
//! deploys anything. A descriptor removed from a folder is recorded as undeployed (a
//! tombstone), which removes it from every folder. One that says `local = true` stays on its
//! install, and the record of its name is not followed there.
//!
//! Versions are compared by when they were deployed (`deployed-at`), then by their text: two
//! deploys of one name at once end with the same one everywhere, whichever member sees what
//! first. The record is changed only by compare-and-set, so no change is lost to another.
//! What the record says of a name is in `record`; how the folder compares with it, and is
//! kept tidy, in `folder`.

mod folder;
mod record;

use record::{DeploymentRecord, this_target};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use immutant_contracts::descriptor::{self, ARTIFACTS};
use immutant_foundation::clock::now_ms;
use immutant_foundation::shutdown::Shutdown;
use immutant_protocol::{CacheMode, CacheOp, CacheOptions, Open};
use tokio::sync::mpsc;

use super::operations::{self, OperationError};
use super::{DeploymentEvent, artifact_path, parse_descriptor};
use crate::engine::{Artifacts, CacheService};
use crate::vocabulary::artifacts::{ArtifactError, ArtifactRef};
use crate::vocabulary::cache::CacheError;
use folder::{clear_incoming, folder_is_older, has_artifact, prune_artifacts, version_of};
use record::Record;

/// The cache the cluster's record of deployments lives in.
const RECORD_CACHE: &str = "immutant.deployments";
/// Its one key: the whole record, so that a change to it is one compare-and-set.
const RECORD_KEY: &str = "deployments";
/// How often a member looks at the record.
const FOLLOW: Duration = Duration::from_millis(500);
/// Where artifacts arrive, in the deployments folder, before they take their place.
const INCOMING: &str = ".incoming";
/// How often a compare-and-set is tried again when others changed the record meanwhile.
const CAS_TRIES: usize = 10;

/// Why the record could not be read or changed.
#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("the cluster's record of deployments cannot be reached: {0}")]
    Record(#[from] CacheError),
    #[error(
        "the cluster's record of deployments cannot be read ({0}): a later version of the server wrote it, or it is damaged; this member neither follows nor changes it"
    )]
    Unreadable(String),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(
        "the cluster's record of {name} cannot be followed: {reason}; deploy it again with `cargo immutant deploy`"
    )]
    BadRecord { name: String, reason: String },
    #[error(transparent)]
    Folder(#[from] OperationError),
    #[error("cannot change the deployments folder: {0}")]
    Io(#[from] std::io::Error),
}

/// What this node's scanner saw of a deployment and the record does not have yet.
#[derive(Debug, Clone)]
enum Seen {
    /// The descriptor's text now.
    Deployed(String),
    /// The descriptor is gone; the text it had, if the scanner saw it.
    Undeployed { removed: Option<String> },
}

/// The key under which what is said of the record as a whole is kept.
const ABOUT_THE_RECORD: &str = "";

/// A member's side of the cluster's deployments: it records what its install's folder gets, and
/// writes into the folder what the cluster records.
pub struct ClusterDeployments {
    caches: CacheService,
    artifacts: Artifacts,
    deployments: PathBuf,
    node: String,
    /// What the scanner saw that is not recorded yet, by name.
    pending: BTreeMap<String, Seen>,
    /// The descriptors the scanner last saw in the folder, by name: one missing from the folder
    /// but still here is being undeployed (the scanner has not seen it go yet), not missed.
    present: HashMap<String, String>,
    /// This install's deployments kept off the record (`local = true`).
    local: HashSet<String>,
    /// What was last said in the log about each deployment, so that each thing is said once.
    said: HashMap<String, String>,
    /// Says a deployment this node cannot run is refused, to the apps.
    refuse: Box<dyn Fn(DeploymentEvent) + Send + Sync>,
    /// The artifacts this node's apps run now (an old build waiting for its rolling turn
    /// among them): never pruned.
    in_use: Box<dyn Fn() -> Vec<PathBuf> + Send + Sync>,
}

impl ClusterDeployments {
    pub fn new(
        caches: CacheService,
        artifacts: Artifacts,
        deployments: PathBuf,
        node: String,
        refuse: impl Fn(DeploymentEvent) + Send + Sync + 'static,
        in_use: impl Fn() -> Vec<PathBuf> + Send + Sync + 'static,
    ) -> Self {
        ClusterDeployments {
            caches,
            artifacts,
            deployments,
            node,
            pending: BTreeMap::new(),
            present: HashMap::new(),
            local: HashSet::new(),
            said: HashMap::new(),
            refuse: Box::new(refuse),
            in_use: Box::new(in_use),
        }
    }

    /// Brings the install's folder in line with the record once (a member that was away
    /// catches up before its scanner deploys what the folder holds), trying again until it
    /// can read the record: the caller bounds how long.
    pub async fn catch_up(&mut self) {
        loop {
            let followed = match self.open().await {
                Ok(()) => self.follow().await,
                Err(error) => Err(error),
            };
            match followed {
                Ok(()) => return,
                Err(error) => self.say(ABOUT_THE_RECORD, error.to_string()),
            }
            tokio::time::sleep(FOLLOW).await;
        }
    }

    /// Records what the scanner sees (`seen`), and follows the record, until `shutdown`.
    pub async fn run(
        mut self,
        mut seen: mpsc::UnboundedReceiver<DeploymentEvent>,
        shutdown: Shutdown,
    ) {
        loop {
            while let Ok(event) = seen.try_recv() {
                self.saw(event);
            }
            let mut done = self.open().await;
            if done.is_ok() {
                done = self.record_pending().await;
            }
            if done.is_ok() {
                done = self.follow().await;
            }
            match done {
                // Said again if it comes back.
                Ok(()) => drop(self.said.remove(ABOUT_THE_RECORD)),
                Err(error) => self.say(ABOUT_THE_RECORD, error.to_string()),
            }
            tokio::select! {
                event = seen.recv() => match event {
                    Some(event) => self.saw(event),
                    None => return,
                },
                _ = tokio::time::sleep(FOLLOW) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Takes in what the scanner saw.
    fn saw(&mut self, event: DeploymentEvent) {
        match event {
            DeploymentEvent::Deployed { name, text } => {
                self.present.insert(name.clone(), text.clone());
                let local = parse_descriptor(&name, &text).is_ok_and(|d| d.local);
                match local {
                    true => {
                        self.local.insert(name.clone());
                        self.pending.remove(&name);
                    }
                    false => {
                        self.local.remove(&name);
                        self.pending.insert(name, Seen::Deployed(text));
                    }
                }
            }
            DeploymentEvent::Undeployed { name } => {
                let removed = self.present.remove(&name);
                if !self.local.remove(&name) {
                    self.pending.insert(name, Seen::Undeployed { removed });
                }
            }
            // Not a descriptor: the node says so, and the record is not told.
            DeploymentEvent::Refused { name, .. } => {
                self.present.remove(&name);
                self.pending.remove(&name);
            }
        }
    }

    /// Opens the record's cache on this node (a no-op once open).
    async fn open(&self) -> Result<(), SyncError> {
        let options = CacheOptions {
            mode: CacheMode::Replicated,
            persist: true,
            ..CacheOptions::default()
        };
        self.caches
            .open(RECORD_CACHE, Open::LookupOrCreate, options)
            .await?;
        Ok(())
    }

    /// The record as the cache's primary holds it, and its stored bytes (none if there is
    /// none yet).
    async fn read(&self) -> Result<(Record, Option<Bytes>), SyncError> {
        let get = CacheOp::GetLatest {
            key: RECORD_KEY.to_string(),
        };
        let (outcome, value) = self
            .caches
            .call(RECORD_CACHE, get, Bytes::new(), None)
            .await?;
        if !outcome.found {
            return Ok((Record::new(), None));
        }
        // One this member cannot read is never written over: other members may read it.
        serde_json::from_slice(&value)
            .map(|record| (record, Some(value)))
            .map_err(|error| SyncError::Unreadable(error.to_string()))
    }

    /// Records what the scanner saw and the record does not have, by compare-and-set.
    async fn record_pending(&mut self) -> Result<(), SyncError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        for _ in 0..CAS_TRIES {
            let (mut record, stored) = self.read().await?;
            let mut changed = Vec::new();
            let pending = std::mem::take(&mut self.pending);
            for (name, seen) in &pending {
                match self.entry_for(name, seen, &record).await {
                    Ok(Some(entry)) => {
                        record.insert(name.clone(), entry);
                        changed.push(name);
                    }
                    Ok(None) => {}
                    // One that can never be recorded is said once and left to the install.
                    Err(error @ SyncError::Artifact(ArtifactError::Invalid(_))) => {
                        self.say(
                            name,
                            format!("{name} is not deployed to the cluster: {error}"),
                        );
                    }
                    Err(error) => {
                        // Tried again at the next look.
                        self.say(
                            name,
                            format!("cannot record {name} for the cluster: {error}"),
                        );
                        self.pending.insert(name.clone(), seen.clone());
                    }
                }
            }
            if changed.is_empty() {
                return Ok(());
            }
            let value = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
            let key = RECORD_KEY.to_string();
            let (op, body) = match &stored {
                Some(stored) => (
                    CacheOp::Replace {
                        key,
                        expected_len: stored.len() as u64,
                        expiry: None,
                    },
                    Bytes::from([stored.as_ref(), &value].concat()),
                ),
                None => (
                    CacheOp::PutIfAbsent { key, expiry: None },
                    Bytes::from(value),
                ),
            };
            let (outcome, _) = self.caches.call(RECORD_CACHE, op, body, None).await?;
            if outcome.applied {
                for name in changed {
                    let what = match record[name].descriptor {
                        Some(_) => "deployed",
                        None => "undeployed",
                    };
                    tracing::info!("{name} is {what} for the cluster");
                }
                return Ok(());
            }
            // Changed meanwhile: everything is weighed again against what it is now.
            for (name, seen) in pending {
                self.pending.entry(name).or_insert(seen);
            }
        }
        Ok(())
    }

    /// What the record should say of `name` now that the scanner saw `seen`, if that is newer
    /// than what it says (and, for a deployment, its artifact made available to the members).
    /// A descriptor the node refuses stays unrecorded (the node says why).
    async fn entry_for(
        &self,
        name: &str,
        seen: &Seen,
        record: &Record,
    ) -> Result<Option<DeploymentRecord>, SyncError> {
        let current = record.get(name);
        let text = match seen {
            Seen::Undeployed { removed } => {
                // An undeploy of an older version than the record's is past: the newer one
                // is written back into the folder.
                let of_current = |entry: &&DeploymentRecord| match removed {
                    Some(text) => version_of(name, text) >= entry.version(),
                    None => true,
                };
                return Ok(current
                    .filter(|entry| entry.descriptor.is_some())
                    .filter(of_current)
                    .map(|entry| DeploymentRecord {
                        deployed_at: now_ms().max(entry.deployed_at + 1),
                        by: self.node.clone(),
                        descriptor: None,
                        artifact: None,
                        target: String::new(),
                    }));
            }
            Seen::Deployed(text) => text,
        };
        let Ok(mut descriptor) = parse_descriptor(name, text) else {
            return Ok(None);
        };
        // A descriptor written by hand says when by being seen now; the record's text, with
        // the time in it, then replaces it in the folder.
        let text = match descriptor.deployed_at {
            Some(_) => text.clone(),
            None => {
                descriptor.deployed_at = Some(now_ms());
                toml::to_string(&descriptor).map_err(std::io::Error::other)?
            }
        };
        let deployed_at = descriptor.deployed_at.unwrap_or_default();
        if current.is_some_and(|entry| entry.version() >= (deployed_at, text.as_str())) {
            return Ok(None);
        }
        let Ok(path) = artifact_path(&descriptor, &self.deployments) else {
            return Ok(None);
        };
        // The file it names, not where a link there leads: the others write this descriptor.
        let named = descriptor.artifact.file_name().unwrap_or_default();
        let described = path.clone();
        let artifact = tokio::task::spawn_blocking(move || ArtifactRef::of_file(&described))
            .await
            .map_err(std::io::Error::other)??;
        // Only an artifact named for its content travels (`cargo immutant deploy` names them so).
        artifact.check()?;
        if named != artifact.file.as_str() {
            return Err(ArtifactError::Invalid(named.to_string_lossy().into_owned()).into());
        }
        self.artifacts.publish(&path, &artifact).await?;
        Ok(Some(DeploymentRecord {
            deployed_at,
            by: self.node.clone(),
            descriptor: Some(text),
            artifact: Some(artifact),
            target: this_target(),
        }))
    }

    /// Writes into the install's folder what the record has and the folder does not, and
    /// clears what arrived for deployments the record no longer has.
    async fn follow(&mut self) -> Result<(), SyncError> {
        let (record, _) = self.read().await?;
        for (name, entry) in &record {
            if self.local.contains(name) || self.pending.contains_key(name) {
                continue;
            }
            // A name no descriptor could have is never made into a path.
            if !immutant_protocol::names::is_deployment_name(name) {
                let said = format!(
                    "the cluster's record names a deployment '{name}', which cannot be one; it is left alone"
                );
                self.say(name, said);
                continue;
            }
            if let Err(error) = self.follow_one(name, entry).await {
                self.say(name, format!("cannot follow the cluster's {name}: {error}"));
            }
        }
        let wanted: HashSet<String> = record
            .values()
            .filter_map(|entry| Some(entry.artifact.as_ref()?.sha256.clone()))
            .collect();
        clear_incoming(&self.deployments.join(INCOMING), &wanted);
        Ok(())
    }

    /// Brings the folder's `name` in line with the record's `entry`, if the folder's is older.
    async fn follow_one(&mut self, name: &str, entry: &DeploymentRecord) -> Result<(), SyncError> {
        let deployments = self.deployments.clone();
        // Seen in the folder by the scanner: if it is missing now, it is being undeployed.
        let seen = self.present.contains_key(name);
        if !folder_is_older(&deployments, name, entry, seen) {
            return Ok(());
        }
        let in_use = (self.in_use)();
        let Some(text) = &entry.descriptor else {
            let (owned, entry) = (name.to_string(), entry.clone());
            let removed = under_lock(&deployments, move |deployments| {
                if !folder_is_older(deployments, &owned, &entry, seen) {
                    return Ok(false);
                }
                std::fs::remove_file(descriptor::path(deployments, &owned))?;
                tracing::info!("{owned} was undeployed from the cluster");
                prune_artifacts(deployments, &in_use);
                Ok(true)
            })
            .await?;
            // The scanner sees it go next: not an undeploy of this install's to record.
            if removed {
                self.present.remove(name);
            }
            return Ok(());
        };
        if entry.target != this_target() {
            let reason = format!(
                "the cluster's {name} was built for {}, and this node runs on {}; deploy it from a host of this node's target",
                entry.target,
                this_target()
            );
            // Said, and refused, once for each version.
            let key = format!("{name} at {}", entry.deployed_at);
            if !self.said.contains_key(&key) {
                (self.refuse)(DeploymentEvent::Refused {
                    name: name.to_string(),
                    reason: reason.clone(),
                });
                self.say(&key, reason);
            }
            return Ok(());
        }
        let bad = |reason: &str| SyncError::BadRecord {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        let artifact = entry
            .artifact
            .clone()
            .ok_or_else(|| bad("it names no artifact"))?;
        artifact.check()?;
        // The descriptor written runs the artifact fetched and verified, and nothing else.
        let runs = parse_descriptor(name, text).map(|descriptor| descriptor.artifact);
        if runs.as_ref().ok() != Some(&Path::new(ARTIFACTS).join(&artifact.file)) {
            return Err(bad("its descriptor runs another file than its artifact"));
        }
        let in_place = deployments.join(ARTIFACTS).join(&artifact.file);
        let arrived = match has_artifact(&in_place, &artifact).await {
            true => None,
            false => {
                let incoming = deployments.join(INCOMING);
                match self
                    .artifacts
                    .fetch(&artifact, &entry.by, &incoming)
                    .await?
                {
                    Some(path) => Some(path),
                    // Another node of this install brings it in.
                    None => return Ok(()),
                }
            }
        };
        let (owned, entry, written) = (name.to_string(), entry.clone(), text.clone());
        let wrote = under_lock(&deployments, move |deployments| {
            let name = owned;
            if let Some(arrived) = arrived {
                std::fs::create_dir_all(deployments.join(ARTIFACTS))?;
                std::fs::set_permissions(&arrived, std::fs::Permissions::from_mode(0o755))?;
                std::fs::rename(&arrived, &in_place)?;
            }
            // A deploy or undeploy through this install may have come in meanwhile, and a
            // prune may have taken an artifact no descriptor named yet.
            if !folder_is_older(deployments, &name, &entry, seen) {
                return Ok(false);
            }
            if !in_place.is_file() {
                let gone = format!(
                    "{} went before its descriptor was written",
                    in_place.display()
                );
                return Err(std::io::Error::new(std::io::ErrorKind::NotFound, gone));
            }
            let permissions = std::fs::Permissions::from_mode(0o644);
            operations::write_descriptor(deployments, &name, &written, permissions)?;
            tracing::info!("{name} was deployed to the cluster by {}", entry.by);
            prune_artifacts(deployments, &in_use);
            Ok(true)
        })
        .await?;
        // What the folder has now, before the scanner says so: a removal from here on is an
        // undeploy of this version.
        if wrote {
            self.present.insert(name.to_string(), text.clone());
        }
        Ok(())
    }

    /// Says `what` in the log about `name`, unless it was the last thing said of it.
    fn say(&mut self, name: &str, what: String) {
        if self.said.get(name) != Some(&what) {
            tracing::warn!("{what}");
            self.said.insert(name.to_string(), what);
        }
    }
}

/// Does `change` to the deployments folder holding its lock, which the CLI and the console
/// take too; what it answers.
async fn under_lock<T: Send + 'static>(
    deployments: &Path,
    change: impl FnOnce(&Path) -> std::io::Result<T> + Send + 'static,
) -> Result<T, SyncError> {
    let deployments = deployments.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<T, SyncError> {
        let _lock = operations::lock(&deployments)?;
        Ok(change(&deployments)?)
    })
    .await
    .map_err(std::io::Error::other)?
}
