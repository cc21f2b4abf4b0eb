//! TLS for the management API bound beyond loopback, where its token would otherwise cross the
//! network in the clear: the node's certificate and key are given with
//! `-Dimmutant.management.tls.cert-file` and `-Dimmutant.management.tls.key-file` (PEM), or made
//! at its first boot into its data dir (`management.crt`, and `management.key` readable by the
//! node's user alone), self-signed for the management address, the host's name, `localhost` and
//! `127.0.0.1`. At every boot the node copies the certificate it serves to `management.pin` in
//! its data dir: the CLI trusts that one certificate for that node, and nothing else.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;

/// The file in the data dir holding the certificate the node serves, for the CLI to trust.
pub use immutant_contracts::data_dir::PIN_FILE;

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
    #[error(
        "cannot write the management API's certificate in {path}: {reason}; free the data dir's disk, or give a certificate with -Dimmutant.management.tls.cert-file and -Dimmutant.management.tls.key-file"
    )]
    Write { path: PathBuf, reason: String },
    #[error(
        "the management API's certificate and key do not go together ({0}); give a matching pair, or remove management.crt and management.key from the data dir to have a new pair made"
    )]
    Mismatch(String),
}

/// Where the certificate and key come from: given, or the data dir's (made if missing).
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The data dir's own pair, made when it is not whole (given files are never made).
    made_here: bool,
}

impl TlsFiles {
    /// The files given with properties, or else the data dir's.
    pub fn new(data_dir: &Path, given: Option<(PathBuf, PathBuf)>) -> TlsFiles {
        match given {
            Some((cert, key)) => TlsFiles {
                cert,
                key,
                made_here: false,
            },
            None => TlsFiles {
                cert: data_dir.join("management.crt"),
                key: data_dir.join("management.key"),
                made_here: true,
            },
        }
    }
}

/// The server side of TLS for the management API, from `files` (the data dir's made first, for
/// `names`, the addresses and host names it answers for, if its certificate is missing), and
/// the certificate it serves copied to `pin`.
pub fn server_config(
    files: &TlsFiles,
    names: &[String],
    pin: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    // The certificate is written last: without it the pair is not whole.
    if files.made_here && !files.cert.exists() {
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
    write_whole(pin, cert_pem.as_slice(), 0o644)?;
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
    let failed = |reason: String| TlsError::Write {
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
    write_whole(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_whole(&files.cert, certificate.pem().as_bytes(), 0o644)
}

/// Writes `content` to `path` whole or not at all (beside it, synced, then renamed), made with
/// `mode` from the start.
fn write_whole(path: &Path, content: &[u8], mode: u32) -> Result<(), TlsError> {
    let failed = |error: std::io::Error| TlsError::Write {
        path: path.to_path_buf(),
        reason: error.to_string(),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let written = path.with_file_name(format!(".{name}.new"));
    let _ = std::fs::remove_file(&written);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&written)
        .and_then(|mut file| {
            file.write_all(content)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&written, path))
        .map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_made_once_whole_and_read_back_and_given_files_are_never_made() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::new(dir.path(), None);
        let pin = dir.path().join(PIN_FILE);
        let names = vec!["10.0.0.1".to_string(), "localhost".to_string()];
        server_config(&files, &names, &pin).unwrap();
        let first = std::fs::read(&files.cert).unwrap();
        assert_eq!(
            std::fs::read(&pin).unwrap(),
            first,
            "the pin is what is served"
        );
        let mode = std::fs::metadata(&files.key).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        server_config(&files, &names, &pin).unwrap();
        assert_eq!(std::fs::read(&files.cert).unwrap(), first, "made once");
        // A key without its certificate (cut off between the two): a new pair.
        std::fs::remove_file(&files.cert).unwrap();
        server_config(&files, &names, &pin).unwrap();
        assert_ne!(std::fs::read(&files.cert).unwrap(), first);
        std::fs::write(&files.key, "not a key").unwrap();
        assert!(matches!(
            server_config(&files, &names, &pin),
            Err(TlsError::Empty { .. })
        ));
        let given = (dir.path().join("given.crt"), dir.path().join("given.key"));
        let files = TlsFiles::new(dir.path(), Some(given));
        assert!(matches!(
            server_config(&files, &names, &pin),
            Err(TlsError::Read { .. })
        ));
    }
}
