//! TLS on both sides, with rustls: the listener's server configuration and
//! the configuration warren uses as a client of amqps:// brokers.
//!
//! Both are built from files at startup and again at reload; a file that
//! cannot be used is a configuration error naming the option and the file.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::config::{ConfigError, ListenerTls, UpstreamTls};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(option: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let fail = |why: String| ConfigError(format!("{option} {}: {why}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn private_key(option: &str, path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        ConfigError(format!(
            "{option} {}: no usable PEM private key ({e})",
            path.display()
        ))
    })
}

fn roots(option: &str, path: &Path) -> Result<RootCertStore, ConfigError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(option, path)? {
        store
            .add(cert)
            .map_err(|e| ConfigError(format!("{option} {}: {e}", path.display())))?;
    }
    Ok(store)
}

/// The TLS listener's configuration: its certificate, and client
/// certificate verification when `--tls-client-ca` is given.
pub fn server_config(tls: &ListenerTls) -> Result<Arc<ServerConfig>, ConfigError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError(format!("TLS listener: {e}")))?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots("--tls-client-ca", ca)?),
                provider(),
            )
            .build()
            .map_err(|e| ConfigError(format!("--tls-client-ca {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(
            certificates("--tls-cert", &tls.cert)?,
            private_key("--tls-key", &tls.key)?,
        )
        .map_err(|e| {
            ConfigError(format!(
                "--tls-cert {} and --tls-key {} do not make a usable pair: {e}",
                tls.cert.display(),
                tls.key.display()
            ))
        })?;
    Ok(Arc::new(config))
}

/// How warren connects to amqps:// brokers: verifying their certificate
/// and host name against the system's roots or `--upstream-ca`, unless
/// `--upstream-insecure`.
pub fn client_config(tls: &UpstreamTls) -> Result<Arc<ClientConfig>, ConfigError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError(format!("upstream TLS: {e}")))?;
    let builder = if tls.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
    } else {
        let store = match &tls.ca {
            Some(ca) => roots("--upstream-ca", ca)?,
            None => system_roots()?,
        };
        builder.with_root_certificates(store)
    };
    let config = match &tls.client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                certificates("--upstream-cert", cert)?,
                private_key("--upstream-key", key)?,
            )
            .map_err(|e| {
                ConfigError(format!(
                    "--upstream-cert {} and --upstream-key {} do not make a usable pair: {e}",
                    cert.display(),
                    key.display()
                ))
            })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn system_roots() -> Result<RootCertStore, ConfigError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(ConfigError(format!(
            "no system CA certificates to verify amqps:// brokers with ({} errors); \
             install ca-certificates or give --upstream-ca",
            found.errors.len()
        )));
    }
    Ok(store)
}

/// The name a broker's certificate must carry: the URL's host.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string()).map_err(|e| format!("'{host}' is not a TLS name: {e}"))
}

/// `--upstream-insecure`: accepts any certificate. The handshake signature
/// is still checked against it, which proves only that the peer holds that
/// certificate's key: anyone in the middle can present their own, so this
/// gives no protection against an active attacker.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
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
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
