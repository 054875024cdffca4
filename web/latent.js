// Latent-space math and file checks for the face explorer, with no dependencies.
//
// - a seeded PRNG (mulberry32) and standard normals (Box-Muller), so a seed gives the same z
//   in every browser;
// - sampling from a latent density: latent_density.json (celeba-vae-latent-density/1, a
//   Gaussian mixture fitted to the posterior means of real faces) or the standard normal
//   prior, which is the same thing with one component, mean 0 and L = I:
//       c ~ weights, eps ~ N(0, I), z = means[c] + T * cholesky[c] @ eps   (T: temperature)
// - slerp, as generate.py's slerp (lerp for parallel, antiparallel or zero vectors);
// - a reader for the metadata_props of an ONNX file (export_onnx.py writes latent_dim,
//   image_size, channels, value_range and layout there), because onnxruntime-web does not
//   expose them: a few lines of protobuf wire-format parsing of the ModelProto's top level;
// - checks of attribute_directions.json and latent_density.json that say what is wrong.

export const DENSITY_FORMAT = 'celeba-vae-latent-density/1';
export const ATTRIBUTES_FORMAT = 'celeba-vae-attributes/2';
export const ONNX_FORMAT = 'celeba-vae-onnx/1';

/** A problem with a model file, worded for the page. */
export class ModelFileError extends Error {}

// ----------------------------------------------------------------------------- random numbers
/** mulberry32: a small 32-bit seeded PRNG; returns a function giving uniforms in [0, 1). */
export function mulberry32(seed) {
  let state = seed >>> 0;
  return function next() {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `count` standard normal numbers from a uniform source, by the Box-Muller transform. */
export function normals(uniform, count) {
  const out = new Float64Array(count);
  for (let i = 0; i < count; i += 2) {
    const u1 = 1 - uniform(); // in (0, 1]: log(u1) is finite
    const u2 = uniform();
    const radius = Math.sqrt(-2 * Math.log(u1));
    out[i] = radius * Math.cos(2 * Math.PI * u2);
    if (i + 1 < count) out[i + 1] = radius * Math.sin(2 * Math.PI * u2);
  }
  return out;
}

/** A fresh random 32-bit seed. */
export function randomSeed() {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

/** A seed typed by a person: an integer in [0, 2^32), or null. */
export function parseSeed(text) {
  const value = String(text).trim();
  if (!/^\d{1,10}$/.test(value)) return null;
  const seed = Number(value);
  return seed < 2 ** 32 ? seed : null;
}

// ----------------------------------------------------------------------------- latent density
/** The standard normal prior N(0, I) as a one-component density. */
export function priorDensity(latentDim) {
  const identity = new Float64Array(latentDim * latentDim);
  for (let i = 0; i < latentDim; i++) identity[i * latentDim + i] = 1;
  return {
    kind: 'prior',
    latentDim,
    components: 1,
    weights: Float64Array.of(1),
    means: [new Float64Array(latentDim)],
    cholesky: [identity],
    info: {},
  };
}

function numberArray(value, length, what) {
  if (!Array.isArray(value) || value.length !== length) {
    const found = Array.isArray(value) ? `${value.length} entries` : typeof value;
    throw new ModelFileError(`${what} should be a list of ${length} numbers, found ${found}`);
  }
  const out = Float64Array.from(value, (v) => (typeof v === 'number' ? v : NaN));
  if (!out.every(Number.isFinite)) throw new ModelFileError(`${what} holds something that is not a finite number`);
  return out;
}

/** A checked latent_density.json (parsed JSON) for a decoder of latentDim; throws ModelFileError. */
export function checkDensity(content, latentDim) {
  if (content === null || typeof content !== 'object' || content.format !== DENSITY_FORMAT) {
    const found = content !== null && typeof content === 'object' ? content.format : typeof content;
    throw new ModelFileError(`is not a ${DENSITY_FORMAT} file (format ${JSON.stringify(found ?? null)})`);
  }
  if (content.latent_dim !== latentDim) {
    throw new ModelFileError(
      `is for latent size ${JSON.stringify(content.latent_dim)}, but this decoder takes ${latentDim}`,
    );
  }
  const k = Array.isArray(content.weights) ? content.weights.length : 0;
  if (k < 1 || (content.components !== undefined && content.components !== k)) {
    throw new ModelFileError(`has ${k} mixture weights but says components ${JSON.stringify(content.components)}`);
  }
  const weights = numberArray(content.weights, k, 'weights');
  const sum = weights.reduce((a, b) => a + b, 0);
  if (weights.some((w) => w <= 0) || Math.abs(sum - 1) > 1e-4) {
    throw new ModelFileError(`has mixture weights that are not positive or do not sum to 1 (sum ${sum})`);
  }
  if (!Array.isArray(content.means) || content.means.length !== k) {
    throw new ModelFileError(`should have ${k} means, one per component`);
  }
  if (!Array.isArray(content.cholesky) || content.cholesky.length !== k) {
    throw new ModelFileError(`should have ${k} cholesky factors, one per component`);
  }
  const D = latentDim;
  const means = content.means.map((mean, c) => numberArray(mean, D, `means[${c}]`));
  const cholesky = content.cholesky.map((rows, c) => {
    if (!Array.isArray(rows) || rows.length !== D) {
      throw new ModelFileError(`cholesky[${c}] should be a ${D}x${D} matrix`);
    }
    const flat = new Float64Array(D * D);
    rows.forEach((row, i) => flat.set(numberArray(row, D, `cholesky[${c}][${i}]`), i * D));
    for (let i = 0; i < D; i++) {
      if (!(flat[i * D + i] > 0)) throw new ModelFileError(`cholesky[${c}] has a diagonal entry <= 0 (row ${i})`);
      for (let j = i + 1; j < D; j++) {
        if (flat[i * D + j] !== 0) throw new ModelFileError(`cholesky[${c}] is not lower triangular (row ${i})`);
      }
    }
    return flat;
  });
  const info = {};
  for (const key of ['fitted_on', 'selection']) if (key in content) info[key] = content[key];
  return { kind: 'density', latentDim: D, components: k, weights: weights.map((w) => w / sum), means, cholesky, info };
}

/** The random part of a face: a component and standard normal noise, from a seed. */
export function drawLatent(density, seed) {
  const uniform = mulberry32(seed);
  const u = uniform();
  let component = density.components - 1;
  for (let c = 0, cumulative = 0; c < density.components; c++) {
    cumulative += density.weights[c];
    if (u < cumulative) {
      component = c;
      break;
    }
  }
  return { component, eps: normals(uniform, density.latentDim) };
}

/** z = means[c] + T * cholesky[c] @ eps (Float64Array). */
export function latentFrom(density, component, eps, temperature) {
  const D = density.latentDim;
  const mean = density.means[component];
  const L = density.cholesky[component];
  const z = new Float64Array(D);
  for (let i = 0; i < D; i++) {
    let spread = 0;
    for (let j = 0; j <= i; j++) spread += L[i * D + j] * eps[j];
    z[i] = mean[i] + temperature * spread;
  }
  return z;
}

// ----------------------------------------------------------------------------- interpolation
export function lerp(a, b, t) {
  return a.map((v, i) => (1 - t) * v + t * b[i]);
}

/** Spherical interpolation, as generate.py's slerp. */
export function slerp(a, b, t) {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  const norms = Math.sqrt(na) * Math.sqrt(nb);
  if (norms === 0) return lerp(a, b, t);
  const omega = Math.acos(Math.min(1, Math.max(-1, dot / norms)));
  const sine = Math.sin(omega);
  if (sine < 1e-6) return lerp(a, b, t);
  const wa = Math.sin((1 - t) * omega) / sine;
  const wb = Math.sin(t * omega) / sine;
  return a.map((v, i) => wa * v + wb * b[i]);
}

// ----------------------------------------------------------------------------- attribute directions
/** {name: Float64Array} from a parsed attribute_directions.json; throws ModelFileError. */
export function checkDirections(content, latentDim) {
  if (content === null || typeof content !== 'object' || content.format !== ATTRIBUTES_FORMAT) {
    const found = content !== null && typeof content === 'object' ? content.format : typeof content;
    throw new ModelFileError(`is not a ${ATTRIBUTES_FORMAT} file (format ${JSON.stringify(found ?? null)})`);
  }
  if (content.latent_dim !== latentDim) {
    throw new ModelFileError(
      `is for latent size ${JSON.stringify(content.latent_dim)}, but this decoder takes ${latentDim}`,
    );
  }
  if (content.attributes === null || typeof content.attributes !== 'object') {
    throw new ModelFileError('has no "attributes" object');
  }
  const directions = {};
  for (const [name, entry] of Object.entries(content.attributes)) {
    directions[name] = numberArray(entry?.direction, latentDim, `the direction of ${name}`);
  }
  return directions;
}

// ----------------------------------------------------------------------------- ONNX metadata
function readVarint(bytes, position) {
  let value = 0;
  let scale = 1;
  for (let shift = 0; shift < 64; shift += 7) {
    if (position >= bytes.length) throw new ModelFileError('ends in the middle of a number (truncated file?)');
    const byte = bytes[position++];
    value += (byte & 0x7f) * scale;
    scale *= 128;
    if (byte < 0x80) return [value, position];
  }
  throw new ModelFileError('has a malformed number (not an ONNX file?)');
}

/** Walk the fields of one protobuf message: calls visit(field, wireType, start, end) for
 *  length-delimited fields and skips the others. */
function walkMessage(bytes, start, end, visit) {
  let position = start;
  while (position < end) {
    let key;
    [key, position] = readVarint(bytes, position);
    const field = Math.floor(key / 8);
    const wireType = key & 7;
    if (field === 0) throw new ModelFileError('is not an ONNX model (bad protobuf field)');
    if (wireType === 0) {
      [, position] = readVarint(bytes, position);
    } else if (wireType === 1) {
      position += 8;
    } else if (wireType === 5) {
      position += 4;
    } else if (wireType === 2) {
      let length;
      [length, position] = readVarint(bytes, position);
      if (position + length > end) throw new ModelFileError('is truncated or not an ONNX model');
      visit(field, position, position + length);
      position += length;
    } else {
      throw new ModelFileError(`is not an ONNX model (protobuf wire type ${wireType})`);
    }
  }
  if (position !== end) throw new ModelFileError('is truncated or not an ONNX model');
}

/** metadata_props of an ONNX ModelProto (field 14: StringStringEntryProto {1: key, 2: value}),
 *  as a plain object; whether the file has a graph (field 7) is returned as hasGraph. */
export function readOnnxMetadata(buffer) {
  const bytes = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer);
  const decoder = new TextDecoder('utf-8', { fatal: false });
  const metadata = {};
  let hasGraph = false;
  walkMessage(bytes, 0, bytes.length, (field, start, end) => {
    if (field === 7) hasGraph = true;
    if (field !== 14) return;
    let key = '';
    let value = '';
    walkMessage(bytes, start, end, (inner, s, e) => {
      if (inner === 1) key = decoder.decode(bytes.subarray(s, e));
      if (inner === 2) value = decoder.decode(bytes.subarray(s, e));
    });
    metadata[key] = value;
  });
  return { metadata, hasGraph };
}

/** Sizes from a decoder's metadata: {latentDim, imageSize, channels, valueRange, layout}. */
export function decoderSpec(metadata) {
  return modelSpec(metadata, 'decoder');
}

/** Sizes from an encoder's metadata: a decoder's, and crop (the side of the central square of
 *  the 178-pixel-wide aligned frame that is resized to its input). */
export function encoderSpec(metadata) {
  const spec = modelSpec(metadata, 'encoder');
  const crop = Number(metadata.crop ?? '148');
  if (!Number.isInteger(crop) || crop < 0) {
    throw new ModelFileError(`has a malformed crop in its metadata (${JSON.stringify(metadata.crop)})`);
  }
  return { ...spec, crop };
}

function modelSpec(metadata, part) {
  if (metadata.format !== ONNX_FORMAT) {
    throw new ModelFileError(
      `has no ${ONNX_FORMAT} metadata (format ${JSON.stringify(metadata.format ?? null)}); export it with export_onnx.py`,
    );
  }
  if ((metadata.part ?? 'decoder') !== part) {
    throw new ModelFileError(`is the ${metadata.part ?? 'decoder'}, not the ${part}; choose ${part}.onnx`);
  }
  const integer = (key) => {
    const value = Number(metadata[key]);
    if (!Number.isInteger(value) || value < 1) {
      throw new ModelFileError(`has no usable ${key} in its metadata (${JSON.stringify(metadata[key] ?? null)})`);
    }
    return value;
  };
  const range = String(metadata.value_range ?? '0,1')
    .split(',')
    .map(Number);
  if (range.length !== 2 || !range.every(Number.isFinite) || range[1] <= range[0]) {
    throw new ModelFileError(`has a malformed value_range in its metadata (${JSON.stringify(metadata.value_range)})`);
  }
  const layout = metadata.layout ?? 'NHWC';
  if (layout !== 'NHWC' && layout !== 'NCHW') {
    throw new ModelFileError(`has an unknown layout ${JSON.stringify(layout)} in its metadata`);
  }
  const channels = integer('channels');
  if (channels !== 1 && channels !== 3) throw new ModelFileError(`has ${channels} channels; the page shows 1 or 3`);
  return { latentDim: integer('latent_dim'), imageSize: integer('image_size'), channels, valueRange: range, layout };
}

/** A model input or decoder output (one image) -> RGBA bytes, as Python's (x * 255 + 0.5).astype(uint8) after
 *  mapping value_range to [0, 1] and clipping. */
export function toRgba(values, spec, rgba = new Uint8ClampedArray(spec.imageSize * spec.imageSize * 4)) {
  const { imageSize: size, channels, valueRange: [low, high], layout } = spec;
  const pixels = size * size;
  const scale = 255 / (high - low);
  for (let p = 0; p < pixels; p++) {
    for (let c = 0; c < 3; c++) {
      const channel = channels === 1 ? 0 : c;
      const index = layout === 'NHWC' ? p * channels + channel : channel * pixels + p;
      const level = Math.floor((values[index] - low) * scale + 0.5);
      rgba[p * 4 + c] = level < 0 ? 0 : level > 255 ? 255 : level;
    }
    rgba[p * 4 + 3] = 255;
  }
  return rgba;
}
