//! HTTPS in the listener: rustls (with the ring provider) configured from the PEM files of
//! dialpad.http_tls_cert and dialpad.http_tls_key. The main thread loads them at start and
//! again on every reload (SIGHUP); a connection accepted afterwards uses the new ones,
//! connections already open keep theirs. A reload whose files do not load keeps the old.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

/// The acceptor new connections use: None while the listener speaks plain HTTP.
#[derive(Default)]
pub(crate) struct TlsSlot(Mutex<Option<TlsAcceptor>>);

impl TlsSlot {
    pub(crate) fn set(&self, acceptor: Option<TlsAcceptor>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = acceptor;
    }

    pub(crate) fn get(&self) -> Option<TlsAcceptor> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A TLS acceptor serving the certificate chain in `cert` with the private key in `key`
/// (PEM files), HTTP/1.1 only; or why not, in words for the server log.
pub(crate) fn load(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("cannot read certificates from \"{}\": {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("\"{}\" holds no PEM certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from \"{}\": {e}", key.display()))?;
    // The ring provider: it builds with a C compiler alone (aws-lc-rs, rustls' default, needs
    // more of a toolchain than our packagers have). It lacks post-quantum key exchange only,
    // hence the deprecation; X25519 and the NIST curves are there.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and key do not make a TLS configuration: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_files_say_which() {
        let dir = std::env::temp_dir().join(format!("dialpad-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = load(&dir.join("nope.pem"), &empty).err().unwrap();
        assert!(err.contains("nope.pem"), "{err}");
        let err = load(&empty, &empty).err().unwrap();
        assert!(err.contains("no PEM certificate"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
