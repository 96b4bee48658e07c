//! Talking to registries with oci-client: resolve a reference to a linux/amd64 manifest, download
//! blobs into the cache, push blobs and manifests. Plain HTTP for loopback registries and for
//! those listed as insecure; TLS (rustls with ring) everywhere else.

use std::io::Write as _;
use std::net::IpAddr;
use std::sync::Once;
use std::time::Duration;

use futures_util::StreamExt as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use super::auth::{self, Auth};
use super::cache::Cache;
use super::digest;
use super::error::{ErrorKind, KindResult};
use super::layout::{
    self, DOCKER_LIST, DOCKER_MANIFEST, Descriptor, Document, Manifest, OCI_INDEX, OCI_MANIFEST,
};

/// Whether to draw a progress bar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProgressMode {
    /// Nothing on the terminal.
    #[default]
    Silent,
    /// An indicatif bar on stderr counting layer bytes.
    Bar,
}

/// A progress bar for `bytes` of transfer, or a hidden one.
pub fn progress_bar(mode: ProgressMode, bytes: u64, label: &str) -> ProgressBar {
    match mode {
        ProgressMode::Silent => ProgressBar::hidden(),
        ProgressMode::Bar => {
            let bar = ProgressBar::with_draw_target(Some(bytes), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label.to_string());
            bar
        }
    }
}

/// True for registries we talk to over plain HTTP: loopback hosts and `insecure` entries
/// (matched as `host:port` or `host`).
pub fn is_plain_http(registry: &str, insecure: &[String]) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    let loopback = host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    loopback || insecure.iter().any(|i| i == registry || i == host)
}

fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // an error only says some provider is installed already, which is all we need
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A connection to one registry repository.
pub struct Registry {
    client: Client,
    reference: Reference,
    auth: RegistryAuth,
}

impl Registry {
    /// A client for `reference`'s registry.
    pub fn new(reference: &Reference, auth: &Auth, insecure: &[String]) -> Registry {
        install_crypto_provider();
        let host = reference.resolve_registry();
        let protocol = if is_plain_http(host, insecure) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
            ..ClientConfig::default()
        };
        Registry {
            client: Client::new(config),
            reference: reference.clone(),
            auth: auth::registry_auth(auth, host),
        }
    }

    /// Checks the registry answers and gets a token if it wants one.
    pub async fn login(&self, op: RegistryOperation) -> KindResult<()> {
        self.client
            .auth(&self.reference, &self.auth, op)
            .await
            .map(|_| ())
            .map_err(map_error)
    }

    /// The linux/amd64 image manifest the reference names: (raw bytes, digest, parsed).
    pub async fn resolve(&self) -> KindResult<(Vec<u8>, String, Manifest)> {
        let mut reference = self.reference.clone();
        for _ in 0..3 {
            let (bytes, digest) = self
                .client
                .pull_manifest_raw(
                    &reference,
                    &self.auth,
                    &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST],
                )
                .await
                .map_err(map_error)?;
            digest::verify_bytes(&bytes, &digest)?;
            match Document::parse(&bytes, None)? {
                Document::Image(m) => return Ok((bytes.to_vec(), digest, m)),
                Document::Index(index) => {
                    let entry = layout::select_platform(&index)?;
                    reference = self.reference.clone_with_digest(entry.digest.clone());
                }
            }
        }
        Err(ErrorKind::malformed("image index", "nested too deep"))
    }

    /// Downloads blob `desc` into the cache (verified), counting bytes on `bar`.
    pub async fn download(
        &self,
        desc: &Descriptor,
        cache: &Cache,
        bar: &ProgressBar,
    ) -> KindResult<()> {
        if cache.has_blob(&desc.digest) {
            bar.inc(desc.size);
            return Ok(());
        }
        let mut stream = self
            .client
            .pull_blob_stream(&self.reference, desc.digest.as_str())
            .await
            .map_err(map_error)?;
        let too_long = || {
            ErrorKind::Registry(format!(
                "download {}: registry sent more than the {} bytes the manifest declares",
                desc.digest, desc.size
            ))
        };
        if stream.content_length.is_some_and(|n| n > desc.size) {
            return Err(too_long());
        }
        let mut writer = cache.blob_writer(&desc.digest)?;
        let tmp_err = |e| ErrorKind::Io {
            context: format!("write blob {}", desc.digest),
            source: e,
        };
        // a hostile registry could send without end: nothing past the declared size is written
        let mut received: u64 = 0;
        while let Some(chunk) = stream.stream.next().await {
            let chunk =
                chunk.map_err(|e| ErrorKind::Registry(format!("download {}: {e}", desc.digest)))?;
            received = received.saturating_add(chunk.len() as u64);
            if received > desc.size {
                return Err(too_long());
            }
            writer.write_all(&chunk).map_err(tmp_err)?;
            bar.inc(chunk.len() as u64);
        }
        if received < desc.size {
            return Err(ErrorKind::Registry(format!(
                "download {}: registry sent {received} of the {} bytes the manifest declares",
                desc.digest, desc.size
            )));
        }
        writer.commit()
    }

    /// Uploads a blob from a file unless the registry has it already.
    pub async fn upload(
        &self,
        desc: &Descriptor,
        path: &std::path::Path,
        bar: &ProgressBar,
    ) -> KindResult<()> {
        let exists = self
            .client
            .blob_exists(&self.reference, &desc.digest)
            .await
            .map_err(map_error)?;
        if exists {
            bar.inc(desc.size);
            return Ok(());
        }
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| ErrorKind::io("open", path, e))?;
        let bar_clone = bar.clone();
        let chunks = futures_util::stream::unfold(file, move |mut file| {
            let bar = bar_clone.clone();
            async move {
                use tokio::io::AsyncReadExt as _;
                let mut buf = vec![0u8; 1 << 20];
                match file.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        bar.inc(n as u64);
                        Some((Ok(bytes::Bytes::from(buf)), file))
                    }
                    Err(e) => Some((Err(OciDistributionError::IoError(e)), file)),
                }
            }
        });
        self.client
            .push_blob_stream(&self.reference, chunks, &desc.digest, Some(desc.size))
            .await
            .map(|_| ())
            .map_err(map_error)
    }

    /// Uploads small bytes (a config) as a blob unless the registry has it.
    pub async fn upload_bytes(&self, bytes: Vec<u8>, digest: &str) -> KindResult<()> {
        let exists = self
            .client
            .blob_exists(&self.reference, digest)
            .await
            .map_err(map_error)?;
        if !exists {
            self.client
                .push_blob(&self.reference, bytes, digest)
                .await
                .map_err(map_error)?;
        }
        Ok(())
    }

    /// Puts a manifest (exact bytes, so its digest is kept) under the reference's tag or digest.
    pub async fn put_manifest(&self, bytes: Vec<u8>, media_type: &str) -> KindResult<()> {
        let content_type = media_type
            .parse()
            .map_err(|_| ErrorKind::malformed("manifest", "media type is not a header value"))?;
        self.client
            .push_manifest_raw(&self.reference, bytes, content_type)
            .await
            .map(|_| ())
            .map_err(map_error)
    }
}

/// Turns oci-client's errors into short ones: unreachable, not found, unauthorized, other.
pub fn map_error(e: OciDistributionError) -> ErrorKind {
    match e {
        OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout() => {
            ErrorKind::Unreachable(root_cause(&e))
        }
        OciDistributionError::RequestError(e) => ErrorKind::Registry(root_cause(&e)),
        OciDistributionError::RegistryError { envelope, .. } => {
            let first = envelope.errors.first();
            match first.map(|e| &e.code) {
                Some(
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::NotFound
                    | OciErrorCode::BlobUnknown,
                ) => ErrorKind::NotFound,
                Some(OciErrorCode::Unauthorized | OciErrorCode::Denied) => {
                    ErrorKind::Unauthorized(first.map(|e| e.message.clone()).unwrap_or_default())
                }
                _ => ErrorKind::Registry(
                    envelope
                        .errors
                        .iter()
                        .map(|e| e.message.clone())
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
            }
        }
        OciDistributionError::ServerError { code: 404, .. }
        | OciDistributionError::ImageManifestNotFoundError(_) => ErrorKind::NotFound,
        OciDistributionError::ServerError {
            code: 401 | 403,
            message,
            ..
        } => ErrorKind::Unauthorized(message),
        OciDistributionError::UnauthorizedError { .. } => {
            ErrorKind::Unauthorized("credentials refused".to_string())
        }
        OciDistributionError::AuthenticationFailure(m) => ErrorKind::Unauthorized(m),
        OciDistributionError::ServerError { code, message, .. } => {
            ErrorKind::Registry(format!("http {code}: {message}"))
        }
        OciDistributionError::DigestError(e) => ErrorKind::Registry(e.to_string()),
        other => ErrorKind::Registry(other.to_string()),
    }
}

/// The innermost error's text, lower-cased at the start (`connection refused`, not a URL chain).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    let mut io_kind = None;
    while let Some(next) = cur.source() {
        if let Some(io) = next.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        cur = next;
    }
    let text = match io_kind {
        Some(std::io::ErrorKind::ConnectionRefused) => "connection refused".to_string(),
        Some(std::io::ErrorKind::TimedOut) => "connection timed out".to_string(),
        _ => cur.to_string(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_insecure_use_http() {
        let none: &[String] = &[];
        assert!(is_plain_http("127.0.0.1:5000", none));
        assert!(is_plain_http("127.8.9.1", none));
        assert!(is_plain_http("localhost:5000", none));
        assert!(is_plain_http("[::1]:5000", none));
        assert!(!is_plain_http("registry.example", none));
        assert!(!is_plain_http("10.0.0.1:5000", none));
        let insecure = vec!["10.0.0.1:5000".to_string(), "reg.lan".to_string()];
        assert!(is_plain_http("10.0.0.1:5000", &insecure));
        assert!(is_plain_http("reg.lan:443", &insecure));
        assert!(!is_plain_http("10.0.0.1:5001", &insecure));
    }
}
