//! The cluster's record of deployments: what it says of each name (a [`DeploymentRecord`]),
//! how two versions of one are ordered, and the target a member runs on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::vocabulary::artifacts::ArtifactRef;

/// What the cluster has deployed under one name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DeploymentRecord {
    /// When it was deployed (or undeployed), in milliseconds since the Unix epoch.
    pub deployed_at: u64,
    /// The member that recorded it, which has its artifact.
    pub by: String,
    /// The descriptor's text; none once it is undeployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descriptor: Option<String>,
    /// The binary it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactRef>,
    /// What the binary was built for (`arch-os-env`): the recording member's target.
    #[serde(default)]
    pub target: String,
}

impl DeploymentRecord {
    /// What orders two versions of a deployment: the later one, then the greater text.
    pub fn version(&self) -> (u64, &str) {
        (self.deployed_at, self.descriptor.as_deref().unwrap_or(""))
    }
}

/// The record: every deployment the cluster knows, by name.
pub type Record = BTreeMap<String, DeploymentRecord>;

/// The target this node's binary was built for: artifacts built for another are not run here.
pub fn this_target() -> String {
    format!(
        "{}-{}-{}",
        std::env::consts::ARCH,
        std::env::consts::OS,
        if cfg!(target_env = "musl") {
            "musl"
        } else if cfg!(target_env = "gnu") {
            "gnu"
        } else {
            "other"
        }
    )
}

#[cfg(test)]
impl DeploymentRecord {
    /// A record of `descriptor` (none: undeployed) at `deployed_at`, by `a`, for this target.
    pub fn test(deployed_at: u64, descriptor: Option<&str>) -> DeploymentRecord {
        DeploymentRecord {
            deployed_at,
            by: "a".into(),
            descriptor: descriptor.map(str::to_string),
            artifact: None,
            target: this_target(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_written() {
        let mut record = Record::new();
        record.insert(
            "app".into(),
            DeploymentRecord::test(7, Some("name = \"app\"\n")),
        );
        record.insert("gone".into(), DeploymentRecord::test(8, None));
        let bytes = serde_json::to_vec(&record).unwrap();
        assert_eq!(serde_json::from_slice::<Record>(&bytes).unwrap(), record);
        assert!(this_target().starts_with(std::env::consts::ARCH));
    }
}
