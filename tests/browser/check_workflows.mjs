// Browser test driver: opens the real ComfyUI frontend served by a test server in headless Chromium,
// loads each workflow file as a person would (app.loadGraphData, dialogs on), and writes a JSON report
// of what the frontend made of it plus one screenshot per workflow. The assertions are in
// tests/comfyui/test_workflows.py (pytest starts the server and runs this script).
//
// usage: node check_workflows.mjs --url http://127.0.0.1:PORT --out DIR --report FILE WORKFLOW.json...
//        [--templates MODULE]   also open the template browser on MODULE's templates and screenshot it
//        [--search QUERY]...    also type QUERY into the node search box and report what it offers
//   The first node of each of this pack's node types is also hovered for its tooltips.

import fs from 'node:fs';
import path from 'node:path';
import {
  closeDialogs, errorsSince, hasErrorsPanel, loadWorkflow, openComfy, openDialogs, readErrorsPanel, screenshotGraph,
} from './comfy_page.mjs';

const PACK_MODULE = 'ComfyUI-LUA'; // python_module of the pack's nodes: custom_nodes.ComfyUI-LUA

function parseArgs(argv) {
  const args = { files: [], search: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--url') args.url = argv[++i];
    else if (a === '--out') args.out = argv[++i];
    else if (a === '--report') args.report = argv[++i];
    else if (a === '--templates') args.templates = argv[++i];
    else if (a === '--search') args.search.push(argv[++i]);
    else args.files.push(a);
  }
  if (!args.url || !args.out || !args.report || !args.files.length) {
    throw new Error('usage: check_workflows.mjs --url URL --out DIR --report FILE WORKFLOW.json...');
  }
  return args;
}

// Everything the frontend knows about the loaded graph, for the Python side to judge.
function inspectGraph() {
  const g = window.app.graph;
  const problems = [];
  const nodes = g._nodes.map((n) => {
    const cls = LiteGraph.registered_node_types[n.type];
    const def = cls && cls.nodeData;
    return {
      id: n.id,
      type: n.type,
      title: n.title,
      registered: !!cls,
      has_errors: !!n.has_errors,
      mode: n.mode,
      bounding: Array.from(n.getBounding()),
      display_name: def ? def.display_name : null,
      category: def ? def.category : null,
      description: def ? def.description : null,
      python_module: def ? def.python_module : null,
      inputs: (n.inputs || []).map((s) => ({ name: s.name, type: s.type, link: s.link ?? null,
        widget: s.widget ? s.widget.name : null })),
      outputs: (n.outputs || []).map((s) => ({ name: s.name, type: s.type, links: s.links || [] })),
      widgets: (n.widgets || []).map((w) => ({
        name: w.name, type: w.type, value: w.value,
        options: Array.isArray(w.options?.values) ? w.options.values : null,
        min: w.options?.min ?? null, max: w.options?.max ?? null,
        tooltip: w.tooltip ?? null, hidden: !!(w.hidden || w.options?.hidden), advanced: !!w.options?.advanced,
      })),
    };
  });
  // link integrity, both ends
  const links = [];
  for (const [id, l] of g.links instanceof Map ? g.links : Object.entries(g.links)) {
    const link = l;
    const from = g.getNodeById(link.origin_id);
    const to = g.getNodeById(link.target_id);
    links.push({ id: link.id, from: link.origin_id, from_slot: link.origin_slot, to: link.target_id,
      to_slot: link.target_slot, type: link.type });
    if (!from || !to) { problems.push(`link ${id}: missing end node`); continue; }
    const out = from.outputs?.[link.origin_slot];
    const inp = to.inputs?.[link.target_slot];
    if (!out || !(out.links || []).includes(link.id)) problems.push(`link ${id}: not listed at its origin`);
    if (!inp || inp.link !== link.id) problems.push(`link ${id}: not the target input's link`);
    if (out && inp && !LiteGraph.isValidConnection(out.type, inp.type)) {
      problems.push(`link ${id}: ${out.type} -> ${inp.type} is not a valid connection`);
    }
  }
  // overlapping nodes make a graph unreadable
  const overlaps = [];
  for (let i = 0; i < nodes.length; i++) {
    for (let j = i + 1; j < nodes.length; j++) {
      const [ax, ay, aw, ah] = nodes[i].bounding;
      const [bx, by, bw, bh] = nodes[j].bounding;
      if (ax < bx + bw && bx < ax + aw && ay < by + bh && by < ay + ah) overlaps.push([nodes[i].id, nodes[j].id]);
    }
  }
  return { nodes, links, problems, overlaps, groups: (g._groups || []).length };
}

// Hover over a node's title, link inputs, outputs and widgets, as a person would, and read the tooltip
// the frontend shows for each (its NodeTooltip component: description, input/output/widget tooltips).
// Only where the node definition has a text to show (hovering elsewhere would just wait for nothing);
// the Python side reads the definitions for what has none.
async function hoverTooltips(page, nodeId) {
  await page.setViewportSize({ width: 1600, height: 1000 });
  await page.waitForTimeout(200);
  const targets = await page.evaluate((id) => {
    const c = window.app.canvas;
    const n = window.app.graph.getNodeById(id);
    const def = LiteGraph.registered_node_types[n.type].nodeData;
    const inputDef = (name) => (def.input.required?.[name] ?? def.input.optional?.[name] ?? [])[1] ?? {};
    c.ds.scale = 1;
    c.ds.offset = [400 - n.pos[0], 300 - n.pos[1]];
    c.setDirty(true, true);
    c.draw(true, true); // lays the widgets out (w.y)
    const r = c.canvas.getBoundingClientRect();
    const screen = ([x, y]) => [r.left + (x + c.ds.offset[0]) * c.ds.scale, r.top + (y + c.ds.offset[1]) * c.ds.scale];
    return {
      title: def.description ? [['title', screen([n.pos[0] + 40, n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT / 2])]] : [],
      inputs: n.inputs.map((inp, i) => [inp.name, !inp.widget && inputDef(inp.name).tooltip ? screen(n.getInputPos(i)) : null])
        .filter((x) => x[1]),
      outputs: n.outputs.map((out, i) => [String(i), def.output_tooltips?.[i] ? screen(n.getOutputPos(i)) : null])
        .filter((x) => x[1]),
      widgets: (n.widgets || []).filter((w) => inputDef(w.name).tooltip)
        .map((w) => [w.name, screen([n.pos[0] + n.size[0] / 2, n.pos[1] + w.y + LiteGraph.NODE_WIDGET_HEIGHT / 2])]),
    };
  }, nodeId);
  const tip = async ([x, y]) => {
    await page.mouse.move(x - 4, y - 4);
    await page.mouse.move(x, y);
    try {
      await page.waitForSelector('.node-tooltip', { timeout: 2000 }); // TooltipDelay is 100 ms
    } catch {
      return null;
    }
    return page.evaluate(() => document.querySelector('.node-tooltip')?.innerText ?? null);
  };
  const out = {};
  for (const kind of ['title', 'inputs', 'outputs', 'widgets']) {
    out[kind] = {};
    for (const [name, at] of targets[kind]) out[kind][name] = await tip(at);
  }
  await page.mouse.move(1, 1);
  return out;
}

// The node search box of each frontend: its text input and the offered entries (display name on the
// first line of each). In this order: the first whose input is visible is the one open.
const SEARCH_UIS = [
  { frontend: '1.32 (ComfyUI 0.3.75)', input: '.comfy-vue-node-search-container input',
    options: '.p-autocomplete-option' },
  { frontend: '1.49 (ComfyUI 0.33)', input: '[role="search"] input[role="combobox"]',
    options: '[role="search"] [role="option"]' },
];

// The node search box (double-click on the canvas) for a query: the display names it offers, in order.
async function search(page, query) {
  await page.evaluate(() => window.app.extensionManager.command.execute('Workspace.SearchBox.Toggle'));
  await page.locator(SEARCH_UIS.map((ui) => ui.input).join(', ')).first().waitFor({ timeout: 5000 });
  let ui = null; // the first that matches: 1.32's search input also matches 1.49's selector
  for (const u of SEARCH_UIS) if (!ui && await page.locator(u.input).first().isVisible()) ui = u;
  await page.locator(ui.input).first().fill(query);
  await page.waitForTimeout(600);
  const items = await page.evaluate((sel) => Array.from(document.querySelectorAll(sel))
    .map((e) => e.innerText.split('\n')[0].replace(/\u00a0/g, ' ')), ui.options);
  await page.keyboard.press('Escape');
  await page.waitForTimeout(200);
  return items.map((t) => t.trim()).filter(Boolean);
}

async function checkOne(session, file, outDir, probed) {
  const { page, log } = session;
  const name = path.basename(file, '.json');
  const workflow = JSON.parse(fs.readFileSync(file, 'utf8'));
  await page.setViewportSize({ width: 1600, height: 1000 });
  const t0 = Date.now();
  await loadWorkflow(page, workflow, name);
  const loadMs = Date.now() - t0;
  const dialogs = await openDialogs(page);
  await closeDialogs(page);
  const graph = await page.evaluate(inspectGraph);
  const errorsPanel = (await hasErrorsPanel(page)) ? await readErrorsPanel(page) : null; // frontend 1.49+
  const prompt = await page.evaluate(async () => (await window.app.graphToPrompt()).output);
  const serialized = await page.evaluate(() => window.app.graph.serialize());
  const shot = path.join(outDir, `${name}.png`);
  const view = await screenshotGraph(page, shot);
  const tooltips = {};
  for (const n of graph.nodes) { // the pack's own nodes, once per type over all workflows
    if (!probed.has(n.type) && n.python_module && n.python_module.includes(PACK_MODULE)) {
      probed.add(n.type);
      tooltips[n.type] = await hoverTooltips(page, n.id);
    }
  }
  const errors = errorsSince(log, t0);
  return { name, file, load_ms: loadMs, total_ms: Date.now() - t0, dialogs, errors_panel: errorsPanel, ...graph,
    prompt, serialized, screenshot: shot, view, tooltips, errors };
}

// The template browser ("Templates" in the sidebar) on this pack's category: which cards it shows and
// whether their thumbnails loaded (the <img> of each card: the .jpg beside the workflow), plus a screenshot.
async function checkTemplates(session, module, outDir) {
  const { page, log } = session;
  const t0 = Date.now();
  await page.setViewportSize({ width: 1600, height: 1000 });
  await page.evaluate(() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates'));
  const nav = page.getByText(module, { exact: true }).first();
  await nav.waitFor({ timeout: 15000 });
  await nav.click();
  await page.waitForTimeout(1500);
  // then until every card's thumbnail has loaded (a fixed wait once caught one still loading on a busy host);
  // on timeout the report says which did not load
  await page.waitForFunction(() => Array.from(document.querySelectorAll('[data-testid^="template-workflow-"]'))
    .every((card) => { const img = card.querySelector('img'); return !!img && img.complete && img.naturalWidth > 0; }),
  null, { timeout: 15000 }).catch(() => {});
  const cards = await page.evaluate(() => Array.from(document.querySelectorAll('[data-testid^="template-workflow-"]'))
    .map((card) => {
      const img = card.querySelector('img');
      return { name: card.dataset.testid.replace('template-workflow-', ''), title: card.querySelector('h3')?.innerText,
        loaded: !!img && img.complete && img.naturalWidth > 0, width: img?.naturalWidth ?? 0,
        height: img?.naturalHeight ?? 0 };
    }));
  const shot = path.join(outDir, 'template_browser.png');
  await page.screenshot({ path: shot });
  await closeDialogs(page);
  return { module, cards, screenshot: shot, ms: Date.now() - t0, errors: errorsSince(log, t0) };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  fs.mkdirSync(args.out, { recursive: true });
  const session = await openComfy(args.url);
  const frontend = await session.page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ ?? null);
  const report = { frontend, timings: session.timings, startup_errors: errorsSince(session.log, 0), workflows: [] };
  try {
    const probed = new Set();
    for (const file of args.files) report.workflows.push(await checkOne(session, file, args.out, probed));
    report.search = {};
    for (const q of args.search) report.search[q] = await search(session.page, q);
    if (args.templates) report.templates = await checkTemplates(session, args.templates, args.out);
  } finally {
    await session.browser.close();
  }
  fs.writeFileSync(args.report, JSON.stringify(report, null, 1));
}

main().catch((e) => {
  console.error(e && e.stack || e);
  process.exit(1);
});
