//! The cluster's CA and certificates, kept in `.edgectl/pki/` beside the topology. The CA key
//! never leaves the controller; a node gets its own key and certificate (uploaded 0600), and the
//! controller has a client certificate of its own. Names are `<node>.node.edgectl` and
//! `controller.edgectl`, so a certificate says which party holds it, and no node name (not even
//! `controller` or `ca`) can stand for the controller. For the same reason each party's files
//! live in a folder of their kind: `ca/`, `controller/`, `nodes/<node>/`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Who holds a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party<'a> {
    Controller,
    Node(&'a str),
}

pub const CONTROLLER: Party<'static> = Party::Controller;

impl Party<'_> {
    /// The DNS name in the party's certificate.
    pub fn dns_name(self) -> String {
        match self {
            Party::Controller => "controller.edgectl".into(),
            Party::Node(n) => format!("{n}.node.edgectl"),
        }
    }

    fn dir(self) -> PathBuf {
        match self {
            Party::Controller => PathBuf::from("controller"),
            Party::Node(n) => Path::new("nodes").join(n),
        }
    }
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: String,
    ca_key: KeyPair,
    cluster: String,
}

/// Lifetimes that fit a testbed cluster, which lives days to weeks: node and controller
/// certificates for 30 days, renewed when 7 or fewer remain; the CA for a year, renewed (and
/// every certificate with it) when 30 or fewer remain. `verify` uploads each node's certificate
/// on every run, so renewal reaches the nodes by itself.
const LEAF_DAYS: i64 = 30;
const LEAF_RENEW_DAYS: i64 = 7;
const CA_DAYS: i64 = 365;
const CA_RENEW_DAYS: i64 = 30;
const DAY: i64 = 86_400;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn at(secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// When the certificate whose files are in `d` expires (its `expires` file), if known.
fn expires(d: &Path) -> Option<i64> {
    fs::read_to_string(d.join("expires"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn ca_params(cluster: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("edgectl CA {cluster}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    p
}

/// Writes a file that only its owner may read, created with that mode (never widened later).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(tmp, path)
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Pki {
    /// Loads the CA from `dir`, or creates it there (anew when it is about to expire).
    pub fn open(dir: &Path, cluster: &str) -> Result<Pki, String> {
        Pki::open_at(dir, cluster, unix_now())
    }

    /// [`Pki::open`] as if the time were `now` (Unix seconds).
    pub fn open_at(dir: &Path, cluster: &str, now: i64) -> Result<Pki, String> {
        let ca_cert = dir.join("ca/cert.pem");
        let ca_key = dir.join("ca/key.pem");
        let fresh = expires(&dir.join("ca")).is_some_and(|e| e > now + CA_RENEW_DAYS * DAY);
        if fresh && ca_cert.exists() && ca_key.exists() {
            let key_pem =
                fs::read_to_string(&ca_key).map_err(|e| format!("{}: {e}", ca_key.display()))?;
            let ca_pem =
                fs::read_to_string(&ca_cert).map_err(|e| format!("{}: {e}", ca_cert.display()))?;
            let ca_key =
                KeyPair::from_pem(&key_pem).map_err(|e| format!("{}: {e}", ca_key.display()))?;
            return Ok(Pki {
                dir: dir.to_path_buf(),
                ca_pem,
                ca_key,
                cluster: cluster.to_string(),
            });
        }
        // A new CA: every certificate of the old one goes with it.
        for d in ["controller", "nodes"] {
            let _ = fs::remove_dir_all(dir.join(d));
        }
        let key = KeyPair::generate().map_err(err)?;
        let mut params = ca_params(cluster);
        params.not_before = at(now - 3600);
        params.not_after = at(now + CA_DAYS * DAY);
        let cert = params.self_signed(&key).map_err(err)?;
        write_private(&ca_key, key.serialize_pem().as_bytes())
            .map_err(|e| format!("{}: {e}", ca_key.display()))?;
        write_private(&ca_cert, cert.pem().as_bytes())
            .map_err(|e| format!("{}: {e}", ca_cert.display()))?;
        write_private(
            &dir.join("ca/expires"),
            (now + CA_DAYS * DAY).to_string().as_bytes(),
        )
        .map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            ca_pem: cert.pem(),
            ca_key: key,
            cluster: cluster.to_string(),
        })
    }

    /// The identity of `party`, issued on first use and kept until it is about to expire.
    pub fn identity(&self, party: Party) -> Result<Identity, String> {
        self.identity_at(party, unix_now())
    }

    /// [`Pki::identity`] as if the time were `now` (Unix seconds).
    pub fn identity_at(&self, party: Party, now: i64) -> Result<Identity, String> {
        let d = self.dir.join(party.dir());
        let cert_p = d.join("cert.pem");
        let key_p = d.join("key.pem");
        if expires(&d).is_some_and(|e| e > now + LEAF_RENEW_DAYS * DAY)
            && let (Ok(cert_pem), Ok(key_pem)) =
                (fs::read_to_string(&cert_p), fs::read_to_string(&key_p))
        {
            return Ok(Identity { cert_pem, key_pem });
        }
        let id = issue_at(&self.ca_key, &self.cluster, party, now)?;
        write_private(
            &d.join("expires"),
            (now + LEAF_DAYS * DAY).to_string().as_bytes(),
        )
        .map_err(|e| format!("{}: {e}", d.display()))?;
        write_private(&key_p, id.key_pem.as_bytes())
            .map_err(|e| format!("{}: {e}", key_p.display()))?;
        write_private(&cert_p, id.cert_pem.as_bytes())
            .map_err(|e| format!("{}: {e}", cert_p.display()))?;
        Ok(id)
    }
}

/// A certificate for `party` signed by the CA whose key is `ca_key`; valid as client and server.
pub fn issue(ca_key: &KeyPair, cluster: &str, party: Party) -> Result<Identity, String> {
    issue_at(ca_key, cluster, party, unix_now())
}

fn issue_at(ca_key: &KeyPair, cluster: &str, party: Party, now: i64) -> Result<Identity, String> {
    let key = KeyPair::generate().map_err(err)?;
    let mut p = CertificateParams::new(vec![party.dns_name()]).map_err(err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, party.dns_name());
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.not_before = at(now - 3600);
    p.not_after = at(now + LEAF_DAYS * DAY);
    let issuer = Issuer::new(ca_params(cluster), ca_key);
    let cert = p.signed_by(&key, &issuer).map_err(err)?;
    Ok(Identity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A throwaway CA and an identity under it: what an outsider would present (tests, probes).
pub fn foreign_identity(party: Party) -> Result<(String, Identity), String> {
    let key = KeyPair::generate().map_err(err)?;
    let ca = ca_params("foreign").self_signed(&key).map_err(err)?;
    Ok((ca.pem(), issue(&key, "foreign", party)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ca_and_identities_persist_with_private_modes() {
        let d = tempfile::tempdir().unwrap();
        let a = Pki::open(d.path(), "c").unwrap();
        let id = a.identity(Party::Node("n1")).unwrap();
        let b = Pki::open(d.path(), "c").unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(b.identity(Party::Node("n1")).unwrap().cert_pem, id.cert_pem);
        for f in ["ca/key.pem", "nodes/n1/key.pem", "ca/cert.pem"] {
            let m = fs::metadata(d.path().join(f)).unwrap().permissions().mode();
            assert_eq!(m & 0o777, 0o600, "{f}");
        }
    }

    /// Nodes named like the CA or the controller get files and names of their own.
    #[test]
    fn node_names_never_reach_the_ca_or_the_controller() {
        let d = tempfile::tempdir().unwrap();
        let pki = Pki::open(d.path(), "c").unwrap();
        let ctrl = pki.identity(CONTROLLER).unwrap();
        for name in ["controller", "ca", "cert", "key"] {
            let node = pki.identity(Party::Node(name)).unwrap();
            assert_ne!(node.key_pem, ctrl.key_pem, "{name}");
            assert_ne!(node.key_pem, pki.ca_key.serialize_pem(), "{name}");
            assert_ne!(Party::Node(name).dns_name(), CONTROLLER.dns_name());
        }
        assert_eq!(pki.identity(CONTROLLER).unwrap().key_pem, ctrl.key_pem);
        let reopened = Pki::open(d.path(), "c").unwrap();
        assert_eq!(reopened.ca_pem, pki.ca_pem);
    }

    #[test]
    fn certificates_fit_a_cluster_s_life_and_are_renewed_before_they_expire() {
        let d = tempfile::tempdir().unwrap();
        let t0 = 1_800_000_000;
        let pki = Pki::open_at(d.path(), "c", t0).unwrap();
        let n1 = pki.identity_at(Party::Node("n1"), t0).unwrap();
        // Kept while more than 7 days remain; renewed after.
        assert_eq!(
            pki.identity_at(Party::Node("n1"), t0 + 22 * DAY)
                .unwrap()
                .cert_pem,
            n1.cert_pem
        );
        let renewed = pki.identity_at(Party::Node("n1"), t0 + 24 * DAY).unwrap();
        assert_ne!(renewed.cert_pem, n1.cert_pem);
        assert_eq!(
            expires(&d.path().join("nodes/n1")),
            Some(t0 + 24 * DAY + 30 * DAY)
        );
        // The CA is kept for most of a year, then replaced with everything it signed.
        assert_eq!(
            Pki::open_at(d.path(), "c", t0 + 300 * DAY).unwrap().ca_pem,
            pki.ca_pem
        );
        let later = Pki::open_at(d.path(), "c", t0 + 340 * DAY).unwrap();
        assert_ne!(later.ca_pem, pki.ca_pem);
        assert!(!d.path().join("nodes/n1").exists());
        assert_eq!(
            expires(&d.path().join("ca")),
            Some(t0 + 340 * DAY + 365 * DAY)
        );
    }
}
