//! `doozer members`: who is in the cluster, read from `/ctl` at one revision.
//!
//! [`collect`] reads `/ctl/cal/*`, `/ctl/node/*/{addr,applied}` and
//! `/ctl/leader` at a single rev; [`format_lines`] turns what it read into
//! the output lines, one per slot and then one per slave:
//!
//! ```text
//! <slot> <id> <addr> <role> <applied>
//! ```
//!
//! role is `leader`, `member`, `empty` (a free slot) or `slave`; an unknown
//! field is `-`, so every line has exactly five fields.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use futures::future::try_join_all;

use crate::client::{self, Client};
use crate::error::ErrCode;

use super::{block_on, dial, start_rev, write_out, Globals, Io, Outcome};

/// Everything `members` reads, at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `/ctl/cal/<slot>`: slot name → body (the member's id; empty = free).
    pub slots: Vec<(String, Vec<u8>)>,
    /// `/ctl/node/<id>`: id → the node's registration.
    pub nodes: BTreeMap<String, NodeInfo>,
    /// The body of `/ctl/leader`; `None` when the file is absent.
    pub leader: Option<Vec<u8>>,
}

/// What `/ctl/node/<id>` says about one node; `None` for an absent file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub addr: Option<Vec<u8>>,
    pub applied: Option<Vec<u8>>,
}

/// A field for the output: `-` when empty or unknown; otherwise the bytes as
/// UTF-8 (lossily), with whitespace and control characters escaped so a field
/// never splits a line or the fields of a line.
fn field(bytes: Option<&[u8]>) -> String {
    let Some(bytes) = bytes.filter(|b| !b.is_empty()) else {
        return "-".to_string();
    };
    let mut out = String::with_capacity(bytes.len());
    for ch in String::from_utf8_lossy(bytes).chars() {
        if ch.is_whitespace() || ch.is_control() {
            if ch.is_ascii() {
                out.push_str(&format!("\\x{:02x}", ch as u32));
            } else {
                out.extend(ch.escape_unicode());
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// Slot order: names made of digits first, numerically (without parsing, so
/// any length works), then every other name in byte order.
fn slot_order(a: &str, b: &str) -> Ordering {
    fn numeric(s: &str) -> Option<&str> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| {
            let t = s.trim_start_matches('0');
            if t.is_empty() {
                "0"
            } else {
                t
            }
        })
    }
    match (numeric(a), numeric(b)) {
        (Some(x), Some(y)) => x.len().cmp(&y.len()).then(x.cmp(y)).then(a.cmp(b)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// The output lines (without newlines): the slots, ordered by
/// [`slot_order`], then the registered nodes that hold no slot, by id.
pub fn format_lines(snap: &Snapshot) -> Vec<String> {
    let leader = snap
        .leader
        .as_deref()
        .map(|l| l.trim_ascii())
        .filter(|l| !l.is_empty());
    let mut slots: Vec<&(String, Vec<u8>)> = snap.slots.iter().collect();
    slots.sort_by(|a, b| slot_order(&a.0, &b.0));

    let mut lines = Vec::with_capacity(slots.len() + snap.nodes.len());
    let mut in_slot: BTreeSet<&[u8]> = BTreeSet::new();
    for (slot, id) in slots {
        if id.is_empty() {
            lines.push(format!("{} - - empty -", field(Some(slot.as_bytes()))));
            continue;
        }
        in_slot.insert(id);
        let node = std::str::from_utf8(id)
            .ok()
            .and_then(|id| snap.nodes.get(id));
        let role = if leader == Some(id.as_slice()) {
            "leader"
        } else {
            "member"
        };
        lines.push(format!(
            "{} {} {} {role} {}",
            field(Some(slot.as_bytes())),
            field(Some(id)),
            field(node.and_then(|n| n.addr.as_deref())),
            field(node.and_then(|n| n.applied.as_deref())),
        ));
    }
    for (id, node) in &snap.nodes {
        if in_slot.contains(id.as_bytes()) {
            continue;
        }
        lines.push(format!(
            "- {} {} slave {}",
            field(Some(id.as_bytes())),
            field(node.addr.as_deref()),
            field(node.applied.as_deref()),
        ));
    }
    lines
}

/// Whether an error means "nothing there" for the odd shapes `/ctl` may take
/// (a missing directory, a file where a directory was expected or the other
/// way round).
fn is_absent(e: &client::Error) -> bool {
    matches!(
        e.code(),
        Some(ErrCode::NoEnt | ErrCode::NotDir | ErrCode::IsDir)
    )
}

/// The names in directory `path` at `rev`; none when it is absent.
async fn names(c: &Client, path: &str, rev: i64) -> Result<Vec<String>, client::Error> {
    match c.getdir_all(path, rev).await {
        Err(e) if is_absent(&e) => Ok(Vec::new()),
        other => other,
    }
}

/// The body of file `path` at `rev`, or `None` when there is no such file.
async fn body(c: &Client, path: String, rev: i64) -> Result<Option<Vec<u8>>, client::Error> {
    match c.get(&path, Some(rev)).await {
        Ok((_, 0)) => Ok(None),
        Ok((body, _)) => Ok(Some(body)),
        Err(e) if is_absent(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads `/ctl/cal`, `/ctl/node` and `/ctl/leader` at `rev`. A slot that is
/// a directory is left out. Requests go out pipelined.
pub async fn collect(c: &Client, rev: i64) -> Result<Snapshot, client::Error> {
    let slot_names = names(c, "/ctl/cal", rev).await?;
    let slot_bodies = try_join_all(
        slot_names
            .iter()
            .map(|slot| body(c, format!("/ctl/cal/{slot}"), rev)),
    )
    .await?;
    let slots = slot_names
        .into_iter()
        .zip(slot_bodies)
        .filter_map(|(slot, body)| body.map(|b| (slot, b)))
        .collect();

    let ids = names(c, "/ctl/node", rev).await?;
    let infos = try_join_all(ids.iter().map(|id| async move {
        let addr = body(c, format!("/ctl/node/{id}/addr"), rev).await?;
        let applied = body(c, format!("/ctl/node/{id}/applied"), rev).await?;
        Ok::<_, client::Error>(NodeInfo { addr, applied })
    }))
    .await?;
    let nodes = ids.into_iter().zip(infos).collect();

    let leader = body(c, "/ctl/leader".to_string(), rev).await?;
    Ok(Snapshot {
        slots,
        nodes,
        leader,
    })
}

/// `doozer members`.
pub(super) fn members(g: &Globals, io: &mut Io<'_>) -> Outcome {
    let c = dial(g)?;
    let rev = start_rev(g, &c)?;
    let snap = block_on(collect(&c, rev))?;
    let mut out = String::new();
    for line in format_lines(&snap) {
        out.push_str(&line);
        out.push('\n');
    }
    write_out(io, out.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(addr: &str, applied: Option<&str>) -> NodeInfo {
        NodeInfo {
            addr: Some(addr.as_bytes().to_vec()),
            applied: applied.map(|a| a.as_bytes().to_vec()),
        }
    }

    fn snap(slots: &[(&str, &str)], nodes: &[(&str, NodeInfo)], leader: Option<&str>) -> Snapshot {
        Snapshot {
            slots: slots
                .iter()
                .map(|(s, id)| (s.to_string(), id.as_bytes().to_vec()))
                .collect(),
            nodes: nodes
                .iter()
                .map(|(id, n)| (id.to_string(), n.clone()))
                .collect(),
            leader: leader.map(|l| l.as_bytes().to_vec()),
        }
    }

    #[test]
    fn one_seed_is_the_leader() {
        let s = snap(
            &[("0", "AAAA")],
            &[("AAAA", node("127.0.0.1:8046", Some("42")))],
            Some("AAAA"),
        );
        assert_eq!(format_lines(&s), ["0 AAAA 127.0.0.1:8046 leader 42"]);
    }

    #[test]
    fn members_empty_slots_and_slaves() {
        let s = snap(
            &[("2", "CCCC"), ("0", "AAAA"), ("1", ""), ("3", "BBBB")],
            &[
                ("ZZZZ", node("10.0.0.9:8046", Some("7"))),
                ("AAAA", node("10.0.0.1:8046", Some("10"))),
                ("BBBB", node("10.0.0.2:8046", None)),
                ("CCCC", node("10.0.0.3:8046", Some("9"))),
                ("DDDD", node("10.0.0.4:8046", None)),
            ],
            Some("CCCC"),
        );
        assert_eq!(
            format_lines(&s),
            [
                "0 AAAA 10.0.0.1:8046 member 10",
                "1 - - empty -",
                "2 CCCC 10.0.0.3:8046 leader 9",
                "3 BBBB 10.0.0.2:8046 member -",
                "- DDDD 10.0.0.4:8046 slave -",
                "- ZZZZ 10.0.0.9:8046 slave 7",
            ]
        );
    }

    #[test]
    fn slots_numeric_then_bytes() {
        let names = [
            "10",
            "b",
            "2",
            "a",
            "0",
            "007",
            "7",
            "1x",
            "99999999999999999999999",
        ];
        let slots: Vec<(&str, &str)> = names.iter().map(|n| (*n, "")).collect();
        let lines = format_lines(&snap(&slots, &[], None));
        let order: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
        assert_eq!(
            order,
            [
                "0",
                "2",
                "007",
                "7",
                "10",
                "99999999999999999999999",
                "1x",
                "a",
                "b"
            ]
        );
    }

    #[test]
    fn unregistered_member_and_missing_fields() {
        // A slot naming a node with no /ctl/node entry; a node without addr.
        let s = snap(
            &[("0", "GONE"), ("1", "HALF")],
            &[(
                "HALF",
                NodeInfo {
                    addr: None,
                    applied: Some(b"5".to_vec()),
                },
            )],
            Some("HALF"),
        );
        assert_eq!(format_lines(&s), ["0 GONE - member -", "1 HALF - leader 5"]);
    }

    #[test]
    fn no_leader_file_or_unknown_leader() {
        let nodes = [
            ("AAAA", node("a:1", Some("3"))),
            ("BBBB", node("b:1", Some("3"))),
        ];
        let slots = [("0", "AAAA"), ("1", "BBBB")];
        let want = ["0 AAAA a:1 member 3", "1 BBBB b:1 member 3"];
        assert_eq!(format_lines(&snap(&slots, &nodes, None)), want);
        assert_eq!(format_lines(&snap(&slots, &nodes, Some(""))), want);
        assert_eq!(format_lines(&snap(&slots, &nodes, Some("XXXX"))), want);
        // A trailing newline in the leader file still names the leader.
        assert_eq!(
            format_lines(&snap(&slots, &nodes, Some("BBBB\n"))),
            ["0 AAAA a:1 member 3", "1 BBBB b:1 leader 3"]
        );
        // A leader that holds no slot stays a slave.
        let nodes = [("AAAA", node("a:1", None)), ("CCCC", node("c:1", None))];
        assert_eq!(
            format_lines(&snap(&[("0", "AAAA")], &nodes, Some("CCCC"))),
            ["0 AAAA a:1 member -", "- CCCC c:1 slave -"]
        );
    }

    #[test]
    fn odd_bytes_never_break_a_line() {
        let s = Snapshot {
            slots: vec![("0".into(), b"a b\n\xff".to_vec())],
            nodes: BTreeMap::from([(
                "N".to_string(),
                NodeInfo {
                    addr: Some(b"\t\xc3\xa9\xe2\x80\xa8".to_vec()),
                    applied: Some(Vec::new()),
                },
            )]),
            leader: Some(b"\xff\xfe".to_vec()),
        };
        let lines = format_lines(&s);
        assert_eq!(
            lines,
            [
                "0 a\\x20b\\x0a\u{fffd} - member -",
                "- N \\x09é\\u{2028} slave -"
            ]
        );
        for line in &lines {
            assert_eq!(line.split(' ').count(), 5, "{line:?}");
        }
    }

    #[test]
    fn nothing_at_all() {
        assert!(format_lines(&Snapshot::default()).is_empty());
    }
}
