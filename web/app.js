// The face explorer: loads an exported decoder.onnx (and, when present, attribute_directions.json
// and latent_density.json) and decodes faces in the browser with onnxruntime-web.
//
// URL parameters:
//   model=FOLDER     folder holding decoder.onnx, relative to the repository root (default
//                    pretrained/celeba64) or a URL of this server; another origin is refused
//   seed=N           the first face's seed (default: a random one)
//   temperature=T    the first temperature (default 1 with a fitted density, 0.7 with the prior)
//   threads=N        WebAssembly threads (default 1; >1 needs the COOP/COEP headers web/serve.py sends)
//   backend=webgpu   try WebGPU first (falls back to WebAssembly)
//
// The face is drawn at the model's size and shown about FACE_PX wide, an integer multiple, scaled
// smoothly or pixelated as chosen (remembered in localStorage).
//
// window.explorer exposes the state for the tests and the benchmark (tests/test_web.py,
// bench/web_latency.py): status, error, z(), output(), rgba(), info(), whenIdle(), timeDecodes(n).

import * as latent from './latent.js';

const params = new URLSearchParams(location.search);
const ORT_DIR = new URL('./node_modules/onnxruntime-web/dist/', import.meta.url).href;
const REPO_ROOT = new URL('../', import.meta.url); // web/ sits in the repository root
const DEFAULT_MODEL = 'pretrained/celeba64';
const FEATURED = ['Smiling', 'Blond_Hair', 'Male', 'Eyeglasses', 'Young', 'Bangs'];
const PRIOR_TEMPERATURE = 0.7; // prior samples at T = 1 land between faces; 0.7 looks better
const PLAY_SECONDS = 2.5;
const DECODE_HISTORY = 50;
const FACE_PX = 256;
const SCALING_KEY = 'face-explorer-scaling';

const $ = (id) => document.getElementById(id);
const ui = {
  face: $('face'),
  scaling: document.querySelectorAll('input[name="scaling"]'),
  loading: $('loading'),
  error: $('error'),
  newFace: $('new-face'),
  download: $('download'),
  seed: $('seed'),
  copySeed: $('copy-seed'),
  seedForm: $('seed-form'),
  seedInput: $('seed-input'),
  seedGo: $('seed-go'),
  sampler: $('sampler'),
  notice: $('notice'),
  temperature: $('temperature'),
  temperatureValue: $('temperature-value'),
  attributes: $('attributes'),
  addAttribute: $('add-attribute'),
  resetAttributes: $('reset-attributes'),
  attributesNote: $('attributes-note'),
  thumbA: $('thumb-a'),
  thumbB: $('thumb-b'),
  pickA: $('pick-a'),
  pickB: $('pick-b'),
  pathT: $('path-t'),
  pathTValue: $('path-t-value'),
  play: $('play'),
  modelName: $('model-name'),
  modelSpec: $('model-spec'),
  files: $('files'),
  firstFace: $('first-face'),
  decodeTime: $('decode-time'),
  backend: $('backend'),
};

const state = {
  status: 'loading', // loading | ready | error
  error: '',
  ort: null,
  backend: '',
  session: null,
  inputName: 'z',
  outputName: 'image',
  model: '',
  spec: null,
  metadata: {},
  density: null,
  directions: {},
  alphas: {},
  seed: 0,
  component: 0,
  eps: null,
  temperature: 1,
  source: 'sample', // sample: seed and temperature; path: slerp between A and B
  pathA: null,
  pathB: null,
  t: 0,
  playing: false,
  z: null,
  output: null,
  decodes: 0,
  timings: { firstFaceMs: null, modelFetchMs: null, sessionMs: null, firstDecodeMs: null, decodeMs: [] },
};

// ----------------------------------------------------------------------------- errors and notes
function describe(error) {
  return error instanceof Error ? error.message : String(error);
}

function showError(error) {
  state.status = 'error';
  state.error = describe(error);
  ui.error.textContent = state.error;
  ui.error.hidden = false;
  ui.loading.hidden = true;
  ui.face.classList.add('failed');
  setEnabled(false);
  console.error(error);
}

function clearError() {
  state.error = '';
  ui.error.hidden = true;
  ui.face.classList.remove('failed');
}

function setEnabled(enabled) {
  for (const element of [ui.newFace, ui.download, ui.copySeed, ui.seedGo, ui.temperature, ui.pickA, ui.pickB]) {
    element.disabled = !enabled;
  }
  ui.resetAttributes.disabled = !enabled || Object.keys(state.directions).length === 0;
  for (const input of ui.attributes.querySelectorAll('input')) input.disabled = !enabled;
  updatePathControls();
}

// ----------------------------------------------------------------------------- onnxruntime-web
async function loadOrt() {
  if (state.ort) return state.ort;
  const webgpu = params.get('backend') === 'webgpu';
  const file = webgpu ? 'ort.webgpu.min.mjs' : 'ort.wasm.min.mjs';
  let ort;
  try {
    ort = await import(ORT_DIR + file);
  } catch (error) {
    throw new Error(
      `onnxruntime-web could not be loaded from ${ORT_DIR}${file} (${describe(error)}).\n\n` +
        'Install it once with `npm ci` in the web/ folder, then reload.',
    );
  }
  const wanted = Number.parseInt(params.get('threads') ?? '1', 10);
  let threads = Number.isInteger(wanted) && wanted > 0 ? wanted : 1;
  if (threads > 1 && !self.crossOriginIsolated) {
    note(`threads=${threads} needs a cross-origin isolated page (serve it with web/serve.py); using 1 thread`);
    threads = 1;
  }
  ort.env.wasm.wasmPaths = ORT_DIR;
  ort.env.wasm.numThreads = threads;
  state.backend = `${webgpu ? 'WebGPU, else ' : ''}WebAssembly (${threads} thread${threads > 1 ? 's' : ''})`;
  state.ort = ort;
  return ort;
}

async function createSession(bytes) {
  const ort = await loadOrt();
  const providers = params.get('backend') === 'webgpu' ? ['webgpu', 'wasm'] : ['wasm'];
  try {
    return await ort.InferenceSession.create(bytes, { executionProviders: providers, graphOptimizationLevel: 'all' });
  } catch (error) {
    throw new Error(`decoder.onnx could not be opened by onnxruntime-web: ${describe(error)}`);
  }
}

// ----------------------------------------------------------------------------- loading a model
function note(text) {
  ui.notice.textContent = ui.notice.textContent ? `${ui.notice.textContent} ${text}` : text;
}

function parseJson(text, name) {
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new Error(`${name} is not valid JSON (${describe(error)}).`);
  }
}

/** Fetch one file of the model folder: bytes or text, or null for an optional file that is absent. */
async function fetchFile(folder, name, { optional = false, binary = false } = {}) {
  const url = new URL(name, folder).href;
  let response;
  try {
    response = await fetch(url, { cache: 'no-cache' });
  } catch (error) {
    throw new Error(`Could not fetch ${url} (${describe(error)}). Is the server still running?`);
  }
  if (response.status === 404 && optional) return null;
  if (!response.ok) {
    const hint =
      name === 'decoder.onnx'
        ? '\n\nThe model folder must hold decoder.onnx, written by `python export_onnx.py --run runs/<name>`. ' +
          'Choose the folder with ?model=<folder below the repository root> in the address, ' +
          'or open the files with the file picker.'
        : '';
    throw new Error(`${name} is missing: ${url} answered HTTP ${response.status} ${response.statusText}.${hint}`);
  }
  return binary ? new Uint8Array(await response.arrayBuffer()) : response.text();
}

/** The ?model= folder: below the repository root, or a URL of this server; never another origin. */
function modelFolder() {
  const wanted = params.get('model') || DEFAULT_MODEL;
  const folder = wanted.endsWith('/') ? wanted : `${wanted}/`;
  let url = null;
  try {
    url = new URL(folder, REPO_ROOT);
  } catch {
    // reported below
  }
  if (url?.origin !== location.origin) {
    throw new Error(
      `?model=${wanted} is not a folder of this server: the page loads models only from ${location.origin}. ` +
        'Give a folder below the repository root, such as ?model=runs/<name>, or open the files with the file picker.',
    );
  }
  return { name: wanted, url };
}

async function loadFromUrl() {
  const { name, url } = modelFolder();
  const start = performance.now();
  const runtime = loadOrt(); // its module loads while the files download
  const [decoder, directions, density] = await Promise.all([
    fetchFile(url, 'decoder.onnx', { binary: true }),
    fetchFile(url, 'attribute_directions.json', { optional: true }),
    fetchFile(url, 'latent_density.json', { optional: true }),
  ]);
  state.timings.modelFetchMs = performance.now() - start;
  await runtime;
  await openModel({ name, decoder, directions, density });
}

/** Files from the picker: one .onnx (decoder.onnx preferred) and any of the two JSON files. */
async function loadFromFiles(files) {
  const list = Array.from(files);
  const onnx = list.filter((file) => file.name.endsWith('.onnx'));
  const decoderFile = onnx.find((file) => file.name === 'decoder.onnx') ?? onnx[0];
  if (!decoderFile) {
    throw new Error(`No .onnx file among ${list.map((f) => f.name).join(', ') || 'the chosen files'}: choose decoder.onnx.`);
  }
  const texts = { directions: null, density: null };
  for (const file of list.filter((f) => f.name.endsWith('.json'))) {
    const text = await file.text();
    if (file.name === 'attribute_directions.json') texts.directions = text;
    else if (file.name === 'latent_density.json') texts.density = text;
    else {
      // a renamed file: recognise it by its format, ignore other JSON (config.json, ...)
      let format;
      try {
        format = JSON.parse(text)?.format;
      } catch {
        format = undefined;
      }
      if (format === latent.ATTRIBUTES_FORMAT) texts.directions = text;
      else if (format === latent.DENSITY_FORMAT) texts.density = text;
      else note(`${file.name} ignored (not attribute directions or a latent density).`);
    }
  }
  const decoder = new Uint8Array(await decoderFile.arrayBuffer());
  const name = `your files: ${[decoderFile.name, texts.directions && 'directions', texts.density && 'density'].filter(Boolean).join(', ')}`;
  await openModel({ name, decoder, ...texts });
}

async function openModel({ name, decoder, directions, density }) {
  let spec;
  let metadata;
  try {
    ({ metadata } = latent.readOnnxMetadata(decoder));
    spec = latent.decoderSpec(metadata);
  } catch (error) {
    throw new Error(`decoder.onnx ${describe(error)}`);
  }
  let directionMap = {};
  if (directions !== null) {
    try {
      directionMap = latent.checkDirections(parseJson(directions, 'attribute_directions.json'), spec.latentDim);
    } catch (error) {
      throw new Error(
        error instanceof latent.ModelFileError ? `attribute_directions.json ${error.message}.` : describe(error),
      );
    }
  }
  let fitted = null;
  if (density !== null) {
    try {
      fitted = latent.checkDensity(parseJson(density, 'latent_density.json'), spec.latentDim);
    } catch (error) {
      throw new Error(
        error instanceof latent.ModelFileError
          ? `latent_density.json ${error.message}. Fit it again for this model, or remove it to sample from the prior.`
          : describe(error),
      );
    }
  }
  const start = performance.now();
  const session = await createSession(decoder);
  state.timings.sessionMs = performance.now() - start;
  const inputs = session.inputNames;
  const outputs = session.outputNames;
  if (inputs.length !== 1 || !outputs.includes('image')) {
    throw new Error(
      `decoder.onnx has inputs [${inputs}] and outputs [${outputs}]; an exported decoder takes z and gives image.`,
    );
  }
  if (state.session) await state.session.release?.();
  Object.assign(state, {
    session,
    inputName: inputs[0],
    outputName: 'image',
    model: name,
    spec,
    metadata,
    directions: directionMap,
    density: fitted ?? latent.priorDensity(spec.latentDim),
    alphas: {},
    source: 'sample',
    pathA: null,
    pathB: null,
    t: 0,
  });
  ui.face.width = ui.face.height = spec.imageSize;
  const shown = `${spec.imageSize * Math.max(1, Math.round(FACE_PX / spec.imageSize))}px`;
  ui.face.style.width = ui.face.style.height = shown;
  showModel();
  buildAttributeSliders();
  resetThumbs();
}

// ----------------------------------------------------------------------------- the page's controls
function showModel() {
  const { spec, density, metadata } = state;
  ui.modelName.textContent = state.model;
  const colour = spec.channels === 3 ? 'RGB' : 'grayscale';
  ui.modelSpec.textContent =
    `latent size ${spec.latentDim}, ${spec.imageSize}x${spec.imageSize} ${colour}, values ${spec.valueRange.join(' to ')}` +
    (metadata.source_run ? `, from run ${metadata.source_run}` : '');
  const wanted = Number.parseFloat(params.get('temperature') ?? '');
  state.temperature = Number.isFinite(wanted) ? wanted : density.kind === 'density' ? 1 : PRIOR_TEMPERATURE;
  ui.temperature.value = String(state.temperature);
  state.temperature = Number(ui.temperature.value); // as the slider rounds it
  ui.temperatureValue.textContent = state.temperature.toFixed(2);
  if (density.kind === 'density') {
    const k = density.components;
    ui.sampler.textContent = `Sampling from the fitted latent density (latent_density.json: ${k} Gaussian component${k > 1 ? 's' : ''}).`;
  } else {
    ui.sampler.textContent =
      'Sampling from the standard normal prior N(0, I): this model folder has no latent_density.json.';
  }
  ui.backend.textContent = state.backend;
}

function buildAttributeSliders() {
  ui.attributes.replaceChildren();
  ui.addAttribute.replaceChildren(new Option('add an attribute\u2026', ''));
  const names = Object.keys(state.directions);
  const featured = FEATURED.filter((name) => names.includes(name));
  for (const name of featured) addSlider(name);
  for (const name of names.filter((n) => !featured.includes(n)).sort()) ui.addAttribute.add(new Option(name, name));
  ui.addAttribute.hidden = ui.addAttribute.options.length < 2;
  ui.attributesNote.textContent = names.length
    ? 'z + \u03b1 \u00b7 direction, with the directions of attribute_directions.json (generate.py --mode attribute).'
    : 'No attribute_directions.json in this model folder: write one with generate.py --mode attribute.';
}

function addSlider(name) {
  const label = document.createElement('label');
  label.className = 'slider';
  const title = document.createElement('span');
  title.textContent = name.replaceAll('_', ' ');
  const input = document.createElement('input');
  Object.assign(input, { type: 'range', min: '-3', max: '3', step: '0.1', value: '0' });
  input.dataset.attribute = name;
  input.setAttribute('aria-label', name);
  const output = document.createElement('output');
  output.textContent = '0.0';
  input.addEventListener('input', () => {
    const alpha = Number(input.value);
    state.alphas[name] = alpha;
    output.textContent = alpha.toFixed(1);
    requestRender();
  });
  label.append(title, input, output);
  ui.attributes.append(label);
  state.alphas[name] = 0;
}

function resetAttributes() {
  for (const input of ui.attributes.querySelectorAll('input')) {
    input.value = '0';
    input.nextElementSibling.textContent = '0.0';
  }
  for (const name of Object.keys(state.alphas)) state.alphas[name] = 0;
}

function showSeed() {
  ui.seed.textContent = String(state.seed);
  ui.seedInput.value = '';
  const url = new URL(location.href);
  url.searchParams.set('seed', String(state.seed));
  history.replaceState(null, '', url);
}

function newFace(seed) {
  state.seed = seed;
  ({ component: state.component, eps: state.eps } = latent.drawLatent(state.density, seed));
  state.source = 'sample';
  showSeed();
  requestRender();
}

function resetThumbs() {
  for (const canvas of [ui.thumbA, ui.thumbB]) canvas.getContext('2d').clearRect(0, 0, canvas.width, canvas.height);
  ui.pathT.value = '0';
  ui.pathTValue.textContent = '0.00';
  updatePathControls();
}

function updatePathControls() {
  const ready = state.status === 'ready' && state.pathA !== null && state.pathB !== null;
  ui.pathT.disabled = !ready;
  ui.play.disabled = !ready;
}

function pick(which) {
  const canvas = which === 'A' ? ui.thumbA : ui.thumbB;
  state[`path${which}`] = Float64Array.from(state.z);
  const context = canvas.getContext('2d');
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = 'high';
  context.drawImage(ui.face, 0, 0, canvas.width, canvas.height);
  updatePathControls();
}

function followPath(t) {
  if (state.source !== 'path') {
    // A and B already hold their attribute edits: the sliders start again from 0 on the path
    resetAttributes();
    state.source = 'path';
  }
  state.t = t;
  ui.pathT.value = String(t);
  ui.pathTValue.textContent = t.toFixed(2);
  requestRender();
}

function play() {
  if (state.playing) {
    state.playing = false;
    return;
  }
  state.playing = true;
  ui.play.textContent = 'Stop';
  const from = state.source === 'path' && state.t < 1 ? state.t : 0;
  const start = performance.now();
  const step = (now) => {
    const t = Math.min(1, from + (now - start) / 1000 / PLAY_SECONDS);
    if (state.playing) followPath(t);
    if (state.playing && t < 1) {
      requestAnimationFrame(step);
    } else {
      state.playing = false;
      ui.play.textContent = 'Play';
    }
  };
  requestAnimationFrame(step);
}

function downloadPng() {
  const name = state.source === 'sample' ? `face-seed-${state.seed}.png` : `face-path-${state.t.toFixed(2)}.png`;
  ui.face.toBlob((blob) => {
    const link = document.createElement('a');
    link.href = URL.createObjectURL(blob);
    link.download = name;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }, 'image/png');
}

// ----------------------------------------------------------------------------- decoding and drawing
function currentLatent() {
  const { density } = state;
  const base =
    state.source === 'path'
      ? latent.slerp(state.pathA, state.pathB, state.t)
      : latent.latentFrom(density, state.component, state.eps, state.temperature);
  const z = Float64Array.from(base);
  for (const [name, alpha] of Object.entries(state.alphas)) {
    if (alpha === 0) continue;
    const direction = state.directions[name];
    for (let i = 0; i < z.length; i++) z[i] += alpha * direction[i];
  }
  return Float32Array.from(z);
}

async function decode(z) {
  const { ort, session, spec } = state;
  const start = performance.now();
  const tensor = new ort.Tensor('float32', z, [1, spec.latentDim]);
  const results = await session.run({ [state.inputName]: tensor });
  const image = results[state.outputName];
  const data = image.data instanceof Float32Array ? image.data : Float32Array.from(await image.getData());
  const ms = performance.now() - start;
  const expected = spec.imageSize * spec.imageSize * spec.channels;
  if (data.length !== expected) {
    throw new Error(
      `decoder.onnx gave an image of shape [${image.dims}], but its metadata says ${spec.imageSize}x${spec.imageSize}x${spec.channels}.`,
    );
  }
  return { data, ms };
}

function draw(values) {
  const { spec } = state;
  const context = ui.face.getContext('2d');
  const pixels = context.createImageData(spec.imageSize, spec.imageSize);
  latent.toRgba(values, spec, pixels.data);
  context.putImageData(pixels, 0, 0);
}

/** Smooth or pixelated scaling of the shown face (CSS image-rendering); remembered. */
function setScaling(scaling) {
  const value = scaling === 'pixelated' ? 'pixelated' : 'smooth';
  ui.face.classList.toggle('pixelated', value === 'pixelated');
  for (const input of ui.scaling) input.checked = input.value === value;
  try {
    localStorage.setItem(SCALING_KEY, value);
  } catch {
    // storage disabled: the choice lasts for this page only
  }
}

function storedScaling() {
  try {
    return localStorage.getItem(SCALING_KEY);
  } catch {
    return null;
  }
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

function showTimings() {
  const t = state.timings;
  if (t.firstFaceMs !== null) {
    const parts = [];
    if (t.modelFetchMs !== null) parts.push(`files ${t.modelFetchMs.toFixed(0)} ms`);
    parts.push(`session ${t.sessionMs.toFixed(0)} ms`, `first decode ${t.firstDecodeMs.toFixed(1)} ms`);
    ui.firstFace.textContent = `${t.firstFaceMs.toFixed(0)} ms after page load (${parts.join(', ')})`;
  }
  if (t.decodeMs.length) {
    const last = t.decodeMs[t.decodeMs.length - 1];
    ui.decodeTime.textContent = `${last.toFixed(1)} ms per face (median ${median(t.decodeMs).toFixed(1)} ms of the last ${t.decodeMs.length})`;
  }
}

let busy = false;
let pending = false;
let idleWaiters = [];

/** Decode the current z soon; while a decode runs, later requests collapse into one. */
function requestRender() {
  if (state.status !== 'ready') return;
  if (busy) {
    pending = true;
    return;
  }
  busy = true;
  renderLoop();
}

async function renderLoop() {
  try {
    do {
      pending = false;
      const z = currentLatent();
      const { data, ms } = await decode(z);
      draw(data);
      state.z = z;
      state.output = data;
      state.decodes += 1;
      const t = state.timings;
      if (t.firstFaceMs === null) {
        t.firstFaceMs = performance.now(); // since navigation start: page, module, runtime, model, decode
        t.firstDecodeMs = ms;
      } else {
        t.decodeMs.push(ms);
        if (t.decodeMs.length > DECODE_HISTORY) t.decodeMs.shift();
      }
      showTimings();
    } while (pending && state.status === 'ready');
  } catch (error) {
    showError(error);
  } finally {
    busy = false;
    for (const resolve of idleWaiters.splice(0)) resolve();
  }
}

function whenIdle() {
  return busy ? new Promise((resolve) => idleWaiters.push(resolve)) : Promise.resolve();
}

/** Decode n faces of seeded prior noise at batch 1 without drawing; ms per call (benchmark). */
async function timeDecodes(n, seed = 1) {
  await whenIdle();
  const uniform = latent.mulberry32(seed);
  const times = [];
  for (let i = 0; i < n; i++) {
    const z = Float32Array.from(latent.normals(uniform, state.spec.latentDim));
    times.push((await decode(z)).ms);
  }
  return times;
}

// ----------------------------------------------------------------------------- start
async function start(load) {
  state.status = 'loading';
  ui.loading.hidden = false;
  ui.notice.textContent = '';
  clearError();
  setEnabled(false);
  try {
    await load();
    state.status = 'ready';
    ui.loading.hidden = true;
    setEnabled(true);
    const seed = latent.parseSeed(params.get('seed') ?? '');
    newFace(seed ?? latent.randomSeed());
    params.delete('seed'); // a later model starts from a random seed
  } catch (error) {
    showError(error);
  }
}

ui.newFace.addEventListener('click', () => newFace(latent.randomSeed()));
ui.seedForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const seed = latent.parseSeed(ui.seedInput.value);
  if (seed === null) {
    ui.seedInput.setCustomValidity('a whole number from 0 to 4294967295');
    ui.seedInput.reportValidity();
    return;
  }
  ui.seedInput.setCustomValidity('');
  newFace(seed);
});
ui.seedInput.addEventListener('input', () => ui.seedInput.setCustomValidity(''));
ui.copySeed.addEventListener('click', async () => {
  try {
    await navigator.clipboard.writeText(String(state.seed));
    ui.copySeed.textContent = 'Copied';
  } catch {
    ui.copySeed.textContent = 'Select it';
    getSelection().selectAllChildren(ui.seed);
  }
  setTimeout(() => (ui.copySeed.textContent = 'Copy'), 1500);
});
ui.temperature.addEventListener('input', () => {
  state.temperature = Number(ui.temperature.value);
  ui.temperatureValue.textContent = state.temperature.toFixed(2);
  state.source = 'sample';
  requestRender();
});
ui.resetAttributes.addEventListener('click', () => {
  resetAttributes();
  requestRender();
});
ui.addAttribute.addEventListener('change', () => {
  const name = ui.addAttribute.value;
  if (!name) return;
  addSlider(name);
  ui.addAttribute.remove(ui.addAttribute.selectedIndex);
  ui.addAttribute.value = '';
  ui.addAttribute.hidden = ui.addAttribute.options.length < 2;
});
ui.pickA.addEventListener('click', () => pick('A'));
ui.pickB.addEventListener('click', () => pick('B'));
ui.pathT.addEventListener('input', () => followPath(Number(ui.pathT.value)));
ui.play.addEventListener('click', play);
ui.download.addEventListener('click', downloadPng);
for (const input of ui.scaling) input.addEventListener('change', () => setScaling(input.value));
ui.files.addEventListener('change', () => {
  if (ui.files.files.length) start(() => loadFromFiles(ui.files.files));
});

window.explorer = {
  get status() {
    return state.status;
  },
  get error() {
    return state.error;
  },
  get decodes() {
    return state.decodes;
  },
  z: () => (state.z ? Array.from(state.z) : null),
  output: () => (state.output ? Array.from(state.output) : null),
  rgba: () => {
    const size = ui.face.width;
    return Array.from(ui.face.getContext('2d').getImageData(0, 0, size, size).data);
  },
  info: () => ({
    model: state.model,
    spec: state.spec,
    metadata: state.metadata,
    sampler: state.density?.kind ?? null,
    components: state.density?.components ?? null,
    seed: state.seed,
    component: state.component,
    eps: state.eps ? Array.from(state.eps) : null,
    temperature: state.temperature,
    alphas: { ...state.alphas },
    source: state.source,
    t: state.t,
    playing: state.playing,
    pathA: state.pathA ? Array.from(state.pathA) : null,
    pathB: state.pathB ? Array.from(state.pathB) : null,
    backend: state.backend,
    timings: { ...state.timings, decodeMs: [...state.timings.decodeMs] },
  }),
  whenIdle,
  timeDecodes,
};

setScaling(storedScaling());
start(loadFromUrl);
