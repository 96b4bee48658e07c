//! Registry credentials: given explicitly, or looked up in a docker/podman `config.json`
//! (`$REGISTRY_AUTH_FILE`, `$DOCKER_CONFIG/config.json`, `~/.docker/config.json`), else anonymous.

use std::path::PathBuf;

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;

/// How to authenticate to a registry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Auth {
    /// Credentials from a docker config.json for the registry's host, else anonymous.
    #[default]
    Auto,
    /// No credentials.
    Anonymous,
    /// HTTP basic credentials (also used to obtain a bearer token).
    Basic {
        /// User name.
        username: String,
        /// Password or token.
        password: String,
    },
}

/// The credentials to use for `registry` (`host[:port]` as in the reference).
pub fn registry_auth(auth: &Auth, registry: &str) -> RegistryAuth {
    match auth {
        Auth::Anonymous => RegistryAuth::Anonymous,
        Auth::Basic { username, password } => {
            RegistryAuth::Basic(username.clone(), password.clone())
        }
        Auth::Auto => config_paths()
            .into_iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .find_map(|text| from_config(&text, registry))
            .map_or(RegistryAuth::Anonymous, |(u, p)| RegistryAuth::Basic(u, p)),
    }
}

fn config_paths() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        paths.push(PathBuf::from(p));
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        paths.push(PathBuf::from(d).join("config.json"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        paths.push(PathBuf::from(h).join(".docker/config.json"));
    }
    paths
}

/// `user:password` for `registry` from the text of a config.json (`auths.KEY.auth`, base64).
pub fn from_config(text: &str, registry: &str) -> Option<(String, String)> {
    let json: serde_json::Value = serde_json::from_str(text).ok()?;
    let auths = json.get("auths")?.as_object()?;
    let wanted = normalize(registry);
    let entry = auths.iter().find(|(key, _)| normalize(key) == wanted)?.1;
    // `auth` (base64 of user:password), else separate `username` and `password`.
    if let Some(encoded) = entry.get("auth").and_then(|a| a.as_str()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, pass) = decoded.split_once(':')?;
        return Some((user.to_string(), pass.to_string()));
    }
    let user = entry.get("username")?.as_str()?;
    let pass = entry.get("password")?.as_str()?;
    Some((user.to_string(), pass.to_string()))
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://host:5000/x` → `host:5000`.
fn normalize(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        h => h.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn separate_username_and_password_entries() {
        let text = r#"{"auths": {"reg.example:5000": {"username": "u", "password": "p"}}}"#;
        assert_eq!(
            from_config(text, "reg.example:5000"),
            Some(("u".into(), "p".into()))
        );
        assert_eq!(from_config(text, "other.example"), None);
    }

    #[test]
    fn finds_auth_by_host() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("me:s3cret:x");
        let text = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{b64}"}},"127.0.0.1:5000":{{"auth":"{b64}"}}}}}}"#
        );
        let want = Some(("me".to_string(), "s3cret:x".to_string()));
        assert_eq!(from_config(&text, "127.0.0.1:5000"), want);
        assert_eq!(from_config(&text, "index.docker.io"), want);
        assert_eq!(from_config(&text, "docker.io"), want);
        assert_eq!(from_config(&text, "quay.io"), None);
        assert_eq!(from_config("not json", "quay.io"), None);
    }
}
