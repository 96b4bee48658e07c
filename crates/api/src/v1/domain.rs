//! `spec.domain`: resources, CPU, memory, machine, firmware, features and clock.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Devices, Extra};

/// `spec.domain` (Go `DomainSpec`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CPU>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<Clock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Features>,
    /// Always present in KubeVirt's JSON.
    #[serde(default)]
    pub devices: Devices,
    /// `shared` or `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_threads_policy: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.domain.resources`: KubeVirt's own type, not the Kubernetes one.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRequirements {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<BTreeMap<String, Quantity>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<BTreeMap<String, Quantity>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overcommit_guest_overhead: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl ResourceRequirements {
    /// `requests[name]`, if set.
    pub fn request(&self, name: &str) -> Option<&Quantity> {
        self.requests.as_ref().and_then(|m| m.get(name))
    }

    /// `limits[name]`, if set.
    pub fn limit(&self, name: &str) -> Option<&Quantity> {
        self.limits.as_ref().and_then(|m| m.get(name))
    }
}

/// `spec.domain.cpu`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CPU {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sockets: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sockets: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    /// A libvirt CPU model name, `host-model` or `host-passthrough`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<CPUFeature>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedicated_cpu_placement: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolate_emulator_thread: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// KubeVirt's `DefaultCPUModel`.
pub const CPU_MODEL_HOST_MODEL: &str = "host-model";
/// Passes the host CPU through unchanged.
pub const CPU_MODEL_HOST_PASSTHROUGH: &str = "host-passthrough";

/// `spec.domain.cpu.features[]`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CPUFeature {
    #[serde(default)]
    pub name: String,
    /// force, require, optional, disable or forbid; KubeVirt's default is require.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.domain.memory`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepages: Option<Hugepages>,
    /// Memory the guest sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_guest: Option<Quantity>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.domain.memory.hugepages`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hugepages {
    /// e.g. `2Mi`, `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.domain.machine`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    /// QEMU machine type, e.g. `q35`. Always written, like KubeVirt does.
    #[serde(default, rename = "type")]
    pub type_: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// KubeVirt's default machine type on amd64.
pub const DEFAULT_MACHINE_TYPE: &str = "q35";

/// `spec.domain.firmware`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Firmware {
    /// SMBIOS system UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootloader: Option<Bootloader>,
    /// SMBIOS system serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_boot: Option<KernelBoot>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.domain.firmware.bootloader`: at most one of `bios`, `efi` (none means BIOS).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Bootloader {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bios: Option<BIOS>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efi: Option<EFI>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `bootloader.bios`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BIOS {
    /// Show SeaBIOS output on the serial console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_serial: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `bootloader.efi`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EFI {
    /// Unset means true (KubeVirt); secure boot requires `features.smm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
    /// Keep EFI variables (NVRAM) across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl EFI {
    /// KubeVirt's reading: secure boot is on unless `secureBoot: false`.
    pub fn secure_boot_enabled(&self) -> bool {
        self.secure_boot.unwrap_or(true)
    }
}

/// `firmware.kernelBoot`: boot a kernel/initrd taken from a container image.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KernelBoot {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_args: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<KernelBootContainer>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `kernelBoot.container`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KernelBootContainer {
    #[serde(default)]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secret: Option<String>,
    /// Always, IfNotPresent or Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// Absolute path of the kernel inside the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_path: Option<String>,
    /// Absolute path of the initrd inside the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.domain.features`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Features {
    /// Unset means enabled (KubeVirt always defaults it to `{enabled: true}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acpi: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apic: Option<FeatureAPIC>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smm: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hyperv: Option<FeatureHyperv>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hyperv_passthrough: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvm: Option<FeatureKVM>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvspinlock: Option<FeatureState>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Features {
    /// ACPI is on unless `acpi: {enabled: false}`.
    pub fn acpi_enabled(&self) -> bool {
        self.acpi.as_ref().is_none_or(FeatureState::is_enabled)
    }

    /// SMM is on only when `smm` is present and not `enabled: false` (KubeVirt's rule).
    pub fn smm_enabled(&self) -> bool {
        self.smm.as_ref().is_some_and(FeatureState::is_enabled)
    }
}

/// A feature switch; when the feature is present, unset `enabled` means true.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl FeatureState {
    /// `enabled`, true when unset.
    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }

    /// `{enabled: true}`.
    pub fn on() -> Self {
        Self {
            enabled: Some(true),
            ..Self::default()
        }
    }
}

/// `features.apic`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureAPIC {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_of_interrupt: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `features.kvm`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureKVM {
    /// Hide the KVM signature from the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `features.hyperv` (Hyper-V enlightenments for Windows guests).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureHyperv {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relaxed: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vapic: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spinlocks: Option<FeatureSpinlocks>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpindex: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synic: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synictimer: Option<SyNICTimer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendorid: Option<FeatureVendorID>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequencies: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reenlightenment: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tlbflush: Option<TLBFlush>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipi: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evmcs: Option<FeatureState>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `hyperv.spinlocks`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureSpinlocks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Retry count (JSON `spinlocks`); KubeVirt defaults 4096 when enabled.
    #[serde(default, rename = "spinlocks", skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `hyperv.vendorid`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureVendorID {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, rename = "vendorid", skip_serializing_if = "Option::is_none")]
    pub vendor_id: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `hyperv.synictimer`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyNICTimer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<FeatureState>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `hyperv.tlbflush`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TLBFlush {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<FeatureState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended: Option<FeatureState>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.domain.clock`: at most one of `utc`, `timezone`, plus timers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Clock {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc: Option<ClockOffsetUTC>,
    /// A tz database name such as `Europe/Berlin` (Go `ClockOffsetTimezone` is a string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<Timer>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `clock.utc`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClockOffsetUTC {
    /// Offset of the guest RTC from UTC in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset_seconds: Option<i64>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `clock.timer`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hpet: Option<TimerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvm: Option<TimerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pit: Option<TimerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtc: Option<TimerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hyperv: Option<TimerSpec>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One timer (Go `HPETTimer`, `KVMTimer`, `PITTimer`, `RTCTimer`, `HypervTimer` share this shape).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimerSpec {
    /// JSON `present`; unset means present.
    #[serde(default, rename = "present", skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// delay, catchup, merge or discard (which ones apply depends on the timer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick_policy: Option<String>,
    /// RTC only: `guest` or `wall`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}
