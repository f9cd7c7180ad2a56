//! Partitions on loopback: iptables rules (in the network namespace the
//! test runs in) that drop every packet from and to one 127.x address, so a TCP connection
//! looks open but carries nothing (no FIN, no RST) until the rules go.

use std::process::Command;

/// The rules that cut one loopback IP off from every other, removed when
/// dropped.
pub struct Cut {
    ip: String,
    tag: String,
}

/// Runs `iptables ARGS`; why not, if it failed.
fn iptables(args: &[&str]) -> Result<(), String> {
    let out = Command::new("iptables").args(args).output().map_err(|e| {
        format!("iptables: {e} (install it: apt-get install -y iptables; run as root)")
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Panics with how to get iptables when this test process cannot use it.
pub fn require_iptables() {
    iptables(&["-L", "INPUT", "-n"]).expect("this test needs iptables and root");
}

impl Cut {
    fn rules(&self) -> [[&str; 8]; 2] {
        let rule = |direction| {
            [
                "INPUT",
                direction,
                self.ip.as_str(),
                "-m",
                "comment",
                "--comment",
                self.tag.as_str(),
                "-j",
            ]
        };
        [rule("-s"), rule("-d")]
    }

    pub fn new(ip: &str) -> Cut {
        let cut = Cut {
            ip: ip.to_string(),
            tag: format!("doozer-test-{}", std::process::id()),
        };
        for rule in cut.rules() {
            let mut args = vec!["-I"];
            args.extend(rule);
            args.push("DROP");
            iptables(&args).unwrap();
        }
        cut
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        for rule in self.rules() {
            let mut args = vec!["-D"];
            args.extend(rule);
            args.push("DROP");
            let _ = iptables(&args);
        }
    }
}
