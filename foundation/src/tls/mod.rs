//! The certificates the ports clients reach serve over TLS (the balancer's and a node's HTTPS
//! port): PEM certificate chains and keys (RSA, ECDSA or Ed25519), checked before anything is
//! served (a missing, unreadable, mismatched, expired or not-yet-valid certificate, or a key
//! file other users can read, stops the start, naming the file and what is wrong with it); one
//! certificate per host name, chosen by SNI, the first given for every other name; TLS 1.2 and
//! 1.3 only, with ALPN `h2` and `http/1.1`. [`Certificates::keep_fresh`] reloads them when their
//! files change or on SIGHUP: new connections get the new certificate, open ones go on with
//! theirs, and a bad new file keeps the old certificate, saying why in the log.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use immutant_contracts::status::{CertificateReport, EXPIRY_WARNING_DAYS};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

use crate::shutdown::Shutdown;

/// A certificate chain and its key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How often the files are looked at for a change.
const POLL: Duration = Duration::from_secs(2);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Why a certificate cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("cannot read the {what} file {path}: {source}; give a PEM file this user can read")]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} holds no PEM {what}; give a PEM file (BEGIN CERTIFICATE, or BEGIN PRIVATE KEY)"
    )]
    Empty { what: &'static str, path: PathBuf },
    #[error(
        "the certificate in {path} cannot be read as X.509 ({reason}); give a PEM certificate chain, the server's certificate first"
    )]
    Malformed { path: PathBuf, reason: String },
    #[error("the certificate in {path} expired on {date}; renew it and give the new one")]
    Expired { path: PathBuf, date: String },
    #[error(
        "the certificate in {path} is not valid until {date}; check this host's clock, or give a certificate valid now"
    )]
    NotYetValid { path: PathBuf, date: String },
    #[error(
        "the key in {key} is not the key of the certificate in {cert}; give the key the certificate was made for"
    )]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error(
        "the key in {path} cannot be used ({reason}); give an RSA, ECDSA (P-256 or P-384) or Ed25519 key in PEM"
    )]
    UnusableKey { path: PathBuf, reason: String },
    #[error(
        "the key file {path} is open to other users of this host (mode {mode:o}); make it this user's alone: chmod 600 {path}"
    )]
    KeyExposed { path: PathBuf, mode: u32 },
    #[error(
        "the key file {path} belongs to another user (uid {owner}), who could change it: make it this server's user's (chown)"
    )]
    KeyOwned { path: PathBuf, owner: u32 },
    #[error("the TLS settings cannot be made: {0}")]
    Settings(String),
}

/// One certificate served: the files it came from (and what they were then), and what it
/// says.
#[derive(Debug, Clone)]
struct Served {
    files: CertificateFiles,
    identity: Vec<Option<FileIdentity>>,
    key: Arc<CertifiedKey>,
    /// Its DNS names, lower case (`*.example.com` for a wildcard).
    names: Vec<String>,
    not_after: i64,
}

/// The certificates a port serves, chosen by SNI; reloaded by [`Certificates::keep_fresh`].
#[derive(Debug)]
pub struct Certificates {
    files: Vec<CertificateFiles>,
    current: RwLock<Arc<Vec<Served>>>,
}

impl Certificates {
    /// Reads and checks every pair of `files` (the first is served to clients that name no host
    /// another certificate is for); warns of those expiring soon.
    pub fn load(files: Vec<CertificateFiles>) -> Result<Arc<Certificates>, CertificateError> {
        let served = load_all(&files)?;
        warn_of_expiry(&served);
        Ok(Arc::new(Certificates {
            files,
            current: RwLock::new(Arc::new(served)),
        }))
    }

    fn current(&self) -> Arc<Vec<Served>> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The TLS settings of a port serving these certificates.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, CertificateError> {
        let settings = |error: rustls::Error| CertificateError::Settings(error.to_string());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(settings)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Returning clients resume with a ticket rather than a full handshake.
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(settings)?;
        Ok(Arc::new(config))
    }

    /// What is served now, for `status` and the console.
    pub fn report(&self) -> Vec<CertificateReport> {
        let now = chrono::Utc::now().timestamp();
        self.current()
            .iter()
            .map(|served| CertificateReport {
                file: served.files.cert.display().to_string(),
                names: served.names.clone(),
                not_after: served.not_after,
                days_left: days_until(served.not_after, now),
            })
            .collect()
    }

    /// Reads again the pairs whose files have changed since they were read (every pair, with
    /// `all`): each new certificate is served from the next connection on; a pair that fails
    /// its checks keeps the certificate served before, the others go ahead. Answers the
    /// certificates read anew, and why each pair that failed did.
    pub fn reload(&self, all: bool) -> (Vec<String>, Vec<CertificateError>) {
        let current = self.current();
        let (mut read, mut failed) = (Vec::new(), Vec::new());
        let served: Vec<Served> = self
            .files
            .iter()
            .zip(current.iter())
            .map(|(files, before)| {
                if !all && fingerprint(std::slice::from_ref(files)) == before.identity {
                    return before.clone();
                }
                match load_one(files) {
                    Ok(served) => {
                        read.extend(names_of(std::slice::from_ref(&served)));
                        served
                    }
                    Err(error) => {
                        failed.push(error);
                        before.clone()
                    }
                }
            })
            .collect();
        warn_of_expiry(&served);
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(served);
        (read, failed)
    }

    /// Until `shutdown`: reloads the certificates whose files have changed (and stayed so for
    /// a look, so that a certificate and key replaced one after the other are read together),
    /// every one on SIGHUP, and warns every day of those expiring soon.
    pub async fn keep_fresh(self: Arc<Self>, shutdown: Shutdown) {
        let mut hangups =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(hangups) => Some(hangups),
                Err(error) => {
                    warn!(
                        "SIGHUP cannot reload the certificates ({error}); changed files still do"
                    );
                    None
                }
            };
        let mut loaded = fingerprint(&self.files);
        let mut seen = loaded.clone();
        let mut looks = tokio::time::interval(POLL);
        let mut days = tokio::time::interval_at(tokio::time::Instant::now() + DAY, DAY);
        loop {
            let asked = tokio::select! {
                _ = looks.tick() => false,
                _ = days.tick() => {
                    warn_of_expiry(&self.current());
                    continue;
                }
                hangup = async { hangups.as_mut()?.recv().await }, if hangups.is_some() => {
                    if hangup.is_none() {
                        // No more signals will come.
                        hangups = None;
                        continue;
                    }
                    true
                }
                _ = shutdown.cancelled() => return,
            };
            let now = fingerprint(&self.files);
            let settled = now == seen;
            seen = now.clone();
            if !asked && (now == loaded || !settled) {
                continue;
            }
            // Tried once per change: a bad file is not warned about every look.
            loaded = now;
            let (read, failed) = self.reload(asked);
            if !read.is_empty() {
                info!("reloaded the certificates ({})", read.join(", "));
            }
            for error in failed {
                warn!("kept the certificate served before: {error}");
            }
        }
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current();
        let chosen = hello
            .server_name()
            .and_then(|name| choose(&current, &name.to_ascii_lowercase()));
        chosen
            .or_else(|| current.first())
            .map(|served| served.key.clone())
    }
}

/// The certificate for `name`: one naming it, else one whose wildcard covers it.
fn choose<'a>(served: &'a [Served], name: &str) -> Option<&'a Served> {
    let wildcard = name.split_once('.').map(|(_, rest)| format!("*.{rest}"));
    served
        .iter()
        .find(|served| served.names.iter().any(|n| n == name))
        .or_else(|| {
            let wildcard = wildcard?;
            served
                .iter()
                .find(|served| served.names.contains(&wildcard))
        })
}

fn names_of(served: &[Served]) -> Vec<String> {
    served
        .iter()
        .map(|served| match served.names.is_empty() {
            true => served.files.cert.display().to_string(),
            false => served.names.join(" "),
        })
        .collect()
}

/// Whole days from `now` until `moment` (unix seconds), negative once it is past.
fn days_until(moment: i64, now: i64) -> i64 {
    (moment - now).div_euclid(24 * 60 * 60)
}

fn warn_of_expiry(served: &[Served]) {
    let now = chrono::Utc::now().timestamp();
    for served in served {
        let days = days_until(served.not_after, now);
        let when = match served.not_after < now {
            true => format!("expired on {}", date(served.not_after)),
            false if days < EXPIRY_WARNING_DAYS => {
                format!("expires on {} (in {days} days)", date(served.not_after))
            }
            false => continue,
        };
        warn!(
            "the certificate in {} {when}; renew it: the new file is served as soon as it is in place",
            served.files.cert.display(),
        );
    }
}

/// A file's device, inode, length and modification time (seconds, nanoseconds).
type FileIdentity = (u64, u64, u64, i64, i64);

/// What identifies the files' contents now (a file replaced, renamed over or re-linked
/// changes it); `None` for one that cannot be looked at.
fn fingerprint(files: &[CertificateFiles]) -> Vec<Option<FileIdentity>> {
    files
        .iter()
        .flat_map(|pair| [&pair.cert, &pair.key])
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((
                meta.dev(),
                meta.ino(),
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec(),
            ))
        })
        .collect()
}

fn load_all(files: &[CertificateFiles]) -> Result<Vec<Served>, CertificateError> {
    files.iter().map(load_one).collect()
}

/// Reads one pair and checks it: the key this user's alone, valid now, the key the
/// certificate's.
fn load_one(files: &CertificateFiles) -> Result<Served, CertificateError> {
    let identity = fingerprint(std::slice::from_ref(files));
    let chain = read_chain(&files.cert)?;
    let (names, not_before, not_after) = inspect(&files.cert, &chain[0])?;
    let now = chrono::Utc::now().timestamp();
    if now < not_before {
        return Err(CertificateError::NotYetValid {
            path: files.cert.clone(),
            date: date(not_before),
        });
    }
    if now > not_after {
        return Err(CertificateError::Expired {
            path: files.cert.clone(),
            date: date(not_after),
        });
    }
    let key = read_key(&files.key)?;
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|error| CertificateError::UnusableKey {
            path: files.key.clone(),
            reason: error.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    // Unknown (a key that cannot say its public half) is served, as rustls would.
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        certified.keys_match()
    {
        return Err(CertificateError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        });
    }
    Ok(Served {
        files: files.clone(),
        identity,
        key: Arc::new(certified),
        names,
        not_after,
    })
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, CertificateError> {
    std::fs::read(path).map_err(|source| CertificateError::Unreadable {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    let pem = read("certificate", path)?;
    let chain: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|error| CertificateError::Malformed {
            path: path.to_path_buf(),
            reason: error.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertificateError::Empty {
            what: "certificate",
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

/// Reads a key from the file it checked: this user's, and open to no one else.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertificateError> {
    use std::io::Read;
    let unreadable = |source| CertificateError::Unreadable {
        what: "key",
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CertificateError::KeyExposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    // SAFETY: geteuid has no preconditions.
    if meta.uid() != unsafe { libc::geteuid() } {
        return Err(CertificateError::KeyOwned {
            path: path.to_path_buf(),
            owner: meta.uid(),
        });
    }
    let mut pem = Vec::new();
    file.read_to_end(&mut pem).map_err(unreadable)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| CertificateError::Empty {
        what: "private key",
        path: path.to_path_buf(),
    })
}

/// The certificate's DNS names (its subject alternative names, else its common name), and
/// when it is valid from and until (unix seconds).
fn inspect(
    path: &Path,
    certificate: &CertificateDer<'_>,
) -> Result<(Vec<String>, i64, i64), CertificateError> {
    use x509_parser::extensions::GeneralName;
    let malformed = |reason: String| CertificateError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate)
        .map_err(|error| malformed(error.to_string()))?;
    let alternatives = parsed
        .subject_alternative_name()
        .map_err(|error| malformed(error.to_string()))?;
    let mut names: Vec<String> = alternatives
        .iter()
        .flat_map(|extension| extension.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    if alternatives.is_none() {
        names.extend(
            parsed
                .subject()
                .iter_common_name()
                .filter_map(|name| name.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    let validity = parsed.validity();
    Ok((
        names,
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// A moment (unix seconds) as people read it.
fn date(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .map(|at| at.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| seconds.to_string())
}

#[cfg(test)]
mod tests;
