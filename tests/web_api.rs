//! The web view's HTTP side against a real `doozerd`: the JSON API (tree,
//! file, cluster, stats), the event stream (resume by Last-Event-ID, reset
//! when too far behind, limits), `/metrics`, `/healthz`, `/readyz`, routes
//! and headers, and secrets.

mod common;
mod web;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{doozer_with_env, loopback_net, TempDir};
use web::{fetch, get, wait_for, Sse, WebNode};

/// One node with its web view on; the node is dropped (killed) before its
/// log directory.
struct Fixture {
    node: WebNode,
    _dir: TempDir,
}

impl Fixture {
    fn new(name: &str, args: &[&str], env: &[(&str, &str)]) -> Fixture {
        let dir = TempDir::new(name);
        let ip = format!("{}1", loopback_net());
        let node = WebNode::start(name, &ip, args, env, &dir.path);
        Fixture { node, _dir: dir }
    }

    fn get(&self, path: &str) -> web::HttpResponse {
        fetch(&self.node.web, path)
    }

    fn json(&self, path: &str) -> serde_json::Value {
        let res = self.get(path);
        assert_eq!(res.status, 200, "GET {path}: {}", res.text());
        assert_eq!(res.header("content-type"), Some("application/json"));
        res.json()
    }
}

/// `/metrics` as name (with labels) → value, checking the text format.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut typed = std::collections::BTreeSet::new();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            typed.insert(parts.next().unwrap().to_string());
            assert!(
                matches!(parts.next(), Some("gauge") | Some("counter")),
                "{line}"
            );
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (name, value) = line.rsplit_once(' ').expect("name value");
        let bare = name.split('{').next().unwrap();
        assert!(typed.contains(bare), "{bare} has no # TYPE before it");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        out.insert(name.to_string(), value);
    }
    out
}

#[test]
fn health_readiness_and_metrics() {
    let f = Fixture::new("web-metrics", &[], &[]);
    let health = f.get("/healthz");
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    wait_for("/readyz", Duration::from_secs(10), || {
        let r = f.get("/readyz");
        (r.status == 200).then_some(()).ok_or(r.text())
    });
    let rev = f.node.set("/m/x", b"1");

    let res = f.get("/metrics");
    assert_eq!(res.status, 200);
    assert!(res
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let m = parse_metrics(&res.text());
    assert!(m["doozer_rev"] >= rev as f64, "{m:?}");
    assert!(m["doozer_history_start_rev"] <= m["doozer_rev"]);
    assert_eq!(m["doozer_writable"], 1.0);
    assert_eq!(m["doozer_leader_known"], 1.0);
    assert_eq!(m["doozer_is_leader"], 1.0);
    assert_eq!(m["doozer_is_member"], 1.0);
    assert_eq!(m["doozer_members"], 1.0);
    assert_eq!(m["doozer_nodes"], 1.0);
    assert!(m["doozer_resident_memory_bytes"] > 1e6);
    assert!(m["doozer_uptime_seconds"] > 0.0);
    for name in [
        "doozer_waiting",
        "doozer_client_connections",
        "doozer_pending_writes",
        "doozer_proposals_per_second",
        "doozer_peer_in_dropped_total",
        "doozer_peer_out_dropped_total",
        "doozer_client_connections_refused_total",
        "doozer_client_access_refused_total",
        "doozer_peer_frames_refused_total",
        "doozer_web_event_subscribers",
    ] {
        assert!(m.contains_key(name), "{name} missing");
    }
    let info = m
        .keys()
        .find(|k| k.starts_with("doozer_info{"))
        .expect("doozer_info");
    assert!(info.contains("cluster=\"local\"") && info.contains("role=\"leader\""));
}

#[test]
fn tree_and_file_api() {
    let f = Fixture::new("web-tree", &[], &[]);
    let r1 = f.node.set("/t/a", b"one");
    let r2 = f.node.set("/t/b/c", &[0xff, 0x00, 0x01]);
    let r3 = f.node.set("/t/a", b"two");
    let long = "x".repeat(10_000);
    let r4 = f.node.set("/t/long", long.as_bytes());
    assert!(r1 < r2 && r2 < r3 && r3 < r4);

    let t = f.json("/api/tree?path=/t");
    assert!(t["rev"].as_i64().unwrap() >= r4);
    assert_eq!(t["path"], "/t");
    assert_eq!(t["is_dir"], true);
    assert_eq!(t["truncated"], false);
    let files = t["files"].as_array().unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/t/a", "/t/b/c", "/t/long"]);
    assert_eq!(files[0]["value"], "two");
    assert_eq!(files[0]["rev"], r3);
    assert_eq!(files[0]["len"], 3);
    // Bytes that are not UTF-8 come as base64.
    assert_eq!(files[1]["value_b64"], "/wAB");
    assert!(files[1].get("value").is_none());
    // Long values are cut to max_value (4096 by default).
    assert_eq!(files[2]["len"], 10_000);
    assert_eq!(files[2]["truncated"], true);
    assert_eq!(files[2]["value"].as_str().unwrap().len(), 4096);

    // The same with a trailing slash; at an older rev; with values cut.
    assert_eq!(f.json("/api/tree?path=/t/")["files"], t["files"]);
    let old = f.json(&format!("/api/tree?path=/t&rev={r2}"));
    assert_eq!(old["rev"], r2);
    let old_files = old["files"].as_array().unwrap();
    assert_eq!(old_files.len(), 2);
    assert_eq!(old_files[0]["value"], "one");
    let first_two = f.json("/api/tree?path=/t&limit=2");
    assert_eq!(first_two["files"].as_array().unwrap().len(), 2);
    assert_eq!(first_two["truncated"], true);
    assert_eq!(
        f.json("/api/tree?path=/t&limit=0")["files"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let cut = f.json("/api/tree?path=/t&max_value=0");
    assert_eq!(cut["files"][0]["value"], "");
    assert_eq!(cut["files"][0]["truncated"], true);

    // A file as the root; the whole tree has /ctl too.
    let one = f.json("/api/tree?path=/t/a");
    assert_eq!(one["is_dir"], false);
    assert_eq!(one["files"].as_array().unwrap().len(), 1);
    let root = f.json("/api/tree");
    assert!(root["files"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["path"] == "/ctl/name" && f["value"] == "local"));

    // One file, whole.
    let file = f.json("/api/file?path=/t/long");
    assert_eq!(file["value"].as_str().unwrap(), long);
    assert_eq!(file["truncated"], false);
    assert_eq!(file["rev"], r4);
    assert_eq!(
        f.json(&format!("/api/file?path=/t/a&rev={r1}"))["value"],
        "one"
    );

    // Errors: JSON with a status that says what went wrong.
    let missing = f.get("/api/tree?path=/nope");
    assert_eq!(missing.status, 404);
    assert!(missing.json()["rev"].as_i64().unwrap() >= r4);
    assert!(missing.json()["error"].as_str().unwrap().contains("/nope"));
    for (path, status) in [
        ("/api/tree?path=nope", 400),
        ("/api/tree?path=/a%3Cb", 400),
        ("/api/tree?rev=abc", 400),
        ("/api/tree?rev=999999999", 400),
        ("/api/file?path=/t", 400),
        ("/api/file?path=/t/zz", 404),
    ] {
        let res = f.get(path);
        assert_eq!(res.status, status, "{path}: {}", res.text());
        assert!(res.json()["error"].is_string());
    }
}

#[test]
fn cluster_and_stats_api() {
    let f = Fixture::new("web-cluster-api", &["-c", "webtest"], &[]);
    let c = f.json("/api/cluster");
    assert_eq!(c["name"], "webtest");
    assert_eq!(c["role"], "leader");
    assert_eq!(c["leader"], c["self"]);
    assert_eq!(c["writable"], true);
    assert_eq!(
        c["slots"],
        serde_json::json!([{"slot": "0", "id": c["self"]}])
    );
    let nodes = c["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1);
    let n = &nodes[0];
    assert_eq!(n["id"], c["self"]);
    assert_eq!(n["addr"], f.node.addr.as_str());
    assert!(!n["hostname"].as_str().unwrap().is_empty());
    assert_eq!(n["version"], "0.9.0-alpha");
    assert_eq!(n["member"], true);
    assert_eq!(n["slot"], "0");
    assert_eq!(n["leader"], true);
    assert_eq!(n["self"], true);
    assert!(n["applied"].as_i64().unwrap() >= 1);
    assert_eq!(n["lag"], 0);
    assert_eq!(n["heard_ms_ago"], 0);

    for i in 0..30 {
        f.node.set(&format!("/s/{i}"), b"x");
    }
    // proposals/s is the rev's rate over the last 10 one-second samples.
    let s = wait_for("a proposal rate", Duration::from_secs(5), || {
        let s = f.json("/api/stats");
        (s["proposals_per_sec"].as_f64().unwrap() > 0.0)
            .then_some(s.clone())
            .ok_or(s.to_string())
    });
    assert_eq!(s["name"], "webtest");
    assert_eq!(s["id"], c["self"]);
    assert_eq!(s["role"], "leader");
    assert_eq!(s["ready"], true);
    assert_eq!(s["writable"], true);
    assert_eq!(s["members"], 1);
    let rev = s["rev"].as_i64().unwrap();
    assert!(rev >= 30 && s["history_start"].as_i64().unwrap() <= rev);
    assert!(s["connections"].is_u64() && s["waiting"].is_u64());
    assert!(s["pending_writes"].is_u64());
    assert!(s["resident_bytes"].as_u64().unwrap() > 1 << 20);
    assert!(s["uptime_secs"].as_f64().unwrap() > 0.0);
    assert_eq!(s["version"], "0.9.0-alpha");
}

#[test]
fn event_stream_resumes_without_gaps_or_duplicates() {
    let f = Fixture::new("web-events", &[], &[]);
    let web = &f.node.web;
    let start: i64 = f.node.doozer(&["rev"], b"").trim().parse().unwrap();
    // Made while no stream is open (the web view is not following): a
    // stream asking for it still gets it, from the node's history.
    let r0 = f.node.set("/e/0", b"before");

    let mut sse = Sse::open(
        web,
        &format!("/api/events?glob=/e/**&rev={}", start + 1),
        &[],
    );
    assert_eq!(sse.status, 200);
    assert!(sse
        .headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream")));
    let ev = sse
        .next_change(Duration::from_secs(5))
        .expect("the earlier change");
    assert_eq!(ev.id, Some(r0.to_string()));
    assert_eq!(ev.json()["value"], "before");
    let r1 = f.node.set("/e/1", b"a");
    f.node.set("/other", b"not matched");
    let r2 = f.node.set("/e/2", b"<b>");
    let r3 = f.node.set("/e/sub/3", &[0xff, 0, 2]);
    f.node.doozer(&["del", "/e/1", &r1.to_string()], b"");

    let mut got = Vec::new();
    for _ in 0..4 {
        let ev = sse
            .next_change(Duration::from_secs(5))
            .expect("a change within 5 s");
        assert_eq!(ev.name, "change");
        got.push(ev);
    }
    let revs: Vec<i64> = got
        .iter()
        .map(|e| e.json()["rev"].as_i64().unwrap())
        .collect();
    let ids: Vec<i64> = got
        .iter()
        .map(|e| e.id.as_ref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(revs, ids, "the event id is the rev");
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "{revs:?}");
    assert_eq!(&revs[..3], &[r1, r2, r3]);
    let paths: Vec<String> = got
        .iter()
        .map(|e| e.json()["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(paths, ["/e/1", "/e/2", "/e/sub/3", "/e/1"]);
    let kinds: Vec<String> = got
        .iter()
        .map(|e| e.json()["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["set", "set", "set", "del"]);
    assert_eq!(got[1].json()["value"], "<b>");
    assert_eq!(got[2].json()["value_b64"], "/wAC");

    // A browser that saw r2 reconnects: it gets exactly what came after.
    let mut again = Sse::open(
        web,
        "/api/events?glob=/e/**&rev=1",
        &[("Last-Event-ID", &r2.to_string())],
    );
    let a = again.next_change(Duration::from_secs(5)).unwrap();
    let b = again.next_change(Duration::from_secs(5)).unwrap();
    assert_eq!(a.id.as_deref(), Some(r3.to_string().as_str()));
    assert_eq!(b.id.as_deref(), Some(revs[3].to_string().as_str()));
    assert_eq!(again.next_change(Duration::from_millis(300)), None);

    // From now on (no rev): only later changes.
    // The server fixes "now" a moment after the stream opens; a write made
    // before that is not shown, so write until one is, and check that what
    // shows is that write (not anything older).
    let mut live = Sse::open(web, "/api/events?glob=/e/*", &[]);
    wait_for("a live change", Duration::from_secs(10), || {
        let r5 = f.node.set("/e/5", b"five");
        match live.next_change(Duration::from_millis(500)) {
            Some(ev) if ev.id == Some(r5.to_string()) => Ok(()),
            other => Err(format!("wrote rev {r5}, got {other:?}")),
        }
    });

    let bad = get(web, "/api/events?glob=/e/[", &[]).unwrap();
    assert_eq!(bad.status, 400);
    let bad = get(web, "/api/events", &[("Last-Event-ID", "x")]).unwrap();
    assert_eq!(bad.status, 400);
}

#[test]
fn event_stream_resets_a_subscriber_that_fell_out_of_the_ring() {
    let f = Fixture::new("web-reset", &[], &[]);
    let web = &f.node.web;
    // A stream open all along keeps the web view following.
    let mut watcher = Sse::open(web, "/api/events?glob=/r/*", &[]);
    let first = wait_for("the stream to follow", Duration::from_secs(5), || {
        let rev = f.node.set("/r/first", b"1");
        match watcher.next_change(Duration::from_millis(500)) {
            Some(ev) if ev.id == Some(rev.to_string()) => Ok(rev),
            other => Err(format!("{other:?}")),
        }
    });
    // More changes than the ring keeps (4096), written pipelined.
    let addr = f.node.addr.clone();
    let last = doozer::runtime::rt::block_on(async move {
        let client = doozer::client::Client::connect(&addr).await.unwrap();
        let mut last = 0;
        for batch in 0..9 {
            let sets = (0..500).map(|i| {
                let client = client.clone();
                async move { client.set(&format!("/r/{batch}/{i}"), -1, b"v").await }
            });
            for rev in futures::future::join_all(sets).await {
                last = last.max(rev.unwrap());
            }
        }
        last
    });
    // Once the web view has followed them, the first is out of its ring.
    let reset = wait_for("a reset", Duration::from_secs(20), || {
        let mut sse = Sse::open(web, "/api/events", &[("Last-Event-ID", &first.to_string())]);
        let ev = sse.next(Duration::from_secs(2)).ok_or("nothing")?;
        if ev.name != "reset" {
            return Err(format!("got {ev:?}"));
        }
        // The stream ends after a reset.
        assert_eq!(sse.next(Duration::from_secs(2)), None);
        Ok(ev.json())
    });
    assert!(reset["rev"].as_i64().unwrap() >= first, "{reset}");
    assert!(reset["start"].as_i64().unwrap() > first, "{reset}");
    // A stream from within the ring replays it.
    let mut sse = Sse::open(
        web,
        "/api/events?glob=/r/**",
        &[("Last-Event-ID", &(last - 2).to_string())],
    );
    let ev = sse.next_change(Duration::from_secs(5)).unwrap();
    // The first /r/ write after last − 2: last − 1, unless a pulse of the
    // node's own took that rev.
    let id: i64 = ev.id.as_deref().unwrap().parse().unwrap();
    assert!(id == last - 1 || id == last, "{ev:?} after {}", last - 2);
}

#[test]
fn event_streams_are_limited() {
    let f = Fixture::new("web-limit", &[], &[]);
    let mut open = Vec::new();
    for _ in 0..64 {
        let sse = Sse::open(&f.node.web, "/api/events", &[]);
        assert_eq!(sse.status, 200);
        open.push(sse);
    }
    let refused = fetch(&f.node.web, "/api/events");
    assert_eq!(refused.status, 503);
    assert!(refused.json()["error"]
        .as_str()
        .unwrap()
        .contains("too many"));
    let stats = fetch(&f.node.web, "/api/stats").json();
    assert_eq!(stats["event_subscribers"], 64);
}

#[test]
fn pages_routes_and_headers() {
    let f = Fixture::new("web-routes", &[], &[]);
    for path in [
        "/",
        "/ctl/",
        "/ctl/node/",
        "/cluster",
        "/stats",
        "/no/such/dir/",
    ] {
        let res = f.get(path);
        assert_eq!(res.status, 200, "{path}");
        assert_eq!(res.header("content-type"), Some("text/html; charset=utf-8"));
        let csp = res.header("content-security-policy").unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"));
        assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
        let html = res.text();
        assert!(html.contains("<script src=\"/_/app.js\" defer></script>"));
        // The shell is static: nothing of the path or the store in it.
        assert_eq!(html.matches("<script").count(), 1);
        assert!(!html.contains("no/such"));
    }
    let js = f.get("/_/app.js");
    assert_eq!(js.status, 200);
    assert_eq!(
        js.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(js.text().contains("textContent"));
    assert_eq!(
        f.get("/_/app.css").header("content-type"),
        Some("text/css; charset=utf-8")
    );
    let redirect = f.get("/ctl");
    assert_eq!(redirect.status, 303);
    assert_eq!(redirect.header("location"), Some("/ctl/"));
    for path in ["/a//b/", "/a%3Cb/", "/_/other.js", "/x_y/"] {
        assert_eq!(f.get(path).status, 404, "{path}");
    }
}

#[test]
fn secrets_guard_every_route() {
    let f = Fixture::new(
        "web-secrets",
        &[],
        &[
            ("DOOZER_RWSECRET", "rw secret"),
            ("DOOZER_ROSECRET", "ro-secret"),
        ],
    );
    let web = &f.node.web;
    for path in [
        "/",
        "/ctl/",
        "/cluster",
        "/healthz",
        "/readyz",
        "/metrics",
        "/_/app.js",
        "/api/tree",
        "/api/cluster",
        "/api/stats",
        "/api/events",
        "/?sk=wrong",
        "/?sk=",
    ] {
        let res = get(web, path, &[]).unwrap();
        assert_eq!(res.status, 401, "{path}");
        assert!(res.header("www-authenticate").is_some());
        assert!(res.text().contains("?sk="));
    }
    let wrong = get(web, "/api/stats", &[("Cookie", "doozer_sk=nope")]).unwrap();
    assert_eq!(wrong.status, 401);
    let wrong = get(web, "/api/stats", &[("Authorization", "Bearer nope")]).unwrap();
    assert_eq!(wrong.status, 401);

    // A page opened with ?sk= sets a cookie and drops the secret from the URL.
    let res = get(web, "/ctl/?x=1&sk=ro-secret", &[]).unwrap();
    assert_eq!(res.status, 303);
    assert_eq!(res.header("location"), Some("/ctl/?x=1"));
    let cookie = res.header("set-cookie").unwrap();
    assert!(cookie.starts_with("doozer_sk=ro-secret;"), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let res = get(web, "/?sk=rw%20secret", &[]).unwrap();
    assert_eq!(res.status, 303);
    assert_eq!(res.header("location"), Some("/"));
    assert!(res
        .header("set-cookie")
        .unwrap()
        .starts_with("doozer_sk=rw%20secret;"));

    // With the cookie, a header or ?sk= on the API: in. The web view's own
    // connection got in with ACCESS, so the tree is there.
    let ro = [("Cookie", "a=b; doozer_sk=ro-secret")];
    let tree = get(web, "/api/tree?path=/ctl", &ro).unwrap();
    assert_eq!(tree.status, 200, "{}", tree.text());
    assert!(tree.text().contains("/ctl/name"));
    assert_eq!(get(web, "/metrics", &ro).unwrap().status, 200);
    assert_eq!(get(web, "/", &ro).unwrap().status, 200);
    let rw = [("Authorization", "Bearer rw secret")];
    assert_eq!(get(web, "/api/cluster", &rw).unwrap().status, 200);
    assert_eq!(get(web, "/healthz", &rw).unwrap().status, 200);
    assert_eq!(
        get(web, "/api/stats?sk=ro-secret", &[]).unwrap().status,
        200
    );

    // From rev 1: /s/x, written next, is the only match, whenever the
    // stream starts following.
    let mut sse = Sse::open(web, "/api/events?glob=/s/*&rev=1", &ro);
    assert_eq!(sse.status, 200);
    let uri = format!("doozer:?ca={}&sk=rw%20secret", f.node.addr);
    let out = doozer_with_env(&[("DOOZER_URI", &uri)], &["set", "/s/x", "0"], b"hi");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ev = sse.next_change(Duration::from_secs(5)).expect("a change");
    assert_eq!(ev.json()["value"], "hi");
}

#[test]
fn a_read_only_secret_alone_serves_the_view() {
    let f = Fixture::new("web-ro", &[], &[("DOOZER_ROSECRET", "ro")]);
    assert_eq!(get(&f.node.web, "/api/tree", &[]).unwrap().status, 401);
    let tree = get(&f.node.web, "/api/tree?path=/ctl&sk=ro", &[]).unwrap();
    assert_eq!(tree.status, 200, "{}", tree.text());
    assert!(tree.text().contains("/ctl/name"));
}
