//! Reading GENI v3 RSpecs as CloudLab writes them: manifests (from the portal's Manifest tab,
//! the portal API or the GENI AM API) and request RSpecs.
//!
//! Parsing is namespace-aware (elements match by namespace URI and local name, never by prefix)
//! and ignores element order inside `<node>`, because the samples differ in both.

use std::net::Ipv4Addr;
use std::ops::Range;
use std::sync::Arc;

use edgectl_model::net::Mac;
use edgectl_model::{Diagnostic, Diagnostics, Kind, SourceFile};
use roxmltree::{Document, Node};

pub const RSPEC3: &str = "http://www.geni.net/resources/rspec/3";
pub const EMULAB: &str = "http://www.protogeni.net/resources/rspec/ext/emulab/1";
const PROTOGENI2: &str = "http://www.protogeni.net/resources/rspec/2";

/// Hardware type names that say "any PC" rather than a node type.
const GENERIC_TYPES: &[&str] = &["pc", "pcvm", ""];

/// One parsed RSpec document (a JSON map of manifests gives several).
#[derive(Debug, Clone)]
pub struct Doc {
    pub source: Arc<SourceFile>,
    /// The aggregate URN this document came from, in a portal-API JSON map.
    pub aggregate: Option<String>,
    /// The `<rspec` start tag, for problems with the document as a whole.
    pub root_span: Range<usize>,
    pub type_attr: Option<String>,
    pub expires: Option<String>,
    /// `<emulab:portal project experiment>`.
    pub project: Option<String>,
    pub experiment: Option<String>,
    pub nodes: Vec<RNode>,
    pub links: Vec<RLink>,
}

#[derive(Debug, Clone)]
pub struct Login {
    pub user: String,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub span: Range<usize>,
}

#[derive(Debug, Clone)]
pub struct RNode {
    pub client_id: String,
    pub span: Range<usize>,
    pub component_manager_id: Option<String>,
    pub component_id: Option<String>,
    pub sliver_id: Option<String>,
    pub sliver_type: Option<String>,
    pub disk_image: Option<String>,
    /// `<hardware_type name>`.
    pub hardware_type: Option<String>,
    /// `<emulab:vnode hardware_type>`.
    pub vnode_type: Option<String>,
    pub vnode_name: Option<String>,
    pub host_name: Option<String>,
    pub host_ipv4: Option<String>,
    pub host_span: Option<Range<usize>>,
    pub logins: Vec<Login>,
    pub interfaces: Vec<RIface>,
}

impl RNode {
    /// Bare-metal PCs are what edgectl installs NixOS on; VMs, blockstores and the like are not.
    pub fn is_pc(&self) -> bool {
        match self.sliver_type.as_deref() {
            Some(t) => t == "raw-pc" || t == "raw",
            None => self.hardware_type.is_some() || self.vnode_type.is_some(),
        }
    }

    /// The node's CloudLab type and where it was read. `<emulab:vnode>` names the machine that
    /// was actually allocated, so it wins; `<hardware_type>` is what was asked for and may be
    /// the generic "pc".
    pub fn node_type(&self) -> Option<(&str, &'static str)> {
        fn specific(t: &Option<String>) -> Option<&str> {
            t.as_deref().filter(|t| !GENERIC_TYPES.contains(t))
        }
        specific(&self.vnode_type)
            .map(|t| (t, "<emulab:vnode hardware_type>"))
            .or_else(|| specific(&self.hardware_type).map(|t| (t, "<hardware_type name>")))
            .or_else(|| {
                self.hardware_type
                    .as_deref()
                    .filter(|t| !t.is_empty())
                    .map(|t| (t, "<hardware_type name> (generic)"))
            })
    }
}

#[derive(Debug, Clone)]
pub struct RIface {
    pub client_id: String,
    pub span: Range<usize>,
    pub component_id: Option<String>,
    pub mac: Option<Mac>,
    pub mac_text: Option<String>,
    pub ip: Option<Ip>,
}

#[derive(Debug, Clone)]
pub struct Ip {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub address_text: String,
    pub netmask_text: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RLink {
    pub client_id: String,
    pub span: Range<usize>,
    pub vlantag: Option<u16>,
    pub link_type: Option<String>,
    /// Interface client_ids with the span of each `<interface_ref>`.
    pub members: Vec<(String, Range<usize>)>,
}

impl Doc {
    /// A manifest has sliver ids and `<host>` elements; `type` is not trusted because the
    /// portal's Manifest tab says `type="request"` on real manifests.
    pub fn is_manifest(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| n.sliver_id.is_some() || n.host_name.is_some() || n.host_ipv4.is_some())
    }
}

fn is(n: &Node<'_, '_>, ns: &str, name: &str) -> bool {
    n.is_element() && n.tag_name().namespace() == Some(ns) && n.tag_name().name() == name
}

fn children<'a, 'i>(
    n: Node<'a, 'i>,
    ns: &'static str,
    name: &'static str,
) -> impl Iterator<Item = Node<'a, 'i>> {
    n.children().filter(move |c| is(c, ns, name))
}

/// The span of an element's start tag name (`<node`), short enough to point at.
fn tag_span(n: &Node<'_, '_>) -> Range<usize> {
    let r = n.range();
    let text = n.document().input_text();
    let len = text
        .get(r.start + 1..r.end)
        .map(|t| {
            t.find(|c: char| c.is_whitespace() || c == '>' || c == '/')
                .unwrap_or(t.len())
        })
        .unwrap_or(0);
    r.start..r.start + 1 + len
}

fn attr_span(n: &Node<'_, '_>, name: &str) -> Range<usize> {
    n.attribute_node(name)
        .map(|a| a.range())
        .unwrap_or_else(|| tag_span(n))
}

fn attr(n: &Node<'_, '_>, name: &str) -> Option<String> {
    n.attribute(name).map(|s| s.trim().to_string())
}

struct P<'s> {
    src: &'s Arc<SourceFile>,
    diags: &'s mut Diagnostics,
}

impl P<'_> {
    fn err(&mut self, kind: Kind, span: Range<usize>, msg: impl Into<String>) -> &mut Diagnostic {
        self.diags.push(Diagnostic::at(kind, self.src, span, msg));
        self.diags.0.last_mut().expect("just pushed")
    }

    fn required(&mut self, n: &Node<'_, '_>, name: &str, what: &str) -> Option<String> {
        match attr(n, name) {
            Some(v) if !v.is_empty() => Some(v),
            _ => {
                let d = self.err(
                    Kind::MissingField,
                    tag_span(n),
                    format!("<{what}> has no `{name}` attribute"),
                );
                d.field = Some(format!("{what}/@{name}"));
                d.help = Some(format!(
                    "every <{what}> in an RSpec names itself with `{name}`; is the file complete?"
                ));
                None
            }
        }
    }
}

/// Parses one RSpec document. Every problem found is added to `diags`; `None` when the
/// document could not be read at all.
pub fn parse_doc(
    src: &Arc<SourceFile>,
    aggregate: Option<String>,
    diags: &mut Diagnostics,
) -> Option<Doc> {
    let text: &str = &src.text;
    if text.trim().is_empty() {
        diags.push(
            Diagnostic::file(Kind::Empty, &src.name, "file is empty")
                .help("pass a CloudLab manifest or request RSpec (XML)"),
        );
        return None;
    }
    let doc = match Document::parse(text) {
        Ok(d) => d,
        Err(e) => {
            let mut pos = e.pos();
            // roxmltree reports a DTD at the start of the file; point at the DOCTYPE itself.
            if let (roxmltree::Error::DtdDetected, Some(at)) = (&e, text.find("<!DOCTYPE")) {
                pos = doc_pos(text, at);
            }
            let offset = offset_of(text, pos.row as usize, pos.col as usize);
            let mut d = Diagnostic::at(
                Kind::Syntax,
                src,
                offset..offset,
                format!("XML syntax error: {e}"),
            )
            .help("the file is not well-formed XML; was it cut short while copying?");
            // roxmltree's own row/column are authoritative when the offset falls past the end.
            d.line = pos.row as usize;
            d.column = pos.col as usize;
            diags.push(d);
            return None;
        }
    };
    let root = doc.root_element();
    let mut p = P { src, diags };
    if root.tag_name().name() != "rspec" || root.tag_name().namespace() != Some(RSPEC3) {
        let found = match root.tag_name().namespace() {
            Some(ns) => format!("<{}> in namespace {ns}", root.tag_name().name()),
            None => format!("<{}> without a namespace", root.tag_name().name()),
        };
        let help = if root.tag_name().namespace() == Some(PROTOGENI2) {
            "this is a ProtoGENI v2 RSpec; CloudLab writes GENI v3 (xmlns=\"http://www.geni.net/resources/rspec/3\")".to_string()
        } else {
            format!("pass a manifest or request RSpec whose root is <rspec xmlns=\"{RSPEC3}\">")
        };
        let d = p.err(
            Kind::NotRspec,
            tag_span(&root),
            format!("not a GENI v3 RSpec: the root element is {found}"),
        );
        d.help = Some(help);
        return None;
    }

    let mut out = Doc {
        source: src.clone(),
        aggregate,
        root_span: tag_span(&root),
        type_attr: attr(&root, "type"),
        expires: attr(&root, "expires").filter(|s| !s.is_empty()),
        project: None,
        experiment: None,
        nodes: Vec::new(),
        links: Vec::new(),
    };
    if let Some(portal) = children(root, EMULAB, "portal").next() {
        out.project = attr(&portal, "project");
        out.experiment = attr(&portal, "experiment");
    }
    for n in children(root, RSPEC3, "node") {
        if let Some(node) = parse_node(&mut p, n) {
            out.nodes.push(node);
        }
    }
    for l in children(root, RSPEC3, "link") {
        let Some(client_id) = p.required(&l, "client_id", "link") else {
            continue;
        };
        let vlantag = match attr(&l, "vlantag") {
            None => None,
            Some(v) => match v.parse::<u16>() {
                Ok(t) if (1..=4094).contains(&t) => Some(t),
                _ => {
                    let d = p.err(
                        Kind::InvalidValue,
                        attr_span(&l, "vlantag"),
                        format!(
                            "link `{client_id}` has vlantag {v:?}, not a VLAN id from 1 to 4094"
                        ),
                    );
                    d.field = Some("link/@vlantag".into());
                    d.value = Some(format!("{v:?}"));
                    d.help =
                        Some("remove vlantag, or set the switch's VLAN number (1 to 4094)".into());
                    None
                }
            },
        };
        let link_type = children(l, RSPEC3, "link_type")
            .next()
            .and_then(|t| attr(&t, "name"));
        let mut members = Vec::new();
        for r in children(l, RSPEC3, "interface_ref") {
            if let Some(id) = p.required(&r, "client_id", "interface_ref") {
                members.push((id, tag_span(&r)));
            }
        }
        out.links.push(RLink {
            client_id,
            span: tag_span(&l),
            // The switch VLAN reaches the node untagged unless the link asks for tagging; a
            // tagged VLAN device on an untagged port would cut the node off its LAN.
            vlantag: if children(l, EMULAB, "vlan_tagging")
                .any(|t| attr(&t, "enabled").as_deref() == Some("true"))
            {
                vlantag
            } else {
                None
            },
            link_type,
            members,
        });
    }
    Some(out)
}

fn parse_node(p: &mut P<'_>, n: Node<'_, '_>) -> Option<RNode> {
    let client_id = p.required(&n, "client_id", "node")?;
    let mut node = RNode {
        client_id,
        span: tag_span(&n),
        component_manager_id: attr(&n, "component_manager_id"),
        component_id: attr(&n, "component_id"),
        sliver_id: attr(&n, "sliver_id").filter(|s| !s.is_empty()),
        sliver_type: None,
        disk_image: None,
        hardware_type: None,
        vnode_type: None,
        vnode_name: None,
        host_name: None,
        host_ipv4: None,
        host_span: None,
        logins: Vec::new(),
        interfaces: Vec::new(),
    };
    for c in n.children().filter(|c| c.is_element()) {
        let (ns, name) = (c.tag_name().namespace(), c.tag_name().name());
        match (ns, name) {
            (Some(RSPEC3), "sliver_type") => {
                node.sliver_type = attr(&c, "name");
                node.disk_image = children(c, RSPEC3, "disk_image")
                    .next()
                    .and_then(|d| attr(&d, "name"));
            }
            (Some(RSPEC3), "hardware_type") => node.hardware_type = attr(&c, "name"),
            (Some(EMULAB), "vnode") => {
                node.vnode_type = attr(&c, "hardware_type");
                node.vnode_name = attr(&c, "name");
            }
            (Some(RSPEC3), "host") if node.host_span.is_none() => {
                node.host_name = attr(&c, "name").filter(|s| !s.is_empty());
                node.host_ipv4 = attr(&c, "ipv4").filter(|s| !s.is_empty());
                node.host_span = Some(tag_span(&c));
            }
            (Some(RSPEC3), "services") => {
                for l in children(c, RSPEC3, "login") {
                    let Some(user) = attr(&l, "username").filter(|u| !u.is_empty()) else {
                        continue;
                    };
                    let port = match attr(&l, "port") {
                        None => None,
                        Some(s) => match s.parse::<u16>() {
                            Ok(x) if x > 0 => Some(x),
                            _ => {
                                let d = p.err(
                                    Kind::InvalidValue,
                                    attr_span(&l, "port"),
                                    format!("<login> port {s:?} is not a TCP port"),
                                );
                                d.field = Some("login/@port".into());
                                d.value = Some(format!("{s:?}"));
                                d.help = Some("a <login> port is a number from 1 to 65535 (CloudLab uses 22); re-download the manifest".into());
                                None
                            }
                        },
                    };
                    node.logins.push(Login {
                        user,
                        hostname: attr(&l, "hostname").filter(|s| !s.is_empty()),
                        port,
                        span: tag_span(&l),
                    });
                }
            }
            (Some(RSPEC3), "interface") => {
                if let Some(i) = parse_iface(p, c) {
                    node.interfaces.push(i);
                }
            }
            _ => {}
        }
    }
    Some(node)
}

fn parse_iface(p: &mut P<'_>, c: Node<'_, '_>) -> Option<RIface> {
    let client_id = p.required(&c, "client_id", "interface")?;
    let mac_text = attr(&c, "mac_address").filter(|s| !s.is_empty());
    let mac = match &mac_text {
        None => None,
        Some(m) => match Mac::parse(m) {
            Ok(m) => Some(m),
            Err(e) => {
                let d = p.err(
                    Kind::InvalidMac,
                    attr_span(&c, "mac_address"),
                    format!("interface `{client_id}` has a bad MAC address: {e}"),
                );
                d.field = Some("interface/@mac_address".into());
                d.value = Some(format!("{m:?}"));
                d.help = Some("a MAC address is 12 hex digits, e.g. 90e2ba24d115 or 90:e2:ba:24:d1:15; re-download the manifest".into());
                None
            }
        },
    };
    let mut ip = None;
    for e in children(c, RSPEC3, "ip") {
        if attr(&e, "type").is_some_and(|t| !t.eq_ignore_ascii_case("ipv4")) {
            continue;
        }
        if ip.is_some() {
            break;
        }
        ip = parse_ip(p, &e, &client_id);
    }
    Some(RIface {
        client_id,
        span: tag_span(&c),
        component_id: attr(&c, "component_id"),
        mac,
        mac_text,
        ip,
    })
}

fn parse_ip(p: &mut P<'_>, e: &Node<'_, '_>, iface: &str) -> Option<Ip> {
    let address_text = attr(e, "address").unwrap_or_default();
    let netmask_text = attr(e, "netmask").filter(|s| !s.is_empty());
    let (a, inline_prefix) = match address_text.split_once('/') {
        Some((a, pfx)) => (a, Some(pfx)),
        None => (address_text.as_str(), None),
    };
    let Ok(addr) = a.parse::<Ipv4Addr>() else {
        let d = p.err(
            Kind::InvalidAddress,
            attr_span(e, "address"),
            format!("interface `{iface}` has {address_text:?}, not an IPv4 address"),
        );
        d.field = Some("ip/@address".into());
        d.value = Some(format!("{address_text:?}"));
        d.help = Some("write the address as four dotted numbers, e.g. address=\"10.10.1.2\" netmask=\"255.255.255.0\"".into());
        return None;
    };
    let prefix = match (&netmask_text, inline_prefix) {
        (Some(m), _) => netmask_prefix(m),
        (None, Some(pfx)) => pfx.parse::<u8>().ok().filter(|x| *x <= 32),
        (None, None) => {
            let d = p.err(
                Kind::MissingField,
                tag_span(e),
                format!("interface `{iface}` has an address but no netmask"),
            );
            d.field = Some("ip/@netmask".into());
            d.help = Some("add netmask=\"255.255.255.0\" (or the LAN's real mask)".into());
            return None;
        }
    };
    let Some(prefix) = prefix else {
        let (span, shown) = match &netmask_text {
            Some(m) => (attr_span(e, "netmask"), m.clone()),
            None => (attr_span(e, "address"), address_text.clone()),
        };
        let d = p.err(
            Kind::InvalidAddress,
            span,
            format!(
                "interface `{iface}` has netmask {shown:?}, which is not a contiguous IPv4 mask"
            ),
        );
        d.field = Some("ip/@netmask".into());
        d.value = Some(format!("{shown:?}"));
        d.help = Some("write e.g. netmask=\"255.255.255.0\"".into());
        return None;
    };
    Some(Ip {
        addr,
        prefix,
        address_text,
        netmask_text,
    })
}

/// "255.255.255.0" -> 24; a bare "24" is accepted too. Non-contiguous masks are refused.
pub fn netmask_prefix(m: &str) -> Option<u8> {
    if let Ok(n) = m.parse::<u8>() {
        return (n <= 32).then_some(n);
    }
    let v = u32::from(m.parse::<Ipv4Addr>().ok()?);
    (v.leading_ones() + v.trailing_zeros() == 32).then_some(v.leading_ones() as u8)
}

fn doc_pos(text: &str, at: usize) -> roxmltree::TextPos {
    let before = &text[..at];
    let row = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    roxmltree::TextPos::new(row as u32, col as u32)
}

/// The byte offset of a 1-based row and column (in characters).
fn offset_of(text: &str, row: usize, col: usize) -> usize {
    let mut line_start = 0;
    for _ in 1..row {
        match text[line_start..].find('\n') {
            Some(i) => line_start += i + 1,
            None => return text.len(),
        }
    }
    let line = &text[line_start..];
    let line = &line[..line.find('\n').unwrap_or(line.len())];
    line_start
        + line
            .char_indices()
            .nth(col.saturating_sub(1))
            .map(|(i, _)| i)
            .unwrap_or(line.len())
}

/// The site name of a component manager URN: "urn:publicid:IDN+wisc.cloudlab.us+authority+cm"
/// gives "wisc", emulab.net gives "emulab", any other authority is kept whole.
pub fn site_of(cm: &str) -> Option<String> {
    let rest = cm.strip_prefix("urn:publicid:IDN+")?;
    let authority = rest.split('+').next()?.trim();
    if authority.is_empty() {
        return None;
    }
    if let Some(site) = authority.strip_suffix(".cloudlab.us") {
        return Some(site.to_string());
    }
    if authority == "emulab.net" {
        return Some("emulab".into());
    }
    Some(authority.to_string())
}

/// The component manager URN that pins a site, the inverse of `site_of`.
pub fn cm_of(site: &str) -> Option<String> {
    let authority = match site {
        "wisc" | "utah" | "clemson" => format!("{site}.cloudlab.us"),
        "emulab" => "emulab.net".to_string(),
        s if s.contains('.')
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-') =>
        {
            s.to_string()
        }
        _ => return None,
    };
    Some(format!("urn:publicid:IDN+{authority}+authority+cm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks() {
        assert_eq!(netmask_prefix("255.255.255.0"), Some(24));
        assert_eq!(netmask_prefix("255.255.0.0"), Some(16));
        assert_eq!(netmask_prefix("255.255.255.255"), Some(32));
        assert_eq!(netmask_prefix("0.0.0.0"), Some(0));
        assert_eq!(netmask_prefix("24"), Some(24));
        assert_eq!(netmask_prefix("255.0.255.0"), None);
        assert_eq!(netmask_prefix("255.255.255.256"), None);
        assert_eq!(netmask_prefix("33"), None);
    }

    #[test]
    fn sites() {
        assert_eq!(
            site_of("urn:publicid:IDN+wisc.cloudlab.us+authority+cm").as_deref(),
            Some("wisc")
        );
        assert_eq!(
            site_of("urn:publicid:IDN+emulab.net+authority+cm").as_deref(),
            Some("emulab")
        );
        assert_eq!(site_of("nonsense"), None);
        for s in ["wisc", "utah", "clemson", "emulab"] {
            assert_eq!(site_of(&cm_of(s).unwrap()).as_deref(), Some(s));
        }
        assert_eq!(cm_of("mars"), None);
    }

    #[test]
    fn offsets() {
        let t = "ab\ncdé\nf";
        assert_eq!(offset_of(t, 1, 1), 0);
        assert_eq!(offset_of(t, 2, 3), 5);
        assert_eq!(offset_of(t, 2, 4), 7);
        assert_eq!(offset_of(t, 9, 1), t.len());
    }
}
