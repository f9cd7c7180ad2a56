// The doozer web view. One script for three pages, chosen by the URL:
//   /cluster          the cluster: member slots, slaves, leader
//   /stats            this node's numbers
//   / or /<dir>/      the tree under that directory, live
//
// Everything shown comes from the JSON API and the event stream, and goes
// into the page only through textContent and element properties: no store
// path, value or name is ever parsed as HTML.
'use strict';

(function () {
  // ----- small helpers ------------------------------------------------------

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  const main = document.getElementById('main');
  const statusBox = document.getElementById('status');
  const statusText = document.getElementById('status-text');

  function setStatus(state, text) {
    document.body.dataset.state = state;
    statusBox.className = 'status ' + state;
    statusText.textContent = text;
  }

  class HttpError extends Error {
    constructor(status, message, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  async function getJSON(url) {
    const res = await fetch(url, { credentials: 'same-origin', cache: 'no-store' });
    let body = null;
    try {
      body = await res.json();
    } catch (_) {
      body = null;
    }
    if (!res.ok) {
      const why = body && typeof body.error === 'string' ? body.error : res.status + ' ' + res.statusText;
      throw new HttpError(res.status, why, body);
    }
    return body;
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return (i === 0 ? n : n.toFixed(1)) + ' ' + units[i];
  }

  function fmtDuration(secs) {
    secs = Math.floor(secs);
    const d = Math.floor(secs / 86400), h = Math.floor(secs / 3600) % 24;
    const m = Math.floor(secs / 60) % 60, s = secs % 60;
    if (d) return d + 'd ' + h + 'h ' + m + 'm';
    if (h) return h + 'h ' + m + 'm ' + s + 's';
    if (m) return m + 'm ' + s + 's';
    return s + 's';
  }

  function fmtAgo(ms) {
    if (ms === null || ms === undefined) return '—';
    if (ms < 1000) return 'now';
    return (ms / 1000).toFixed(1) + ' s ago';
  }

  function clock() {
    return new Date().toLocaleTimeString();
  }

  const page = location.pathname;
  const navId = page === '/cluster' ? 'nav-cluster' : page === '/stats' ? 'nav-stats' : 'nav-tree';
  document.getElementById(navId).classList.add('current');

  // The header: cluster name and this node.
  async function header() {
    try {
      const s = await getJSON('/api/stats');
      document.getElementById('cluster-name').textContent = s.name;
      document.getElementById('node-line').textContent = 'node ' + s.id + ' · ' + s.role;
      const where = page === '/cluster' ? 'cluster' : page === '/stats' ? 'stats' : page;
      document.title = s.name + ' ' + where + ' · doozer';
    } catch (_) {
      // The page itself reports connection trouble.
    }
  }

  // ----- values -------------------------------------------------------------

  const FOLD_CHARS = 200;
  const FOLD_LINES = 4;

  // Control characters (other than newline and tab) become visible escapes.
  function visible(text) {
    return text.replace(/[\u0000-\u0008\u000b-\u001f\u007f]/g, function (c) {
      return '\\x' + c.charCodeAt(0).toString(16).padStart(2, '0');
    });
  }

  function hexOf(b64) {
    const raw = atob(b64);
    const out = [];
    for (let i = 0; i < raw.length; i++) out.push(raw.charCodeAt(i).toString(16).padStart(2, '0'));
    return out.join(' ');
  }

  function folded(full) {
    const lines = full.split('\n');
    if (full.length <= FOLD_CHARS && lines.length <= FOLD_LINES) return null;
    let short = lines.slice(0, FOLD_LINES).join('\n');
    if (short.length > FOLD_CHARS) short = short.slice(0, FOLD_CHARS);
    return short;
  }

  // A value cell: text (escaped), or hex for binary; long ones folded, and
  // ones the server cut fetched whole on demand.
  function valueCell(f) {
    const cell = el('div', 'value');
    const binary = typeof f.value_b64 === 'string';
    let full = binary ? hexOf(f.value_b64) : visible(f.value || '');
    if (binary) cell.classList.add('binary');
    if (f.kind === 'del') {
      cell.classList.add('empty');
      cell.textContent = '(deleted)';
      return cell;
    }
    if (f.len === 0) {
      cell.classList.add('empty');
      cell.textContent = '(empty)';
      return cell;
    }
    const text = el('span', 'text');
    cell.appendChild(text);
    if (binary) cell.insertBefore(el('span', 'badge', 'binary'), text);
    const short = folded(full);
    if (short === null && !f.truncated) {
      text.textContent = full;
      return cell;
    }
    text.textContent = (short === null ? full : short) + '…';
    const more = el('button', 'more', 'show all (' + fmtBytes(f.len) + ')');
    more.type = 'button';
    let open = false;
    more.addEventListener('click', async function () {
      if (!open && f.truncated) {
        try {
          more.textContent = 'loading…';
          // The current value: the page is live, so it is the one shown.
          const whole = await getJSON('/api/file?path=' + encodeURIComponent(f.path));
          full = typeof whole.value_b64 === 'string' ? hexOf(whole.value_b64) : visible(whole.value || '');
          f.truncated = false;
        } catch (e) {
          more.textContent = 'could not load: ' + e.message;
          return;
        }
      }
      open = !open;
      text.textContent = open ? full : (folded(full) || full) + '…';
      more.textContent = open ? 'fold' : 'show all (' + fmtBytes(f.len) + ')';
    });
    cell.appendChild(more);
    return cell;
  }

  // ----- the tree page ------------------------------------------------------

  function treePage() {
    let root = page.replace(/\/+$/, '');
    if (root === '') root = '/';
    const dirGlob = root === '/' ? '/**' : root + '/**';
    // A page for a single file follows that file alone.
    let glob = dirGlob;

    const crumbs = el('div', 'crumbs');
    const rootLink = el('a', null, '/');
    rootLink.href = '/';
    crumbs.appendChild(rootLink);
    let acc = '';
    root.split('/').filter(Boolean).forEach(function (name) {
      acc += '/' + name;
      const a = el('a', null, name);
      a.href = acc + '/';
      crumbs.appendChild(a);
      crumbs.appendChild(document.createTextNode('/'));
    });
    const revLine = el('span', 'revline');
    crumbs.appendChild(revLine);
    const note = el('div', 'note');
    const treeBox = el('div', 'tree');
    main.appendChild(crumbs);
    main.appendChild(note);
    main.appendChild(treeBox);

    // path -> { el, kids (dirs only), dir }
    let nodes = new Map();
    let lastRev = 0;
    let source = null;
    let retry = 500;

    function parentOf(path) {
      const i = path.lastIndexOf('/');
      return i <= 0 ? '/' : path.slice(0, i);
    }

    function nameOf(path) {
      return path.slice(path.lastIndexOf('/') + 1);
    }

    // Inserts child under container keeping byte order of names.
    function insertSorted(container, child, name) {
      let before = null;
      for (const c of container.children) {
        if (c.dataset.name > name) {
          before = c;
          break;
        }
      }
      container.insertBefore(child, before);
    }

    function dirNode(path) {
      const have = nodes.get(path);
      if (have && have.dir) return have;
      if (have) removeNode(path);
      if (path === root) {
        const n = { el: treeBox, kids: treeBox, dir: true };
        nodes.set(path, n);
        return n;
      }
      const parent = dirNode(parentOf(path));
      const box = el('div', 'dir');
      box.dataset.path = path;
      box.dataset.name = nameOf(path);
      const head = el('div', 'row dirhead');
      const link = el('a', 'name', nameOf(path) + '/');
      link.href = path + '/';
      head.appendChild(link);
      const kids = el('div', 'kids');
      box.appendChild(head);
      box.appendChild(kids);
      insertSorted(parent.kids, box, nameOf(path));
      const n = { el: box, kids: kids, dir: true };
      nodes.set(path, n);
      return n;
    }

    function removeNode(path) {
      const n = nodes.get(path);
      if (!n) return;
      if (n.dir) {
        for (const p of Array.from(nodes.keys())) {
          if (p.startsWith(path + '/')) nodes.delete(p);
        }
      }
      if (n.el !== treeBox) n.el.remove();
      nodes.delete(path);
    }

    function flash(row) {
      row.classList.remove('changed');
      void row.offsetWidth; // restart the animation
      row.classList.add('changed');
    }

    function setFile(f, highlight) {
      // (A page for a single file has that file as its only row.)
      const parent = f.path === root ? null : dirNode(parentOf(f.path));
      let n = nodes.get(f.path);
      if (n && n.dir) {
        removeNode(f.path);
        n = null;
      }
      const row = el('div', 'row file');
      row.dataset.path = f.path;
      row.dataset.name = nameOf(f.path);
      row.appendChild(el('span', 'name', nameOf(f.path)));
      const rev = el('span', 'rev', f.rev);
      rev.title = 'file rev';
      row.appendChild(rev);
      row.appendChild(valueCell(f));
      if (n) {
        n.el.replaceWith(row);
      } else if (parent) {
        insertSorted(parent.kids, row, nameOf(f.path));
      } else {
        treeBox.appendChild(row);
      }
      nodes.set(f.path, { el: row, dir: false });
      if (highlight) flash(row);
    }

    function delFile(path) {
      removeNode(path);
      // Directories exist only while they hold files.
      let dir = parentOf(path);
      while (dir !== root && dir.startsWith(root === '/' ? '/' : root + '/')) {
        const n = nodes.get(dir);
        if (!n || n.kids.children.length > 0) break;
        removeNode(dir);
        dir = parentOf(dir);
      }
    }

    function showEmpty() {
      if (treeBox.children.length === 0) {
        note.textContent = root + ' does not exist (yet)';
      } else if (note.textContent.endsWith('(yet)')) {
        note.textContent = '';
      }
    }

    function showRev() {
      document.body.dataset.rev = String(lastRev);
      revLine.textContent = 'rev ' + lastRev;
    }

    function render(t) {
      clear(treeBox);
      nodes = new Map();
      nodes.set(root, { el: treeBox, kids: treeBox, dir: true });
      for (const f of t.files) setFile(f, false);
      note.textContent = t.truncated
        ? 'showing the first ' + t.files.length + ' files only: open a directory to see more'
        : '';
      showEmpty();
    }

    function apply(c) {
      if (c.kind === 'del') delFile(c.path);
      else setFile(c, true);
      showEmpty();
    }

    function follow(from) {
      if (source) source.close();
      const url = '/api/events?glob=' + encodeURIComponent(glob) + '&rev=' + from;
      const es = new EventSource(url);
      source = es;
      es.onopen = function () {
        retry = 500;
        setStatus('connected', 'connected · live');
      };
      es.addEventListener('change', function (e) {
        const c = JSON.parse(e.data);
        if (c.rev <= lastRev) return; // already shown
        lastRev = c.rev;
        apply(c);
        showRev();
      });
      es.addEventListener('ping', function (e) {
        const p = JSON.parse(e.data);
        if (p.rev > lastRev) {
          lastRev = p.rev;
          showRev();
        }
      });
      es.addEventListener('reset', function () {
        // Away too long for the server to replay what we missed: reload.
        es.close();
        source = null;
        load();
      });
      es.onerror = function () {
        setStatus('reconnecting', 'reconnecting…');
        if (es.readyState === EventSource.CLOSED) {
          es.close();
          setTimeout(function () {
            if (source === es) follow(lastRev + 1);
          }, retry);
          retry = Math.min(retry * 2, 10000);
        }
        // Otherwise the browser reconnects by itself, sending Last-Event-ID.
      };
    }

    async function load() {
      setStatus('loading', 'loading…');
      try {
        const t = await getJSON('/api/tree?path=' + encodeURIComponent(root));
        glob = t.is_dir ? dirGlob : root;
        lastRev = t.rev;
        render(t);
        showRev();
        follow(t.rev + 1);
      } catch (e) {
        if (e instanceof HttpError && e.status === 404 && e.body && typeof e.body.rev === 'number') {
          lastRev = e.body.rev;
          glob = dirGlob;
          render({ files: [], truncated: false });
          nodes.clear();
          nodes.set(root, { el: treeBox, kids: treeBox, dir: true });
          showEmpty();
          showRev();
          follow(lastRev + 1);
          return;
        }
        setStatus('reconnecting', 'cannot load the tree (' + e.message + '); retrying…');
        setTimeout(load, retry);
        retry = Math.min(retry * 2, 10000);
      }
    }

    load();
  }

  // ----- polled pages (cluster, stats) --------------------------------------

  function poll(url, draw) {
    let timer = null;
    async function tick() {
      try {
        const data = await getJSON(url);
        draw(data);
        setStatus('connected', 'connected · updated ' + clock());
      } catch (e) {
        setStatus('reconnecting', 'reconnecting… (' + e.message + ')');
      }
      timer = setTimeout(tick, 1000);
    }
    tick();
    return function () {
      clearTimeout(timer);
    };
  }

  function table(columns) {
    const t = el('table');
    const head = el('tr');
    for (const c of columns) head.appendChild(el('th', null, c));
    const thead = el('thead');
    thead.appendChild(head);
    t.appendChild(thead);
    const body = el('tbody');
    t.appendChild(body);
    return { table: t, body: body };
  }

  function cells(tr, values) {
    for (const v of values) {
      if (v instanceof Node) {
        const td = el('td');
        td.appendChild(v);
        tr.appendChild(td);
      } else {
        tr.appendChild(el('td', null, v === null || v === undefined ? '—' : v));
      }
    }
  }

  function nodeLabel(n) {
    const box = el('span', 'node');
    box.appendChild(el('code', null, n.id));
    if (n.leader) box.appendChild(el('span', 'badge leader', 'leader'));
    if (n.self) box.appendChild(el('span', 'badge self', 'this node'));
    return box;
  }

  function clusterPage() {
    const summary = el('div', 'summary');
    const membersTitle = el('h2', null, 'Members');
    const members = table(['slot', 'node', 'address', 'hostname', 'version', 'applied', 'lag', 'last heard']);
    members.table.id = 'members';
    const slavesTitle = el('h2', null, 'Slaves');
    const slaves = table(['node', 'address', 'hostname', 'version', 'applied', 'lag', 'last heard']);
    slaves.table.id = 'slaves';
    const foot = el('p', 'hint', 'Applied revs and last-heard times of other nodes are known on the leader; ' +
      'elsewhere “applied” is the node’s own report in /ctl/node/<id>/applied.');
    for (const e of [summary, membersTitle, members.table, slavesTitle, slaves.table, foot]) main.appendChild(e);

    poll('/api/cluster', function (c) {
      clear(summary);
      const pairs = [
        ['cluster', c.name],
        ['this node', c.self + ' (' + c.role + ')'],
        ['leader', c.leader || 'none known'],
        ['rev', c.rev],
        ['writable', c.writable ? 'yes' : 'no'],
      ];
      for (const [k, v] of pairs) {
        const item = el('div', 'kv');
        item.appendChild(el('span', 'k', k));
        item.appendChild(el('span', 'v', v));
        summary.appendChild(item);
      }
      const byId = new Map(c.nodes.map(function (n) { return [n.id, n]; }));
      clear(members.body);
      for (const s of c.slots) {
        const tr = el('tr');
        tr.dataset.slot = s.slot;
        const n = s.id ? byId.get(s.id) : null;
        if (!s.id) {
          tr.className = 'empty-slot';
          cells(tr, [s.slot, el('span', 'empty', '(empty slot)'), '', '', '', '', '', '']);
        } else if (!n) {
          cells(tr, [s.slot, nodeLabel({ id: s.id }), '(not registered)', null, null, null, null, null]);
        } else {
          if (n.leader) tr.className = 'leader';
          tr.dataset.id = n.id;
          cells(tr, [s.slot, nodeLabel(n), n.addr, n.hostname, n.version, n.applied, n.lag, fmtAgo(n.heard_ms_ago)]);
        }
        members.body.appendChild(tr);
      }
      clear(slaves.body);
      const rest = c.nodes.filter(function (n) { return !n.member; });
      for (const n of rest) {
        const tr = el('tr');
        tr.dataset.id = n.id;
        cells(tr, [nodeLabel(n), n.addr, n.hostname, n.version, n.applied, n.lag, fmtAgo(n.heard_ms_ago)]);
        slaves.body.appendChild(tr);
      }
      if (rest.length === 0) {
        const tr = el('tr');
        const td = el('td', 'empty', 'no slaves');
        td.colSpan = 7;
        tr.appendChild(td);
        slaves.body.appendChild(tr);
      }
      membersTitle.textContent = 'Members (' + c.slots.filter(function (s) { return s.id; }).length +
        ' of ' + c.slots.length + ' slots)';
      slavesTitle.textContent = 'Slaves (' + rest.length + ')';
    });
  }

  function statsPage() {
    const grid = el('div', 'grid');
    grid.id = 'stats';
    main.appendChild(grid);
    const cards = [
      ['rev', 'rev', function (s) { return s.rev; }],
      ['history', 'history window', function (s) { return s.history_start + ' – ' + s.rev + ' (' + (s.rev - s.history_start + 1) + ' revs)'; }],
      ['proposals', 'proposals / s', function (s) { return s.proposals_per_sec.toFixed(1); }],
      ['connections', 'client connections', function (s) { return s.connections; }],
      ['waiting', 'pending WAITs', function (s) { return s.waiting; }],
      ['pending', 'pending writes', function (s) { return s.pending_writes; }],
      ['memory', 'resident memory', function (s) { return fmtBytes(s.resident_bytes); }],
      ['uptime', 'uptime', function (s) { return fmtDuration(s.uptime_secs); }],
      ['role', 'role', function (s) { return s.role; }],
      ['writable', 'writable', function (s) { return s.writable ? 'yes' : 'no'; }],
      ['ready', 'ready', function (s) { return s.ready ? 'yes' : 'no'; }],
      ['members', 'members / slots / nodes', function (s) { return s.members + ' / ' + s.slots + ' / ' + s.nodes; }],
      ['streams', 'event streams', function (s) { return s.event_subscribers; }],
      ['drops', 'peer msgs dropped in / out', function (s) { return s.peer_in_dropped + ' / ' + s.peer_out_dropped; }],
      ['version', 'version', function (s) { return s.version; }],
    ];
    const values = new Map();
    for (const [key, label] of cards) {
      const card = el('div', 'card');
      card.dataset.key = key;
      card.appendChild(el('div', 'label', label));
      const v = el('div', 'big');
      card.appendChild(v);
      values.set(key, v);
      grid.appendChild(card);
    }
    poll('/api/stats', function (s) {
      for (const [key, , get] of cards) values.get(key).textContent = String(get(s));
    });
  }

  header();
  if (page === '/cluster') clusterPage();
  else if (page === '/stats') statsPage();
  else treePage();
})();
