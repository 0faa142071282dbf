//! TLS with rustls: termination for clients (certificates picked by SNI,
//! ALPN for HTTP/2 and HTTP/1.1) and connections to `https://` upstreams
//! (verified against the system's roots or a configured CA, SNI, optional
//! client certificate).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::config::{Invalid, ServerTls, UpstreamTls};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain in a PEM file.
fn certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, Invalid> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect)
        .map_err(|e| Invalid::new(key, format!("cannot read certificates from {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Invalid::new(key, format!("{} holds no certificate", path.display())));
    }
    Ok(certs)
}

/// The private key in a PEM file.
fn private_key(path: &Path, key: &str) -> Result<PrivateKeyDer<'static>, Invalid> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| Invalid::new(key, format!("cannot read a private key from {}: {e}", path.display())))
}

/// The server side: every certificate loaded and checked against its key.
pub fn server_config(tls: &ServerTls, base_dir: &Path) -> Result<Arc<rustls::ServerConfig>, Invalid> {
    let provider = provider();
    let mut entries = Vec::with_capacity(tls.certificates.len());
    for (i, c) in tls.certificates.iter().enumerate() {
        let key_path = format!("server.tls.certificates[{i}]");
        let chain = certs(&base_dir.join(&c.cert), &format!("{key_path}.cert"))?;
        let key = private_key(&base_dir.join(&c.key), &format!("{key_path}.key"))?;
        let certified = CertifiedKey::from_der(chain, key, &provider)
            .map_err(|e| Invalid::new(key_path.clone(), format!("the key does not fit the certificate: {e}")))?;
        let names = c.names.iter().map(|n| n.to_ascii_lowercase()).collect();
        entries.push((names, Arc::new(certified)));
    }
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Invalid::new("server.tls", e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BySni { entries }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Picks the certificate whose names match the client's SNI (exactly, or
/// by a `*.` wildcard one label deep); the first certificate otherwise.
#[derive(Debug)]
struct BySni {
    entries: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = hello.server_name() {
            let sni = sni.to_ascii_lowercase();
            let wildcard = sni.split_once('.').map(|(_, rest)| format!("*.{rest}"));
            for (names, key) in &self.entries {
                if names.iter().any(|n| *n == sni || Some(n) == wildcard.as_ref()) {
                    return Some(Arc::clone(key));
                }
            }
        }
        self.entries.first().map(|(_, key)| Arc::clone(key))
    }
}

/// The client side for one upstream.
pub fn client_config(
    tls: &UpstreamTls,
    protocol: crate::config::UpstreamProtocol,
    base_dir: &Path,
    upstream: &str,
) -> Result<Arc<rustls::ClientConfig>, Invalid> {
    let key = format!("upstreams.{upstream}.tls");
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| Invalid::new(key.clone(), e.to_string()))?;
    let builder = if tls.insecure_skip_verify {
        tracing::warn!(
            upstream,
            "TLS CERTIFICATE VERIFICATION IS OFF for this upstream (tls.insecure_skip_verify): \
             anyone on the path can read and change its traffic"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &tls.ca {
            Some(ca) => {
                for cert in certs(&base_dir.join(ca), &format!("{key}.ca"))? {
                    roots
                        .add(cert)
                        .map_err(|e| Invalid::new(format!("{key}.ca"), format!("not a usable CA certificate: {e}")))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    // Not an error here: plain http:// endpoints do not
                    // care, and an https:// one fails its handshake with
                    // a log that says why.
                    tracing::warn!(
                        upstream,
                        "no system CA certificates found; give tls.ca to verify https:// endpoints"
                    );
                }
            }
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(private)) => builder
            .with_client_auth_cert(
                certs(&base_dir.join(cert), &format!("{key}.client_cert"))?,
                private_key(&base_dir.join(private), &format!("{key}.client_key"))?,
            )
            .map_err(|e| Invalid::new(format!("{key}.client_key"), e.to_string()))?,
        _ => builder.with_no_client_auth(),
    };
    use crate::config::UpstreamProtocol as P;
    config.alpn_protocols = match protocol {
        P::Http1 => vec![b"http/1.1".to_vec()],
        P::H2 | P::H2c => vec![b"h2".to_vec()],
        P::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    Ok(Arc::new(config))
}

/// The name to send as SNI and verify: `sni` if configured, else `host`.
pub fn server_name(sni: Option<&str>, host: &str) -> Result<ServerName<'static>, String> {
    let name = sni.unwrap_or_else(|| host.trim_start_matches('[').trim_end_matches(']'));
    ServerName::try_from(name.to_owned()).map_err(|e| format!("invalid TLS server name {name:?}: {e}"))
}

/// `insecure_skip_verify`: accepts any certificate, but still checks the
/// handshake signatures (so the connection is at least to whoever holds
/// the key it showed).
#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
