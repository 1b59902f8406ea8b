// Drive the edgederm web demo in headless Chromium (playwright-core, Debian's /usr/bin/chromium).
//
//   node tests/web/run_demo.mjs PLAN.json
//
// PLAN (written by tests/test_web_demo.py): {url, node_modules, chromium, routes: {path: file},
// classify: [{id, url}], preprocess: [{id, url, spec}], decide: [{probs, classes, decision}],
// upload: file, screenshot: file, out: file}. Test images are served on the page's own origin
// through page.route, so the demo server stays free of test code. Writes the results to PLAN.out.
import { createRequire } from "node:module";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";

const plan = JSON.parse(readFileSync(process.argv[2], "utf8"));
const require = createRequire(path.join(plan.node_modules, "noop.js"));
const { chromium } = require("playwright-core");

const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run"];
const TYPES = { ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg" };

const t0 = Date.now();
const browser = await chromium.launch({ executablePath: plan.chromium, headless: true, args: FLAGS });
const results = { browser: browser.version(), console_errors: [], page_errors: [], classify: {}, preprocess: {}, decide: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
  page.on("console", (m) => { if (m.type() === "error") results.console_errors.push(m.text()); });
  page.on("pageerror", (e) => results.page_errors.push(String(e)));
  const routes = plan.routes || {};
  await page.route((u) => u.pathname in routes, (route) => {
    const file = routes[new URL(route.request().url()).pathname];
    route.fulfill({ path: file, contentType: TYPES[path.extname(file).toLowerCase()] || "application/octet-stream" });
  });
  await page.goto(plan.url);
  await page.waitForFunction(() => window.edgederm !== undefined);
  await page.evaluate(() => window.edgederm.ready());
  results.load_ms = Date.now() - t0;

  for (const item of plan.decide || []) {
    results.decide.push(await page.evaluate(({ probs, classes, decision }) => probs.map((p) => window.edgederm.decide(p, classes, decision)), item));
  }
  for (const item of plan.preprocess || []) {
    results.preprocess[item.id] = await page.evaluate(({ url, spec }) => window.edgederm.preprocessUrl(url, spec), item);
  }
  for (const item of plan.classify || []) {
    results.classify[item.id] = await page.evaluate(({ url }) => window.edgederm.classifyUrl(url, { tensor: true }), item);
  }
  if (plan.upload) {
    // The user's path: the file input, then the rendered decision.
    await page.setInputFiles("#file", plan.upload);
    await page.waitForFunction((name) => document.querySelector("#status").textContent.startsWith(`${name}:`)
      && document.querySelector("#decision strong") !== null, path.basename(plan.upload));
    results.ui_decision = await page.textContent("#decision strong");
    results.ui_status = await page.textContent("#status");
    if (plan.screenshot) await page.screenshot({ path: plan.screenshot, fullPage: true });
  }
} finally {
  await browser.close();
}
results.total_ms = Date.now() - t0;
writeFileSync(plan.out, JSON.stringify(results));
