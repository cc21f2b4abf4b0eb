//! Deployments: the descriptors in the install's deployments folder, and the scanner that
//! deploys, redeploys and undeploys apps as they appear, change and go.

mod descriptor;
pub mod operations;
mod scanner;

pub use descriptor::Descriptor;
pub use scanner::watch;
