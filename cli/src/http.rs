//! The CLI's HTTP client, for downloads and for asking nodes how they are; and one that trusts
//! a single certificate, for a node's management API beyond loopback.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result};

/// A client that names the CLI; `timeout` bounds each whole request when given.
pub fn client(timeout: Option<Duration>) -> Result<reqwest::Client> {
    // reqwest is built without a default TLS provider; this one serves https URLs.
    let _ = rustls::crypto::ring::default_provider().install_default();
    builder(timeout)
        .build()
        .context("cannot set up an HTTP client")
}

/// What every client of the CLI's starts from: its name, and `timeout` when given.
fn builder(timeout: Option<Duration>) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder()
        .user_agent(concat!("cargo-immutant/", env!("CARGO_PKG_VERSION")));
    match timeout {
        Some(timeout) => builder.timeout(timeout),
        None => builder,
    }
}

/// Runs `future` to completion on a runtime of its own (the CLI is otherwise synchronous).
pub fn block_on<F: Future>(future: F) -> Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start an async runtime")?;
    Ok(runtime.block_on(future))
}

/// A client that trusts one certificate, the one in the file `pin` (PEM), and nothing else: a
/// node's management API beyond loopback, which copies the certificate it serves into its data
/// dir. The certificate is compared whole, so the address it is reached at need not be one it
/// names; the handshake's signatures are checked as usual. If `pin` cannot be read, every
/// handshake is refused, saying why.
pub fn pinned_client(pin: &std::path::Path, timeout: Option<Duration>) -> Result<reqwest::Client> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pinned = std::fs::read(pin)
        .map_err(|error| error.to_string())
        .and_then(|pem| {
            CertificateDer::from_pem_slice(&pem)
                .map(CertificateDer::into_owned)
                .map_err(|_| "it holds no PEM certificate".to_string())
        })
        .map_err(|why| {
            format!(
                "cannot read the node's certificate {} ({why}); run this as the user that runs the node",
                pin.display()
            )
        });
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier = std::sync::Arc::new(Pinned {
        pinned,
        algorithms: provider.signature_verification_algorithms,
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    builder(timeout)
        .tls_backend_preconfigured(config)
        .build()
        .context("cannot set up an HTTP client")
}

/// Trusts exactly one certificate (or, if it could not be read, none, saying why).
#[derive(Debug)]
struct Pinned {
    pinned: Result<rustls::pki_types::CertificateDer<'static>, String>,
    /// How the handshake's signatures are checked.
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match &self.pinned {
            Ok(pinned) if end_entity.as_ref() == pinned.as_ref() => {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            Ok(_) => Err(rustls::Error::General(
                "the node's certificate is not the one in its data dir".to_string(),
            )),
            Err(why) => Err(rustls::Error::General(why.clone())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
