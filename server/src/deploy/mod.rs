//! Deployments: the descriptors in the install's deployments folder, and the scanner that
//! reports them as they appear, change and go (apps deploy, redeploy and undeploy them), and
//! on a clustered node the [`cluster`]'s record of deployments, which every member's folder
//! follows.

pub mod cluster;
mod descriptor;
pub mod operations;
mod scanner;

pub use descriptor::{artifact_path, parse_descriptor};
pub use immutant_contracts::Descriptor;
pub use scanner::{DeploymentEvent, watch};
