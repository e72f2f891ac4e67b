//! A validated topology to what CloudLab needs to allocate it: a geni-lib `profile.py`, or the
//! equivalent request RSpec.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use edgectl_model::net::Ipv4Cidr;
use edgectl_model::{Cluster, ProfileSet, TopologyFile};

use crate::escape::{one_line, py_str, xml_escape};
use crate::rspec::{RSPEC3, cm_of};

/// The standard image: the NixOS installer runs from Ubuntu (there is no NixOS image).
pub const IMAGE: &str = "urn:publicid:IDN+emulab.net+image+emulab-ops//UBUNTU22-64-STD";

#[derive(Debug, Clone, PartialEq)]
pub struct PlanIface {
    /// Unique within the node; the RSpec client_id is `node:id`, as geni-lib writes it.
    pub id: String,
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlanNode {
    pub name: String,
    /// The CloudLab hardware type to request.
    pub hardware_type: String,
    pub component_manager_id: Option<String>,
    pub ifaces: Vec<PlanIface>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlanLan {
    pub name: String,
    /// (node index, interface index)
    pub members: Vec<(usize, usize)>,
}

/// What to request, shared by both output forms so they cannot drift apart.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub nodes: Vec<PlanNode>,
    pub lans: Vec<PlanLan>,
    pub notes: Vec<String>,
}

/// The CloudLab type behind a profile: the profile itself when it is a built-in (they are named
/// after CloudLab types), else the nearest built-in it extends, else the root of its chain
/// (a user's profile for a type edgectl does not ship is named after that type).
pub fn cloudlab_type(name: &str, extends: &[String], builtin: &ProfileSet) -> String {
    std::iter::once(name)
        .chain(extends.iter().map(String::as_str))
        .find(|n| builtin.contains(n))
        .or(extends.last().map(String::as_str))
        .unwrap_or(name)
        .to_string()
}

pub fn plan(cluster: &Cluster, file: &TopologyFile) -> Plan {
    let (builtin, _) = ProfileSet::builtin();
    let mut notes = Vec::new();
    let site_cm = cluster.site.as_deref().and_then(cm_of);
    if let (Some(site), None) = (&cluster.site, &site_cm) {
        notes.push(format!("site {site:?} is not a known CloudLab cluster (wisc, utah, clemson, emulab); the profile does not pin one"));
    }
    let mut nodes = Vec::new();
    let mut lans: Vec<PlanLan> = cluster
        .networks
        .iter()
        .map(|n| PlanLan {
            name: n.name.clone(),
            members: Vec::new(),
        })
        .collect();
    for n in &cluster.nodes {
        let hardware_type = cloudlab_type(&n.profile.name, &n.profile.extends, &builtin);
        if hardware_type != n.profile.name {
            notes.push(format!(
                "node `{}`: profile `{}` is requested as CloudLab type `{hardware_type}`",
                n.name, n.profile.name
            ));
        }
        // Without a cluster site, a node tagged with a site (multi-site imports) is pinned there.
        let cm = site_cm.clone().or_else(|| {
            n.tags.iter().find_map(|t| {
                matches!(t.as_str(), "wisc" | "utah" | "clemson" | "emulab")
                    .then(|| cm_of(t))
                    .flatten()
            })
        });
        let spec = file.nodes.iter().find(|s| s.name == n.name);
        let mut ifaces = Vec::new();
        // The file's entries, not the cluster's interfaces: those keep only entries with a MAC,
        // and a planned topology has none yet.
        for l in spec.map(|s| s.lan.as_slice()).unwrap_or_default() {
            let Ok(a) = Ipv4Cidr::parse(&l.address) else {
                continue;
            };
            let net = match &l.network {
                Some(name) => cluster.networks.iter().position(|x| &x.name == name),
                None => cluster
                    .networks
                    .iter()
                    .position(|x| x.subnet.contains(a.addr) && x.subnet.prefix == a.prefix),
            };
            let id = format!("if{}", ifaces.len());
            if let Some(k) = net {
                lans[k].members.push((nodes.len(), ifaces.len()));
            }
            ifaces.push(PlanIface {
                id,
                addr: a.addr,
                prefix: a.prefix,
            });
        }
        nodes.push(PlanNode {
            name: n.name.clone(),
            hardware_type,
            component_manager_id: cm,
            ifaces,
        });
    }
    for l in &lans {
        if l.members.len() == 1 {
            notes.push(format!(
                "network `{}` has one member; CloudLab may refuse a LAN of one",
                l.name
            ));
        }
    }
    lans.retain(|l| !l.members.is_empty());
    Plan { nodes, lans, notes }
}

fn netmask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    })
}

/// A geni-lib profile. Every value from the topology goes through `py_str`; variable names are
/// generated from indices so no user string ever becomes code.
pub fn profile_py(plan: &Plan, source_name: &str) -> String {
    let mut w = String::new();
    let _ = writeln!(
        w,
        "# geni-lib profile written by `edgectl export cloudlab-profile` from {}.",
        one_line(source_name)
    );
    w.push_str(
        "# One bare-metal node (RawPC) per [[node]], of the node profile's CloudLab type, on the\n\
         # standard Ubuntu image (edgectl installs NixOS over it), and the topology's LANs with\n\
         # their addresses. Paste it into a CloudLab profile or run it to print the request RSpec.\n\n\
         import geni.portal as portal\n\
         import geni.rspec.pg as pg\n\n",
    );
    let _ = writeln!(w, "IMAGE = {}\n", py_str(IMAGE));
    w.push_str("pc = portal.Context()\nrequest = pc.makeRequestRSpec()\n");
    for (i, n) in plan.nodes.iter().enumerate() {
        let _ = writeln!(w, "\nnode_{i} = request.RawPC({})", py_str(&n.name));
        let _ = writeln!(w, "node_{i}.hardware_type = {}", py_str(&n.hardware_type));
        let _ = writeln!(w, "node_{i}.disk_image = IMAGE");
        if let Some(cm) = &n.component_manager_id {
            let _ = writeln!(w, "node_{i}.component_manager_id = {}", py_str(cm));
        }
        for (j, f) in n.ifaces.iter().enumerate() {
            let _ = writeln!(
                w,
                "iface_{i}_{j} = node_{i}.addInterface({})",
                py_str(&f.id)
            );
            let _ = writeln!(
                w,
                "iface_{i}_{j}.addAddress(pg.IPv4Address({}, {}))",
                py_str(&f.addr.to_string()),
                py_str(&netmask(f.prefix).to_string())
            );
        }
    }
    for (k, l) in plan.lans.iter().enumerate() {
        let _ = writeln!(w, "\nlan_{k} = request.LAN({})", py_str(&l.name));
        for (i, j) in &l.members {
            let _ = writeln!(w, "lan_{k}.addInterface(iface_{i}_{j})");
        }
    }
    w.push_str("\npc.printRequestRSpec(request)\n");
    w
}

/// The request RSpec the profile describes (rspec/3, `type="request"`).
pub fn request_rspec(plan: &Plan) -> String {
    let x = xml_escape;
    let mut w = String::new();
    w.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- request RSpec written by `edgectl export cloudlab-profile (rspec form)` -->\n");
    let _ = writeln!(
        w,
        "<rspec xmlns=\"{RSPEC3}\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:schemaLocation=\"{RSPEC3} {RSPEC3}/request.xsd\" type=\"request\">"
    );
    for n in &plan.nodes {
        let cm = n
            .component_manager_id
            .as_deref()
            .map(|c| format!(" component_manager_id=\"{}\"", x(c)))
            .unwrap_or_default();
        let _ = writeln!(
            w,
            "  <node client_id=\"{}\" exclusive=\"true\"{cm}>",
            x(&n.name)
        );
        let _ = writeln!(
            w,
            "    <sliver_type name=\"raw-pc\">\n      <disk_image name=\"{}\"/>\n    </sliver_type>",
            x(IMAGE)
        );
        let _ = writeln!(w, "    <hardware_type name=\"{}\"/>", x(&n.hardware_type));
        for f in &n.ifaces {
            let _ = writeln!(
                w,
                "    <interface client_id=\"{}\">\n      <ip address=\"{}\" netmask=\"{}\" type=\"ipv4\"/>\n    </interface>",
                x(&format!("{}:{}", n.name, f.id)),
                f.addr,
                netmask(f.prefix)
            );
        }
        w.push_str("  </node>\n");
    }
    for l in &plan.lans {
        let _ = writeln!(w, "  <link client_id=\"{}\">", x(&l.name));
        for (i, j) in &l.members {
            let n = &plan.nodes[*i];
            let _ = writeln!(
                w,
                "    <interface_ref client_id=\"{}\"/>",
                x(&format!("{}:{}", n.name, n.ifaces[*j].id))
            );
        }
        w.push_str("    <link_type name=\"lan\"/>\n  </link>\n");
    }
    w.push_str("</rspec>\n");
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_follow_the_extends_chain() {
        let (b, _) = ProfileSet::builtin();
        assert_eq!(cloudlab_type("c240g5", &["c220g5".into()], &b), "c240g5");
        assert_eq!(cloudlab_type("c220g5-p4", &["c220g5".into()], &b), "c220g5");
        assert_eq!(
            cloudlab_type("mine", &["m510x".into(), "m510".into()], &b),
            "m510"
        );
        assert_eq!(cloudlab_type("m510", &[], &b), "m510");
    }

    #[test]
    fn netmasks() {
        assert_eq!(netmask(24).to_string(), "255.255.255.0");
        assert_eq!(netmask(0).to_string(), "0.0.0.0");
        assert_eq!(netmask(32).to_string(), "255.255.255.255");
    }
}
