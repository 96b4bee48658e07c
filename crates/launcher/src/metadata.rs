//! What the metadata service tells the guest, from the VMI (pure): KubeVirt's instance id and
//! hostname, the firmware UUID, the cloud-init volume's user data, and the SSH keys of its
//! access credentials (read from Secrets by the caller).

use std::net::Ipv4Addr;

use base64::Engine as _;
use kuvirt_api::VirtualMachineInstance;
use kuvirt_netbind::metadata::Metadata;

/// The Secret names of the VMI's `accessCredentials[].sshPublicKey.source.secret`.
pub fn ssh_key_secrets(vmi: &VirtualMachineInstance) -> Vec<String> {
    vmi.spec
        .access_credentials
        .iter()
        .filter_map(|c| c.ssh_public_key.as_ref())
        .filter_map(|k| k.source.secret.as_ref())
        .map(|s| s.secret_name.clone())
        .collect()
}

/// The keys in one Secret's data, as KubeVirt reads them: every value is an authorized-keys
/// text, one key a line. Names are `<secret>/<data key>` (and `-N` for a value's Nth line).
pub fn keys_of_secret(
    secret: &str,
    data: &std::collections::BTreeMap<String, Vec<u8>>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in data {
        let text = String::from_utf8_lossy(v);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        for (i, line) in lines.iter().enumerate() {
            let name = if i == 0 {
                format!("{secret}/{k}")
            } else {
                format!("{secret}/{k}-{i}")
            };
            out.push((name, (*line).to_owned()));
        }
    }
    out
}

/// The guest's metadata: `keys` from its access credentials, `guest` its address on the pod
/// network.
pub fn content(
    vmi: &VirtualMachineInstance,
    keys: Vec<(String, String)>,
    guest: Option<Ipv4Addr>,
) -> Metadata {
    let name = vmi.metadata.name.clone().unwrap_or_default();
    let namespace = vmi
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let uuid = vmi
        .spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.uuid.clone())
        .or_else(|| vmi.metadata.uid.clone())
        .unwrap_or_default();
    Metadata {
        uuid,
        instance_id: format!("{name}.{namespace}"),
        hostname: vmi.spec.hostname.clone().unwrap_or_else(|| name.clone()),
        name,
        namespace,
        local_ipv4: guest,
        public_keys: keys,
        user_data: user_data(vmi),
        network_data: None,
        availability_zone: None,
    }
}

/// The inline user data of the VMI's cloud-init volume (NoCloud or ConfigDrive); secret
/// references are the caller's to resolve and are left out here.
fn user_data(vmi: &VirtualMachineInstance) -> Option<Vec<u8>> {
    vmi.spec.volumes.iter().find_map(|v| {
        let (plain, b64) = if let Some(n) = &v.cloud_init_no_cloud {
            (n.user_data.as_ref(), n.user_data_base64.as_ref())
        } else if let Some(c) = &v.cloud_init_config_drive {
            (c.user_data.as_ref(), c.user_data_base64.as_ref())
        } else {
            return None;
        };
        plain.map(|p| p.as_bytes().to_vec()).or_else(|| {
            b64.and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_from_the_vmi() {
        let mut v: VirtualMachineInstance = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "namespace": "ns", "uid": "u-1"},
            "spec": {
                "hostname": "host-a",
                "domain": {"devices": {}, "firmware": {"uuid": "5d307ca9-b3ef-428c-8861-06e72d69f223"}},
                "accessCredentials": [{"sshPublicKey": {"source": {"secret": {"secretName": "keys"}},
                                       "propagationMethod": {"noCloud": {}}}}],
                "volumes": [{"name": "ci", "cloudInitNoCloud": {"userDataBase64": "I2Nsb3VkLWNvbmZpZwo="}}]
            }
        }))
        .unwrap();
        assert_eq!(ssh_key_secrets(&v), vec!["keys"]);
        let keys = keys_of_secret(
            "keys",
            &[(
                "k".to_owned(),
                b"ssh-ed25519 AAAA one\n\n# c\nssh-rsa BBBB two\n".to_vec(),
            )]
            .into(),
        );
        assert_eq!(
            keys,
            vec![
                ("keys/k".to_owned(), "ssh-ed25519 AAAA one".to_owned()),
                ("keys/k-1".to_owned(), "ssh-rsa BBBB two".to_owned())
            ]
        );
        let md = content(&v, keys, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(md.uuid, "5d307ca9-b3ef-428c-8861-06e72d69f223");
        assert_eq!(md.instance_id, "a.ns");
        assert_eq!(md.hostname, "host-a");
        assert_eq!(md.user_data.as_deref(), Some(&b"#cloud-config\n"[..]));
        assert_eq!(md.public_keys.len(), 2);
        v.spec.hostname = None;
        assert_eq!(content(&v, vec![], None).hostname, "a");
    }
}
