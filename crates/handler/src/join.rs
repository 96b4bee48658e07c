//! Joining a control plane from another host (`kuvirt agent --server URL --token-file F`): the
//! join token (`kuvirt1:<SHA-256 of the cluster CA>:<node token>`, written by `kuvirt server` to
//! DATA_DIR/node-token) pins the CA, so the agent fetches the CA from `/cacerts`, checks its hash
//! and only then trusts the server with its token, in a kubeconfig of its own.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Digest;

/// A failure to join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("token file {path}: {message}")]
    Token { path: String, message: String },
    #[error("server URL {0:?}: expected https://HOST:PORT")]
    Url(String),
    #[error("server {url}: {message}")]
    Server { url: String, message: String },
    #[error(
        "server {url}: its CA (sha256 {got}) is not the one the join token names ({want}); wrong server or token"
    )]
    CaMismatch {
        url: String,
        got: String,
        want: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A parsed join token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 (hex, lower-case) of the cluster CA certificate (DER).
    pub ca_sha256: String,
    /// The node bearer token.
    pub token: String,
}

impl JoinToken {
    /// `kuvirt1:<64 hex>:<token>`.
    pub fn parse(text: &str) -> Result<JoinToken, String> {
        let text = text.trim();
        let mut parts = text.splitn(3, ':');
        let (Some(version), Some(hash), Some(token)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err("expected kuvirt1:<ca-sha256>:<token>".into());
        };
        if version != "kuvirt1" {
            return Err(format!(
                "unknown token format {version:?} (expected kuvirt1)"
            ));
        }
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("the CA hash is not 64 hex digits".into());
        }
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token is empty or not printable".into());
        }
        Ok(JoinToken {
            ca_sha256: hash.to_ascii_lowercase(),
            token: token.to_string(),
        })
    }

    pub fn read(path: &Path) -> Result<JoinToken, JoinError> {
        let text = std::fs::read_to_string(path).map_err(|e| JoinError::Token {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        JoinToken::parse(&text).map_err(|message| JoinError::Token {
            path: path.display().to_string(),
            message,
        })
    }
}

/// Accepts any server certificate (still checking the handshake signatures): only for fetching
/// the CA, whose hash is checked before anything secret is sent.
#[derive(Debug)]
struct AnyCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `host:port` of an `https://` URL.
fn authority(url: &str) -> Result<String, JoinError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| JoinError::Url(url.into()))?;
    let host_port = rest.split('/').next().unwrap_or_default();
    if host_port.is_empty() || !host_port.contains(':') {
        return Err(JoinError::Url(url.into()));
    }
    Ok(host_port.to_string())
}

/// Fetches `/cacerts` from `url` and returns the CA (PEM) if its hash is the token's.
pub async fn fetch_ca(url: &str, token: &JoinToken) -> Result<String, JoinError> {
    let server = |message: String| JoinError::Server {
        url: url.into(),
        message,
    };
    let authority = authority(url)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algs = provider.signature_verification_algorithms;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| server(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(algs)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(&authority),
    )
    .await
    .map_err(|_| server("connect timed out".into()))?
    .map_err(|e| server(e.to_string()))?;
    let name = ServerName::try_from("kuvirt").map_err(|e| server(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| server(e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| server(e.to_string()))?;
    tokio::spawn(conn);
    let req = hyper::Request::get("/cacerts")
        .header(hyper::header::HOST, authority.as_str())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| server(e.to_string()))?;
    let res = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .map_err(|_| server("no answer".into()))?
        .map_err(|e| server(e.to_string()))?;
    if !res.status().is_success() {
        return Err(server(format!("/cacerts answered {}", res.status())));
    }
    let body =
        http_body_util::BodyExt::collect(http_body_util::Limited::new(res.into_body(), 64 * 1024))
            .await
            .map_err(|e| server(e.to_string()))?
            .to_bytes();
    let certs = CertificateDer::pem_slice_iter(&body)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| server(format!("/cacerts: {e}")))?;
    // Exactly the one certificate the token pins: anything more would be trusted unchecked.
    let [der] = certs.as_slice() else {
        return Err(server(format!(
            "/cacerts holds {} certificates, expected exactly one",
            certs.len()
        )));
    };
    let got = hex::encode(sha2::Sha256::digest(der.as_ref()));
    if got != token.ca_sha256 {
        return Err(JoinError::CaMismatch {
            url: url.into(),
            got,
            want: token.ca_sha256.clone(),
        });
    }
    Ok(pem_of(der))
}

/// The PEM text of one DER certificate (what was verified, not what was sent).
fn pem_of(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A kubeconfig for `url` trusting `ca_pem`, authenticating with the node token.
pub fn kubeconfig_text(url: &str, ca_pem: &str, token: &str) -> String {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kuvirt\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\nusers:\n- name: node\n  user:\n    token: {token}\ncontexts:\n- name: kuvirt\n  context:\n    cluster: kuvirt\n    user: node\n    namespace: default\ncurrent-context: kuvirt\n"
    )
}

/// Writes `data` to `path` readable by its owner only, replacing it atomically.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), JoinError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| JoinError::Io {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn tokens() {
        let h = "a".repeat(64);
        let t = JoinToken::parse(&format!("kuvirt1:{h}:abc123\n")).unwrap();
        assert_eq!(t.ca_sha256, h);
        assert_eq!(t.token, "abc123");
        assert!(JoinToken::parse("kuvirt2:aa:bb").is_err());
        assert!(JoinToken::parse(&format!("kuvirt1:{}:x", "g".repeat(64))).is_err());
        assert!(JoinToken::parse(&format!("kuvirt1:{h}:")).is_err());
        assert!(JoinToken::parse("garbage").is_err());
    }

    #[test]
    fn verified_certificates_are_re_encoded() {
        let der = [0x30u8, 0x03, 0x02, 0x01, 0x05];
        let pem = pem_of(&der);
        let back: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].as_ref(), &der);
    }

    #[test]
    fn urls() {
        assert_eq!(authority("https://10.0.0.1:6443").unwrap(), "10.0.0.1:6443");
        assert_eq!(authority("https://h:1/x").unwrap(), "h:1");
        assert!(authority("http://h:1").is_err());
        assert!(authority("https://h").is_err());
    }
}
