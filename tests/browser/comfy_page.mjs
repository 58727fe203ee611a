// The real ComfyUI web frontend in headless Debian Chromium, driven by Playwright (playwright-core, which
// never downloads a browser of its own). Shared by check_workflows.mjs (the browser test) and
// build_workflows.mjs (generates workflows/*.json, their API twins and thumbnails).
//
// Why the settings below: a person looking at a screenshot wants the graph, readable. The frontend
// otherwise draws nodes as empty boxes when zoomed out (level of detail), and covers the canvas with a
// minimap, a banner, menus and an FPS counter. The first-run template browser is skipped as ComfyUI's own
// docs say: the server-side setting Comfy.TutorialCompleted.

import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.LUA_CHROMIUM || '/usr/bin/chromium';
export const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run'];

const SERVER_SETTINGS = {
  'Comfy.TutorialCompleted': true,
  'Comfy.Minimap.Visible': false,
  'LiteGraph.Canvas.MinFontSizeForLOD': 0, // never draw nodes as empty boxes
  'Comfy.Graph.CanvasInfo': false,
  'Comfy.Graph.CanvasMenu': false,
  'LiteGraph.Node.TooltipDelay': 100, // ms before a hovered node shows its tooltip
};

// Console errors that are the sandbox's, not the workflow's: no internet (api.comfy.org and model URLs
// are blocked by the page's CSP), and a fresh user directory (404s for user.css, workflows/, templates).
export const BENIGN_CONSOLE = [
  /api\.comfy\.org/, /Content Security Policy/, /Error fetching file size/, /Failed to load resource: .*404/,
];

export function isBenign(text) {
  return BENIGN_CONSOLE.some((re) => re.test(text));
}

async function postSetting(base, id, value) {
  const r = await fetch(`${base}/settings/${encodeURIComponent(id)}`, { method: 'POST', body: JSON.stringify(value) });
  if (!r.ok) throw new Error(`POST /settings/${id} -> HTTP ${r.status}`);
}

// Launch Chromium and open the frontend; resolves once the app, its graph and the Vue app are ready.
// Returns { browser, page, log, timings } where log collects page errors and console errors (with the
// time they happened, so callers can attribute them to a step).
export async function openComfy(base, { width = 1600, height = 1000 } = {}) {
  const timings = {};
  const t0 = Date.now();
  for (const [id, value] of Object.entries(SERVER_SETTINGS)) await postSetting(base, id, value);
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  timings.launch_ms = Date.now() - t0;
  const page = await browser.newPage({ viewport: { width, height } });
  await page.addInitScript(() => localStorage.setItem('vueNodesBannerDismissed', 'true'));
  const log = { pageErrors: [], console: [] };
  page.on('pageerror', (e) => log.pageErrors.push({ t: Date.now(), text: String(e && e.stack || e) }));
  page.on('console', (m) => {
    if (m.type() === 'error') log.console.push({ t: Date.now(), text: m.text() });
  });
  await page.goto(base, { waitUntil: 'domcontentloaded' });
  await page.waitForFunction(() => window.app && window.app.graph && window.LiteGraph && window.app.vueAppReady,
    null, { timeout: 90000 });
  await page.evaluate(() => window.app.extensionManager.command.execute('Workspace.ToggleFocusMode'));
  await page.addStyleTag({ content: '.comfy-menu-hamburger { display: none !important; }' }); // focus mode's menu
  timings.ready_ms = Date.now() - t0;
  return { browser, page, log, timings };
}

// Errors logged since time t (page errors always count; console errors unless benign).
export function errorsSince(log, t) {
  return [
    ...log.pageErrors.filter((e) => e.t >= t).map((e) => 'pageerror: ' + e.text),
    ...log.console.filter((e) => e.t >= t && !isBenign(e.text)).map((e) => 'console: ' + e.text),
  ];
}

// The text of every open PrimeVue dialog (missing nodes, missing models...).
export async function openDialogs(page) {
  return page.evaluate(() => Array.from(document.querySelectorAll('.p-dialog')).map((d) => d.innerText));
}

export async function closeDialogs(page) {
  for (let i = 0; i < 5 && (await openDialogs(page)).length; i++) {
    await page.keyboard.press('Escape');
    await page.waitForTimeout(150);
  }
}

// Bounds [x0, y0, x1, y1] of every node (title included) and group of the loaded graph, in graph units;
// with `ids`, of those nodes only.
export async function graphBounds(page, ids = null) {
  return page.evaluate((ids) => {
    const g = window.app.graph;
    const b = [Infinity, Infinity, -Infinity, -Infinity];
    const add = (x, y, w, h) => {
      b[0] = Math.min(b[0], x); b[1] = Math.min(b[1], y); b[2] = Math.max(b[2], x + w); b[3] = Math.max(b[3], y + h);
    };
    for (const n of g._nodes) {
      if (ids && !ids.includes(n.id)) continue;
      const r = n.getBounding();
      add(r[0], r[1], r[2], r[3]);
    }
    if (!ids) for (const gr of g._groups || []) add(gr.pos[0], gr.pos[1], gr.size[0], gr.size[1]);
    return b;
  }, ids);
}

// Screenshot the whole graph at `scale` (1 = the size a person sees at 100 % zoom): the viewport is sized
// to the graph plus a margin (at most maxWidth x maxHeight; the scale shrinks to fit), the view is
// placed on the graph, and the canvas redrawn before the shot. `only`: frame these node ids instead.
export async function screenshotGraph(page, path,
  { scale = 1, margin = 30, maxWidth = 3200, maxHeight = 2000, only = null } = {}) {
  const [x0, y0, x1, y1] = await graphBounds(page, only);
  const s = Math.min(scale, (maxWidth - 2 * margin) / (x1 - x0), (maxHeight - 2 * margin) / (y1 - y0));
  const width = Math.ceil((x1 - x0) * s + 2 * margin);
  const height = Math.ceil((y1 - y0) * s + 2 * margin);
  await page.setViewportSize({ width, height });
  await page.waitForTimeout(300); // the canvas follows the window size through a ResizeObserver
  await page.evaluate(([s, ox, oy]) => {
    const c = window.app.canvas;
    c.ds.scale = s;
    c.ds.offset = [ox, oy];
    c.setDirty(true, true);
    c.draw(true, true);
  }, [s, margin / s - x0, margin / s - y0]);
  await page.waitForTimeout(300);
  await page.screenshot({ path });
  return { width, height, scale: s };
}

// Load a UI workflow the way a person does (dragging the file in ends in app.loadGraphData with the
// missing-nodes and missing-models dialogs on).
export async function loadWorkflow(page, workflow, name) {
  await page.evaluate(async ([wf, name]) => {
    await window.app.loadGraphData(wf, true, true, name);
  }, [workflow, name]);
  await page.waitForTimeout(500); // dialogs open asynchronously
}

// Frontend 1.49 (ComfyUI 0.33) opens no Missing Models dialog: it outlines the nodes whose model files are
// missing and shows an overlay ("N errors found", View details) that opens the Errors tab of the right side
// panel, where the Missing Models group lists each file with its folder and a Download button. Frontend
// 1.32 (ComfyUI 0.3.75) has no such tab (the setting below is unknown there) and uses the dialog.
export async function hasErrorsPanel(page) {
  return page.evaluate(() => window.app.extensionManager.setting.get('Comfy.RightSidePanel.ShowErrorsTab') === true);
}

// What the Errors tab shows after a workflow was loaded, read as a person does: leave focus mode (it hides
// the overlay), click View details, read the error groups, close the panel, focus mode again.
// Returns { groups: [data-testid of each error group], missing_models: [{ name, directory, label, download,
// text }] }, both empty when the frontend found no error (no overlay).
export async function readErrorsPanel(page) {
  await page.evaluate(() => window.app.extensionManager.command.execute('Workspace.ToggleFocusMode'));
  const details = page.getByText('View details', { exact: true }).first();
  let result = { groups: [], missing_models: [] };
  try {
    await details.waitFor({ state: 'visible', timeout: 3000 });
  } catch {
    await page.evaluate(() => window.app.extensionManager.command.execute('Workspace.ToggleFocusMode'));
    return result;
  }
  await details.click();
  await page.locator('[data-testid^="error-group-"]').first().waitFor({ timeout: 5000 });
  await page.waitForTimeout(300);
  result = await page.evaluate(() => {
    const groups = Array.from(document.querySelectorAll('section[data-testid^="error-group-"]')).map((g) => g.dataset.testid);
    const group = document.querySelector('[data-testid="error-group-missing-model"]');
    const rows = group ? Array.from(group.querySelectorAll('[data-testid$="-rows"] > div')) : [];
    const missing = rows.map((row) => {
      const name = row.querySelector('button[title]')?.getAttribute('title') ?? null;
      const directory = row.querySelector('span[class*="text-2xs"]')?.innerText.trim() ?? null;
      return { name, directory, label: `${directory} / ${name}`,
        download: !!row.querySelector('[data-testid="missing-model-download"]'), text: row.innerText };
    });
    return { groups, missing_models: missing };
  });
  await page.locator('button[aria-label="Toggle properties panel"]').first().click();
  await page.locator('[data-testid^="error-group-"]').first().waitFor({ state: 'detached', timeout: 5000 })
    .catch(() => {});
  await page.evaluate(() => window.app.extensionManager.command.execute('Workspace.ToggleFocusMode'));
  await page.waitForTimeout(200);
  return result;
}
