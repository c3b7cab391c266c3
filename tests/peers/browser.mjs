// Drives Debian's Chromium (/usr/bin/chromium) headless through a plan of
// steps, for tests where a person uses a web page (sign in, consent).
//
//   node browser.mjs <plan.json>
//
// The plan:
//   {
//     "screenshots_dir": "<folder for screenshots and failure.png>",
//     "timeout_ms": 15000,                      (optional, per step)
//     "steps": [
//       {"goto": "<url>"},
//       {"fill": "<selector>", "value": "..."},
//       {"click": "<selector>"},
//       {"select": "<selector>", "value": "<option value>"},
//       {"expect_text": "..."},                  waits until the page body contains it
//       {"expect_url_prefix": "..."},            waits until the page URL starts with it
//       {"read_text": "<selector>"},             the element's text, in the result's "text"
//       {"screenshot": "<name>"},                <screenshots_dir>/<name>.png
//       {"context": "<name>"}                    switches to (or creates) a separate cookie jar
//       {"set_cookie": {"name": "...", "value": "...", "url": "<url>"}}
//                                                plants a cookie in the current jar (as
//                                                another site or an earlier visit could)
//       {"cookie_digest": "<name>"}              the SHA-256 (hex) of each of the current
//                                                jar's cookies <name> (one per path), comma-
//                                                separated in "text" ("" when none); never
//                                                a value itself
//     ]
//   }
// Any step may carry "timeout_ms". Steps run in order in one browser; every
// named context keeps its cookies for the whole plan ("default" is the one
// steps start in). Playwright gives the browser a fresh temporary profile
// (user-data-dir), removed when it closes.
//
// Prints one JSON line per step:
//   {"index": i, "action": "<goto|fill|...>", "ok": true, "url": "<page URL>",
//    "context": "<name>", "status": <HTTP status, goto only>, "text": "<read_text only>"}
// On a failed step it prints that step's line with "ok": false, "error",
// "url" and "page_text" (the first 2000 characters of the page), saves
// <screenshots_dir>/failure.png and exits 1. A bad plan exits 2.
// Query parameters that carry secrets (code, tokens, ...) are shown as
// "REDACTED" in every URL printed.

import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.LATCHKEY_CHROMIUM ?? '/usr/bin/chromium';
const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const SECRET_PARAMS = ['code', 'access_token', 'id_token', 'refresh_token', 'token', 'code_verifier', 'client_secret'];
const ACTIONS = [
  'goto',
  'fill',
  'click',
  'select',
  'expect_text',
  'expect_url_prefix',
  'read_text',
  'screenshot',
  'context',
  'set_cookie',
  'cookie_digest',
];

function fail(message) {
  console.error(`browser.mjs: ${message}`);
  process.exit(2);
}

function redact(url) {
  try {
    const u = new URL(url);
    for (const p of SECRET_PARAMS) if (u.searchParams.has(p)) u.searchParams.set(p, 'REDACTED');
    return u.href;
  } catch {
    return url;
  }
}

const planPath = process.argv[2];
if (!planPath) fail('usage: node browser.mjs <plan.json>');
let plan;
try {
  plan = JSON.parse(readFileSync(planPath, 'utf8'));
} catch (e) {
  fail(`cannot read the plan ${planPath}: ${e.message}`);
}
if (!plan || !Array.isArray(plan.steps)) fail('the plan needs a "steps" array');
const shots = plan.screenshots_dir ?? mkdtempSync(join(tmpdir(), 'latchkey-browser-shots-'));
mkdirSync(shots, { recursive: true });
const defaultTimeout = Number(plan.timeout_ms ?? 15000);

plan.steps.forEach((step, i) => {
  const actions = ACTIONS.filter((a) => step && a in step);
  if (actions.length !== 1) fail(`step ${i} must have exactly one of ${ACTIONS.join(', ')}: ${JSON.stringify(step)}`);
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Polls `check` (which may throw while a page is navigating) until it
// returns true or the step's time is up.
async function until(timeout, what, check) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      if (await check()) return;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`${what} not seen within ${timeout} ms${last ? ` (last error: ${last.message})` : ''}`);
    }
    await sleep(100);
  }
}

async function bodyText(page) {
  return await page.evaluate(() => (document.body ? document.body.innerText : ''));
}

// A throwaway HOME for Chromium's own files (crash reports, caches), removed
// at the end; each context keeps its cookies in memory, never shared.
const scratch = mkdtempSync(join(tmpdir(), 'latchkey-browser-'));
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: FLAGS,
  env: { ...process.env, HOME: scratch, XDG_CONFIG_HOME: scratch, XDG_CACHE_HOME: scratch },
});
const contexts = new Map();
async function pageOf(name) {
  if (!contexts.has(name)) {
    const context = await browser.newContext();
    contexts.set(name, await context.newPage());
  }
  return contexts.get(name);
}

let current = 'default';
let failed = false;
for (const [index, step] of plan.steps.entries()) {
  const action = ACTIONS.find((a) => a in step);
  const timeout = Number(step.timeout_ms ?? defaultTimeout);
  const result = { index, action };
  let page;
  try {
    if (action === 'context') {
      if (typeof step.context !== 'string' || step.context === '') throw new Error('context needs a name');
      current = step.context;
    }
    page = await pageOf(current);
    page.setDefaultTimeout(timeout);
    switch (action) {
      case 'goto': {
        const response = await page.goto(step.goto, { waitUntil: 'load', timeout });
        if (response) result.status = response.status();
        break;
      }
      case 'fill':
        await page.fill(step.fill, String(step.value ?? ''));
        break;
      case 'click':
        await page.click(step.click);
        // A click that navigates: wait for the next page to load before the next step.
        await page.waitForLoadState('load').catch(() => {});
        break;
      case 'select':
        await page.selectOption(step.select, String(step.value ?? ''));
        break;
      case 'expect_text':
        await until(timeout, `text ${JSON.stringify(step.expect_text)}`, async () =>
          (await bodyText(page)).includes(step.expect_text),
        );
        break;
      case 'expect_url_prefix':
        await until(timeout, `a URL starting with ${redact(step.expect_url_prefix)}`, async () =>
          page.url().startsWith(step.expect_url_prefix),
        );
        break;
      case 'read_text':
        result.text = await page.innerText(step.read_text);
        break;
      case 'screenshot': {
        if (!/^[A-Za-z0-9._-]+$/.test(String(step.screenshot))) throw new Error('screenshot names are [A-Za-z0-9._-]+');
        const path = join(shots, `${step.screenshot}.png`);
        await page.screenshot({ path, fullPage: true });
        result.path = path;
        break;
      }
      case 'context':
        break;
      case 'set_cookie': {
        const { name, value, url } = step.set_cookie ?? {};
        if (![name, value, url].every((v) => typeof v === 'string')) throw new Error('set_cookie needs name, value and url');
        await page.context().addCookies([{ name, value, url }]);
        break;
      }
      case 'cookie_digest': {
        result.text = (await page.context().cookies())
          .filter((c) => c.name === step.cookie_digest)
          .map((c) => createHash('sha256').update(c.value).digest('hex'))
          .join(',');
        break;
      }
    }
    result.ok = true;
    result.context = current;
    result.url = redact(page.url());
    console.log(JSON.stringify(result));
  } catch (e) {
    failed = true;
    result.ok = false;
    result.context = current;
    result.error = e.message.split('\n')[0];
    result.url = page ? redact(page.url()) : '';
    result.page_text = page ? (await bodyText(page).catch(() => '')).slice(0, 2000) : '';
    if (page) {
      result.screenshot = join(shots, 'failure.png');
      await page.screenshot({ path: result.screenshot, fullPage: true }).catch(() => {});
    }
    console.log(JSON.stringify(result));
    console.error(`browser.mjs: step ${index} (${action}) failed at ${result.url}: ${result.error}`);
    break;
  }
}

await browser.close().catch(() => {});
rmSync(scratch, { recursive: true, force: true });
process.exit(failed ? 1 : 0);
