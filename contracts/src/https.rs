//! The balancer's HTTPS flags, which `cargo immutant balancer` takes and passes on to
//! `immutant-server balancer` as they are: one definition, so that the two never differ.

use std::path::PathBuf;

/// How the balancer serves HTTPS.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct HttpsFlags {
    /// The HTTPS port [default: 8443, when certificates are given].
    #[arg(long, value_name = "PORT")]
    pub tls_port: Option<u16>,

    /// A PEM certificate chain for HTTPS, with its --key; repeat both for one certificate per
    /// host name (chosen by SNI; the first is served for every other name).
    #[arg(long = "cert", value_name = "FILE")]
    pub certs: Vec<PathBuf>,

    /// The PEM private key of the --cert given in the same place (readable by this user alone).
    #[arg(long = "key", value_name = "FILE")]
    pub keys: Vec<PathBuf>,

    /// Answer plain HTTP with a redirect (308) to the same address over HTTPS.
    #[arg(long)]
    pub redirect_http: bool,

    /// Say Strict-Transport-Security over HTTPS (browsers then use nothing else for a year).
    #[arg(long)]
    pub hsts: bool,

    /// Speak HTTP/2 without TLS (prior knowledge) on the plain port too.
    #[arg(long)]
    pub h2c: bool,
}

/// The HTTPS port when certificates are given and no port is.
pub const DEFAULT_TLS_PORT: u16 = 8443;

/// A certificate chain's file and its key's.
pub type CertificatePair = (PathBuf, PathBuf);

impl HttpsFlags {
    /// The arguments that give these flags again, files made absolute (the server may run
    /// elsewhere); the file it cannot make absolute, if one.
    pub fn to_args(&self) -> Result<Vec<String>, PathBuf> {
        let mut args = Vec::new();
        if let Some(port) = self.tls_port {
            args.extend(["--tls-port".to_string(), port.to_string()]);
        }
        for (flag, files) in [("--cert", &self.certs), ("--key", &self.keys)] {
            for file in files {
                let file = std::path::absolute(file).map_err(|_| file.clone())?;
                args.extend([flag.to_string(), file.display().to_string()]);
            }
        }
        for (flag, given) in [
            ("--redirect-http", self.redirect_http),
            ("--hsts", self.hsts),
            ("--h2c", self.h2c),
        ] {
            if given {
                args.push(flag.to_string());
            }
        }
        Ok(args)
    }

    /// Every certificate with its key, and the port; none without certificates. Refuses
    /// certificates without keys (or keys without certificates), and HTTPS flags without
    /// certificates, saying what to give.
    pub fn pairs(&self) -> Result<Option<(u16, Vec<CertificatePair>)>, String> {
        if self.certs.len() != self.keys.len() {
            return Err(format!(
                "{} --cert but {} --key given; give each certificate's key after it",
                self.certs.len(),
                self.keys.len()
            ));
        }
        if self.certs.is_empty() {
            let without = [
                (self.tls_port.is_some(), "--tls-port"),
                (self.redirect_http, "--redirect-http"),
                (self.hsts, "--hsts"),
            ];
            return match without.iter().find(|(given, _)| *given) {
                Some((_, flag)) => Err(format!(
                    "{flag} needs HTTPS: give its certificate and key with --cert FILE --key FILE"
                )),
                None => Ok(None),
            };
        }
        let pairs = self.certs.iter().cloned().zip(self.keys.clone()).collect();
        Ok(Some((self.tls_port.unwrap_or(DEFAULT_TLS_PORT), pairs)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        https: HttpsFlags,
    }

    #[test]
    fn the_flags_given_again_are_the_flags() {
        let given = [
            "x", "--cert", "/a.pem", "--key", "/a.key", "--cert", "/b.pem", "--key", "/b.key",
            "--hsts",
        ];
        let flags = Command::parse_from(given).https;
        let again =
            Command::parse_from(std::iter::once("x".to_string()).chain(flags.to_args().unwrap()))
                .https;
        assert_eq!(again.certs, flags.certs);
        assert_eq!(again.keys, flags.keys);
        assert!(again.hsts && !again.redirect_http);
        let (port, pairs) = again.pairs().unwrap().unwrap();
        assert_eq!(port, DEFAULT_TLS_PORT);
        assert_eq!(pairs[1], (PathBuf::from("/b.pem"), PathBuf::from("/b.key")));
        let lone = Command::parse_from(["x", "--redirect-http"]).https;
        assert!(
            lone.pairs()
                .unwrap_err()
                .starts_with("--redirect-http needs HTTPS")
        );
    }
}
