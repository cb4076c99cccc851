// The jobs dashboard in a real browser: Debian's headless Chromium, driven
// by playwright-core, against examples/jobs serving its demo jobs on a
// SQLite file of its own. Each step checks what the page shows and, for an
// action, what the storage then holds (read back through the JSON the
// server answers from it).
//
//   node dashboard.test.mjs JOBS_EXAMPLE WORK_DIR CHROMIUM [SCREENSHOT_DIR]
import { createRequire } from 'node:module';
import { spawn } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import assert from 'node:assert/strict';

const [example, workDir, chromiumPath, screenshots] = process.argv.slice(2);
const require = createRequire(path.join(process.cwd(), 'node_modules'));
const { chromium } = require(process.env.PLAYWRIGHT_CORE || 'playwright-core');

const deadline = 20000; // every wait below is bounded by this
const freePort = () => new Promise((resolve, reject) => {
  const s = net.createServer();
  s.on('error', reject);
  s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
});
async function until(what, check) {
  const end = Date.now() + deadline;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await new Promise(r => setTimeout(r, 100));
  }
}

rmSync(workDir, { recursive: true, force: true });
mkdirSync(workDir, { recursive: true });
if (screenshots) mkdirSync(screenshots, { recursive: true });
const port = await freePort();
const base = `http://127.0.0.1:${port}/jobs`;
const server = spawn(example, ['--Jobs:Mode=serve', `--Jobs:Storage=${path.join(workDir, 'jobs.db')}`,
  `--Jobs:DashboardPort=${port}`], { stdio: ['ignore', 'inherit', 'inherit'] });
const api = async p => (await fetch(`${base}/api/${p}`)).json();

let browser;
let page;
let failures = 0;
async function step(name, fn) {
  try {
    await fn();
    console.log('ok   ' + name);
  } catch (e) {
    failures++;
    console.log('FAIL ' + name + ': ' + (e.stack || e));
    if (page) console.log('     the page showed: ' + (await page.textContent('main').catch(() => '?')).slice(0, 2000));
  }
}

try {
  await until('the dashboard to answer', async () => {
    try { return (await fetch(base)).ok; } catch (e) { return false; }
  });
  browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: ['--no-sandbox'] });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, timezoneId: 'America/New_York' });
  page = await context.newPage();
  const dialogs = [];
  page.on('dialog', d => { dialogs.push(d.message()); d.dismiss(); });
  const consoleErrors = [];
  page.on('console', m => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.setDefaultTimeout(deadline);

  await step('the overview counts jobs by state and its realtime chart moves while jobs run', async () => {
    await page.goto(base);
    await page.waitForSelector('.card[data-state="succeeded"]');
    // The recurring report runs every 2 s: the succeeded rate rises above 0.
    await until('a succeeded rate in the chart', async () =>
      (await page.textContent('.legend .succeeded').catch(() => '')).match(/succeeded [1-9]/) ||
      (await page.evaluate(() => [...document.querySelectorAll('svg.chart .s')]
        .some(l => (l.getAttribute('points') || '').split(' ').some(p => Number(p.split(',')[1]) < 154)))));
    const first = Number(await page.getAttribute('svg.chart', 'data-points'));
    await until('the chart to gain points', async () =>
      Number(await page.getAttribute('svg.chart', 'data-points')) > first);
    assert.ok(!(await page.textContent('main')).includes('null'), 'no placeholder leaks into the page');
    const succeeded = Number(await page.textContent('.card[data-state="succeeded"] .n'));
    assert.ok(succeeded >= 3, `succeeded ${succeeded}`);
    if (screenshots) await page.screenshot({ path: path.join(screenshots, 'dashboard-overview.png') });
  });

  await step('updates are pushed while the tab is visible, and a hidden tab closes its stream', async () => {
    await page.goto(base);
    await page.waitForSelector('.card[data-state="succeeded"]');
    await until('the page\'s event stream', async () => (await api('overview')).streams === 1);
    const stamp = await page.textContent('#status');
    await until('a pushed update', async () => (await page.textContent('#status')) !== stamp);
    const hide = hidden => page.evaluate(h => {
      Object.defineProperty(document, 'visibilityState', { value: h ? 'hidden' : 'visible', configurable: true });
      document.dispatchEvent(new Event('visibilitychange'));
    }, hidden);
    await hide(true);
    await until('the stream closed', async () => (await api('overview')).streams === 0);
    const frozen = await page.textContent('#status');
    // Three of the poller's readings pass with nothing sent to the page.
    const polled = async () => (await api('overview')).polled_at;
    const start = await polled();
    let readings = 0;
    for (let last = start; readings < 3;) {
      const now = await until('the next reading', async () => { const t = await polled(); return t !== last && t; });
      last = now;
      readings++;
    }
    assert.equal(await page.textContent('#status'), frozen);
    await hide(false);
    await until('the stream open again', async () => (await api('overview')).streams === 1);
    await until('updates again', async () => (await page.textContent('#status')) !== frozen);
  });

  await step('the nodes page shows the node that leads and who holds each lease', async () => {
    await page.goto(`${base}#/nodes`);
    await page.waitForSelector('tr[data-node] td.leader');
    await until('the leader marked', async () =>
      (await page.locator('tr[data-node] td.leader', { hasText: 'leader' }).count()) === 1);
    assert.match(await page.textContent('#leader'), /The leader is jobs-demo:\d+/);
    assert.match(await page.textContent('tr[data-lease="leader"]'), /jobs-demo:\d+/);
    if (screenshots) await page.screenshot({ path: path.join(screenshots, 'dashboard-nodes.png') });
  });

  await step('a job shows its continuations, and a continuation its parent', async () => {
    await page.goto(`${base}#/jobs?kind=resize`);
    await page.waitForSelector('tbody tr a');
    await page.click('tbody tr a');
    await page.waitForSelector('#children a');
    assert.match(await page.textContent('#children'), /\(succeeded\)|\(available\)|\(running\)/);
    // The parent's page has #args too: wait for the child's own heading.
    const child = (await page.textContent('#children a')).match(/^\d+/)[0];
    await page.click('#children a');
    await until('the continuation shown', async () => (await page.textContent('h2')).trim() === `Job ${child}`);
    await page.waitForSelector('#args');
    assert.match(await page.textContent('main'), /publish/);
  });

  await step('a search by creation time is bookmarkable, and keeps only the jobs created within it', async () => {
    await page.goto(`${base}#/jobs?kind=send_email&to=2000-01-01T00:00`);
    await page.waitForSelector('main p');
    assert.match(await page.textContent('main'), /No job matches/);
    await page.goto(`${base}#/jobs?kind=send_email&from=2000-01-01T00:00`);
    await page.waitForSelector('tbody tr');
    assert.ok(await page.locator('tbody tr').count() >= 3);
    assert.equal(await page.inputValue('input[name="from"]'), '2000-01-01T00:00');
  });

  await step('the queues page shows counts and limits, and pauses and resumes a queue in the storage', async () => {
    await page.goto(`${base}#/queues`);
    await page.waitForSelector('tr[data-queue="default"] td.limits');
    assert.match(await page.textContent('tr[data-queue="default"] td.limits'), /4 on jobs-demo:\d+/);
    await page.click('tr[data-queue="default"] button[data-action="pause"]');
    await until('the pause in the storage', async () =>
      (await api('overview')).queues.find(q => q.name === 'default').paused);
    await page.waitForSelector('tr[data-queue="default"] button[data-action="resume"]');
    await page.click('tr[data-queue="default"] button[data-action="resume"]');
    await until('the resume in the storage', async () =>
      !(await api('overview')).queues.find(q => q.name === 'default').paused);
  });

  await step('a search by text in the arguments is bookmarkable and opens a job with its history', async () => {
    await page.goto(`${base}#/jobs?q=Welcome`);
    await page.waitForSelector('tbody tr');
    assert.equal(await page.locator('tbody tr').count(), 1);
    await page.click('tbody tr a');
    await page.waitForSelector('#args');
    assert.match(await page.textContent('#args'), /"subject": "Welcome"/);
    assert.ok(await page.locator('h3 + table tbody tr').count() >= 2, 'the state history');
  });

  await step('a <script> in arguments is shown as text and runs nothing', async () => {
    await page.goto(`${base}#/jobs?q=alert`);
    await page.waitForSelector('tbody tr');
    assert.match(await page.textContent('td.args'), /<script>alert\(1\)<\/script>/);
    await page.click('tbody tr a');
    await page.waitForSelector('#args');
    assert.match(await page.textContent('#args'), /<script>alert\(1\)<\/script>/);
    assert.equal(await page.evaluate(() => document.querySelectorAll('main script').length), 0);
    assert.deepEqual(dialogs, []);
  });

  await step('a failed job shows its error; retry from the page requeues it in the storage', async () => {
    await page.goto(`${base}#/jobs?state=failed`);
    await page.waitForSelector('tbody tr');
    await page.click('tbody tr a');
    await page.waitForSelector('#args');
    const id = Number((await page.textContent('h2')).replace(/\D/g, ''));
    assert.match(await page.textContent('main'), /the printer is on fire/);
    if (screenshots) await page.screenshot({ path: path.join(screenshots, 'dashboard-failed-job.png'), fullPage: true });
    await page.click('button[data-action="retry"]');
    await until('the retry in the storage', async () =>
      (await api(`job?id=${id}`)).history.some(h => h.reason === 'requeued by a client'));
  });

  await step('an action on all a filter matches is offered only when there is a filter', async () => {
    await page.goto(`${base}#/jobs`);
    await page.waitForSelector('button[data-action="delete"]');
    assert.equal(await page.locator('button[data-action="all-delete"]').count(), 0);
    await page.goto(`${base}#/jobs?state=scheduled`);
    await page.waitForSelector('button[data-action="all-delete"]');
  });

  await step('a job deleted from the list is deleted in the storage', async () => {
    await page.goto(`${base}#/jobs?state=scheduled`);
    await page.waitForSelector('tbody tr');
    const id = Number(await page.getAttribute('tbody tr', 'data-id'));
    await page.check('tbody tr input[type=checkbox]');
    await page.click('button[data-action="delete"]');
    await until('the delete in the storage', async () => (await api(`job?id=${id}`)).state === 'deleted');
  });

  await step('a paused recurring job does not fire until it is resumed', async () => {
    await page.goto(`${base}#/recurring`);
    await page.waitForSelector('tr[data-id="report"]');
    if (screenshots) await page.screenshot({ path: path.join(screenshots, 'dashboard-recurring.png') });
    await page.click('tr[data-id="report"] button[data-action="pause"]');
    await until('the pause in the storage', async () => (await api('recurring')).recurring[0].paused);
    const reports = async () => (await api('jobs?kind=report&limit=500')).jobs.length;
    const before = await reports();
    // Three of its 2-second periods pass without a new occurrence.
    await new Promise(r => setTimeout(r, 6000));
    assert.equal(await reports(), before);
    await page.waitForSelector('tr[data-id="report"] button[data-action="resume"]');
    await page.click('tr[data-id="report"] button[data-action="resume"]');
    await until('a new occurrence after the resume', async () => (await reports()) > before);
  });

  await step('a read-only user sees no action and a forged change is refused', async () => {
    const viewer = await browser.newContext({ extraHTTPHeaders: { 'X-Demo-Role': 'viewer' } });
    const p = await viewer.newPage();
    await p.goto(`${base}#/jobs`);
    await p.waitForSelector('tbody tr');
    assert.match(await p.textContent('#status'), /read-only/);
    assert.equal(await p.locator('button[data-action]').count(), 0);
    const status = await p.evaluate(async b => (await fetch(b + '/api/job/delete?ids=1', {
      method: 'POST', headers: { 'X-CSRF-Token': 'anything' },
    })).status, base);
    assert.equal(status, 403);
    assert.notEqual((await api('job?id=1')).state, 'deleted');
    await viewer.close();
  });

  await step('the page logged no error', async () => assert.deepEqual(consoleErrors, []));
} catch (e) {
  failures++;
  console.log('FAIL ' + (e.stack || e));
} finally {
  if (browser) await browser.close();
  server.kill('SIGTERM');
}
process.exit(failures ? 1 : 0);
