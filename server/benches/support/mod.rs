//! What the benchmarks share: a throwaway install of the release server, and free ports.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// An install layout (bin/, config/, deployments/) in a temporary folder, holding the server
/// that `cargo bench` built.
pub struct TempInstall {
    dir: tempfile::TempDir,
}

impl TempInstall {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let home = dir.path();
        for folder in ["bin", "config", "deployments"] {
            std::fs::create_dir_all(home.join(folder)).unwrap();
        }
        std::fs::copy(
            env!("CARGO_BIN_EXE_immutant-server"),
            home.join("bin/immutant-server"),
        )
        .unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        for name in ["standalone.toml", "standalone-ha.toml"] {
            std::fs::copy(shipped.join(name), home.join("config").join(name)).unwrap();
        }
        TempInstall { dir }
    }

    pub fn home(&self) -> &Path {
        self.dir.path()
    }

    pub fn server(&self) -> PathBuf {
        self.home().join("bin/immutant-server")
    }
}

/// A port offset whose HTTP and management ports are free.
pub fn free_offset() -> u16 {
    (1000..40_000u16)
        .step_by(100)
        .find(|offset| {
            [8080, 9990]
                .iter()
                .all(|port| TcpListener::bind(("127.0.0.1", port + offset)).is_ok())
        })
        .expect("a free port offset")
}

/// Sorts `values` and returns the middle one.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
