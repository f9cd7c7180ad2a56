//! The web view in a real browser: headless Chromium (Debian's `chromium`)
//! driven over the DevTools protocol against real `doozerd` processes.
//!
//! * the tree page renders the `/ctl` tree; a `doozer set` made while it is
//!   open shows at once, highlighted; a delete disappears; values
//!   holding `<script>` and `onerror` handlers show as text and run nothing
//!   (loaded with the page and arriving live); binary values show as hex;
//!   the status line says reconnecting while the node is gone and the page
//!   recovers when a node is back on the same address;
//! * the cluster page of a 3-member cluster with one slave lists all four,
//!   each with the right slot, id, address, version, and the leader marked;
//!   the slave's own page knows it is a slave;
//! * the stats page shows the node's numbers.
//!
//! Screenshots of every page go to `target/tmp/web-screenshots/`.

mod common;
mod web;

use std::time::{Duration, Instant};

use common::{loopback_net, TempDir};
use serde_json::Value;
use web::cdp::Browser;
use web::{fetch, screenshot_dir, wait_for, WebNode};

const EVIL: &str = "<script>document.title='pwned';window.__pwned=1</script>\
                    <img src=x onerror=\"window.__pwned=2;document.body.dataset.pwned=1\">";

/// A JS expression: the value cell text of the row for `path`.
fn value_of(path: &str) -> String {
    format!("document.querySelector('.row.file[data-path=\"{path}\"] .value').textContent")
}

fn row_exists(path: &str) -> String {
    format!("!!document.querySelector('.row.file[data-path=\"{path}\"]')")
}

const NOTHING_RAN: &str =
    "window.__pwned === undefined && document.body.dataset.pwned === undefined \
     && document.title.indexOf('pwned') < 0 \
     && document.querySelectorAll('.tree img, .tree script').length === 0";

#[test]
fn tree_page_is_live_and_shows_values_safely() {
    let dir = TempDir::new("web-browser-tree");
    let ip = format!("{}1", loopback_net());
    let mut node = WebNode::start("node", &ip, &["-c", "browser"], &[], &dir.path);
    node.set("/demo/hello", b"world");
    node.set("/demo/evil", EVIL.as_bytes());
    node.set("/demo/bin", &[0xde, 0xad, 0xbe, 0xef, 0x00]);
    // Longer than the 4096 bytes a tree answer carries per value.
    let long = "a line of a long value\n".repeat(300);
    node.set("/demo/long", long.as_bytes());
    node.set("/demo/deep/er/file", b"nested");
    let id = node.doozer(&["self"], b"");

    let mut b = Browser::launch();
    b.navigate(&node.url("/"));
    b.wait_until(
        "the tree, connected",
        "document.body.dataset.state === 'connected' && document.querySelector('.row.file[data-path=\"/ctl/name\"]')",
        Duration::from_secs(15),
    );

    // The /ctl tree is there, with this node's files.
    assert_eq!(b.eval(&value_of("/ctl/name")), "browser");
    assert_eq!(b.eval(&value_of("/ctl/cal/0")), id.as_str());
    assert_eq!(
        b.eval(&value_of(&format!("/ctl/node/{id}/addr"))),
        node.addr.as_str()
    );
    assert_eq!(
        b.eval("!!document.querySelector('.dir[data-path=\"/ctl/node\"] > .dirhead a')"),
        true
    );
    assert_eq!(b.eval("document.title"), "browser / · doozer");

    // Values: <script> as text, nothing run; binary as hex; long folded.
    assert_eq!(b.eval(&value_of("/demo/evil")), EVIL);
    assert_eq!(b.eval(NOTHING_RAN), true);
    let hex = b.eval(&value_of("/demo/bin"));
    assert!(hex.as_str().unwrap().contains("de ad be ef 00"), "{hex}");
    let folded = b.eval(&value_of("/demo/long"));
    assert!(folded.as_str().unwrap().contains("show all"), "{folded}");
    assert!(folded.as_str().unwrap().len() < 400, "{folded}");
    // Unfolding fetches the whole value (the tree carried only 4096 bytes).
    b.eval("document.querySelector('.row.file[data-path=\"/demo/long\"] .more').click()");
    b.wait_until(
        "the unfolded value",
        &format!(
            "{}.startsWith({})",
            value_of("/demo/long"),
            serde_json::to_string(&long).unwrap()
        ),
        Duration::from_secs(5),
    );
    b.eval("document.querySelector('.row.file[data-path=\"/demo/long\"] .more').click()");

    assert_eq!(b.eval(&value_of("/demo/deep/er/file")), "nested");

    // A set made while the page is open shows at once (the latency is
    // printed; the limit leaves room for a loaded machine).
    let before = Instant::now();
    node.set("/demo/live", b"fresh");
    let made = before.elapsed();
    let shown = b.wait_until(
        "the live set",
        &format!("{} === 'fresh'", value_of("/demo/live")),
        Duration::from_secs(5),
    );
    eprintln!("live set: doozer set took {made:?}, on the page {shown:?} after it returned");
    // ... highlighted; a changed value replaces the old one.
    assert_eq!(
        b.eval("document.querySelector('.row.file[data-path=\"/demo/live\"]').classList.contains('changed')"),
        true
    );
    node.set("/demo/hello", b"again");
    b.wait_until(
        "the changed value",
        &format!("{} === 'again'", value_of("/demo/hello")),
        Duration::from_secs(5),
    );
    // A hostile value arriving live is text too.
    node.set("/demo/evil2", EVIL.as_bytes());
    b.wait_until(
        "the live hostile value",
        &format!(
            "{} === {}",
            value_of("/demo/evil2"),
            serde_json::to_string(EVIL).unwrap()
        ),
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(b.eval(NOTHING_RAN), true);
    // A delete disappears, and so does a directory left empty.
    node.doozer(&["del", "/demo/deep/er/file", "-1"], b"");
    b.wait_until(
        "the delete",
        &format!(
            "!{} && !document.querySelector('.dir[data-path=\"/demo/deep\"]')",
            row_exists("/demo/deep/er/file")
        ),
        Duration::from_secs(5),
    );
    let rev: i64 = node.doozer(&["rev"], b"").trim().parse().unwrap();
    b.wait_until(
        "the rev line",
        &format!("Number(document.body.dataset.rev) >= {rev}"),
        Duration::from_secs(2),
    );
    node.set("/demo/live", b"fresh again");
    std::thread::sleep(Duration::from_millis(150));
    b.screenshot(&screenshot_dir().join("tree.png"));

    // A directory page shows only that directory.
    b.navigate(&node.url("/demo/"));
    b.wait_until(
        "the /demo page",
        &format!(
            "document.body.dataset.state === 'connected' && {}",
            row_exists("/demo/hello")
        ),
        Duration::from_secs(10),
    );
    assert_eq!(b.eval(&row_exists("/ctl/name")), false);
    assert_eq!(b.eval(NOTHING_RAN), true);
    b.screenshot(&screenshot_dir().join("tree-demo.png"));

    // A page for one file shows it, live.
    b.navigate(&node.url("/demo/hello/"));
    b.wait_until(
        "the /demo/hello page",
        &format!(
            "document.body.dataset.state === 'connected' && {} === 'again'",
            value_of("/demo/hello")
        ),
        Duration::from_secs(10),
    );
    node.set("/demo/hello", b"once more");
    b.wait_until(
        "the file's change",
        &format!("{} === 'once more'", value_of("/demo/hello")),
        Duration::from_secs(5),
    );

    // The stats page.
    b.navigate(&node.url("/stats"));
    b.wait_until(
        "the stats",
        "document.body.dataset.state === 'connected' && document.querySelector('.card[data-key=\"rev\"] .big').textContent !== ''",
        Duration::from_secs(10),
    );
    let role = b.eval("document.querySelector('.card[data-key=\"role\"] .big').textContent");
    assert_eq!(role, "leader");
    let memory = b.eval("document.querySelector('.card[data-key=\"memory\"] .big').textContent");
    assert!(memory.as_str().unwrap().ends_with("MiB"), "{memory}");
    b.screenshot(&screenshot_dir().join("stats.png"));

    // The node goes away: the page says so; a node back on the same
    // addresses (a fresh store) is picked up again.
    b.navigate(&node.url("/demo/"));
    b.wait_until(
        "the /demo page again",
        "document.body.dataset.state === 'connected'",
        Duration::from_secs(10),
    );
    node.kill();
    b.wait_until(
        "the reconnecting status",
        "document.body.dataset.state === 'reconnecting' && document.getElementById('status-text').textContent.startsWith('reconnecting')",
        Duration::from_secs(5),
    );
    let again = WebNode::spawn_at("node-again", &node.addr, &node.web, &[], &[], &dir.path);
    again.wait_web(Duration::from_secs(15));
    again.set("/demo/reborn", b"yes");
    b.wait_until(
        "the page to recover on the new node",
        &format!(
            "document.body.dataset.state === 'connected' && {} && !{}",
            row_exists("/demo/reborn"),
            row_exists("/demo/hello")
        ),
        Duration::from_secs(15),
    );
}

/// `SELF` of a node.
fn self_id(node: &WebNode) -> String {
    node.doozer(&["self"], b"").trim().to_string()
}

#[test]
fn cluster_page_lists_three_members_and_a_slave() {
    let dir = TempDir::new("web-browser-cluster");
    let net = loopback_net();
    let seed = WebNode::start("node1", &format!("{net}1"), &[], &[], &dir.path);
    let mut nodes = vec![seed];
    for i in 2..=4 {
        let attach = nodes[0].addr.clone();
        let node = WebNode::spawn(
            &format!("node{i}"),
            &format!("{net}{i}"),
            &["-a", &attach],
            &[],
            &dir.path,
            true,
        );
        nodes.push(node);
    }
    for node in &nodes[1..] {
        node.wait_web(Duration::from_secs(20));
    }
    // Every node registered, then two more member slots opened, as
    // scripts/cluster.sh does.
    wait_for("four registered nodes", Duration::from_secs(30), || {
        let c = fetch(&nodes[0].web, "/api/cluster").json();
        let n = c["nodes"].as_array().map_or(0, Vec::len);
        (n == 4).then_some(()).ok_or(c.to_string())
    });
    nodes[0].doozer(&["set", "/ctl/cal/1", "0"], b"");
    nodes[0].doozer(&["set", "/ctl/cal/2", "0"], b"");
    let cluster = wait_for("three members", Duration::from_secs(30), || {
        let c = fetch(&nodes[0].web, "/api/cluster").json();
        let filled = c["slots"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["id"].is_string())
            .count();
        (filled == 3 && c["slots"].as_array().unwrap().len() == 3)
            .then_some(c.clone())
            .ok_or(c.to_string())
    });
    let ids: Vec<String> = nodes.iter().map(self_id).collect();
    let addr_of = |id: &str| {
        let i = ids.iter().position(|x| x == id).expect("a known id");
        nodes[i].addr.clone()
    };
    let leader = cluster["leader"].as_str().unwrap().to_string();

    let mut b = Browser::launch();
    b.navigate(&nodes[0].url("/cluster"));
    b.wait_until(
        "three members and a slave",
        "document.body.dataset.state === 'connected' \
         && document.querySelectorAll('#members tbody tr[data-id]').length === 3 \
         && document.querySelectorAll('#slaves tbody tr[data-id]').length === 1",
        Duration::from_secs(15),
    );
    let rows = |b: &mut Browser, table: &str| -> Vec<Vec<String>> {
        let v = b.eval(&format!(
            "Array.from(document.querySelectorAll('#{table} tbody tr')).map(tr => \
             [tr.dataset.id || '', tr.className].concat(Array.from(tr.cells).map(td => td.textContent)))"
        ));
        serde_json::from_value::<Vec<Vec<String>>>(v).unwrap()
    };
    let members = rows(&mut b, "members");
    let slaves = rows(&mut b, "slaves");
    eprintln!("members: {members:?}\nslaves: {slaves:?}");
    // Columns: id, class, slot, node, address, hostname, version, applied,
    // lag, last heard.
    assert_eq!(members.len(), 3);
    let mut seen = Vec::new();
    for (slot, row) in members.iter().enumerate() {
        let id = &row[0];
        assert_eq!(row[2], slot.to_string());
        assert!(row[3].starts_with(id.as_str()), "{row:?}");
        assert_eq!(row[4], addr_of(id));
        assert!(!row[5].is_empty() && row[5] != "—", "hostname: {row:?}");
        assert_eq!(row[6], "0.9.0-alpha");
        assert!(row[7].parse::<i64>().is_ok(), "applied: {row:?}");
        assert_eq!(row[1] == "leader", *id == leader, "{row:?}");
        assert_eq!(row[3].contains("leader"), *id == leader, "{row:?}");
        seen.push(id.clone());
    }
    assert!(seen.contains(&leader));
    assert_eq!(slaves.len(), 1);
    let slave = &slaves[0];
    assert!(!seen.contains(&slave[0]));
    assert!(ids.contains(&slave[0]));
    assert_eq!(slave[3], addr_of(&slave[0]));
    assert_eq!(slave[5], "0.9.0-alpha");
    seen.push(slave[0].clone());
    seen.sort();
    let mut all = ids.clone();
    all.sort();
    assert_eq!(seen, all, "every node listed once");
    // The seed's page: this node is marked; the summary names the cluster.
    assert_eq!(
        b.eval("document.querySelectorAll('#members .badge.self, #slaves .badge.self').length"),
        1
    );
    let summary = b.eval("document.querySelector('.summary').textContent");
    assert!(summary.as_str().unwrap().contains("local"), "{summary}");
    b.screenshot(&screenshot_dir().join("cluster.png"));

    // The slave's own view of the cluster knows what it is.
    let slave_node = nodes.iter().find(|n| n.addr == addr_of(&slave[0])).unwrap();
    b.navigate(&slave_node.url("/cluster"));
    b.wait_until(
        "the slave's cluster page",
        "document.body.dataset.state === 'connected' \
         && document.querySelectorAll('#members tbody tr[data-id]').length === 3 \
         && document.getElementById('node-line').textContent.endsWith('slave')",
        Duration::from_secs(15),
    );
    let me = b.eval("document.querySelector('#slaves tr[data-id] .badge.self') !== null");
    assert_eq!(me, Value::Bool(true));
    b.screenshot(&screenshot_dir().join("cluster-from-slave.png"));
}
