//! TLS for the management API bound beyond loopback, where its token would otherwise cross the
//! network in the clear: the node's certificate and key are given with
//! `-Dimmutant.management.tls.cert-file` and `-Dimmutant.management.tls.key-file` (PEM), or made
//! at its first boot into its data dir (`management.crt`, and `management.key` readable by the
//! node's user alone), self-signed for the management address, `localhost` and the host's name.
//! The CLI trusts that one certificate for that node (it reads it from the node's data dir) and
//! nothing else.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;

/// The certificate's file name in the data dir.
pub const CERT_FILE: &str = "management.crt";
/// The key's file name in the data dir.
const KEY_FILE: &str = "management.key";

/// Why the management API cannot speak TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "cannot read {path}: {source}; give a PEM file with -Dimmutant.management.tls.{what}-file"
    )]
    Read {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{path} holds no {what} in PEM; give one with -Dimmutant.management.tls.{what}-file")]
    Empty { path: PathBuf, what: &'static str },
    #[error("cannot make the management API's certificate in {path}: {reason}")]
    Make { path: PathBuf, reason: String },
    #[error("the management API's certificate and key do not go together: {0}")]
    Mismatch(String),
}

/// Where the certificate and key come from: given, or the data dir's (made if missing).
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files given with properties, or else the data dir's.
    pub fn new(data_dir: &Path, given: Option<(PathBuf, PathBuf)>) -> TlsFiles {
        match given {
            Some((cert, key)) => TlsFiles { cert, key },
            None => TlsFiles {
                cert: data_dir.join(CERT_FILE),
                key: data_dir.join(KEY_FILE),
            },
        }
    }
}

/// The server side of TLS for the management API: from `files`, made first (for `names`, the
/// addresses and host names it answers for) if neither is there.
pub fn server_config(
    files: &TlsFiles,
    names: &[String],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    if !files.cert.exists() && !files.key.exists() {
        make(files, names)?;
    }
    let cert_pem = read(&files.cert, "cert")?;
    let key_pem = read(&files.key, "key")?;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| empty(&files.cert, "cert"))?;
    if certs.is_empty() {
        return Err(empty(&files.cert, "cert"));
    }
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| empty(&files.key, "key"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Mismatch(error.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|error| TlsError::Mismatch(error.to_string()))?;
    Ok(Arc::new(config))
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        what,
        source,
    })
}

fn empty(path: &Path, what: &'static str) -> TlsError {
    TlsError::Empty {
        path: path.to_path_buf(),
        what,
    }
}

/// Makes a self-signed certificate for `names`, and its key (readable by this user alone).
fn make(files: &TlsFiles, names: &[String]) -> Result<(), TlsError> {
    let failed = |reason: String| TlsError::Make {
        path: files.cert.clone(),
        reason,
    };
    let key = rcgen::KeyPair::generate().map_err(|error| failed(error.to_string()))?;
    let mut params =
        rcgen::CertificateParams::new(names.to_vec()).map_err(|error| failed(error.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Immutant management");
    let certificate = params
        .self_signed(&key)
        .map_err(|error| failed(error.to_string()))?;
    let write = |path: &Path, text: String, mode: u32| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .map_err(|error| failed(format!("{}: {error}", path.display())))
    };
    write(&files.key, key.serialize_pem(), 0o600)?;
    write(&files.cert, certificate.pem(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::new(dir.path(), None);
        let names = vec!["10.0.0.1".to_string(), "localhost".to_string()];
        server_config(&files, &names).unwrap();
        let first = std::fs::read(&files.cert).unwrap();
        let mode = std::fs::metadata(&files.key).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        server_config(&files, &names).unwrap();
        assert_eq!(std::fs::read(&files.cert).unwrap(), first, "made once");
        std::fs::write(&files.key, "not a key").unwrap();
        assert!(matches!(
            server_config(&files, &names),
            Err(TlsError::Empty { .. })
        ));
    }
}
