// Check the connection forms and the Test button in the real Airflow 3 UI, and take the screenshots under docs/.
//
// Not part of `make test` (it needs Chromium and a running `make airflow`). See docs/airflow-ui.md:
//   make airflow                                  # in one terminal; wait for the banner
//   npm install --prefix /tmp/pw playwright-core  # once
//   NODE_PATH=/tmp/pw/node_modules node tests/ui/take_screenshots.mjs
//
// Environment: AIRFLOW_URL (http://localhost:8080), AIRFLOW_HOME (.airflow-local/airflow, for the generated admin
// password), AIRFLOW_PASSWORD (instead of the file), CHROMIUM (/usr/bin/chromium), PYTHON (.venv/bin/python, reads the
// provider info the forms are checked against), OUT_DIR (docs). Exit code 0 when every check passed.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

const BASE = (process.env.AIRFLOW_URL || 'http://localhost:8080').replace(/\/$/, '');
const HOME = process.env.AIRFLOW_HOME || '.airflow-local/airflow';
const OUT = process.env.OUT_DIR || 'docs';
const PYTHON = process.env.PYTHON || '.venv/bin/python';
const password =
  process.env.AIRFLOW_PASSWORD ||
  JSON.parse(fs.readFileSync(path.join(HOME, 'simple_auth_manager_passwords.json.generated'), 'utf8')).admin;

const info = JSON.parse(
  execFileSync(PYTHON, [
    '-c',
    'import json; from airflow_provider_didomi_dynamics.get_provider_info import get_provider_info as g; ' +
      'print(json.dumps(g()))',
  ]).toString(),
);
const types = Object.fromEntries(info['connection-types'].map((t) => [t['connection-type'], t]));

const failures = [];
const check = (ok, what) => {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failures.push(what);
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync',
  ],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 1000 }, deviceScaleFactor: 1 });

async function login() {
  await page.goto(`${BASE}/`);
  await page.locator('input[name=username]').fill('admin');
  await page.locator('input[name=password]').fill(password);
  await page.locator('button[type=submit]').click();
  await page.waitForURL(`${BASE}/`);
}

// label text of the chakra Field an input sits in
async function labelOf(input) {
  const root = input.locator('xpath=ancestor::*[@data-scope="field" and @data-part="root"][1]');
  return (await root.locator('label').first().innerText()).replace(/\*$/, '').trim();
}

async function helperOf(input) {
  const root = input.locator('xpath=ancestor::*[@data-scope="field" and @data-part="root"][1]');
  const helper = root.locator('[data-part="helper-text"]');
  return (await helper.count()) ? (await helper.first().innerText()).trim() : null;
}

async function checkForm(connType, file) {
  const spec = types[connType];
  const behaviour = spec['ui-field-behaviour'];
  await page.goto(`${BASE}/connections`);
  await page.getByRole('button', { name: 'Add Connection' }).click();
  const dialog = page.getByRole('dialog');
  await dialog.locator('input[role=combobox]').first().click();
  const option = page.getByRole('option', { name: spec['hook-name'], exact: true });
  check((await option.count()) === 1, `${connType}: "${spec['hook-name']}" is offered as connection type`);
  await option.click();
  await dialog.locator('input[name=host]').waitFor();

  for (const field of ['host', 'login', 'password']) {
    const input = dialog.locator(`input[name=${field}]`);
    const label = await labelOf(input);
    check(label === behaviour.relabeling[field], `${connType}: ${field} labelled "${label}"`);
    const placeholder = await input.getAttribute('placeholder');
    check(placeholder === behaviour.placeholders[field], `${connType}: ${field} placeholder "${placeholder}"`);
  }
  check((await dialog.locator('input[name=password]').getAttribute('type')) === 'password', `${connType}: secret masked`);
  for (const field of behaviour['hidden-fields'].filter((f) => f !== 'extra')) {
    const visible = await dialog.locator(`input[name=${field}]`).count();
    check(visible === 0, `${connType}: ${field} hidden`);
  }
  const standard = await dialog.screenshot();

  await dialog.getByRole('button', { name: 'Extra Fields', exact: true }).click();
  for (const [name, def] of Object.entries(spec['conn-fields'])) {
    const input = dialog.locator(`input[name=element_${name}]`);
    await input.waitFor();
    const label = await labelOf(input);
    check(label === def.label, `${connType}: extra ${name} labelled "${label}"`);
    if (def.description) {
      const helper = await helperOf(input);
      check(helper === def.description, `${connType}: extra ${name} explained "${helper}"`);
    }
    const value = await input.inputValue();
    const expected = def.schema.default ?? '';
    check(value === expected, `${connType}: extra ${name} prefilled "${value}"`);
  }
  // The 3.3 UI always offers the raw "Extra Fields JSON" editor (collapsed); hidden-fields cannot remove it.
  const extraJson = await dialog.getByRole('button', { name: 'Extra Fields JSON' }).count();
  console.log(`note ${connType}: "Extra Fields JSON" editor shown collapsed: ${extraJson === 1}`);
  const extras = await dialog.screenshot();
  await sideBySide(standard, extras, path.join(OUT, file));
  await page.keyboard.press('Escape');
}

async function sideBySide(left, right, file) {
  const shot = await browser.newPage({ viewport: { width: 1800, height: 400 }, deviceScaleFactor: 1 });
  const img = (buf) => `<img src="data:image/png;base64,${buf.toString('base64')}">`;
  await shot.setContent(
    `<body style="margin:0;background:#e2e8f0"><div style="display:flex;gap:8px;align-items:flex-start;` +
      `padding:8px;width:max-content">${img(left)}${img(right)}</div></body>`,
  );
  await shot.locator('div').first().screenshot({ path: file });
  await shot.close();
  console.log(`wrote ${file}`);
}

async function testButtons(file) {
  await page.setViewportSize({ width: 1280, height: 640 });
  await page.goto(`${BASE}/connections`);
  await page.getByRole('button', { name: 'Test Connection' }).first().waitFor();
  for (const connId of ['dataverse_default', 'didomi_default']) {
    const row = page.locator('tbody tr').filter({ hasText: connId });
    const response = page.waitForResponse((r) => r.url().endsWith('/api/v2/connections/test'));
    await row.getByRole('button', { name: 'Test Connection' }).click();
    const body = await (await response).json();
    check(body.status === true, `Test ${connId}: ${body.message}`);
  }
  await page.getByText('Test Connection Successful').nth(1).waitFor();
  await page.mouse.move(0, 0);
  await page.waitForTimeout(1200); // let the second toast finish sliding in
  await page.screenshot({ path: path.join(OUT, file) });
  console.log(`wrote ${path.join(OUT, file)}`);
}

try {
  await login();
  await checkForm('didomi', 'ui-didomi-connection.png');
  await checkForm('dataverse', 'ui-dataverse-connection.png');
  await testButtons('ui-connection-test.png');
} finally {
  await browser.close();
}
console.log(failures.length ? `${failures.length} check(s) failed` : 'all checks passed');
process.exit(failures.length ? 1 : 0);
