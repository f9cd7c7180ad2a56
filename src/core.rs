//! The core: consensus, store and client sessions joined in one pure state
//! machine, driven by one thread.
//!
//! Every change of state goes through [`Core::handle`]: a typed input in,
//! outputs appended to a vector. The core never touches a socket, the clock
//! or an unseeded random generator, so a simulation can run many cores over a
//! fake network from one seed and replay any failure.
//!
//! Writes from clients become [`Decree`]s ordered by the Paxos engine; a lone
//! node is a quorum of one and takes the very same path. A write is answered
//! when the local store has applied its slot, so the writer reads its own write
//! on this node.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{ErrCode, ReplyError};
use crate::paxos::{self, Paxos, Slot};
use crate::store::{
    Entry, Event, EventKind, Glob, Mutation, ReadError, Snapshot, Store, WatchIndex,
};
use crate::types::{Body, NodeId, Path, Rev, RevCheck};

/// The version this server reports in `/ctl/node/<id>/version`, as the
/// original did (clients and operators compare it).
pub const NODE_VERSION: &str = "0.9.0-alpha";

/// One client connection, as numbered by the runtime.
pub type ConnId = u64;

/// A validated client request, as the core sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Get {
        path: Path,
        rev: Option<i64>,
    },
    Set {
        path: Path,
        check: RevCheck,
        body: Body,
    },
    Del {
        path: Path,
        check: RevCheck,
    },
    Nop,
    Rev,
    Wait {
        glob: Glob,
        rev: i64,
    },
    Walk {
        glob: Glob,
        offset: i64,
        rev: Option<i64>,
    },
    Getdir {
        path: Path,
        offset: i64,
        rev: Option<i64>,
    },
    /// `path` is `None` when the request's path fails the syntax check: the
    /// original answers such a STAT like an absent file.
    Stat {
        path: Option<Path>,
        rev: Option<i64>,
    },
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// Only the tag (DEL, NOP).
    Done,
    /// `rev` alone (SET, REV).
    Rev(Rev),
    /// GET: the file's rev (0 when absent) and body.
    Value { rev: Rev, body: Body },
    /// WAIT and WALK: one event or file.
    Event {
        path: Path,
        rev: Rev,
        body: Body,
        kind: EventKind,
    },
    /// GETDIR: one entry name.
    Name(String),
    /// STAT: length and rev (-2 for a directory, 0 for absent).
    Stat { len: i64, rev: i64 },
}

pub type Outcome = Result<Reply, ReplyError>;

/// What the core is fed.
#[derive(Clone, Debug)]
pub enum Input {
    Request {
        conn: ConnId,
        tag: Option<i32>,
        command: Command,
    },
    /// The connection is gone: forget its WAITs, parked reads and unanswered
    /// writes.
    ConnClosed { conn: ConnId },
    /// One unit of time (the runtime's tick interval).
    Tick,
    /// A message from another member.
    Peer {
        from: NodeId,
        msg: paxos::Msg<Decree>,
    },
}

/// What the core asks the runtime to do.
#[derive(Clone, Debug)]
pub enum Output {
    Reply {
        conn: ConnId,
        tag: Option<i32>,
        outcome: Outcome,
    },
    Peer {
        to: NodeId,
        msg: paxos::Msg<Decree>,
    },
}

/// The value of one consensus slot.
#[derive(Clone, Debug, PartialEq)]
pub enum Decree {
    /// A hole filled by a new leader.
    Fill,
    /// A mutation proposed by `origin`, which answers its client when it
    /// applies the slot.
    Write {
        origin: NodeId,
        seq: u64,
        mutation: Mutation,
    },
}

impl paxos::Value for Decree {
    fn nop() -> Self {
        Decree::Fill
    }
}

/// Who learns the result of a write proposed here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proposer {
    Client { conn: ConnId, tag: Option<i32> },
    Pulse,
    Bootstrap,
}

/// This node's identity, written under `/ctl/node/<id>`.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub id: NodeId,
    pub addr: String,
    pub hostname: String,
    pub cluster_name: String,
    /// Whether the seed lists itself under `/ctl/ns/<name>` in its own store
    /// (not when booted through a DzNS, which keeps that list instead).
    pub register_ns: bool,
}

/// The core's settings, in ticks and counts.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub history_revs: usize,
    pub pulse_ticks: u64,
    pub max_value_bytes: usize,
    /// Writes proposed here and not yet applied; past it, `OTHER busy`.
    pub max_pending_writes: usize,
    pub paxos: paxos::Settings,
    /// Seeds the election-timeout randomness.
    pub seed: u64,
}

/// A read waiting for the store to reach the rev it names.
#[derive(Clone, Debug)]
struct ParkedRead {
    conn: ConnId,
    tag: Option<i32>,
    command: Command,
}

/// Key of a registered WAIT: the connection first, so a closed connection's
/// waits are one range.
type WaitKey = (ConnId, u64);

pub struct Core {
    node: NodeInfo,
    config: CoreConfig,
    store: Store,
    paxos: Paxos<Decree>,
    writable: bool,
    next_seq: u64,
    pending_writes: BTreeMap<u64, Proposer>,
    waits: WatchIndex<WaitKey>,
    wait_tags: BTreeMap<WaitKey, Option<i32>>,
    next_wait: u64,
    parked_reads: BTreeMap<Rev, Vec<ParkedRead>>,
    ticks: u64,
    last_pulse_tick: u64,
    pulse_in_flight: bool,
}

impl Core {
    /// A node that founds a new cluster: the only member, leader at once, with
    /// its `/ctl` entries as the first slots.
    pub fn seed(node: NodeInfo, config: CoreConfig) -> Core {
        let voters = BTreeSet::from([node.id.clone()]);
        let paxos = Paxos::new(
            node.id.clone(),
            voters,
            1,
            config.paxos.clone(),
            config.seed,
        );
        let store = Store::new(config.history_revs);
        let mut core = Core {
            node,
            config,
            store,
            paxos,
            writable: true,
            next_seq: 0,
            pending_writes: BTreeMap::new(),
            waits: WatchIndex::new(),
            wait_tags: BTreeMap::new(),
            next_wait: 0,
            parked_reads: BTreeMap::new(),
            ticks: 0,
            last_pulse_tick: 0,
            pulse_in_flight: false,
        };
        let mut sent = Vec::new();
        core.paxos.campaign(&mut sent);
        debug_assert!(sent.is_empty(), "a lone seed has nobody to talk to");
        let mut out = Vec::new();
        for mutation in core.seed_mutations() {
            core.propose(Proposer::Bootstrap, mutation, &mut out);
        }
        core.end_batch(&mut out);
        debug_assert!(out.is_empty(), "a lone seed has nobody to talk to");
        core
    }

    fn seed_mutations(&self) -> Vec<Mutation> {
        let node = &self.node;
        let id = node.id.as_str();
        let mut files = vec![
            ("/ctl/name".to_string(), node.cluster_name.clone()),
            (format!("/ctl/node/{id}/addr"), node.addr.clone()),
            (format!("/ctl/node/{id}/hostname"), node.hostname.clone()),
            (format!("/ctl/node/{id}/version"), NODE_VERSION.to_string()),
            ("/ctl/cal/0".to_string(), id.to_string()),
        ];
        if node.register_ns {
            files.push((
                format!("/ctl/ns/{}/{id}", node.cluster_name),
                node.addr.clone(),
            ));
        }
        files.push((format!("/ctl/node/{id}/writable"), "true".to_string()));
        files
            .into_iter()
            .filter_map(|(path, body)| {
                // A cluster name that is not a valid path component cannot be
                // listed under /ctl/ns; the rest of the seed still works.
                let path = Path::parse(&path).ok()?;
                Some(Mutation::Set {
                    path,
                    check: RevCheck::NotOlderThan(0),
                    body: Body::from(body.into_bytes()),
                })
            })
            .collect()
    }

    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Registered WAITs, for the node's stats.
    pub fn waiting(&self) -> usize {
        self.wait_tags.len()
    }

    /// Handles one input; outputs are appended to `out`.
    pub fn handle(&mut self, input: Input, out: &mut Vec<Output>) {
        match input {
            Input::Request { conn, tag, command } => self.on_request(conn, tag, command, out),
            Input::ConnClosed { conn } => self.on_conn_closed(conn),
            Input::Tick => self.on_tick(out),
            Input::Peer { from, msg } => {
                let mut sent = Vec::new();
                self.paxos.handle(from, msg, &mut sent);
                push_peer(sent, out);
            }
        }
        self.apply_decided(out);
    }

    fn on_request(
        &mut self,
        conn: ConnId,
        tag: Option<i32>,
        command: Command,
        out: &mut Vec<Output>,
    ) {
        let reply = |outcome: Outcome, out: &mut Vec<Output>| {
            out.push(Output::Reply { conn, tag, outcome })
        };
        match command {
            Command::Set { path, check, body } => {
                if body.len() > self.config.max_value_bytes {
                    return reply(Err(ReplyError::value_too_large()), out);
                }
                self.submit_write(conn, tag, Mutation::Set { path, check, body }, out);
            }
            Command::Del { path, check } => {
                self.submit_write(conn, tag, Mutation::Del { path, check }, out)
            }
            Command::Nop => self.submit_write(conn, tag, Mutation::Nop, out),
            Command::Rev => reply(Ok(Reply::Rev(self.store.rev())), out),
            Command::Wait { glob, rev } => match self.store.first_match(&glob, Rev(rev.max(1))) {
                Ok(Some(event)) => reply(Ok(event_reply(&event)), out),
                Ok(None) => {
                    let key = (conn, self.next_wait);
                    self.next_wait += 1;
                    self.waits.insert(key, glob, Rev(rev.max(1)));
                    self.wait_tags.insert(key, tag);
                }
                Err(_) => reply(Err(ErrCode::TooLate.into()), out),
            },
            read => self.read(
                ParkedRead {
                    conn,
                    tag,
                    command: read,
                },
                out,
            ),
        }
    }

    fn submit_write(
        &mut self,
        conn: ConnId,
        tag: Option<i32>,
        mutation: Mutation,
        out: &mut Vec<Output>,
    ) {
        if !self.writable {
            let outcome = Err(ErrCode::Readonly.into());
            return out.push(Output::Reply { conn, tag, outcome });
        }
        if self.pending_writes.len() >= self.config.max_pending_writes {
            let outcome = Err(ReplyError::busy());
            return out.push(Output::Reply { conn, tag, outcome });
        }
        self.propose(Proposer::Client { conn, tag }, mutation, out);
    }

    fn propose(&mut self, proposer: Proposer, mutation: Mutation, out: &mut Vec<Output>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending_writes.insert(seq, proposer);
        let decree = Decree::Write {
            origin: self.node.id.clone(),
            seq,
            mutation,
        };
        if self.paxos.propose(decree).is_err() {
            // Only a lone seed exists so far, and it always leads; forwarding
            // to another leader comes with the cluster.
            self.pending_writes.remove(&seq);
            if let Proposer::Client { conn, tag } = proposer {
                let outcome = Err(ReplyError::other("no leader"));
                out.push(Output::Reply { conn, tag, outcome });
            }
        }
    }

    /// Ends a batch of inputs: sends what was proposed during it as one
    /// message, and applies whatever got decided.
    pub fn end_batch(&mut self, out: &mut Vec<Output>) {
        let mut sent = Vec::new();
        self.paxos.flush(&mut sent);
        push_peer(sent, out);
        self.apply_decided(out);
    }

    /// Answers a read now, or parks it until the store reaches its rev.
    fn read(&mut self, read: ParkedRead, out: &mut Vec<Output>) {
        let rev = match &read.command {
            Command::Get { rev, .. }
            | Command::Walk { rev, .. }
            | Command::Getdir { rev, .. }
            | Command::Stat { rev, .. } => *rev,
            _ => None,
        };
        let snapshot = match rev {
            None => Ok(self.store.current().clone()),
            Some(rev) => self.store.snapshot_at(Rev(rev.max(1))),
        };
        let outcome = match snapshot {
            Ok(snapshot) => answer_read(&snapshot, &read.command),
            Err(ReadError::TooLate) => Err(ErrCode::TooLate.into()),
            Err(ReadError::Future) => {
                let rev = Rev(rev.unwrap_or(0).max(1));
                self.parked_reads.entry(rev).or_default().push(read);
                return;
            }
        };
        out.push(Output::Reply {
            conn: read.conn,
            tag: read.tag,
            outcome,
        });
    }

    fn on_conn_closed(&mut self, conn: ConnId) {
        let keys: Vec<WaitKey> = self
            .wait_tags
            .range((conn, 0)..=(conn, u64::MAX))
            .map(|(key, _)| *key)
            .collect();
        for key in keys {
            self.waits.remove(&key);
            self.wait_tags.remove(&key);
        }
        for reads in self.parked_reads.values_mut() {
            reads.retain(|read| read.conn != conn);
        }
        self.parked_reads.retain(|_, reads| !reads.is_empty());
        // The writes still get decided (they may already be chosen), but
        // nobody is told.
        self.pending_writes.retain(
            |_, proposer| !matches!(proposer, Proposer::Client { conn: c, .. } if *c == conn),
        );
    }

    fn on_tick(&mut self, out: &mut Vec<Output>) {
        self.ticks += 1;
        let mut sent = Vec::new();
        self.paxos.tick(&mut sent);
        push_peer(sent, out);
        let pulse_due = self.ticks - self.last_pulse_tick >= self.config.pulse_ticks;
        if pulse_due && !self.pulse_in_flight && self.writable && self.paxos.is_leader() {
            self.last_pulse_tick = self.ticks;
            self.pulse_in_flight = true;
            let path = Path::parse(&format!("/ctl/node/{}/applied", self.node.id))
                .expect("node ids are valid names");
            let body = Body::from(self.store.rev().to_string().into_bytes());
            self.propose(
                Proposer::Pulse,
                Mutation::Set {
                    path,
                    check: RevCheck::Clobber,
                    body,
                },
                out,
            );
        }
    }

    /// Applies every slot the engine has decided, in order, and answers
    /// whoever waited for them.
    fn apply_decided(&mut self, out: &mut Vec<Output>) {
        let mut applied_any = false;
        while let Some((slot, decree)) = self.paxos.take_decided() {
            self.apply(slot, decree, out);
            applied_any = true;
        }
        if applied_any {
            self.paxos.compact_below(self.store.rev().0 + 1);
        }
    }

    fn apply(&mut self, slot: Slot, decree: Decree, out: &mut Vec<Output>) {
        assert_eq!(
            slot,
            self.store.rev().0 + 1,
            "slots are applied in order without gaps"
        );
        let (event, proposer) = match decree {
            Decree::Fill => (self.store.apply(&Mutation::Nop), None),
            Decree::Write {
                origin,
                seq,
                mutation,
            } => {
                let event = self.store.apply(&mutation);
                let proposer = if origin == self.node.id {
                    self.pending_writes.remove(&seq)
                } else {
                    None
                };
                (event, proposer)
            }
        };
        match proposer {
            Some(Proposer::Client { conn, tag }) => {
                let outcome = match (event.error, event.kind) {
                    (Some(err), _) => Err(err.code().into()),
                    (None, EventKind::Set) => Ok(Reply::Rev(event.rev)),
                    (None, _) => Ok(Reply::Done),
                };
                out.push(Output::Reply { conn, tag, outcome });
            }
            Some(Proposer::Pulse) => self.pulse_in_flight = false,
            Some(Proposer::Bootstrap) | None => {}
        }
        for key in self.waits.take_matches(&event) {
            if let Some(tag) = self.wait_tags.remove(&key) {
                out.push(Output::Reply {
                    conn: key.0,
                    tag,
                    outcome: Ok(event_reply(&event)),
                });
            }
        }
        let due: Vec<Rev> = self
            .parked_reads
            .range(..=event.rev)
            .map(|(rev, _)| *rev)
            .collect();
        for rev in due {
            for read in self.parked_reads.remove(&rev).unwrap_or_default() {
                self.read(read, out);
            }
        }
    }
}

fn push_peer(sent: Vec<(NodeId, paxos::Msg<Decree>)>, out: &mut Vec<Output>) {
    out.extend(sent.into_iter().map(|(to, msg)| Output::Peer { to, msg }));
}

fn event_reply(event: &Event) -> Reply {
    Reply::Event {
        path: event.path.clone(),
        rev: event.rev,
        body: event.body.clone(),
        kind: event.kind,
    }
}

/// Answers GET, STAT, GETDIR or WALK from one snapshot.
fn answer_read(snapshot: &Snapshot, command: &Command) -> Outcome {
    match command {
        Command::Get { path, .. } => match snapshot.entry(path) {
            Entry::Absent => Ok(Reply::Value {
                rev: Rev::ZERO,
                body: Body::from(Vec::new()),
            }),
            Entry::File { rev, body } => Ok(Reply::Value { rev, body }),
            Entry::Dir { .. } => Err(ErrCode::IsDir.into()),
        },
        Command::Stat { path, .. } => {
            let entry = path.as_ref().map_or(Entry::Absent, |p| snapshot.entry(p));
            Ok(match entry {
                Entry::Absent => Reply::Stat { len: 0, rev: 0 },
                Entry::File { rev, body } => Reply::Stat {
                    len: body.len() as i64,
                    rev: rev.0,
                },
                Entry::Dir { len } => Reply::Stat {
                    len: len as i64,
                    rev: crate::types::sentinel::DIR,
                },
            })
        }
        Command::Getdir { path, offset, .. } => snapshot
            .getdir(path, *offset)
            .map(Reply::Name)
            .map_err(ReplyError::code),
        Command::Walk { glob, offset, .. } => snapshot
            .walk(glob, *offset)
            .map(|(path, rev, body)| Reply::Event {
                path,
                rev,
                body,
                kind: EventKind::Set,
            })
            .map_err(ReplyError::code),
        other => unreachable!("{other:?} is not a read"),
    }
}

#[cfg(test)]
mod tests;
