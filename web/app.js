// The face explorer: loads an exported decoder.onnx (and, when present, attribute_directions.json
// and latent_density.json) and decodes faces in the browser with onnxruntime-web. With the model
// folder's encoder.onnx and the face models of pretrained/face_detector/, it edits the face of a
// photo (a file or the camera): align.js finds and aligns the face as align.py does, the encoder
// gives its z, and the sliders and the interpolation start from there. Nothing leaves the page.
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
// bench/web_latency.py): status, error, z(), output(), rgba(), info(), whenIdle(), timeDecodes(n),
// photoReady, photo(), photosDone, template.

import * as align from './align.js';
import * as latent from './latent.js';
import { PhotoError, readPhotoFile, readVideoFrame } from './photo.js';

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
const FACE_MODELS = 'pretrained/face_detector/'; // BlazeFace and Face Mesh (align.py's)
const PREVIEW_PX = 240; // the photo's preview, boxes on its faces

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
  photo: $('photo'),
  camera: $('camera'),
  cameraPanel: $('camera-panel'),
  cameraVideo: $('camera-video'),
  snap: $('snap'),
  cameraStop: $('camera-stop'),
  photoPreview: $('photo-preview'),
  photoFaceLabel: $('photo-face-label'),
  photoFace: $('photo-face'),
  photoMessage: $('photo-message'),
  photoCrop: $('photo-crop'),
  photoCropFigure: $('photo-crop-figure'),
  faceSource: $('face-source'),
  photoTime: $('photo-time'),
  modelMessage: $('model-message'),
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
  loadEncoder: async () => null, // the model's encoder.onnx bytes, or null without one
  finder: null, // a Promise of the align.FaceFinder, made once
  photoTools: null, // a Promise of {finder, encoder, encoderSpec} for the current model
  photoReady: false,
  photo: null, // {name, image, original, faces, index, input, mu, timings}
  photoZ: null,
  preview: null, // the preview's pixels without boxes
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

async function createSession(bytes, name = 'decoder.onnx') {
  const ort = await loadOrt();
  const providers = params.get('backend') === 'webgpu' ? ['webgpu', 'wasm'] : ['wasm'];
  try {
    return await ort.InferenceSession.create(bytes, { executionProviders: providers, graphOptimizationLevel: 'all' });
  } catch (error) {
    throw new Error(`${name} could not be opened by onnxruntime-web: ${describe(error)}`);
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
  // the encoder (for photos) downloads after the first face, which does not need it
  const encoder = () => fetchFile(url, 'encoder.onnx', { optional: true, binary: true });
  await openModel({ name, decoder, directions, density, encoder });
}

/** Files from the picker: the decoder (decoder.onnx preferred), optionally encoder.onnx and any of
 *  the two JSON files. */
async function loadFromFiles(files) {
  const list = Array.from(files);
  const onnx = list.filter((file) => file.name.endsWith('.onnx'));
  const encoderFile = onnx.find((file) => file.name === 'encoder.onnx');
  const decoderFile = onnx.find((file) => file.name === 'decoder.onnx') ?? onnx.find((file) => file !== encoderFile);
  if (!decoderFile) {
    throw new Error(
      `No decoder among ${list.map((f) => f.name).join(', ') || 'the chosen files'}: choose decoder.onnx ` +
        '(and, optionally, encoder.onnx, attribute_directions.json and latent_density.json).',
    );
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
  const parts = [decoderFile.name, encoderFile?.name, texts.directions && 'directions', texts.density && 'density'];
  const encoder = async () => (encoderFile ? new Uint8Array(await encoderFile.arrayBuffer()) : null);
  await openModel({ name: `your files: ${parts.filter(Boolean).join(', ')}`, decoder, encoder, ...texts });
}

async function openModel({ name, decoder, directions, density, encoder }) {
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
        error instanceof latent.ModelFileError
          ? `attribute_directions.json ${error.message}. Compute it again for this model (generate.py --mode attribute --recompute), or remove it to edit no attributes.`
          : describe(error),
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
    loadEncoder: encoder,
    photoTools: null,
    photoReady: false,
  });
  clearPhoto(); // its z was the old encoder's
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
  const names = {
    sample: `face-seed-${state.seed}.png`,
    path: `face-path-${state.t.toFixed(2)}.png`,
    photo: `face-photo-${state.photo?.name.replace(/\.[^.]*$/, '')}.png`,
  };
  const name = names[state.source];
  ui.face.toBlob((blob) => {
    const link = document.createElement('a');
    link.href = URL.createObjectURL(blob);
    link.download = name;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }, 'image/png');
}

// ----------------------------------------------------------------------------- your photo
/** The face finder (both face models, once per page) and the current model's encoder: a Promise,
 *  made when first needed; it rejects with the reason photos cannot be edited. */
function photoTools() {
  state.finder ??= (async () => {
    const ort = await loadOrt();
    const folder = new URL(FACE_MODELS, REPO_ROOT);
    const [detector, mesh] = await Promise.all(
      ['face_detector.onnx', 'face_landmarks.onnx'].map(async (name) =>
        createSession(await fetchFile(folder, name, { binary: true }), name),
      ),
    );
    return new align.FaceFinder(ort, detector, mesh);
  })();
  state.finder.catch(() => (state.finder = null)); // a later photo tries again
  state.photoTools ??= (async () => {
    const bytes = await state.loadEncoder();
    if (bytes === null) {
      throw new PhotoError(
        'This model has no encoder.onnx, which turns a photo into z: export it with export_onnx.py ' +
          '(it writes encoder.onnx beside decoder.onnx), or choose it with the model files.',
      );
    }
    let encoderSpec;
    try {
      encoderSpec = latent.encoderSpec(latent.readOnnxMetadata(bytes).metadata);
    } catch (error) {
      throw new PhotoError(`encoder.onnx ${describe(error)}`);
    }
    if (encoderSpec.latentDim !== state.spec.latentDim) {
      throw new PhotoError(
        `encoder.onnx gives latent size ${encoderSpec.latentDim}, but the decoder takes ${state.spec.latentDim}: choose the pair of one export.`,
      );
    }
    const [finder, encoder] = await Promise.all([state.finder, createSession(bytes, 'encoder.onnx')]);
    const tools = { finder, encoder, encoderSpec };
    await warmUp(tools);
    return tools;
  })();
  return state.photoTools;
}

/** Run every step once on a blank picture: the first run of a WebAssembly session, and of the
 *  resampling code before the JavaScript engine compiles it, is several times slower. */
async function warmUp({ finder, encoder, encoderSpec }) {
  const side = 256;
  const image = { width: side, height: side, data: new Uint8ClampedArray(side * side * 4).fill(128) };
  await finder.detect(image);
  const box = [64, 64, 192, 192];
  const keypoints = [[100, 110], [156, 110], [128, 140], [128, 165], [70, 120], [186, 120]];
  await finder.landmarks(image, box, keypoints);
  const frame = align.warp(image, [0.5, 0, 10, 0, 0.5, 20]);
  const input = align.modelInput(frame, encoderSpec.imageSize, encoderSpec.channels, encoderSpec.crop);
  const shape = [1, encoderSpec.imageSize, encoderSpec.imageSize, encoderSpec.channels];
  await encoder.run({ [encoder.inputNames[0]]: new state.ort.Tensor('float32', input, shape) });
}

/** Get the photo tools ready in the background; say whether photos can be edited. */
async function preparePhotos() {
  const tools = photoTools();
  state.photoReady = false;
  try {
    await tools;
    if (tools === state.photoTools) state.photoReady = true;
  } catch (error) {
    if (tools === state.photoTools) photoMessage(describe(error), true);
  }
}

function photoMessage(text, problem = false) {
  ui.photoMessage.textContent = text;
  ui.photoMessage.classList.toggle('problem', problem);
}

let photoRequests = 0;
let photosDone = 0; // photos (and faces chosen in them) processed, shown or refused: for the tests

/** Find, align and encode the face in a photo (read() gives its pixels); a later photo wins. */
async function usePhoto(read, name, chosenAt) {
  const request = ++photoRequests;
  photoMessage(`Finding the face in ${name}\u2026`);
  try {
    const tools = await photoTools();
    const timings = { chosenAt };
    const { image, original, bitmap, shrink } = await read();
    timings.readMs = performance.now() - chosenAt;
    if (request === photoRequests) showPreview(bitmap);
    let faces;
    try {
      faces = await tools.finder.find(image, { shrink });
    } finally {
      bitmap.close(); // only the working pixels stay
    }
    timings.findMs = performance.now() - chosenAt - timings.readMs;
    if (request !== photoRequests) return;
    state.photo = { name, image, original, faces, index: 0, timings };
    showFaceBoxes();
    if (!faces.length) {
      state.photo = null;
      photoMessage(
        `No face found in ${name}: choose a photo where a face looks at the camera, not too small or dark.`,
        true,
      );
      return;
    }
    await showPhotoFace(0, tools);
  } catch (error) {
    if (request !== photoRequests) return;
    photoMessage(error instanceof PhotoError ? error.message : `${name}: ${describe(error)}`, true);
    console.error(error);
  } finally {
    if (request === photoRequests) photosDone += 1;
  }
}

/** Align and encode face number `index` (0 the largest) of the photo, and show it edited. */
async function showPhotoFace(index, tools) {
  const { photo } = state;
  const { encoder, encoderSpec: spec } = tools;
  const face = photo.faces[index];
  const start = performance.now();
  const frame = await align.alignFace(photo.image, face, tools.finder);
  const input = align.modelInput(frame, spec.imageSize, spec.channels, spec.crop);
  const alignMs = performance.now() - start;
  const [low, high] = spec.valueRange;
  const scaled = input.map((v) => low + v * (high - low));
  const shape = spec.layout === 'NHWC' ? [1, spec.imageSize, spec.imageSize, spec.channels] : null;
  if (!shape) throw new PhotoError('encoder.onnx takes NCHW images; the page gives NHWC ones');
  const results = await encoder.run({ [encoder.inputNames[0]]: new state.ort.Tensor('float32', scaled, shape) });
  const mu = results.mu ?? results[encoder.outputNames[0]];
  const encodeMs = performance.now() - start - alignMs;
  if (photo !== state.photo) return;
  Object.assign(photo, { index, frame, input, mu: Float64Array.from(mu.data) });
  state.photoZ = photo.mu;
  state.source = 'photo';
  drawCrop(input, spec);
  ui.photoFace.value = String(index);
  showFaceBoxes();
  requestRender();
  await whenIdle();
  const t = photo.timings;
  Object.assign(t, { alignMs, encodeMs, shownMs: performance.now() - t.chosenAt });
  ui.photoTime.textContent =
    `${t.shownMs.toFixed(0)} ms from choosing the photo to its face (read ${t.readMs.toFixed(0)}, ` +
    `find ${t.findMs.toFixed(0)}, align ${alignMs.toFixed(0)}, encode ${encodeMs.toFixed(0)} ms, then decode)`;
  const notes = [`Face ${index + 1} of ${photo.faces.length} in ${photo.name}: aligned, encoded; the sliders edit it.`];
  if (photo.original.width > photo.image.width) {
    notes.push(
      `The photo (${photo.original.width}x${photo.original.height}) was read at ${photo.image.width}x${photo.image.height}.`,
    );
  }
  if (face.size < align.SMALL_FACE) {
    notes.push(`The face is small (${face.size.toFixed(0)} pixels from eyes to mouth): a closer photo gives a sharper crop.`);
  }
  photoMessage(notes.join(' '));
  showFaceSource();
}

function showPreview(bitmap) {
  const scale = PREVIEW_PX / Math.max(bitmap.width, bitmap.height);
  const canvas = ui.photoPreview;
  canvas.width = Math.max(1, Math.round(bitmap.width * scale));
  canvas.height = Math.max(1, Math.round(bitmap.height * scale));
  const context = canvas.getContext('2d', { willReadFrequently: true });
  context.imageSmoothingQuality = 'high';
  context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  state.preview = context.getImageData(0, 0, canvas.width, canvas.height);
  canvas.hidden = false;
}

/** The preview with a numbered box on each face (the chosen one highlighted), and the face menu. */
function showFaceBoxes() {
  const canvas = ui.photoPreview;
  const context = canvas.getContext('2d', { willReadFrequently: true });
  context.putImageData(state.preview, 0, 0);
  const faces = state.photo?.faces ?? [];
  const scale = state.photo ? canvas.width / state.photo.image.width : 1;
  faces.forEach((face, i) => {
    const [x0, y0, x1, y1] = face.box.map((v) => v * scale);
    const chosen = i === state.photo.index;
    context.lineWidth = chosen ? 3 : 1.5;
    context.strokeStyle = chosen ? '#ffd23f' : '#ffffff';
    context.strokeRect(x0, y0, x1 - x0, y1 - y0);
    context.font = 'bold 13px system-ui, sans-serif';
    context.fillStyle = context.strokeStyle;
    context.fillText(String(i + 1), x0 + 3, y0 + 14);
  });
  ui.photoFace.replaceChildren(...faces.map((_, i) => new Option(`face ${i + 1}${i === 0 ? ' (largest)' : ''}`, String(i))));
  ui.photoFace.value = String(state.photo?.index ?? 0);
  ui.photoFaceLabel.hidden = faces.length < 2;
}

function drawCrop(input, spec) {
  const canvas = ui.photoCrop;
  canvas.width = canvas.height = spec.imageSize;
  const pixels = canvas.getContext('2d').createImageData(spec.imageSize, spec.imageSize);
  latent.toRgba(input, { ...spec, valueRange: [0, 1], layout: 'NHWC' }, pixels.data);
  canvas.getContext('2d').putImageData(pixels, 0, 0);
  ui.photoCropFigure.hidden = false;
}

/** Forget the photo (a new model's encoder would give another z). */
function clearPhoto() {
  photoRequests += 1;
  state.photo = null;
  state.photoZ = null;
  ui.photoCropFigure.hidden = true;
  ui.photoPreview.hidden = true;
  ui.photoFaceLabel.hidden = true;
  ui.photoTime.textContent = '\u2013';
  photoMessage('');
}

function showFaceSource() {
  const { photo } = state;
  ui.seed.textContent = state.source === 'photo' ? '\u2013' : String(state.seed); // a photo's face has none
  ui.faceSource.textContent =
    state.source === 'photo' && photo
      ? `Left: face ${photo.index + 1} of ${photo.name}, aligned as the encoder sees it. Right: the decoder's face from its z, with the sliders' edits.`
      : '';
}

/** A click on the preview chooses the face under it. */
function pickFaceAt(event) {
  const { photo } = state;
  if (!photo) return;
  const rect = ui.photoPreview.getBoundingClientRect();
  const scale = photo.image.width / rect.width;
  const [x, y] = [(event.clientX - rect.left) * scale, (event.clientY - rect.top) * scale];
  const hit = photo.faces.findIndex(({ box }) => x >= box[0] && x <= box[2] && y >= box[1] && y <= box[3]);
  if (hit >= 0 && hit !== photo.index) choosePhotoFace(hit);
}

async function choosePhotoFace(index) {
  const { photo } = state;
  photo.timings = { ...photo.timings, chosenAt: performance.now(), readMs: 0, findMs: 0 };
  try {
    await showPhotoFace(index, await photoTools());
  } catch (error) {
    photoMessage(describe(error), true);
  } finally {
    photosDone += 1;
  }
}

let cameraStream = null;

async function startCamera() {
  if (!navigator.mediaDevices?.getUserMedia) {
    photoMessage('This browser gives the page no camera (it needs https or localhost, and a camera).', true);
    return;
  }
  try {
    cameraStream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 1280 } }, audio: false });
  } catch (error) {
    photoMessage(`No camera picture (${error.name}: ${error.message}); choose a photo file instead.`, true);
    return;
  }
  ui.cameraVideo.srcObject = cameraStream;
  ui.cameraPanel.hidden = false;
  ui.camera.disabled = true;
  photoMessage('The camera shows here only: take the photo when your face is in view.');
}

function stopCamera() {
  for (const track of cameraStream?.getTracks() ?? []) track.stop();
  cameraStream = null;
  ui.cameraVideo.srcObject = null;
  ui.cameraPanel.hidden = true;
  ui.camera.disabled = false;
}

// ----------------------------------------------------------------------------- decoding and drawing
function currentLatent() {
  const { density } = state;
  const base =
    state.source === 'path'
      ? latent.slerp(state.pathA, state.pathB, state.t)
      : state.source === 'photo'
        ? state.photoZ
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
      showFaceSource();
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
    whenIdle().then(preparePhotos); // after the first face, which they would slow down
  } catch (error) {
    showError(error);
  }
}

/** Model files from the picker. A model already loaded stays loaded when they cannot be opened. */
async function openFiles(files) {
  ui.modelMessage.textContent = '';
  if (state.status !== 'ready') {
    await start(() => loadFromFiles(files));
    return;
  }
  setEnabled(false);
  ui.loading.hidden = false;
  try {
    await loadFromFiles(files);
    ui.notice.textContent = '';
    newFace(latent.randomSeed());
    whenIdle().then(preparePhotos);
  } catch (error) {
    ui.modelMessage.textContent = `${describe(error)} The model shown before stays loaded.`;
    console.error(error);
  } finally {
    ui.loading.hidden = true;
    setEnabled(true);
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
  if (ui.files.files.length) openFiles(ui.files.files);
});
ui.photo.addEventListener('change', () => {
  const chosenAt = performance.now();
  const [file] = ui.photo.files;
  if (file) usePhoto(() => readPhotoFile(file), file.name, chosenAt);
  ui.photo.value = ''; // choosing the same file again is a new choice
});
ui.camera.addEventListener('click', startCamera);
ui.cameraStop.addEventListener('click', stopCamera);
ui.snap.addEventListener('click', () => {
  const chosenAt = performance.now();
  usePhoto(() => readVideoFrame(ui.cameraVideo), 'the camera picture', chosenAt);
});
ui.photoFace.addEventListener('change', () => choosePhotoFace(Number(ui.photoFace.value)));
ui.photoPreview.addEventListener('click', pickFaceAt);

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
  get photoReady() {
    return state.photoReady;
  },
  photo: () => {
    const { photo } = state;
    return {
      message: ui.photoMessage.textContent,
      problem: ui.photoMessage.classList.contains('problem'),
      ...(photo && {
        name: photo.name,
        size: [photo.image.width, photo.image.height],
        original: [photo.original.width, photo.original.height],
        faces: photo.faces.map(({ box, points, size }) => ({ box, points, size })),
        index: photo.index,
        frame: photo.frame ? Array.from(photo.frame.data) : null,
        input: photo.input ? Array.from(photo.input) : null,
        mu: photo.mu ? Array.from(photo.mu) : null,
        timings: { ...photo.timings },
      }),
    };
  },
  get photosDone() {
    return photosDone;
  },
  template: align.TEMPLATE,
};

setScaling(storedScaling());
start(loadFromUrl);
