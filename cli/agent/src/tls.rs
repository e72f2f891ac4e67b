//! rustls configurations for both ends, always with the ring provider, TLS 1.3 and mutual
//! authentication against the cluster CA.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::http3;
use crate::pki::{Identity, Party};
use crate::proto::ALPN;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let v: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let v = v.map_err(|e| format!("bad certificate PEM: {e}"))?;
    if v.is_empty() {
        return Err("no certificate in PEM".into());
    }
    Ok(v)
}

fn key(pem: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| format!("bad key PEM: {e}"))
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, String> {
    let mut r = RootCertStore::empty();
    for c in certs(ca_pem)? {
        r.add(c).map_err(|e| format!("bad CA certificate: {e}"))?;
    }
    Ok(Arc::new(r))
}

/// The agent's side: only clients with a certificate from the cluster CA get in. It speaks
/// edgectl's protocol ([`ALPN`]) and HTTP/3 ([`http3::ALPN`]); see [`alpn`].
pub fn server(ca_pem: &str, id: &Identity) -> Result<quinn::ServerConfig, String> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider())
            .build()
            .map_err(|e| e.to_string())?;
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&id.cert_pem)?, key(&id.key_pem)?)
        .map_err(|e| e.to_string())?;
    c.alpn_protocols = vec![ALPN.to_vec(), http3::ALPN.to_vec()];
    let qc = quinn::crypto::rustls::QuicServerConfig::try_from(c).map_err(|e| e.to_string())?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(qc));
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(1024u32.into());
    sc.transport_config(Arc::new(t));
    Ok(sc)
}

/// A client that trusts `ca_pem` and presents `id` (or nothing, for refusal tests).
pub fn client(ca_pem: &str, id: Option<&Identity>) -> Result<quinn::ClientConfig, String> {
    client_for(ca_pem, id, &[ALPN])
}

/// [`client`] offering the application protocols `alpn`, e.g. [`http3::ALPN`] for HTTP/3.
pub fn client_for(
    ca_pem: &str,
    id: Option<&Identity>,
    alpn: &[&[u8]],
) -> Result<quinn::ClientConfig, String> {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(ca_pem)?);
    let mut c = match id {
        Some(id) => b
            .with_client_auth_cert(certs(&id.cert_pem)?, key(&id.key_pem)?)
            .map_err(|e| e.to_string())?,
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let qc = quinn::crypto::rustls::QuicClientConfig::try_from(c).map_err(|e| e.to_string())?;
    let mut cc = quinn::ClientConfig::new(Arc::new(qc));
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(std::time::Duration::from_secs(2)));
    cc.transport_config(Arc::new(t));
    Ok(cc)
}

/// The application protocol the handshake of `conn` settled on (`None`: the client offered
/// none, which the agent takes for its own protocol, as before HTTP/3 came).
pub fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// Whether the verified peer certificate of `conn` names `party`.
pub fn peer_is(conn: &quinn::Connection, party: Party) -> bool {
    let Some(any) = conn.peer_identity() else {
        return false;
    };
    let Ok(chain) = any.downcast::<Vec<CertificateDer<'static>>>() else {
        return false;
    };
    let Some(leaf) = chain.first() else {
        return false;
    };
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(party.dns_name()) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}
