//! One client connection's protocol state, without the socket: access rights,
//! tags in flight, and the checks that turn a loose protobuf `Request` into a
//! typed [`Command`] or an immediate error.
//!
//! Kept pure so every check of reference §2.6 and CONTRACT.md §3 is unit-tested
//! without a network, and so the connection task stays a thin byte pump.

use std::collections::BTreeSet;

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

/// Limits a session enforces.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    pub max_in_flight: usize,
    pub max_value_bytes: usize,
}

/// What to do with one request.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Answer at once, without the core.
    Reply(Response),
    /// Hand to the core; the connection owes an answer for `tag`.
    Submit { tag: Option<i32>, command: Command },
}

#[derive(Debug)]
pub struct Session {
    secrets: Secrets,
    rights: Rights,
    node_id: NodeId,
    limits: SessionLimits,
    tags_in_flight: BTreeSet<i32>,
    in_flight: usize,
}

impl Session {
    pub fn new(secrets: Secrets, node_id: NodeId, limits: SessionLimits) -> Session {
        let rights = secrets.anonymous();
        Session {
            secrets,
            rights,
            node_id,
            limits,
            tags_in_flight: BTreeSet::new(),
            in_flight: 0,
        }
    }

    /// Requests handed to the core and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The core answered the request submitted with `tag`.
    pub fn completed(&mut self, tag: Option<i32>) {
        if let Some(tag) = tag {
            self.tags_in_flight.remove(&tag);
        }
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Checks one request. `writable` is whether this node accepts writes now
    /// (checked per request, not per connection as the original did).
    pub fn on_request(&mut self, req: Request, writable: bool) -> Action {
        let tag = req.tag;
        match self.check(req, writable) {
            Ok(Checked::Submit(command)) => {
                if let Some(tag) = tag {
                    self.tags_in_flight.insert(tag);
                }
                self.in_flight += 1;
                Action::Submit { tag, command }
            }
            Ok(Checked::Answer(mut response)) => {
                response.tag = tag;
                Action::Reply(response)
            }
            Err(err) => Action::Reply(Response::error(tag, &err)),
        }
    }

    fn check(&mut self, req: Request, writable: bool) -> Result<Checked, ReplyError> {
        let verb = req.verb.and_then(|v| Verb::try_from(v).ok());
        let Some(verb) = verb else {
            return Err(ErrCode::UnknownVerb.into());
        };
        if req
            .tag
            .is_some_and(|tag| self.tags_in_flight.contains(&tag))
        {
            return Err(ErrCode::TagInUse.into());
        }
        if self.in_flight >= self.limits.max_in_flight {
            return Err(ReplyError::other("too many requests in flight"));
        }
        self.check_permission(verb)?;
        let command = match verb {
            Verb::Access => {
                let secret = req.value.unwrap_or_default();
                let granted = self
                    .secrets
                    .grant(&secret)
                    .ok_or_else(ReplyError::permission_denied)?;
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
            | Verb::SelfId => self.rights.read,
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

#[cfg(test)]
mod tests;
