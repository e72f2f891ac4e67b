//! What each generated host file sets: the node's identity and `edge.*` options derived from
//! the topology. Decisions (drivers, sysctls, ports) are made in `modules/`, not here.

use edgectl_model::{Cluster, Feature, Node, Role};
use serde_json::{Value, json};

/// Linux interface names are at most 15 bytes; network names may be longer.
pub fn ifname(network: &str, index: usize) -> String {
    if network.len() <= 15 {
        network.to_string()
    } else {
        format!("exp{index}")
    }
}

fn lan_ip(n: &Node) -> Option<String> {
    n.interfaces.first().map(|i| i.address.addr.to_string())
}

/// Where other nodes reach `n`: its first experiment-LAN address, else its SSH host.
pub fn lan_address(n: &Node) -> String {
    lan_ip(n).unwrap_or_else(|| n.host.clone())
}

pub const ZENOH_PORT: u16 = 7447;

pub fn context(c: &Cluster, n: &Node) -> Value {
    let ifaces: Vec<Value> = n
        .interfaces
        .iter()
        .enumerate()
        .map(|(i, x)| {
            json!({
                "name": ifname(&x.network, i),
                "mac": x.mac.to_string(),
                "address": x.address.addr.to_string(),
                "prefixLength": x.address.prefix,
                "vlan": x.vlan,
            })
        })
        .collect();
    let ifnames: Vec<Value> = ifaces.iter().map(|i| i["name"].clone()).collect();
    let gpu = n.profile.gpus.first();
    let cuda = n.has(Feature::Cuda) && gpu.is_some();
    let ray_role = if n.is(Role::RayHead) {
        json!("head")
    } else if n.is(Role::RayWorker) {
        json!("worker")
    } else {
        Value::Null
    };
    let head = c.ray_head().map(lan_address).unwrap_or_default();
    let routers: Vec<Value> = c
        .nodes
        .iter()
        .filter(|r| r.is(Role::ZenohRouter) && r.name != n.name)
        .map(|r| json!(format!("tcp/{}:{ZENOH_PORT}", lan_address(r))))
        .collect();
    json!({
        "cluster": { "name": c.name, "stateVersion": c.state_version },
        "node": {
            "name": n.name,
            "roles": n.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
            "cpuVendor": serde_json::to_value(n.profile.cpu.vendor).unwrap_or(json!("other")),
            "threads": n.profile.cpu.threads,
        },
        "access": { "user": n.user, "sshKeys": c.ssh_keys },
        "gpu": {
            "enable": cuda,
            "arch": gpu.map(|g| g.arch.as_str()),
            "count": if cuda { n.profile.gpu_count() } else { 0 },
            "cudaCapabilities": if cuda { c.cuda_capabilities() } else { Vec::new() },
        },
        "netTuning": { "enable": n.has(Feature::NetTuning), "nicGbps": n.profile.experiment_nic_gbps().unwrap_or(10) },
        "wasm": { "enable": n.has(Feature::Wasm) },
        "unikernel": { "enable": n.has(Feature::Unikernel) },
        "ray": {
            "enable": n.has(Feature::Ray),
            "role": ray_role,
            "headAddress": head,
            "numGpus": if cuda { n.profile.gpu_count() } else { 0 },
            "numCpus": n.profile.cpu.threads,
            "interfaces": ifnames,
        },
        "zenoh": {
            "enable": n.has(Feature::Zenoh),
            "router": n.is(Role::ZenohRouter),
            "connect": routers,
            "interfaces": ifnames,
        },
        "agent": { "enable": n.has(Feature::Agent) },
        "cloudlab": { "enable": true, "interfaces": ifaces },
        "hardwareFile": hardware(n).map(|_| format!("/{}", hardware_file_name(n))),
    })
}

/// `hosts/<this>`: the node's machine facts, imported by its host file.
pub fn hardware_file_name(n: &Node) -> String {
    format!("{}-hardware.nix", n.name)
}

/// What `hosts/<node>-hardware.nix` sets: the machine facts from the topology and from
/// `hardware/<node>.toml` (what install read on the node). None when nothing is known, and
/// the module's assertions then say how to record them.
pub fn hardware(n: &Node) -> Option<Value> {
    let h = n.hardware.as_ref();
    if n.boot_disk.is_none()
        && n.root_device.is_none()
        && n.root_fs.is_none()
        && n.login_uid.is_none()
        && h.is_none()
    {
        return None;
    }
    let group = h.and_then(|h| {
        let (name, gid) = (h.login_group.as_ref()?, h.login_gid?);
        Some(json!({ "name": name, "gid": gid }))
    });
    Some(json!({
        "node": n.name,
        "bootDisk": n.boot_disk,
        "grubDevice": h.map(|h| &h.grub_device),
        "rootDevice": n.root_device,
        "rootFsType": n.root_fs,
        "rootDiskModules": h.map(|h| &h.root_disk_modules),
        "loginUid": n.login_uid,
        "loginGroup": group,
        "machineId": h.map(|h| &h.machine_id).filter(|m| !m.is_empty()),
    }))
}
