//! TLS end to end: certificates made at run time (see `common::certs`),
//! real `doozerd` processes and the `doozer` CLI.

mod common;

use common::certs::TestCa;
use common::TempDir;
use doozer::tls::{NodeTls, NodeTlsFiles};

/// The certificates the tests make are what doozerd loads: chain, key and
/// CA, with the expiry date read back.
#[test]
fn generated_certificates_load() {
    let dir = TempDir::new("tls-load");
    let ca = TestCa::new("test CA load");
    let ca_file = ca.write(&dir.path, "ca.pem");
    let node = ca.issue_files_until(&dir.path, "n1", &["127.0.0.1:8046"], Some((2040, 1, 1)));
    let tls = NodeTls::load(NodeTlsFiles {
        cert: node.cert.clone(),
        key: node.key.clone(),
        ca: Some(ca_file),
    })
    .expect("loads");
    assert!(tls.takes_peers());
    assert_eq!(tls.current().not_after, 2_208_988_800);
    // A key that is not the certificate's is refused, naming both files.
    let other = ca.issue_files(&dir.path, "n2", &["127.0.0.2"]);
    let err = NodeTls::load(NodeTlsFiles {
        cert: node.cert,
        key: other.key,
        ca: None,
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("n1.pem") && err.contains("n2.key"), "{err}");
}
