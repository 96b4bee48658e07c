//! `kuvirt create vm`: prints a VirtualMachine manifest built from flags, as `virtctl create vm`
//! does (same flag names, defaults and generated names). Nothing is sent to a server: the manifest
//! is a pure function of the flags, ready for `kuvirt apply -f -` or `kubectl apply -f -`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kuvirt_api::VirtualMachine;
use kuvirt_api::quantity::parse_quantity;
use kuvirt_api::v1::{
    API_VERSION, CloudInitConfigDriveSource, CloudInitNoCloudSource, ContainerDiskSource, Disk,
    InstancetypeMatcher, Memory, PreferenceMatcher, RunStrategy,
    VirtualMachineInstanceTemplateSpec, Volume,
};

use crate::kubectl::error_line;

/// `kuvirt create KIND`
#[derive(Subcommand, Debug)]
pub enum CreateCommand {
    /// Print a VirtualMachine manifest (like virtctl create vm).
    ///
    /// If no boot order is given, volumes boot in the order containerdisks, then cloud-init.
    ///
    /// Left out from virtctl's flags, because kuvirt has no PVCs, CDI DataVolumes, sysprep or
    /// guest agent yet: --volume-pvc, --volume-import, --volume-datasource, --volume-clone-pvc,
    /// --volume-blank, --volume-sysprep, --access-cred, --ga-manage-ssh and the
    /// --infer-instancetype/--infer-preference flags (inference reads PVC annotations). Write
    /// hostDisk or emptyDisk volumes into the printed manifest for disks that are not
    /// containerDisks. --instancetype and --preference are printed for clusters that have
    /// instancetypes; kuvirt does not resolve them yet.
    #[command(
        after_help = "Examples:\n  kuvirt create vm --name my-vm --volume-containerdisk src:quay.io/containerdisks/fedora:latest\n  kuvirt create vm --memory 1Gi --user fedora --ssh-key \"ssh-ed25519 AAAA...\" | kuvirt apply -f -"
    )]
    Vm(CreateVmArgs),
}

/// virtctl's run strategies, in its order.
const RUN_STRATEGIES: [&str; 5] = ["Always", "Manual", "Halted", "Once", "RerunOnFailure"];
const CLOUD_INIT_DISK: &str = "cloudinitdisk";
const CLOUD_CONFIG_HEADER: &str = "#cloud-config";

/// Output format of the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Yaml,
    Json,
}

/// The flags of `kuvirt create vm` (virtctl's names and defaults).
#[derive(Args, Debug, Clone)]
pub struct CreateVmArgs {
    /// Name of the VM (default: vm-XXXXX, random).
    #[arg(long)]
    pub name: Option<String>,
    /// Always, Manual, Halted, Once or RerunOnFailure.
    #[arg(long, default_value = "Always")]
    pub run_strategy: String,
    /// Seconds the guest gets to shut down.
    #[arg(long, default_value_t = 180)]
    pub termination_grace_period: i64,
    /// Guest memory (default 512Mi; not with --instancetype).
    #[arg(long, conflicts_with = "instancetype")]
    pub memory: Option<String>,
    /// Instance type, `NAME` (cluster-wide) or `virtualmachineinstancetype/NAME` (namespaced).
    #[arg(long)]
    pub instancetype: Option<String>,
    /// Preference, `NAME` (cluster-wide) or `virtualmachinepreference/NAME` (namespaced).
    #[arg(long)]
    pub preference: Option<String>,
    /// A containerDisk; repeatable. Parameters: name:string,src:string,bootorder:uint
    #[arg(long = "volume-containerdisk", value_name = "PARAMS")]
    pub volume_containerdisk: Vec<String>,
    /// The user in the generated cloud-init user data.
    #[arg(long, conflicts_with = "cloud_init_user_data")]
    pub user: Option<String>,
    /// File holding the password for the generated cloud-init user data (stored in cleartext).
    #[arg(long, conflicts_with = "cloud_init_user_data")]
    pub password_file: Option<PathBuf>,
    /// SSH authorized keys for the generated cloud-init user data; repeatable or comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "cloud_init_user_data")]
    pub ssh_key: Vec<String>,
    /// The cloud-init data source: nocloud (default), configdrive or none.
    #[arg(long)]
    pub cloud_init: Option<String>,
    /// Base64-encoded cloud-init user data.
    #[arg(long)]
    pub cloud_init_user_data: Option<String>,
    /// Base64-encoded cloud-init network data.
    #[arg(long)]
    pub cloud_init_network_data: Option<String>,
    /// metadata.namespace of the manifest (default: none, the namespace applied to).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Print YAML (default) or JSON.
    #[arg(short = 'o', long, value_enum, default_value = "yaml")]
    pub output: Output,
}

/// Runs `kuvirt create ...`; an error is one line on stderr and exit code 1.
pub async fn run(cmd: CreateCommand) -> Result<i32> {
    let CreateCommand::Vm(args) = cmd;
    match print_vm(&args) {
        Ok(text) => {
            print!("{text}");
            Ok(0)
        }
        Err(e) => {
            eprintln!("{}", error_line(&e));
            Ok(1)
        }
    }
}

fn print_vm(args: &CreateVmArgs) -> Result<String> {
    let name = args.name.clone().unwrap_or_else(random_name);
    let password = match &args.password_file {
        Some(path) => {
            eprintln!(
                "WARNING: --password-file: The password is stored in cleartext in the VM definition!"
            );
            Some(std::fs::read_to_string(path).map_err(|e| {
                flag_err(
                    "password-file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?)
        }
        None => None,
    };
    if args
        .cloud_init
        .as_deref()
        .is_some_and(|c| c.eq_ignore_ascii_case("none"))
        && (password.is_some()
            || !args.ssh_key.is_empty()
            || args.cloud_init_user_data.is_some()
            || args.cloud_init_network_data.is_some())
    {
        eprintln!(
            "WARNING: --cloud-init: was set to none, not creating a data source although other cloud-init options were set"
        );
    }
    let vm = vm_manifest(args, &name, password.as_deref())?;
    let value = serde_json::to_value(&vm)?;
    Ok(match args.output {
        Output::Yaml => serde_saphyr::to_string(&value)?,
        Output::Json => {
            let mut s = serde_json::to_string_pretty(&value)?;
            s.push('\n');
            s
        }
    })
}

/// virtctl's flag error wording.
fn flag_err(flag: &str, msg: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("failed to parse \"--{flag}\" flag: {msg}")
}

/// `vm-` and five characters from Kubernetes' random-name alphabet (no vowels, no look-alikes).
fn random_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    let mut bits = h.finish();
    let mut name = String::from("vm-");
    for _ in 0..5 {
        name.push(char::from(
            ALPHABET[(bits % ALPHABET.len() as u64) as usize],
        ));
        bits /= ALPHABET.len() as u64;
    }
    name
}

/// The VirtualMachine the flags describe. `name` is the final name (generated if none was given);
/// `password` is the content of --password-file.
pub fn vm_manifest(
    args: &CreateVmArgs,
    name: &str,
    password: Option<&str>,
) -> Result<VirtualMachine> {
    let run_strategy = RUN_STRATEGIES
        .iter()
        .find(|s| s.eq_ignore_ascii_case(&args.run_strategy))
        .ok_or_else(|| {
            flag_err(
                "run-strategy",
                format!(
                    "invalid run strategy \"{}\", supported values are: {}",
                    args.run_strategy,
                    RUN_STRATEGIES.join(", ")
                ),
            )
        })?;
    let mut template = VirtualMachineInstanceTemplateSpec::default();
    let spec = &mut template.spec;
    spec.termination_grace_period_seconds = Some(args.termination_grace_period);
    if args.instancetype.is_none() {
        let memory = args.memory.as_deref().unwrap_or("512Mi");
        parse_quantity(memory).map_err(|e| flag_err("memory", e))?;
        spec.domain.memory = Some(Memory {
            guest: Some(Quantity(memory.to_owned())),
            ..Memory::default()
        });
    }

    let mut boot_orders = BTreeSet::new();
    for (i, param) in args.volume_containerdisk.iter().enumerate() {
        let flag = "volume-containerdisk";
        let p = Params::parse(flag, param, &["name", "src", "bootorder"])?;
        let src = p
            .get("src")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| flag_err(flag, "src must be specified"))?;
        let vol_name = p
            .get("name")
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{name}-containerdisk-{i}"));
        if let Some(why) = dns1123_label_error(&vol_name) {
            bail!(flag_err(
                flag,
                format!("invalid name \"{vol_name}\": {why}")
            ));
        }
        if spec.volumes.iter().any(|v| v.name == vol_name) {
            bail!(flag_err(
                flag,
                format!("there is already a volume with name \"{vol_name}\"")
            ));
        }
        spec.volumes.push(Volume {
            name: vol_name.clone(),
            container_disk: Some(ContainerDiskSource {
                image: src.to_owned(),
                ..ContainerDiskSource::default()
            }),
            ..Volume::default()
        });
        if let Some(order) = p.get("bootorder") {
            let order: u32 = order
                .parse()
                .map_err(|e| flag_err(flag, format!("failed to parse param \"bootorder\": {e}")))?;
            if order == 0 {
                bail!(flag_err(flag, "bootorder must be greater than 0"));
            }
            if !boot_orders.insert(order) {
                bail!(flag_err(
                    flag,
                    format!("bootorder {order} was specified multiple times")
                ));
            }
            spec.domain.devices.disks.push(Disk {
                name: vol_name,
                boot_order: Some(order),
                ..Disk::default()
            });
        }
    }

    if let Some(volume) = cloud_init_volume(args, password)? {
        spec.volumes.push(volume);
    }

    let mut vm = VirtualMachine {
        api_version: Some(API_VERSION.to_owned()),
        kind: Some("VirtualMachine".to_owned()),
        ..VirtualMachine::default()
    };
    vm.metadata.name = Some(name.to_owned());
    vm.metadata.namespace = args.namespace.clone();
    vm.spec.run_strategy = Some(RunStrategy::from(*run_strategy));
    if let Some(it) = &args.instancetype {
        let (kind, name) = prefixed_name("instancetype", it)?;
        check_kind(
            "instancetype",
            "instancetype",
            &kind,
            &[
                "virtualmachineinstancetype",
                "virtualmachineclusterinstancetype",
            ],
        )?;
        vm.spec.instancetype = Some(InstancetypeMatcher {
            name: Some(name),
            kind: kind.filter(|k| !k.is_empty()),
            ..InstancetypeMatcher::default()
        });
    }
    if let Some(p) = &args.preference {
        let (kind, name) = prefixed_name("preference", p)?;
        check_kind(
            "preference",
            "preference",
            &kind,
            &[
                "virtualmachinepreference",
                "virtualmachineclusterpreference",
            ],
        )?;
        vm.spec.preference = Some(PreferenceMatcher {
            name: Some(name),
            kind: kind.filter(|k| !k.is_empty()),
            ..PreferenceMatcher::default()
        });
    }
    vm.spec.template = Some(template);
    Ok(vm)
}

/// `KIND/NAME` or `NAME`; the kind lower-cased as virtctl writes it.
fn prefixed_name(flag: &str, s: &str) -> Result<(Option<String>, String)> {
    let parts: Vec<&str> = s.split('/').collect();
    let (kind, name) = match parts.as_slice() {
        [name] => (None, *name),
        [kind, name] => (Some(kind.to_ascii_lowercase()), *name),
        _ => bail!(flag_err(
            flag,
            format!(
                "invalid count {} of slashes in prefix/name",
                parts.len() - 1
            )
        )),
    };
    if name.is_empty() {
        bail!(flag_err(flag, "name cannot be empty"));
    }
    Ok((kind, name.to_owned()))
}

fn check_kind(flag: &str, what: &str, kind: &Option<String>, allowed: &[&str]) -> Result<()> {
    match kind.as_deref() {
        None | Some("") => Ok(()),
        Some(k) if allowed.contains(&k) => Ok(()),
        Some(k) => Err(flag_err(
            flag,
            format!(
                "invalid {what} kind \"{k}\", supported values are: {}",
                allowed.join(", ")
            ),
        )),
    }
}

/// The cloud-init volume the flags ask for, if any (virtctl: only when a cloud-init flag was
/// given, and not for a bare `#cloud-config` unless --cloud-init was given).
fn cloud_init_volume(args: &CreateVmArgs, password: Option<&str>) -> Result<Option<Volume>> {
    let asked = args.user.is_some()
        || args.password_file.is_some()
        || !args.ssh_key.is_empty()
        || args.cloud_init.is_some()
        || args.cloud_init_user_data.is_some()
        || args.cloud_init_network_data.is_some();
    if !asked {
        return Ok(None);
    }
    let (user_data, user_data_base64) = match &args.cloud_init_user_data {
        Some(b64) => (None, Some(b64.clone())),
        None => (Some(cloud_config(args, password)), None),
    };
    let bare =
        user_data.as_deref() == Some(CLOUD_CONFIG_HEADER) && args.cloud_init_network_data.is_none();
    let mut volume = Volume {
        name: CLOUD_INIT_DISK.to_owned(),
        ..Volume::default()
    };
    match args
        .cloud_init
        .as_deref()
        .unwrap_or("nocloud")
        .to_ascii_lowercase()
        .as_str()
    {
        "nocloud" => {
            volume.cloud_init_no_cloud = Some(CloudInitNoCloudSource {
                user_data,
                user_data_base64,
                network_data_base64: args.cloud_init_network_data.clone(),
                ..CloudInitNoCloudSource::default()
            });
        }
        "configdrive" => {
            volume.cloud_init_config_drive = Some(CloudInitConfigDriveSource {
                user_data,
                user_data_base64,
                network_data_base64: args.cloud_init_network_data.clone(),
                ..CloudInitConfigDriveSource::default()
            });
        }
        "none" => return Ok(None),
        other => bail!(flag_err(
            "cloud-init",
            format!(
                "invalid cloud-init data source type \"{other}\", supported values are: nocloud, configdrive, none"
            )
        )),
    }
    if bare && args.cloud_init.is_none() {
        return Ok(None);
    }
    Ok(Some(volume))
}

/// virtctl's generated `#cloud-config`: user, password, SSH keys.
fn cloud_config(args: &CreateVmArgs, password: Option<&str>) -> String {
    let mut config = String::from(CLOUD_CONFIG_HEADER);
    if let Some(user) = &args.user {
        config.push_str(&format!("\nuser: {user}"));
    }
    if let Some(pw) = password.map(str::trim).filter(|p| !p.is_empty()) {
        config.push_str(&format!("\npassword: {pw}\nchpasswd: {{ expire: False }}"));
    }
    let keys: Vec<&String> = args.ssh_key.iter().filter(|k| !k.is_empty()).collect();
    if !keys.is_empty() {
        config.push_str("\nssh_authorized_keys:");
        for key in keys {
            config.push_str(&format!("\n  - {key}"));
        }
    }
    config
}

/// `key:value,key:value` parameters of a flag; unknown keys are an error.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(flag: &str, s: &str, known: &[&str]) -> Result<Params> {
        if s.is_empty() {
            bail!(flag_err(flag, "params may not be empty"));
        }
        let mut out = Vec::new();
        let mut unknown = Vec::new();
        for param in s.split(',') {
            let Some((k, v)) = param.split_once(':') else {
                bail!(flag_err(
                    flag,
                    format!("params need to have at least one colon: {param}")
                ));
            };
            if known.contains(&k) {
                out.push((k.to_owned(), v.to_owned()));
            } else {
                unknown.push(param.to_owned());
            }
        }
        if !unknown.is_empty() {
            bail!(flag_err(
                flag,
                format!("unknown param(s): {}", unknown.join(","))
            ));
        }
        Ok(Params(out))
    }

    /// The last value given for `key`.
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Why `s` is not a DNS-1123 label, if it is not.
fn dns1123_label_error(s: &str) -> Option<&'static str> {
    if s.is_empty() || s.len() > 63 {
        return Some("must be 1 to 63 characters");
    }
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    (!ok).then_some(
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::{Value, json};

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: CreateCommand,
    }

    fn args(flags: &[&str]) -> CreateVmArgs {
        let mut argv = vec!["create", "vm"];
        argv.extend_from_slice(flags);
        let CreateCommand::Vm(a) = Cli::try_parse_from(argv).unwrap().cmd;
        a
    }

    fn manifest(flags: &[&str]) -> Value {
        serde_json::to_value(vm_manifest(&args(flags), "my-vm", None).unwrap()).unwrap()
    }

    fn error(flags: &[&str]) -> String {
        format!(
            "{:#}",
            vm_manifest(&args(flags), "my-vm", None).unwrap_err()
        )
    }

    #[test]
    fn defaults_are_virtctls() {
        assert_eq!(
            manifest(&[]),
            json!({
                "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                "metadata": {"name": "my-vm"},
                "spec": {"runStrategy": "Always", "template": {"spec": {
                    "domain": {"devices": {}, "memory": {"guest": "512Mi"}},
                    "terminationGracePeriodSeconds": 180}}}
            })
        );
        let name = random_name();
        assert_eq!(name.len(), 8, "{name}");
        assert!(name.starts_with("vm-"));
        assert!(dns1123_label_error(&name).is_none());
    }

    #[test]
    fn containerdisks_get_names_and_boot_orders() {
        let vm = manifest(&[
            "--volume-containerdisk",
            "src:quay.io/a:1",
            "--volume-containerdisk",
            "name:second,src:oci:/tmp/x:latest,bootorder:1",
            "--run-strategy",
            "halted",
            "--termination-grace-period",
            "5",
        ]);
        let spec = &vm["spec"]["template"]["spec"];
        assert_eq!(vm["spec"]["runStrategy"], "Halted");
        assert_eq!(spec["terminationGracePeriodSeconds"], 5);
        assert_eq!(
            spec["volumes"],
            json!([
                {"name": "my-vm-containerdisk-0", "containerDisk": {"image": "quay.io/a:1"}},
                {"name": "second", "containerDisk": {"image": "oci:/tmp/x:latest"}}
            ])
        );
        assert_eq!(
            spec["domain"]["devices"]["disks"],
            json!([{"name": "second", "bootOrder": 1}])
        );
    }

    #[test]
    fn bad_flags_say_which() {
        assert!(error(&["--run-strategy", "Sometimes"]).contains("\"--run-strategy\""));
        assert!(error(&["--volume-containerdisk", "name:x"]).contains("src must be specified"));
        assert!(error(&["--volume-containerdisk", "src:a,size:1Gi"]).contains("unknown param"));
        assert!(error(&["--volume-containerdisk", "src:a,bootorder:0"]).contains("greater than 0"));
        assert!(
            error(&[
                "--volume-containerdisk",
                "src:a,name:d",
                "--volume-containerdisk",
                "src:b,name:d"
            ])
            .contains("already a volume")
        );
        assert!(error(&["--volume-containerdisk", "src:a,name:Bad_Name"]).contains("invalid name"));
        assert!(error(&["--memory", "lots"]).contains("\"--memory\""));
        assert!(error(&["--instancetype", "foo/bar"]).contains("invalid instancetype kind"));
        assert!(error(&["--preference", "a/b/c"]).contains("slashes"));
        assert!(error(&["--cloud-init", "floppy"]).contains("nocloud, configdrive, none"));
        // clap enforces virtctl's mutually exclusive flags.
        let argv = ["create", "vm", "--memory", "1Gi", "--instancetype", "u1"];
        assert!(Cli::try_parse_from(argv).is_err());
        let argv = [
            "create",
            "vm",
            "--user",
            "a",
            "--cloud-init-user-data",
            "e30=",
        ];
        assert!(Cli::try_parse_from(argv).is_err());
    }

    #[test]
    fn instancetype_replaces_memory() {
        let vm = manifest(&[
            "--instancetype",
            "VirtualMachineInstancetype/u1.small",
            "--preference",
            "fedora",
        ]);
        assert_eq!(
            vm["spec"]["instancetype"],
            json!({"name": "u1.small", "kind": "virtualmachineinstancetype"})
        );
        assert_eq!(vm["spec"]["preference"], json!({"name": "fedora"}));
        assert!(vm["spec"]["template"]["spec"]["domain"]["memory"].is_null());
    }

    #[test]
    fn cloud_init_from_user_keys_and_password() {
        let a = args(&[
            "--user",
            "fedora",
            "--ssh-key",
            "ssh-ed25519 AAA a@b,ssh-rsa BBB",
        ]);
        let vm = serde_json::to_value(vm_manifest(&a, "x", Some("secret\n")).unwrap()).unwrap();
        assert_eq!(
            vm["spec"]["template"]["spec"]["volumes"][0],
            json!({"name": "cloudinitdisk", "cloudInitNoCloud": {"userData":
                "#cloud-config\nuser: fedora\npassword: secret\nchpasswd: { expire: False }\nssh_authorized_keys:\n  - ssh-ed25519 AAA a@b\n  - ssh-rsa BBB"}})
        );
        let vm = manifest(&[
            "--cloud-init",
            "configdrive",
            "--cloud-init-user-data",
            "I2Nsb3VkLWNvbmZpZwo=",
            "--cloud-init-network-data",
            "e30=",
        ]);
        assert_eq!(
            vm["spec"]["template"]["spec"]["volumes"][0],
            json!({"name": "cloudinitdisk", "cloudInitConfigDrive": {
                "userDataBase64": "I2Nsb3VkLWNvbmZpZwo=", "networkDataBase64": "e30="}})
        );
        // A bare header is left out unless --cloud-init asked for a data source.
        let vm = manifest(&["--ssh-key", ""]);
        assert!(vm["spec"]["template"]["spec"]["volumes"].is_null(), "{vm}");
        let vm = manifest(&["--cloud-init", "nocloud"]);
        assert_eq!(
            vm["spec"]["template"]["spec"]["volumes"][0]["cloudInitNoCloud"]["userData"],
            "#cloud-config"
        );
        let vm = manifest(&["--cloud-init", "none", "--user", "x"]);
        assert!(vm["spec"]["template"]["spec"]["volumes"].is_null());
    }
}
