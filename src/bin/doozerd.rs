//! `doozerd`: the doozer server.

use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;
use doozer::cli::goflag;
use doozer::config::{Config, WebSetting};
use doozer::core::NODE_VERSION;
use doozer::runtime::{rt, server};
use doozer::session::Secrets;
use doozer::uri::with_default_port;

/// Usage: doozerd [OPTIONS]
///
/// The web view listens on the -l host at port 8000 unless -w says otherwise;
/// `-w false` turns it off. Flags may be spelled Go-style (-timeout 60,
/// -hist=10) or with two dashes (--timeout 60).
#[derive(FromArgs, Debug)]
struct Flags {
    /// listen address: client and peer traffic, and this node's identity
    /// (default 127.0.0.1:8046)
    #[argh(
        option,
        short = 'l',
        long = "listen",
        default = "String::from(\"127.0.0.1:8046\")"
    )]
    listen: String,

    /// attach to the cluster member at this address (repeatable; the first
    /// that answers wins)
    #[argh(option, short = 'a', long = "attach")]
    attach: Vec<String>,

    /// boot (DzNS) URI (default $DOOZER_BOOT_URI)
    #[argh(option, short = 'b', long = "boot")]
    boot: Option<String>,

    /// cluster name (default local)
    #[argh(
        option,
        short = 'c',
        long = "cluster",
        default = "String::from(\"local\")"
    )]
    cluster: String,

    /// web view address, or false to turn it off (default: the -l host, port
    /// 8000)
    #[argh(option, short = 'w', long = "web")]
    web: Option<String>,

    /// seconds between writes of /ctl/node/<id>/applied (default 1)
    #[argh(option, long = "pulse", default = "1.0")]
    pulse: f64,

    /// seconds; kept for compatibility (the stable leader fills holes at
    /// election time) (default 0.1)
    #[argh(option, long = "fill", default = "0.1")]
    fill: f64,

    /// seconds a node may stay silent before it is removed (default 60)
    #[argh(option, long = "timeout", default = "60.0")]
    timeout: f64,

    /// revisions of history kept readable (default 2000)
    #[argh(option, long = "hist", default = "2000")]
    hist: usize,

    /// TLS certificate chain (PEM): the -l port (clients and peers) and the
    /// web view are served over TLS; needs -tlskey
    #[argh(option, long = "tlscert")]
    tlscert: Option<String>,

    /// TLS private key (PEM) for -tlscert
    #[argh(option, long = "tlskey")]
    tlskey: Option<String>,

    /// the cluster's CA certificate (PEM): peers must show certificates it
    /// signed, and -a and DzNS addresses are dialled over TLS trusting it;
    /// without it a TLS node takes no peers
    #[argh(option, long = "tls-ca")]
    tls_ca: Option<String>,

    /// serve the web view over plain HTTP even when TLS is on
    #[argh(switch, long = "web-http")]
    web_http: bool,

    /// largest file body in bytes (default 1048576)
    #[argh(option, long = "max-value-bytes")]
    max_value_bytes: Option<usize>,

    /// most open client connections (default 10000)
    #[argh(option, long = "max-connections")]
    max_connections: Option<usize>,

    /// most open connections from one address (an IPv6 /64); must be below
    /// --max-connections (default 500, or half of --max-connections when
    /// smaller)
    #[argh(option, long = "max-connections-per-ip")]
    max_connections_per_ip: Option<usize>,

    /// seconds a connection has to pass ACCESS when a secret is set
    /// (default 10)
    #[argh(option, long = "access-timeout", default = "10.0")]
    access_timeout: f64,

    /// slots a leader may run ahead of what it applied; a /ctl/cal change
    /// governs voting this many slots later (default 64)
    #[argh(option, long = "alpha")]
    alpha: Option<usize>,

    /// directory for this node's identity, write-ahead log and images: with
    /// it, a restarted node resumes as itself and a full-cluster restart
    /// keeps every acknowledged write (default: none, memory only)
    #[argh(option, long = "data-dir")]
    data_dir: Option<String>,

    /// answer reads (GET, STAT, GETDIR, WALK, REV without a rev) from this
    /// node's copy at once: faster, but a read may miss writes another
    /// node acknowledged (default: every read is linearizable)
    #[argh(switch, long = "local-reads")]
    local_reads: bool,

    /// print the version and exit
    #[argh(switch, short = 'v', long = "version")]
    version: bool,
}

/// Go's flag package accepts `-name value`, `-name=value`, `--name value`;
/// argh wants `--name value` for long names and `-x` for one letter. Rewrite
/// the Go spellings, and split `=` forms.
fn normalise_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    const LONG: [&str; 11] = [
        "listen", "attach", "boot", "cluster", "web", "pulse", "fill", "timeout", "hist",
        "version", "alpha",
    ];
    const GO_ONLY: [&str; 2] = ["tlscert", "tlskey"];
    let mut out = Vec::new();
    for arg in args {
        let Some(body) = arg.strip_prefix('-') else {
            out.push(arg);
            continue;
        };
        if body.is_empty() || body == "-" {
            out.push(arg);
            continue;
        }
        let body = body.strip_prefix('-').unwrap_or(body);
        let (name, value) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (body, None),
        };
        let flag = if name.len() == 1 {
            format!("-{name}")
        } else if LONG.contains(&name) || GO_ONLY.contains(&name) || name.contains('-') {
            format!("--{name}")
        } else {
            // Unknown: let argh report it as the user spelled it.
            arg.clone()
        };
        out.push(flag);
        if let Some(value) = value {
            out.push(value.to_string());
        }
    }
    out
}

/// The strings Go's `strconv.ParseBool` accepts: any of them turns `-w` off.
/// Whether `-w` was given a Go boolean (which turns the web view off).
fn is_go_bool(text: &str) -> bool {
    goflag::parse_bool(text).is_ok()
}

fn seconds(name: &str, value: f64) -> Result<Duration, String> {
    if value.is_finite() && value > 0.0 && value < 1e9 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(format!(
            "-{name} must be a positive number of seconds, not {value}"
        ))
    }
}

fn config_from(flags: Flags) -> Result<Config, String> {
    // -fill is accepted for compatibility, and checked, but unused: the
    // stable leader fills holes when it takes over, not after a delay.
    seconds("fill", flags.fill)?;
    let mut config = Config {
        listen: flags.listen,
        // An address without a port means the default one, as in URIs.
        attach: flags.attach.iter().map(|a| with_default_port(a)).collect(),
        boot_uri: flags
            .boot
            .or_else(|| std::env::var("DOOZER_BOOT_URI").ok())
            .filter(|uri| !uri.is_empty()),
        cluster_name: flags.cluster,
        web: match flags.web {
            None => WebSetting::Default,
            Some(w) if is_go_bool(&w) => WebSetting::Off,
            Some(w) => WebSetting::Addr(w),
        },
        pulse: seconds("pulse", flags.pulse)?,
        timeout: seconds("timeout", flags.timeout)?,
        history_revs: flags.hist,
        tls_cert: flags.tlscert,
        tls_key: flags.tlskey,
        tls_ca: flags.tls_ca,
        web_http: flags.web_http,
        secrets: Secrets {
            read_write: std::env::var("DOOZER_RWSECRET").unwrap_or_default(),
            read_only: std::env::var("DOOZER_ROSECRET").unwrap_or_default(),
        },
        peer_secret: std::env::var("DOOZER_PEERSECRET").unwrap_or_default(),
        data_dir: flags.data_dir.map(std::path::PathBuf::from),
        local_reads: flags.local_reads,
        ..Config::default()
    };
    if let Some(n) = flags.max_value_bytes {
        config.limits.max_value_bytes = n;
        config.limits.max_frame_bytes =
            config.limits.max_frame_bytes.max(n.saturating_add(1 << 20));
        config.limits.inbox_max_bytes = config
            .limits
            .inbox_max_bytes
            .max(config.limits.max_frame_bytes);
    }
    let total = flags
        .max_connections
        .unwrap_or(config.limits.max_connections);
    config
        .limits
        .set_max_connections(total, flags.max_connections_per_ip);
    config.limits.access_timeout = seconds("access-timeout", flags.access_timeout)?;
    if let Some(n) = flags.alpha {
        config.alpha = n;
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// How long an attaching node may wait for its first copy of the store.
const COPY_LIMIT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = normalise_args(args);
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let flags = match Flags::from_args(&["doozerd"], &arg_refs) {
        Ok(flags) => flags,
        Err(early) => {
            let failed = early.status.is_err();
            if failed {
                eprintln!("{}", early.output);
                return ExitCode::from(2);
            }
            println!("{}", early.output);
            return ExitCode::SUCCESS;
        }
    };
    if flags.version {
        println!("doozerd {NODE_VERSION}");
        return ExitCode::SUCCESS;
    }
    let config = match config_from(flags) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("doozerd: {err}");
            eprintln!("Run `doozerd --help` for the options.");
            return ExitCode::from(1);
        }
    };
    let cluster = config.cluster_name.clone();
    let web_scheme = if config.tls_cert.is_some() && !config.web_http {
        "https"
    } else {
        "http"
    };
    let node = match rt::block_on(server::start(config)) {
        Ok(node) => node,
        Err(err) => {
            eprintln!("doozerd: {err}");
            return ExitCode::from(1);
        }
    };
    log::info!(
        "doozerd {NODE_VERSION} listening on {} as node {} of cluster {cluster:?} ({}){}",
        node.addr,
        node.id,
        if node.resumed {
            "resumed from its data dir"
        } else if node.attached_to.is_none() {
            "seed"
        } else {
            "attaching as a slave"
        },
        match &node.web_addr {
            Some(addr) => format!("; web view on {web_scheme}://{addr}/"),
            None => String::new(),
        }
    );
    if let Some((target, target_addr)) = &node.attached_to {
        // The original exited when its attach connection failed before it
        // had cloned the store; do the same rather than hold clients for
        // ever on a node with nothing to serve.
        if !rt::block_on(node.wait_for_copy(COPY_LIMIT)) {
            eprintln!(
                "doozerd: no copy of the store came from {target_addr} (node {target}) within \
                 {COPY_LIMIT:?}; giving up"
            );
            return ExitCode::from(1);
        }
    }
    node.serve_forever();
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(args: &[&str]) -> Vec<String> {
        normalise_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn go_spellings_become_argh_spellings() {
        assert_eq!(norm(&["-timeout", "60"]), ["--timeout", "60"]);
        assert_eq!(norm(&["--timeout", "60"]), ["--timeout", "60"]);
        assert_eq!(norm(&["-hist=10"]), ["--hist", "10"]);
        assert_eq!(norm(&["-l", "127.0.0.2:8046"]), ["-l", "127.0.0.2:8046"]);
        assert_eq!(norm(&["-l=127.0.0.2:8046"]), ["-l", "127.0.0.2:8046"]);
        assert_eq!(norm(&["-tlscert", "c"]), ["--tlscert", "c"]);
        assert_eq!(norm(&["-a", "x", "-a", "y"]), ["-a", "x", "-a", "y"]);
        assert_eq!(norm(&["-max-value-bytes", "9"]), ["--max-value-bytes", "9"]);
    }

    #[test]
    fn flags_parse_into_a_config() {
        let args = norm(&[
            "-l",
            "127.0.0.9:9000",
            "-timeout",
            "5",
            "-hist=10",
            "-w",
            "false",
            "-c",
            "x",
            "-a",
            "127.0.0.8",
            "-a",
            "127.0.0.7:9",
        ]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let flags = Flags::from_args(&["doozerd"], &refs).unwrap();
        let config = config_from(flags).unwrap();
        assert_eq!(config.listen, "127.0.0.9:9000");
        assert_eq!(config.timeout, Duration::from_secs(5));
        assert_eq!(config.history_revs, 10);
        assert_eq!(config.web, WebSetting::Off);
        assert_eq!(config.cluster_name, "x");
        assert_eq!(config.attach, ["127.0.0.8:8046", "127.0.0.7:9"]);
        assert!(is_go_bool("T") && !is_go_bool("127.0.0.1:8000"));
        assert_eq!(config.limits.max_connections_per_ip, 500);
        assert_eq!(config.limits.access_timeout, Duration::from_secs(10));
    }

    #[test]
    fn connection_limits_and_access_timeout() {
        let parse = |args: &[&str]| {
            let args = norm(args);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            config_from(Flags::from_args(&["doozerd"], &refs).unwrap())
        };
        let c = parse(&["-max-connections", "500", "-access-timeout", "0.5"]).unwrap();
        assert_eq!(c.limits.max_connections, 500);
        assert_eq!(c.limits.max_connections_per_ip, 250);
        assert_eq!(c.limits.access_timeout, Duration::from_millis(500));
        let c = parse(&["--max-connections-per-ip", "7"]).unwrap();
        assert_eq!(c.limits.max_connections_per_ip, 7);
        assert!(parse(&["--max-connections", "10", "--max-connections-per-ip", "10"]).is_err());
        assert!(parse(&["-access-timeout", "0"]).is_err());
        // A larger value raises the frame limit, and the inbox's with it.
        let c = parse(&["--max-value-bytes", "200000000"]).unwrap();
        assert!(c.limits.inbox_max_bytes >= c.limits.max_frame_bytes);
    }
}
