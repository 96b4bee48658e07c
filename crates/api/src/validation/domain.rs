//! Checks on the spec's top level and `spec.domain` apart from disks and interfaces:
//! resources, memory, CPU, machine, firmware, features, clock, inputs, watchdog, probes, DNS.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;

use super::{FieldErrorKind::*, FieldErrors, FieldPath};
use crate::quantity::{Quantity, parse_quantity};
use crate::v1::{
    EvictionStrategy, InputBus, InputType, Probe, StartStrategy, VirtualMachineInstanceSpec,
    WatchdogAction,
};

/// KubeVirt's smallest accepted memory request (1M).
const MIN_MEMORY_REQUEST: u64 = 1_000_000;
/// Smallest accepted guest memory (1Mi).
const MIN_GUEST_MEMORY: u64 = 1 << 20;
const MAX_DNS_NAMESERVERS: usize = 3;
const MAX_DNS_SEARCH_PATHS: usize = 6;
const MAX_DNS_SEARCH_LIST_CHARS: usize = 256;
const DNS_POLICIES: &[&str] = &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];

pub(super) fn validate(
    path: &FieldPath,
    spec: &VirtualMachineInstanceSpec,
    errs: &mut FieldErrors,
) {
    validate_top_level(path, spec, errs);
    validate_resources_and_memory(path, spec, errs);
    validate_cpu(path, spec, errs);
    validate_machine(path, spec, errs);
    validate_firmware(path, spec, errs);
    validate_clock(path, spec, errs);
    validate_input_devices(path, spec, errs);
    validate_watchdog(path, spec, errs);
    let has_pod_network = spec.networks.iter().any(|n| n.pod.is_some());
    for (name, probe) in [
        ("readinessProbe", &spec.readiness_probe),
        ("livenessProbe", &spec.liveness_probe),
    ] {
        if let Some(p) = probe {
            validate_probe(&path.child(name), p, has_pod_network, errs);
        }
    }
}

fn validate_top_level(path: &FieldPath, spec: &VirtualMachineInstanceSpec, errs: &mut FieldErrors) {
    if let Some(g) = spec.termination_grace_period_seconds
        && g < 0
    {
        errs.push(
            &path.child("terminationGracePeriodSeconds"),
            Invalid,
            format!("must be greater than or equal to 0, got {g}"),
        );
    }
    if let Some(h) = &spec.hostname
        && !is_dns1123_label(h)
    {
        errs.push(
            &path.child("hostname"),
            Invalid,
            format!(
                "{h:?} is not a valid DNS-1123 label (lower-case alphanumerics and '-', at most 63)"
            ),
        );
    }
    if let Some(s) = &spec.subdomain
        && !is_dns1123_label(s)
    {
        errs.push(
            &path.child("subdomain"),
            Invalid,
            format!(
                "{s:?} is not a valid DNS-1123 label (lower-case alphanumerics and '-', at most 63)"
            ),
        );
    }
    if let Some(EvictionStrategy::Other(v)) = &spec.eviction_strategy {
        errs.push(
            &path.child("evictionStrategy"),
            NotSupported,
            format!(
                "unsupported eviction strategy {v:?}, must be one of: {}",
                EvictionStrategy::KNOWN.join(", ")
            ),
        );
    }
    if let Some(StartStrategy::Other(v)) = &spec.start_strategy {
        errs.push(
            &path.child("startStrategy"),
            NotSupported,
            format!("unsupported start strategy {v:?}, must be Paused"),
        );
    }
    if let Some(policy) = &spec.dns_policy
        && !DNS_POLICIES.contains(&policy.as_str())
    {
        errs.push(
            &path.child("dnsPolicy"),
            NotSupported,
            format!(
                "unsupported dns policy {policy:?}, must be one of: {}",
                DNS_POLICIES.join(", ")
            ),
        );
    }
    let dns = spec.dns_config.as_ref();
    let nameservers = dns.and_then(|d| d.nameservers.as_ref()).map_or(0, Vec::len);
    if spec.dns_policy.as_deref() == Some("None") && nameservers == 0 {
        errs.push(
            &path.child("dnsConfig").child("nameservers"),
            Required,
            "at least one nameserver is required when dnsPolicy is None",
        );
    }
    if nameservers > MAX_DNS_NAMESERVERS {
        errs.push(
            &path.child("dnsConfig").child("nameservers"),
            TooLong,
            format!("must not have more than {MAX_DNS_NAMESERVERS} nameservers"),
        );
    }
    if let Some(searches) = dns.and_then(|d| d.searches.as_ref()) {
        if searches.len() > MAX_DNS_SEARCH_PATHS {
            errs.push(
                &path.child("dnsConfig").child("searches"),
                TooLong,
                format!("must not have more than {MAX_DNS_SEARCH_PATHS} search paths"),
            );
        }
        if searches.join(" ").len() > MAX_DNS_SEARCH_LIST_CHARS {
            errs.push(
                &path.child("dnsConfig").child("searches"),
                TooLong,
                format!("must not have more than {MAX_DNS_SEARCH_LIST_CHARS} characters (including spaces) in the search list"),
            );
        }
    }
}

/// Parses a quantity field, reporting a malformed one.
pub(super) fn quantity(
    path: &FieldPath,
    q: &K8sQuantity,
    errs: &mut FieldErrors,
) -> Option<Quantity> {
    match parse_quantity(&q.0) {
        Ok(q) => Some(q),
        Err(e) => {
            errs.push(path, Invalid, e.to_string());
            None
        }
    }
}

fn validate_resources_and_memory(
    path: &FieldPath,
    spec: &VirtualMachineInstanceSpec,
    errs: &mut FieldErrors,
) {
    let domain = path.child("domain");
    let res_path = domain.child("resources");
    let mut req_mem = None;
    let mut lim_mem = None;
    let mut req_cpu = None;
    let mut lim_cpu = None;
    if let Some(res) = &spec.domain.resources {
        for (kind, map) in [("requests", &res.requests), ("limits", &res.limits)] {
            for (name, q) in map.iter().flatten() {
                let p = res_path.child(kind).child(name);
                let Some(parsed) = quantity(&p, q, errs) else {
                    continue;
                };
                if parsed.is_negative() {
                    errs.push(
                        &p,
                        Invalid,
                        format!("must not be negative, got {q:?}", q = q.0),
                    );
                    continue;
                }
                match (kind, name.as_str()) {
                    ("requests", "memory") => req_mem = Some(parsed),
                    ("limits", "memory") => lim_mem = Some(parsed),
                    ("requests", "cpu") => req_cpu = Some(parsed),
                    ("limits", "cpu") => lim_cpu = Some(parsed),
                    _ => {}
                }
            }
        }
    }
    let bytes = |q: &Option<Quantity>| q.as_ref().and_then(|q| q.to_bytes().ok());
    let (req_bytes, lim_bytes) = (bytes(&req_mem), bytes(&lim_mem));
    if let Some(r) = req_bytes
        && r > 0
        && r < MIN_MEMORY_REQUEST
    {
        errs.push(
            &res_path.child("requests").child("memory"),
            Invalid,
            "must be greater than or equal to 1M",
        );
    }
    if let (Some(r), Some(l)) = (req_bytes, lim_bytes)
        && l > 0
        && r > l
    {
        errs.push(
            &res_path.child("requests").child("memory"),
            Invalid,
            format!(
                "{} is greater than {}.limits.memory",
                req_mem.as_ref().map_or("", Quantity::as_str),
                res_path
            ),
        );
    }
    if let (Some(r), Some(l)) = (&req_cpu, &lim_cpu)
        && r.cmp_value(l) == Some(std::cmp::Ordering::Greater)
    {
        errs.push(
            &res_path.child("requests").child("cpu"),
            Invalid,
            format!("{r} is greater than {res_path}.limits.cpu"),
        );
    }

    let mem_path = domain.child("memory");
    let memory = spec.domain.memory.as_ref();
    let guest = memory
        .and_then(|m| m.guest.as_ref())
        .and_then(|g| quantity(&mem_path.child("guest"), g, errs));
    if let Some(g) = &guest {
        match g.to_bytes() {
            Err(e) => errs.push(&mem_path.child("guest"), Invalid, e.to_string()),
            Ok(b) if b < MIN_GUEST_MEMORY => errs.push(
                &mem_path.child("guest"),
                Invalid,
                format!("{g} must be greater than or equal to 1Mi"),
            ),
            Ok(b) => {
                if let Some(l) = lim_bytes.filter(|l| *l > 0 && b > *l) {
                    errs.push(
                        &mem_path.child("guest"),
                        Invalid,
                        format!(
                            "{g} must be equal to or less than the memory limit {res_path}.limits.memory ({l} bytes)"
                        ),
                    );
                }
            }
        }
    }
    if let Some(mg) = memory.and_then(|m| m.max_guest.as_ref())
        && let Some(mg) = quantity(&mem_path.child("maxGuest"), mg, errs)
        && let Some(g) = &guest
        && mg.cmp_value(g) == Some(std::cmp::Ordering::Less)
    {
        errs.push(
            &mem_path.child("maxGuest"),
            Invalid,
            format!("{mg} must not be less than {mem_path}.guest ({g})"),
        );
    }
    let hugepages = memory.and_then(|m| m.hugepages.as_ref());
    if let Some(size) = hugepages.and_then(|h| h.page_size.as_ref())
        && let Err(e) = parse_quantity(size)
    {
        errs.push(
            &mem_path.child("hugepages").child("pageSize"),
            Invalid,
            e.to_string(),
        );
    }
    let any_memory = req_bytes.is_some_and(|b| b > 0)
        || lim_bytes.is_some_and(|b| b > 0)
        || guest.as_ref().is_some_and(|g| !g.is_zero())
        || hugepages.is_some();
    if !any_memory {
        errs.push(
            &mem_path.child("guest"),
            Required,
            format!(
                "no memory requested: set {mem_path}.guest, {res_path}.requests.memory, {res_path}.limits.memory or {mem_path}.hugepages"
            ),
        );
    }
}

fn validate_cpu(path: &FieldPath, spec: &VirtualMachineInstanceSpec, errs: &mut FieldErrors) {
    let Some(cpu) = &spec.domain.cpu else {
        return;
    };
    let cpu_path = path.child("domain").child("cpu");
    for (name, value) in [
        ("cores", cpu.cores),
        ("sockets", cpu.sockets),
        ("threads", cpu.threads),
        ("maxSockets", cpu.max_sockets),
    ] {
        if value == Some(0) {
            errs.push(
                &cpu_path.child(name),
                Invalid,
                "must be greater than or equal to 1",
            );
        }
    }
    if let (Some(s), Some(m)) = (cpu.sockets, cpu.max_sockets)
        && m > 0
        && s > m
    {
        errs.push(
            &cpu_path.child("sockets"),
            Invalid,
            format!("{s} sockets exceed {cpu_path}.maxSockets ({m})"),
        );
    }
    for (i, f) in cpu.features.iter().flatten().enumerate() {
        let p = cpu_path.child("features").index(i);
        if f.name.is_empty() {
            errs.push(&p.child("name"), Required, "a cpu feature needs a name");
        }
        if let Some(policy) = &f.policy
            && !["force", "require", "optional", "disable", "forbid"].contains(&policy.as_str())
        {
            errs.push(
                &p.child("policy"),
                NotSupported,
                format!("unsupported policy {policy:?}, must be one of: force, require, optional, disable, forbid"),
            );
        }
    }
}

fn validate_machine(path: &FieldPath, spec: &VirtualMachineInstanceSpec, errs: &mut FieldErrors) {
    let Some(machine) = &spec.domain.machine else {
        return;
    };
    let t = machine.type_.as_str();
    if !(t.is_empty() || t.starts_with("q35") || t.starts_with("pc-q35")) {
        errs.push(
            &path.child("domain").child("machine").child("type"),
            NotSupported,
            format!("unsupported machine type {t:?}, must match q35* or pc-q35*"),
        );
    }
}

fn validate_firmware(path: &FieldPath, spec: &VirtualMachineInstanceSpec, errs: &mut FieldErrors) {
    let domain = path.child("domain");
    let Some(fw) = &spec.domain.firmware else {
        return;
    };
    let fw_path = domain.child("firmware");
    if let Some(uuid) = &fw.uuid
        && !uuid.is_empty()
        && uuid::Uuid::parse_str(uuid).is_err()
    {
        errs.push(
            &fw_path.child("uuid"),
            Invalid,
            format!("{uuid:?} is not a valid UUID"),
        );
    }
    if let Some(bl) = &fw.bootloader
        && bl.bios.is_some()
        && bl.efi.is_some()
    {
        errs.push(
            &fw_path.child("bootloader"),
            Invalid,
            "bios and efi are mutually exclusive",
        );
    }
    let secure_boot = fw
        .bootloader
        .as_ref()
        .and_then(|b| b.efi.as_ref())
        .is_some_and(|e| e.secure_boot_enabled());
    let smm = spec
        .domain
        .features
        .as_ref()
        .is_some_and(|f| f.smm_enabled());
    if secure_boot && !smm {
        errs.push(
            &domain,
            Invalid,
            format!(
                "EFI secure boot is enabled ({fw_path}.bootloader.efi.secureBoot unset or true) and requires {domain}.features.smm, which is disabled"
            ),
        );
    }
    if let Some(kb) = &fw.kernel_boot {
        let kb_path = fw_path.child("kernelBoot");
        match &kb.container {
            None => {
                if kb.kernel_args.as_deref().is_some_and(|a| !a.is_empty()) {
                    errs.push(
                        &kb_path.child("kernelArgs"),
                        Invalid,
                        "kernel arguments cannot be provided without a kernel container",
                    );
                }
            }
            Some(c) => {
                let c_path = kb_path.child("container");
                if c.image.is_empty() {
                    errs.push(
                        &c_path.child("image"),
                        Required,
                        "a kernel boot container needs an image",
                    );
                }
                let kernel = c.kernel_path.as_deref().filter(|p| !p.is_empty());
                let initrd = c.initrd_path.as_deref().filter(|p| !p.is_empty());
                if kernel.is_none() && initrd.is_none() {
                    errs.push(
                        &c_path,
                        Required,
                        "at least one of kernelPath, initrdPath must be set",
                    );
                }
                for (name, p) in [("kernelPath", kernel), ("initrdPath", initrd)] {
                    if let Some(p) = p {
                        check_absolute_path(&c_path.child(name), p, errs);
                    }
                }
            }
        }
    }
}

/// KubeVirt's `ValidatePath`: absolute, not `/`, no `.`/`..`/empty components.
pub(super) fn check_absolute_path(path: &FieldPath, p: &str, errs: &mut FieldErrors) {
    if p == "/" {
        errs.push(path, Invalid, "must not point to root");
        return;
    }
    let trimmed = p.trim_end_matches('/');
    let clean = trimmed.starts_with('/')
        && trimmed[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if !clean {
        errs.push(
            path,
            Invalid,
            format!("{p:?} must be an absolute path to a file without relative components"),
        );
    }
}

fn validate_clock(path: &FieldPath, spec: &VirtualMachineInstanceSpec, errs: &mut FieldErrors) {
    if let Some(clock) = &spec.domain.clock
        && clock.utc.is_some()
        && clock.timezone.is_some()
    {
        errs.push(
            &path.child("domain").child("clock"),
            Invalid,
            "utc and timezone are mutually exclusive",
        );
    }
}

fn validate_input_devices(
    path: &FieldPath,
    spec: &VirtualMachineInstanceSpec,
    errs: &mut FieldErrors,
) {
    let inputs = path.child("domain").child("devices").child("inputs");
    for (i, input) in spec.domain.devices.inputs.iter().enumerate() {
        let p = inputs.index(i);
        if input.name.is_empty() {
            errs.push(&p.child("name"), Required, "an input device needs a name");
        }
        if let Some(InputBus::Other(b)) = &input.bus {
            errs.push(
                &p.child("bus"),
                NotSupported,
                format!(
                    "unsupported input bus {b:?}, must be one of: {}",
                    InputBus::KNOWN.join(", ")
                ),
            );
        }
        if let Some(InputType::Other(t)) = &input.type_ {
            errs.push(
                &p.child("type"),
                NotSupported,
                format!(
                    "unsupported input type {t:?}, must be one of: {}",
                    InputType::KNOWN.join(", ")
                ),
            );
        }
    }
}

fn validate_watchdog(path: &FieldPath, spec: &VirtualMachineInstanceSpec, errs: &mut FieldErrors) {
    let Some(w) = &spec.domain.devices.watchdog else {
        return;
    };
    let p = path.child("domain").child("devices").child("watchdog");
    if w.name.is_empty() {
        errs.push(&p.child("name"), Required, "a watchdog needs a name");
    }
    if let Some(WatchdogAction::Other(a)) = w.i6300esb.as_ref().and_then(|e| e.action.as_ref()) {
        errs.push(
            &p.child("i6300esb").child("action"),
            NotSupported,
            format!(
                "unsupported watchdog action {a:?}, must be one of: {}",
                WatchdogAction::KNOWN.join(", ")
            ),
        );
    }
}

fn validate_probe(path: &FieldPath, probe: &Probe, has_pod_network: bool, errs: &mut FieldErrors) {
    let handlers = [
        probe.exec.is_some(),
        probe.http_get.is_some(),
        probe.tcp_socket.is_some(),
        probe.guest_agent_ping.is_some(),
    ]
    .into_iter()
    .filter(|set| *set)
    .count();
    if handlers != 1 {
        errs.push(
            path,
            Invalid,
            "must have exactly one of exec, httpGet, tcpSocket, guestAgentPing",
        );
    }
    if !has_pod_network {
        for (name, set) in [
            ("httpGet", probe.http_get.is_some()),
            ("tcpSocket", probe.tcp_socket.is_some()),
        ] {
            if set {
                errs.push(
                    &path.child(name),
                    Invalid,
                    "needs a pod network to reach the guest",
                );
            }
        }
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub(super) fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}
