//! TLS certificates chosen by the name the client asks for (SNI), and
//! re-read without a restart.
//!
//! [`Certificates`] is the server's rustls certificate resolver: each
//! handshake takes the first certificate valid for the client's SNI name
//! (wildcards as the certificate states them), or the first certificate
//! when none is, or when the client sends no name. [`Certificates::reload`]
//! (through [`Reload`]) re-reads every certificate and key file and swaps
//! the set in at once: new handshakes use the new set, sessions already in
//! TLS keep theirs. A pair that fails to load keeps its old certificate,
//! so the server never ends up without TLS.
//!
//! ```
//! use smtp_server::certs::Certificates;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let ck = rcgen::generate_simple_self_signed(vec!["mx.example".into()]).unwrap();
//! let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
//! std::fs::write(&cert, ck.cert.pem()).unwrap();
//! std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
//! let certs = Certificates::from_files([(cert, key)]).unwrap();
//! let tls = certs.server_config(); // for `Server::tls`; reloads reach it
//! assert_eq!(certs.len(), 1);
//! # let _ = tls;
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::reload::{Reload, Swap};

/// The server's certificates: one per name set, the first the default.
pub struct Certificates {
    /// The (certificate chain, private key) PEM files, in order; empty for
    /// certificates given in memory.
    files: Vec<(PathBuf, PathBuf)>,
    keys: Swap<Vec<Arc<CertifiedKey>>>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("files", &self.files)
            .field("certificates", &self.len())
            .finish()
    }
}

impl Certificates {
    /// Reads every `(certificate chain, private key)` PEM pair, in order
    /// (the first is the default). Fails on the first pair that does not load.
    pub fn from_files(
        pairs: impl IntoIterator<Item = (PathBuf, PathBuf)>,
    ) -> Result<Arc<Certificates>, String> {
        let files: Vec<(PathBuf, PathBuf)> = pairs.into_iter().collect();
        if files.is_empty() {
            return Err("no certificate given".into());
        }
        let keys = files
            .iter()
            .map(|(c, k)| load_pair(c, k))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(Certificates {
            files,
            keys: Swap::new(keys),
        }))
    }

    /// Certificates already in memory (the first is the default); replace
    /// them with [`Certificates::set`] (e.g. from an ACME client).
    pub fn from_keys(keys: Vec<Arc<CertifiedKey>>) -> Arc<Certificates> {
        Arc::new(Certificates {
            files: Vec::new(),
            keys: Swap::new(keys),
        })
    }

    /// Replaces every certificate at once (new handshakes use them).
    pub fn set(&self, keys: Vec<Arc<CertifiedKey>>) {
        self.keys.set(keys);
    }

    /// How many certificates there are.
    pub fn len(&self) -> usize {
        self.keys.get().len()
    }

    /// Whether there is none (the server then fails every handshake).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A rustls server configuration (safe defaults, TLS 1.2 and 1.3, the
    /// ring provider) that takes its certificates from `self` at each
    /// handshake.
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_no_client_auth().with_cert_resolver(self.clone()));
        // The ring provider supports the default versions.
        match config {
            Ok(c) => Arc::new(c),
            Err(e) => unreachable!("ring supports TLS 1.2 and 1.3: {e}"),
        }
    }

    /// The certificate for `name`: the first valid for it, else the default.
    fn choose(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let keys = self.keys.get();
        if keys.len() < 2 {
            // Nothing to choose from (no certificate parsed per handshake).
            return keys.first().cloned();
        }
        let name = name.and_then(|n| DnsName::try_from(n).ok().map(|d| d.to_lowercase_owned()));
        if let Some(name) = name.map(ServerName::DnsName) {
            let valid = |k: &&Arc<CertifiedKey>| {
                k.end_entity_cert()
                    .and_then(ParsedCertificate::try_from)
                    .and_then(|c| rustls::client::verify_server_name(&c, &name))
                    .is_ok()
            };
            if let Some(k) = keys.iter().find(valid) {
                return Some(k.clone());
            }
        }
        keys.first().cloned()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(hello.server_name())
    }
}

/// Re-reads every pair; one that fails keeps its old certificate (and is
/// reported), the others are swapped in together.
impl Reload for Certificates {
    fn reload(&self) -> Result<(), String> {
        if self.files.is_empty() {
            return Ok(());
        }
        let old = self.keys.get();
        let mut errors = Vec::new();
        let keys = (self.files.iter().enumerate())
            .filter_map(|(i, (c, k))| match load_pair(c, k) {
                Ok(key) => Some(key),
                Err(e) => {
                    errors.push(format!("{e}; keeping the old certificate"));
                    old.get(i).cloned()
                }
            })
            .collect();
        self.keys.set(keys);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// Reads a PEM certificate chain and its private key, checking that they
/// belong together.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("cannot read certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read private key {}: {e}", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(certs, der, &provider)
        .map(Arc::new)
        .map_err(|e| {
            format!(
                "bad certificate {} or key {}: {e}",
                cert.display(),
                key.display()
            )
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn write(dir: &Path, tag: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let ck = rcgen::generate_simple_self_signed(names).unwrap();
        let (c, k) = (
            dir.join(format!("{tag}.crt")),
            dir.join(format!("{tag}.key")),
        );
        std::fs::write(&c, ck.cert.pem()).unwrap();
        std::fs::write(&k, ck.signing_key.serialize_pem()).unwrap();
        (c, k)
    }

    fn der(k: &Arc<CertifiedKey>) -> Vec<u8> {
        k.cert[0].to_vec()
    }

    #[test]
    fn sni_picks_the_matching_certificate_else_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a", &["mx.example.org"]);
        let b = write(dir.path(), "b", &["*.example.net", "example.net"]);
        let certs = Certificates::from_files([a, b]).unwrap();
        let keys = certs.keys.get();
        let pick = |n| der(&certs.choose(n).unwrap());
        assert_eq!(pick(Some("mx.example.org")), der(&keys[0]));
        assert_eq!(pick(Some("MX.Example.NET")), der(&keys[1]));
        assert_eq!(pick(Some("example.net")), der(&keys[1]));
        assert_eq!(pick(Some("a.b.example.net")), der(&keys[0]), "one label");
        assert_eq!(pick(Some("other.test")), der(&keys[0]));
        assert_eq!(pick(Some("not a name")), der(&keys[0]));
        assert_eq!(pick(None), der(&keys[0]));
    }

    #[test]
    fn reload_swaps_good_pairs_and_keeps_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a", &["a.test"]);
        let b = write(dir.path(), "b", &["b.test"]);
        let certs = Certificates::from_files([a.clone(), b.clone()]).unwrap();
        let before = certs.keys.get();
        write(dir.path(), "a", &["a.test"]);
        std::fs::write(&b.1, "not a key").unwrap();
        let e = certs.reload().unwrap_err();
        assert!(e.contains("b.key") && e.contains("keeping"), "{e}");
        let after = certs.keys.get();
        assert_ne!(der(&after[0]), der(&before[0]), "a renewed");
        assert_eq!(der(&after[1]), der(&before[1]), "b kept");
        // A key that belongs to another certificate is refused too.
        let other = write(dir.path(), "c", &["c.test"]);
        std::fs::copy(&other.1, &a.1).unwrap();
        assert!(
            load_pair(&a.0, &a.1)
                .unwrap_err()
                .contains("bad certificate")
        );
        assert!(Certificates::from_files([]).is_err());
    }
}
