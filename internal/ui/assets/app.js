// lockd console: reads the v1 API of the lockd that served it, with the
// token the user gave (sessionStorage), and renders with textContent only.
// It never renders a lease id: it only ever reads the fields it names.
'use strict';

const TOKEN = 'lockd.token';
// A change must show within a second: refresh a little more often than that,
// leaving the rest of the second to the requests themselves.
const REFRESH_MS = 750;
const RECONNECT_MS = 1000;
const MAX_EVENTS = 50;

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

let caps = null; // GET /v1/capabilities, once known
let view = null; // the current view's stop function
// skew is the server's clock minus this browser's, when they differ by more
// than the Date header's one-second grain can tell: countdowns run on the
// server's time, which decides expiry.
let skew = 0;
const serverNow = () => Date.now() + skew;

function noteDate(res) {
  const d = Date.parse(res.headers.get('Date') || '');
  if (isNaN(d)) return;
  const off = d + 500 - Date.now();
  skew = Math.abs(off) > 2000 ? off : 0;
}

function token() { return sessionStorage.getItem(TOKEN) || ''; }

async function api(path, opts = {}) {
  const headers = { Accept: 'application/json', ...(opts.headers || {}) };
  if (token() && !opts.anonymous) headers.Authorization = 'Bearer ' + token();
  const res = await fetch(path, { headers, signal: opts.signal, cache: 'no-store' });
  noteDate(res);
  let body = null;
  if ((res.headers.get('Content-Type') || '').includes('json')) {
    try { body = await res.json(); } catch (e) { body = null; }
  }
  return { ok: res.ok, status: res.status, body };
}

function problemText(r) {
  if (r.body && r.body.detail) return r.body.detail + (r.body.code ? ' (' + r.body.code + ')' : '');
  return 'HTTP ' + r.status;
}

// ---- time -----------------------------------------------------------------

function timeEl(iso) {
  const t = document.createElement('time');
  if (!iso) { t.textContent = '—'; return t; }
  const d = new Date(iso);
  t.dateTime = iso;
  t.title = d.toISOString() + ' UTC (server: ' + iso + ')';
  const today = new Date().toDateString() === d.toDateString();
  t.textContent = today ? d.toLocaleTimeString() : d.toLocaleString();
  return t;
}

function setTime(el, iso) { el.replaceChildren(timeEl(iso)); }

function leftText(ms) {
  if (ms <= 0) return 'expired';
  const s = ms / 1000;
  if (s < 60) return s.toFixed(1) + ' s';
  const m = Math.floor(s / 60);
  if (m < 60) return m + ' m ' + String(Math.floor(s % 60)).padStart(2, '0') + ' s';
  return Math.floor(m / 60) + ' h ' + String(m % 60).padStart(2, '0') + ' m';
}

// Every element with data-expires shows the time left until then.
function tick() {
  const now = serverNow();
  for (const el of document.querySelectorAll('[data-expires]')) {
    const left = Date.parse(el.dataset.expires) - now;
    el.textContent = leftText(left);
    el.classList.toggle('soon', left < 3000);
  }
}

function setLeft(el, iso) {
  el.classList.add('left');
  if (iso) { el.dataset.expires = iso; } else { delete el.dataset.expires; el.textContent = '—'; }
  tick();
}

// ---- banner and token ----------------------------------------------------

function banner(text, ok) {
  const b = $('banner');
  b.textContent = text;
  b.classList.toggle('ok', !!ok);
  b.hidden = false;
}

function askToken(why) {
  stopView();
  caps = null;
  banner(why);
  for (const s of document.querySelectorAll('main section')) s.hidden = true;
  $('signout').hidden = !token();
  $('token-form').hidden = false;
  $('token').focus();
}

async function boot() {
  $('token-form').hidden = true;
  // Asked without a token first: that tells whether this lockd checks tokens.
  let r;
  try { r = await api('/v1/capabilities', { anonymous: true }); } catch (e) {
    banner('Cannot reach lockd: ' + e.message + '. Retrying…');
    setTimeout(boot, 2000);
    return;
  }
  if (r.status === 401) {
    if (!token()) { askToken('This lockd checks tokens: give one to see the locks it may read.'); return; }
    r = await api('/v1/capabilities');
    if (r.status === 401) { askToken('That token was refused. Give another one.'); return; }
    if (r.ok) banner('Signed in with a token: you see only the keys it may read.', true);
    $('signout').hidden = false;
  } else if (r.ok) {
    banner('No authentication: this lockd runs without --auth-file, so anyone who can reach it may list, acquire and release every lock.');
    $('signout').hidden = true;
  }
  if (!r.ok) {
    banner('lockd answered ' + problemText(r) + '. Retrying…');
    setTimeout(boot, 2000);
    return;
  }
  caps = r.body;
  $('backend').textContent = 'backend: ' + caps.backend;
  route(false);
}

// ---- routing ---------------------------------------------------------------

function stopView() {
  if (view) view();
  view = null;
}

function route(moveFocus) {
  if (!caps) return;
  stopView();
  const h = location.hash.replace(/^#\/?/, '');
  const [name, ...rest] = h.split('/');
  const arg = decodeURIComponent(rest.join('/'));
  for (const s of document.querySelectorAll('main section')) s.hidden = true;
  $('nav-locks').removeAttribute('aria-current');
  $('nav-leaders').removeAttribute('aria-current');
  let section;
  if (name === 'key' && arg) {
    section = $('view-key');
    view = showKey(arg);
  } else if (name === 'leaders') {
    section = $('view-leaders');
    $('nav-leaders').setAttribute('aria-current', 'page');
    view = showLeaders(arg);
  } else {
    section = $('view-locks');
    $('nav-locks').setAttribute('aria-current', 'page');
    view = showLocks(new URLSearchParams(h.split('?')[1] || '').get('prefix') || '');
  }
  section.hidden = false;
  if (moveFocus) section.querySelector('h2').focus();
}

// poll calls f now and then every REFRESH_MS (counted from each start) until
// the returned stop is called; f gets a signal that aborts at the stop.
function poll(f) {
  const ctl = new AbortController();
  let timer = null;
  const loop = async () => {
    const start = Date.now();
    try { await f(ctl.signal); } catch (e) { if (!ctl.signal.aborted) console.warn(e); }
    if (!ctl.signal.aborted) timer = setTimeout(loop, Math.max(0, REFRESH_MS - (Date.now() - start)));
  };
  loop();
  return () => { ctl.abort(); clearTimeout(timer); };
}

function cell(tr, i, label) {
  while (tr.children.length <= i) tr.appendChild(document.createElement('td'));
  const td = tr.children[i];
  td.dataset.label = label;
  return td;
}

// ---- held locks --------------------------------------------------------------

function showLocks(prefix) {
  $('prefix').value = prefix;
  const tbody = $('locks').querySelector('tbody');
  tbody.replaceChildren();
  const status = $('locks-status');
  status.textContent = 'Loading…';
  status.classList.remove('bad');
  return poll(async (signal) => {
    const r = await api('/v1/locks?' + (prefix ? 'prefix=' + enc(prefix) + '&' : '') + 'limit=100', { signal });
    if (signal.aborted) return;
    if (!r.ok) {
      tbody.replaceChildren();
      $('locks-more').hidden = true;
      status.classList.add('bad');
      status.textContent = r.status === 403
        ? (prefix ? 'This token may not read keys under “' + prefix + '”.' : 'This token may not list every key: type a prefix it may read.')
        : 'lockd answered ' + problemText(r);
      return;
    }
    const locks = r.body.locks.filter((l) => l.held);
    // The list has no waiter counts: each row asks for its key's.
    const details = await Promise.all(locks.map((l) =>
      api('/v1/locks/' + enc(l.key), { signal }).then((x) => (x.ok ? x.body : null), () => null)));
    if (signal.aborted) return;
    const rows = [];
    locks.forEach((l, i) => {
      const d = details[i] || l; // the newer answer wins
      if (d.held) rows.push({ ...d, waiters: details[i] ? details[i].waiters : undefined });
    });
    renderLocks(tbody, rows);
    status.classList.remove('bad');
    status.textContent = rows.length + (rows.length === 1 ? ' lock' : ' locks') + ' held' +
      (prefix ? ' under “' + prefix + '”' : '') + ' · refreshed ' + new Date().toLocaleTimeString();
    $('locks-more').hidden = !r.body.next;
    $('locks-more').textContent = 'Only the first 100 are shown: narrow the prefix.';
  });
}

function renderLocks(tbody, rows) {
  const old = new Map([...tbody.children].map((tr) => [tr.dataset.key, tr]));
  let at = 0;
  for (const l of rows) {
    let tr = old.get(l.key);
    old.delete(l.key);
    if (!tr) {
      tr = document.createElement('tr');
      tr.dataset.key = l.key;
      const a = document.createElement('a');
      a.href = '#/key/' + enc(l.key);
      a.textContent = l.key;
      a.className = 'mono';
      cell(tr, 0, 'Key').appendChild(a);
    }
    cell(tr, 1, 'Owner').textContent = l.owner || '—';
    const tok = cell(tr, 2, 'Token');
    tok.textContent = String(l.token);
    tok.className = 'num token';
    const left = cell(tr, 3, 'Time left');
    if (left.dataset.expires !== l.expires_at) setLeft(left, l.expires_at);
    setTime(cell(tr, 4, 'Expires'), l.expires_at);
    const w = cell(tr, 5, 'Waiters');
    w.textContent = l.waiters === undefined ? '?' : String(l.waiters);
    w.className = 'num waiters';
    if (tbody.children[at] !== tr) tbody.insertBefore(tr, tbody.children[at] || null);
    at++;
  }
  for (const tr of old.values()) tr.remove();
}

// ---- one key -----------------------------------------------------------------

function showKey(key) {
  $('key-name').textContent = key;
  const list = $('key-events');
  list.replaceChildren();
  const status = $('key-status');
  status.textContent = 'Loading…';
  status.classList.remove('bad');
  let state = null;
  const live = !!(caps.features && caps.features.events);
  $('key-source').textContent = live ? '(live from the event stream)' : '(seen by refreshing; this lockd has no event stream)';

  const show = (s) => {
    state = { ...state, ...s };
    $('key-state').textContent = state.held ? 'held' : 'free';
    $('key-owner').textContent = state.held ? (state.owner || '—') : '—';
    $('key-token').textContent = state.held ? String(state.token) : '—';
    setLeft($('key-left'), state.held ? state.expires_at : '');
    setTime($('key-expires'), state.held ? state.expires_at : '');
    $('key-waiters').textContent = state.waiters === undefined ? '?' : String(state.waiters);
  };
  const note = (kind, e) => {
    const li = document.createElement('li');
    li.appendChild(timeEl(new Date().toISOString()));
    const parts = [' ' + kind];
    if (e.token !== undefined) parts.push('token ' + e.token);
    if (e.owner) parts.push('owner ' + e.owner);
    if (e.last_token !== undefined) parts.push('token ' + e.last_token);
    li.appendChild(document.createTextNode(parts.join(' · ')));
    li.className = 'ev-' + kind;
    list.insertBefore(li, list.firstChild);
    while (list.children.length > MAX_EVENTS) list.lastChild.remove();
  };
  const failed = (r) => {
    status.classList.add('bad');
    status.textContent = r.status === 403 ? 'This token may not read this key.' : 'lockd answered ' + problemText(r);
    if (r.status === 403) { state = null; show({ held: false, waiters: undefined }); }
  };

  const stopPoll = poll(async (signal) => {
    const r = await api('/v1/locks/' + enc(key), { signal });
    if (signal.aborted) return;
    if (!r.ok) { failed(r); return; }
    const n = r.body;
    if (!live) {
      // No stream: tell changes from the difference of two answers.
      if (!state) note('snapshot', n.held ? n : {});
      else {
        if (state.held && (!n.held || n.token !== state.token)) {
          note(Date.parse(state.expires_at) <= serverNow() ? 'expired' : 'released', { token: state.token });
        }
        if (n.held && (!state.held || n.token !== state.token)) note('acquired', n);
      }
    }
    if (!n.held) { n.owner = undefined; n.token = undefined; n.expires_at = undefined; }
    show(n);
    status.classList.remove('bad');
    status.textContent = 'refreshed ' + new Date().toLocaleTimeString();
  });
  if (!live) return stopPoll;

  const stopStream = follow('/v1/locks/' + enc(key) + '/events', {
    snapshot: (e) => { note('snapshot', e.held ? e : {}); show(e.held ? e : { held: false }); },
    acquired: (e) => { note('acquired', e); show({ held: true, owner: e.owner, token: e.token, expires_at: e.expires_at }); },
    released: (e) => { note('released', e); if (state && state.token === e.token) show({ held: false }); },
    expired: (e) => { note('expired', e); if (state && state.token === e.token) show({ held: false }); },
    resync: (e) => note('resync', e),
    shutdown: (e) => note('lockd stopping', e),
  }, failed);
  return () => { stopPoll(); stopStream(); };
}

// follow reads a text/event-stream with fetch (EventSource cannot send a
// token), calling on[event] with each parsed data, and reconnects with
// Last-Event-ID until stopped.
function follow(path, on, failed) {
  const ctl = new AbortController();
  let lastId = '';
  const once = async () => {
    const headers = { Accept: 'text/event-stream' };
    if (lastId) headers['Last-Event-ID'] = lastId;
    if (token()) headers.Authorization = 'Bearer ' + token();
    const res = await fetch(path, { headers, signal: ctl.signal, cache: 'no-store' });
    if (!res.ok) {
      let body = null;
      try { body = await res.json(); } catch (e) { body = null; }
      failed({ status: res.status, body });
      return;
    }
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value.replace(/\r\n?/g, '\n');
      let end;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const frame = buf.slice(0, end);
        buf = buf.slice(end + 2);
        let event = 'message';
        const data = [];
        for (const line of frame.split('\n')) {
          if (!line || line[0] === ':') continue;
          const i = line.indexOf(':');
          const field = i < 0 ? line : line.slice(0, i);
          const v = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
          if (field === 'event') event = v;
          else if (field === 'data') data.push(v);
          else if (field === 'id') lastId = v;
        }
        if (!data.length || !on[event]) continue;
        let parsed;
        try { parsed = JSON.parse(data.join('\n')); } catch (e) { continue; }
        on[event](parsed);
      }
    }
  };
  const loop = async () => {
    while (!ctl.signal.aborted) {
      try { await once(); } catch (e) { if (ctl.signal.aborted) return; }
      await new Promise((ok) => setTimeout(ok, RECONNECT_MS));
    }
  };
  loop();
  return () => ctl.abort();
}

// ---- leaders -----------------------------------------------------------------

function showLeaders(name) {
  const status = $('leader-status');
  const dl = $('leader-detail');
  $('election').value = name;
  dl.hidden = true;
  status.classList.remove('bad');
  if (!caps.features || !caps.features.elections) {
    status.textContent = 'This lockd\'s backend (' + caps.backend + ') has no elections.';
    $('election-form').hidden = true;
    return null;
  }
  $('election-form').hidden = false;
  if (!name) { status.textContent = ''; return null; }
  status.textContent = 'Loading…';
  return poll(async (signal) => {
    const r = await api('/v1/elections/' + enc(name), { signal });
    if (signal.aborted) return;
    if (!r.ok) {
      dl.hidden = true;
      status.classList.add('bad');
      status.textContent = r.status === 403 ? 'This token may not read this election.' : 'lockd answered ' + problemText(r);
      return;
    }
    const e = r.body;
    const l = e.leader;
    $('leader-name').textContent = e.name;
    $('leader-owner').textContent = l ? (l.owner || '—') : 'no leader';
    $('leader-term').textContent = l ? String(l.term) : '—';
    $('leader-value').textContent = l ? l.value : '—';
    setLeft($('leader-left'), l ? l.expires_at : '');
    setTime($('leader-expires'), l ? l.expires_at : '');
    $('leader-candidates').textContent = String(e.candidates);
    dl.hidden = false;
    status.classList.remove('bad');
    status.textContent = 'refreshed ' + new Date().toLocaleTimeString();
  });
}

// ---- wiring ------------------------------------------------------------------

document.addEventListener('DOMContentLoaded', () => {
  for (const h of document.querySelectorAll('main h2')) h.tabIndex = -1;
  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN, $('token').value.trim());
    $('token').value = '';
    boot();
  });
  $('signout').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN);
    boot();
  });
  $('filter-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const p = $('prefix').value.trim();
    location.hash = '#/locks' + (p ? '?prefix=' + enc(p) : '');
  });
  $('election-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    location.hash = '#/leaders/' + enc($('election').value.trim());
  });
  window.addEventListener('hashchange', () => route(true));
  setInterval(tick, 200);
  boot();
});
