//! What one VM's metadata service knows about its guest, and the documents built from it
//! (OpenStack's `meta_data.json`, EC2's instance identity document).

use std::net::Ipv4Addr;

use serde_json::{Map, Value, json};

/// Everything the service tells one guest. The launcher fills it from the VMI and replaces it
/// (through a `watch` channel) when, say, its SSH keys change.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Metadata {
    /// The VMI's firmware UUID: OpenStack's `uuid`, which cloud-init's OpenStack datasource
    /// takes as the instance id (as it does from KubeVirt's config drive).
    pub uuid: String,
    /// EC2's `instance-id`; KubeVirt uses `<name>.<namespace>` (as in its NoCloud meta-data).
    pub instance_id: String,
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    /// The guest's address, when the binding knows it (masquerade: the DHCP lease).
    pub local_ipv4: Option<Ipv4Addr>,
    /// `(key name, OpenSSH public key)`, one key per entry.
    pub public_keys: Vec<(String, String)>,
    /// Raw user data; `None` answers 404 as EC2 and Nova do.
    pub user_data: Option<Vec<u8>>,
    /// OpenStack `network_data.json`; `None` serves an empty one.
    pub network_data: Option<Value>,
    pub availability_zone: Option<String>,
}

/// One public key as served: a name that is unique among the VM's keys and free of control
/// characters (EC2's `public-keys/` listing is line- and `=`-based), and the key without
/// surrounding whitespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ServedKey<'a> {
    pub name: String,
    pub key: &'a str,
}

impl Metadata {
    /// The public keys with names made safe and unique: an empty name becomes `key-<i>`, a
    /// repeated one gets `-<i>` appended.
    pub(super) fn served_keys(&self) -> Vec<ServedKey<'_>> {
        let mut served: Vec<ServedKey<'_>> = Vec::with_capacity(self.public_keys.len());
        for (index, (name, key)) in self.public_keys.iter().enumerate() {
            let clean: String = name
                .trim()
                .chars()
                .map(|c| if c.is_control() || c == '=' { '_' } else { c })
                .collect();
            let mut name = if clean.is_empty() {
                format!("key-{index}")
            } else {
                clean
            };
            while served.iter().any(|s| s.name == name) {
                name = format!("{name}-{index}");
            }
            served.push(ServedKey {
                name,
                key: key.trim(),
            });
        }
        served
    }

    /// Nova's `meta_data.json`, with KubeVirt's config-drive `instance_id` beside it.
    pub(super) fn openstack_meta_data(&self) -> Value {
        let keys = self.served_keys();
        let public_keys: Map<String, Value> = keys
            .iter()
            .map(|k| (k.name.clone(), Value::from(k.key)))
            .collect();
        let key_list: Vec<Value> = keys
            .iter()
            .map(|k| json!({"name": k.name, "type": "ssh", "data": k.key}))
            .collect();
        let mut doc = json!({
            "uuid": self.uuid,
            "instance_id": self.instance_id,
            "name": self.name,
            "hostname": self.hostname,
            "launch_index": 0,
            "project_id": self.namespace,
            "public_keys": public_keys,
            "keys": key_list,
            "meta": {},
            "devices": [],
        });
        if let (Some(zone), Some(obj)) = (&self.availability_zone, doc.as_object_mut()) {
            obj.insert("availability_zone".into(), Value::from(zone.as_str()));
        }
        doc
    }

    /// OpenStack `network_data.json`: the given document or an empty one.
    pub(super) fn openstack_network_data(&self) -> Value {
        self.network_data
            .clone()
            .unwrap_or_else(|| json!({"links": [], "networks": [], "services": []}))
    }

    /// EC2's `dynamic/instance-identity/document`, with only what we know.
    pub(super) fn instance_identity(&self) -> Value {
        let mut doc = Map::new();
        doc.insert("instanceId".into(), Value::from(self.instance_id.as_str()));
        if let Some(ip) = self.local_ipv4 {
            doc.insert("privateIp".into(), Value::from(ip.to_string()));
        }
        if let Some(zone) = &self.availability_zone {
            doc.insert("availabilityZone".into(), Value::from(zone.as_str()));
        }
        Value::Object(doc)
    }
}
