//! Certificates made at run time for TLS tests (rcgen): a CA per test, and
//! node certificates it signs, naming the addresses they serve. No key
//! material is checked in.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate authority: its certificate (PEM) and what signs with it.
pub struct TestCa {
    pub name: String,
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A node's certificate and key, as files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// `-tlscert CERT -tlskey KEY` as doozerd arguments.
    pub fn args(&self) -> Vec<String> {
        vec![
            "-tlscert".into(),
            self.cert.display().to_string(),
            "-tlskey".into(),
            self.key.display().to_string(),
        ]
    }
}

impl TestCa {
    /// A new CA; `name` goes in its subject (CAs of one test should differ
    /// in name, as real ones do).
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("a self-signed CA");
        TestCa {
            name: name.to_string(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes the CA certificate to `dir/<file>`.
    pub fn write(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, &self.pem).unwrap();
        path
    }

    /// A certificate for a node serving `names` (IP addresses or DNS names;
    /// a `host:port` loses its port), usable as server and client, valid
    /// until `not_after` (`(year, month, day)`; default: rcgen's, 4096).
    /// Returns (certificate PEM, key PEM).
    pub fn issue(&self, names: &[&str], not_after: Option<(i32, u8, u8)>) -> (String, String) {
        let key = KeyPair::generate().expect("a node key");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names.first().copied().unwrap_or("node"));
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|name| {
                let host = match name.rsplit_once(':') {
                    Some((host, port)) if port.parse::<u16>().is_ok() => host,
                    _ => name,
                };
                match host.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(host.try_into().expect("a DNS name")),
                }
            })
            .collect();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if let Some((y, m, d)) = not_after {
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a signed node cert");
        (cert.pem(), key.serialize_pem())
    }

    /// [`TestCa::issue`] written to `dir/<file>.pem` and `dir/<file>.key`.
    pub fn issue_files(&self, dir: &Path, file: &str, names: &[&str]) -> CertFiles {
        self.issue_files_until(dir, file, names, None)
    }

    /// [`TestCa::issue_files`] with an expiry date.
    pub fn issue_files_until(
        &self,
        dir: &Path,
        file: &str,
        names: &[&str],
        not_after: Option<(i32, u8, u8)>,
    ) -> CertFiles {
        let (cert, key) = self.issue(names, not_after);
        let files = CertFiles {
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}.key")),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        files
    }
}
