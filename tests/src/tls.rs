//! TLS as the HTTPS tests need it: a certificate authority made in the test (rcgen), the
//! certificates it issues written as a server is given them (the chain with the authority last,
//! the key readable by this user alone), and clients that trust that authority alone.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, PublicKeyData};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A certificate authority of the test's own.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate, PEM.
    pub pem: String,
    /// Its certificate, DER.
    pub der: CertificateDer<'static>,
    /// The SHA-256 of its public key, base64: what Chromium's
    /// `--ignore-certificate-errors-spki-list` takes to trust it.
    pub spki_sha256: String,
}

/// A certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The server's certificate, DER (what a client sees first).
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new() -> TestCa {
        use base64::Engine;
        use sha2::Digest;
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Immutant test CA");
        let certificate = params.self_signed(&key).unwrap();
        let spki = sha2::Sha256::digest(key.subject_public_key_info());
        TestCa {
            pem: certificate.pem(),
            der: certificate.der().clone(),
            spki_sha256: base64::engine::general_purpose::STANDARD.encode(spki),
            issuer: Issuer::new(params, key),
        }
    }

    /// Issues a certificate for `names`, valid from `from` days from now until `until`, into
    /// `dir` as `stem.pem` (the chain) and `stem.key` (mode 600), over what is there.
    pub fn issue(&self, dir: &Path, stem: &str, names: &[&str], from: i64, until: i64) -> Issued {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(from);
        params.not_after = now + time::Duration::days(until);
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        let issued = Issued {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
            der: certificate.der().clone(),
        };
        // Each written beside, then renamed over: a server never reads half a file.
        write_over(&issued.key, &key.serialize_pem(), 0o600);
        write_over(
            &issued.cert,
            &format!("{}{}", certificate.pem(), self.pem),
            0o644,
        );
        issued
    }

    /// The authority's certificate as a file, for curl's `--cacert`.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.pem).unwrap();
        path
    }

    /// The settings of a TLS client trusting this authority alone, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        config
    }

    /// A TLS client trusting this authority alone, offering `alpn`.
    pub fn client(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(Arc::new(self.client_config(alpn)))
    }

    /// A TLS connection to 127.0.0.1:`port` asking for `name` by SNI.
    pub async fn connect(&self, port: u16, name: &str, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let name = ServerName::try_from(name.to_string()).unwrap();
        self.client(alpn).connect(name, tcp).await.unwrap()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// The certificate a connection was served first.
pub fn served(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

fn write_over(path: &Path, content: &str, mode: u32) {
    let beside = path.with_extension("new");
    std::fs::write(&beside, content).unwrap();
    std::fs::set_permissions(&beside, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&beside, path).unwrap();
}
