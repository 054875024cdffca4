// Find the faces in a photo and align them onto CelebA's aligned frame: align.py, in the browser.
//
// MediaPipe's BlazeFace (face_detector.onnx) finds the faces and Face Mesh (face_landmarks.onnx)
// their landmarks, on onnxruntime-web; a similarity transform puts the eyes and mouth corners on
// TEMPLATE, and the photo is resampled into the 178x218 frame the models were trained on.
//
// Every step is align.py's, pixel for pixel: the resizes are Pillow's (its fixed-point BOX
// filter, its two passes in Pillow 13's order), the detector's squares are Pillow's
// EXTENT transform with its BILINEAR filter (black beyond the photo), the warp is Pillow's affine
// BICUBIC transform (its a = -1 cubic, truncated to 8 bits) on a region whose outside repeats the
// photo's edge, and the model input is images.face_from_pixels' exact area average of the
// central crop. A canvas would resample with a filter the browser chooses and leave the outside
// transparent, so the aligned face would differ from Python's; tests/test_web.py compares the two.
// Only a photo the browser shrank as it read it, whose pixels are not align.py's anyway, is
// shrunk for the detector's squares by the browser (FaceFinder.detect's shrink), natively.
//
// Images are {width, height, data}, data RGBA bytes (alpha ignored), as ImageData holds them.

export const FRAME_WIDTH = 178; // CelebA's aligned images
export const FRAME_HEIGHT = 218;
// align.TEMPLATE: where Face Mesh finds the eye centres and mouth corners on CelebA's aligned
// training images (a test checks the two agree).
export const TEMPLATE = [
  [70.1, 112.9],
  [108.0, 113.0],
  [72.2, 152.9],
  [106.0, 153.0],
];
const EYE_CORNERS = [
  [33, 133],
  [362, 263],
];
const MOUTH_CORNERS = [61, 291];
const MIN_SCORE = 0.5;
const OVERLAP = 0.3;
export const SMALL_FACE = 17; // eyes-to-mouth pixels below which a face has less detail than the model's input
const DETECTOR_SIZE = 128;
const STRIDES = [8, 16];
const ANCHORS_PER_CELL = [2, 6];
const MESH_SIZE = 192;
const MESH_MARGIN = 1.5;
const CELEBA_WIDTH = 178;

/** Python's round() and numpy's: halves go to the even neighbour. */
export function pyRound(x) {
  const floor = Math.floor(x);
  const rest = x - floor;
  if (rest !== 0.5) return Math.round(x);
  return floor % 2 === 0 ? floor : floor + 1;
}

function sigmoid(logit) {
  return 1 / (1 + Math.exp(-Math.min(100, Math.max(-100, logit))));
}

// ----------------------------------------------------------------------------- the detector
/** [x, y] anchor centres in [0, 1] of BlazeFace's SSD heads, in the order of its outputs. */
export function detectorAnchors(size = DETECTOR_SIZE, strides = STRIDES, perCell = ANCHORS_PER_CELL) {
  const anchors = [];
  strides.forEach((stride, level) => {
    const cells = Math.floor(size / stride);
    for (let y = 0; y < cells; y++) {
      for (let x = 0; x < cells; x++) {
        for (let k = 0; k < perCell[level]; k++) anchors.push([(x + 0.5) / cells, (y + 0.5) / cells]);
      }
    }
  });
  return anchors;
}

/** BlazeFace's raw outputs -> the detections scoring at least MIN_SCORE: {box [x0, y0, x1, y1],
 *  score, keypoints [6][2]}, in [0, 1] of the model's square input, in float32 as numpy computes them. */
export function decodeDetections(regressors, logits, anchors, size = DETECTOR_SIZE) {
  const f = Math.fround;
  const found = [];
  anchors.forEach(([cx, cy], i) => {
    const score = sigmoid(logits[i]);
    if (score < MIN_SCORE) return;
    const r = (j) => f(regressors[i * 16 + j] / size);
    const [mx, my, hw, hh] = [f(r(0) + cx), f(r(1) + cy), r(2) / 2, r(3) / 2];
    const keypoints = [];
    for (let k = 0; k < 6; k++) keypoints.push([f(r(4 + 2 * k) + cx), f(r(5 + 2 * k) + cy)]);
    found.push({ box: [f(mx - hw), f(my - hh), f(mx + hw), f(my + hh)], score, keypoints });
  });
  return found;
}

/** align.detector_views: the squares [x0, y0, side], in a photo's pixels, the detector looks at:
 *  the whole photo (its long side), squares of its short side along the long one, and squares of
 *  half the short side overlapping by half (small faces are found in the smaller squares). */
function detectorViews(height, width) {
  const [longSide, shortSide] = [Math.max(height, width), Math.min(height, width)];
  const views = [[(width - longSide) / 2, (height - longSide) / 2, longSide]];
  for (const side of [shortSide, shortSide / 2]) {
    if (side === longSide) continue;
    // numpy's linspace(0, length - side, count)
    const starts = (length) => {
      const count = Math.max(1, Math.ceil((length - side) / (side / 2) - 1e-9) + 1);
      const step = (length - side) / (count - 1);
      return Array.from({ length: count }, (_, i) => (count === 1 ? 0 : i === count - 1 ? length - side : i * step));
    };
    for (const y of starts(height)) for (const x of starts(width)) views.push([x, y, side]);
  }
  return views;
}

function boxArea(box) {
  return Math.max(0, box[2] - box[0]) * Math.max(0, box[3] - box[1]);
}

export function boxOverlap(a, b) {
  const width = Math.max(0, Math.min(a[2], b[2]) - Math.max(a[0], b[0]));
  const height = Math.max(0, Math.min(a[3], b[3]) - Math.max(a[1], b[1]));
  const intersection = width * height;
  return intersection / Math.max(boxArea(a) + boxArea(b) - intersection, 1e-12);
}

/** Weighted non-maximum suppression, as align.merge_detections: best faces first. */
export function mergeDetections(detections, overlap = OVERLAP) {
  let order = [...detections].sort((a, b) => b.score - a.score);
  const faces = [];
  while (order.length) {
    const best = order[0].box;
    const members = order.filter((d) => boxOverlap(best, d.box) > overlap);
    order = order.filter((d) => !(boxOverlap(best, d.box) > overlap));
    const total = members.reduce((sum, d) => sum + d.score, 0);
    const box = [0, 1, 2, 3].map((j) => members.reduce((sum, d) => sum + d.box[j] * d.score, 0) / total);
    const keypoints = members[0].keypoints.map((_, k) =>
      [0, 1].map((j) => members.reduce((sum, d) => sum + d.keypoints[k][j] * d.score, 0) / total),
    );
    faces.push({ box, score: members[0].score, keypoints });
  }
  return faces;
}

// ----------------------------------------------------------------------------- 2x3 transforms
// [a, b, c, d, e, f] is the matrix [[a, b, c], [d, e, f]], mapping (x, y) to (ax + by + c, dx + ey + f).

/** The rotation, uniform scale and shift mapping points source onto target with the least squared error. */
export function similarityTransform(source, target) {
  const mean = (points) => [0, 1].map((j) => points.reduce((sum, p) => sum + p[j], 0) / points.length);
  const [sx, sy] = mean(source);
  const [tx, ty] = mean(target);
  let norm = 0;
  let a = 0;
  let b = 0;
  source.forEach(([x, y], i) => {
    const [u, v] = [x - sx, y - sy];
    const [p, q] = [target[i][0] - tx, target[i][1] - ty];
    norm += u * u + v * v;
    a += u * p + v * q;
    b += u * q - v * p;
  });
  norm = Math.max(norm, 1e-12);
  [a, b] = [a / norm, b / norm];
  return [a, -b, tx - (a * sx - b * sy), b, a, ty - (b * sx + a * sy)];
}

export function applyTransform(m, [x, y]) {
  return [m[0] * x + m[1] * y + m[2], m[3] * x + m[4] * y + m[5]];
}

/** The transform that applies inner, then outer. */
export function compose(outer, inner) {
  const [a, b, c, d, e, f] = outer;
  const [g, h, i, j, k, l] = inner;
  return [a * g + b * j, a * h + b * k, a * i + b * l + c, d * g + e * j, d * h + e * k, d * i + e * l + f];
}

export function invert([a, b, c, d, e, f]) {
  const det = a * e - b * d;
  const [ia, ib, id, ie] = [e / det, -b / det, -d / det, a / det];
  return [ia, ib, -(ia * c + ib * f), id, ie, -(id * c + ie * f)];
}

// ----------------------------------------------------------------------------- Pillow's resampling
// A large photo's pixels are read in place, never copied per step or per pixel: a pass reads its
// source through a table of each row's and each column's offset, which also gives the region
// of the photo that warp reads (its edge repeated beyond the photo) without copying it. Pixels
// are read and written as one 32-bit word each (RGBA bytes, little-endian as every browser is).
const PRECISION_BITS = 22; // Pillow's fixed point: 32 - 8 - 2
const HALF = 1 << (PRECISION_BITS - 1);
const OPAQUE = 0xff000000 | 0; // an int32, as the words are

const words = (bytes) => new Int32Array(bytes.buffer, bytes.byteOffset, bytes.length >> 2);

/** {pixels, width, height, rows, columns}: the pixels (32-bit words) of [x0, x0 + width) x
 *  [y0, y0 + height) of an image, rows and columns their offsets, the image's edge repeated
 *  beyond it. */
function sourceOf(image, x0 = 0, y0 = 0, width = image.width, height = image.height) {
  const clamp = (v, size) => (v < 0 ? 0 : v < size ? v : size - 1);
  const rows = new Int32Array(height);
  const columns = new Int32Array(width);
  for (let y = 0; y < height; y++) rows[y] = clamp(y0 + y, image.height) * image.width;
  for (let x = 0; x < width; x++) columns[x] = clamp(x0 + x, image.width);
  return { pixels: words(image.data), width, height, rows, columns };
}

/** A source's pixels as an image of their own. */
function copyOf({ pixels, width, height, rows, columns }) {
  const data = new Uint8ClampedArray(width * height * 4);
  const out = words(data);
  for (let y = 0, o = 0; y < height; y++) {
    const row = rows[y];
    for (let x = 0; x < width; x++, o++) out[o] = pixels[row + columns[x]] | OPAQUE;
  }
  return { width, height, data };
}

/** Pillow's precompute_coeffs and normalize_coeffs_8bpc for its BOX filter: per output pixel,
 *  its first input pixel, its number of weights, and the integer weights (ksize per pixel). */
function boxCoefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const inverse = 1 / filterScale; // Pillow multiplies by it
  const support = 0.5 * filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const first = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Int32Array(outSize * ksize);
  const values = new Float64Array(ksize);
  for (let out = 0; out < outSize; out++) {
    const centre = (out + 0.5) * scale;
    const low = Math.max(0, Math.trunc(centre - support + 0.5));
    const high = Math.min(inSize, Math.trunc(centre + support + 0.5));
    let total = 0;
    for (let x = low; x < high; x++) {
      const at = (x - centre + 0.5) * inverse;
      total += values[x - low] = at > -0.5 && at <= 0.5 ? 1 : 0;
    }
    for (let x = low; x < high; x++) {
      const v = (total !== 0 ? values[x - low] / total : values[x - low]) * 2 ** PRECISION_BITS;
      weights[out * ksize + x - low] = Math.trunc(v < 0 ? v - 0.5 : v + 0.5);
    }
    first[out] = low;
    count[out] = high - low;
  }
  return { first, count, weights, ksize };
}

/** Pillow's clip8 of a fixed-point sum (an int32: 8-bit values times weights summing to 2^22). */
function clip8(sum) {
  const value = sum >> PRECISION_BITS;
  return value < 0 ? 0 : value > 255 ? 255 : value;
}

/** Per output pixel of a pass, the offset of its first input pixel (offsets, the source's rows
 *  or columns) and the offset from one input pixel to the next (step), 0 where they are not
 *  evenly spaced (the edge repeated), so that the pass reads through offsets there. */
function taps(offsets, first, count) {
  const start = new Int32Array(first.length);
  const step = new Int32Array(first.length);
  for (let n = 0; n < first.length; n++) {
    start[n] = offsets[first[n]];
    const spacing = count[n] > 1 ? offsets[first[n] + 1] - start[n] : 1;
    let even = spacing > 0;
    for (let k = 2; even && k < count[n]; k++) even = offsets[first[n] + k] - offsets[first[n] + k - 1] === spacing;
    step[n] = even ? spacing : 0;
  }
  return { start, step };
}

/** One pass of Pillow's BOX resize of a source to outSize, along x (horizontal) or y. */
function boxPass({ pixels, width, height, rows, columns }, outSize, horizontal) {
  const along = horizontal ? columns : rows; // the offsets of the input pixels a pass sums
  const { first, count, weights, ksize } = boxCoefficients(horizontal ? width : height, outSize);
  const { start, step } = taps(along, first, count);
  const [outWidth, outHeight] = horizontal ? [outSize, height] : [width, outSize];
  const data = new Uint8ClampedArray(outWidth * outHeight * 4);
  const out = words(data);
  for (let y = 0, o = 0; y < outHeight; y++) {
    for (let x = 0; x < outWidth; x++, o++) {
      const n = horizontal ? x : y;
      const across = horizontal ? rows[y] : columns[x];
      const w0 = n * ksize;
      const spacing = step[n];
      let r = HALF;
      let g = HALF;
      let b = HALF;
      for (let k = 0, i = across + start[n], c = first[n], end = count[n]; k < end; k++, i += spacing) {
        const p = pixels[spacing ? i : across + along[c + k]];
        const w = weights[w0 + k];
        r = (r + Math.imul(p & 255, w)) | 0;
        g = (g + Math.imul((p >> 8) & 255, w)) | 0;
        b = (b + Math.imul((p >> 16) & 255, w)) | 0;
      }
      out[o] = clip8(r) | (clip8(g) << 8) | (clip8(b) << 16) | OPAQUE;
    }
  }
  return { width: outWidth, height: outHeight, data };
}

/** Pillow's Image.resize((width, height), BOX) of a source (sourceOf). Pillow 13 runs the
 *  vertical pass first when the height shrinks by more than twice as many pixels as the width
 *  does (a level apart on some pixels from the other order). */
function shrink(source, width, height) {
  if (width === source.width && height === source.height) return copyOf(source);
  if (height < source.height && source.height - height > 2 * (source.width - width)) {
    const tall = boxPass(source, height, false);
    return width === tall.width ? tall : boxPass(sourceOf(tall), width, true);
  }
  const wide = width === source.width ? source : boxPass(source, width, true);
  return height === wide.height ? (wide === source ? copyOf(source) : wide) : boxPass(sourceOf(wide), height, false);
}

/** The detector's input for the rectangle extent [x0, y0, x1, y1] of the image: Pillow's
 *  Image.transform((size, size), EXTENT, extent, BILINEAR), the rectangle sampled with the
 *  bilinear filter without antialiasing (the image is shrunk beforehand), truncated to 8 bits,
 *  black outside the image; then as align.py scales it, float32 v / 127.5 - 1, NHWC. */
function detectorInput(image, [x0, y0, x1, y1], size) {
  const { width, height, data } = image;
  // the output's x maps to the input's x alone, and y to y: each column's and row's sampling
  // (its pixels and weight, or -1 outside the image) is worked out once
  const axis = (scale, start, length, stride) => {
    const [first, second, weight] = [new Int32Array(size), new Int32Array(size), new Float64Array(size)];
    for (let i = 0; i < size; i++) {
      const at = scale * (i + 0.5) + start;
      if (at < 0 || at >= length) {
        first[i] = -1;
        continue;
      }
      const low = Math.floor(at - 0.5);
      weight[i] = at - 0.5 - low;
      first[i] = Math.max(low, 0) * stride;
      // Pillow clamps the first pixel and the second along x; along y a second row outside the
      // image repeats the first (-1 here)
      second[i] = low + 1 < length ? (low + 1) * stride : stride === 4 ? (length - 1) * stride : -1;
    }
    return { first, second, weight };
  };
  const columns = axis((x1 - x0) / size, x0, width, 4);
  const rows = axis((y1 - y0) / size, y0, height, width * 4);
  const levels = new Float32Array(256);
  for (let v = 0; v < 256; v++) levels[v] = Math.fround(v / 127.5) - 1;
  const out = new Float32Array(size * size * 3).fill(levels[0]);
  for (let oy = 0, o = 0; oy < size; oy++) {
    const top = rows.first[oy];
    const bottom = rows.second[oy];
    const dy = rows.weight[oy];
    for (let ox = 0; ox < size; ox++, o += 3) {
      const left = columns.first[ox];
      if (top < 0 || left < 0) continue;
      const right = columns.second[ox];
      const dx = columns.weight[ox];
      for (let channel = 0; channel < 3; channel++) {
        const i = top + channel;
        const upper = data[i + left] + (data[i + right] - data[i + left]) * dx;
        let lower = upper;
        if (bottom >= 0) {
          const j = bottom + channel;
          lower = data[j + left] + (data[j + right] - data[j + left]) * dx;
        }
        out[o + channel] = levels[Math.trunc(upper + (lower - upper) * dy)];
      }
    }
  }
  return out;
}

/** Pillow's a = -1 cubic through v1..v4 at d in [0, 1) between v2 and v3. */
function cubic(v1, v2, v3, v4, d) {
  return v2 + d * (-v1 + v3 + d * (2 * (v1 - v2) + v3 - v4 + d * (-v1 + v2 - v3 + v4)));
}

/** Pillow's Image.transform(size, AFFINE, inverse, BICUBIC): inverse maps output to input
 *  coordinates; outside the input is black. */
function affineBicubic(image, inverse, width, height) {
  const { width: w, height: h, data } = image;
  const [a, b, c, d, e, f] = inverse;
  const out = new Uint8ClampedArray(width * height * 4);
  const rowBytes = w * 4;
  for (let oy = 0, o = 0; oy < height; oy++) {
    for (let ox = 0; ox < width; ox++, o += 4) {
      out[o + 3] = 255;
      let xin = a * (ox + 0.5) + b * (oy + 0.5) + c;
      let yin = d * (ox + 0.5) + e * (oy + 0.5) + f;
      if (xin < 0 || xin >= w || yin < 0 || yin >= h) continue;
      xin -= 0.5;
      yin -= 0.5;
      const x = Math.floor(xin);
      const y = Math.floor(yin);
      const dx = xin - x;
      const dy = yin - y;
      // Pillow clamps the columns and the first row; a later row outside the image repeats the
      // row before it (-1 here)
      const c0 = (x < 1 ? 0 : x - 1 < w ? x - 1 : w - 1) * 4;
      const c1 = (x < 0 ? 0 : x < w ? x : w - 1) * 4;
      const c2 = (x + 1 < 0 ? 0 : x + 1 < w ? x + 1 : w - 1) * 4;
      const c3 = (x + 2 < 0 ? 0 : x + 2 < w ? x + 2 : w - 1) * 4;
      const r0 = (y < 1 ? 0 : y - 1 < h ? y - 1 : h - 1) * rowBytes;
      const r1 = y >= 0 && y < h ? y * rowBytes : -1;
      const r2 = y + 1 >= 0 && y + 1 < h ? (y + 1) * rowBytes : -1;
      const r3 = y + 2 >= 0 && y + 2 < h ? (y + 2) * rowBytes : -1;
      for (let channel = 0; channel < 3; channel++) {
        let i = r0 + channel;
        const v0 = cubic(data[i + c0], data[i + c1], data[i + c2], data[i + c3], dx);
        i = r1 + channel;
        const v1 = r1 < 0 ? v0 : cubic(data[i + c0], data[i + c1], data[i + c2], data[i + c3], dx);
        i = r2 + channel;
        const v2 = r2 < 0 ? v1 : cubic(data[i + c0], data[i + c1], data[i + c2], data[i + c3], dx);
        i = r3 + channel;
        const v3 = r3 < 0 ? v2 : cubic(data[i + c0], data[i + c1], data[i + c2], data[i + c3], dx);
        const v = cubic(v0, v1, v2, v3, dy);
        out[o + channel] = v <= 0 ? 0 : v >= 255 ? 255 : Math.trunc(v);
      }
    }
  }
  return { width, height, data: out };
}

/** align.warp: the photo resampled through matrix (photo -> output) into width x height. Only the
 *  part the output shows is read, first shrunk by area averaging to about the output's scale. */
export function warp(image, matrix, width = FRAME_WIDTH, height = FRAME_HEIGHT) {
  const back = invert(matrix);
  const corners = [
    [0, 0],
    [width, 0],
    [0, height],
    [width, height],
  ].map((p) => applyTransform(back, p));
  const x0 = Math.floor(Math.min(...corners.map((p) => p[0]))) - 2;
  const y0 = Math.floor(Math.min(...corners.map((p) => p[1]))) - 2;
  const x1 = Math.ceil(Math.max(...corners.map((p) => p[0]))) + 2;
  const y1 = Math.ceil(Math.max(...corners.map((p) => p[1]))) + 2;
  const region = sourceOf(image, x0, y0, x1 - x0, y1 - y0);
  let toRegion = [1, 0, -x0, 0, 1, -y0];
  let source;
  const scale = Math.sqrt(Math.abs(matrix[0] * matrix[4] - matrix[1] * matrix[3]));
  if (scale < 1) {
    const shrunkWidth = Math.max(1, pyRound(region.width * scale));
    const shrunkHeight = Math.max(1, pyRound(region.height * scale));
    toRegion = compose([shrunkWidth / region.width, 0, 0, 0, shrunkHeight / region.height, 0], toRegion);
    source = shrink(region, shrunkWidth, shrunkHeight);
  } else {
    source = copyOf(region);
  }
  return affineBicubic(source, invert(compose(matrix, invert(toRegion))), width, height);
}

// ----------------------------------------------------------------------------- faces
/** The eye centres and mouth corners (right, left) of Face Mesh's landmarks [468][2]. */
export function facePoints(landmarks) {
  const eyes = EYE_CORNERS.map(([a, b]) => [0, 1].map((j) => (landmarks[a][j] + landmarks[b][j]) / 2));
  return [...eyes, ...MOUTH_CORNERS.map((i) => landmarks[i])];
}

/** Distance from the eyes' midpoint to the mouth's, in pixels. */
export function faceSize(points) {
  const middle = (p, q) => [(p[0] + q[0]) / 2, (p[1] + q[1]) / 2];
  const [eyes, mouth] = [middle(points[0], points[1]), middle(points[2], points[3])];
  return Math.hypot(eyes[0] - mouth[0], eyes[1] - mouth[1]);
}

/** align.align_face: uint8 RGBA of the face's 178x218 aligned frame. Face Mesh is most
 *  consistent where it sees the face as on CelebA's frames, where TEMPLATE was measured; so it
 *  looks again in the first aligned frame, and its correction is folded into one resampling. */
export async function alignFace(image, face, finder) {
  let matrix = similarityTransform(face.points, TEMPLATE);
  const again = await finder.find(warp(image, matrix), { wholeOnly: true });
  if (again.length) {
    const distance = ({ points }) =>
      points.reduce((sum, [x, y], i) => sum + Math.abs(x - TEMPLATE[i][0]) + Math.abs(y - TEMPLATE[i][1]), 0);
    const nearest = again.reduce((best, found) => (distance(found) < distance(best) ? found : best));
    matrix = compose(similarityTransform(nearest.points, TEMPLATE), matrix);
  }
  return warp(image, matrix);
}

/** images.crop_box: [top, left, side] of the central square crop of a height x width frame. */
export function cropBox(height, width, crop) {
  const shortSide = Math.min(height, width);
  const side = crop <= 0 ? shortSide : Math.min(shortSide, Math.max(1, pyRound((crop * shortSide) / CELEBA_WIDTH)));
  return [Math.floor((height - side) / 2), Math.floor((width - side) / 2), side];
}

/** images.area_weights as sparse rows: per output pixel, its first input pixel and weights
 *  (output pixel i averages inputs by how much of them [i, i + 1) * sizeIn / sizeOut covers). */
function areaWeights(sizeIn, sizeOut) {
  const rows = [];
  for (let i = 0; i < sizeOut; i++) {
    const [start, end] = [i * (sizeIn / sizeOut), (i + 1) * (sizeIn / sizeOut)];
    const first = Math.floor(start);
    const weights = [];
    for (let j = first; j < Math.min(sizeIn, Math.ceil(end)); j++) {
      weights.push(Math.max(0, Math.min(end, j + 1) - Math.max(start, j)) * (sizeOut / sizeIn));
    }
    rows.push({ first, weights });
  }
  return rows;
}

/** images.face_from_pixels: the model's input, [size][size][channels] in [0, 1] as 8-bit levels,
 *  from the aligned frame: its central crop, area-resized, grey by tf.image's weights for 1 channel. */
export function modelInput(frame, size, channels, crop) {
  const [top, left, side] = cropBox(frame.height, frame.width, crop);
  const weights = areaWeights(side, size);
  const columns = new Float64Array(size * side * 3); // the vertical pass: [size][side][3]
  weights.forEach(({ first, weights: row }, i) => {
    row.forEach((w, k) => {
      const p0 = ((top + first + k) * frame.width + left) * 4;
      for (let x = 0, o = i * side * 3; x < side; x++, o += 3) {
        const p = p0 + x * 4;
        columns[o] += w * frame.data[p];
        columns[o + 1] += w * frame.data[p + 1];
        columns[o + 2] += w * frame.data[p + 2];
      }
    });
  });
  const out = new Float32Array(size * size * channels);
  const level = (v) => Math.min(255, Math.max(0, pyRound(v))) / 255;
  for (let i = 0; i < size; i++) {
    weights.forEach(({ first, weights: row }, k) => {
      let [r, g, b] = [0, 0, 0];
      row.forEach((w, j) => {
        const q = (i * side + first + j) * 3;
        r += w * columns[q];
        g += w * columns[q + 1];
        b += w * columns[q + 2];
      });
      const o = (i * size + k) * channels;
      if (channels === 1) {
        out[o] = level(0.2989 * r + 0.587 * g + 0.114 * b);
      } else {
        out[o] = level(r);
        out[o + 1] = level(g);
        out[o + 2] = level(b);
      }
    });
  }
  return out;
}

// ----------------------------------------------------------------------------- the models
/** BlazeFace and Face Mesh on onnxruntime-web: the faces of a photo, largest first. */
export class FaceFinder {
  constructor(ort, detector, mesh) {
    Object.assign(this, { ort, detector, mesh, anchors: detectorAnchors() });
  }

  /** [{box, points, size}] of the faces the detector finds and Face Mesh confirms, largest first.
   *  wholeOnly: the detector looks at the whole photo only (enough for an aligned frame); shrink:
   *  as detect takes it. */
  async find(image, { wholeOnly = false, shrink: shrinkTo = null } = {}) {
    const faces = [];
    for (const { box, keypoints } of await this.detect(image, { wholeOnly, shrink: shrinkTo })) {
      const { landmarks, presence } = await this.landmarks(image, box, keypoints);
      if (presence < MIN_SCORE) continue;
      const points = facePoints(landmarks);
      faces.push({ box, points, size: faceSize(points) });
    }
    return faces.sort((a, b) => b.size - a.size);
  }

  /** The detector's faces in the photo's pixels, best first. It looks at each of detectorViews
   *  (squares beyond the photo's edge are black), each from the photo area-shrunk to the scale
   *  at which the square is its input, and what it finds in several of them is one face.
   *  shrink(width, height), if given, shrinks the photo instead of Pillow's BOX filter here. */
  async detect(image, { wholeOnly = false, shrink: shrinkTo = null } = {}) {
    const { width, height } = image;
    const views = detectorViews(height, width).slice(0, wholeOnly ? 1 : undefined);
    const shrunk = new Map(); // each size of view: the photo at its scale
    const found = [];
    for (const [x0, y0, side] of views) {
      if (!shrunk.has(side)) {
        const scale = Math.min(1, DETECTOR_SIZE / side);
        const [w, h] = [Math.max(1, pyRound(width * scale)), Math.max(1, pyRound(height * scale))];
        const picture = scale >= 1 ? image : shrinkTo ? shrinkTo(w, h) : shrink(sourceOf(image), w, h);
        shrunk.set(side, { picture, scale });
      }
      const { picture, scale } = shrunk.get(side);
      const extent = [x0 * scale, y0 * scale, (x0 + side) * scale, (y0 + side) * scale];
      const input = detectorInput(picture, extent, DETECTOR_SIZE);
      const [regressors, logits] = await this.run(this.detector, input, DETECTOR_SIZE);
      // from the square's [0, 1] to the photo's pixels (float32 times side, as numpy does it)
      const back = ([x, y]) => [Math.fround(x * side) + x0, Math.fround(y * side) + y0];
      for (const { box, score, keypoints } of decodeDetections(regressors, logits, this.anchors)) {
        found.push({ box: [...back(box.slice(0, 2)), ...back(box.slice(2))], score, keypoints: keypoints.map(back) });
      }
    }
    return mergeDetections(found).map(({ box, keypoints }) => ({ box, keypoints }));
  }

  /** Face Mesh's landmarks [468][2] in the photo's pixels and its face probability; it sees the
   *  face upright (the detector's eyes level) in a square 1.5 times the detector's box. */
  async landmarks(image, box, keypoints) {
    const centre = [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2];
    const side = Math.max(box[2] - box[0], box[3] - box[1]) * MESH_MARGIN;
    const angle = -Math.atan2(keypoints[1][1] - keypoints[0][1], keypoints[1][0] - keypoints[0][0]);
    const [cos, sin, zoom] = [Math.cos(angle), Math.sin(angle), MESH_SIZE / side];
    const turn = [zoom * cos, -zoom * sin, zoom * sin, zoom * cos];
    const toInput = [
      turn[0],
      turn[1],
      MESH_SIZE / 2 - (turn[0] * centre[0] + turn[1] * centre[1]),
      turn[2],
      turn[3],
      MESH_SIZE / 2 - (turn[2] * centre[0] + turn[3] * centre[1]),
    ];
    const crop = warp(image, toInput, MESH_SIZE, MESH_SIZE);
    const input = new Float32Array(MESH_SIZE * MESH_SIZE * 3);
    for (let p = 0; p < MESH_SIZE * MESH_SIZE; p++) {
      for (let c = 0; c < 3; c++) input[p * 3 + c] = crop.data[p * 4 + c] / 255;
    }
    const [points, presence] = await this.run(this.mesh, input, MESH_SIZE);
    const back = invert(toInput);
    const landmarks = [];
    for (let i = 0; i < points.length / 3; i++) landmarks.push(applyTransform(back, [points[3 * i], points[3 * i + 1]]));
    return { landmarks, presence: sigmoid(presence[0]) };
  }

  /** A model's two outputs, in their order, for an NHWC [1, size, size, 3] input. */
  async run(session, input, size) {
    const tensor = new this.ort.Tensor('float32', input, [1, size, size, 3]);
    const results = await session.run({ [session.inputNames[0]]: tensor });
    return session.outputNames.slice(0, 2).map((name) => results[name].data);
  }
}
