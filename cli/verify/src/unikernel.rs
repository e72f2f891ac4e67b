//! The `unikernel boot` check: on a node with the `unikernel` feature, the agent boots its
//! built-in unikernel image under KVM several times (see `edgectl_agent::unikernel`) and the
//! p50 of the boot times, launch to the image's first serial output, is judged against the
//! topology's `unikernel_boot_ms`.

use edgectl_agent::unikernel::UnikernelBoot;

use crate::checks::{Check, Verdict};

pub const NAME: &str = "unikernel boot";

fn ms(x: f64) -> String {
    format!("{x:.1} ms")
}

/// The check of one node's boots (`Err`: why none was measured: no /dev/kvm, no qemu, a boot
/// that failed, an agent that did not answer).
pub fn check(node: &str, boot: Result<&UnikernelBoot, &str>, target_ms: Option<f64>) -> Check {
    let runs = boot.map(|b| b.samples_ms.len()).unwrap_or(0);
    let expected = match target_ms {
        Some(t) => format!("p50 <= {t} ms (launch to first serial output, under KVM)"),
        None => "boots under KVM (no unikernel_boot_ms target)".to_string(),
    };
    let (actual, reason) = match boot {
        Err(e) => ("not measured".to_string(), Some(e.to_string())),
        Ok(b) => {
            let actual = format!(
                "p50 {}, max {} ({runs} boots, qemu {})",
                ms(b.p50_ms),
                ms(b.max_ms),
                b.machine.split(',').next().unwrap_or("")
            );
            let valid = runs > 0
                && b.samples_ms.iter().all(|x| x.is_finite() && *x > 0.0)
                && b.p50_ms.is_finite();
            let reason = if !valid {
                Some("the agent reported no valid boot times".to_string())
            } else {
                target_ms
                    .filter(|t| b.p50_ms > *t)
                    .map(|t| format!("p50 {} is above the {t} ms target", ms(b.p50_ms)))
            };
            (actual, reason)
        }
    };
    Check {
        node: node.to_string(),
        category: "runtime".into(),
        name: NAME.into(),
        expected,
        actual,
        verdict: if reason.is_none() {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boots(samples: &[f64]) -> UnikernelBoot {
        let (p50_ms, max_ms) = edgectl_agent::unikernel::stats(samples);
        UnikernelBoot {
            samples_ms: samples.to_vec(),
            p50_ms,
            max_ms,
            qemu: "/usr/bin/qemu-system-x86_64".into(),
            machine: edgectl_agent::unikernel::MACHINE.into(),
            image_bytes: 200,
        }
    }

    #[test]
    fn p50_against_the_target() {
        let b = boots(&[40.0, 42.0, 90.0, 41.0, 43.0]);
        let c = check("n1", Ok(&b), Some(50.0));
        assert_eq!(c.verdict, Verdict::Pass, "{c:?}");
        assert_eq!(c.actual, "p50 42.0 ms, max 90.0 ms (5 boots, qemu microvm)");
        assert_eq!(
            c.expected,
            "p50 <= 50 ms (launch to first serial output, under KVM)"
        );
        assert_eq!((c.category.as_str(), c.name.as_str()), ("runtime", NAME));
        // The max is shown, the p50 judged: one slow boot does not fail it; a slow p50 does.
        let c = check("n1", Ok(&b), Some(41.5));
        assert_eq!(c.verdict, Verdict::Fail);
        assert_eq!(
            c.reason.as_deref(),
            Some("p50 42.0 ms is above the 41.5 ms target")
        );
        let c = check("n1", Ok(&b), None);
        assert_eq!(c.verdict, Verdict::Pass);
        assert!(c.expected.contains("no unikernel_boot_ms target"));
    }

    #[test]
    fn no_boot_fails_with_the_reason() {
        let c = check(
            "n2",
            Err("no /dev/kvm on this node: KVM is not available"),
            Some(100.0),
        );
        assert_eq!(c.verdict, Verdict::Fail);
        assert_eq!(c.node, "n2");
        assert!(c.reason.as_deref().unwrap().contains("/dev/kvm"));
        let c = check("n2", Err("qemu-system-x86_64 is not on PATH"), None);
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(c.reason.as_deref().unwrap().contains("qemu-system-x86_64"));
        // An answer without samples proves nothing.
        let c = check("n2", Ok(&boots(&[])), None);
        assert_eq!(c.verdict, Verdict::Fail);
        let c = check("n2", Ok(&boots(&[f64::NAN])), None);
        assert_eq!(c.verdict, Verdict::Fail);
    }
}
