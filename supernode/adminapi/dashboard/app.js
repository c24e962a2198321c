// Damselfly supernode dashboard: polls /dashboard/api/ every 1.5 s.
// No dependencies; the session is an HttpOnly cookie the script never sees.
"use strict";

(function () {
  const POLL_MS = 1500;
  const MAX_ROWS = 64; // piece map rows drawn (CDN + members)
  const $ = (id) => document.getElementById(id);
  let selected = null;   // selected task ID
  let timer = null;
  let gen = 0;           // polling generation: a stale loop stops itself
  let lastOverview = null;

  // ---- formatting ----
  function esc(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }
  function bytes(n) {
    if (n == null || n < 0) return "–";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0)) + " " + u[i];
  }
  function rate(n) { return n > 0 ? bytes(n) + "/s" : "–"; }
  function pct(f) { return f == null ? "–" : (f * 100).toFixed(f >= 0.999 || f === 0 ? 0 : 1) + "%"; }
  function age(from, now) {
    let s = Math.max(0, Math.round((now - new Date(from)) / 1000));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }
  function shortID(id) {
    if (!id) return "";
    const i = id.indexOf(":");
    return i >= 0 ? id.slice(0, i + 1) + id.slice(i + 1, i + 13) : id.slice(0, 16);
  }
  function taskName(t) {
    // A registry blob: repository@digest (short).
    const blob = t.url && t.url.match(/\/v2\/(.+)\/blobs\/(sha256:[0-9a-f]{12})/);
    if (blob) return blob[1] + "@" + blob[2];
    if (t.url) {
      const tail = t.url.replace(/[?#].*$/, "").split("/").filter(Boolean).slice(-2).join("/");
      return tail || t.url;
    }
    return shortID(t.taskId);
  }
  function barClass(f) { return f > 0.9 ? "bad" : f > 0.75 ? "warn" : ""; }
  function setText(id, s) { const e = $(id); if (e.textContent !== s) e.textContent = s; }
  function setBar(id, f) { const e = $(id); e.style.width = (Math.min(1, Math.max(0, f)) * 100).toFixed(1) + "%"; e.className = barClass(f); }

  // ---- network ----
  async function getJSON(path) {
    const r = await fetch(path, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } });
    if (r.status === 401) { const e = new Error("unauthorized"); e.unauthorized = true; throw e; }
    if (!r.ok) { const e = new Error("HTTP " + r.status); e.status = r.status; throw e; }
    return r.json();
  }
  function setLive(ok, text) {
    $("live").className = "live " + (ok ? "on" : "off");
    setText("live-text", text);
  }

  // ---- views ----
  function showLogin(msg) {
    stop();
    $("dash-view").hidden = true;
    $("logout-form").hidden = true;
    $("login-view").hidden = false;
    setText("login-error", msg || "");
    setLive(false, "not logged in");
    $("token").focus();
  }
  function showDash() {
    $("login-view").hidden = true;
    $("dash-view").hidden = false;
    $("logout-form").hidden = false;
    start();
  }

  async function login(ev) {
    ev.preventDefault();
    const body = new URLSearchParams();
    body.set("token", $("token").value);
    const r = await fetch("login", { method: "POST", body, credentials: "same-origin" });
    $("token").value = "";
    if (r.status === 204) { showDash(); return; }
    showLogin(r.status === 401 ? "Wrong token." : "Login failed (HTTP " + r.status + ").");
  }
  async function logout(ev) {
    ev.preventDefault();
    await fetch("logout", { method: "POST", credentials: "same-origin" });
    selected = null;
    showLogin("Logged out.");
  }

  function stop() { gen++; if (timer) { clearTimeout(timer); timer = null; } }
  function start() { stop(); tick(gen); }

  async function tick(g) {
    try {
      const ov = await getJSON("api/overview");
      if (g !== gen) return;
      lastOverview = ov;
      renderOverview(ov);
      if (selected) {
        try {
          const v = await getJSON("api/tasks/" + encodeURIComponent(selected));
          if (g !== gen) return;
          renderTask(v, new Date(ov.now));
        } catch (e) {
          if (e.unauthorized) throw e;
          if (e.status === 404) { selected = null; $("task-view").hidden = true; }
        }
      }
      setLive(true, "live · " + new Date(ov.now).toLocaleTimeString());
    } catch (e) {
      if (g !== gen) return;
      if (e.unauthorized) { showLogin("Session ended: log in again."); return; }
      setLive(false, "disconnected, retrying");
    }
    if (g !== gen) return;
    timer = setTimeout(() => tick(g), POLL_MS);
  }

  function renderOverview(ov) {
    const now = new Date(ov.now);
    const tasks = ov.tasks;
    let running = 0, failed = 0, src = 0, delivered = 0, members = 0;
    for (const t of tasks) {
      if (t.state === "failed") failed++; else if (t.state !== "succeeded") running++;
      src += t.bytesFromSource; delivered += t.bytesFromCdn + t.bytesFromPeers; members += t.peers;
    }
    setText("s-tasks", String(ov.totalTasks));
    setText("s-tasks-sub", running + " running · " + failed + " failed");
    setText("s-peers", String(ov.peers));
    setText("s-peers-sub", members + " task memberships");
    setText("s-offload", delivered > 0 ? pct(Math.max(0, 1 - src / delivered)) : "–");
    setText("s-offload-sub", bytes(src) + " origin · " + bytes(delivered) + " out");
    const cdn = ov.cdn;
    setText("s-disk", bytes(cdn.used));
    if (cdn.quota > 0) { setBar("s-disk-bar", cdn.used / cdn.quota); setText("s-disk-sub", pct(cdn.used / cdn.quota) + " of " + bytes(cdn.quota) + " quota"); }
    else { setBar("s-disk-bar", 0); setText("s-disk-sub", "no quota set"); }
    setText("s-slots", cdn.slotsBusy + " / " + cdn.slotsTotal);
    setBar("s-slots-bar", cdn.slotsTotal ? cdn.slotsBusy / cdn.slotsTotal : 0);
    setText("s-slots-sub", cdn.assignments + " pieces in flight in all");
    setText("s-fetches", String(cdn.fetches));
    setText("s-fetches-sub", cdn.fetches ? bytes(cdn.fetching) + " read so far" : "idle");

    setText("tasks-note", ov.totalTasks > tasks.length ? "the " + tasks.length + " most recent of " + ov.totalTasks : "");
    const rows = tasks.map((t) => {
      const prog = t.pieceCount > 0 ? t.published / t.pieceCount : (t.state === "succeeded" ? 1 : 0);
      const reason = t.error ? '<span class="reason">' + esc(t.error) + "</span>" : "";
      return '<tr data-id="' + esc(t.taskId) + '"' + (t.taskId === selected ? ' class="sel"' : "") + ">" +
        '<td><span class="pill ' + esc(t.state) + '">' + esc(t.state) + "</span></td>" +
        '<td title="' + esc(t.url || t.taskId) + '"><span class="mono">' + esc(taskName(t)) + "</span>" + reason + "</td>" +
        '<td class="num">' + (t.size >= 0 ? bytes(t.size) : "–") + "</td>" +
        '<td><div class="prog"><div class="bar"><i data-w="' + (prog * 100).toFixed(1) + '"></i></div><span>' + pct(prog) + "</span></div></td>" +
        '<td class="num">' + bytes(t.bytesFromSource) + "</td>" +
        '<td class="num">' + bytes(t.bytesFromCdn) + "</td>" +
        '<td class="num">' + bytes(t.bytesFromPeers) + "</td>" +
        '<td class="num">' + pct(t.offload) + "</td>" +
        '<td class="num" title="complete / members">' + t.complete + " / " + t.peers + "</td>" +
        '<td class="num">' + age(t.createdAt, now) + "</td></tr>";
    });
    const html = rows.length ? rows.join("") : '<tr class="empty"><td colspan="10">No tasks yet: pull an image or dfget a file through a dfdaemon.</td></tr>';
    const body = $("tasks-body");
    put(body, html);

    setText("preheats-note", ov.preheatsNote || "");
    const ph = ov.preheats.map((p) => {
      let done = 0, all = 0;
      for (const l of p.layers || []) { all += l.pieceCount || 0; done += l.published || 0; }
      const f = p.state === "succeeded" ? 1 : all > 0 ? done / all : 0;
      const layers = (p.layers || []).length;
      return "<tr><td><span class=\"pill " + esc(p.state) + "\">" + esc(p.state) + "</span></td>" +
        '<td class="mono">' + esc(p.id) + "</td>" +
        '<td title="' + esc(p.image || p.url || "") + '">' + esc(p.image || p.url || "") +
        (p.error ? '<span class="reason">' + esc(p.error) + "</span>" : "") + "</td>" +
        '<td><div class="prog"><div class="bar"><i data-w="' + (f * 100).toFixed(1) + '"></i></div><span>' + pct(f) + "</span></div>" +
        '<span class="muted small">' + layers + " blob" + (layers === 1 ? "" : "s") + "</span></td>" +
        '<td class="num">' + age(p.createdAt, now) + " ago</td></tr>";
    });
    const phtml = ph.length ? ph.join("") : '<tr class="empty"><td colspan="5">No preheats.</td></tr>';
    put($("preheats-body"), phtml);
  }

  // widths sizes the progress bars: the CSP allows no inline styles in
  // markup, only through the CSSOM.
  function widths(root) { for (const e of root.querySelectorAll("[data-w]")) e.style.width = e.dataset.w + "%"; }
  // put replaces el's content only when it changed: no flicker, no lost
  // hover between polls.
  const rendered = new WeakMap();
  function put(el, html) {
    if (rendered.get(el) === html) return;
    el.innerHTML = html;
    widths(el);
    rendered.set(el, html);
  }

  function bit(b64, i) { return b64 && (b64.charCodeAt(i >> 3) >> (i & 7)) & 1; }
  function decode(s) { return s ? atob(s) : ""; }

  function renderTask(v, now) {
    $("task-view").hidden = false;
    setText("tv-title", taskName(v));
    setText("tv-sub", v.state + " · " + (v.size >= 0 ? bytes(v.size) : "size unknown") + " · " + v.pieceCount + " pieces of " +
      bytes(v.pieceSize) + " · CDN fanout " + v.cdnFanout + " · " + age(v.createdAt, now) + " old" + (v.error ? " · " + v.error : ""));
    drawPieceMap(v);
    const rows = v.members.map((m) => {
      const f = v.pieceCount > 0 ? m.pieces / v.pieceCount : 0;
      return "<tr><td title=\"" + esc(m.id + " " + m.addr) + "\">" + esc(m.id) + (m.struck ? '<span class="pill barred">barred</span>' : "") + "</td>" +
        '<td class="num">' + m.pieces + " (" + pct(f) + ")</td>" +
        '<td class="num">' + rate(m.downloadRate) + "</td>" +
        '<td class="num">' + m.uploading + "</td>" +
        '<td class="num">' + m.piecesIn + " / " + m.piecesOut + "</td>" +
        '<td class="num">' + m.strikes + "</td>" +
        '<td class="num">' + age(m.lastSeen, now) + "</td></tr>";
    });
    const html = rows.length ? rows.join("") : '<tr class="empty"><td colspan="7">No members.</td></tr>';
    put($("members-body"), html);
    drawGraph(v);
  }

  function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

  function drawPieceMap(v) {
    const c = $("piecemap");
    const n = Math.max(v.pieceCount, 0) || (decode(v.cdnHeld).length * 8);
    const rows = [{ id: "CDN", held: decode(v.cdnHeld), cdn: true }]
      .concat(v.members.map((m) => ({ id: m.id, held: decode(m.held) })));
    const shown = rows.slice(0, MAX_ROWS);
    const flight = new Map();
    for (const t of v.inFlight) { if (!flight.has(t.to)) flight.set(t.to, new Set()); flight.get(t.to).add(t.piece); }
    const dpr = window.devicePixelRatio || 1;
    const labelW = 150, rowH = shown.length > 24 ? 8 : 14, gap = 2;
    const w = c.clientWidth || 800;
    const h = shown.length * (rowH + gap) + 2;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr); c.height = Math.round(h * dpr); c.style.height = h + "px";
    }
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const cw = n > 0 ? (w - labelW) / n : 0;
    const col = { held: css("--ok"), flight: css("--warn"), cdn: css("--cdn"), miss: css("--miss"), text: css("--muted") };
    g.font = (rowH > 10 ? 11 : 9) + "px " + css("--mono");
    g.textBaseline = "middle";
    shown.forEach((r, y) => {
      const top = y * (rowH + gap) + 1;
      g.fillStyle = col.text;
      const label = r.id.length > 20 ? r.id.slice(0, 19) + "…" : r.id;
      g.fillText(label, 0, top + rowH / 2);
      g.fillStyle = col.miss;
      g.fillRect(labelW, top, w - labelW, rowH);
      const fl = flight.get(r.id);
      // Contiguous runs of one colour are drawn as one rectangle.
      let runStart = -1, runColor = null;
      const flush = (end) => {
        if (runColor) {
          const x0 = labelW + runStart * cw, x1 = labelW + end * cw;
          g.fillStyle = runColor;
          g.fillRect(x0, top, Math.max(1, x1 - x0 - (cw >= 4 ? 1 : 0)), rowH);
        }
      };
      for (let i = 0; i < n; i++) {
        const color = bit(r.held, i) ? (r.cdn ? col.cdn : col.held) : fl && fl.has(i) ? col.flight : null;
        if (color !== runColor || cw >= 4) { flush(i); runStart = i; runColor = color; }
      }
      flush(n);
    });
    const inflight = v.inFlight.length;
    setText("pm-note", n + " pieces · " + (rows.length - 1) + " members" +
      (rows.length > shown.length ? " (first " + (shown.length - 1) + " drawn)" : "") + " · " + inflight + " in flight");
  }

  const MAX_NODES = 40; // graph nodes drawn (CDN + members)

  function drawGraph(v) {
    const members = v.members.slice(0, MAX_NODES - 1);
    const nodes = [v.cdnId].concat(members.map((m) => m.id));
    const idx = new Map(nodes.map((id, i) => [id, i]));
    const dense = nodes.length > 16;
    const W = 520, H = dense ? 520 : 340, cx = W / 2, cy = H / 2, R = Math.min(W, H) / 2 - (dense ? 30 : 46);
    const NR = dense ? 6 : 11; // node radius; dense graphs name nodes in tooltips only
    const pos = nodes.map((id, i) => {
      const a = -Math.PI / 2 + (2 * Math.PI * i) / nodes.length;
      return nodes.length === 1 ? [cx, cy] : [cx + R * Math.cos(a), cy + R * Math.sin(a)];
    });
    const maxP = v.edges.reduce((m, e) => Math.max(m, e.pieces), 1);
    let s = '<svg viewBox="0 0 ' + W + " " + H + '" role="img" aria-label="transfer graph">' +
      '<defs><marker id="ar" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="9" markerHeight="9" orient="auto-start-reverse">' +
      '<path d="M0,0L10,5L0,10z" fill="' + css("--accent") + '"/></marker>' +
      '<marker id="arf" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="9" markerHeight="9" orient="auto-start-reverse">' +
      '<path d="M0,0L10,5L0,10z" fill="' + css("--warn") + '"/></marker></defs>';
    const line = (a, b, bend) => {
      const [x1, y1] = pos[a], [x2, y2] = pos[b];
      const dx = x2 - x1, dy = y2 - y1, d = Math.hypot(dx, dy) || 1, r = NR + 2;
      const sx = x1 + (dx / d) * r, sy = y1 + (dy / d) * r, ex = x2 - (dx / d) * r, ey = y2 - (dy / d) * r;
      const mx = (sx + ex) / 2 - (dy / d) * bend, my = (sy + ey) / 2 + (dx / d) * bend;
      return { path: "M" + sx.toFixed(1) + "," + sy.toFixed(1) + "Q" + mx.toFixed(1) + "," + my.toFixed(1) + " " + ex.toFixed(1) + "," + ey.toFixed(1), mx, my };
    };
    for (const e of v.edges) {
      const a = idx.get(e.from), b = idx.get(e.to);
      if (a == null || b == null || a === b) continue;
      const l = line(a, b, 14);
      const wdt = 1 + 3 * Math.sqrt(e.pieces / maxP);
      s += '<path d="' + l.path + '" fill="none" stroke="' + css("--accent") + '" stroke-opacity="' + (dense ? 0.45 : 0.7) + '" stroke-width="' + wdt.toFixed(1) + '" marker-end="url(#ar)"><title>' +
        esc(e.from + " → " + e.to + ": " + e.pieces + " pieces") + "</title></path>" +
        (dense ? "" : '<text class="cnt" x="' + l.mx.toFixed(1) + '" y="' + l.my.toFixed(1) + '" text-anchor="middle">' + e.pieces + "</text>");
    }
    const fl = new Map();
    for (const t of v.inFlight) { const k = t.from + "\u0000" + t.to; fl.set(k, (fl.get(k) || 0) + 1); }
    for (const [k, c] of fl) {
      const [from, to] = k.split("\u0000");
      const a = idx.get(from), b = idx.get(to);
      if (a == null || b == null || a === b) continue;
      const l = line(a, b, -14);
      s += '<path d="' + l.path + '" fill="none" stroke="' + css("--warn") + '" stroke-dasharray="4 3" stroke-width="1.5" marker-end="url(#arf)"><title>' +
        esc(from + " → " + to + ": " + c + " in flight") + "</title></path>";
    }
    nodes.forEach((id, i) => {
      const [x, y] = pos[i], cdn = i === 0;
      const m = cdn ? null : members[i - 1];
      const fill = cdn ? css("--cdn") : m.struck ? css("--bad") : v.pieceCount > 0 && m.pieces >= v.pieceCount ? css("--ok") : css("--accent");
      const label = cdn ? "CDN" : id.length > 16 ? id.slice(0, 15) + "…" : id;
      const below = y >= cy;
      s += '<g><title>' + esc(cdn ? "CDN (" + id + ")" : id + " · " + m.pieces + " pieces") + '</title><circle cx="' + x.toFixed(1) + '" cy="' + y.toFixed(1) +
        '" r="' + NR + '" fill="' + fill + '" stroke="' + css("--panel2") + '" stroke-width="2"/>' +
        (dense && !cdn ? "" : '<text x="' + x.toFixed(1) + '" y="' + (y + (below ? NR + 15 : -NR - 7)).toFixed(1) + '" text-anchor="middle">' + esc(label) + "</text>") + "</g>";
    });
    if (v.members.length > members.length) {
      s += '<text class="cnt" x="4" y="' + (H - 6) + '">first ' + members.length + " of " + v.members.length + " members drawn</text>";
    }
    s += "</svg>";
    $("graph").classList.toggle("dense", dense);
    put($("graph"), s);
  }

  function selectRow(ev) {
    const tr = ev.target.closest("tr[data-id]");
    if (!tr) return;
    selected = tr.dataset.id;
    for (const r of $("tasks-body").querySelectorAll("tr.sel")) r.classList.remove("sel");
    tr.classList.add("sel");
    $("task-view").hidden = false;
    start();
  }

  async function boot() {
    $("login-form").addEventListener("submit", login);
    $("logout-form").addEventListener("submit", logout);
    $("tasks-body").addEventListener("click", selectRow);
    window.addEventListener("resize", () => { if (lastOverview && selected) start(); });
    try {
      const r = await fetch("session", { credentials: "same-origin", cache: "no-store" });
      const s = await r.json();
      if (s.authenticated) showDash(); else showLogin(location.hash === "#login-failed" ? "Wrong token." : "");
    } catch (e) {
      showLogin("Cannot reach the supernode.");
    }
  }
  boot();
})();
