//! RSpec (or a portal-API JSON map of manifests) to a commented topology file.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use edgectl_model::diag::did_you_mean;
use edgectl_model::net::{Ipv4Cidr, is_nixos_hostname, is_simple_name};
use edgectl_model::{
    Diagnostic, Diagnostics, Kind, LoadOptions, ProfileSet, SourceFile, TopologyFile, check_source,
};

use crate::escape::{one_line, toml_str};
use crate::rspec::{Doc, RIface, RNode, parse_doc, site_of};

pub const NIXPKGS: &str = "github:NixOS/nixpkgs/nixos-25.11";
pub const DEFAULT_FEATURES: &[&str] = &["net-tuning", "wasm", "unikernel", "zenoh", "ray", "agent"];

#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The CloudLab user whose `<login>` entries to use.
    pub user: Option<String>,
    /// The cluster name; defaults to the experiment name.
    pub name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Imported {
    /// The topology file text, with comments.
    pub toml: String,
    /// The same, parsed back.
    pub file: TopologyFile,
    /// Things the user should know: skipped nodes, renamed nodes, unknown hardware types.
    pub notes: Vec<String>,
    /// Whether the input was a manifest (a running experiment) rather than a request.
    pub manifest: bool,
    /// Hardware types that are not built-in profiles; `edgectl check` needs a profile for each.
    pub unknown_profiles: Vec<String>,
}

/// Reads `path` (size, encoding and type checked like every edgectl input) and imports it.
pub fn import_file(path: &Path, opts: &ImportOptions) -> Result<Imported, Diagnostics> {
    let src = edgectl_model::load::read_source(path).map_err(|d| Diagnostics(vec![d]))?;
    import_source(&src, opts)
}

/// Splits the input into RSpec documents: one XML document, or a JSON object mapping each
/// aggregate URN to its manifest XML (what the portal API's `experimentManifests` returns).
fn read_docs(src: &Arc<SourceFile>, diags: &mut Diagnostics) -> Vec<Doc> {
    let text = src.text.trim_start_matches('\u{feff}');
    if !text.trim_start().starts_with('{') {
        return parse_doc(src, None, diags).into_iter().collect();
    }
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let mut d =
                Diagnostic::file(Kind::Syntax, &src.name, format!("JSON syntax error: {e}")).help(
                    "a portal-API manifest map is a JSON object of aggregate URN to manifest XML",
                );
            d.line = e.line();
            d.column = e.column();
            diags.push(d);
            return Vec::new();
        }
    };
    let Some(map) = value.as_object() else {
        diags.push(
            Diagnostic::at(
                Kind::NotRspec,
                src,
                0..1,
                "JSON input is not an object of aggregate URN to manifest XML",
            )
            .help(
                "pass the `experimentManifests` output of the portal API, or one manifest XML file",
            ),
        );
        return Vec::new();
    };
    let mut docs = Vec::new();
    for (aggregate, v) in map {
        // serde_json keeps no positions; the key's first occurrence is close enough to point at.
        let key = serde_json::Value::String(aggregate.clone()).to_string();
        let at = src.text.find(&key).unwrap_or(0);
        let Some(xml) = v.as_str() else {
            diags.push(
                Diagnostic::at(
                    Kind::NotRspec,
                    src,
                    at..at + key.len(),
                    format!("the value for aggregate {aggregate} is not a manifest XML string"),
                )
                .value(key)
                .help("each value must be the manifest RSpec as one JSON string"),
            );
            continue;
        };
        // Positions in errors are within this manifest's XML, as if it were its own file.
        let inner = SourceFile::new(format!("{}[{aggregate}]", src.name), xml.to_string());
        docs.extend(parse_doc(&inner, Some(aggregate.clone()), diags));
    }
    if map.is_empty() {
        diags.push(
            Diagnostic::at(Kind::NoNodes, src, 0..1, "the JSON map holds no manifests")
                .help("the experiment has no aggregates yet; is it still starting?"),
        );
    }
    docs
}

struct Chosen<'d> {
    doc: &'d Doc,
    node: &'d RNode,
}

fn line(src: &SourceFile, span: &std::ops::Range<usize>) -> usize {
    src.line_col(span.start).0
}

/// Imports already-read text (an RSpec XML or a JSON map of manifests).
pub fn import_source(src: &Arc<SourceFile>, opts: &ImportOptions) -> Result<Imported, Diagnostics> {
    let mut diags = Diagnostics::default();
    let docs = read_docs(src, &mut diags);
    if !diags.is_empty() {
        return Err(diags);
    }
    let mut notes = Vec::new();
    let manifest = docs.iter().any(Doc::is_manifest);

    // Nodes, across documents: a multi-site experiment lists each node in its own aggregate's
    // manifest, and a copy without a sliver id elsewhere is only a reference to it.
    let mut nodes: Vec<Chosen<'_>> = Vec::new();
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    // Interfaces of nodes already reported as duplicates: links may name them without a second error.
    let mut shadowed: BTreeSet<&str> = BTreeSet::new();
    for doc in &docs {
        let mut in_doc: HashMap<&str, &RNode> = HashMap::new();
        for n in &doc.nodes {
            if let Some(first) = in_doc.get(n.client_id.as_str()) {
                diags.push(
                    Diagnostic::at(
                        Kind::DuplicateName,
                        &doc.source,
                        n.span.clone(),
                        format!(
                            "node client_id `{}` is already used on line {}",
                            n.client_id,
                            line(&doc.source, &first.span)
                        ),
                    )
                    .field("node/@client_id")
                    .value(format!("{:?}", n.client_id))
                    .help("every <node> in an RSpec needs its own client_id"),
                );
                shadowed.extend(n.interfaces.iter().map(|f| f.client_id.as_str()));
                continue;
            }
            in_doc.insert(&n.client_id, n);
            match by_id.get(n.client_id.as_str()) {
                None => {
                    by_id.insert(&n.client_id, nodes.len());
                    nodes.push(Chosen { doc, node: n });
                }
                Some(&i) => match (nodes[i].node.sliver_id.is_some(), n.sliver_id.is_some()) {
                    (true, false) => {}
                    (false, true) => nodes[i] = Chosen { doc, node: n },
                    _ => {
                        let other = &nodes[i];
                        diags.push(
                            Diagnostic::at(Kind::DuplicateName, &doc.source, n.span.clone(), format!("node client_id `{}` is also in {} line {}", n.client_id, other.doc.source.name, line(&other.doc.source, &other.node.span)))
                                .field("node/@client_id")
                                .value(format!("{:?}", n.client_id))
                                .help("two aggregates cannot both hold the same node; are these manifests from different experiments?"),
                        );
                    }
                },
            }
        }
    }

    // Every interface client_id, for links to refer to.
    let mut ifaces: HashMap<&str, (usize, &RIface)> = HashMap::new();
    for (i, c) in nodes.iter().enumerate() {
        for f in &c.node.interfaces {
            if let Some((j, first)) = ifaces.get(f.client_id.as_str()) {
                let fsrc = &nodes[*j].doc.source;
                diags.push(
                    Diagnostic::at(Kind::DuplicateName, &c.doc.source, f.span.clone(), format!("interface client_id `{}` is already used in {} line {}", f.client_id, fsrc.name, line(fsrc, &first.span)))
                        .field("interface/@client_id")
                        .value(format!("{:?}", f.client_id))
                        .help("every <interface> needs its own client_id, or links cannot tell them apart"),
                );
                continue;
            }
            ifaces.insert(&f.client_id, (i, f));
        }
    }

    let pcs: Vec<usize> = (0..nodes.len())
        .filter(|&i| nodes[i].node.is_pc())
        .collect();
    for c in nodes.iter().filter(|c| !c.node.is_pc()) {
        let what = c.node.sliver_type.as_deref().unwrap_or("none");
        notes.push(format!(
            "skipped <node client_id=\"{}\"> (line {}): sliver type `{what}` is not a bare-metal PC",
            c.node.client_id,
            line(&c.doc.source, &c.node.span)
        ));
    }
    if manifest {
        for &i in &pcs {
            let c = &nodes[i];
            for f in c.node.interfaces.iter().filter(|f| f.mac_text.is_none()) {
                diags.push(
                    Diagnostic::at(Kind::MissingField, &c.doc.source, f.span.clone(), format!("interface `{}` of node `{}` has no mac_address", f.client_id, c.node.client_id))
                        .field("interface/@mac_address")
                        .help("a manifest names every allocated interface's MAC, which is how edgectl finds the NIC on the node; is this really a manifest?"),
                );
            }
        }
    }

    // Links: members by interface client_id, merged across documents by link client_id.
    struct L<'d> {
        id: &'d str,
        doc: &'d Doc,
        link: &'d crate::rspec::RLink,
        members: Vec<&'d str>,
    }
    let mut links: Vec<L<'_>> = Vec::new();
    for doc in &docs {
        let mut in_doc: HashMap<&str, usize> = HashMap::new();
        for l in &doc.links {
            if let Some(first) = in_doc.get(l.client_id.as_str()) {
                diags.push(
                    Diagnostic::at(
                        Kind::DuplicateName,
                        &doc.source,
                        l.span.clone(),
                        format!(
                            "link client_id `{}` is already used on line {first}",
                            l.client_id
                        ),
                    )
                    .field("link/@client_id")
                    .value(format!("{:?}", l.client_id))
                    .help("every <link> needs its own client_id"),
                );
                continue;
            }
            in_doc.insert(&l.client_id, line(&doc.source, &l.span));
            let mut members = Vec::new();
            for (m, span) in &l.members {
                if ifaces.contains_key(m.as_str()) {
                    members.push(m.as_str());
                    continue;
                }
                if shadowed.contains(m.as_str()) {
                    continue;
                }
                let known: Vec<&str> = ifaces.keys().copied().collect();
                let help = match did_you_mean(m, known.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "every <interface_ref> must name the client_id of an <interface> inside a <node>".to_string(),
                };
                diags.push(
                    Diagnostic::at(
                        Kind::UnknownInterface,
                        &doc.source,
                        span.clone(),
                        format!(
                            "link `{}` names interface `{m}`, which no node has",
                            l.client_id
                        ),
                    )
                    .field("interface_ref/@client_id")
                    .value(format!("{m:?}"))
                    .help(help),
                );
            }
            match links.iter_mut().find(|x| x.id == l.client_id) {
                Some(x) => {
                    for m in members {
                        if !x.members.contains(&m) {
                            x.members.push(m);
                        }
                    }
                }
                None => links.push(L {
                    id: &l.client_id,
                    doc,
                    link: l,
                    members,
                }),
            }
        }
    }

    // The login user.
    let mut users: Vec<&str> = Vec::new();
    for &i in &pcs {
        for l in &nodes[i].node.logins {
            if !users.contains(&l.user.as_str()) {
                users.push(&l.user);
            }
        }
    }
    let ssh_user: Option<String> = match &opts.user {
        _ if pcs.is_empty() => None,
        Some(u) => {
            for &i in &pcs {
                let c = &nodes[i];
                if !c.node.logins.is_empty() && !c.node.logins.iter().any(|l| &l.user == u) {
                    let theirs: Vec<&str> = c.node.logins.iter().map(|l| l.user.as_str()).collect();
                    diags.push(
                        Diagnostic::at(
                            Kind::UnknownUser,
                            &c.doc.source,
                            c.node.span.clone(),
                            format!("node `{}` has no <login> for user `{u}`", c.node.client_id),
                        )
                        .value(format!("{u:?}"))
                        .help(format!(
                            "users that can log in here: {}; pass one of them with --user",
                            theirs.join(", ")
                        )),
                    );
                }
            }
            Some(u.clone())
        }
        None => match users.as_slice() {
            [one] => Some(one.to_string()),
            [] => {
                let at = docs
                    .first()
                    .map(|d| (d.source.clone(), d.root_span.clone()));
                let msg = "the RSpec names no login user, so the SSH user is unknown";
                let d = match at {
                    Some((s, span)) => Diagnostic::at(Kind::UnknownUser, &s, span, msg),
                    None => Diagnostic::file(Kind::UnknownUser, &src.name, msg),
                };
                diags.push(d.help("pass your CloudLab user name with --user NAME"));
                None
            }
            many => {
                let first = pcs.iter().find_map(|&i| {
                    nodes[i]
                        .node
                        .logins
                        .first()
                        .map(|l| (nodes[i].doc, l.span.clone()))
                });
                let msg = format!(
                    "{} users can log in to these nodes: {}",
                    many.len(),
                    many.join(", ")
                );
                let d = match first {
                    Some((doc, span)) => {
                        Diagnostic::at(Kind::AmbiguousUser, &doc.source, span, msg)
                    }
                    None => Diagnostic::file(Kind::AmbiguousUser, &src.name, msg),
                };
                diags.push(d.field("login/@username").help(
                    "choose yours with --user NAME (a project's manifest lists every member)",
                ));
                None
            }
        },
    };

    if pcs.is_empty() && diags.is_empty() {
        let (s, span) = docs
            .first()
            .map(|d| (d.source.clone(), d.root_span.clone()))
            .unwrap_or((src.clone(), 0..0));
        let skipped = nodes.len();
        diags.push(
            Diagnostic::at(
                Kind::NoNodes,
                &s,
                span,
                format!(
                    "the experiment has no bare-metal PC nodes ({skipped} other node{} skipped)",
                    if skipped == 1 { "" } else { "s" }
                ),
            )
            .help(
                "edgectl installs NixOS on raw-pc nodes; request some with a RawPC in the profile",
            ),
        );
    }
    if !diags.is_empty() {
        diags.sort();
        return Err(diags);
    }
    let ssh_user = ssh_user.unwrap_or_default();

    // Names: NixOS host names for nodes, simple names for networks and the cluster.
    let mut node_names: Vec<String> = Vec::new();
    for &i in &pcs {
        let id = &nodes[i].node.client_id;
        let base = sanitize(id, is_nixos_hostname, "node");
        let name = unique(&base, &node_names);
        if &name != id {
            notes.push(format!(
                "node client_id {id:?} is not a valid NixOS host name; named it `{name}`"
            ));
        }
        node_names.push(name);
    }

    // Networks from links: the subnet is what the members' addresses share.
    struct Net {
        name: String,
        subnet: Ipv4Cidr,
        vlan: Option<u16>,
        comment: String,
    }
    let mut nets: Vec<Net> = Vec::new();
    let mut iface_net: HashMap<&str, usize> = HashMap::new();
    for l in &links {
        let mut subnet: Option<(Ipv4Cidr, &str)> = None;
        let mut addressed = Vec::new();
        for m in &l.members {
            let (ni, f) = ifaces[m];
            if !nodes[ni].node.is_pc() {
                continue;
            }
            let Some(ip) = &f.ip else { continue };
            let net = Ipv4Cidr {
                addr: ip.addr,
                prefix: ip.prefix,
            }
            .network();
            match subnet {
                None => subnet = Some((net, f.client_id.as_str())),
                Some((s, first)) if s != net => {
                    diags.push(
                        Diagnostic::at(Kind::InvalidAddress, &nodes[ni].doc.source, f.span.clone(), format!("interface `{}` is on {net} but `{first}` on the same link `{}` is on {s}", f.client_id, l.id))
                            .field("ip/@address")
                            .value(format!("{}/{}", ip.addr, ip.prefix))
                            .help("every member of a LAN needs an address in the same subnet with the same netmask"),
                    );
                }
                Some(_) => {}
            }
            addressed.push(*m);
        }
        let Some((subnet, _)) = subnet else {
            notes.push(format!(
                "link `{}` (line {}) has no addressed PC members; not imported as a network",
                l.id,
                line(&l.doc.source, &l.link.span)
            ));
            continue;
        };
        let taken: Vec<String> = nets.iter().map(|n| n.name.clone()).collect();
        let name = unique(&sanitize(l.id, is_simple_name, "lan"), &taken);
        if name != l.id {
            notes.push(format!(
                "link client_id {:?} is not a valid network name; named it `{name}`",
                l.id
            ));
        }
        for m in addressed {
            if iface_net.contains_key(m) {
                notes.push(format!(
                    "interface `{m}` is on more than one link; kept it on the first"
                ));
            } else {
                iface_net.insert(m, nets.len());
            }
        }
        let comment = format!(
            "from <link client_id=\"{}\">, line {}",
            l.id,
            line(&l.doc.source, &l.link.span)
        );
        nets.push(Net {
            name,
            subnet,
            vlan: l.link.vlantag,
            comment,
        });
    }
    if !diags.is_empty() {
        diags.sort();
        return Err(diags);
    }

    let sites: BTreeSet<String> = pcs
        .iter()
        .filter_map(|&i| {
            nodes[i]
                .node
                .component_manager_id
                .as_deref()
                .and_then(site_of)
        })
        .collect();
    let expires: BTreeSet<&str> = docs.iter().filter_map(|d| d.expires.as_deref()).collect();
    if expires.len() > 1 {
        notes.push(format!(
            "the manifests expire at different times ({}); kept the earliest",
            expires.iter().copied().collect::<Vec<_>>().join(", ")
        ));
    }
    let experiment = docs.iter().find_map(|d| d.experiment.as_deref());
    let stem = Path::new(&src.name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned());
    let (name_from, name_raw) = match (&opts.name, experiment, &stem) {
        (Some(n), _, _) => ("--name", n.clone()),
        (None, Some(e), _) => ("<emulab:portal experiment>", e.to_string()),
        (None, None, Some(s)) => ("the input file name", s.clone()),
        _ => ("a fixed default", "cloudlab".to_string()),
    };
    let cluster_name = sanitize(&name_raw, is_simple_name, "cloudlab");
    if cluster_name != name_raw {
        notes.push(format!("cluster name {name_raw:?} may use only letters, digits, `-` and `_`; named it `{cluster_name}`"));
    }

    // Hardware types against the built-in profiles.
    let (mut builtin, _) = ProfileSet::builtin();
    let mut unknown_profiles: Vec<String> = Vec::new();

    let mut w = String::new();
    let kind = if manifest {
        "manifest"
    } else {
        "request RSpec"
    };
    let _ = writeln!(
        w,
        "# Imported by `edgectl import cloudlab` from {} ({kind}).",
        one_line(&src.name)
    );
    w.push_str(
        "# Each value's comment says where in the RSpec it came from. Chosen by edgectl, not CloudLab:\n\
         #   roles: the first node is ray-head and zenoh-router, every other node a ray-worker;\n\
         #   features: [defaults] below on every node, plus cuda on nodes whose profile has a GPU.\n\
         # `host` is the chosen user's <login hostname> (the physical node, as the portal's SSH\n\
         # command shows it); the experiment DNS name from <host name> is noted with each node.\n",
    );
    if !manifest {
        w.push_str("# A request RSpec has no hosts or MACs yet: `host` is a placeholder and `mac` is empty;\n# import the manifest once the experiment is ready.\n");
    }
    w.push_str("\n[cluster]\n");
    kv(
        &mut w,
        "name",
        &toml_str(&cluster_name),
        &format!("from {name_from}"),
    );
    kv(&mut w, "nixpkgs", &toml_str(NIXPKGS), "edgectl default");
    let user_from = if opts.user.is_some() {
        "--user"
    } else {
        "the only <login username>"
    };
    kv(
        &mut w,
        "ssh_user",
        &toml_str(&ssh_user),
        &format!("from {user_from}"),
    );
    match sites.len() {
        0 => {}
        1 => {
            let site = sites.iter().next().cloned().unwrap_or_default();
            let cm = pcs.iter().find_map(|&i| nodes[i].node.component_manager_id.clone()).unwrap_or_default();
            kv(&mut w, "site", &toml_str(&site), &format!("from component_manager_id=\"{cm}\""));
        }
        _ => notes.push(format!(
            "the nodes are at {} sites ({}); [cluster] site is left out and each node is tagged with its site",
            sites.len(),
            sites.iter().cloned().collect::<Vec<_>>().join(", ")
        )),
    }
    if let Some(e) = expires.iter().next() {
        kv(&mut w, "expires", &toml_str(e), "from <rspec expires>");
    } else if manifest {
        w.push_str("# expires: not in this manifest (the portal's Manifest tab leaves it out); see the portal\n");
    }
    w.push_str("\n[defaults]\n");
    kv(
        &mut w,
        "features",
        &toml_list(DEFAULT_FEATURES.iter().copied()),
        "edgectl default feature set",
    );

    for n in &nets {
        let _ = writeln!(
            w,
            "\n[network.{}]  # {}",
            toml_key(&n.name),
            one_line(&n.comment)
        );
        kv(
            &mut w,
            "subnet",
            &toml_str(&n.subnet.to_string()),
            "from the members' <ip address netmask>",
        );
        if let Some(v) = n.vlan {
            kv(
                &mut w,
                "vlan",
                &v.to_string(),
                &format!("from vlantag=\"{v}\" (the switch VLAN CloudLab assigned)"),
            );
        }
    }

    for (k, &i) in pcs.iter().enumerate() {
        let c = &nodes[i];
        let n = c.node;
        let name = &node_names[k];
        w.push_str("\n[[node]]\n");
        let mut from = format!("from <node client_id=\"{}\">", n.client_id);
        if let Some(s) = &n.sliver_id {
            let _ = write!(from, " sliver {s}");
        }
        let _ = write!(
            from,
            ", {} line {}",
            c.doc.source.name,
            line(&c.doc.source, &n.span)
        );
        let _ = writeln!(w, "# {}", one_line(&from));
        if let Some(v) = &n.vnode_name {
            let _ = writeln!(w, "# physical node {}", one_line(v));
        }
        if let Some(h) = &n.host_name {
            let _ = writeln!(w, "# experiment DNS name {} (<host name>)", one_line(h));
        }
        kv(&mut w, "name", &toml_str(name), "from client_id");
        let login = n.logins.iter().find(|l| l.user == ssh_user);
        let (host, host_from) = match (
            login.and_then(|l| l.hostname.clone()),
            &n.host_name,
            &n.host_ipv4,
        ) {
            (Some(h), _, _) => (h, format!("from <login hostname> of user {ssh_user}")),
            (None, Some(h), _) => (
                h.clone(),
                "from <host name> (no <login> for this user)".to_string(),
            ),
            (None, None, Some(ip)) => (ip.clone(), "from <host ipv4>".to_string()),
            (None, None, None) => (
                name.clone(),
                "placeholder: the RSpec names no host; replace it with the node's address"
                    .to_string(),
            ),
        };
        if !manifest || (login.is_none() && n.host_name.is_none() && n.host_ipv4.is_none()) {
            notes.push(format!(
                "node `{name}`: no host in the RSpec; wrote the placeholder host {host:?}"
            ));
        }
        kv(&mut w, "host", &toml_str(&host), &host_from);
        if let Some(p) = login.and_then(|l| l.port).filter(|p| *p != 22) {
            kv(&mut w, "port", &p.to_string(), "from <login port>");
        }
        if let Some(ip) = &n.host_ipv4 {
            if ip.parse::<IpAddr>().is_ok() {
                kv(&mut w, "control_ip", &toml_str(ip), "from <host ipv4>");
            } else {
                notes.push(format!(
                    "node `{name}`: <host ipv4> {ip:?} is not an IP address; left out"
                ));
            }
        }
        let (ty, ty_from) = n
            .node_type()
            .unwrap_or(("pc", "no hardware type in the RSpec"));
        let known = builtin.contains(ty);
        if !known && !unknown_profiles.iter().any(|u| u == ty) {
            unknown_profiles.push(ty.to_string());
        }
        let comment = if known {
            format!("from {ty_from}; built-in profile")
        } else if ty == "pc" {
            format!(
                "from {ty_from}: CloudLab may pick any PC type, so no profile fits; set the real type"
            )
        } else {
            format!(
                "from {ty_from}: NOT a built-in profile; add [profile.{ty}] or a profile_dir file"
            )
        };
        kv(&mut w, "profile", &toml_str(ty), &comment);
        if k == 0 {
            kv(
                &mut w,
                "roles",
                &toml_list(["ray-head", "zenoh-router"]),
                "edgectl default: the first node leads",
            );
        } else {
            kv(
                &mut w,
                "roles",
                &toml_list(["ray-worker"]),
                "edgectl default",
            );
        }
        let gpu = known
            && builtin
                .resolve(ty, &mut Diagnostics::default())
                .is_ok_and(|p| p.has_gpu());
        if gpu {
            kv(
                &mut w,
                "features",
                &toml_list(["+cuda"]),
                &format!("profile {ty} has a GPU"),
            );
        }
        let node_site = n.component_manager_id.as_deref().and_then(site_of);
        if let Some(s) = node_site.filter(|s| sites.len() > 1 && is_simple_name(s)) {
            kv(
                &mut w,
                "tags",
                &toml_list([s.as_str()]),
                "the node's site, from component_manager_id",
            );
        }
        for f in &n.interfaces {
            let Some(ip) = &f.ip else {
                if manifest {
                    notes.push(format!(
                        "node `{name}`: interface `{}` has no IPv4 address; not imported",
                        f.client_id
                    ));
                }
                continue;
            };
            let port = f
                .component_id
                .as_deref()
                .and_then(|c| c.rsplit_once(':'))
                .map(|(_, p)| p);
            let mut from = format!("from <interface client_id=\"{}\">", f.client_id);
            if let Some(p) = port {
                let _ = write!(
                    from,
                    " (Emulab port {p}, not the Linux name: matched by MAC)"
                );
            }
            let _ = writeln!(w, "[[node.lan]]  # {}", one_line(&from));
            if let Some(&ni) = iface_net.get(f.client_id.as_str()) {
                kv(
                    &mut w,
                    "network",
                    &toml_str(&nets[ni].name),
                    "the <link> this interface is on",
                );
            }
            let shown = match &ip.netmask_text {
                Some(m) => format!("from <ip address=\"{}\" netmask=\"{m}\">", ip.address_text),
                None => format!("from <ip address=\"{}\">", ip.address_text),
            };
            kv(
                &mut w,
                "address",
                &toml_str(&format!("{}/{}", ip.addr, ip.prefix)),
                &shown,
            );
            match (&f.mac, &f.mac_text) {
                (Some(m), Some(t)) => kv(
                    &mut w,
                    "mac",
                    &toml_str(&m.to_string()),
                    &format!("from mac_address=\"{t}\""),
                ),
                _ => kv(
                    &mut w,
                    "mac",
                    &toml_str(""),
                    "unknown until the experiment runs",
                ),
            }
        }
    }
    for u in &unknown_profiles {
        notes.push(if u == "pc" {
            "hardware type `pc` is generic (any PC): set each such node's `profile` to its real type before `edgectl check`".to_string()
        } else {
            format!("hardware type `{u}` is not a built-in profile: `edgectl check` needs [profile.{u}] or a {u}.toml in `profile_dir` (edgectl does not guess hardware)")
        });
    }

    // The output must be a topology edgectl accepts, apart from profiles it cannot know.
    let out_src = SourceFile::new(format!("{} (imported topology)", src.name), w.clone());
    if let Err(d) = check_source(out_src, Path::new("."), &LoadOptions::default()) {
        let rest: Vec<Diagnostic> =
            d.0.into_iter()
                .filter(|x| x.kind != Kind::UnknownProfile)
                .collect();
        if !rest.is_empty() {
            return Err(Diagnostics(rest));
        }
    }
    let file: TopologyFile = toml::from_str(&w).map_err(|e| {
        Diagnostics(vec![Diagnostic::file(
            Kind::Syntax,
            &src.name,
            format!("internal error: the imported topology does not parse back: {e}"),
        )])
    })?;
    Ok(Imported {
        toml: w,
        file,
        notes,
        manifest,
        unknown_profiles,
    })
}

fn kv(w: &mut String, key: &str, value: &str, comment: &str) {
    let _ = writeln!(w, "{key} = {value}  # {}", one_line(comment));
}

fn toml_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let v: Vec<String> = items.into_iter().map(toml_str).collect();
    format!("[{}]", v.join(", "))
}

/// A table key: bare when TOML allows it, quoted otherwise.
fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    {
        k.to_string()
    } else {
        toml_str(k)
    }
}

/// Makes `s` satisfy `valid` by replacing other characters with `-` and trimming, or `fallback`.
fn sanitize(s: &str, valid: fn(&str) -> bool, fallback: &str) -> String {
    if valid(s) {
        return s.to_string();
    }
    let mapped: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut t: String = mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .chars()
        .take(63)
        .collect();
    while t.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        t.pop();
    }
    if valid(&t) { t } else { fallback.to_string() }
}

fn unique(base: &str, taken: &[String]) -> String {
    if !taken.iter().any(|t| t == base) {
        return base.to_string();
    }
    (2..)
        .map(|k| format!("{}-{k}", base.chars().take(58).collect::<String>()))
        .find(|c| !taken.iter().any(|t| t == c))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize("node0", is_nixos_hostname, "node"), "node0");
        assert_eq!(sanitize("node.0", is_nixos_hostname, "node"), "node-0");
        assert_eq!(sanitize("-x y-", is_nixos_hostname, "node"), "x-y");
        assert_eq!(sanitize("***", is_nixos_hostname, "node"), "node");
        assert_eq!(
            sanitize(&"a".repeat(100), is_nixos_hostname, "node").len(),
            63
        );
        assert_eq!(unique("a", &["a".into(), "a-2".into()]), "a-3");
    }
}
