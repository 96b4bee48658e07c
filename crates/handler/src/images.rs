//! Pulling a VMI's images on the node, as a kubelet pulls a pod's: in the host's network (a
//! launcher in its pod sandbox cannot reach a registry on the node's loopback, and should not
//! need to), with the VMI's pull policies and pull secrets, into the node's image cache where the
//! launcher then finds them without touching the network.

use std::path::Path;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kuvirt_api::VirtualMachineInstance;
use kuvirt_images::oci::{Auth, ImageRef, ImageStore, PullOptions, PullPolicy};
use kuvirt_launcher::prepare::{ImageNeed, images};

/// `imagePullPolicy` as KubeVirt spells it; unknown values are an error naming the field.
fn policy(need: &ImageNeed) -> Result<Option<PullPolicy>, String> {
    match need.pull_policy.as_deref() {
        None | Some("") => Ok(None),
        Some("Always") => Ok(Some(PullPolicy::Always)),
        Some("IfNotPresent") => Ok(Some(PullPolicy::IfNotPresent)),
        Some("Never") => Ok(Some(PullPolicy::Never)),
        Some(other) => Err(format!(
            "{}: imagePullPolicy {other:?} is not Always, IfNotPresent or Never",
            need.field.trim_end_matches(".image")
        )),
    }
}

/// Credentials for `need` from its pull secret (a `kubernetes.io/dockerconfigjson` or legacy
/// `dockercfg` Secret in the VMI's namespace). As the kubelet does, a secret that is missing or
/// has nothing for the image's registry is warned about and the pull goes on with the node's
/// own docker config, or anonymously.
async fn auth(client: &kube::Client, ns: &str, need: &ImageNeed) -> Auth {
    let Some(secret) = need.pull_secret.as_deref().filter(|s| !s.is_empty()) else {
        return Auth::Auto;
    };
    let registry = match ImageRef::parse(&need.image) {
        Ok(ImageRef::Registry(r)) => r.resolve_registry().to_string(),
        _ => return Auth::Auto,
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let data = match secrets.get(secret).await {
        Ok(s) => s.data.unwrap_or_default(),
        Err(e) => {
            tracing::warn!(%secret, namespace = %ns, error = %e, "imagePullSecret not readable; pulling without it");
            return Auth::Auto;
        }
    };
    // `.dockercfg` is the bare map `.dockerconfigjson` keeps under "auths".
    let config = match (data.get(".dockerconfigjson"), data.get(".dockercfg")) {
        (Some(c), _) => String::from_utf8_lossy(&c.0).into_owned(),
        (None, Some(c)) => format!("{{\"auths\": {}}}", String::from_utf8_lossy(&c.0)),
        (None, None) => String::new(),
    };
    match kuvirt_images::oci::auth::from_config(&config, &registry) {
        Some((username, password)) => Auth::Basic { username, password },
        None => {
            tracing::warn!(%secret, %registry, "imagePullSecret has no credentials for the registry; pulling without it");
            Auth::Auto
        }
    }
}

/// Pulls every image `vmi` needs into the cache under `state_dir/images`. The error names the
/// field and says why, for the pod's and the VMI's status.
pub async fn pull(
    client: &kube::Client,
    state_dir: &Path,
    vmi: &VirtualMachineInstance,
) -> Result<(), String> {
    let needs = images(vmi);
    if needs.is_empty() {
        return Ok(());
    }
    let ns = vmi.metadata.namespace.as_deref().unwrap_or("default");
    let store = ImageStore::open(&state_dir.join("images")).map_err(|e| e.to_string())?;
    for need in needs {
        let opts = PullOptions {
            auth: auth(client, ns, &need).await,
            policy: policy(&need)?,
            ..PullOptions::default()
        };
        store
            .fetch(&need.image, &opts)
            .await
            .map_err(|e| format!("{}: {e}", need.field))?;
    }
    Ok(())
}
