//! TLS for both directions, with rustls (aws-lc-rs provider, which also covers P-521).
//!
//! * Server: auto-TLS as IPA does it for Ironic ≥ 1.68: a self-signed EC certificate whose IP
//!   SAN is the advertised address, `notBefore` backdated by the allowed clock skew, sent to the
//!   conductor as `agent_verify_ca`. The key and cert are kept in the state directory and reused
//!   for the same address, because the conductor rejects a heartbeat whose CA changed.
//! * Client: verification of the Ironic API (and image servers) against a CA file or the system
//!   bundle, or none at all with `ipa-insecure`.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::{Curve, TlsVersion};
use crate::state::StateDir;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating the TLS certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("reading {path}: {reason}")]
    File { path: String, reason: String },
    #[error("no usable certificate in {0}")]
    NoCert(String),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

/// A server identity: PEM (sent to the conductor) and DER (for rustls).
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub certs: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    /// False for operator-provided static files: their CA is not ours to advertise.
    pub auto: bool,
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn versions(min: TlsVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    match min {
        TlsVersion::V1_2 => rustls::ALL_VERSIONS,
        TlsVersion::V1_3 => TLS13_ONLY,
    }
}

/// Generate a self-signed certificate for `ip`, IPA-style (CN = host name, critical IP SAN).
pub fn generate(
    ip: IpAddr,
    curve: Curve,
    skew: Duration,
    hostname: &str,
) -> Result<(String, String), TlsError> {
    generate_with(ip, KeyPair::generate(curve)?, skew, hostname)
}

/// A private key made ahead of time: generating one (and the crypto library's first use)
/// takes about half a second under emulation, so the agent makes it while it waits for its
/// NIC and the lookup, before it knows the address the certificate names.
pub struct KeyPair {
    curve: Curve,
    key: rcgen::KeyPair,
}

impl KeyPair {
    pub fn generate(curve: Curve) -> Result<KeyPair, TlsError> {
        let alg = match curve {
            Curve::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Curve::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Curve::P521 => &rcgen::PKCS_ECDSA_P521_SHA512,
        };
        Ok(KeyPair {
            curve,
            key: rcgen::KeyPair::generate_for(alg)?,
        })
    }
}

fn generate_with(
    ip: IpAddr,
    key: KeyPair,
    skew: Duration,
    hostname: &str,
) -> Result<(String, String), TlsError> {
    let key = key.key;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, hostname);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![rcgen::SanType::IpAddress(ip)];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::seconds(skew.as_secs() as i64);
    params.not_after = now + time::Duration::days(30);
    let serial: [u8; 16] = rand::random();
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial[..]));
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn parse_identity(
    cert_pem: &str,
    key_pem: &str,
    what: &str,
    auto: bool,
) -> Result<Identity, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::File {
            path: what.into(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(what.into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::File {
        path: what.into(),
        reason: format!("private key: {e}"),
    })?;
    Ok(Identity {
        cert_pem: cert_pem.to_string(),
        certs,
        key: Arc::new(key),
        auto,
    })
}

/// Reuse the certificate kept in the state directory for this address, or make a new one.
pub fn auto_identity(
    state: &StateDir,
    ip: IpAddr,
    curve: Curve,
    skew: Duration,
    pregenerated: Option<KeyPair>,
) -> Result<Identity, TlsError> {
    let ip_s = ip.to_string();
    if let (Some(c), Some(k), Some(for_ip)) = (
        state.read("agent.crt"),
        state.read("agent.key"),
        state.read("agent.ip"),
    ) {
        if String::from_utf8_lossy(&for_ip) == ip_s {
            let (c, k) = (String::from_utf8_lossy(&c), String::from_utf8_lossy(&k));
            if let Ok(id) = parse_identity(&c, &k, "state directory", true) {
                tracing::info!(ip = %ip_s, "reusing the auto-TLS certificate of this boot");
                return Ok(id);
            }
        }
    }
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into());
    // The key made ahead of time, unless the lookup changed the curve since.
    let key = match pregenerated {
        Some(k) if k.curve == curve => k,
        _ => KeyPair::generate(curve)?,
    };
    let (cert_pem, key_pem) = generate_with(ip, key, skew, &hostname)?;
    state.write("agent.key", key_pem.as_bytes())?;
    state.write("agent.crt", cert_pem.as_bytes())?;
    state.write("agent.ip", ip_s.as_bytes())?;
    tracing::info!(ip = %ip_s, ?curve, "generated a self-signed auto-TLS certificate");
    parse_identity(&cert_pem, &key_pem, "generated", true)
}

/// Operator-provided certificate and key files.
pub fn static_identity(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| TlsError::File {
            path: p.display().to_string(),
            reason: e.to_string(),
        })
    };
    parse_identity(
        &read(cert)?,
        &read(key)?,
        &cert.display().to_string(),
        false,
    )
}

pub fn server_config(
    id: &Identity,
    min: TlsVersion,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(min))?
        .with_no_client_auth()
        .with_single_cert(id.certs.clone(), id.key.clone_key())?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Client TLS for the Ironic API and image downloads.
pub fn client_config(
    insecure: bool,
    ca_file: Option<&Path>,
    min: TlsVersion,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(min))?;
    if insecure {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    let bundle = ca_file.map(Path::to_path_buf).or_else(|| {
        [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
        ]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
    });
    if let Some(path) = bundle {
        let pem = std::fs::read(&path).map_err(|e| TlsError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        for c in CertificateDer::pem_slice_iter(&pem).flatten() {
            let _ = roots.add(c);
        }
        if roots.is_empty() && ca_file.is_some() {
            return Err(TlsError::NoCert(path.display().to_string()));
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// `ipa-insecure`: accept any server certificate (signatures are still checked so the
/// handshake itself is sound).
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
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
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_curve_generates_and_loads_into_rustls() {
        for curve in [Curve::P256, Curve::P384, Curve::P521] {
            let (c, k) = generate(
                "10.0.0.5".parse().unwrap(),
                curve,
                Duration::from_secs(3600),
                "h",
            )
            .unwrap();
            assert!(c.starts_with("-----BEGIN CERTIFICATE-----"));
            let id = parse_identity(&c, &k, "t", true).unwrap();
            server_config(&id, TlsVersion::V1_3).unwrap();
        }
    }

    #[test]
    fn auto_identity_is_stable_for_the_same_ip() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = auto_identity(&s, ip, Curve::P256, Duration::from_secs(60), None).unwrap();
        let b = auto_identity(&s, ip, Curve::P256, Duration::from_secs(60), None).unwrap();
        assert_eq!(a.cert_pem, b.cert_pem);
        let c = auto_identity(
            &s,
            "127.0.0.2".parse().unwrap(),
            Curve::P256,
            Duration::from_secs(60),
            Some(KeyPair::generate(Curve::P384).unwrap()),
        )
        .unwrap();
        assert_ne!(a.cert_pem, c.cert_pem);
        // A key made ahead for another curve is not used: the certificate has the curve asked.
        let der = c.certs[0].as_ref();
        let p256_oid = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        assert!(der.windows(p256_oid.len()).any(|w| w == p256_oid));
    }
}
