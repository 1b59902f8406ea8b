// The page: load the card and the model, decode an image, run the card's preprocessing, TTA,
// softmax and decision rule (edgederm.js) and show the result. window.edgederm is the hook the
// browser test drives (tests/web/run_demo.mjs).
import * as E from "./edgederm.js";

/* global ort */
const $ = (id) => document.getElementById(id);
const state = { card: null, session: null, ready: null, queue: Promise.resolve() };

function fmtPct(v) {
  return `${(100 * v).toFixed(1)}%`;
}

function metricWithCi(m) {
  if (!m || typeof m.value !== "number") return null;
  const ci = typeof m.lo === "number" && typeof m.hi === "number" ? ` (${Math.round((m.level || 0.95) * 100)}% CI ${fmtPct(m.lo)}–${fmtPct(m.hi)})` : "";
  return `${fmtPct(m.value)}${ci}`;
}

// The card's held-out metrics: the test split if recorded, else validation.
function cardMetrics(card) {
  const m = card.metrics || {};
  for (const [split, entry] of [["test", m.test], ["validation", m.val], ["test (reference)", m.reference && m.reference.test], ["validation (reference)", m.reference && m.reference.val]]) {
    if (entry && (entry.bacc || entry.mel_sensitivity)) return { split, entry };
  }
  return null;
}

function renderModel(card, views) {
  const spec = card.preprocessing;
  const d = card.decision || { rule: "argmax" };
  const rule = d.rule === "priority_thresholds"
    ? `priority thresholds (${(d.priority || Object.keys(d.thresholds || {})).filter((c) => c in (d.thresholds || {})).map((c) => `${c} ≥ ${d.thresholds[c].toFixed(3)}`).join(", ") || "none"}), else argmax`
    : "argmax";
  const rows = [
    ["name", card.name],
    ["classes", card.classes.join(", ")],
    ["input", `${spec.input_size[1]}×${spec.input_size[0]} ${spec.layout} ${spec.dtype}, resize ${spec.resize} (${spec.interpolation}${spec.resize === "shorter" ? `, crop ${spec.crop_pct}` : ""})`],
    ["TTA views", views.join(", ")],
    ["decision", rule],
    ["artifact", `${(card.artifact && card.artifact.format) || "onnx"} ${(card.artifact && card.artifact.precision) || ""}`],
  ];
  $("model-info").innerHTML = "<table>" + rows.map(([k, v]) => `<tr><td class="muted">${k}</td><td>${escapeHtml(String(v))}</td></tr>`).join("") + "</table>";
  const met = cardMetrics(card);
  if (met) {
    const lines = [];
    const bacc = metricWithCi(met.entry.bacc);
    const sens = metricWithCi(met.entry.mel_sensitivity);
    const spec2 = metricWithCi(met.entry.mel_specificity);
    if (bacc) lines.push(["balanced accuracy", bacc]);
    if (sens) lines.push(["MEL sensitivity", sens]);
    if (spec2) lines.push(["MEL specificity", spec2]);
    $("metrics").innerHTML = `<h2>Card metrics <span class="muted small">(${escapeHtml(met.split)}${met.entry.n ? `, n=${met.entry.n}` : ""})</span></h2><table>` +
      lines.map(([k, v]) => `<tr><td class="muted">${k}</td><td>${v}</td></tr>`).join("") + "</table>";
  } else {
    $("metrics").innerHTML = '<p class="muted small">The card records no held-out metrics.</p>';
  }
}

function escapeHtml(s) {
  return s.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

async function init() {
  const [card, demo] = await Promise.all([
    fetch("/card.json").then((r) => r.json()),
    fetch("/demo.json").then((r) => r.json()).catch(() => ({})),
  ]);
  if (demo.pillow) E.setPillowMajor(parseInt(demo.pillow, 10));
  const problem = E.unsupported(card);
  if (problem) throw new Error(problem);
  const views = E.cardViews(card);
  state.card = card;
  state.views = views;
  renderModel(card, views);
  ort.env.wasm.numThreads = 1; // no cross-origin isolation needed; fine for one image
  ort.env.wasm.wasmPaths = "/ort/";
  state.session = await ort.InferenceSession.create("/model.onnx", { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
  $("status").textContent = "Ready: choose an image.";
  return true;
}

/** Decode an image file/blob to RGB uint8 at its natural size (EXIF orientation applied). */
async function decode(blob) {
  const bmp = await createImageBitmap(blob, { imageOrientation: "from-image", premultiplyAlpha: "none", colorSpaceConversion: "none" });
  const canvas = new OffscreenCanvas(bmp.width, bmp.height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bmp, 0, 0); // no scaling: the resize is edgederm.js's Pillow filter
  const data = ctx.getImageData(0, 0, bmp.width, bmp.height).data;
  bmp.close();
  return E.rgbaToRgb(canvas.width, canvas.height, data);
}

async function runModel(tensor) {
  const input = new ort.Tensor("float32", tensor.data, [1, ...tensor.shape]);
  const out = await state.session.run({ [state.session.inputNames[0]]: input });
  return Array.from(out[state.session.outputNames[0]].data, Number);
}

/** Image → probabilities averaged over the card's TTA views → decision (as the Python runtime). */
async function classifyImage(img) {
  const { card, views } = state;
  const spec = card.preprocessing;
  const geo = E.geometric(spec, img);
  const logits = (card.model && card.model.output) || "logits";
  const probs = new Array(card.classes.length).fill(0);
  let first = null;
  const t0 = performance.now();
  for (const v of views) {
    const tensor = E.toTensor(spec, E.applyView(v, geo, spec));
    if (!first) first = tensor;
    const out = await runModel(tensor);
    const p = logits === "logits" ? E.softmax(out) : out;
    p.forEach((x, i) => (probs[i] += x / views.length));
  }
  const ms = performance.now() - t0;
  const decision = E.decide(probs, card.classes, card.decision || { rule: "argmax" });
  const mel = card.classes.indexOf("MEL");
  const melThr = card.decision && card.decision.rule === "priority_thresholds" && card.decision.thresholds ? card.decision.thresholds.MEL : undefined;
  const melanoma_flag = mel >= 0 && (decision.index === mel || (melThr !== undefined && probs[mel] >= melThr));
  return { probs, decision: { ...decision, class: card.classes[decision.index] }, melanoma_flag, views, geo, tensor: first, ms };
}

function renderResult(r, name) {
  const { card } = state;
  const d = card.decision || {};
  const thr = d.rule === "priority_thresholds" ? d.thresholds || {} : {};
  $("status").textContent = `${name}: ${r.views.length} view${r.views.length > 1 ? "s" : ""}, ${r.ms.toFixed(0)} ms`;
  $("decision").innerHTML = `Decision: <strong>${escapeHtml(r.decision.class)}</strong> <span class="muted small">(${r.decision.by === "threshold" ? `${escapeHtml(r.decision.threshold_class)} threshold reached` : d.rule === "priority_thresholds" ? "no threshold reached: argmax fallback" : "argmax"})</span>`;
  const mel = card.classes.indexOf("MEL");
  if (mel >= 0) {
    const why = thr.MEL !== undefined ? `P(MEL) ${fmtPct(r.probs[mel])}, threshold ${fmtPct(thr.MEL)}` : `P(MEL) ${fmtPct(r.probs[mel])}, argmax rule`;
    $("flag").innerHTML = `<div class="flag ${r.melanoma_flag ? "on" : "off"}">Melanoma flag: <strong>${r.melanoma_flag ? "RAISED" : "not raised"}</strong> <span class="small">(${why})</span></div>`;
  }
  $("bars").innerHTML = card.classes.map((c, i) => {
    const t = thr[c] !== undefined ? `<div class="thr" style="left:${(100 * thr[c]).toFixed(1)}%" title="threshold ${thr[c]}"></div>` : "";
    return `<div class="bar${i === r.decision.index ? " decided" : ""}"><span>${escapeHtml(c)}</span><div class="track"><div class="fill" style="width:${(100 * r.probs[i]).toFixed(2)}%"></div>${t}</div><span>${fmtPct(r.probs[i])}</span></div>`;
  }).join("");
  $("rule").textContent = "Probabilities are averaged over the card's TTA views; red ticks mark decision thresholds. " +
    "Same preprocessing (Pillow-exact resize), views and decision rule as edgederm's Python runtime.";
  const cv = $("model-view");
  cv.width = r.geo.width;
  cv.height = r.geo.height;
  const rgba = new Uint8ClampedArray(r.geo.width * r.geo.height * 4);
  for (let i = 0, j = 0; i < r.geo.data.length; i += 3, j += 4) {
    rgba[j] = r.geo.data[i];
    rgba[j + 1] = r.geo.data[i + 1];
    rgba[j + 2] = r.geo.data[i + 2];
    rgba[j + 3] = 255;
  }
  cv.getContext("2d").putImageData(new ImageData(rgba, r.geo.width, r.geo.height), 0, 0);
  $("model-view-caption").textContent = `what the model sees (${r.geo.width}×${r.geo.height})`;
}

function toBase64(typed) {
  const bytes = new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

// One classification at a time: an InferenceSession must not run concurrently.
function serial(fn) {
  const next = state.queue.then(fn, fn);
  state.queue = next.catch(() => {});
  return next;
}

async function classifyBlob(blob, name, { tensor = false } = {}) {
  await state.ready;
  return serial(async () => {
    const img = await decode(blob);
    const r = await classifyImage(img);
    renderResult(r, name);
    const out = {
      probs: r.probs,
      decision: r.decision,
      melanoma_flag: r.melanoma_flag,
      views: r.views,
      decoded_size: [img.width, img.height],
      ms: r.ms,
      preprocessed_sample: { shape: r.tensor.shape, first: Array.from(r.tensor.data.subarray(0, 8)) },
    };
    if (tensor) out.tensor_b64 = toBase64(r.tensor.data);
    return out;
  });
}

async function onFile(file) {
  if (!file) return;
  $("preview").src = URL.createObjectURL(file);
  try {
    await classifyBlob(file, file.name);
  } catch (e) {
    $("status").innerHTML = `<span class="error">${escapeHtml(String(e.message || e))}</span>`;
  }
}

$("file").addEventListener("change", (ev) => onFile(ev.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (ev) => { ev.preventDefault(); drop.classList.remove("over"); onFile(ev.dataTransfer.files[0]); });

state.ready = init().catch((e) => {
  $("model-info").innerHTML = `<span class="error">${escapeHtml(String(e.message || e))}</span>`;
  throw e;
});

window.edgederm = {
  ready: () => state.ready,
  card: () => state.card,
  /** Fetch an image, classify it as the page does and show it; {probs, decision, ...}. */
  classifyUrl: async (url, opts = {}) => {
    const blob = await (await fetch(url)).blob();
    $("preview").src = URL.createObjectURL(blob);
    return classifyBlob(blob, url.split("/").pop(), opts);
  },
  /** The page's preprocessing of an image under any spec (golden checks), as base64 bytes. */
  preprocessUrl: async (url, spec) => {
    await state.ready; // sets the Pillow version the resize follows
    const img = await decode(await (await fetch(url)).blob());
    const t = E.preprocess(spec, img);
    return { shape: t.shape, dtype: t.dtype, b64: toBase64(t.data), decoded_size: [img.width, img.height] };
  },
  decide: (probs, classes, decision) => E.decide(probs, classes, decision).index,
};
