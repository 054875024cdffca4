"""What an attribute edit changes besides its attribute: directions with and without Male held fixed.

    python bench/attribute_edits.py --data ./celeba             # the pretrained model (CelebA in its framing)
    python bench/attribute_edits.py --data ./celeba --run runs/<name> --alpha 1.5 --count 600

Encodes the labelled train and validation images, fits a logistic probe per watched attribute on
their posterior means, and computes each edited attribute's direction twice: the plain
difference of means, and with generate.HELD_ATTRIBUTE (Male) held fixed, as generate.py does.
Then `count` test images are edited by alpha times each direction, decoded and encoded again; reported: how much
each probe's logit moves on average, the edited attribute's (wanted) against the others' (side
effects). Not a test: a measurement.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import data  # noqa: E402
import latent  # noqa: E402
import runs  # noqa: E402
from generate import HELD_ATTRIBUTE  # noqa: E402

WATCHED = ("Male", "Heavy_Makeup", "Young", "Smiling", "Blond_Hair", "Eyeglasses", "Bangs")


def labelled_means(dataset: data.Dataset, splits: list[str], backend: runs.Backend) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means [N, D] of the labelled images of `splits` and their labels [N, 40] (True: positive)."""
    files = [path for split in splits for path in dataset.split(split) if path.name in dataset.attributes]
    mu, kept = runs.encode_files(files, backend)
    return mu, np.stack([dataset.attributes[path.name] for path in kept]) > 0


def logistic_probe(points: np.ndarray, labels: np.ndarray, l2: float = 1e-2):
    """Logit function of an L2-regularised logistic regression on standardised points (Newton's method)."""
    mean, scale = points.mean(axis=0), points.std(axis=0) + 1e-6
    design = np.column_stack([(points - mean) / scale, np.ones(len(points))])
    weights = np.zeros(design.shape[1])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-design @ weights))
        gradient = design.T @ (p - labels) / len(points) + l2 * weights
        hessian = (design * (p * (1 - p))[:, None]).T @ design / len(points) + l2 * np.eye(len(weights))
        weights -= np.linalg.solve(hessian, gradient)
        if np.abs(gradient).max() < 1e-8:
            break
    return lambda z: ((z - mean) / scale) @ weights[:-1] + weights[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="CelebA root with attribute labels, in the model's framing")
    parser.add_argument("--run", default=str(REPO / "pretrained" / "celeba64"), help="model folder")
    parser.add_argument("--alpha", type=float, default=1.5, help="multiple of each direction added")
    parser.add_argument("--count", type=int, default=600, help="test images edited")
    parser.add_argument("--edit", nargs="+", default=["Smiling", "Blond_Hair", "Eyeglasses", "Young", "Bangs"])
    args = parser.parse_args()
    started = time.perf_counter()
    backend, dataset = runs.open_backend(args.run), data.find_dataset(args.data)
    mu, labels = labelled_means(dataset, ["train", "validation"], backend)
    test_mu, _ = labelled_means(dataset, ["test"], backend)
    index = {name: data.CELEBA_ATTRIBUTES.index(name) for name in {*WATCHED, *args.edit}}
    probes = {name: logistic_probe(mu, labels[:, index[name]]) for name in WATCHED}
    codes = test_mu[np.random.default_rng(0).choice(len(test_mu), min(args.count, len(test_mu)), replace=False)]
    before = backend.encode(backend.decode(codes))[0]  # through the decoder and encoder, as the edits go
    print(f"{len(mu)} labelled images for the probes and directions, {len(codes)} test images edited, "
          f"alpha {args.alpha}; mean change of each probe's logit:")  # fmt: skip
    print(f"{'edit':28s} {'|direction|':>11s} " + " ".join(f"{name[:12]:>12s}" for name in WATCHED))
    for name in args.edit:
        column = np.where(labels[:, index[name]], 1, -1)
        held = labels[:, data.CELEBA_ATTRIBUTES.index(HELD_ATTRIBUTE)] if name != HELD_ATTRIBUTE else None
        for kind, direction in (
            ("plain", latent.attribute_direction(mu, column)),
            (f"{HELD_ATTRIBUTE} held", latent.attribute_direction(mu, column, held)),
        ):
            after = backend.encode(backend.decode(codes + args.alpha * direction))[0]
            changes = [float(np.mean(probes[watched](after) - probes[watched](before))) for watched in WATCHED]
            print(
                f"{name + ', ' + kind:28s} {np.linalg.norm(direction):11.2f} "
                + " ".join(f"{c:+12.2f}" for c in changes)
            )
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
