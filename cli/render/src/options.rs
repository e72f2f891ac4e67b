//! Checks that every option path a NixOS module or generated host sets exists: NixOS's own
//! options (from the option list in shared data, plus our documented supplement) and the
//! `edge.*` options our modules declare. The walker reads the Nix AST with rnix and sees through
//! `lib.mkIf`, `lib.mkMerge`, `lib.mkDefault`, `lib.mkForce`, `lib.optionalAttrs` and `let`.

use std::collections::HashMap;

use rnix::ast::{self, HasEntry};
use rowan::ast::AstNode;

/// A path component that is computed at evaluation time (`${name}`); matches any name.
pub const DYNAMIC: &str = "<dynamic>";

#[derive(Default, Debug)]
pub struct OptionTree {
    children: HashMap<String, OptionTree>,
    /// Some(type) when this node is itself an option.
    kind: Option<String>,
}

impl OptionTree {
    /// Reads `name<TAB>type` lines; `_name_` and `_` stand for any attribute name or list
    /// item, and `_a.b_` is the quoted key "a.b".
    pub fn from_tsv(text: &str) -> OptionTree {
        let mut t = OptionTree::default();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (name, ty) = line.split_once('\t').unwrap_or((line, ""));
            t.insert(&split_option_name(name), ty);
        }
        t
    }

    pub fn insert(&mut self, path: &[String], ty: &str) {
        let mut node = self;
        for c in path {
            node = node.children.entry(c.clone()).or_default();
        }
        node.kind = Some(ty.to_string());
    }

    /// True when `path` is an option, or lies below an option whose value is a free-form
    /// attribute set (such as `boot.kernel.sysctl` or `serviceConfig`).
    pub fn allows(&self, path: &[String]) -> bool {
        self.allows_from(path, 0, false)
    }

    /// `named` says this node was reached through `_name_`: a whole entry of an
    /// attribute set of submodules (`systemd.services.foo = {...}`) may be set there.
    fn allows_from(&self, path: &[String], i: usize, named: bool) -> bool {
        if i == path.len() {
            return self.kind.is_some() || (named && !self.children.is_empty());
        }
        if let Some(ty) = &self.kind
            && (!ty.contains("submodule") || self.children.is_empty())
        {
            return true;
        }
        let c = &path[i];
        if c == DYNAMIC {
            return self
                .children
                .iter()
                .any(|(k, ch)| ch.allows_from(path, i + 1, k == "_name_"));
        }
        [c.as_str(), "_name_", "_"]
            .iter()
            .filter_map(|k| self.children.get(*k).map(|ch| (k, ch)))
            .any(|(k, ch)| ch.allows_from(path, i + 1, *k == "_name_"))
    }
}

fn split_option_name(name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut quoted: Option<String> = None;
    for part in name.split('.') {
        match &mut quoted {
            Some(q) => {
                q.push('.');
                if let Some(stripped) = part.strip_suffix('_') {
                    q.push_str(stripped);
                    out.push(quoted.take().unwrap_or_default());
                } else {
                    q.push_str(part);
                }
            }
            None => {
                if part.len() > 2 && part.starts_with('_') && part != "_name_" {
                    if part.ends_with('_') {
                        out.push(part[1..part.len() - 1].to_string());
                    } else {
                        quoted = Some(part[1..].to_string());
                    }
                } else {
                    out.push(part.to_string());
                }
            }
        }
    }
    out
}

/// An option path set somewhere, with the line it is set on.
#[derive(Debug, Clone, PartialEq)]
pub struct SetPath {
    pub path: Vec<String>,
    pub line: usize,
}

impl SetPath {
    pub fn dotted(&self) -> String {
        self.path.join(".")
    }
}

fn attr_key(a: &ast::Attr) -> String {
    match a {
        ast::Attr::Ident(i) => i.to_string(),
        ast::Attr::Str(s) => {
            let parts: Vec<_> = s.normalized_parts();
            if parts
                .iter()
                .all(|p| matches!(p, ast::InterpolPart::Literal(_)))
            {
                parts
                    .into_iter()
                    .map(|p| match p {
                        ast::InterpolPart::Literal(l) => l,
                        _ => String::new(),
                    })
                    .collect()
            } else {
                DYNAMIC.to_string()
            }
        }
        ast::Attr::Dynamic(_) => DYNAMIC.to_string(),
    }
}

const WRAPPERS: &[&str] = &[
    "mkIf",
    "mkDefault",
    "mkForce",
    "mkOverride",
    "optionalAttrs",
    "mkBefore",
    "mkAfter",
    "mkOrder",
];

/// The function name and arguments of `f a b c`.
fn unapply(e: &ast::Apply) -> (String, Vec<ast::Expr>) {
    let mut args = Vec::new();
    let mut cur = ast::Expr::Apply(e.clone());
    while let ast::Expr::Apply(a) = &cur {
        if let Some(arg) = a.argument() {
            args.push(arg);
        }
        match a.lambda() {
            Some(l) => cur = l,
            None => break,
        }
    }
    args.reverse();
    let name = cur.syntax().text().to_string();
    let short = name.rsplit('.').next().unwrap_or(&name).to_string();
    (short, args)
}

fn line_of(src: &str, node: &rnix::SyntaxNode) -> usize {
    let off: usize = node.text_range().start().into();
    src[..off.min(src.len())].matches('\n').count() + 1
}

fn collect(src: &str, e: &ast::Expr, prefix: &[String], out: &mut Vec<SetPath>) {
    match e {
        ast::Expr::AttrSet(set) => {
            for entry in set.entries() {
                if let ast::Entry::AttrpathValue(kv) = entry {
                    let Some(ap) = kv.attrpath() else { continue };
                    let mut p = prefix.to_vec();
                    p.extend(ap.attrs().map(|a| attr_key(&a)));
                    match kv.value() {
                        Some(v) => collect(src, &v, &p, out),
                        None => out.push(SetPath {
                            path: p,
                            line: line_of(src, kv.syntax()),
                        }),
                    }
                } else if let ast::Entry::Inherit(inh) = entry {
                    for a in inh.attrs() {
                        let mut p = prefix.to_vec();
                        p.push(attr_key(&a));
                        out.push(SetPath {
                            path: p,
                            line: line_of(src, inh.syntax()),
                        });
                    }
                }
            }
        }
        ast::Expr::Paren(p) => {
            if let Some(inner) = p.expr() {
                collect(src, &inner, prefix, out);
            }
        }
        ast::Expr::LetIn(l) => {
            if let Some(body) = l.body() {
                collect(src, &body, prefix, out);
            }
        }
        ast::Expr::Apply(a) => {
            let (f, args) = unapply(a);
            if f == "mkMerge"
                && let Some(ast::Expr::List(list)) = args.last()
            {
                for item in list.items() {
                    collect(src, &item, prefix, out);
                }
                return;
            }
            if WRAPPERS.contains(&f.as_str())
                && let Some(last) = args.last()
            {
                collect(src, last, prefix, out);
                return;
            }
            out.push(SetPath {
                path: prefix.to_vec(),
                line: line_of(src, a.syntax()),
            });
        }
        other => {
            if !prefix.is_empty() {
                out.push(SetPath {
                    path: prefix.to_vec(),
                    line: line_of(src, other.syntax()),
                });
            }
        }
    }
}

/// The module's body: the function's result, through `let` bindings.
fn module_body(e: ast::Expr) -> Option<ast::Expr> {
    match e {
        ast::Expr::Lambda(l) => module_body(l.body()?),
        ast::Expr::LetIn(l) => module_body(l.body()?),
        ast::Expr::Paren(p) => module_body(p.expr()?),
        other => Some(other),
    }
}

/// What a module file sets (`config`, or the whole body when it has no `options`/`config`)
/// and what it declares (`options`), as paths.
pub fn module_paths(src: &str) -> Result<(Vec<SetPath>, Vec<SetPath>), String> {
    let root = rnix::Root::parse(src);
    if let Some(e) = root.errors().first() {
        return Err(e.to_string());
    }
    let expr = root.tree().expr().ok_or("empty file")?;
    let Some(ast::Expr::AttrSet(body)) = module_body(expr) else {
        return Ok((Vec::new(), Vec::new()));
    };
    let mut sets = Vec::new();
    let mut decls = Vec::new();
    let mut top_has_structure = false;
    for entry in body.entries() {
        let ast::Entry::AttrpathValue(kv) = entry else {
            continue;
        };
        let Some(ap) = kv.attrpath() else { continue };
        let keys: Vec<String> = ap.attrs().map(|a| attr_key(&a)).collect();
        let Some(v) = kv.value() else { continue };
        match keys.first().map(String::as_str) {
            Some("config") => {
                top_has_structure = true;
                collect(src, &v, &keys[1..], &mut sets);
            }
            Some("options") => {
                top_has_structure = true;
                let mut raw = Vec::new();
                collect_decls(src, &v, &keys[1..], &mut raw);
                decls.extend(raw);
            }
            Some("imports")
            | Some("meta")
            | Some("disabledModules")
            | Some("_file")
            | Some("key") => top_has_structure = true,
            _ => {}
        }
    }
    if !top_has_structure {
        collect(src, &ast::Expr::AttrSet(body), &[], &mut sets);
    }
    Ok((sets, decls))
}

/// Declared options: paths whose value is `mkOption {...}`, `mkEnableOption ...` or similar.
fn collect_decls(src: &str, e: &ast::Expr, prefix: &[String], out: &mut Vec<SetPath>) {
    match e {
        ast::Expr::AttrSet(set) => {
            for entry in set.entries() {
                if let ast::Entry::AttrpathValue(kv) = entry {
                    let (Some(ap), Some(v)) = (kv.attrpath(), kv.value()) else {
                        continue;
                    };
                    let mut p = prefix.to_vec();
                    p.extend(ap.attrs().map(|a| attr_key(&a)));
                    collect_decls(src, &v, &p, out);
                }
            }
        }
        ast::Expr::Apply(a) => {
            let (f, _) = unapply(a);
            if f.starts_with("mk") && f.contains("Option") {
                out.push(SetPath {
                    path: prefix.to_vec(),
                    line: line_of(src, a.syntax()),
                });
            }
        }
        ast::Expr::Paren(p) => {
            if let Some(inner) = p.expr() {
                collect_decls(src, &inner, prefix, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<String> {
        s.split('.').map(String::from).collect()
    }

    #[test]
    fn tree_matching() {
        let t = OptionTree::from_tsv(
            "boot.kernel.sysctl\tattribute set of (sysctl option value)\n\
             boot.kernel.sysctl._net.core.rmem_max_\tnull or unsigned integer\n\
             systemd.services\tattribute set of (submodule)\n\
             systemd.services._name_.serviceConfig\tattribute set of (systemd option)\n\
             systemd.services._name_.wantedBy\tlist of string\n\
             hardware.nvidia.open\tnull or boolean\n",
        );
        assert!(t.allows(&p("hardware.nvidia.open")));
        assert!(!t.allows(&p("hardware.nvidia.opn")));
        assert!(t.allows(&p("systemd.services.ray-head.serviceConfig.ExecStart")));
        assert!(!t.allows(&p("systemd.services.ray-head.serviceConfg.ExecStart")));
        assert!(t.allows(&[
            "systemd".into(),
            "services".into(),
            DYNAMIC.into(),
            "wantedBy".into()
        ]));
        assert!(t.allows(&[
            "boot".into(),
            "kernel".into(),
            "sysctl".into(),
            "net.ipv4.tcp_congestion_control".into()
        ]));
    }

    #[test]
    fn walker_sees_through_wrappers() {
        let src = r#"{ config, lib, ... }: let cfg = config.edge.x; in {
          options.edge.x.enable = lib.mkEnableOption "x";
          options.edge.x = { port = lib.mkOption { type = lib.types.port; }; };
          config = lib.mkIf cfg.enable (lib.mkMerge [
            { boot.kernelModules = [ "tcp_bbr" ]; }
            { boot.kernel.sysctl."net.core.default_qdisc" = lib.mkDefault "fq";
              systemd.services.${"a"}.wantedBy = [ ]; }
          ]);
        }"#;
        let (sets, decls) = module_paths(src).unwrap();
        let sets: Vec<String> = sets.iter().map(|s| s.dotted()).collect();
        assert_eq!(
            sets,
            vec![
                "boot.kernelModules",
                "boot.kernel.sysctl.net.core.default_qdisc",
                "systemd.services.<dynamic>.wantedBy"
            ]
        );
        let decls: Vec<String> = decls.iter().map(|s| s.dotted()).collect();
        assert_eq!(decls, vec!["edge.x.enable", "edge.x.port"]);
    }
}
