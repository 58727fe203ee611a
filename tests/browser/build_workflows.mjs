// Builds the example workflows in the real ComfyUI frontend, so that each workflows/<name>.json is
// exactly what the frontend itself saves, and its API twin exactly what it queues. Called by
// scripts/make_workflow_assets.py, which holds the workflow definitions and writes the files.
//
// For each spec: app.loadApiJson(api) creates the nodes (ids, titles, widget values, links) through the
// frontend's own node definitions; then positions, sizes, colours, seed controls, notes and the
// per-node `properties.models` are set; app.graph.serialize() gives the UI JSON. That JSON is loaded
// back with app.loadGraphData and serialized again (must be identical: the file round-trips), and
// app.graphToPrompt() gives the API twin. A spec with `ui` instead of `api` is an existing workflow file:
// it is only loaded and screenshotted (thumbnail).
//
// usage: node build_workflows.mjs --url http://127.0.0.1:PORT --spec SPEC.json --out DIR
//   writes DIR/<name>.json (UI), DIR/<name>.api.json, DIR/<name>.png (screenshot at 100 % zoom) and,
//   for a spec with `thumbnail_nodes`, DIR/<name>.thumb.png (those nodes framed, for the thumbnail)

import fs from 'node:fs';
import path from 'node:path';
import { closeDialogs, errorsSince, openComfy, screenshotGraph } from './comfy_page.mjs';

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i++) args[argv[i].replace(/^--/, '')] = argv[++i];
  if (!args.url || !args.spec || !args.out) throw new Error('usage: build_workflows.mjs --url URL --spec FILE --out DIR');
  return args;
}

// Runs in the page: build the graph of one spec and return its serialization.
async function buildGraph(spec) {
  const app = window.app;
  await app.loadApiJson(spec.api, `${spec.name}.json`);
  const g = app.graph;
  for (const note of spec.notes || []) {
    const n = LiteGraph.createNode(note.type || 'MarkdownNote');
    n.id = note.id;
    g.add(n);
    n.widgets[0].value = note.text;
    if (note.title) n.title = note.title;
  }
  for (const [id, l] of Object.entries(spec.layout)) {
    const n = g.getNodeById(Number(id));
    if (!n) throw new Error(`layout: no node ${id}`);
    const min = n.computeSize();
    n.pos = [l.pos[0], l.pos[1]];
    if (l.size) n.size = [Math.max(l.size[0], min[0]), Math.max(l.size[1], min[1])];
    if (l.color) n.color = l.color;
    if (l.bgcolor) n.bgcolor = l.bgcolor;
  }
  for (const n of g._nodes) {
    for (const w of n.widgets || []) if (w.name === 'control_after_generate') w.value = 'fixed';
    const models = spec.node_models?.[String(n.id)];
    if (models) n.properties.models = models;
  }
  const missing = g._nodes.filter((n) => !(String(n.id) in spec.layout)).map((n) => `${n.id}:${n.type}`);
  if (missing.length) throw new Error(`layout misses nodes ${missing.join(', ')}`);
  g.extra = { ...(g.extra || {}), ...(spec.extra || {}) };
  g.setDirtyCanvas(true, true);
  return g.serialize();
}

// Runs in the page: load a UI workflow (dialogs off: the build server has no model files), serialize it
// again and convert it to the API format.
async function reload([wf, name]) {
  await window.app.loadGraphData(wf, true, true, name, { showMissingModelsDialog: false });
  const again = window.app.graph.serialize();
  const prompt = (await window.app.graphToPrompt()).output;
  return { again, prompt };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const specs = JSON.parse(fs.readFileSync(args.spec, 'utf8'));
  fs.mkdirSync(args.out, { recursive: true });
  const session = await openComfy(args.url);
  const { page, log } = session;
  try {
    for (const spec of specs) {
      const t0 = Date.now();
      await page.setViewportSize({ width: 1600, height: 1000 });
      let ui = spec.ui;
      if (!ui) {
        // a freshly built graph serializes slightly differently from a loaded one (e.g. nodes without
        // widgets gain `widgets_values: []`): the file is the loaded form, a fixed point of load + save
        const built = await page.evaluate(buildGraph, spec);
        ui = (await page.evaluate(reload, [built, spec.name])).again;
        ui.id = spec.id;
        ui.models = spec.models;
        ui.extra.ds = spec.extra.ds; // the view on open (serialize() stores the build page's current view)
      }
      const { again, prompt } = await page.evaluate(reload, [ui, spec.name]);
      await closeDialogs(page);
      for (const key of spec.ui ? [] : ['nodes', 'links', 'groups']) { // existing files: thumbnail only
        if (JSON.stringify(again[key]) !== JSON.stringify(ui[key])) {
          fs.writeFileSync(path.join(args.out, `${spec.name}.first.json`), JSON.stringify(ui, null, 1));
          fs.writeFileSync(path.join(args.out, `${spec.name}.again.json`), JSON.stringify(again, null, 1));
          throw new Error(`${spec.name}: ${key} differ after loadGraphData + serialize (the file does not round-trip)`);
        }
      }
      await screenshotGraph(page, path.join(args.out, `${spec.name}.png`));
      if (spec.thumbnail_nodes) {
        await screenshotGraph(page, path.join(args.out, `${spec.name}.thumb.png`), { only: spec.thumbnail_nodes });
      }
      const errors = errorsSince(log, t0);
      if (errors.length) throw new Error(`${spec.name}: errors in the page:\n${errors.join('\n')}`);
      if (!spec.ui) {
        fs.writeFileSync(path.join(args.out, `${spec.name}.json`), JSON.stringify(ui, null, 2) + '\n');
        fs.writeFileSync(path.join(args.out, `${spec.name}.api.json`), JSON.stringify(prompt, null, 2) + '\n');
      }
      console.log(`${spec.name}: ${ui.nodes.length} nodes, ${ui.links.length} links, ${Date.now() - t0} ms`);
    }
  } finally {
    await session.browser.close();
  }
}

main().catch((e) => {
  console.error(e && e.stack || e);
  process.exit(1);
});
