// The browser side of edgederm's single sources of truth: the card's PreprocessSpec
// (edgederm/preprocess.py), the TTA views (edgederm/tta.py), softmax and the decision rule
// (edgederm/decision.py). Plain ES module without DOM access, so Node can import it as well.
//
// Resizing re-implements Pillow's antialiased separable resampling (Image.resize with
// reducing_gap=None: double-precision filter weights, 22-bit fixed-point coefficients, a
// horizontal pass into a uint8 image, then a vertical pass). Canvas drawImage scaling uses other
// filters, so it is never used for the model input. tests/test_web_demo.py checks that this file
// gives Python's preprocessing bit for bit on real images.

const PRECISION_BITS = 32 - 8 - 2;
const ONE = 2 ** PRECISION_BITS;

const FILTERS = {
  bilinear: {
    support: 1.0,
    f: (x) => {
      x = Math.abs(x);
      return x < 1.0 ? 1.0 - x : 0.0;
    },
  },
  bicubic: {
    support: 2.0,
    f: (x) => {
      const a = -0.5;
      x = Math.abs(x);
      if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
      if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
      return 0.0;
    },
  },
  lanczos: {
    support: 3.0,
    f: (x) => {
      const sinc = (v) => {
        if (v === 0.0) return 1.0;
        v *= Math.PI;
        return Math.sin(v) / v;
      };
      return -3.0 <= x && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0;
    },
  },
};

/** An RGB uint8 image: {width, height, data: Uint8Array(width*height*3)}. */
export function makeImage(width, height, data) {
  return { width, height, data: data || new Uint8Array(width * height * 3) };
}

/** RGBA pixels (canvas ImageData) → RGB, compositing transparency on black like load_image. */
export function rgbaToRgb(width, height, rgba) {
  const out = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    const a = rgba[i + 3];
    if (a === 255) {
      out[j] = rgba[i];
      out[j + 1] = rgba[i + 1];
      out[j + 2] = rgba[i + 2];
    } else {
      for (let c = 0; c < 3; c++) out[j + c] = Math.round((rgba[i + c] * a) / 255);
    }
  }
  return makeImage(width, height, out);
}

// Pillow's precompute_coeffs + normalize_coeffs_8bpc (Resample.c) for one axis.
function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Float64Array(outSize * ksize); // fixed-point integers, exact in doubles
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    const w = new Float64Array(xmax);
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      w[x] = filter.f((x + xmin - center + 0.5) * ss);
      ww += w[x];
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0.0 ? w[x] / ww : w[x];
      kk[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * ONE) : Math.trunc(0.5 + v * ONE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(ss) {
  const v = Math.floor(ss / ONE);
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

// Pillow's NEAREST resize is an affine transform sampling at pixel centres (ImagingScaleAffine).
function resizeNearest(img, outW, outH) {
  const out = makeImage(outW, outH);
  const ax = img.width / outW;
  const ay = img.height / outH;
  const xin = new Int32Array(outW);
  let xo = ax * 0.5;
  for (let x = 0; x < outW; x++, xo += ax) xin[x] = Math.min(img.width - 1, Math.max(0, Math.trunc(xo)));
  let yo = ay * 0.5;
  for (let y = 0; y < outH; y++, yo += ay) {
    const yi = Math.min(img.height - 1, Math.max(0, Math.trunc(yo)));
    for (let x = 0; x < outW; x++) {
      const s = (yi * img.width + xin[x]) * 3;
      const d = (y * outW + x) * 3;
      out.data[d] = img.data[s];
      out.data[d + 1] = img.data[s + 1];
      out.data[d + 2] = img.data[s + 2];
    }
  }
  return out;
}

// Which pass Pillow runs first. Pillow >= 13 resamples vertically first when the height shrinks
// by more than twice as many pixels as the width (python-pillow/Pillow#9549); older versions always
// run the horizontal pass first. The uint8 intermediate makes the order visible in the output, so
// the page follows the Pillow of the Python runtime that serves it (setPillowMajor).
let pillowMajor = 13;
export function setPillowMajor(major) {
  pillowMajor = Number(major) || 13;
}

function verticalFirst(w, h, outW, outH) {
  return pillowMajor >= 13 && outH < h && h - outH > 2 * (w - outW);
}

function resizeHorizontal(img, outW, filter, first, rows) {
  const { ksize, bounds, kk } = coefficients(img.width, outW, filter);
  const tmp = makeImage(outW, rows);
  for (let y = 0; y < rows; y++) {
    const row = (y + first) * img.width * 3;
    for (let xx = 0; xx < outW; xx++) {
      const xmin = bounds[xx * 2];
      const xmax = bounds[xx * 2 + 1];
      const k = xx * ksize;
      let s0 = ONE / 2;
      let s1 = ONE / 2;
      let s2 = ONE / 2;
      for (let x = 0; x < xmax; x++) {
        const p = row + (x + xmin) * 3;
        const c = kk[k + x];
        s0 += img.data[p] * c;
        s1 += img.data[p + 1] * c;
        s2 += img.data[p + 2] * c;
      }
      const d = (y * outW + xx) * 3;
      tmp.data[d] = clip8(s0);
      tmp.data[d + 1] = clip8(s1);
      tmp.data[d + 2] = clip8(s2);
    }
  }
  return tmp;
}

function resizeVertical(img, outH, coeffs) {
  const { ksize, bounds, kk } = coeffs;
  const out = makeImage(img.width, outH);
  const stride = img.width * 3;
  for (let yy = 0; yy < outH; yy++) {
    const ymin = bounds[yy * 2];
    const ymax = bounds[yy * 2 + 1];
    const k = yy * ksize;
    for (let i = 0; i < stride; i++) {
      let s = ONE / 2;
      for (let y = 0; y < ymax; y++) s += img.data[(y + ymin) * stride + i] * kk[k + y];
      out.data[yy * stride + i] = clip8(s);
    }
  }
  return out;
}

/** Pillow's Image.resize((outW, outH), interpolation, reducing_gap=None) on an RGB image. */
export function resize(img, outW, outH, interpolation) {
  if (outW === img.width && outH === img.height) return img;
  if (interpolation === "nearest") return resizeNearest(img, outW, outH);
  const filter = FILTERS[interpolation];
  if (!filter) throw new Error(`unknown interpolation ${JSON.stringify(interpolation)}`);
  const needH = outW !== img.width;
  const needV = outH !== img.height;
  const vert = coefficients(img.height, outH, filter);
  if (needH && needV && verticalFirst(img.width, img.height, outW, outH)) {
    const tmp = resizeVertical(img, outH, vert);
    return resizeHorizontal(tmp, outW, filter, 0, outH);
  }
  let cur = img;
  if (needH) {
    // Horizontal pass over only the rows the vertical pass will read (as Pillow does).
    const first = vert.bounds[0];
    const last = vert.bounds[outH * 2 - 2] + vert.bounds[outH * 2 - 1];
    cur = resizeHorizontal(img, outW, filter, needV ? first : 0, needV ? last - first : img.height);
    if (needV) for (let i = 0; i < outH; i++) vert.bounds[i * 2] -= first;
  }
  return needV ? resizeVertical(cur, outH, vert) : cur;
}

/** Pillow's Image.crop for a box inside the image. */
export function crop(img, left, top, w, h) {
  const out = makeImage(w, h);
  for (let y = 0; y < h; y++) {
    const s = ((y + top) * img.width + left) * 3;
    out.data.set(img.data.subarray(s, s + w * 3), y * w * 3);
  }
  return out;
}

// Python's round(): half to even (used by resize_target and the crop offsets).
function pyRound(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** PreprocessSpec.resize_target: the (width, height) an image is resized to before cropping. */
export function resizeTarget(spec, w, h) {
  const [H, W] = spec.input_size;
  if (spec.resize === "stretch") return [W, H];
  if (spec.resize === "pad") {
    const scale = Math.min(W / w, H / h);
    return [Math.max(1, pyRound(w * scale)), Math.max(1, pyRound(h * scale))];
  }
  if (spec.resize !== "shorter") throw new Error(`unknown resize mode ${JSON.stringify(spec.resize)}`);
  const shortTarget = pyRound(Math.min(H, W) / spec.crop_pct);
  const scale = shortTarget / Math.min(w, h);
  if (w <= h) return [shortTarget, Math.max(1, pyRound(h * scale))];
  return [Math.max(1, pyRound(w * scale)), shortTarget];
}

/** PreprocessSpec.geometric: resize and crop/pad an RGB image to input_size. */
export function geometric(spec, img) {
  const [H, W] = spec.input_size;
  const [tw, th] = resizeTarget(spec, img.width, img.height);
  img = resize(img, tw, th, spec.interpolation);
  if (spec.resize === "pad") {
    const out = makeImage(W, H);
    const pad = spec.pad_value || [0, 0, 0];
    for (let i = 0; i < W * H; i++) out.data.set(pad, i * 3);
    // Image.paste at ((W - tw) // 2, (H - th) // 2)
    const left = Math.floor((W - tw) / 2);
    const top = Math.floor((H - th) / 2);
    for (let y = 0; y < th; y++) out.data.set(img.data.subarray(y * tw * 3, (y + 1) * tw * 3), ((y + top) * W + left) * 3);
    return out;
  }
  if (tw !== W || th !== H) {
    const left = pyRound((tw - W) / 2.0);
    const top = pyRound((th - H) / 2.0);
    img = crop(img, left, top, W, H);
  }
  return img;
}

// -- TTA views (edgederm/tta.py): exact pixel permutations and two fixed zooms ---------------
// Each dihedral view maps an output pixel (x, y) to its source pixel in a w x h input.
const DIHEDRAL = {
  identity: { swap: false, src: (x, y, w, h) => [x, y] },
  hflip: { swap: false, src: (x, y, w, h) => [w - 1 - x, y] },
  vflip: { swap: false, src: (x, y, w, h) => [x, h - 1 - y] },
  rot90: { swap: true, src: (x, y, w, h) => [w - 1 - y, x] }, // Pillow ROTATE_90 is counter-clockwise
  rot180: { swap: false, src: (x, y, w, h) => [w - 1 - x, h - 1 - y] },
  rot270: { swap: true, src: (x, y, w, h) => [y, h - 1 - x] },
  transpose: { swap: true, src: (x, y, w, h) => [y, x] },
  transverse: { swap: true, src: (x, y, w, h) => [w - 1 - y, h - 1 - x] },
};
const ZOOMS = { zoom90: 0.9, zoom80: 0.8 };
export const VIEWS = [...Object.keys(DIHEDRAL), ...Object.keys(ZOOMS)];

/** tta.apply_view on the geometric (uint8 RGB) image. */
export function applyView(name, img, spec) {
  if (name === "identity") return img;
  const d = DIHEDRAL[name];
  if (d) {
    const { width: w, height: h } = img;
    const ow = d.swap ? h : w;
    const oh = d.swap ? w : h;
    const out = makeImage(ow, oh);
    for (let y = 0; y < oh; y++) {
      for (let x = 0; x < ow; x++) {
        const [sx, sy] = d.src(x, y, w, h);
        const s = (sy * w + sx) * 3;
        const o = (y * ow + x) * 3;
        out.data[o] = img.data[s];
        out.data[o + 1] = img.data[s + 1];
        out.data[o + 2] = img.data[s + 2];
      }
    }
    return out;
  }
  if (name in ZOOMS) {
    const { width: w, height: h } = img;
    const cw = pyRound(w * ZOOMS[name]);
    const ch = pyRound(h * ZOOMS[name]);
    const c = crop(img, Math.floor((w - cw) / 2), Math.floor((h - ch) / 2), cw, ch);
    return resize(c, w, h, spec.interpolation);
  }
  throw new Error(`unknown TTA view ${JSON.stringify(name)}; known: ${VIEWS.join(", ")}`);
}

// numpy's np.round: half to even.
function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x - Math.trunc(x)) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * PreprocessSpec.normalize + finalize: uint8 RGB → the model input (no batch axis) as a typed
 * array with its shape. float32 arithmetic is reproduced with Math.fround step by step, so the
 * result equals numpy's float32 computation exactly.
 */
export function toTensor(spec, img) {
  const { width: w, height: h } = img;
  const f = Math.fround;
  const mean = spec.mean.map(f);
  const std = spec.std.map(f);
  const order = spec.channel_order === "BGR" ? [2, 1, 0] : [0, 1, 2];
  const nchw = spec.layout === "NCHW";
  if (!nchw && spec.layout !== "NHWC") throw new Error(`unknown layout ${JSON.stringify(spec.layout)}`);
  const n = w * h * 3;
  const x = new Float32Array(n);
  for (let p = 0; p < w * h; p++) {
    for (let c = 0; c < 3; c++) {
      const src = order[c];
      const v = f(f(f(img.data[p * 3 + src] / 255) - mean[src]) / std[src]);
      x[nchw ? c * w * h + p : p * 3 + c] = v;
    }
  }
  const shape = nchw ? [3, h, w] : [h, w, 3];
  if (spec.dtype === "float32") return { dtype: "float32", shape, data: x };
  if (spec.dtype === "uint8" || spec.dtype === "int8") {
    if (spec.input_scale == null || spec.input_zero_point == null) throw new Error("integer input needs input_scale and input_zero_point");
    const [lo, hi] = spec.dtype === "uint8" ? [0, 255] : [-128, 127];
    const out = spec.dtype === "uint8" ? new Uint8Array(n) : new Int8Array(n);
    const scale = f(spec.input_scale);
    for (let i = 0; i < n; i++) {
      const q = f(roundHalfEven(f(x[i] / scale)) + spec.input_zero_point);
      out[i] = Math.min(hi, Math.max(lo, q));
    }
    return { dtype: spec.dtype, shape, data: out };
  }
  throw new Error(`input dtype ${spec.dtype} is not supported by the web demo (float32 ONNX models only)`);
}

/** PreprocessSpec.apply: RGB image → model input. */
export function preprocess(spec, img) {
  return toTensor(spec, geometric(spec, img));
}

export function softmax(logits) {
  const m = Math.max(...logits);
  const e = logits.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

function argmax(p) {
  let best = 0;
  for (let i = 1; i < p.length; i++) if (p[i] > p[best]) best = i;
  return best;
}

/**
 * decision.decide for one probability vector: the index of the decided class and which rule
 * decided it ({index, by: "argmax" | "threshold", threshold_class}).
 */
export function decide(probs, classes, decision) {
  const rule = (decision && decision.rule) || "argmax";
  const pred = argmax(probs);
  if (rule === "argmax") return { index: pred, by: "argmax" };
  if (rule !== "priority_thresholds") throw new Error(`unknown decision rule ${JSON.stringify(rule)}`);
  const thresholds = decision.thresholds || {};
  const priority = "priority" in decision ? decision.priority : Object.keys(thresholds);
  for (const name of priority) {
    if (!(name in thresholds)) continue;
    const c = classes.indexOf(name);
    if (c < 0) throw new Error(`threshold for ${JSON.stringify(name)}, which is not a class: ${classes.join(", ")}`);
    if (probs[c] >= thresholds[name]) return { index: c, by: "threshold", threshold_class: name };
  }
  return { index: pred, by: "argmax" };
}

/** The card's TTA views, checked against the known ones. */
export function cardViews(card) {
  const views = (card.tta && card.tta.views) || ["identity"];
  const unknown = views.filter((v) => !VIEWS.includes(v));
  if (unknown.length) throw new Error(`unknown TTA views ${unknown.join(", ")}; known: ${VIEWS.join(", ")}`);
  return views;
}

/**
 * What the page can run: a single float32 ONNX model without a segmentation stage. Returns an
 * error message, or null.
 */
export function unsupported(card) {
  const spec = card.preprocessing;
  if (spec.dtype !== "float32") return `input dtype ${spec.dtype} is not supported by the web demo (float32 ONNX models only)`;
  if (card.model && card.model.segmenter) return "cards with a segmentation stage are not supported by the web demo";
  if (card.model && card.model.combine === "logit_stacking") return "stacked ensembles are not supported by the web demo";
  return null;
}
