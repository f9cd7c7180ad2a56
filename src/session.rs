//! One client connection's protocol state, without the socket: access rights,
//! tags in flight, and the checks that turn a loose protobuf `Request` into a
//! typed [`Command`] or an immediate error.
//!
//! Kept pure so every check of reference §2.6 and CONTRACT.md §3 is unit-tested
//! without a network, and so the connection task stays a thin byte pump.
//!
//! A session also bounds what its client can make the server hold: requests
//! in flight are counted in items and in bytes (a WAIT holds its glob in the
//! core until it fires, so one connection filing WAITs with megabyte globs
//! must hit a byte bound long before it hits an item bound), and a shared
//! [`ByteBudget`] bounds the bytes of all connections together. Guessing
//! secrets is bounded too: a few wrong `ACCESS` attempts end the connection.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::task::Waker;

use crate::budget::ByteBudget;
use crate::codec::client::{Request, Response, Verb};
use crate::core::Command;
use crate::error::{ErrCode, ReplyError};
use crate::store::Glob;
use crate::types::{Body, NodeId, Path, RevCheck};

/// The secrets a server was started with (`DOOZER_RWSECRET`,
/// `DOOZER_ROSECRET`); empty means unset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Secrets {
    pub read_write: String,
    pub read_only: String,
}

/// What a connection may do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rights {
    pub read: bool,
    pub write: bool,
}

impl Secrets {
    pub fn any_set(&self) -> bool {
        !self.read_write.is_empty() || !self.read_only.is_empty()
    }

    /// Rights before any ACCESS: everything when no secret is set, nothing
    /// otherwise (CONTRACT.md §3 closes the original's holes).
    pub fn anonymous(&self) -> Rights {
        let open = !self.any_set();
        Rights {
            read: open,
            write: open,
        }
    }

    /// The rights a secret grants, or `None` when it matches no secret. With
    /// no secret set only the empty secret matches, as in the original, so a
    /// client that sends a secret to an open server hears that it is wrong.
    pub fn grant(&self, secret: &[u8]) -> Option<Rights> {
        if !self.any_set() {
            return secret.is_empty().then(|| self.anonymous());
        }
        if !self.read_write.is_empty() && same_secret(secret, self.read_write.as_bytes()) {
            return Some(Rights {
                read: true,
                write: true,
            });
        }
        if !self.read_only.is_empty() && same_secret(secret, self.read_only.as_bytes()) {
            return Some(Rights {
                read: true,
                write: false,
            });
        }
        None
    }
}

/// Compares without an early exit, so the time taken does not tell how much
/// of a guess was right.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Limits a session enforces (see [`crate::config::Limits`] for each
/// default and why).
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// Requests handed to the core and not answered yet (WAITs included);
    /// past it: `OTHER: too many requests in flight`.
    pub max_in_flight: usize,
    /// Bytes those requests are charged ([`request_cost`]); past it:
    /// `OTHER: too many bytes in flight`. One request alone always goes
    /// through, whatever its size (the frame limit bounds it).
    pub max_in_flight_bytes: usize,
    pub max_value_bytes: usize,
    /// Wrong `ACCESS` attempts before the connection is closed.
    pub max_access_failures: u32,
}

/// Bytes charged for any request held in the core, on top of its path and
/// value: the command, its tag, the core's bookkeeping for it.
pub const REQUEST_OVERHEAD_BYTES: usize = 256;

/// A glob held by a WAIT (or compiled for a WALK) costs its text and its
/// compiled form: up to about nine bytes per pattern byte for a long pattern
/// of many distinct characters (see `Glob::heap_bytes`); ten times the
/// pattern's length bounds what it makes the core hold.
pub const GLOB_BYTES_FACTOR: usize = 10;

/// What a request is charged while the core holds it: an upper bound on the
/// memory it makes the server keep (its glob for as long as a WAIT waits).
/// Computed from the raw request, before anything is parsed or compiled.
pub fn request_cost(req: &Request) -> usize {
    let path = req.path.as_ref().map_or(0, String::len);
    let value = req.value.as_ref().map_or(0, Vec::len);
    let globbed = matches!(
        req.verb.and_then(|v| Verb::try_from(v).ok()),
        Some(Verb::Wait | Verb::Walk)
    );
    let path = if globbed {
        path.saturating_mul(GLOB_BYTES_FACTOR)
    } else {
        path
    };
    REQUEST_OVERHEAD_BYTES
        .saturating_add(path)
        .saturating_add(value)
}

/// What to do with one request.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Answer at once, without the core.
    Reply(Response),
    /// Hand to the core; the connection owes an answer for `tag`. `bytes` is
    /// what the request was charged ([`request_cost`]), for the inbox's own
    /// byte budget.
    Submit {
        tag: Option<i32>,
        command: Command,
        bytes: usize,
    },
    /// Send `reply`, then close the connection: the client guessed at the
    /// secret once too often. `reason` is for the log.
    Close { reply: Response, reason: String },
}

#[derive(Debug)]
pub struct Session {
    secrets: Secrets,
    rights: Rights,
    node_id: NodeId,
    limits: SessionLimits,
    /// Tags in flight and what each was charged.
    tags_in_flight: BTreeMap<i32, usize>,
    /// Untagged requests in flight, as a multiset of charges (charge →
    /// count). Their answers carry no tag to say which one finished, so a
    /// completion gives back the smallest charge: the sum kept here never
    /// falls below what is really held.
    untagged: BTreeMap<usize, usize>,
    in_flight: usize,
    in_flight_bytes: usize,
    /// Tagged WAITs in flight: they may be held for ever, so no room is
    /// waited for on their account.
    held_waits: BTreeSet<i32>,
    /// Of `in_flight`, the WAITs and untagged requests (untagged: their
    /// answers cannot be told apart, so none is counted on to make room).
    held: usize,
    /// The reader waiting for room ([`Session::must_wait`]), woken by the
    /// next completion.
    room_waker: Option<Waker>,
    /// Shared by every connection of the server, if set: the bytes all
    /// clients have in flight together.
    shared: Option<Arc<ByteBudget>>,
    access_failures: u32,
}

impl Session {
    pub fn new(secrets: Secrets, node_id: NodeId, limits: SessionLimits) -> Session {
        let rights = secrets.anonymous();
        Session {
            secrets,
            rights,
            node_id,
            limits,
            tags_in_flight: BTreeMap::new(),
            untagged: BTreeMap::new(),
            in_flight: 0,
            held_waits: BTreeSet::new(),
            held: 0,
            room_waker: None,
            in_flight_bytes: 0,
            shared: None,
            access_failures: 0,
        }
    }

    /// Also charges every request to `shared`, the budget of all
    /// connections together; a request it refuses gets `OTHER: busy`.
    pub fn with_shared_budget(mut self, shared: Arc<ByteBudget>) -> Session {
        self.shared = Some(shared);
        self
    }

    /// Requests handed to the core and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Bytes those requests were charged.
    pub fn in_flight_bytes(&self) -> usize {
        self.in_flight_bytes
    }

    /// Whether `req` should wait before it is checked: it would go past a
    /// limit on requests or bytes in flight, and requests in flight that
    /// are answered on their own (not WAITs) will make room. A pipelining
    /// client is then slowed down (its connection is not read meanwhile)
    /// rather than refused; one whose room is all held by WAITs is refused
    /// at once, as before.
    pub fn must_wait(&self, req: &Request) -> bool {
        let answered_here = matches!(
            req.verb.and_then(|v| Verb::try_from(v).ok()),
            Some(Verb::Access | Verb::SelfId) | None
        );
        if answered_here {
            return false;
        }
        let over_count = self.in_flight >= self.limits.max_in_flight;
        let over_bytes = self.in_flight_bytes > 0
            && self.in_flight_bytes.saturating_add(request_cost(req))
                > self.limits.max_in_flight_bytes;
        (over_count || over_bytes) && self.in_flight > self.held
    }

    /// Wakes `waker` at the next completion (replacing any waker before).
    pub fn wake_on_completion(&mut self, waker: &Waker) {
        self.room_waker = Some(waker.clone());
    }

    /// Wrong `ACCESS` attempts so far.
    pub fn access_failures(&self) -> u32 {
        self.access_failures
    }

    /// Whether the connection holds any right: with secrets set, whether it
    /// has passed `ACCESS`.
    pub fn has_rights(&self) -> bool {
        self.rights.read || self.rights.write
    }

    /// The core answered the request submitted with `tag`.
    pub fn completed(&mut self, tag: Option<i32>) {
        let bytes = match tag {
            Some(tag) => self.tags_in_flight.remove(&tag),
            None => self.untagged.first_entry().map(|mut smallest| {
                let bytes = *smallest.key();
                *smallest.get_mut() -= 1;
                if *smallest.get() == 0 {
                    smallest.remove();
                }
                bytes
            }),
        };
        let Some(bytes) = bytes else {
            // Nothing of that tag in flight: nothing to give back.
            return;
        };
        if tag.is_none_or(|tag| self.held_waits.remove(&tag)) {
            self.held -= 1;
        }
        self.in_flight -= 1;
        self.in_flight_bytes -= bytes;
        if let Some(waker) = self.room_waker.take() {
            waker.wake();
        }
        if let Some(shared) = &self.shared {
            shared.release(bytes);
        }
    }

    /// Checks one request. `writable` is whether this node accepts writes now
    /// (checked per request, not per connection as the original did).
    pub fn on_request(&mut self, req: Request, writable: bool) -> Action {
        let tag = req.tag;
        let bytes = request_cost(&req);
        match self.check(req, writable, bytes) {
            Ok(Checked::Submit(command)) => {
                if let Some(shared) = &self.shared {
                    if !shared.try_reserve(bytes) {
                        return Action::Reply(Response::error(tag, &ReplyError::busy()));
                    }
                }
                let held = match tag {
                    Some(tag) => {
                        self.tags_in_flight.insert(tag, bytes);
                        let wait = matches!(command, Command::Wait { .. });
                        wait && self.held_waits.insert(tag)
                    }
                    None => {
                        *self.untagged.entry(bytes).or_default() += 1;
                        true
                    }
                };
                if held {
                    self.held += 1;
                }
                self.in_flight += 1;
                self.in_flight_bytes += bytes;
                Action::Submit {
                    tag,
                    command,
                    bytes,
                }
            }
            Ok(Checked::Answer(mut response)) => {
                response.tag = tag;
                Action::Reply(response)
            }
            Err(err) => {
                let reply = Response::error(tag, &err);
                if self.access_failures >= self.limits.max_access_failures {
                    Action::Close {
                        reply,
                        reason: format!("{} wrong ACCESS attempts", self.access_failures),
                    }
                } else {
                    Action::Reply(reply)
                }
            }
        }
    }

    fn check(&mut self, req: Request, writable: bool, bytes: usize) -> Result<Checked, ReplyError> {
        let verb = req.verb.and_then(|v| Verb::try_from(v).ok());
        let Some(verb) = verb else {
            return Err(ErrCode::UnknownVerb.into());
        };
        if req
            .tag
            .is_some_and(|tag| self.tags_in_flight.contains_key(&tag))
        {
            return Err(ErrCode::TagInUse.into());
        }
        if self.in_flight >= self.limits.max_in_flight {
            return Err(ReplyError::other("too many requests in flight"));
        }
        self.check_permission(verb)?;
        let answered_here = matches!(verb, Verb::Access | Verb::SelfId);
        if !answered_here
            && self.in_flight_bytes > 0
            && self.in_flight_bytes.saturating_add(bytes) > self.limits.max_in_flight_bytes
        {
            return Err(ReplyError::other("too many bytes in flight"));
        }
        let command = match verb {
            Verb::Access => {
                let secret = req.value.unwrap_or_default();
                let Some(granted) = self.secrets.grant(&secret) else {
                    self.access_failures += 1;
                    return Err(ReplyError::permission_denied());
                };
                self.rights.read |= granted.read;
                self.rights.write |= granted.write;
                return Ok(Checked::Answer(Response::default()));
            }
            Verb::SelfId => {
                return Ok(Checked::Answer(Response {
                    value: Some(self.node_id.as_str().as_bytes().to_vec()),
                    ..Response::default()
                }));
            }
            Verb::Rev => Command::Rev,
            Verb::Get => Command::Get {
                path: valid_path(req.path.as_deref())?,
                rev: req.rev,
            },
            Verb::Set | Verb::Del | Verb::Nop if !writable => return Err(ErrCode::Readonly.into()),
            Verb::Set => {
                let (path, check) = write_target(&req)?;
                let body = req.value.unwrap_or_default();
                if body.len() > self.limits.max_value_bytes {
                    return Err(ReplyError::value_too_large());
                }
                Command::Set {
                    path,
                    check,
                    body: Body::from(body),
                }
            }
            Verb::Del => {
                let (path, check) = write_target(&req)?;
                Command::Del { path, check }
            }
            Verb::Nop => Command::Nop,
            Verb::Wait => {
                let (Some(pattern), Some(rev)) = (req.path.as_deref(), req.rev) else {
                    return Err(ErrCode::MissingArg.into());
                };
                Command::Wait {
                    glob: glob(pattern)?,
                    rev,
                }
            }
            Verb::Walk => {
                let (Some(pattern), Some(offset)) = (req.path.as_deref(), req.offset) else {
                    return Err(ErrCode::MissingArg.into());
                };
                let glob = glob(pattern)?;
                if offset < 0 {
                    return Err(ErrCode::Range.into());
                }
                Command::Walk {
                    glob,
                    offset: offset.into(),
                    rev: req.rev,
                }
            }
            Verb::Getdir => {
                let (Some(path), Some(offset)) = (req.path.as_deref(), req.offset) else {
                    return Err(ErrCode::MissingArg.into());
                };
                Command::Getdir {
                    path: valid_path(Some(path))?,
                    offset: offset.into(),
                    rev: req.rev,
                }
            }
            Verb::Stat => Command::Stat {
                path: Path::parse(req.path.as_deref().unwrap_or("")).ok(),
                rev: req.rev,
            },
            Verb::Snapshot => Command::Snapshot { rev: req.rev },
        };
        Ok(Checked::Submit(command))
    }

    fn check_permission(&self, verb: Verb) -> Result<(), ReplyError> {
        let allowed = match verb {
            Verb::Access => true,
            Verb::Set | Verb::Del | Verb::Nop => self.rights.write,
            Verb::Get
            | Verb::Stat
            | Verb::Getdir
            | Verb::Wait
            | Verb::Walk
            | Verb::Rev
            | Verb::SelfId
            | Verb::Snapshot => self.rights.read,
        };
        if allowed {
            Ok(())
        } else {
            Err(ReplyError::permission_denied())
        }
    }
}

enum Checked {
    Submit(Command),
    Answer(Response),
}

/// GET and GETDIR: a missing path is MISSING_ARG, an invalid one BAD_PATH
/// (the original crashed or skipped the first character).
fn valid_path(path: Option<&str>) -> Result<Path, ReplyError> {
    let path = path.ok_or(ErrCode::MissingArg)?;
    Path::parse(path).map_err(|_| ErrCode::BadPath.into())
}

/// SET and DEL: both path and rev are required, then the path must be valid.
fn write_target(req: &Request) -> Result<(Path, RevCheck), ReplyError> {
    let (Some(path), Some(rev)) = (req.path.as_deref(), req.rev) else {
        return Err(ErrCode::MissingArg.into());
    };
    let path = Path::parse(path).map_err(|_| ReplyError::code(ErrCode::BadPath))?;
    Ok((path, RevCheck::from_wire(rev)))
}

fn glob(pattern: &str) -> Result<Glob, ReplyError> {
    Glob::parse(pattern).map_err(|err| ReplyError::other(err.to_string()))
}

impl Drop for Session {
    /// The connection is gone and the core forgets its requests: give their
    /// bytes back to the shared budget.
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.release(self.in_flight_bytes);
        }
    }
}

#[cfg(test)]
mod tests;
