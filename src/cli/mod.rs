//! The `doozer` command (reference §8, with the fixes of CONTRACT.md §3).
//!
//! What scripts depend on is the original's, byte for byte: the usage layout,
//! the output formats, the `Error: …` lines and the exit codes
//! (0 success, 1 rev mismatch, 2 other errors, 127 usage errors). Global flags
//! are parsed the way Go's `flag` package does it, before the command and
//! again right after it, so `doozer -a uri set /x 0` and
//! `doozer set -a uri /x 0` are the same.
//!
//! [`run`] takes its arguments, environment and standard streams as
//! parameters so that tests can drive it in-process; [`main`] binds it to the
//! real process.

pub mod goflag;
pub mod members;
pub mod snapshot;

use std::io::{Read, Write};
use std::time::Duration;

use crate::bench;
use crate::client::{self, walk_tree, Client, Event, Visit};
use crate::uri::{Uri, UriError, DEFAULT_URI};

use goflag::{FlagError, Kind};

/// What `-v` prints after `doozer `.
pub const VERSION: &str = "0.9.0";

/// Exit status after a usage error (missing or unknown command, wrong number
/// of arguments).
pub const EXIT_USAGE: i32 = 127;
/// Exit status after a failed request, a bad flag or a bad argument.
pub const EXIT_ERROR: i32 = 2;
/// Exit status after `REV_MISMATCH`.
pub const EXIT_REV_MISMATCH: i32 = 1;

/// One command of the list.
pub struct Command {
    pub name: &'static str,
    /// The argument names, as shown in the usage (`<path> <rev>`).
    pub args: &'static str,
    /// How many arguments it takes.
    pub nargs: usize,
    /// The one-line description of the usage list.
    pub desc: &'static str,
    /// The text `help <command>` prints after its `Use:` line.
    pub help: &'static str,
}

const GLOB_RULES: &str = "In <glob>, ? stands for one character and * for any run of characters
within one name; ** stands for any run of characters across names (so
/a/** is everything below /a). Every other character stands for itself.
";

/// Commands the original did not have; they do not widen the usage list's
/// alignment.
pub const EXTENSIONS: &[&str] = &["snapshot"];

/// Every command, sorted by name.
pub const COMMANDS: &[Command] = &[
    Command {
        name: "add",
        args: "<path>",
        nargs: 1,
        desc: "create a file that must not exist yet",
        help: "Creates the file <path> with standard input as its body, and fails with
a rev mismatch (exit 1) when the file is already there. The same as
`set <path> 0`.

On success, prints the revision of the write.
",
    },
    Command {
        name: "bench",
        args: "",
        nargs: 0,
        desc: "generate load and measure latency",
        help: "Sends requests to the cluster for a while and reports the throughput and
the latency.

Options (each may be written with one dash or two):
  -c N          number of connections (default 1)
  -p N          requests in flight per connection (default 1: not pipelined)
  -op OP        set, get or mixed (default set; mixed if -read-pct is given)
  -read-pct N   percentage of reads with -op mixed (default 50)
  -size B       bytes per value (default 64)
  -d SECS       how long to run, in seconds (default 10)
  -keys K       number of distinct keys, under /bench/ (default 1000)
  -rate N       open loop: N operations per second in all, on a fixed
                schedule spread over the connections; each latency runs
                from the request's scheduled start, so a stalled server
                shows as latency (default: closed loop, each connection
                keeping -p requests in flight); -p then caps the requests
                in flight per connection (default 1024)
  -threads N    threads driving the connections (default 1)
  -json         print one line of JSON instead of the report
  -zk           drive a ZooKeeper server instead, in its own protocol, with
                the same load: -a is then its HOST:PORT (default
                127.0.0.1:2181); set is setData (any version), get is
                getData (no watch); each connection opens a session, and the
                znode /bench and each key's znode are created first (one
                already there is kept)

Before a get or mixed run, each key is written once. Progress goes to stderr
once a second. At the end, prints on stdout the number of operations, the
errors, the operations per second, and the latency percentiles p50, p90,
p99, p99.9 and the maximum, in milliseconds (from an HdrHistogram, three
significant digits). With -rate, also the target rate, the requests sent
more than 1 ms after their scheduled start (late) and those never sent
(unsent: in flight at the cap until the end). With -json, stdout is that one
line instead: op, read_pct, conns, pipeline, size, keys, threads, rate (null
in the closed loop), duration_s, ops, errors, elapsed_s, ops_per_sec, late,
unsent, p50_ms, p90_ms, p99_ms, p999_ms, max_ms, first_error.
",
    },
    Command {
        name: "del",
        args: "<path> <rev>",
        nargs: 2,
        desc: "remove a file",
        help: "Removes the file <path>, provided it has not been written after revision
<rev> (-1 removes it whatever its revision).
",
    },
    Command {
        name: "find",
        args: "<path>",
        nargs: 1,
        desc: "list a tree",
        help: "Lists <path> and everything below it, one path a line, each directory
before its contents and the entries of a directory in byte order.
The listing is taken at revision -r, or at the current one.
",
    },
    Command {
        name: "get",
        args: "<path>",
        nargs: 1,
        desc: "print a file's body",
        help: "Writes the body of the file <path> to standard output, as it is (no
newline is added). An absent file prints nothing.
",
    },
    Command {
        name: "help",
        args: "<command>",
        nargs: 1,
        desc: "explain one command",
        help: "",
    },
    Command {
        name: "members",
        args: "",
        nargs: 0,
        desc: "list the cluster's members and slaves",
        help: "Lists the nodes of the cluster as /ctl shows them at one revision (-r,
or the current one): first every slot of /ctl/cal, in slot order, then
every registered node that holds no slot, in id order. One line each,
five fields separated by single spaces:

  <slot> <id> <addr> <role> <applied>

  <slot>     the slot's name; - for a node without a slot
  <id>       the node's id (what `self` prints on that node)
  <addr>     the address the node listens on
  <role>     leader   a member, and the one leading the cluster now
             member   a voting member holding this slot
             empty    an open slot no node has claimed yet
             slave    a node with a full copy of the data and no vote
  <applied>  the last revision the node reported as applied; it is
             reported now and then, so it may lag behind

Anything unknown is printed as -, so every line has five fields. A
cluster that does not record its leader in /ctl/leader shows every
member as member.
",
    },
    Command {
        name: "nop",
        args: "",
        nargs: 0,
        desc: "commit an empty change",
        help: "Runs one round of consensus that changes nothing but the revision.
",
    },
    Command {
        name: "rev",
        args: "",
        nargs: 0,
        desc: "print the current revision",
        help: "Prints the revision the server has applied up to.
",
    },
    Command {
        name: "self",
        args: "",
        nargs: 0,
        desc: "print the server's node id",
        help: "Prints the id of the node this command is talking to.
",
    },
    Command {
        name: "set",
        args: "<path> <rev>",
        nargs: 2,
        desc: "write a file",
        help: "Writes standard input as the body of the file <path>, provided the file
has not been written after revision <rev>: 0 means it must not exist yet,
-1 writes whatever the file holds. A refused write is a rev mismatch
(exit 1).

On success, prints the revision of the write.
",
    },
    Command {
        name: "snapshot",
        args: "<op> <file>",
        nargs: 2,
        desc: "save, check or restore a backup",
        help: "Backups of the whole tree (our extension of the original's commands).
<op> is one of:

  save      write the tree at one revision (-r, or the current one) to
            <file>, read from whichever node -a names (a slave will do);
            prints `saved rev <rev>, <n> files, <size> to <file>`. The
            file is written as <file>.tmp, synced, then renamed.
  status    read <file> whole and check it: prints its revision, number
            of files and size, and `checksum ok`; a damaged file is an
            error naming the file and the byte where it went wrong.
  restore   check <file> whole, then write every file in it into the
            cluster -a names, except those under /ctl (the saved
            cluster's own state), with pipelined sets. Refused when the
            cluster already holds files outside /ctl, unless -force is
            given (files in both are then overwritten). The files get
            new revisions; their bodies are the saved ones.

To seed a new cluster from a backup: start its first node, run
`snapshot restore` against it, then add the other nodes.
",
    },
    Command {
        name: "stat",
        args: "<path>",
        nargs: 1,
        desc: "print a file's revision and length",
        help: "For a file, prints its revision and its length in bytes; for a
directory, prints \"d\" and how many entries it holds.
",
    },
    Command {
        name: "touch",
        args: "<path>",
        nargs: 1,
        desc: "rewrite a file unchanged",
        help: "Writes the file <path> again with the body it has, so its revision moves
forward; an absent file is created empty.
",
    },
    Command {
        name: "wait",
        args: "<glob>",
        nargs: 1,
        desc: "print the next change",
        help: "",
    },
    Command {
        name: "watch",
        args: "<glob>",
        nargs: 1,
        desc: "print every change",
        help: "",
    },
];

const WAIT_HELP_HEAD: &str =
    "Prints the first change to a path matching <glob> at or after revision
-r (by default, the current revision). With -t, gives up after that long;
-t takes durations like 500ms, 30s or 1m30s (units ns, us, ms, s, m, h).

";

const WAIT_HELP_TAIL: &str = "
The change is printed as one record:

  <path> <rev> <kind> <len> LF <body> LF

where <kind> is set, del, or empty for a no-op, <len> is the body's length
in bytes and LF a line feed.
";

const WATCH_HELP_HEAD: &str = "Prints every change to a path matching <glob>, from revision -r (by
default, the current revision) on, until it is stopped.

";

const WATCH_HELP_TAIL: &str = "
Each change is printed as one record:

  <path> <rev> <kind> <len> LF <body> LF

where <kind> is set, del, or empty for a no-op, <len> is the body's length
in bytes and LF a line feed.
";

pub fn command(name: &str) -> Option<&'static Command> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// The detailed help of a command (empty for an unknown name, as in Go).
pub fn command_help(name: &str) -> String {
    match name {
        "wait" => format!("{WAIT_HELP_HEAD}{GLOB_RULES}{WAIT_HELP_TAIL}"),
        "watch" => format!("{WATCH_HELP_HEAD}{GLOB_RULES}{WATCH_HELP_TAIL}"),
        _ => command(name).map(|c| c.help).unwrap_or("").to_string(),
    }
}

/// `help <command>`'s output (on stdout).
pub fn help_text(argv0: &str, name: &str) -> String {
    let args = command(name).map(|c| c.args).unwrap_or("");
    format!(
        "Use: {argv0} [options] {name} [options] {args}\n\n{}",
        command_help(name)
    )
}

/// The global flags, as `flag.PrintDefaults` lists them (sorted by name).
/// `(name, kind, default as shown, usage)`.
const FLAGS: &[(&str, Kind, &str, &str)] = &[
    (
        "a",
        Kind::Value,
        "\"doozer:?ca=127.0.0.1:8046\"",
        "the cluster to talk to",
    ),
    (
        "b",
        Kind::Value,
        "\"\"",
        "the DzNS that finds a cluster named by cn=",
    ),
    ("h", Kind::Bool, "false", "print this help"),
    (
        "r",
        Kind::Value,
        "-1",
        "revision for find, wait and watch (-1: the current one)",
    ),
    (
        "t",
        Kind::Value,
        "0",
        "how long wait may block (0: no limit)",
    ),
    (
        "tls-ca",
        Kind::Value,
        "\"\"",
        "speak TLS, trusting the CA certificate(s) in this PEM file",
    ),
    ("v", Kind::Bool, "false", "print the version"),
];

/// Go 1.1's `flag.PrintDefaults`.
pub fn flag_defaults() -> String {
    FLAGS
        .iter()
        .map(|(name, _, def, usage)| format!("  -{name}={def}: {usage}\n"))
        .collect()
}

/// The usage text (on stderr).
pub fn usage_text(argv0: &str) -> String {
    let mut out = format!("Use: {argv0} [options] <command> [options] [args]\n");
    out.push_str(
        "
Options may come before the command or right after it. Exit status: 0 on
success, 1 on a rev mismatch, 2 on any other error, 127 on bad usage.

Global Options:
",
    );
    out.push_str(&flag_defaults());
    out.push('\n');
    out.push_str(
        "Environment:

  DOOZER_URI - the cluster to talk to, unless -a is given.

  DOOZER_BOOT_URI - the DzNS, unless -b is given.

  DOOZER_TLS_CA - the CA file for -tls-ca, unless it is given.

Commands:
",
    );
    let line = |c: &Command| format!("{} {}", c.name, c.args);
    // Aligned on the original's commands, so their lines stay byte for byte
    // what scripts saw; a longer line of ours simply sticks out.
    let width = COMMANDS
        .iter()
        .filter(|c| !EXTENSIONS.contains(&c.name))
        .map(|c| line(c).chars().count())
        .max()
        .unwrap_or(0);
    for c in COMMANDS {
        out.push_str(&format!("  {:<width$} - {}\n", line(c), c.desc));
    }
    out
}

/// Go's default usage, shown for a bad flag before the command (the original
/// parses its flags once before it installs its own usage).
pub fn default_usage_text(argv0: &str) -> String {
    format!("Usage of {argv0}:\n{}", flag_defaults())
}

/// The values of the global flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Globals {
    pub uri: String,
    pub boot_uri: String,
    pub rev: i64,
    /// `-t`, in nanoseconds (0 or less: no timeout).
    pub timeout_ns: i64,
    /// `-tls-ca` / `DOOZER_TLS_CA`: dial over TLS trusting this CA file
    /// (every URI that does not name its own `tlsca`).
    pub tls_ca: String,
    pub help: bool,
    pub version: bool,
}

impl Default for Globals {
    fn default() -> Globals {
        Globals {
            uri: DEFAULT_URI.to_string(),
            boot_uri: String::new(),
            rev: -1,
            timeout_ns: 0,
            tls_ca: String::new(),
            help: false,
            version: false,
        }
    }
}

impl Globals {
    /// The defaults overridden by `DOOZER_URI` / `DOOZER_BOOT_URI` (when not
    /// empty), which the flags then override.
    pub fn from_env(env: &Env) -> Globals {
        let mut g = Globals::default();
        if let Some(uri) = env.uri.as_deref().filter(|u| !u.is_empty()) {
            g.uri = uri.to_string();
        }
        if let Some(boot) = env.boot_uri.as_deref().filter(|u| !u.is_empty()) {
            g.boot_uri = boot.to_string();
        }
        if let Some(ca) = env.tls_ca.as_deref().filter(|u| !u.is_empty()) {
            g.tls_ca = ca.to_string();
        }
        g
    }

    /// The cluster's URI and, when it names a cluster (`cn`) and a DzNS is
    /// given, the DzNS's; `-tls-ca` applied to each that names no `tlsca`.
    pub fn uris(&self) -> Result<(Uri, Option<Uri>), UriError> {
        let with_ca = |mut uri: Uri| {
            if uri.tls_ca.is_none() && !self.tls_ca.is_empty() {
                uri.tls_ca = Some(self.tls_ca.clone());
            }
            uri
        };
        let uri = with_ca(Uri::parse(&self.uri)?);
        let boot = match (&uri.cluster_name, self.boot_uri.as_str()) {
            (Some(_), b) if !b.is_empty() => Some(with_ca(Uri::parse(b)?)),
            _ => None,
        };
        Ok((uri, boot))
    }

    pub fn kind_of(name: &str) -> Option<Kind> {
        FLAGS.iter().find(|f| f.0 == name).map(|f| f.1)
    }

    /// Stores one flag's value; the error is the text Go puts after
    /// `invalid value "…" for flag -x: `.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        match name {
            "a" => self.uri = value.to_string(),
            "b" => self.boot_uri = value.to_string(),
            "r" => self.rev = goflag::parse_int(value, 0)?,
            "t" => self.timeout_ns = goflag::parse_duration(value)?,
            "tls-ca" => self.tls_ca = value.to_string(),
            "h" => self.help = goflag::parse_bool(value)?,
            "v" => self.version = goflag::parse_bool(value)?,
            _ => return Err(format!("unknown flag -{name}")),
        }
        Ok(())
    }

    /// Parses flags from the front of `args` into `self` (Go's
    /// `flag.Parse`), returning the rest.
    pub fn parse<'a>(&mut self, args: &'a [String]) -> Result<&'a [String], FlagError> {
        goflag::parse(args, Globals::kind_of, |n, v| self.set(n, v))
    }

    pub fn timeout(&self) -> Option<Duration> {
        (self.timeout_ns > 0).then(|| Duration::from_nanos(self.timeout_ns as u64))
    }
}

/// The environment variables the command reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Env {
    /// `DOOZER_URI`.
    pub uri: Option<String>,
    /// `DOOZER_BOOT_URI`.
    pub boot_uri: Option<String>,
    /// `DOOZER_TLS_CA`.
    pub tls_ca: Option<String>,
}

impl Env {
    pub fn from_process() -> Env {
        let var = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
        Env {
            uri: var("DOOZER_URI"),
            boot_uri: var("DOOZER_BOOT_URI"),
            tls_ca: var("DOOZER_TLS_CA"),
        }
    }
}

/// The standard streams of one run.
pub struct Io<'a> {
    pub stdin: &'a mut dyn Read,
    pub stdout: &'a mut dyn Write,
    pub stderr: &'a mut dyn Write,
}

/// Runs the real process: `std::env::args`, the environment and the real
/// standard streams. Returns the exit status.
pub fn main() -> i32 {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let (mut stdin, mut stdout, mut stderr) = (stdin.lock(), stdout.lock(), stderr.lock());
    let mut io = Io {
        stdin: &mut stdin,
        stdout: &mut stdout,
        stderr: &mut stderr,
    };
    let status = run(&argv, &Env::from_process(), &mut io);
    let _ = io.stdout.flush();
    let _ = io.stderr.flush();
    status
}

/// The whole command: `argv[0]` is the program name as invoked.
pub fn run(argv: &[String], env: &Env, io: &mut Io<'_>) -> i32 {
    let argv0 = argv.first().map(String::as_str).unwrap_or("doozer");
    let args = argv.get(1..).unwrap_or(&[]);

    // The original parses its flags once before installing its usage text,
    // so a bad flag before the command shows Go's default usage.
    if let Err(e) = Globals::default().parse(args) {
        if e != FlagError::Help {
            let _ = writeln!(io.stderr, "{e}");
        }
        let _ = io.stderr.write_all(default_usage_text(argv0).as_bytes());
        return EXIT_ERROR;
    }
    let mut g = Globals::from_env(env);
    let rest = match g.parse(args) {
        Ok(rest) => rest,
        Err(_) => unreachable!("the same arguments parsed a moment ago"),
    };

    if g.help {
        let _ = io.stderr.write_all(usage_text(argv0).as_bytes());
        return 0;
    }
    if g.version {
        let _ = writeln!(io.stdout, "doozer {VERSION}");
        return 0;
    }
    let Some(name) = rest.first() else {
        let _ = writeln!(io.stderr, "{argv0}: missing command");
        let _ = io.stderr.write_all(usage_text(argv0).as_bytes());
        return EXIT_USAGE;
    };
    let Some(cmd) = command(name) else {
        let _ = writeln!(io.stderr, "Unknown command: {name}");
        let _ = io.stderr.write_all(usage_text(argv0).as_bytes());
        return EXIT_USAGE;
    };
    if cmd.name == "bench" {
        return run_bench(argv0, &mut g, &rest[1..], io);
    }
    if cmd.name == "snapshot" {
        return snapshot::run(argv0, &mut g, &rest[1..], io);
    }

    // The flags again, right after the command.
    let args = match g.parse(&rest[1..]) {
        Ok(args) => args,
        Err(e) => {
            if e != FlagError::Help {
                let _ = writeln!(io.stderr, "{e}");
            }
            let _ = io.stderr.write_all(usage_text(argv0).as_bytes());
            return EXIT_ERROR;
        }
    };
    if g.help {
        let _ = io.stdout.write_all(help_text(argv0, cmd.name).as_bytes());
        return 0;
    }
    if args.len() != cmd.nargs {
        let _ = writeln!(io.stderr, "{}: wrong number of arguments", cmd.name);
        let _ = io.stdout.write_all(help_text(argv0, cmd.name).as_bytes());
        return EXIT_USAGE;
    }

    let result = match (cmd.name, args) {
        ("help", [topic]) => write_out(io, help_text(argv0, topic).as_bytes()),
        ("set", [path, rev]) => set(&g, io, path, rev),
        ("add", [path]) => set(&g, io, path, "0"),
        ("del", [path, rev]) => del(&g, path, rev),
        ("get", [path]) => get(&g, io, path),
        ("touch", [path]) => touch(&g, path),
        ("members", []) => members::members(&g, io),
        ("nop", []) => with_client(&g, |c| async move { c.nop().await.map_err(Failure::from) }),
        ("rev", []) => rev(&g, io),
        ("self", []) => self_id(&g, io),
        ("stat", [path]) => stat(&g, io, path),
        ("find", [path]) => find(&g, io, path),
        ("wait", [glob]) => wait(&g, io, glob),
        ("watch", [glob]) => watch(&g, io, glob),
        _ => unreachable!("argument count checked above"),
    };
    finish(result, io)
}

/// The exit status of a command's outcome, after its `Error: …` line.
fn finish(result: Outcome, io: &mut Io<'_>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(Failure::Exit(status)) => status,
        Err(Failure::Error { text, rev_mismatch }) => {
            let _ = writeln!(io.stderr, "Error: {text}");
            if rev_mismatch {
                EXIT_REV_MISMATCH
            } else {
                EXIT_ERROR
            }
        }
    }
}

/// How a command ended badly.
enum Failure {
    /// Print `Error: <text>` and exit 1 (rev mismatch) or 2.
    Error { text: String, rev_mismatch: bool },
    /// Everything has been said; exit with this status.
    Exit(i32),
}

impl From<client::Error> for Failure {
    fn from(e: client::Error) -> Failure {
        Failure::Error {
            text: e.to_string(),
            rev_mismatch: e.is_rev_mismatch(),
        }
    }
}

impl Failure {
    fn text(text: impl Into<String>) -> Failure {
        Failure::Error {
            text: text.into(),
            rev_mismatch: false,
        }
    }
}

type Outcome = Result<(), Failure>;

/// Writes to stdout and flushes; a closed stdout ends the command quietly.
fn write_out(io: &mut Io<'_>, bytes: &[u8]) -> Outcome {
    io.stdout
        .write_all(bytes)
        .and_then(|()| io.stdout.flush())
        .map_err(|_| Failure::Exit(EXIT_ERROR))
}

fn dial(g: &Globals) -> Result<Client, Failure> {
    let (uri, boot) = g.uris().map_err(client::Error::from)?;
    crate::runtime::rt::block_on(client::dial_uri(&uri, boot.as_ref())).map_err(Failure::from)
}

fn with_client<T, F, Fut>(g: &Globals, f: F) -> Result<T, Failure>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let c = dial(g)?;
    crate::runtime::rt::block_on(f(c))
}

fn block_on<T>(
    fut: impl std::future::Future<Output = Result<T, client::Error>>,
) -> Result<T, Failure> {
    crate::runtime::rt::block_on(fut).map_err(Failure::from)
}

fn parse_rev_arg(rev: &str) -> Result<i64, Failure> {
    goflag::parse_int(rev, 10).map_err(Failure::text)
}

fn set(g: &Globals, io: &mut Io<'_>, path: &str, rev: &str) -> Outcome {
    let old = parse_rev_arg(rev)?;
    let c = dial(g)?;
    let mut body = Vec::new();
    if let Err(e) = io.stdin.read_to_end(&mut body) {
        return Err(Failure::text(client::io_error_text(&e)));
    }
    let new = block_on(c.set(path, old, &body))?;
    write_out(io, format!("{new}\n").as_bytes())
}

fn del(g: &Globals, path: &str, rev: &str) -> Outcome {
    let old = parse_rev_arg(rev)?;
    let c = dial(g)?;
    block_on(c.del(path, old))
}

fn get(g: &Globals, io: &mut Io<'_>, path: &str) -> Outcome {
    let c = dial(g)?;
    let (body, _) = block_on(c.get(path, None))?;
    write_out(io, &body)
}

fn touch(g: &Globals, path: &str) -> Outcome {
    let c = dial(g)?;
    block_on(async {
        let (body, rev) = c.get(path, None).await?;
        c.set(path, rev, &body).await.map(|_| ())
    })
}

fn rev(g: &Globals, io: &mut Io<'_>) -> Outcome {
    let c = dial(g)?;
    let rev = block_on(c.rev())?;
    write_out(io, format!("{rev}\n").as_bytes())
}

fn self_id(g: &Globals, io: &mut Io<'_>) -> Outcome {
    let c = dial(g)?;
    let id = block_on(c.self_id())?;
    write_out(io, &id)
}

/// `stat`'s line for a STAT reply, or `None` for an absent path.
pub fn format_stat(len: i32, rev: i64) -> Option<String> {
    match rev {
        0 => None,
        -2 => Some(format!("d {len}\n")),
        _ => Some(format!("{rev} {len}\n")),
    }
}

fn stat(g: &Globals, io: &mut Io<'_>, path: &str) -> Outcome {
    let c = dial(g)?;
    let (len, rev) = block_on(c.stat(path, None))?;
    match format_stat(len, rev) {
        Some(line) => write_out(io, line.as_bytes()),
        None => {
            let _ = writeln!(io.stderr, "No such file or directory: {path}");
            Err(Failure::Exit(EXIT_ERROR))
        }
    }
}

/// `-r`, or the current REV when it is -1.
fn start_rev(g: &Globals, c: &Client) -> Result<i64, Failure> {
    if g.rev == -1 {
        block_on(c.rev())
    } else {
        Ok(g.rev)
    }
}

fn find(g: &Globals, io: &mut Io<'_>, root: &str) -> Outcome {
    let c = dial(g)?;
    let rev = start_rev(g, &c)?;
    let mut failed = false;
    let mut closed = false;
    crate::runtime::rt::block_on(walk_tree(&c, rev, root, |visit| match visit {
        Visit::Dir(path, _) | Visit::File(path, _) => {
            if !closed && write_out(io, format!("{path}\n").as_bytes()).is_err() {
                closed = true;
            }
        }
        Visit::Error(e) => {
            failed = true;
            let _ = writeln!(io.stderr, "{e}");
        }
    }));
    if failed || closed {
        Err(Failure::Exit(EXIT_ERROR))
    } else {
        Ok(())
    }
}

/// A wait/watch record: `<path> <rev> <kind> <len>\n<body>\n`, kind `set`,
/// `del` or empty for a nop.
pub fn format_record(ev: &Event) -> Vec<u8> {
    let mut out = format!("{} {} {} {}\n", ev.path, ev.rev, ev.kind(), ev.body.len()).into_bytes();
    out.extend_from_slice(&ev.body);
    out.push(b'\n');
    out
}

fn wait(g: &Globals, io: &mut Io<'_>, glob: &str) -> Outcome {
    let c = dial(g)?;
    let rev = start_rev(g, &c)?;
    let ev = match g.timeout() {
        Some(limit) => block_on(c.wait_timeout(glob, rev, limit))?,
        None => block_on(c.wait(glob, rev))?,
    };
    write_out(io, &format_record(&ev))
}

fn watch(g: &Globals, io: &mut Io<'_>, glob: &str) -> Outcome {
    let c = dial(g)?;
    let mut rev = start_rev(g, &c)?;
    loop {
        let ev = block_on(c.wait(glob, rev))?;
        rev = ev.rev + 1;
        write_out(io, &format_record(&ev))?;
    }
}

/// `doozer bench`: the global flags may appear among its own; its own go to
/// argh (after turning Go-style `-name` into `--name`).
fn run_bench(argv0: &str, g: &mut Globals, args: &[String], io: &mut Io<'_>) -> i32 {
    let mut own = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            own.extend(args[i..].iter().cloned());
            break;
        }
        let Some(stripped) = arg
            .strip_prefix("--")
            .or_else(|| arg.strip_prefix('-'))
            .filter(|s| !s.is_empty())
        else {
            own.push(arg.clone());
            continue;
        };
        let (name, value) = match stripped.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (stripped, None),
        };
        if matches!(name, "h" | "help") {
            let _ = io.stdout.write_all(help_text(argv0, "bench").as_bytes());
            return 0;
        }
        if let Some(kind) = Globals::kind_of(name) {
            let value = match (kind, value) {
                (_, Some(v)) => v,
                (Kind::Bool, None) => "true".to_string(),
                (Kind::Value, None) if i < args.len() => {
                    i += 1;
                    args[i - 1].clone()
                }
                (Kind::Value, None) => {
                    let _ = writeln!(io.stderr, "{}", FlagError::NeedsArgument(name.to_string()));
                    let _ = io.stderr.write_all(usage_text(argv0).as_bytes());
                    return EXIT_ERROR;
                }
            };
            if let Err(err) = g.set(name, &value) {
                let e = match kind {
                    Kind::Bool => FlagError::BadBool {
                        name: name.to_string(),
                        value,
                        err,
                    },
                    Kind::Value => FlagError::BadValue {
                        name: name.to_string(),
                        value,
                        err,
                    },
                };
                let _ = writeln!(io.stderr, "{e}");
                let _ = io.stderr.write_all(usage_text(argv0).as_bytes());
                return EXIT_ERROR;
            }
            continue;
        }
        // A Go-style boolean `-json=true` / `-json=false`: argh's switch
        // takes no value.
        if name == "json" || name == "zk" {
            match value.as_deref() {
                None | Some("true") | Some("1") => own.push(format!("--{name}")),
                Some("false") | Some("0") => {}
                Some(other) => {
                    let _ = writeln!(io.stderr, "bench: bad -{name} value {other:?}");
                    return EXIT_ERROR;
                }
            }
            continue;
        }
        own.push(bench::argh_spelling(name));
        own.extend(value);
    }

    let parsed = bench::BenchArgs::parse_args(&format!("{argv0} bench"), &own)
        .and_then(|args| Ok((args.config()?, args.json)));
    let (cfg, json) = match parsed {
        Ok(parsed) => parsed,
        Err(text) => {
            let _ = io.stderr.write_all(text.as_bytes());
            if !text.ends_with('\n') {
                let _ = io.stderr.write_all(b"\n");
            }
            let _ = writeln!(io.stderr, "Run '{argv0} help bench' for the options.");
            return EXIT_ERROR;
        }
    };

    /// What the bench drives.
    enum Target {
        Doozer(Uri, Option<Uri>),
        ZooKeeper(String),
    }
    let target = match cfg.protocol {
        bench::Protocol::Doozer => match g.uris() {
            Ok((uri, boot)) => Target::Doozer(uri, boot),
            Err(e) => {
                let _ = writeln!(io.stderr, "Error: {e}");
                return EXIT_ERROR;
            }
        },
        bench::Protocol::ZooKeeper => match bench::zk_addr(&g.uri) {
            Ok(addr) => {
                let _ = writeln!(
                    io.stderr,
                    "bench: creating {} znodes under {} on {addr}",
                    cfg.keys, cfg.prefix
                );
                Target::ZooKeeper(addr)
            }
            Err(text) => {
                let _ = writeln!(io.stderr, "{text}");
                return EXIT_ERROR;
            }
        },
    };
    if cfg.fill {
        let _ = writeln!(io.stderr, "bench: writing {} keys", cfg.keys);
    }
    let stderr = &mut *io.stderr;
    let progress = |p: &bench::Progress| {
        let _ = writeln!(stderr, "{}", p.render());
    };
    let report = match target {
        Target::Doozer(uri, boot) => bench::run(&uri, boot.as_ref(), &cfg, progress),
        Target::ZooKeeper(addr) => bench::run_zk(&addr, &cfg, progress),
    };
    match report {
        Ok(report) => {
            if let Some(e) = &report.first_error {
                let _ = writeln!(io.stderr, "bench: first error: {e}");
            }
            let out = if json {
                report.json(&cfg)
            } else {
                report.render(&cfg)
            };
            let _ = write_out(io, out.as_bytes());
            if report.ops == 0 && report.errors > 0 {
                EXIT_ERROR
            } else {
                0
            }
        }
        Err(e) => {
            let _ = writeln!(io.stderr, "Error: {e}");
            if e.is_rev_mismatch() {
                EXIT_REV_MISMATCH
            } else {
                EXIT_ERROR
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the command with no server behind it (127.0.0.1:1 refuses).
    fn run_args(args: &[&str], env: &Env, stdin: &[u8]) -> (i32, String, String) {
        let argv: Vec<String> = std::iter::once("doozer")
            .chain(args.iter().copied())
            .map(String::from)
            .collect();
        let mut stdin = stdin;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut io = Io {
            stdin: &mut stdin,
            stdout: &mut out,
            stderr: &mut err,
        };
        let status = run(&argv, env, &mut io);
        (
            status,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    fn run_plain(args: &[&str]) -> (i32, String, String) {
        run_args(args, &Env::default(), b"")
    }

    const USAGE: &str = r#"Use: doozer [options] <command> [options] [args]

Options may come before the command or right after it. Exit status: 0 on
success, 1 on a rev mismatch, 2 on any other error, 127 on bad usage.

Global Options:
  -a="doozer:?ca=127.0.0.1:8046": the cluster to talk to
  -b="": the DzNS that finds a cluster named by cn=
  -h=false: print this help
  -r=-1: revision for find, wait and watch (-1: the current one)
  -t=0: how long wait may block (0: no limit)
  -tls-ca="": speak TLS, trusting the CA certificate(s) in this PEM file
  -v=false: print the version

Environment:

  DOOZER_URI - the cluster to talk to, unless -a is given.

  DOOZER_BOOT_URI - the DzNS, unless -b is given.

  DOOZER_TLS_CA - the CA file for -tls-ca, unless it is given.

Commands:
  add <path>       - create a file that must not exist yet
  bench            - generate load and measure latency
  del <path> <rev> - remove a file
  find <path>      - list a tree
  get <path>       - print a file's body
  help <command>   - explain one command
  members          - list the cluster's members and slaves
  nop              - commit an empty change
  rev              - print the current revision
  self             - print the server's node id
  set <path> <rev> - write a file
  snapshot <op> <file> - save, check or restore a backup
  stat <path>      - print a file's revision and length
  touch <path>     - rewrite a file unchanged
  wait <glob>      - print the next change
  watch <glob>     - print every change
"#;

    #[test]
    fn usage_layout_is_stable() {
        assert_eq!(usage_text("doozer"), USAGE);
        let names: Vec<&str> = COMMANDS.iter().map(|c| c.name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }

    #[test]
    fn missing_and_unknown_commands() {
        assert_eq!(
            run_plain(&[]),
            (
                127,
                String::new(),
                format!("doozer: missing command\n{USAGE}")
            )
        );
        assert_eq!(
            run_plain(&["-r", "3"]),
            (
                127,
                String::new(),
                format!("doozer: missing command\n{USAGE}")
            )
        );
        assert_eq!(
            run_plain(&["frob"]),
            (
                127,
                String::new(),
                format!("Unknown command: frob\n{USAGE}")
            )
        );
    }

    #[test]
    fn help_and_version() {
        assert_eq!(run_plain(&["-h"]), (0, String::new(), USAGE.to_string()));
        assert_eq!(
            run_plain(&["-v"]),
            (0, "doozer 0.9.0\n".into(), String::new())
        );
        assert_eq!(
            run_plain(&["-v", "get", "/x"]),
            (0, "doozer 0.9.0\n".into(), String::new())
        );
        // -h after the command: that command's help on stdout.
        let (status, out, err) = run_plain(&["get", "-h"]);
        assert_eq!((status, err.as_str()), (0, ""));
        assert_eq!(
            out,
            format!(
                "Use: doozer [options] get [options] <path>\n\n{}",
                command("get").unwrap().help
            )
        );
        let (_, out, _) = run_plain(&["help", "nop"]);
        assert_eq!(
            out,
            format!(
                "Use: doozer [options] nop [options] \n\n{}",
                command("nop").unwrap().help
            )
        );
        let (status, out, _) = run_plain(&["help", "nosuch"]);
        assert_eq!(
            (status, out.as_str()),
            (0, "Use: doozer [options] nosuch [options] \n\n")
        );
        let (_, out, _) = run_plain(&["help", "wait"]);
        assert_eq!(out, format!("Use: doozer [options] wait [options] <glob>\n\n{WAIT_HELP_HEAD}{GLOB_RULES}{WAIT_HELP_TAIL}"));
        let (_, out, _) = run_plain(&["help", "watch"]);
        assert_eq!(out, format!("Use: doozer [options] watch [options] <glob>\n\n{WATCH_HELP_HEAD}{GLOB_RULES}{WATCH_HELP_TAIL}"));
    }

    #[test]
    fn wrong_number_of_arguments() {
        let (status, out, err) = run_plain(&["set", "/x"]);
        assert_eq!(status, 127);
        assert_eq!(err, "set: wrong number of arguments\n");
        assert!(out.starts_with(
            "Use: doozer [options] set [options] <path> <rev>\n\nWrites standard input"
        ));
        let (status, out, err) = run_plain(&["rev", "extra"]);
        assert_eq!(
            (status, err.as_str()),
            (127, "rev: wrong number of arguments\n")
        );
        assert_eq!(
            out,
            format!(
                "Use: doozer [options] rev [options] \n\n{}",
                command("rev").unwrap().help
            )
            .as_str()
        );
        // Go's flag parsing stops at the first argument: "/x 0 -a u" is three.
        let (status, _, err) = run_plain(&["set", "/x", "0", "-a", "u"]);
        assert_eq!(
            (status, err.as_str()),
            (127, "set: wrong number of arguments\n")
        );
    }

    #[test]
    fn flag_errors() {
        let (status, out, err) = run_plain(&["-x", "get", "/a"]);
        assert_eq!((status, out.as_str()), (2, ""));
        assert_eq!(
            err,
            format!(
                "flag provided but not defined: -x\nUsage of doozer:\n{}",
                flag_defaults()
            )
        );
        // After the command the original's own usage is installed.
        let (status, _, err) = run_plain(&["get", "-x", "/a"]);
        assert_eq!(status, 2);
        assert_eq!(err, format!("flag provided but not defined: -x\n{USAGE}"));
        let (status, _, err) = run_plain(&["-r", "x", "wait", "/a"]);
        assert_eq!(status, 2);
        assert!(err.starts_with("invalid value \"x\" for flag -r: strconv.ParseInt: parsing \"x\": invalid syntax\nUsage of doozer:\n"));
        let (status, _, err) = run_plain(&["wait", "-t", "5", "/a"]);
        assert_eq!(status, 2);
        assert!(err.starts_with(
            "invalid value \"5\" for flag -t: time: missing unit in duration 5\nUse: doozer"
        ));
        let (status, _, err) = run_plain(&["-help"]);
        assert_eq!((status, err), (2, default_usage_text("doozer")));
    }

    #[test]
    fn bad_arguments_and_dial_errors() {
        let env = Env {
            uri: Some("doozer:?ca=127.0.0.1:1".into()),
            boot_uri: None,
            tls_ca: None,
        };
        // The rev argument is checked before dialling.
        let (status, _, err) = run_args(&["set", "/x", "abc"], &env, b"");
        assert_eq!(
            (status, err.as_str()),
            (
                2,
                "Error: strconv.ParseInt: parsing \"abc\": invalid syntax\n"
            )
        );
        let (status, _, err) = run_args(&["del", "/x", "0x1"], &env, b"");
        assert_eq!(
            (status, err.as_str()),
            (
                2,
                "Error: strconv.ParseInt: parsing \"0x1\": invalid syntax\n"
            )
        );
        let (status, _, err) = run_args(&["get", "/x"], &env, b"");
        assert_eq!(
            (status, err.as_str()),
            (2, "Error: dial tcp 127.0.0.1:1: connection refused\n")
        );
        // -a beats DOOZER_URI, before or after the command.
        let (status, _, err) = run_args(&["-a", "bogus", "rev"], &env, b"");
        assert_eq!((status, err.as_str()), (2, "Error: invalid uri\n"));
        let (status, _, err) = run_args(&["rev", "-a", "doozer:?sk=%zz"], &env, b"");
        assert_eq!(
            (status, err.as_str()),
            (2, "Error: invalid URL escape \"%zz\"\n")
        );
        let (status, _, err) = run_args(&["nop", "--a=doozer:?cn=x"], &env, b"");
        assert_eq!((status, err.as_str()), (2, "Error: invalid uri\n"));
    }

    #[test]
    fn tls_ca_applies_to_uris_without_their_own() {
        let mut g = Globals::from_env(&Env {
            uri: Some("doozer:?ca=a:1&cn=x".into()),
            boot_uri: Some("doozer:?ca=b:1&tlsca=boot.pem".into()),
            tls_ca: Some("env.pem".into()),
        });
        let (uri, boot) = g.uris().unwrap();
        assert_eq!(uri.tls_ca.as_deref(), Some("env.pem"));
        assert_eq!(boot.unwrap().tls_ca.as_deref(), Some("boot.pem"));
        let args: Vec<String> = ["-tls-ca", "flag.pem", "rev"].map(String::from).to_vec();
        assert_eq!(g.parse(&args).unwrap(), ["rev"]);
        assert_eq!(g.uris().unwrap().0.tls_ca.as_deref(), Some("flag.pem"));
        let plain = Globals::from_env(&Env::default());
        assert_eq!(plain.uris().unwrap().0.tls_ca, None);
    }

    #[test]
    fn globals_precedence() {
        let env = Env {
            uri: Some("doozer:?ca=env:1".into()),
            boot_uri: Some("doozer:?ca=boot:1".into()),
            tls_ca: None,
        };
        let mut g = Globals::from_env(&env);
        assert_eq!(
            (g.uri.as_str(), g.boot_uri.as_str()),
            ("doozer:?ca=env:1", "doozer:?ca=boot:1")
        );
        let args: Vec<String> = [
            "-a",
            "doozer:?ca=flag:1",
            "-r=0x10",
            "-t",
            "1m30s",
            "find",
            "/",
        ]
        .map(String::from)
        .to_vec();
        let rest = g.parse(&args).unwrap();
        assert_eq!(rest, ["find", "/"]);
        assert_eq!((g.uri.as_str(), g.rev), ("doozer:?ca=flag:1", 16));
        assert_eq!(g.timeout(), Some(Duration::from_secs(90)));
        let g = Globals::from_env(&Env {
            uri: Some(String::new()),
            boot_uri: None,
            tls_ca: None,
        });
        assert_eq!(g.uri, DEFAULT_URI);
    }

    #[test]
    fn record_and_stat_formats() {
        let ev = |path: &str, rev, body: &[u8], flags| Event {
            rev,
            path: path.into(),
            body: body.to_vec(),
            flags,
        };
        assert_eq!(
            format_record(&ev("/a/b", 7, b"hello", 4)),
            b"/a/b 7 set 5\nhello\n"
        );
        assert_eq!(format_record(&ev("/a", 8, b"", 8)), b"/a 8 del 0\n\n");
        assert_eq!(format_record(&ev("/", 123, b"", 0)), b"/ 123  0\n\n");
        assert_eq!(
            format_record(&ev("/x", 9, b"a\nb", 4)),
            b"/x 9 set 3\na\nb\n"
        );
        assert_eq!(format_stat(5, 12).as_deref(), Some("12 5\n"));
        assert_eq!(format_stat(3, -2).as_deref(), Some("d 3\n"));
        assert_eq!(format_stat(0, 0), None);
    }

    #[test]
    fn bench_flag_errors() {
        let (status, out, _) = run_plain(&["bench", "-h"]);
        assert_eq!(status, 0);
        assert!(out.starts_with("Use: doozer [options] bench [options] \n\n"));
        let (status, _, err) = run_plain(&["bench", "-size", "abc"]);
        assert_eq!(status, 2);
        assert!(err.contains("size"), "{err}");
        let (status, _, err) = run_plain(&["bench", "-op", "frob"]);
        assert_eq!(status, 2);
        assert!(err.contains("frob"), "{err}");
        let (status, _, err) = run_plain(&["bench", "-a", "nope", "-d", "1"]);
        assert_eq!((status, err.as_str()), (2, "Error: invalid uri\n"));
        // -zk takes -a as HOST:PORT, not a doozer URI.
        let (status, _, err) = run_plain(&["bench", "-zk", "-a", "doozer:?ca=10.0.0.1"]);
        assert_eq!(status, 2);
        assert!(err.contains("-zk wants -a HOST:PORT"), "{err}");
        let (status, _, err) = run_plain(&["bench", "-zk=maybe"]);
        assert_eq!(
            (status, err.as_str()),
            (2, "bench: bad -zk value \"maybe\"\n")
        );
        // Nothing listens on port 1: the run fails to dial, after the
        // announcement of the creates.
        let (status, _, err) = run_plain(&["bench", "-zk=true", "-a", "127.0.0.1:1", "-d", "0.1"]);
        assert_eq!(status, 2);
        assert!(
            err.starts_with("bench: creating 1000 znodes under /bench on 127.0.0.1:1\n"),
            "{err}"
        );
        assert!(
            err.contains("Error: dial tcp 127.0.0.1:1: connection refused"),
            "{err}"
        );
    }
}
