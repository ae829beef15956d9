//! The TLS listener's rustls configuration, from PEM files.
//!
//! rustls with the `ring` provider (no C toolchain beyond what `ring` needs,
//! builds for the Pi). With `client_ca_file`, every TLS client must present a
//! certificate chaining to one of those CAs; the handshake fails otherwise.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::config::TlsConfig;
use super::error::StartError;

pub fn server_config(config: &TlsConfig) -> Result<Arc<ServerConfig>, StartError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?;
    let builder = match &config.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(path)? {
                roots.add(cert).map_err(|e| file_error(path, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| file_error(path, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let certs = load_certs(&config.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&config.key_file)
        .map_err(|e| file_error(&config.key_file, e))?;
    let server = builder
        .with_single_cert(certs, key)
        .map_err(|e| file_error(&config.cert_file, e))?;
    Ok(Arc::new(server))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, StartError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> StartError {
    StartError::TlsFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}
