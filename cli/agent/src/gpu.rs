//! GPU facts beyond the one-line query in [`crate::facts`]: `nvidia-smi -q -x` (the full
//! report, XML in NVIDIA's `nvsmi_device_v11/v12.dtd` layout) for the driver, persistence and
//! ECC modes, clocks, the PCIe link and memory; and the CUDA device query
//! (`nvidia-smi --query-gpu=index,name,compute_cap,memory.total`) for the compute capability,
//! which the XML report does not carry. Parsers take text, so they are tested on recordings
//! (`tests/fixtures/nvidia-smi/`, see its README), and return an error, never panic, on
//! anything else.

use std::path::Path;
use std::time::Duration;

use roxmltree::{Document, Node, ParsingOptions};
use serde::{Deserialize, Serialize};

use crate::facts::probe;

pub const NVIDIA_SMI_XML_ARGS: &[&str] = &["-q", "-x"];
pub const DEVICE_QUERY_ARGS: &[&str] = &[
    "--query-gpu=index,name,compute_cap,memory.total",
    "--format=csv,noheader,nounits",
];

/// One GPU as `nvidia-smi -q -x` reports it, with the device query's compute capability. A
/// value the report leaves out or gives as "N/A" (ECC on a GeForce, say) is `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuDetail {
    /// nvidia-smi's index: the order of the `<gpu>` elements, which is the order of `-i`.
    pub index: u32,
    /// The PCI bus id (`<gpu id="00000000:3B:00.0">`).
    pub bus_id: String,
    pub product_name: String,
    /// `<driver_version>`, e.g. "580.119.02"; empty when the report has none.
    pub driver_version: String,
    /// The driver's branch, the major number of its version (580 for "580.119.02").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_branch: Option<u32>,
    /// The newest CUDA version the driver supports (`<cuda_version>`), e.g. "13.0".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_version: Option<String>,
    /// `<persistence_mode>`: Enabled or Disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence_mode: Option<bool>,
    /// `<ecc_mode><current_ecc>`: Enabled or Disabled; N/A on a GPU without ECC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecc_mode: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sm_clock_mhz: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_clock_mhz: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sm_clock_mhz: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mem_clock_mhz: Option<u32>,
    /// The PCIe generation the link runs at now; an idle GPU lowers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_gen: Option<u32>,
    /// The highest generation this GPU and its slot can run together (`max_link_gen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_gen_max: Option<u32>,
    /// The lanes the link runs on now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_width: Option<u32>,
    /// The widest link this GPU and its slot can run (`max_link_width`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_width_max: Option<u32>,
    /// `<fb_memory_usage><total>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_total_mib: Option<u64>,
    /// From the device query (`compute_cap`), e.g. "7.0".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_capability: Option<String>,
}

/// One line of the device query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceQuery {
    pub index: u32,
    pub name: String,
    /// `None` where the driver answers "[N/A]".
    pub compute_capability: Option<String>,
    pub memory_mib: Option<u64>,
}

/// The driver branch of a version string: "580.119.02" is 580, "581.57" is 581.
pub fn driver_branch(version: &str) -> Option<u32> {
    let major = version.trim().split('.').next()?;
    if major.is_empty() || major.len() > 4 || !major.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    major.parse().ok()
}

/// The trimmed text of the element at `path` under `n`, or `None` when it is missing, empty or
/// a placeholder ("N/A", "[N/A]", "Not Supported", "Unknown Error" and the like).
fn text<'a>(n: Node<'a, 'a>, path: &[&str]) -> Option<&'a str> {
    let mut cur = n;
    for tag in path {
        cur = cur.children().find(|c| c.has_tag_name(*tag))?;
    }
    let t = cur.text()?.trim();
    let lower = t.to_ascii_lowercase();
    let placeholder = t.is_empty()
        || lower.trim_matches(|c| c == '[' || c == ']') == "n/a"
        || lower.contains("not supported")
        || lower.contains("unknown error")
        || lower.contains("deprecated");
    (!placeholder).then_some(t)
}

/// The leading number of a value with a unit: "1380 MHz", "16160 MiB", "16x", "3".
fn number<T: std::str::FromStr>(s: Option<&str>) -> Option<T> {
    let s = s?;
    let digits: &str = &s[..s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len())];
    if digits.is_empty() {
        return None;
    }
    digits.parse().ok()
}

fn enabled(s: Option<&str>) -> Option<bool> {
    match s?.to_ascii_lowercase().as_str() {
        "enabled" => Some(true),
        "disabled" => Some(false),
        _ => None,
    }
}

/// `nvidia-smi -q -x`: one [`GpuDetail`] per `<gpu>`, in order. An error when the text is not
/// XML (truncated output included) or not nvidia-smi's report; a report with no GPUs is empty.
pub fn parse_nvidia_smi_xml(text_in: &str) -> Result<Vec<GpuDetail>, String> {
    // nvidia-smi names its DTD (`<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v12.dtd">`),
    // which roxmltree refuses unless told; it never loads the external file. The node limit
    // bounds what a runaway output can cost (a real 8-GPU report is some 20,000 nodes).
    let opt = ParsingOptions {
        allow_dtd: true,
        nodes_limit: 2_000_000,
        ..ParsingOptions::default()
    };
    let doc = Document::parse_with_options(text_in, opt)
        .map_err(|e| format!("nvidia-smi -q -x did not print XML: {e}"))?;
    let root = doc.root_element();
    if !root.has_tag_name("nvidia_smi_log") {
        return Err(format!(
            "nvidia-smi -q -x printed <{}>, not <nvidia_smi_log>",
            root.tag_name().name()
        ));
    }
    let driver_version = text(root, &["driver_version"]).unwrap_or_default();
    let cuda_version = text(root, &["cuda_version"]).map(String::from);
    let mut out = Vec::new();
    for (i, g) in root
        .children()
        .filter(|c| c.has_tag_name("gpu"))
        .enumerate()
    {
        let link = |p: &[&str]| {
            let mut path = vec!["pci", "pci_gpu_link_info"];
            path.extend_from_slice(p);
            text(g, &path)
        };
        out.push(GpuDetail {
            index: u32::try_from(i).unwrap_or(u32::MAX),
            bus_id: g
                .attribute("id")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .or_else(|| text(g, &["pci", "pci_bus_id"]))
                .unwrap_or_default()
                .to_string(),
            product_name: text(g, &["product_name"]).unwrap_or_default().to_string(),
            driver_version: driver_version.to_string(),
            driver_branch: driver_branch(driver_version),
            cuda_version: cuda_version.clone(),
            persistence_mode: enabled(text(g, &["persistence_mode"])),
            ecc_mode: enabled(text(g, &["ecc_mode", "current_ecc"])),
            sm_clock_mhz: number(text(g, &["clocks", "sm_clock"])),
            mem_clock_mhz: number(text(g, &["clocks", "mem_clock"])),
            max_sm_clock_mhz: number(text(g, &["max_clocks", "sm_clock"])),
            max_mem_clock_mhz: number(text(g, &["max_clocks", "mem_clock"])),
            pcie_gen: number(link(&["pcie_gen", "current_link_gen"])),
            pcie_gen_max: number(link(&["pcie_gen", "max_link_gen"])),
            pcie_width: number(link(&["link_widths", "current_link_width"])),
            pcie_width_max: number(link(&["link_widths", "max_link_width"])),
            memory_total_mib: number(text(g, &["fb_memory_usage", "total"])),
            compute_capability: None,
        });
    }
    Ok(out)
}

/// `MAJOR.MINOR`, one or two digits each.
fn is_capability(s: &str) -> bool {
    let ok = |p: &str| !p.is_empty() && p.len() <= 2 && p.chars().all(|c| c.is_ascii_digit());
    s.split_once('.').is_some_and(|(a, b)| ok(a) && ok(b))
}

fn not_available(s: &str) -> bool {
    let s = s.trim_matches(|c| c == '[' || c == ']');
    s.eq_ignore_ascii_case("n/a") || s.eq_ignore_ascii_case("not supported")
}

/// The device query, `--query-gpu=index,name,compute_cap,memory.total
/// --format=csv,noheader,nounits`: "0, Tesla V100-SXM2-16GB, 7.0, 16160" per GPU. The name is
/// everything between the first and the last two fields, so a comma in it does no harm.
pub fn parse_device_query(text: &str) -> Result<Vec<DeviceQuery>, String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let n = f.len();
        if n < 4 {
            return Err(format!("unexpected device query line: {line}"));
        }
        let index = f[0]
            .parse()
            .map_err(|_| format!("unexpected index `{}` in: {line}", f[0]))?;
        let (cc, mem) = (f[n - 2], f[n - 1]);
        let compute_capability = if not_available(cc) {
            None
        } else if is_capability(cc) {
            Some(cc.to_string())
        } else {
            return Err(format!("unexpected compute_cap `{cc}` in: {line}"));
        };
        let memory_mib = if not_available(mem) {
            None
        } else {
            Some(
                mem.trim_end_matches("MiB")
                    .trim()
                    .parse()
                    .map_err(|_| format!("unexpected memory.total `{mem}` in: {line}"))?,
            )
        };
        out.push(DeviceQuery {
            index,
            name: f[1..n - 2].join(","),
            compute_capability,
            memory_mib,
        });
    }
    Ok(out)
}

/// Gives each GPU of the report its compute capability from the device query line of the same
/// index, when that line names the same product. What cannot be matched stays `None`, and
/// the error says which.
pub fn apply_device_query(details: &mut [GpuDetail], q: &[DeviceQuery]) -> Result<(), String> {
    let mut problems = Vec::new();
    for d in details.iter_mut() {
        match q.iter().find(|x| x.index == d.index) {
            None => problems.push(format!("GPU {} is not in the device query", d.index)),
            Some(x) if x.name != d.product_name => problems.push(format!(
                "GPU {} is {:?} in the report but {:?} in the device query",
                d.index, d.product_name, x.name
            )),
            Some(x) => d.compute_capability = x.compute_capability.clone(),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Runs `smi` with `args`; its standard output when it exits 0.
fn run(smi: &Path, args: &[&str], timeout: Duration) -> Result<String, String> {
    let o = probe(smi, args, timeout)?;
    if o.status.success() {
        return Ok(String::from_utf8_lossy(&o.stdout).into_owned());
    }
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    let said: String = format!("{} {}", out.trim(), err.trim())
        .trim()
        .chars()
        .take(300)
        .collect();
    Err(format!("nvidia-smi {} failed: {said}", args.join(" ")))
}

/// The details of every GPU from the `nvidia-smi` at `smi`, or why there are none. A failed
/// device query keeps the report's details and says why compute capabilities are missing.
pub fn details_from(smi: &Path, timeout: Duration) -> (Vec<GpuDetail>, Option<String>) {
    let mut d = match run(smi, NVIDIA_SMI_XML_ARGS, timeout).and_then(|t| parse_nvidia_smi_xml(&t))
    {
        Ok(d) => d,
        Err(e) => return (Vec::new(), Some(e)),
    };
    if d.is_empty() {
        return (d, None);
    }
    let q = run(smi, DEVICE_QUERY_ARGS, timeout)
        .and_then(|t| parse_device_query(&t))
        .and_then(|q| apply_device_query(&mut d, &q));
    (d, q.err().map(|e| format!("no compute capability: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/nvidia-smi/",
                $name
            ))
        };
    }

    const P100: &str = fixture!("c240g5-p100.xml");
    const V100X4: &str = fixture!("c4130-v100x4.xml");
    const A30: &str = fixture!("d7525-a30.xml");
    const P4X2_V11: &str = fixture!("p4x2-470-v11.xml");

    #[test]
    fn p100_report() {
        let g = parse_nvidia_smi_xml(P100).unwrap();
        assert_eq!(
            g,
            vec![GpuDetail {
                index: 0,
                bus_id: "00000000:3B:00.0".into(),
                product_name: "Tesla P100-PCIE-12GB".into(),
                driver_version: "580.119.02".into(),
                driver_branch: Some(580),
                cuda_version: Some("13.0".into()),
                persistence_mode: Some(true),
                ecc_mode: Some(true),
                sm_clock_mhz: Some(405),
                mem_clock_mhz: Some(715),
                max_sm_clock_mhz: Some(1328),
                max_mem_clock_mhz: Some(715),
                pcie_gen: Some(3),
                pcie_gen_max: Some(3),
                pcie_width: Some(16),
                pcie_width_max: Some(16),
                memory_total_mib: Some(12288),
                compute_capability: None,
            }]
        );
    }

    #[test]
    fn four_v100s_in_order() {
        let mut g = parse_nvidia_smi_xml(V100X4).unwrap();
        assert_eq!(g.len(), 4);
        let ids: Vec<&str> = g.iter().map(|x| x.bus_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "00000000:04:00.0",
                "00000000:06:00.0",
                "00000000:84:00.0",
                "00000000:86:00.0"
            ]
        );
        for (i, x) in g.iter().enumerate() {
            assert_eq!(x.index, i as u32);
            assert_eq!(x.product_name, "Tesla V100-SXM2-16GB");
            assert_eq!(
                (x.driver_branch, x.persistence_mode, x.ecc_mode),
                (Some(580), Some(true), Some(true))
            );
            assert_eq!((x.pcie_gen_max, x.pcie_width_max), (Some(3), Some(16)));
            assert_eq!(
                (x.max_sm_clock_mhz, x.max_mem_clock_mhz),
                (Some(1530), Some(877))
            );
            assert_eq!(x.memory_total_mib, Some(16384));
        }
        let q = parse_device_query(fixture!("c4130-v100x4.query.csv")).unwrap();
        apply_device_query(&mut g, &q).unwrap();
        assert!(
            g.iter()
                .all(|x| x.compute_capability.as_deref() == Some("7.0"))
        );
    }

    #[test]
    fn a30_report_and_query() {
        let mut g = parse_nvidia_smi_xml(A30).unwrap();
        assert_eq!(g.len(), 1);
        let a = &g[0];
        assert_eq!(
            (a.product_name.as_str(), a.driver_version.as_str()),
            ("NVIDIA A30", "550.54.15")
        );
        assert_eq!(
            (a.driver_branch, a.cuda_version.as_deref()),
            (Some(550), Some("12.4"))
        );
        assert_eq!(
            (a.pcie_gen, a.pcie_gen_max, a.pcie_width, a.pcie_width_max),
            (Some(4), Some(4), Some(16), Some(16))
        );
        assert_eq!(
            (a.sm_clock_mhz, a.max_sm_clock_mhz),
            (Some(210), Some(1440))
        );
        assert_eq!(a.memory_total_mib, Some(24576));
        let q = parse_device_query(fixture!("d7525-a30.query.csv")).unwrap();
        assert_eq!(
            q,
            vec![DeviceQuery {
                index: 0,
                name: "NVIDIA A30".into(),
                compute_capability: Some("8.0".into()),
                memory_mib: Some(24576)
            }]
        );
        apply_device_query(&mut g, &q).unwrap();
        assert_eq!(g[0].compute_capability.as_deref(), Some("8.0"));
    }

    /// An older driver's layout (DTD v11: no device/host link maxima, `power_readings`), with
    /// persistence off, one GPU's ECC off, the link idling at gen 1, and no `compute_cap` field.
    #[test]
    fn v11_report_of_an_older_driver() {
        let g = parse_nvidia_smi_xml(P4X2_V11).unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(
            (g[0].driver_branch, g[0].cuda_version.as_deref()),
            (Some(470), Some("11.4"))
        );
        assert_eq!(g[0].persistence_mode, Some(false));
        assert_eq!((g[0].ecc_mode, g[1].ecc_mode), (Some(true), Some(false)));
        assert_eq!((g[1].pcie_gen, g[1].pcie_gen_max), (Some(1), Some(3)));
        assert_eq!(g[1].bus_id, "00000000:D8:00.0");
        assert_eq!(g[1].memory_total_mib, Some(7611));
        let e = parse_device_query(fixture!("p4x2-470-v11.query.txt")).unwrap_err();
        assert!(e.contains("compute_cap"), "{e}");
    }

    #[test]
    fn not_available_values_are_none() {
        let x = r#"<?xml version="1.0" ?>
<nvidia_smi_log><driver_version>N/A</driver_version>
<gpu id="00000000:01:00.0"><product_name>NVIDIA GeForce RTX 3090</product_name>
<persistence_mode>Disabled</persistence_mode>
<ecc_mode><current_ecc>N/A</current_ecc><pending_ecc>N/A</pending_ecc></ecc_mode>
<clocks><sm_clock>[Unknown Error]</sm_clock><mem_clock> 405 MHz </mem_clock></clocks>
<pci><pci_gpu_link_info><pcie_gen><max_link_gen>4</max_link_gen><current_link_gen>1</current_link_gen></pcie_gen>
<link_widths><max_link_width>Unknown Error</max_link_width><current_link_width></current_link_width></link_widths>
</pci_gpu_link_info></pci></gpu></nvidia_smi_log>"#;
        let g = parse_nvidia_smi_xml(x).unwrap();
        let d = &g[0];
        assert_eq!(d.product_name, "NVIDIA GeForce RTX 3090");
        assert_eq!((d.driver_version.as_str(), d.driver_branch), ("", None));
        assert_eq!(d.cuda_version, None);
        assert_eq!((d.persistence_mode, d.ecc_mode), (Some(false), None));
        assert_eq!((d.sm_clock_mhz, d.mem_clock_mhz), (None, Some(405)));
        assert_eq!((d.pcie_gen, d.pcie_gen_max), (Some(1), Some(4)));
        assert_eq!((d.pcie_width, d.pcie_width_max), (None, None));
        assert_eq!((d.max_sm_clock_mhz, d.memory_total_mib), (None, None));
        // No GPUs is a report too.
        let none = "<nvidia_smi_log><driver_version>580.119.02</driver_version>\
                    <attached_gpus>0</attached_gpus></nvidia_smi_log>";
        assert_eq!(parse_nvidia_smi_xml(none).unwrap(), Vec::new());
    }

    #[test]
    fn branches() {
        assert_eq!(driver_branch("580.119.02"), Some(580));
        assert_eq!(driver_branch("581.57"), Some(581));
        assert_eq!(driver_branch(" 470.256.02 "), Some(470));
        for bad in ["", "N/A", ".1", "x580.1", "99999.1", "-550.1"] {
            assert_eq!(driver_branch(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn device_queries() {
        let q = parse_device_query("0, Tesla P4, 6.1, 7611\n\n1, Odd, Name, 6.1, [N/A]\n").unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(q[1].name, "Odd,Name");
        assert_eq!(q[1].memory_mib, None);
        let q = parse_device_query("0, NVIDIA GB10, [N/A], [N/A]").unwrap();
        assert_eq!(q[0].compute_capability, None);
        for bad in [
            "0, Tesla P4, 6.1",
            "x, Tesla P4, 6.1, 7611",
            "0, Tesla P4, six, 7611",
            "0, Tesla P4, 6.1, lots",
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
        ] {
            assert!(parse_device_query(bad).is_err(), "{bad:?}");
        }
        assert!(parse_device_query("").unwrap().is_empty());
    }

    #[test]
    fn the_query_joins_by_index_and_name() {
        let mut g = parse_nvidia_smi_xml(V100X4).unwrap();
        let mut q = parse_device_query(fixture!("c4130-v100x4.query.csv")).unwrap();
        q.pop();
        q[1].name = "Tesla P100-PCIE-12GB".into();
        let e = apply_device_query(&mut g, &q).unwrap_err();
        assert!(e.contains("GPU 3 is not in the device query"), "{e}");
        assert!(
            e.contains("GPU 1 is \"Tesla V100-SXM2-16GB\" in the report"),
            "{e}"
        );
        let cc: Vec<Option<&str>> = g.iter().map(|x| x.compute_capability.as_deref()).collect();
        assert_eq!(cc, [Some("7.0"), None, Some("7.0"), None]);
    }

    /// Garbage, other XML and every cut of a real report: an error or a result, never a panic.
    #[test]
    fn garbage_and_truncated_reports_are_errors() {
        for bad in [
            "",
            "   ",
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. \
             Make sure that the latest NVIDIA driver is installed and running.",
            "<nvidia_smi_log>",
            "<nvidia_smi_log><gpu></nvidia_smi_log>",
            "<rspec></rspec>",
            "<?xml version=\"1.0\" ?><!DOCTYPE x [<!ENTITY a \"&b;\"><!ENTITY b \"&a;\">]><x>&a;</x>",
            "\u{0}\u{1}\u{ffff}<<>>&&;",
        ] {
            assert!(parse_nvidia_smi_xml(bad).is_err(), "{bad:?}");
        }
        // Cut anywhere: whatever parses must not claim more GPUs than there are.
        let mut cut = P4X2_V11.trim_end().len() - 1;
        while cut > 0 {
            if P4X2_V11.is_char_boundary(cut)
                && let Ok(g) = parse_nvidia_smi_xml(&P4X2_V11[..cut])
            {
                panic!("a report cut at byte {cut} parsed as {} GPUs", g.len());
            }
            cut = cut.saturating_sub(97);
        }
        // Bytes flipped into something else: no panic, whatever the answer.
        let bytes = P100.as_bytes();
        for i in (0..bytes.len()).step_by(131) {
            let mut b = bytes.to_vec();
            b[i] = b"<>&\"x\0"[i % 6];
            let _ = parse_nvidia_smi_xml(&String::from_utf8_lossy(&b));
            let _ = parse_device_query(&String::from_utf8_lossy(&b));
        }
    }

    /// Through a stand-in nvidia-smi: the report and the query, and a query that fails.
    #[test]
    fn details_from_a_fake_nvidia_smi() {
        let d = tempfile::tempdir().unwrap();
        let xml = d.path().join("report.xml");
        std::fs::write(&xml, V100X4).unwrap();
        let csv = d.path().join("query.csv");
        std::fs::write(&csv, fixture!("c4130-v100x4.query.csv")).unwrap();
        let smi = d.path().join("nvidia-smi");
        let script = |query: &str| {
            format!(
                "#!/bin/sh\ncase \"$1\" in\n  -q) cat '{}' ;;\n  --query-gpu=index,name,compute_cap,memory.total) {query} ;;\n  *) exit 9 ;;\nesac\n",
                xml.display()
            )
        };
        let install = |body: String| {
            std::fs::write(&smi, body).unwrap();
            std::fs::set_permissions(&smi, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        };
        install(script(&format!("cat '{}'", csv.display())));
        let (g, note) = details_from(&smi, Duration::from_secs(10));
        assert_eq!(note, None);
        assert_eq!(g.len(), 4);
        assert!(
            g.iter()
                .all(|x| x.compute_capability.as_deref() == Some("7.0"))
        );
        install(script(
            "echo 'Field \"compute_cap\" is not a valid field to query.'; exit 2",
        ));
        let (g, note) = details_from(&smi, Duration::from_secs(10));
        assert_eq!(g.len(), 4);
        assert!(g.iter().all(|x| x.compute_capability.is_none()));
        let note = note.unwrap();
        assert!(note.contains("not a valid field"), "{note}");
        install("#!/bin/sh\necho 'No devices were found'; exit 6\n".into());
        let (g, note) = details_from(&smi, Duration::from_secs(10));
        assert!(g.is_empty());
        assert!(note.unwrap().contains("No devices were found"));
    }
}
