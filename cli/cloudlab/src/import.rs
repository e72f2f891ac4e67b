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
use crate::rspec::{Doc, RIface, RLink, RNode, parse_doc, site_of};

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
    let input = Input::new(src, &docs, &mut diags);
    input.note_skipped(&mut notes);
    if input.manifest {
        input.check_macs(&mut diags);
    }
    let links = input.merge_links(&mut diags);
    let ssh_user = input.ssh_user(opts, &mut diags);
    if input.pcs.is_empty() && diags.is_empty() {
        diags.push(input.no_pcs());
    }
    if !diags.is_empty() {
        diags.sort();
        return Err(diags);
    }
    let ssh_user = ssh_user.unwrap_or_default();

    // Names: NixOS host names for nodes, simple names for networks and the cluster.
    let node_names = input.name_nodes(&mut notes);
    let (nets, iface_net) = input.networks_from_links(&links, &mut diags, &mut notes);
    if !diags.is_empty() {
        diags.sort();
        return Err(diags);
    }
    let sites = input.sites();
    let expires = input.expires(&mut notes);
    let (cluster_name, name_from) = input.cluster_name(opts, &mut notes);

    // Hardware types against the built-in profiles.
    let (builtin, _) = ProfileSet::builtin();
    let mut out = Writer {
        w: String::new(),
        input: &input,
        notes: &mut notes,
        ssh_user,
        sites,
        nets,
        iface_net,
        builtin,
        unknown_profiles: Vec::new(),
    };
    out.header();
    out.cluster_table(opts, &cluster_name, name_from, expires);
    out.defaults_table();
    out.network_tables();
    for (k, &i) in input.pcs.iter().enumerate() {
        out.node_table(k, &input.nodes[i], &node_names[k]);
    }
    out.note_unknown_profiles();
    let Writer {
        w,
        unknown_profiles,
        ..
    } = out;

    let file = check_output(src, &w)?;
    Ok(Imported {
        toml: w,
        file,
        notes,
        manifest: input.manifest,
        unknown_profiles,
    })
}

/// The RSpec as the import steps see it: its documents, one copy of each node across them,
/// and every interface by client_id.
struct Input<'d> {
    src: &'d Arc<SourceFile>,
    docs: &'d [Doc],
    /// Whether any document is a manifest (a running experiment) rather than a request.
    manifest: bool,
    nodes: Vec<Chosen<'d>>,
    /// Interfaces of nodes already reported as duplicates: links may name them without a second error.
    shadowed: BTreeSet<&'d str>,
    /// Every interface client_id, for links to refer to: the index of its node and the interface.
    ifaces: HashMap<&'d str, (usize, &'d RIface)>,
    /// Indexes into `nodes` of the bare-metal PCs, the only nodes imported.
    pcs: Vec<usize>,
}

/// A link merged across documents: the first document's `<link>`, and the members of all.
struct Link<'d> {
    id: &'d str,
    doc: &'d Doc,
    link: &'d RLink,
    members: Vec<&'d str>,
}

/// A network made from a link.
struct Net {
    name: String,
    subnet: Ipv4Cidr,
    vlan: Option<u16>,
    comment: String,
}

/// Nodes, across documents: a multi-site experiment lists each node in its own aggregate's
/// manifest, and a copy without a sliver id elsewhere is only a reference to it. Also returns
/// the interfaces of nodes reported as duplicates.
fn choose_nodes<'d>(
    docs: &'d [Doc],
    diags: &mut Diagnostics,
) -> (Vec<Chosen<'d>>, BTreeSet<&'d str>) {
    let mut nodes: Vec<Chosen<'_>> = Vec::new();
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    // Interfaces of nodes already reported as duplicates: links may name them without a second error.
    let mut shadowed: BTreeSet<&str> = BTreeSet::new();
    for doc in docs {
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
    (nodes, shadowed)
}

/// Every interface client_id, for links to refer to.
fn index_interfaces<'d>(
    nodes: &[Chosen<'d>],
    diags: &mut Diagnostics,
) -> HashMap<&'d str, (usize, &'d RIface)> {
    let mut ifaces: HashMap<&str, (usize, &RIface)> = HashMap::new();
    for (i, c) in nodes.iter().enumerate() {
        let node: &'d RNode = c.node;
        for f in &node.interfaces {
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
    ifaces
}

impl<'d> Input<'d> {
    /// Chooses the nodes and indexes their interfaces, reporting duplicates of either.
    fn new(src: &'d Arc<SourceFile>, docs: &'d [Doc], diags: &mut Diagnostics) -> Self {
        let manifest = docs.iter().any(Doc::is_manifest);
        let (nodes, shadowed) = choose_nodes(docs, diags);
        let ifaces = index_interfaces(&nodes, diags);
        let pcs: Vec<usize> = (0..nodes.len())
            .filter(|&i| nodes[i].node.is_pc())
            .collect();
        Input {
            src,
            docs,
            manifest,
            nodes,
            shadowed,
            ifaces,
            pcs,
        }
    }

    fn note_skipped(&self, notes: &mut Vec<String>) {
        for c in self.nodes.iter().filter(|c| !c.node.is_pc()) {
            let what = c.node.sliver_type.as_deref().unwrap_or("none");
            notes.push(format!(
                "skipped <node client_id=\"{}\"> (line {}): sliver type `{what}` is not a bare-metal PC",
                c.node.client_id,
                line(&c.doc.source, &c.node.span)
            ));
        }
    }

    /// A manifest names every allocated interface's MAC, which is how edgectl finds the NIC.
    fn check_macs(&self, diags: &mut Diagnostics) {
        for &i in &self.pcs {
            let c = &self.nodes[i];
            for f in c.node.interfaces.iter().filter(|f| f.mac_text.is_none()) {
                diags.push(
                    Diagnostic::at(Kind::MissingField, &c.doc.source, f.span.clone(), format!("interface `{}` of node `{}` has no mac_address", f.client_id, c.node.client_id))
                        .field("interface/@mac_address")
                        .help("a manifest names every allocated interface's MAC, which is how edgectl finds the NIC on the node; is this really a manifest?"),
                );
            }
        }
    }

    /// Links: members by interface client_id, merged across documents by link client_id.
    fn merge_links(&self, diags: &mut Diagnostics) -> Vec<Link<'d>> {
        let mut links: Vec<Link<'d>> = Vec::new();
        for doc in self.docs {
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
                let members = self.link_members(doc, l, diags);
                match links.iter_mut().find(|x| x.id == l.client_id) {
                    Some(x) => {
                        for m in members {
                            if !x.members.contains(&m) {
                                x.members.push(m);
                            }
                        }
                    }
                    None => links.push(Link {
                        id: &l.client_id,
                        doc,
                        link: l,
                        members,
                    }),
                }
            }
        }
        links
    }

    /// The link's members that are known interfaces; the others are reported, except those of
    /// nodes already reported as duplicates.
    fn link_members(&self, doc: &Doc, l: &'d RLink, diags: &mut Diagnostics) -> Vec<&'d str> {
        let mut members = Vec::new();
        for (m, span) in &l.members {
            if self.ifaces.contains_key(m.as_str()) {
                members.push(m.as_str());
                continue;
            }
            if self.shadowed.contains(m.as_str()) {
                continue;
            }
            // Sorted, so a tie between equally close names is broken the same way every run.
            let mut known: Vec<&str> = self.ifaces.keys().copied().collect();
            known.sort_unstable();
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
        members
    }

    /// The login user: `--user`, which every PC with logins must accept, or else the only user
    /// the PCs' `<login>`s name. `None` when there are no PCs, or after reporting why not.
    fn ssh_user(&self, opts: &ImportOptions, diags: &mut Diagnostics) -> Option<String> {
        let mut users: Vec<&str> = Vec::new();
        for &i in &self.pcs {
            for l in &self.nodes[i].node.logins {
                if !users.contains(&l.user.as_str()) {
                    users.push(&l.user);
                }
            }
        }
        match &opts.user {
            _ if self.pcs.is_empty() => None,
            Some(u) => {
                self.check_logins_for(u, diags);
                Some(u.clone())
            }
            None => match users.as_slice() {
                [one] => Some(one.to_string()),
                [] => {
                    self.no_login_user(diags);
                    None
                }
                many => {
                    self.ambiguous_user(many, diags);
                    None
                }
            },
        }
    }

    /// Reports each PC that has logins but none for `--user`.
    fn check_logins_for(&self, u: &str, diags: &mut Diagnostics) {
        for &i in &self.pcs {
            let c = &self.nodes[i];
            if !c.node.logins.is_empty() && !c.node.logins.iter().any(|l| l.user == u) {
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
    }

    fn no_login_user(&self, diags: &mut Diagnostics) {
        let at = self
            .docs
            .first()
            .map(|d| (d.source.clone(), d.root_span.clone()));
        let msg = "the RSpec names no login user, so the SSH user is unknown";
        let d = match at {
            Some((s, span)) => Diagnostic::at(Kind::UnknownUser, &s, span, msg),
            None => Diagnostic::file(Kind::UnknownUser, &self.src.name, msg),
        };
        diags.push(d.help("pass your CloudLab user name with --user NAME"));
    }

    fn ambiguous_user(&self, many: &[&str], diags: &mut Diagnostics) {
        let first = self.pcs.iter().find_map(|&i| {
            self.nodes[i]
                .node
                .logins
                .first()
                .map(|l| (self.nodes[i].doc, l.span.clone()))
        });
        let msg = format!(
            "{} users can log in to these nodes: {}",
            many.len(),
            many.join(", ")
        );
        let d = match first {
            Some((doc, span)) => Diagnostic::at(Kind::AmbiguousUser, &doc.source, span, msg),
            None => Diagnostic::file(Kind::AmbiguousUser, &self.src.name, msg),
        };
        diags.push(
            d.field("login/@username")
                .help("choose yours with --user NAME (a project's manifest lists every member)"),
        );
    }

    /// The error for an experiment with nothing to import.
    fn no_pcs(&self) -> Diagnostic {
        let (s, span) = self
            .docs
            .first()
            .map(|d| (d.source.clone(), d.root_span.clone()))
            .unwrap_or((self.src.clone(), 0..0));
        let skipped = self.nodes.len();
        Diagnostic::at(
            Kind::NoNodes,
            &s,
            span,
            format!(
                "the experiment has no bare-metal PC nodes ({skipped} other node{} skipped)",
                if skipped == 1 { "" } else { "s" }
            ),
        )
        .help("edgectl installs NixOS on raw-pc nodes; request some with a RawPC in the profile")
    }

    /// NixOS host names for the PCs, from their client_ids, in the order of `pcs`.
    fn name_nodes(&self, notes: &mut Vec<String>) -> Vec<String> {
        let mut node_names: Vec<String> = Vec::new();
        for &i in &self.pcs {
            let id = &self.nodes[i].node.client_id;
            let base = sanitize(id, is_nixos_hostname, "node");
            let name = unique(&base, &node_names);
            if &name != id {
                notes.push(format!(
                    "node client_id {id:?} is not a valid NixOS host name; named it `{name}`"
                ));
            }
            node_names.push(name);
        }
        node_names
    }

    /// Networks from links: the subnet is what the members' addresses share. Also returns the
    /// network (an index into the first) of each member interface.
    fn networks_from_links(
        &self,
        links: &[Link<'d>],
        diags: &mut Diagnostics,
        notes: &mut Vec<String>,
    ) -> (Vec<Net>, HashMap<&'d str, usize>) {
        let mut nets: Vec<Net> = Vec::new();
        let mut iface_net: HashMap<&str, usize> = HashMap::new();
        for l in links {
            let (subnet, addressed) = self.link_subnet(l, diags);
            let Some(subnet) = subnet else {
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
        (nets, iface_net)
    }

    /// The subnet of the link's first addressed PC member, reporting members on another, and
    /// the addressed PC members.
    fn link_subnet(
        &self,
        l: &Link<'d>,
        diags: &mut Diagnostics,
    ) -> (Option<Ipv4Cidr>, Vec<&'d str>) {
        let mut subnet: Option<(Ipv4Cidr, &str)> = None;
        let mut addressed = Vec::new();
        for m in &l.members {
            let (ni, f) = self.ifaces[m];
            if !self.nodes[ni].node.is_pc() {
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
                        Diagnostic::at(Kind::InvalidAddress, &self.nodes[ni].doc.source, f.span.clone(), format!("interface `{}` is on {net} but `{first}` on the same link `{}` is on {s}", f.client_id, l.id))
                            .field("ip/@address")
                            .value(format!("{}/{}", ip.addr, ip.prefix))
                            .help("every member of a LAN needs an address in the same subnet with the same netmask"),
                    );
                }
                Some(_) => {}
            }
            addressed.push(*m);
        }
        (subnet.map(|(s, _)| s), addressed)
    }

    /// The CloudLab sites the PCs are at.
    fn sites(&self) -> BTreeSet<String> {
        self.pcs
            .iter()
            .filter_map(|&i| {
                self.nodes[i]
                    .node
                    .component_manager_id
                    .as_deref()
                    .and_then(site_of)
            })
            .collect()
    }

    /// The earliest of the documents' `expires`, with a note when they differ.
    fn expires(&self, notes: &mut Vec<String>) -> Option<&'d str> {
        let expires: BTreeSet<&str> = self
            .docs
            .iter()
            .filter_map(|d| d.expires.as_deref())
            .collect();
        if expires.len() > 1 {
            notes.push(format!(
                "the manifests expire at different times ({}); kept the earliest",
                expires.iter().copied().collect::<Vec<_>>().join(", ")
            ));
        }
        expires.iter().next().copied()
    }

    /// The cluster name and where it came from: `--name`, the experiment, or the file name.
    fn cluster_name(
        &self,
        opts: &ImportOptions,
        notes: &mut Vec<String>,
    ) -> (String, &'static str) {
        let experiment = self.docs.iter().find_map(|d| d.experiment.as_deref());
        let stem = Path::new(&self.src.name)
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
        (cluster_name, name_from)
    }
}

/// The topology text being written, and what writing its tables shares.
struct Writer<'a, 'd> {
    w: String,
    input: &'a Input<'d>,
    notes: &'a mut Vec<String>,
    ssh_user: String,
    sites: BTreeSet<String>,
    nets: Vec<Net>,
    /// The network (an index into `nets`) of each interface on one.
    iface_net: HashMap<&'d str, usize>,
    builtin: ProfileSet,
    /// Hardware types that are not built-in profiles, in the order first met.
    unknown_profiles: Vec<String>,
}

impl Writer<'_, '_> {
    /// One `key = value  # comment` line.
    fn kv(&mut self, key: &str, value: &str, comment: &str) {
        let _ = writeln!(self.w, "{key} = {value}  # {}", one_line(comment));
    }

    /// What the file is, and which of its values edgectl chose rather than read.
    fn header(&mut self) {
        let kind = if self.input.manifest {
            "manifest"
        } else {
            "request RSpec"
        };
        let _ = writeln!(
            self.w,
            "# Imported by `edgectl import cloudlab` from {} ({kind}).",
            one_line(&self.input.src.name)
        );
        self.w.push_str(
            "# Each value's comment says where in the RSpec it came from. Chosen by edgectl, not CloudLab:\n\
             #   roles: the first node is ray-head and zenoh-router, every other node a ray-worker;\n\
             #   features: [defaults] below on every node, plus cuda on nodes whose profile has a GPU.\n\
             # `host` is the chosen user's <login hostname> (the physical node, as the portal's SSH\n\
             # command shows it); the experiment DNS name from <host name> is noted with each node.\n",
        );
        if !self.input.manifest {
            self.w.push_str("# A request RSpec has no hosts or MACs yet: `host` is a placeholder and `mac` is empty;\n# import the manifest once the experiment is ready.\n");
        }
    }

    fn cluster_table(
        &mut self,
        opts: &ImportOptions,
        cluster_name: &str,
        name_from: &str,
        expires: Option<&str>,
    ) {
        self.w.push_str("\n[cluster]\n");
        self.kv(
            "name",
            &toml_str(cluster_name),
            &format!("from {name_from}"),
        );
        self.kv("nixpkgs", &toml_str(NIXPKGS), "edgectl default");
        let user_from = if opts.user.is_some() {
            "--user"
        } else {
            "the only <login username>"
        };
        self.kv(
            "ssh_user",
            &toml_str(&self.ssh_user),
            &format!("from {user_from}"),
        );
        match self.sites.len() {
            0 => {}
            1 => {
                let site = self.sites.iter().next().cloned().unwrap_or_default();
                let (pcs, nodes) = (&self.input.pcs, &self.input.nodes);
                let cm = pcs.iter().find_map(|&i| nodes[i].node.component_manager_id.clone()).unwrap_or_default();
                self.kv("site", &toml_str(&site), &format!("from component_manager_id=\"{cm}\""));
            }
            _ => self.notes.push(format!(
                "the nodes are at {} sites ({}); [cluster] site is left out and each node is tagged with its site",
                self.sites.len(),
                self.sites.iter().cloned().collect::<Vec<_>>().join(", ")
            )),
        }
        if let Some(e) = expires {
            self.kv("expires", &toml_str(e), "from <rspec expires>");
        } else if self.input.manifest {
            self.w.push_str("# expires: not in this manifest (the portal's Manifest tab leaves it out); see the portal\n");
        }
    }

    fn defaults_table(&mut self) {
        self.w.push_str("\n[defaults]\n");
        self.kv(
            "features",
            &toml_list(DEFAULT_FEATURES.iter().copied()),
            "edgectl default feature set",
        );
    }

    fn network_tables(&mut self) {
        for k in 0..self.nets.len() {
            let n = &self.nets[k];
            let _ = writeln!(
                self.w,
                "\n[network.{}]  # {}",
                toml_key(&n.name),
                one_line(&n.comment)
            );
            let (subnet, vlan) = (n.subnet, n.vlan);
            self.kv(
                "subnet",
                &toml_str(&subnet.to_string()),
                "from the members' <ip address netmask>",
            );
            if let Some(v) = vlan {
                self.kv(
                    "vlan",
                    &v.to_string(),
                    &format!("from vlantag=\"{v}\" (the switch VLAN CloudLab assigned)"),
                );
            }
        }
    }

    /// The `[[node]]` of the `k`th PC, named `name`.
    fn node_table(&mut self, k: usize, c: &Chosen<'_>, name: &str) {
        let n = c.node;
        self.w.push_str("\n[[node]]\n");
        self.node_origin(c);
        self.kv("name", &toml_str(name), "from client_id");
        self.node_address(n, name);
        let (ty, known) = self.node_profile(n);
        self.node_roles(k, ty, known);
        let node_site = n.component_manager_id.as_deref().and_then(site_of);
        if let Some(s) = node_site.filter(|s| self.sites.len() > 1 && is_simple_name(s)) {
            self.kv(
                "tags",
                &toml_list([s.as_str()]),
                "the node's site, from component_manager_id",
            );
        }
        for f in &n.interfaces {
            self.lan(name, f);
        }
    }

    /// Comments saying which `<node>` this is, and its names other than the host.
    fn node_origin(&mut self, c: &Chosen<'_>) {
        let n = c.node;
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
        let _ = writeln!(self.w, "# {}", one_line(&from));
        if let Some(v) = &n.vnode_name {
            let _ = writeln!(self.w, "# physical node {}", one_line(v));
        }
        if let Some(h) = &n.host_name {
            let _ = writeln!(
                self.w,
                "# experiment DNS name {} (<host name>)",
                one_line(h)
            );
        }
    }

    /// `host`, `port` and `control_ip`: from the chosen user's `<login>` where the node has one.
    fn node_address(&mut self, n: &RNode, name: &str) {
        let login = n.logins.iter().find(|l| l.user == self.ssh_user);
        let (host, host_from) = match (
            login.and_then(|l| l.hostname.clone()),
            &n.host_name,
            &n.host_ipv4,
        ) {
            (Some(h), _, _) => (
                h,
                format!("from <login hostname> of user {}", self.ssh_user),
            ),
            (None, Some(h), _) => (
                h.clone(),
                "from <host name> (no <login> for this user)".to_string(),
            ),
            (None, None, Some(ip)) => (ip.clone(), "from <host ipv4>".to_string()),
            (None, None, None) => (
                name.to_string(),
                "placeholder: the RSpec names no host; replace it with the node's address"
                    .to_string(),
            ),
        };
        if !self.input.manifest
            || (login.is_none() && n.host_name.is_none() && n.host_ipv4.is_none())
        {
            self.notes.push(format!(
                "node `{name}`: no host in the RSpec; wrote the placeholder host {host:?}"
            ));
        }
        self.kv("host", &toml_str(&host), &host_from);
        if let Some(p) = login.and_then(|l| l.port).filter(|p| *p != 22) {
            self.kv("port", &p.to_string(), "from <login port>");
        }
        if let Some(ip) = &n.host_ipv4 {
            if ip.parse::<IpAddr>().is_ok() {
                self.kv("control_ip", &toml_str(ip), "from <host ipv4>");
            } else {
                self.notes.push(format!(
                    "node `{name}`: <host ipv4> {ip:?} is not an IP address; left out"
                ));
            }
        }
    }

    /// `profile`: the hardware type, which must be a built-in profile for `edgectl check` to
    /// pass as is. Returns the type and whether it is built in.
    fn node_profile<'n>(&mut self, n: &'n RNode) -> (&'n str, bool) {
        let (ty, ty_from) = n
            .node_type()
            .unwrap_or(("pc", "no hardware type in the RSpec"));
        let known = self.builtin.contains(ty);
        if !known && !self.unknown_profiles.iter().any(|u| u == ty) {
            self.unknown_profiles.push(ty.to_string());
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
        self.kv("profile", &toml_str(ty), &comment);
        (ty, known)
    }

    /// `roles`, and `features` where the profile has a GPU: edgectl's choices, not the RSpec's.
    fn node_roles(&mut self, k: usize, ty: &str, known: bool) {
        if k == 0 {
            self.kv(
                "roles",
                &toml_list(["ray-head", "zenoh-router"]),
                "edgectl default: the first node leads",
            );
        } else {
            self.kv("roles", &toml_list(["ray-worker"]), "edgectl default");
        }
        let gpu = known
            && self
                .builtin
                .resolve(ty, &mut Diagnostics::default())
                .is_ok_and(|p| p.has_gpu());
        if gpu {
            self.kv(
                "features",
                &toml_list(["+cuda"]),
                &format!("profile {ty} has a GPU"),
            );
        }
    }

    /// The `[[node.lan]]` of an interface with an IPv4 address; one without is left out.
    fn lan(&mut self, name: &str, f: &RIface) {
        let Some(ip) = &f.ip else {
            if self.input.manifest {
                self.notes.push(format!(
                    "node `{name}`: interface `{}` has no IPv4 address; not imported",
                    f.client_id
                ));
            }
            return;
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
        let _ = writeln!(self.w, "[[node.lan]]  # {}", one_line(&from));
        if let Some(&ni) = self.iface_net.get(f.client_id.as_str()) {
            self.kv(
                "network",
                &toml_str(&self.nets[ni].name),
                "the <link> this interface is on",
            );
        }
        let shown = match &ip.netmask_text {
            Some(m) => format!("from <ip address=\"{}\" netmask=\"{m}\">", ip.address_text),
            None => format!("from <ip address=\"{}\">", ip.address_text),
        };
        self.kv(
            "address",
            &toml_str(&format!("{}/{}", ip.addr, ip.prefix)),
            &shown,
        );
        match (&f.mac, &f.mac_text) {
            (Some(m), Some(t)) => self.kv(
                "mac",
                &toml_str(&m.to_string()),
                &format!("from mac_address=\"{t}\""),
            ),
            _ => self.kv("mac", &toml_str(""), "unknown until the experiment runs"),
        }
    }

    fn note_unknown_profiles(&mut self) {
        for u in &self.unknown_profiles {
            self.notes.push(if u == "pc" {
                "hardware type `pc` is generic (any PC): set each such node's `profile` to its real type before `edgectl check`".to_string()
            } else {
                format!("hardware type `{u}` is not a built-in profile: `edgectl check` needs [profile.{u}] or a {u}.toml in `profile_dir` (edgectl does not guess hardware)")
            });
        }
    }
}

/// The output must be a topology edgectl accepts, apart from profiles it cannot know; this
/// checks it and parses it back.
fn check_output(src: &SourceFile, w: &str) -> Result<TopologyFile, Diagnostics> {
    let out_src = SourceFile::new(format!("{} (imported topology)", src.name), w.to_string());
    if let Err(d) = check_source(out_src, Path::new("."), &LoadOptions::default()) {
        let rest: Vec<Diagnostic> =
            d.0.into_iter()
                .filter(|x| x.kind != Kind::UnknownProfile)
                .collect();
        if !rest.is_empty() {
            return Err(Diagnostics(rest));
        }
    }
    toml::from_str(w).map_err(|e| {
        Diagnostics(vec![Diagnostic::file(
            Kind::Syntax,
            &src.name,
            format!("internal error: the imported topology does not parse back: {e}"),
        )])
    })
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
