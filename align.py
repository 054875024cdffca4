"""Find the faces in any photo and align them onto CelebA's aligned frame, with onnxruntime only.

    python align.py --data photos/ --out aligned/            # each photo's largest face
    python align.py --data group.jpg --out aligned/ --faces all
    python train.py --data aligned/                          # then train on your own collection
    python align.py --data ./celeba --out celeba-aligned/    # CelebA in this framing, its layout kept

MediaPipe's BlazeFace finds the faces and its Face Mesh their landmarks (pretrained/face_detector/,
on onnxruntime). A similarity transform puts the eyes and mouth corners where Face Mesh finds them
on CelebA's aligned images (TEMPLATE), and the photo is resampled into that 178x218 frame, the
models' framing. generate.py aligns its --images this way; docs/generate.md shows results.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from errors import UserError, run_main

DETECTOR_FILE = Path(__file__).resolve().parent / "pretrained" / "face_detector" / "face_detector.onnx"
LANDMARKS_FILE = DETECTOR_FILE.with_name("face_landmarks.onnx")
FRAME_WIDTH, FRAME_HEIGHT = 178, 218  # CelebA's aligned images
# Face.points (x, y) in the frame: their mean over CelebA's aligned images (bench/align_wild.py --template).
TEMPLATE = np.array([[70.1, 112.9], [108.0, 113.0], [72.2, 152.9], [106.0, 153.0]])
EYE_CORNERS = ([33, 133], [362, 263])  # Face Mesh's outer and inner corner of the right and left eye
MOUTH_CORNERS = [61, 291]  # Face Mesh's right and left mouth corner
MIN_SCORE = 0.5  # the detector's and Face Mesh's: below it, not a face
OVERLAP = 0.3  # boxes overlapping more than this (intersection over union) are one face
SMALL_FACE = 17  # eyes to mouth (Face.size) in a 64x64 model input: a smaller face is aligned with a warning
MAX_JOBS = 64


class AlignError(UserError):
    """A photo with no face, or alignment settings that cannot work."""


@dataclass(frozen=True)
class Face:
    """A face found in a photo, in the photo's pixels."""

    box: np.ndarray  # [x0, y0, x1, y1]
    landmarks: np.ndarray  # [468, 2] (x, y): Face Mesh's landmarks

    @property
    def points(self) -> np.ndarray:
        """[4, 2]: the centres of the right and left eye (between each eye's corners), the right and left
        mouth corner: CelebA's alignment landmarks less the nose tip, which moves as the head turns."""
        eyes = [self.landmarks[corners].mean(axis=0) for corners in EYE_CORNERS]
        return np.stack([*eyes, *self.landmarks[MOUTH_CORNERS]])

    @property
    def size(self) -> float:
        """Distance from the eyes' midpoint to the mouth's, in pixels."""
        points = self.points
        return float(np.linalg.norm(points[:2].mean(axis=0) - points[2:].mean(axis=0)))


# --------------------------------------------------------------------------- the detector
def detector_anchors(size: int, strides: Sequence[int], per_cell: Sequence[int]) -> np.ndarray:
    """[N, 2] anchor centres (x, y) in [0, 1] of BlazeFace's SSD heads: per_cell in each cell of each grid, in order."""
    centres = []
    for stride, count in zip(strides, per_cell, strict=True):
        cells = size // stride
        ys, xs = (np.mgrid[0:cells, 0:cells] + 0.5) / cells
        centres.append(np.repeat(np.stack([xs, ys], axis=-1).reshape(-1, 2), count, axis=0))
    return np.concatenate(centres).astype(np.float32)


def logistic(logits: np.ndarray) -> np.ndarray:
    """The models' scores from their logits (float64, clipped: no overflow warnings)."""
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(logits, np.float64), -100.0, 100.0)))


def decode_detections(
    regressors: np.ndarray, logits: np.ndarray, anchors: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BlazeFace's raw outputs ([N, 16] offsets, [N] logits) -> boxes [M, 4] (x0, y0, x1, y1), scores [M]
    and keypoints [M, 6, 2] in [0, 1] of its square input, for the M anchors scoring at least MIN_SCORE."""
    scores = logistic(logits)
    keep = scores >= MIN_SCORE
    offsets, centres = regressors[keep] / size, anchors[keep]
    middle, half = offsets[:, :2] + centres, offsets[:, 2:4] / 2
    boxes = np.concatenate([middle - half, middle + half], axis=1)
    keypoints = offsets[:, 4:16].reshape(-1, 6, 2) + centres[:, None]
    return boxes, scores[keep], keypoints


def box_overlap(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one box [4] with boxes [N, 4]."""
    low, high = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    intersection = np.prod(np.clip(high - low, 0.0, None), axis=1)
    area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0.0, None), axis=-1)  # noqa: E731
    return intersection / np.maximum(area(box) + area(boxes) - intersection, 1e-12)


def merge_detections(
    boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray
) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """MediaPipe's weighted non-maximum suppression: detections overlapping the best remaining one by more
    than OVERLAP become one face, their score-weighted mean (steadier than the best alone), best first."""
    order = np.argsort(-scores)
    faces = []
    while order.size:
        similar = box_overlap(boxes[order[0]], boxes[order]) > OVERLAP
        members, order = order[similar], order[~similar]
        weights = scores[members][:, None]
        box = (boxes[members] * weights).sum(0) / weights.sum()
        points = (keypoints[members] * weights[..., None]).sum(0) / weights.sum()
        faces.append((box, float(scores[members[0]]), points))
    return faces


def detector_views(height: int, width: int) -> list[tuple[float, float, float]]:
    """The squares (x0, y0, side) the detector looks at: the whole photo, squares of its short side along the long
    one and of half the short side overlapping by half, where the small faces of a group photo are found."""
    long_side, short_side = max(height, width), min(height, width)
    views = [((width - long_side) / 2, (height - long_side) / 2, float(long_side))]
    for side in (short_side, short_side / 2):
        if side == long_side:
            continue

        def starts(length: int, side: float = side) -> np.ndarray:
            count = max(1, int(np.ceil((length - side) / (side / 2) - 1e-9)) + 1)
            return np.linspace(0.0, length - side, count)

        views += [(float(x), float(y), float(side)) for y in starts(height) for x in starts(width)]
    return views


class FaceFinder:
    """MediaPipe's BlazeFace (finds faces) and Face Mesh (468 landmarks of one face) on onnxruntime."""

    DETECTOR_SIZE, STRIDES, ANCHORS_PER_CELL = 128, (8, 16), (2, 6)  # BlazeFace's short-range model
    MESH_SIZE = 192  # Face Mesh's square input
    MESH_MARGIN = 1.5  # Face Mesh's input shows the detector's box and this much around it

    def __init__(self, detector: str | os.PathLike = DETECTOR_FILE, landmarks: str | os.PathLike = LANDMARKS_FILE):
        from inference import make_session

        try:
            self.detector, self.mesh = make_session(detector, threads=1), make_session(landmarks, threads=1)
        except (FileNotFoundError, ValueError) as error:
            raise AlignError(f"cannot load the face models ({error})") from None
        self.anchors = detector_anchors(self.DETECTOR_SIZE, self.STRIDES, self.ANCHORS_PER_CELL)

    def find(self, pixels: np.ndarray, whole_only: bool = False) -> list[Face]:
        """The faces in uint8 [H, W, 3] pixels, best first, found and confirmed by Face Mesh (not seen in noise);
        whole_only: in the whole photo only (an aligned frame)."""
        found = [(box, *self.landmarks(pixels, box, keypoints)) for box, keypoints in self.detect(pixels, whole_only)]
        return [Face(box, landmarks) for box, landmarks, presence in found if presence >= MIN_SCORE]

    def detect(self, pixels: np.ndarray, whole_only: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
        """(box [4], keypoints [6, 2]) in the photo's pixels of each face found in detector_views (black
        beyond the photo's edge, as MediaPipe pads), best first; one face found in several views is one."""
        height, width = pixels.shape[:2]
        photo = Image.fromarray(pixels)
        shrunk: dict[float, Image.Image] = {}  # each size of view: the photo area-averaged to the detector's scale
        found = []  # (boxes, scores, keypoints) of each view
        for x0, y0, side in detector_views(height, width)[: 1 if whole_only else None]:
            scale = min(1.0, self.DETECTOR_SIZE / side)  # the photo's scale where the view is the detector's input
            if side not in shrunk:
                size = (max(1, round(width * scale)), max(1, round(height * scale)))
                shrunk[side] = photo.resize(size, Image.Resampling.BOX) if scale < 1 else photo
            extent = (x0 * scale, y0 * scale, (x0 + side) * scale, (y0 + side) * scale)
            square = shrunk[side].transform(
                (self.DETECTOR_SIZE,) * 2, Image.Transform.EXTENT, extent, Image.Resampling.BILINEAR
            )
            model_input = (np.asarray(square, np.float32) / 127.5 - 1.0)[None]
            regressors, logits = self.detector.run(None, {self.detector.get_inputs()[0].name: model_input})
            boxes, scores, points = decode_detections(regressors[0], logits[0, :, 0], self.anchors, self.DETECTOR_SIZE)
            origin = np.array([x0, y0])
            found.append((boxes * side + np.tile(origin, 2), scores, points * side + origin))
        merged = merge_detections(*(np.concatenate(parts) for parts in zip(*found, strict=True)))
        return [(box, keypoints) for box, _, keypoints in merged]

    def landmarks(self, pixels: np.ndarray, box: np.ndarray, keypoints: np.ndarray) -> tuple[np.ndarray, float]:
        """Face Mesh's [468, 2] landmarks of a face in the photo's pixels and its presence score, from the face
        turned upright (the detector's eyes level) in a square around its box."""
        centre = (box[:2] + box[2:]) / 2
        side = max(box[2] - box[0], box[3] - box[1]) * self.MESH_MARGIN
        eyes = keypoints[1] - keypoints[0]
        angle = -np.arctan2(eyes[1], eyes[0])
        turn = self.MESH_SIZE / side * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        to_input = np.hstack([turn, (self.MESH_SIZE / 2 - turn @ centre)[:, None]])
        crop = warp(pixels, to_input, (self.MESH_SIZE, self.MESH_SIZE))
        model_input = (crop.astype(np.float32) / 255.0)[None]
        points, presence = self.mesh.run(None, {self.mesh.get_inputs()[0].name: model_input})
        landmarks = apply_transform(invert(to_input), points.reshape(-1, 3)[:, :2])
        return landmarks, float(logistic(presence.ravel()[0]))


# --------------------------------------------------------------------------- alignment
def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 rotation, uniform scale and shift [[a, -b, tx], [b, a, ty]] mapping source [N, 2] nearest to target."""
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    s, t = source - source_mean, target - target_mean
    norm = max(float((s**2).sum()), 1e-12)
    a = float((s * t).sum()) / norm
    b = float((s[:, 0] * t[:, 1] - s[:, 1] * t[:, 0]).sum()) / norm
    rotation = np.array([[a, -b], [b, a]])
    return np.hstack([rotation, (target_mean - rotation @ source_mean)[:, None]])


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2x3 transform that applies `inner`, then `outer`."""
    return outer @ np.vstack([inner, [0.0, 0.0, 1.0]])


def invert(matrix: np.ndarray) -> np.ndarray:
    return np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]


def warp(pixels: np.ndarray, matrix: np.ndarray, size: tuple[int, int] = (FRAME_WIDTH, FRAME_HEIGHT)) -> np.ndarray:
    """uint8 [height, width, 3]: the photo resampled through `matrix` (photo -> output coordinates). The
    part shown is first area-averaged to about the output's scale (no aliasing); edge pixels repeat beyond."""
    corners = apply_transform(invert(matrix), np.array([[0, 0], [size[0], 0], [0, size[1]], size], float))
    x0, y0 = np.floor(corners.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 2
    rows = np.clip(np.arange(y0, y1), 0, pixels.shape[0] - 1)  # clipped indices repeat the edge
    columns = np.clip(np.arange(x0, x1), 0, pixels.shape[1] - 1)
    image = Image.fromarray(pixels[rows[:, None], columns[None, :]])
    to_region = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]])
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))  # output pixels per photo pixel
    if scale < 1.0:
        shrunk = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        to_region = np.diag([shrunk[0] / image.width, shrunk[1] / image.height]) @ to_region
        image = image.resize(shrunk, Image.Resampling.BOX)
    inverse = invert(compose(matrix, invert(to_region)))  # output -> region, as PIL wants it
    return np.asarray(image.transform(size, Image.Transform.AFFINE, inverse.reshape(6), Image.Resampling.BICUBIC))


def align_face(pixels: np.ndarray, face: Face, finder: FaceFinder) -> np.ndarray:
    """uint8 [218, 178, 3]: the face's aligned frame. Face Mesh is most consistent on CelebA-like frames,
    where TEMPLATE was measured: it looks again in a first aligned frame, the correction folded in."""
    matrix = similarity_transform(face.points, TEMPLATE)
    again = finder.find(warp(pixels, matrix), whole_only=True)
    if again:
        nearest = min(again, key=lambda found: float(np.abs(found.points - TEMPLATE).mean()))
        matrix = compose(similarity_transform(nearest.points, TEMPLATE), matrix)
    return warp(pixels, matrix)


def choose_faces(faces: Sequence[Face], which: str | int) -> list[Face]:
    """The 'largest' (eyes to mouth), 'all' (largest first) or number `which` (0 the largest) of the faces."""
    ordered = sorted(faces, key=lambda face: -face.size)
    if which == "all":
        return ordered
    if which == "largest":
        return ordered[:1]
    if not 0 <= int(which) < len(ordered):
        raise AlignError(f"face number {which} asked for, but only {len(ordered)} found (numbers start at 0)")
    return [ordered[int(which)]]


def parse_faces(text: str) -> str | int:
    """--faces: 'largest', 'all' or a face's number (0 the largest)."""
    if text in ("largest", "all"):
        return text
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"give largest, all or a face number (0 is the largest), not {text!r}")


def align_photo(
    pixels: np.ndarray, finder: FaceFinder, which: str | int = "largest", name: str = "the photo"
) -> list[tuple[Face, np.ndarray]]:
    """The chosen faces of a photo with their aligned frames; AlignError if none, a warning for a small one."""
    faces = choose_faces(finder.find(pixels), which)
    if not faces:
        raise AlignError(f"no face found in {name}")
    for face in faces:
        if face.size < SMALL_FACE:
            print(
                f"warning: the face in {name} is small ({face.size:.0f} pixels from eyes to mouth, "
                f"under {SMALL_FACE}): its aligned crop is blurred; a larger photo of it works better",
                file=sys.stderr,
            )
    return [(face, align_face(pixels, face, finder)) for face in faces]


# --------------------------------------------------------------------------- the command
def output_names(photo: Path, root: Path, out: Path, count: int) -> list[Path]:
    """Where a photo's aligned crops go: its path below root, under out, as .jpg (name_0.jpg, ... for several)."""
    relative = photo.relative_to(root) if root.is_dir() else Path(photo.name)
    target = out / relative.with_suffix(".jpg")
    return [target] if count == 1 else [target.with_name(f"{target.stem}_{n}.jpg") for n in range(count)]


def align_folder(source: Path, out: Path, which: str | int, finders: Sequence[FaceFinder]) -> dict[str, int]:
    """Align every photo under source (a folder, recursively, or one photo) into out as JPEG, one photo per finder
    at a time; photos with crops there already (a stopped run), unreadable or without a face are skipped and counted."""
    from data import list_images
    from images import read_pixels, save_images
    from runs import Progress

    photos = list_images(source, recursive=True)[0] if source.is_dir() else [source]
    if not photos:
        raise AlignError(f"no image files under {source}; give a folder of photos or a photo")
    todo = [
        photo for photo in photos if not any(output_names(photo, source, out, count)[0].exists() for count in (1, 2))
    ]
    # photos: all looked at; aligned: those with a face
    counts = dict.fromkeys(("aligned", "faces", "no face", "unreadable"), 0)
    counts |= {"photos": len(photos), "done before": len(photos) - len(todo)}
    idle = queue.SimpleQueue()  # each finder serves one thread at a time
    for finder in finders:
        idle.put(finder)

    def align_one(photo: Path) -> list[np.ndarray]:
        finder = idle.get()
        try:
            return [frame for _, frame in align_photo(read_pixels(photo), finder, which, str(photo))]
        finally:
            idle.put(finder)

    progress = Progress(len(todo), "aligned")
    pool = ThreadPoolExecutor(len(finders))  # onnxruntime, Pillow and numpy let go of the GIL where the time goes
    try:
        for photo, result in zip(todo, [pool.submit(align_one, photo) for photo in todo], strict=True):
            progress.add(1)
            try:
                frames = result.result()
            except (OSError, ValueError, AlignError) as error:  # OSError, ValueError: not an image Pillow reads
                print(f"skipped: {error}", file=sys.stderr)
                counts["no face" if isinstance(error, AlignError) else "unreadable"] += 1
                continue
            names = output_names(photo, source, out, len(frames))
            save_images({name: Image.fromarray(frame) for name, frame in zip(names, frames, strict=True)})
            counts["aligned"] += 1
            counts["faces"] += len(frames)
    finally:  # on Ctrl-C too: the photos not started are dropped, the crops written are whole
        pool.shutdown(cancel_futures=True)
    progress.close()
    if not counts["faces"] and not counts["done before"]:
        raise AlignError(f"no face found in any of the {len(photos)} image files under {source}; give photos of faces")
    return counts


def copy_annotations(source: Path, out: Path) -> list[str]:
    """A CelebA root's partition, attribute and identity files, copied to the same places under out (its layout)."""
    from data import ANNOTATIONS
    from images import write_together

    copied = []
    for layout in ("kaggle", "original"):  # none below a single photo
        present = [name for name in ANNOTATIONS[layout] if (source / name).is_file()]
        if ANNOTATIONS[layout][0] in present:  # a partition file: this layout
            copied += present
    write_together({out / name: partial(shutil.copyfile, source / name) for name in copied})
    return copied


def build_parser() -> argparse.ArgumentParser:
    from runs import HelpFormatter

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--data", required=True, help="a folder of photos (searched recursively) or one photo")
    parser.add_argument("--out", required=True, help="folder for the aligned 178x218 crops (JPEG)")
    parser.add_argument(
        "--faces",
        type=parse_faces,
        default="largest",
        help="largest: each photo's largest face; all: every face (name_0.jpg, ...); N: face number N (0 the largest)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(os.cpu_count() or 1, MAX_JOBS),
        metavar="N",
        help="photos aligned at once (default: the CPUs, %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    from runs import check_writable, within

    args = build_parser().parse_args(argv)
    source, out = Path(args.data), Path(args.out)
    if not source.exists():
        raise AlignError(f"--data {source} does not exist; give a folder of photos or a photo")
    if source.is_dir() and within(out.resolve(), source.resolve()):
        raise AlignError(f"--out {out} lies inside --data {source}, whose photos it would mix with; give another --out")
    if not 1 <= args.jobs <= MAX_JOBS:  # each job loads its own face models
        raise AlignError(f"--jobs {args.jobs}: give a number of photos aligned at once, 1 to {MAX_JOBS}")
    check_writable(out, folder=True)
    try:
        counts = align_folder(source, out, args.faces, [FaceFinder() for _ in range(args.jobs)])
    except KeyboardInterrupt:  # the crops written so far are whole (atomic writes) and kept
        sys.exit(f"stopped; run the same command again to go on where it stopped (crops in {out} are kept)")
    skipped = "".join(f"; {counts[what]} {what}" for what in ("done before", "no face", "unreadable") if counts[what])
    print(
        f"wrote {counts['faces']} aligned faces from {counts['aligned']} of {counts['photos']} photos to {out}{skipped}"
    )
    copied = copy_annotations(source, out)
    if copied:
        print(f"copied {', '.join(copied)} beside them: train.py --data {out} keeps the official partition")


if __name__ == "__main__":
    run_main(main)
