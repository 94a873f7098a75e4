// The Prefect screenshots of docs/how-to/prefect-ui.md (docs/img/prefect-*.png), taken in headless Chromium by
// following that page's walkthrough: open the deployments, change the learning rate and epochs of digits-mlp
// in its run form by clicking and typing, submit, wait for the run, then photograph its page and
// artifacts. Not part of the test suite (CI has no browser).
//
// With the walkthrough's server and `python -m deployments.serve` running (steps 1 and 2):
//   mkdir -p /tmp/pw && (cd /tmp/pw && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install playwright-core)
//   NODE_PATH=/tmp/pw/node_modules node docs/screenshots.js            # UI at http://127.0.0.1:4200
// Environment: PREFECT_UI (default http://127.0.0.1:4200), CHROMIUM (default /usr/bin/chromium),
// OUT (default docs/img). Run as root it needs the --no-sandbox below.

const path = require('path');
const { chromium } = require('playwright-core');

const UI = (process.env.PREFECT_UI || 'http://127.0.0.1:4200').replace(/\/$/, '');
const API = `${UI}/api`;
const PAGES = `${UI}/v2`; // the UI the docs describe (the bare URL opens it too)
const OUT = process.env.OUT || path.join(__dirname, 'img');
const RUN_NAME = 'digits-lr-0.01';

async function api(route, body) {
  const response = await fetch(`${API}${route}`, {
    method: body === undefined ? 'GET' : 'POST',
    headers: { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw new Error(`${route}: HTTP ${response.status} ${await response.text()}`);
  return response.json();
}

// The input that follows a field's label in the form, e.g. 'Lr (Optional)'.
function field(page, label) {
  return page.locator(`xpath=//*[normalize-space(text())='${label}']/following::input[1]`).first();
}

async function shot(page, name, options = {}) {
  const file = path.join(OUT, name);
  await page.screenshot({ path: file, ...options });
  console.log(`wrote ${file}`);
}

async function runsNamed(name) {
  return api('/flow_runs/filter', { flow_runs: { name: { any_: [name] } } });
}

// The run named `name` that is not one of `earlier` (ids), once it has finished.
async function waitForRun(name, seconds, earlier = []) {
  for (let i = 0; i < seconds; i++) {
    const run = (await runsNamed(name)).find((r) => !earlier.includes(r.id));
    if (run && run.state && ['COMPLETED', 'FAILED', 'CRASHED', 'CANCELLED'].includes(run.state.type)) return run;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  throw new Error(`flow run ${name} did not finish in ${seconds} s`);
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  try {
    // Step 3: the deployments, as the bare URL's UI shows them.
    await page.goto(`${PAGES}/deployments`, { waitUntil: 'networkidle' });
    await page.getByText('digits-sweep').first().waitFor();
    await shot(page, 'prefect-deployments.png');

    // Step 4: a custom run from the form: a run name, the learning rate and the epochs, typed in.
    const [deployment] = await api('/deployments/filter', { deployments: { name: { any_: ['digits-mlp'] } } });
    await page.goto(`${PAGES}/deployments/deployment/${deployment.id}/run`, { waitUntil: 'networkidle' });
    await field(page, 'Lr (Optional)').waitFor({ timeout: 30000 });
    await field(page, 'Run Name').fill(RUN_NAME);
    await field(page, 'Lr (Optional)').fill('0.01');
    await field(page, 'Epochs (Optional)').fill('15');
    await page.getByText('Optimizer (Optional)').first().evaluate((el) => el.scrollIntoView({ block: 'start' }));
    await shot(page, 'prefect-run-form.png');
    const earlier = (await runsNamed(RUN_NAME)).map((r) => r.id);
    await page.getByRole('button', { name: 'Submit' }).click();

    // Step 5: the run's page once it has finished: its artifacts, the plots, the report.
    const run = await waitForRun(RUN_NAME, 600, earlier);
    console.log(`${RUN_NAME}: ${run.state.type} ${run.state.message || ''}`);
    await page.goto(`${PAGES}/runs/flow-run/${run.id}?tab=Artifacts`, { waitUntil: 'networkidle' });
    await page.getByText('digits-mlp-plots').first().waitFor();
    await page.waitForTimeout(8000); // the task graph draws after the page settles
    await shot(page, 'prefect-run.png');
    const artifacts = await api('/artifacts/filter', { artifacts: { flow_run_id: { any_: [run.id] } } });
    for (const [key, name] of [['digits-mlp-plots', 'prefect-plots-artifact.png'],
      ['digits-mlp-report', 'prefect-report-artifact.png']]) {
      const artifact = artifacts.find((a) => a.key === key);
      await page.goto(`${PAGES}/artifacts/artifact/${artifact.id}`, { waitUntil: 'networkidle' });
      await page.waitForTimeout(1500);
      await shot(page, name, key.endsWith('plots') ? { fullPage: true } : {});
    }

    // A run that asks for a device this machine lacks: it fails before any task, with one line.
    const earlierBad = (await runsNamed('asks-for-cuda-7')).map((r) => r.id);
    const bad = await api(`/deployments/${deployment.id}/create_flow_run`,
      { name: 'asks-for-cuda-7', parameters: { config: { device: { name: 'cuda:7' } } } });
    const failed = await waitForRun(bad.name, 300, earlierBad);
    console.log(`${bad.name}: ${failed.state.type} ${failed.state.message || ''}`);
    await page.goto(`${PAGES}/runs/flow-run/${failed.id}?tab=Logs`, { waitUntil: 'networkidle' });
    await page.getByText('not available on this machine').first().waitFor();
    await page.waitForTimeout(1500);
    await shot(page, 'prefect-failed-run.png');
  } finally {
    await browser.close();
  }
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
