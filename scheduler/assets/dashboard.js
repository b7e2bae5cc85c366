// Tarefa's dashboard: polls the scheduler's JSON API and renders it.
//
// Safety rule of this file: data from tasks (payloads, results, errors, names) reaches the
// page only through textContent, attributes set with setAttribute, or URLs built with
// encodeURIComponent. Never innerHTML. The server's Content-Security-Policy backs this up.
'use strict';

(function () {
  const STATES = ['queued', 'running', 'scheduled', 'retrying', 'dead', 'succeeded', 'cancelled'];
  const COUNTED = ['queued', 'running', 'scheduled', 'retrying', 'dead'];
  const SVG = 'http://www.w3.org/2000/svg';
  const $ = (id) => document.getElementById(id);

  let session = { token_required: false, token_required_for_reads: false, signed_in: true, jaeger_url: null, refresh_ms: 1500 };
  let queues = [];
  // The overview's filters; page tokens are a stack so "newer" can go back.
  const view = { queue: '', state: 'queued', type: '', tokens: [''] };
  let lastTasksKey = '';
  let lastTaskKey = '';
  const cards = new Map();

  // ---- helpers ----

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === 'class') node.className = value;
      else if (name === 'text') node.textContent = value;
      else node.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  async function api(method, path, body) {
    const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (body !== undefined) {
      init.body = body;
    }
    const response = await fetch(path, init);
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (!response.ok) {
      const error = new Error((data && data.error) || (response.status + ' ' + response.statusText));
      error.status = response.status;
      throw error;
    }
    return data;
  }

  function fmtTime(ms) {
    return ms ? new Date(ms).toLocaleString() : '—';
  }

  function ago(ms) {
    if (!ms) return '—';
    const seconds = Math.round((Date.now() - ms) / 1000);
    const future = seconds < 0;
    const s = Math.abs(seconds);
    const text = s < 60 ? s + 's' : s < 3600 ? Math.floor(s / 60) + 'm' : s < 86400 ? Math.floor(s / 3600) + 'h' : Math.floor(s / 86400) + 'd';
    return future ? 'in ' + text : text + ' ago';
  }

  function fmtBytes(n) {
    return n < 1024 ? n + ' B' : n < 1048576 ? (n / 1024).toFixed(1) + ' KiB' : (n / 1048576).toFixed(1) + ' MiB';
  }

  let toastTimer = null;
  function toast(message, isError) {
    const node = $('toast');
    node.textContent = message;
    node.className = 'toast' + (isError ? ' error' : '');
    node.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { node.hidden = true; }, 5000);
  }

  function setLive(ok, message) {
    const node = $('live');
    node.textContent = ok ? 'live' : 'offline: ' + message;
    node.className = 'live' + (ok ? ' ok' : ' bad');
  }

  // ---- routing: #/?queue=q&state=s&type=t and #/task/<id> ----

  function route() {
    const hash = location.hash || '#/';
    if (hash.startsWith('#/task/')) {
      return { name: 'task', id: decodeURIComponent(hash.slice('#/task/'.length)) };
    }
    const query = new URLSearchParams(hash.includes('?') ? hash.slice(hash.indexOf('?') + 1) : '');
    return { name: 'overview', queue: query.get('queue') || '', state: query.get('state') || '', type: query.get('type') || '' };
  }

  function overviewHash(queue, state, type) {
    const query = new URLSearchParams();
    if (queue) query.set('queue', queue);
    if (state) query.set('state', state);
    if (type) query.set('type', type);
    const text = query.toString();
    return '#/' + (text ? '?' + text : '');
  }

  function taskHash(id) {
    return '#/task/' + encodeURIComponent(id);
  }

  function onRoute() {
    const r = route();
    $('not-found').hidden = true;
    $('overview-view').hidden = r.name !== 'overview';
    $('task-view').hidden = r.name !== 'task';
    if (r.name === 'overview') {
      const changed = r.queue !== view.queue || (r.state || 'queued') !== view.state || r.type !== view.type;
      view.queue = r.queue;
      view.state = STATES.includes(r.state) ? r.state : 'queued';
      view.type = r.type;
      if (changed) {
        view.tokens = [''];
        lastTasksKey = '';
      }
      $('filter-type').value = view.type;
    } else {
      lastTaskKey = '';
    }
    tick();
  }

  // ---- polling ----

  let timer = null;
  let inFlight = false;
  let again = false;

  async function tick() {
    clearTimeout(timer);
    if (inFlight) { again = true; return; }
    inFlight = true;
    try {
      if (!document.hidden) {
        await refresh();
        setLive(true);
      }
    } catch (error) {
      if (error.status === 401) showLogin(error.message);
      setLive(false, error.message);
    } finally {
      inFlight = false;
      if (again) { again = false; tick(); } else { timer = setTimeout(tick, session.refresh_ms || 1500); }
    }
  }

  async function refresh() {
    if (session.token_required_for_reads && !session.signed_in) {
      showLogin('');
      return;
    }
    const r = route();
    if (r.name === 'task') {
      await loadTask(r.id);
    } else {
      await loadQueues();
      await loadTasks();
    }
    refreshTimes();
  }

  function refreshTimes() {
    for (const node of document.querySelectorAll('[data-ts]')) {
      node.textContent = ago(Number(node.getAttribute('data-ts')));
    }
  }

  // ---- queues ----

  async function loadQueues() {
    const data = await api('GET', '/api/queues');
    queues = data.queues;
    $('no-queues').hidden = queues.length > 0;
    const names = new Set(queues.map((q) => q.name));
    for (const [name, card] of cards) {
      if (!names.has(name)) { card.root.remove(); cards.delete(name); }
    }
    queues.forEach((q, i) => renderQueue(q, i));
    renderQueueSelect();
    renderStateTabs();
  }

  function countLink(queue, key, label) {
    const num = el('span', { class: 'num', text: '0' });
    const link = el('a', { class: 'count count-' + key, href: overviewHash(queue, key === 'done' ? 'succeeded' : key === 'failed' ? 'dead' : key, '') }, num, el('span', { class: 'label', text: label }));
    return { link, num };
  }

  function renderQueue(q, index) {
    let card = cards.get(q.name);
    if (!card) {
      const root = el('article', { class: 'queue', 'data-queue': q.name });
      const title = el('h3', null, el('span', { class: 'queue-name', text: q.name }));
      const badge = el('span', { class: 'badge paused-badge', text: 'paused' });
      title.append(' ', badge);
      const counts = el('div', { class: 'counts' });
      const nums = {};
      for (const [key, label] of [['queued', 'queued'], ['running', 'running'], ['scheduled', 'scheduled'], ['retrying', 'retrying'], ['dead', 'dead'], ['done', 'ok / min'], ['failed', 'failed / min']]) {
        const c = countLink(q.name, key, label);
        counts.append(c.link);
        nums[key] = c.num;
      }
      const spark = document.createElementNS(SVG, 'svg');
      spark.setAttribute('class', 'sparkline');
      spark.setAttribute('viewBox', '0 0 60 20');
      spark.setAttribute('preserveAspectRatio', 'none');
      const sparkTitle = el('p', { class: 'spark-caption muted' });
      const pause = el('button', { type: 'button', class: 'pause-toggle' });
      const retryDead = el('button', { type: 'button', class: 'retry-dead', text: 'Retry dead' });
      const purge = el('button', { type: 'button', class: 'purge-dead danger', text: 'Purge dead' });
      const confirmText = el('span', { class: 'confirm-text' });
      const purgeConfirm = el('button', { type: 'button', class: 'purge-confirm danger', text: 'Yes, purge' });
      const purgeCancel = el('button', { type: 'button', class: 'purge-cancel', text: 'Keep them' });
      const confirm = el('div', { class: 'confirm', role: 'alertdialog' }, confirmText, purgeConfirm, purgeCancel);
      confirm.hidden = true;
      const actions = el('div', { class: 'actions' }, pause, retryDead, purge);
      root.append(title, counts, spark, sparkTitle, actions, confirm);
      card = { root, badge, nums, spark, sparkTitle, pause, retryDead, purge, confirm, confirmText, data: q };
      const path = (action) => '/api/queues/' + encodeURIComponent(q.name) + '/' + action;
      pause.addEventListener('click', () => {
        const paused = card.data.paused;
        act(path(paused ? 'resume' : 'pause'), () => 'Queue ' + q.name + (paused ? ' resumed' : ' paused'));
      });
      retryDead.addEventListener('click', () => act(path('retry-dead'), (r) => r.retried + ' dead task(s) of ' + q.name + ' requeued'));
      purge.addEventListener('click', () => {
        confirmText.textContent = 'Delete ' + card.data.dead + ' dead task(s) of ' + q.name + ' for good?';
        confirm.hidden = false;
        actions.hidden = true;
      });
      const closeConfirm = () => { confirm.hidden = true; actions.hidden = false; };
      purgeCancel.addEventListener('click', closeConfirm);
      purgeConfirm.addEventListener('click', async () => {
        closeConfirm();
        await act(path('purge-dead'), (r) => r.purged + ' dead task(s) of ' + q.name + ' purged');
      });
      cards.set(q.name, card);
    }
    card.data = q;
    const container = $('queues');
    if (container.children[index] !== card.root) container.insertBefore(card.root, container.children[index] || null);
    for (const key of COUNTED) card.nums[key].textContent = q[key];
    card.nums.done.textContent = q.succeeded_last_minute;
    card.nums.failed.textContent = q.failed_last_minute;
    card.root.classList.toggle('has-dead', q.dead > 0);
    card.root.classList.toggle('paused', q.paused);
    card.badge.hidden = !q.paused;
    card.pause.textContent = q.paused ? 'Resume' : 'Pause';
    card.retryDead.disabled = q.dead === 0;
    card.purge.disabled = q.dead === 0;
    drawSparkline(card.spark, q.succeeded_per_minute, q.failed_per_minute);
    const hour = q.succeeded_per_minute.reduce((a, b) => a + b, 0);
    const executors = q.executors.length;
    card.sparkTitle.textContent = hour + ' succeeded in the last hour · ' + executors + ' executor' + (executors === 1 ? '' : 's') +
      (q.oldest_waiting_ms ? ' · oldest waiting ' + Math.round(q.oldest_waiting_ms / 1000) + 's' : '');
  }

  function drawSparkline(svg, succeeded, failed) {
    const max = Math.max(1, ...succeeded, ...failed);
    const points = (series) => series.map((v, i) => (i * 60 / Math.max(1, series.length - 1)).toFixed(2) + ',' + (19 - (v / max) * 18).toFixed(2)).join(' ');
    while (svg.firstChild) svg.firstChild.remove();
    for (const [series, cls] of [[failed, 'failed'], [succeeded, 'succeeded']]) {
      if (!series.length) continue;
      const line = document.createElementNS(SVG, 'polyline');
      line.setAttribute('points', points(series));
      line.setAttribute('class', 'line ' + cls);
      svg.append(line);
    }
  }

  function renderQueueSelect() {
    const select = $('filter-queue');
    if (!view.queue && queues.length) view.queue = queues[0].name;
    const wanted = queues.map((q) => q.name);
    if (view.queue && !wanted.includes(view.queue)) wanted.push(view.queue);
    const have = Array.from(select.options).map((o) => o.value);
    if (have.join('\n') !== wanted.join('\n')) {
      while (select.firstChild) select.firstChild.remove();
      for (const name of wanted) select.append(el('option', { value: name, text: name }));
    }
    select.value = view.queue;
  }

  function renderStateTabs() {
    const tabs = $('state-tabs');
    const q = queues.find((x) => x.name === view.queue);
    if (!tabs.children.length) {
      for (const state of STATES) {
        const tab = el('a', { class: 'tab tab-' + state, 'data-state': state }, el('span', { class: 'tab-label', text: state }), el('span', { class: 'tab-count' }));
        tabs.append(tab);
      }
    }
    for (const tab of tabs.children) {
      const state = tab.getAttribute('data-state');
      tab.setAttribute('href', overviewHash(view.queue, state, view.type));
      tab.classList.toggle('active', state === view.state);
      const count = q && COUNTED.includes(state) ? String(q[state]) : '';
      tab.lastChild.textContent = count;
    }
  }

  // ---- task list ----

  async function loadTasks() {
    if (!view.queue) {
      $('task-rows').replaceChildren();
      $('no-tasks').hidden = false;
      return;
    }
    const query = new URLSearchParams({ queue: view.queue, state: view.state });
    if (view.type) query.set('type', view.type);
    const token = view.tokens[view.tokens.length - 1];
    if (token) query.set('page_token', token);
    const data = await api('GET', '/api/tasks?' + query.toString());
    view.next = data.next_page_token || null;
    $('page-prev').disabled = view.tokens.length <= 1;
    $('page-next').disabled = !view.next;
    $('page-info').textContent = 'page ' + view.tokens.length;
    const key = JSON.stringify(data.tasks);
    if (key === lastTasksKey) return;
    lastTasksKey = key;
    $('no-tasks').hidden = data.tasks.length > 0;
    $('task-rows').replaceChildren(...data.tasks.map(taskRow));
  }

  function taskRow(t) {
    const local = t.task_id.slice(t.task_id.indexOf(':') + 1);
    const when = t.finished_at_ms || t.started_at_ms || (t.state === 'SCHEDULED' || t.state === 'RETRYING' ? t.run_at_ms : 0) || t.created_at_ms;
    const actions = el('td', { class: 'row-actions' });
    if (t.can_retry) {
      const b = el('button', { type: 'button', class: 'task-retry', text: 'Retry' });
      b.addEventListener('click', () => act('/api/tasks/' + encodeURIComponent(t.task_id) + '/retry', () => 'Task requeued'));
      actions.append(b);
    }
    if (t.can_cancel) {
      const b = el('button', { type: 'button', class: 'task-cancel danger', text: 'Cancel' });
      b.addEventListener('click', () => act('/api/tasks/' + encodeURIComponent(t.task_id) + '/cancel', () => 'Cancel requested'));
      actions.append(b);
    }
    return el('tr', { 'data-task-id': t.task_id },
      el('td', { class: 'mono' }, el('a', { class: 'task-link', href: taskHash(t.task_id), title: t.task_id, text: local })),
      el('td', { text: t.task_type }),
      el('td', null, el('span', { class: 'state state-' + t.state.toLowerCase(), text: t.state })),
      el('td', { text: t.attempt + '/' + t.max_attempts }),
      el('td', { 'data-ts': when, title: fmtTime(when), text: ago(when) }),
      el('td', { class: 'row-error', title: t.last_error, text: t.last_error }),
      actions);
  }

  // ---- one task ----

  async function loadTask(id) {
    let t;
    try {
      t = await api('GET', '/api/tasks/' + encodeURIComponent(id));
    } catch (error) {
      if (error.status === 404 || error.status === 400) {
        $('task-view').hidden = true;
        const nf = $('not-found');
        nf.textContent = error.message + (error.status === 404 ? ' (it may have expired or been purged)' : '');
        nf.hidden = false;
        return;
      }
      throw error;
    }
    $('task-view').hidden = false;
    $('not-found').hidden = true;
    const key = JSON.stringify(t);
    if (key === lastTaskKey) return;
    lastTaskKey = key;
    $('task-type').textContent = t.task_type;
    const state = $('task-state');
    state.textContent = t.state;
    state.className = 'state state-' + t.state.toLowerCase();
    $('task-id').textContent = t.task_id;
    $('task-retry').hidden = !t.can_retry;
    $('task-cancel').hidden = !t.can_cancel;
    const progress = t.state === 'SUCCEEDED' ? 1 : Math.max(0, Math.min(1, t.progress || 0));
    $('task-progress').value = progress;
    $('task-progress-text').textContent = Math.round(progress * 100) + '%' + (t.progress_message ? ' · ' + t.progress_message : '');

    const facts = [
      ['Queue', el('a', { href: overviewHash(t.queue, t.state.toLowerCase(), ''), text: t.queue })],
      ['Attempt', t.attempt + ' of ' + t.max_attempts],
      ['Created', fmtTime(t.created_at_ms)],
      ['Run at', fmtTime(t.run_at_ms)],
      ['Started', fmtTime(t.started_at_ms)],
      ['Finished', fmtTime(t.finished_at_ms)],
      ['Executor', t.executor_id || '—'],
      ['Timeout', t.timeout_ms ? (t.timeout_ms / 1000) + ' s' : '—'],
      ['Priority', t.priority],
      ['Content type', t.content_type],
      ['Idempotency key', t.idempotency_key || '—'],
      ['Trace', traceNode(t)],
    ];
    if (t.cancel_requested) facts.push(['Cancel', 'requested']);
    for (const [name, value] of t.headers) facts.push(['Header ' + name, value]);
    $('task-facts').replaceChildren(...facts.flatMap(([name, value]) => [el('dt', { text: name }), el('dd', { class: 'fact-' + name.toLowerCase().replace(/[^a-z]+/g, '-') }, value)]));

    showBlob('task-payload', 'task-payload-size', t.payload, t.content_type);
    showBlob('task-result', 'task-result-size', t.result, 'application/json');
    $('task-no-errors').hidden = t.errors.length > 0;
    $('task-errors').replaceChildren(...t.errors.map((e) => el('li', null,
      el('span', { class: 'muted', text: 'attempt ' + e.attempt + ' · ' + fmtTime(e.at_ms) + ' ' }),
      el('span', { class: 'error-message', text: e.message }))));
  }

  function traceNode(t) {
    if (!t.trace_id) return '—';
    if (t.trace_url) return el('a', { href: t.trace_url, target: '_blank', rel: 'noopener noreferrer', class: 'mono', id: 'task-trace', text: t.trace_id });
    return el('span', { class: 'mono', id: 'task-trace', text: t.trace_id });
  }

  function showBlob(id, sizeId, blob, contentType) {
    let text = blob.text;
    if (!blob.truncated && contentType.includes('json')) {
      try { text = JSON.stringify(JSON.parse(text), null, 2); } catch (_) { /* shown as is */ }
    }
    $(id).textContent = blob.size ? text : '(empty)';
    $(sizeId).textContent = blob.size ? '(' + fmtBytes(blob.size) + (blob.truncated ? ', first ' + fmtBytes(new TextEncoder().encode(blob.text).length) + ' shown' : '') + ')' : '';
  }

  // ---- actions and auth ----

  async function act(path, describe) {
    try {
      const reply = await api('POST', path);
      toast(describe(reply), false);
      lastTasksKey = '';
      lastTaskKey = '';
      tick();
      return reply;
    } catch (error) {
      if (error.status === 401) showLogin(error.message);
      toast(error.message, true);
      return null;
    }
  }

  function showLogin(message) {
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    $('login-token').focus();
  }

  function renderAuth() {
    const required = session.token_required;
    $('auth').textContent = !required ? '' : session.signed_in ? 'signed in' : 'read-only: sign in to act';
    $('signin-toggle').hidden = !required || session.signed_in;
    $('signout').hidden = !required || !session.signed_in;
    if (session.signed_in) $('login').hidden = true;
  }

  async function loadSession() {
    try {
      session = await api('GET', '/api/session');
    } catch (error) {
      setLive(false, error.message);
    }
    renderAuth();
  }

  $('login-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const body = new URLSearchParams({ token: $('login-token').value });
    try {
      await api('POST', '/api/login', body);
      $('login-token').value = '';
      $('login-error').textContent = '';
      await loadSession();
      toast('Signed in', false);
      tick();
    } catch (error) {
      $('login-error').textContent = error.message;
    }
  });
  $('signin-toggle').addEventListener('click', () => showLogin(''));
  $('signout').addEventListener('click', async () => {
    try { await api('POST', '/api/logout'); } catch (_) { /* the cookie is gone either way */ }
    await loadSession();
  });

  // ---- filters and paging ----

  $('filter-queue').addEventListener('change', (event) => {
    location.hash = overviewHash(event.target.value, view.state, view.type);
  });
  let typeTimer = null;
  $('filter-type').addEventListener('input', (event) => {
    clearTimeout(typeTimer);
    typeTimer = setTimeout(() => { location.hash = overviewHash(view.queue, view.state, event.target.value.trim()); }, 300);
  });
  $('page-next').addEventListener('click', () => {
    if (view.next) { view.tokens.push(view.next); lastTasksKey = ''; tick(); }
  });
  $('page-prev').addEventListener('click', () => {
    if (view.tokens.length > 1) { view.tokens.pop(); lastTasksKey = ''; tick(); }
  });
  $('task-retry').addEventListener('click', () => {
    const r = route();
    if (r.name === 'task') act('/api/tasks/' + encodeURIComponent(r.id) + '/retry', () => 'Task requeued');
  });
  $('task-cancel').addEventListener('click', () => {
    const r = route();
    if (r.name === 'task') act('/api/tasks/' + encodeURIComponent(r.id) + '/cancel', () => 'Cancel requested');
  });

  window.addEventListener('hashchange', onRoute);
  document.addEventListener('visibilitychange', () => { if (!document.hidden) tick(); });

  loadSession().then(onRoute);
}());
