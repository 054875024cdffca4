// Photos for the face explorer: a file or a camera frame -> upright RGBA pixels of bounded size.
//
// A photo is decoded by the browser (createImageBitmap, its EXIF orientation applied) straight to
// at most MAX_SIDE pixels on its longer side, so an 8000x6000 photo never lives at full size in
// the page: it keeps one working copy (MAX_SIDE^2 RGBA bytes at most) and small canvases; while
// it reads the photo, the decoded bitmap and a canvas of that size exist too, for a moment.
// A face keeps its detail as long as it spans more than about 2% of the photo's longer side.
// A photo shrunk by up to 2 (a phone's 12 megapixels) takes the browser's 'low' resize: its
// bilinear filter still weighs every pixel at that scale, and it skips the mipmaps that 'medium'
// builds, a good part of the time to read such a photo. A larger one takes 'medium' (mipmapped, so
// without aliasing), as good here as 'high', whose filter takes over twice as long: align.js
// averages the face's pixels anyway.

export const MAX_SIDE = 2048;

/** A problem with a photo, worded for the page. */
export class PhotoError extends Error {}

const JPEG_HEAD = 1 << 17; // bytes read for a JPEG's size: its EXIF (a thumbnail too) comes first

/** The EXIF orientation (1 to 8) in the TIFF block at start of a JPEG's APP1 segment, else 1. */
function exifOrientation(view, start, end) {
  if (end - start < 8) return 1;
  const little = view.getUint16(start) === 0x4949; // 'II', else 'MM'
  const entries = start + view.getUint32(start + 4, little);
  if (entries + 2 > end) return 1;
  for (let i = 0, at = entries + 2; i < view.getUint16(entries, little) && at + 12 <= end; i++, at += 12) {
    if (view.getUint16(at, little) === 0x0112) return view.getUint16(at + 8, little);
  }
  return 1;
}

/** {width, height} of a JPEG, upright, from its frame header and EXIF orientation (what the
 *  browser applies); null for another file, or a JPEG whose header is not in its first bytes. */
function jpegSize(bytes) {
  const view = new DataView(bytes);
  if (view.byteLength < 4 || view.getUint16(0) !== 0xffd8) return null;
  let orientation = 1;
  for (let at = 2; at + 9 < view.byteLength; ) {
    if (view.getUint8(at) !== 0xff) return null;
    const marker = view.getUint8(at + 1);
    if (marker === 0xff) {
      at += 1; // a fill byte
      continue;
    }
    const length = view.getUint16(at + 2);
    if (marker === 0xe1 && view.getUint32(at + 4) === 0x45786966) {
      orientation = exifOrientation(view, at + 10, Math.min(view.byteLength, at + 2 + length)); // 'Exif\0\0'
    }
    // a start of frame: SOF0 to SOF15 but DHT (c4), JPG (c8) and DAC (cc)
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      const [height, width] = [view.getUint16(at + 5), view.getUint16(at + 7)];
      return orientation >= 5 && orientation <= 8 ? { width: height, height: width } : { width, height };
    }
    at += 2 + length;
  }
  return null;
}

/** {width, height} of an image file, upright, from its header (the browser does not decode the
 *  pixels to say it; a JPEG's is read here, faster than an image element loads the file); a
 *  PhotoError if the browser cannot read it as an image. */
async function imageSize(file) {
  const size = jpegSize(await file.slice(0, JPEG_HEAD).arrayBuffer());
  if (size?.width && size.height) return size;
  return new Promise((resolve, reject) => {
    const url = URL.createObjectURL(file);
    const image = new Image();
    const done = () => URL.revokeObjectURL(url);
    image.onload = () => {
      done();
      resolve({ width: image.naturalWidth, height: image.naturalHeight });
    };
    image.onerror = () => {
      done();
      reject(new PhotoError(`${file.name} is not an image this browser can read: choose a JPEG, PNG or WebP photo.`));
    };
    image.src = url;
  });
}

/** The size a photo is worked on: its own, or shrunk to MAX_SIDE on the longer side. */
export function workingSize(width, height, maxSide = MAX_SIDE) {
  const scale = Math.min(1, maxSide / Math.max(width, height));
  return { width: Math.max(1, Math.round(width * scale)), height: Math.max(1, Math.round(height * scale)) };
}

/** RGBA pixels {width, height, data} of a drawable (an ImageBitmap or a video) drawn at that size. */
function pixelsOf(source, width, height) {
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext('2d', { willReadFrequently: true });
  context.imageSmoothingQuality = 'high';
  context.drawImage(source, 0, 0, width, height);
  const { data } = context.getImageData(0, 0, width, height);
  canvas.width = canvas.height = 0; // its pixels go now, not when collected
  return { width, height, data };
}

/** What the face finder is given to shrink a photo the browser shrank as it read it (its pixels
 *  are not align.py's anyway): the browser's resize of the bitmap, natively, in a fraction of the
 *  time align.js takes to shrink its pixels as Pillow does. Null for a photo read at its size. */
function shrinkerOf(bitmap, original) {
  if (bitmap.width === original.width && bitmap.height === original.height) return null;
  return (width, height) => pixelsOf(bitmap, width, height);
}

/** A photo file -> {image (working pixels), original: {width, height}, bitmap (for previews; close
 *  it), shrink (for FaceFinder.find, while the bitmap is open)}. */
export async function readPhotoFile(file) {
  const original = await imageSize(file);
  if (!original.width || !original.height) throw new PhotoError(`${file.name} has no pixels.`);
  const size = workingSize(original.width, original.height);
  const options = { imageOrientation: 'from-image' };
  if (size.width !== original.width || size.height !== original.height) {
    const quality = size.width * 2 >= original.width ? 'low' : 'medium';
    Object.assign(options, { resizeWidth: size.width, resizeHeight: size.height, resizeQuality: quality });
  }
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, options);
  } catch (error) {
    throw new PhotoError(`${file.name} could not be decoded (${error.message}): choose another photo.`);
  }
  return { image: pixelsOf(bitmap, bitmap.width, bitmap.height), original, bitmap, shrink: shrinkerOf(bitmap, original) };
}

/** The camera's current frame, as readPhotoFile gives a file. */
export async function readVideoFrame(video) {
  const original = { width: video.videoWidth, height: video.videoHeight };
  if (!original.width) throw new PhotoError('The camera has not given a picture yet: wait a moment and try again.');
  const size = workingSize(original.width, original.height);
  const bitmap = await createImageBitmap(video, { resizeWidth: size.width, resizeHeight: size.height, resizeQuality: 'medium' });
  return { image: pixelsOf(bitmap, size.width, size.height), original, bitmap, shrink: shrinkerOf(bitmap, original) };
}
