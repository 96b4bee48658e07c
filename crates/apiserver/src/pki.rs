//! First-start credentials: a CA, a serving certificate for the listen address and localhost, the
//! bearer tokens, and an admin kubeconfig. Everything lives under `DATA_DIR` and is reused on the
//! next start; the serving certificate is reissued when the names it must cover change.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// A credential failure, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Bad { path: String, message: String },
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Every verb on every resource.
    Admin,
    /// get, list and watch only.
    ReadOnly,
    /// A node agent joining with the node token: every verb on objects (its launchers read the
    /// VMIs' Secrets), but none of the VM subresources users are given (console, VNC, pause…).
    Node,
}

/// One bearer token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub token: String,
    pub user: String,
    pub role: Role,
}

/// The serving identity and the accepted tokens.
#[derive(Clone)]
pub struct Credentials {
    pub ca_pem: String,
    /// The client certificate (PEM) the API server presents to node agents' endpoints.
    pub client_cert_pem: String,
    pub client_key_pem: String,
    /// What `kuvirt agent --token-file` reads: `kuvirt1:<SHA-256 of the CA, hex>:<node token>`,
    /// so an agent can check the server it joins before sending its token.
    pub join_token: String,
    pub tls: Arc<rustls::ServerConfig>,
    pub tokens: Vec<Token>,
    pub kubeconfig: PathBuf,
}

impl Credentials {
    /// The token's user and role, if the token is known.
    pub fn authenticate(&self, bearer: &str) -> Option<&Token> {
        // Compare every token in full so timing says nothing about which prefix matched.
        let mut found = None;
        for t in &self.tokens {
            if constant_time_eq(t.token.as_bytes(), bearer.as_bytes()) {
                found = Some(t);
            }
        }
        found
    }

    /// The first token with `role`.
    pub fn token_for(&self, role: Role) -> Option<&Token> {
        self.tokens.iter().find(|t| t.role == role)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Loads or creates the credentials in `data_dir`. `hosts` are the DNS names and IP addresses the
/// serving certificate must cover; `server_url` goes into the kubeconfig.
pub fn ensure(
    data_dir: &Path,
    hosts: &[String],
    server_url: &str,
) -> Result<Credentials, PkiError> {
    let pki = data_dir.join("pki");
    fs::create_dir_all(&pki).map_err(io(&pki))?;
    let (ca_params, ca_key, ca_pem) = ca(&pki)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let (cert_pem, key_pem) = serving(&pki, hosts, &issuer)?;
    let (client_cert_pem, client_key_pem) = client(&pki, &issuer)?;
    let tokens = tokens(&data_dir.join("tokens.json"))?;
    let node = tokens
        .iter()
        .find(|t| t.role == Role::Node)
        .ok_or_else(|| PkiError::Bad {
            path: data_dir.join("tokens.json").display().to_string(),
            message: "no node token".into(),
        })?;
    let join_token = format!("kuvirt1:{}:{}", ca_sha256(&ca_pem)?, node.token);
    write_private(
        &data_dir.join("node-token"),
        format!("{join_token}\n").as_bytes(),
    )?;

    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Bad {
            path: pki.join("server.crt").display().to_string(),
            message: e.to_string(),
        })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| PkiError::Bad {
        path: pki.join("server.key").display().to_string(),
        message: e.to_string(),
    })?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

    let kubeconfig = data_dir.join("kubeconfig");
    let admin = tokens
        .iter()
        .find(|t| t.role == Role::Admin)
        .ok_or_else(|| PkiError::Bad {
            path: data_dir.join("tokens.json").display().to_string(),
            message: "no admin token".into(),
        })?;
    write_private(
        &kubeconfig,
        kubeconfig_text(server_url, &ca_pem, &admin.token).as_bytes(),
    )?;
    Ok(Credentials {
        ca_pem,
        client_cert_pem,
        client_key_pem,
        join_token,
        tls: Arc::new(tls),
        tokens,
        kubeconfig,
    })
}

/// A kubeconfig for `server` trusting `ca_pem` with a bearer token.
pub fn kubeconfig_text(server: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kuvirt\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: kuvirt\n  context:\n    cluster: kuvirt\n    user: admin\n    namespace: default\ncurrent-context: kuvirt\n"
    )
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kuvirt-ca");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    p
}

/// The CA: loaded when present, else created. Returns its parameters (for signing), key and PEM.
fn ca(pki: &Path) -> Result<(CertificateParams, KeyPair, String), PkiError> {
    let crt = pki.join("ca.crt");
    let key = pki.join("ca.key");
    if crt.exists() && key.exists() {
        let key_pem = fs::read_to_string(&key).map_err(io(&key))?;
        let cert_pem = fs::read_to_string(&crt).map_err(io(&crt))?;
        let kp = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Bad {
            path: key.display().to_string(),
            message: e.to_string(),
        })?;
        return Ok((ca_params(), kp, cert_pem));
    }
    let kp = KeyPair::generate()?;
    let cert = ca_params().self_signed(&kp)?;
    write_private(&key, kp.serialize_pem().as_bytes())?;
    write_private(&crt, cert.pem().as_bytes())?;
    // A new CA invalidates any certificate signed by an old one.
    let _ = fs::remove_file(pki.join("server.names"));
    let _ = fs::remove_file(pki.join("client.crt"));
    Ok((ca_params(), kp, cert.pem()))
}

/// The serving certificate, reissued when `hosts` changed.
fn serving(
    pki: &Path,
    hosts: &[String],
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(String, String), PkiError> {
    let crt = pki.join("server.crt");
    let key = pki.join("server.key");
    let names = pki.join("server.names");
    let want = hosts.join("\n");
    if crt.exists() && key.exists() && fs::read_to_string(&names).ok().as_deref() == Some(&want) {
        let c = fs::read_to_string(&crt).map_err(io(&crt))?;
        let k = fs::read_to_string(&key).map_err(io(&key))?;
        return Ok((c, k));
    }
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kuvirt-apiserver");
    p.distinguished_name = dn;
    p.subject_alt_names = hosts
        .iter()
        .map(|h| match h.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => h.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()?;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let kp = KeyPair::generate()?;
    let cert = p.signed_by(&kp, issuer)?;
    write_private(&key, kp.serialize_pem().as_bytes())?;
    fs::write(&crt, cert.pem()).map_err(io(&crt))?;
    fs::write(&names, &want).map_err(io(&names))?;
    Ok((cert.pem(), kp.serialize_pem()))
}

/// SHA-256 (hex) of the first certificate in `pem`: what a join token pins.
pub fn ca_sha256(pem: &str) -> Result<String, PkiError> {
    use sha2::Digest;
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| PkiError::Bad {
            path: "ca.crt".into(),
            message: "no certificate".into(),
        })?;
    Ok(hex::encode(sha2::Sha256::digest(der.as_ref())))
}

/// The API server's client certificate for node agents' endpoints (client auth only, so no
/// other certificate the CA signed can stand in for it).
fn client(pki: &Path, issuer: &Issuer<'_, KeyPair>) -> Result<(String, String), PkiError> {
    let crt = pki.join("client.crt");
    let key = pki.join("client.key");
    if let (Ok(c), Ok(k)) = (fs::read_to_string(&crt), fs::read_to_string(&key)) {
        return Ok((c, k));
    }
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kuvirt-apiserver-client");
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let kp = KeyPair::generate()?;
    let cert = p.signed_by(&kp, issuer)?;
    write_private(&key, kp.serialize_pem().as_bytes())?;
    fs::write(&crt, cert.pem()).map_err(io(&crt))?;
    Ok((cert.pem(), kp.serialize_pem()))
}

/// The token file: created with an admin, a read-only and a node token when missing (a file
/// from before node tokens gets one added).
fn tokens(path: &Path) -> Result<Vec<Token>, PkiError> {
    if path.exists() {
        let text = fs::read(path).map_err(io(path))?;
        let mut tokens: Vec<Token> = serde_json::from_slice(&text).map_err(|e| PkiError::Bad {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        if !tokens.iter().any(|t| t.role == Role::Node) {
            tokens.push(node_token());
            save_tokens(path, &tokens)?;
        }
        return Ok(tokens);
    }
    let tokens = vec![
        Token {
            token: random_token(),
            user: "admin".into(),
            role: Role::Admin,
        },
        Token {
            token: random_token(),
            user: "viewer".into(),
            role: Role::ReadOnly,
        },
        node_token(),
    ];
    save_tokens(path, &tokens)?;
    Ok(tokens)
}

fn node_token() -> Token {
    Token {
        token: random_token(),
        user: "system:node".into(),
        role: Role::Node,
    }
}

fn save_tokens(path: &Path, tokens: &[Token]) -> Result<(), PkiError> {
    let json = serde_json::to_vec_pretty(&tokens).map_err(|e| PkiError::Bad {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    write_private(path, &json)
}

fn random_token() -> String {
    let mut b = [0u8; 24];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes a file only its owner can read, replacing it atomically.
fn write_private(path: &Path, data: &[u8]) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reused_and_reissued_for_new_names() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let a = ensure(dir.path(), &hosts, "https://127.0.0.1:6443").unwrap();
        let b = ensure(dir.path(), &hosts, "https://127.0.0.1:6443").unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.tokens, b.tokens);
        let cert = fs::read_to_string(dir.path().join("pki/server.crt")).unwrap();
        let more = vec!["127.0.0.1".to_string(), "10.9.8.7".to_string()];
        ensure(dir.path(), &more, "https://127.0.0.1:6443").unwrap();
        let cert2 = fs::read_to_string(dir.path().join("pki/server.crt")).unwrap();
        assert_ne!(cert, cert2, "new names need a new certificate");
        assert_eq!(
            a.authenticate(&a.tokens[0].token).unwrap().role,
            Role::Admin
        );
        assert!(a.authenticate("nope").is_none());
        let kc = fs::read_to_string(&a.kubeconfig).unwrap();
        assert!(kc.contains(&a.tokens[0].token));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("pki/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "ca.key readable by others");
    }
}
