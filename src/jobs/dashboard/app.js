// The jobs dashboard's page. Everything a job carries is put in the page as
// text (textContent), never as markup, and the server's policy allows no
// inline script: a job whose arguments hold "<script>" shows that text.
'use strict';

const base = document.body.dataset.base;
const main = document.getElementById('main');
const states = ['scheduled', 'available', 'awaiting', 'running', 'retryable', 'succeeded', 'failed', 'cancelled', 'deleted'];
let overview = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'onclick' || k === 'onsubmit' || k === 'onchange') e[k] = v;
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// Each showing of a page counts here: one whose data came back after the
// user moved on (or after a later showing of the same page) shows nothing.
let generation = 0;

// The page's content, for showing `mine`; absent parts (null) are left out.
function setMain(mine, ...children) {
  if (mine !== generation) return;
  main.replaceChildren(...children.flat().filter(c => c !== null && c !== undefined));
}

function utc(ms) {
  if (!ms) return '';
  return new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}
function time(ms) {
  return el('span', { title: ms ? new Date(ms).toString() : '' }, utc(ms));
}
function inZone(ms, zone) {
  try {
    return new Intl.DateTimeFormat('en-GB', { timeZone: zone, dateStyle: 'short', timeStyle: 'medium' }).format(new Date(ms));
  } catch (e) {
    return utc(ms);
  }
}

async function api(path) {
  const r = await fetch(base + '/api/' + path, { credentials: 'same-origin' });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}
async function post(path) {
  const r = await fetch(base + '/api/' + path, {
    method: 'POST', credentials: 'same-origin', headers: { 'X-CSRF-Token': overview ? overview.csrf || '' : '' },
  });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}
function canAct() { return overview && overview.access === 'full'; }
function fail(e) { main.prepend(el('div', { class: 'error', role: 'alert' }, String(e.message || e))); }

function route() {
  const hash = location.hash.slice(1) || '/';
  const [path, query] = hash.split('?');
  return { path, params: new URLSearchParams(query || '') };
}

function chart(points, label) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('class', 'chart');
  svg.setAttribute('viewBox', '0 0 600 160');
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('aria-label', label);
  svg.dataset.points = String(points.length);
  const max = Math.max(1, ...points.map(p => Math.max(p[1], p[2])));
  const line = (i, cls) => {
    const pl = document.createElementNS(ns, 'polyline');
    pl.setAttribute('class', cls);
    pl.setAttribute('points', points.map((p, k) =>
      `${(k / Math.max(1, points.length - 1)) * 600},${155 - (p[i] / max) * 145}`).join(' '));
    svg.append(pl);
  };
  line(1, 's');
  line(2, 'f');
  const last = points.length ? points[points.length - 1] : [0, 0, 0];
  return el('div', {},
    el('h3', {}, label),
    svg,
    el('div', { class: 'legend' },
      el('span', { class: 'succeeded' }, `succeeded ${last[1].toFixed(1)}/s`),
      el('span', { class: 'failed' }, `failed ${last[2].toFixed(1)}/s`),
      el('span', {}, `peak ${max.toFixed(1)}/s`)));
}

function renderOverview(mine) {
  const o = overview;
  const cards = el('div', { class: 'cards' }, states.map(s =>
    el('div', { class: 'card ' + s, 'data-state': s },
      el('a', { href: `#/jobs?state=${s}` }, el('div', { class: 'n' }, o.counts[s] || 0), s))));
  setMain(mine, 
    o.error ? el('div', { class: 'error' }, 'The storage failed at the last poll: ' + o.error) : null,
    cards,
    chart(o.per_second.slice(-300), 'Last five minutes, per second'),
    chart(o.per_minute.slice(-60), 'Last hour, per minute'),
    chart(o.per_minute, 'Last day, per minute'));
}

async function renderJobs(mine, params) {
  const form = el('form', { class: 'filters' });
  const state = el('select', { name: 'state' }, el('option', { value: '' }, 'any state'),
    states.map(s => el('option', { value: s, selected: params.get('state') === s }, s)));
  const field = (name, placeholder) => el('input', { name, placeholder, value: params.get(name) || '' });
  const when = (name, label) => el('label', {}, label + ' ',
    el('input', { type: 'datetime-local', name, value: params.get(name) || '' }));
  form.append(state, field('queue', 'queue'), field('kind', 'kind'), field('q', 'text in arguments'),
    when('from', 'created from (UTC)'), when('to', 'to'), el('button', { type: 'submit' }, 'Search'));
  form.onsubmit = e => {
    e.preventDefault();
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) p.set(k, v);
    location.hash = '#/jobs?' + p.toString();
  };
  const query = new URLSearchParams();
  for (const k of ['state', 'queue', 'kind', 'q', 'before']) if (params.get(k)) query.set(k, params.get(k));
  // The URL keeps the times as typed (UTC); the server takes ms.
  for (const k of ['from', 'to']) {
    if (!params.get(k)) continue;
    const at = Date.parse(params.get(k) + 'Z');
    if (Number.isNaN(at)) throw new Error(`'${params.get(k)}' is not a time (YYYY-MM-DDTHH:MM)`);
    query.set(k, at);
  }
  const page = await api('jobs?' + query.toString());
  const selected = new Set();
  const rows = page.jobs.map(j => {
    const box = el('input', { type: 'checkbox', 'aria-label': 'select job ' + j.id });
    box.onchange = () => box.checked ? selected.add(j.id) : selected.delete(j.id);
    return el('tr', { 'data-id': j.id },
      canAct() ? el('td', {}, box) : null,
      el('td', {}, el('a', { href: `#/job/${j.id}` }, j.id)),
      el('td', {}, j.kind), el('td', {}, j.queue), el('td', { class: j.state }, j.state),
      el('td', {}, `${j.attempt}/${j.max_attempts}`), el('td', {}, time(j.created_at)),
      el('td', { class: 'args' }, j.args), el('td', { class: 'failed' }, j.last_error));
  });
  const filter = new URLSearchParams(query);
  filter.delete('before');
  const bulk = canAct() ? el('div', { class: 'actions' }, ['retry', 'delete', 'cancel'].map(a =>
    el('button', {
      'data-action': a, onclick: async () => {
        if (!selected.size) return;
        try { await post(`job/${a}?ids=${[...selected].join(',')}`); show(); } catch (e) { fail(e); }
      },
    }, a + ' selected')), filter.toString() === '' ? [] : ['retry', 'delete', 'cancel'].map(a =>
    el('button', {
      'data-action': 'all-' + a, onclick: async () => {
        if (!confirm(`${a} every job this filter matches?`)) return;
        try {
          const r = await post(`jobs/${a}?${filter.toString()}`);
          show();
          if (r.more) fail(new Error(`${r.done.length} done; more match: run it again for the rest`));
        } catch (e) { fail(e); }
      },
    }, a + ' all matching'))) : null;
  setMain(mine, form,
    page.window_exceeded ? el('div', { class: 'note' },
      `Searched the newest ${page.scanned} jobs that match the state (the limit is ${page.scan_limit}); older ones are on the next page.`) : null,
    bulk,
    el('table', {}, el('thead', {}, el('tr', {}, canAct() ? el('th', {}, '') : null,
      ['id', 'kind', 'queue', 'state', 'attempt', 'created', 'arguments', 'last error'].map(h => el('th', {}, h)))),
      el('tbody', {}, rows)),
    page.jobs.length === 0 ? el('p', {}, 'No job matches.') : null,
    page.next_before ? el('p', {}, el('a', {
      id: 'older', href: '#/jobs?' + (() => { const p = new URLSearchParams(query); p.set('before', page.next_before); return p; })().toString(),
    }, 'Older jobs →')) : null);
}

function pretty(text) {
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch (e) { return text; }
}

async function renderJob(mine, id) {
  const j = await api('job?id=' + encodeURIComponent(id));
  const act = a => el('button', {
    'data-action': a, onclick: async () => {
      try { await post(`job/${a}?ids=${j.id}`); show(); } catch (e) { fail(e); }
    },
  }, a);
  const fields = [['kind', j.kind], ['queue', j.queue], ['state', j.state], ['attempt', `${j.attempt} of ${j.max_attempts}`],
    ['priority', j.priority], ['created', time(j.created_at)], ['run at', time(j.run_at)], ['node', j.node],
    ['unique key', j.unique_key], ['concurrency key', j.concurrency_key], ['recurring job', j.recurring_id],
    ['parent', j.parent_id ? el('a', { href: `#/job/${j.parent_id}` }, j.parent_id) : ''],
    ['continuations', el('span', { id: 'children' }, (j.children || []).map(c =>
      el('a', { href: `#/job/${c.id}`, class: c.state, title: `${c.kind}, ${c.state}` }, `${c.id} (${c.state}) `)))],
    ['last error', j.last_error]];
  setMain(mine, 
    el('h2', {}, `Job ${j.id}`),
    canAct() ? el('div', { class: 'actions' }, act('retry'), act('cancel'), act('delete')) : null,
    el('table', { class: 'fields' }, fields.map(([k, v]) => el('tr', {}, el('th', {}, k), el('td', {}, v)))),
    el('h3', {}, 'Arguments'), el('pre', { id: 'args' }, pretty(j.args)),
    el('h3', {}, 'History'),
    el('table', {}, el('thead', {}, el('tr', {}, ['at', 'from', 'to', 'reason', 'error'].map(h => el('th', {}, h)))),
      el('tbody', {}, (j.history || []).map(h => el('tr', {}, el('td', {}, time(h.at)), el('td', {}, h.from),
        el('td', { class: h.to }, h.to), el('td', {}, h.reason), el('td', { class: 'failed' }, h.error))))));
}

async function renderRecurring(mine) {
  const page = await api('recurring');
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  const act = (r, a) => el('button', {
    'data-action': a, onclick: async () => {
      try { await post(`recurring/${a}?id=${encodeURIComponent(r.id)}`); show(); } catch (e) { fail(e); }
    },
  }, a);
  setMain(mine, el('table', {},
    el('thead', {}, el('tr', {}, ['id', 'expression', 'zone', 'kind', 'next (its zone)', `next (${zone})`, 'last run', 'state', '']
      .map(h => el('th', {}, h)))),
    el('tbody', {}, page.recurring.map(r => el('tr', { 'data-id': r.id },
      el('td', {}, r.id), el('td', {}, r.cron), el('td', {}, r.zone), el('td', {}, r.kind),
      el('td', {}, r.next.map(t => el('div', {}, inZone(t, r.zone)))),
      el('td', {}, r.next.map(t => el('div', {}, inZone(t, zone)))),
      el('td', {}, time(r.last_fire)), el('td', {}, r.paused ? 'paused' : 'active'),
      el('td', {}, canAct() ? [act(r, 'trigger'), act(r, r.paused ? 'resume' : 'pause'), act(r, 'remove')] : null))))));
}

function renderQueues(mine) {
  const act = (q, a) => el('button', {
    'data-action': a, onclick: async () => {
      try { await post(`queue/${a}?name=${encodeURIComponent(q.name)}`); await poll(); show(); } catch (e) { fail(e); }
    },
  }, a);
  setMain(mine, el('table', {},
    el('thead', {}, el('tr', {}, ['queue', ...states, 'at most at once', 'state', ''].map(h => el('th', {}, h)))),
    el('tbody', {}, overview.queues.map(q => el('tr', { 'data-queue': q.name },
      el('td', {}, q.name), states.map(s => el('td', {}, q.counts[s] || 0)),
      el('td', { class: 'limits' }, q.served_by.length
        ? q.served_by.map(n => el('div', { title: 'on node ' + n.node }, `${n.limit} on ${n.node}`)) : 'no node serves it'),
      el('td', {}, q.paused ? 'paused' : 'active'),
      el('td', {}, canAct() ? act(q, q.paused ? 'resume' : 'pause') : null))))));
}

function renderNodes(mine) {
  const o = overview;
  setMain(mine, el('table', {},
    el('thead', {}, el('tr', {}, ['node', 'host', 'pid', 'workers', 'queues', 'running', 'started', 'heartbeat', 'leader']
      .map(h => el('th', {}, h)))),
    el('tbody', {}, o.nodes.map(n => el('tr', { 'data-node': n.id },
      el('td', {}, n.id), el('td', {}, n.host), el('td', {}, n.pid), el('td', {}, n.workers),
      el('td', {}, n.queues.join(', ')), el('td', {}, n.running), el('td', {}, time(n.started_at)),
      el('td', {}, time(n.heartbeat_at)), el('td', { class: 'leader' }, n.id === o.leader ? 'leader' : ''))))),
    o.coordinated ? [el('h3', {}, 'Leases'),
      el('p', { id: 'leader' }, o.leader ? `The leader is ${o.leader}.` : 'No node leads now.'),
      el('table', { id: 'leases' },
        el('thead', {}, el('tr', {}, ['lease', 'holder', 'term', 'expires in'].map(h => el('th', {}, h)))),
        el('tbody', {}, o.leases.map(l => el('tr', { 'data-lease': l.name },
          el('td', {}, l.name), el('td', {}, l.holder || '(free)'), el('td', {}, l.term),
          el('td', {}, l.holder ? `${(l.expires_in_ms / 1000).toFixed(1)} s` : '')))))] : null);
}

function took(o) {
  // An event leaves the day's chart out when it has not changed.
  if (!o.per_minute) o.per_minute = overview ? overview.per_minute : [];
  overview = o;
  document.getElementById('title').textContent = overview.title;
  document.title = overview.title;
  document.getElementById('status').textContent =
    (overview.access === 'full' ? '' : 'read-only · ') + 'updated ' + utc(overview.now);
}

async function poll() {
  took(await api('overview'));
}

async function show() {
  const mine = ++generation;
  const { path, params } = route();
  for (const a of document.querySelectorAll('header nav a'))
    a.classList.toggle('active', a.getAttribute('href') === '#' + path || (path.startsWith('/job/') && a.getAttribute('href') === '#/jobs'));
  try {
    if (!overview) await poll();
    if (path === '/') renderOverview(mine);
    else if (path === '/jobs') await renderJobs(mine, params);
    else if (path.startsWith('/job/')) await renderJob(mine, path.slice(5));
    else if (path === '/recurring') await renderRecurring(mine);
    else if (path === '/queues') renderQueues(mine);
    else if (path === '/nodes') renderNodes(mine);
    else setMain(mine, el('p', {}, 'No such page.'));
  } catch (e) {
    if (mine !== generation) return;
    setMain(mine);
    fail(e);
  }
}

// Live: the server pushes the overview, queues and nodes after each reading
// of its one poller (Server-Sent Events) while the tab is visible; a hidden
// tab closes its stream and is sent nothing.
let events = null;
function listen() {
  if (events || document.visibilityState !== 'visible') return;
  events = new EventSource(base + '/api/events');
  events.onmessage = e => {
    took(JSON.parse(e.data));
    const mine = generation;
    const { path } = route();
    if (path === '/') renderOverview(mine);
    else if (path === '/queues') renderQueues(mine);
    else if (path === '/nodes') renderNodes(mine);
  };
  // The browser reconnects by itself.
  events.onerror = () => { document.getElementById('status').textContent = 'reconnecting…'; };
}
function quiet() {
  if (events) events.close();
  events = null;
}

window.addEventListener('hashchange', show);
document.addEventListener('visibilitychange', () => document.visibilityState === 'visible' ? listen() : quiet());
show();
listen();
