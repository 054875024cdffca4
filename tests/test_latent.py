"""latent.py on plain numpy arrays: the latent math and the fitted density (no model, no TensorFlow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO

import data
import latent
import runs
from errors import UserError
from latent import (
    DENSITY_FILE,
    DensityError,
    LatentDensity,
    attribute_direction,
    attribute_sweep,
    choose_sampler,
    find_density,
    fit_folder_density,
    fit_mixture,
    latent_path,
    lerp,
    normalized_weights,
    principal_directions,
    read_density,
    reparameterize,
    select_density,
    slerp,
    traversal_grid,
    weighted_posterior,
    write_density,
)


def test_slerp_endpoints_are_the_inputs():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(16), rng.standard_normal(16)
    path = slerp(a, b, np.linspace(0, 1, 5))
    assert path.shape == (5, 16)
    np.testing.assert_allclose(path[0], a, atol=1e-12)
    np.testing.assert_allclose(path[-1], b, atol=1e-12)


def test_slerp_keeps_the_norm_of_equal_norm_vectors_where_lerp_shrinks_it():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(32), rng.standard_normal(32)
    b *= np.linalg.norm(a) / np.linalg.norm(b)
    t = np.linspace(0, 1, 9)
    np.testing.assert_allclose(np.linalg.norm(slerp(a, b, t), axis=1), np.linalg.norm(a), rtol=1e-10)
    lerp_norms = np.linalg.norm(lerp(a, b, t), axis=1)
    assert lerp_norms[4] < 0.9 * np.linalg.norm(a)  # the middle of a linear path is closer to 0


def test_slerp_between_orthogonal_unit_vectors_and_its_fallbacks():
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    np.testing.assert_allclose(slerp(a, b, [0.5])[0], [np.sqrt(0.5), np.sqrt(0.5)])
    # Parallel, antiparallel or zero vectors have no plane of rotation: straight line instead.
    t = np.linspace(0, 1, 4)
    np.testing.assert_allclose(slerp(a, 2 * a, t), lerp(a, 2 * a, t))
    np.testing.assert_allclose(slerp(a, -a, t), lerp(a, -a, t))
    np.testing.assert_allclose(slerp(np.zeros(2), b, t), lerp(np.zeros(2), b, t))


@pytest.mark.parametrize("method", ["lerp", "slerp"])
def test_latent_path_through_a_chain(method):
    points = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    path = latent_path(points, steps=4, method=method)
    assert path.shape == (2 * 3 + 1, 2)  # shared middle point counted once
    np.testing.assert_allclose(path[[0, 3, 6]], points, atol=1e-12)
    with pytest.raises(ValueError, match="unknown interpolation"):
        latent_path(points, 4, "cubic")


def test_default_weights_are_one_over_b_and_user_weights_sum_to_one():
    np.testing.assert_allclose(normalized_weights(None, 4), [0.25] * 4)
    weights = normalized_weights([1, 1, 2], 3)
    np.testing.assert_allclose(weights, [0.25, 0.25, 0.5])
    assert weights.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2 weights for 3 images"):
        normalized_weights([1, 2], 3)
    with pytest.raises(ValueError, match="sum to 0"):
        normalized_weights([1, -1], 2)


def test_weighted_posterior_combines_mu_and_log_sigma():
    mu = np.array([[0.0, 2.0], [4.0, -2.0]])
    log_sigma = np.log(np.array([[1.0, 4.0], [4.0, 1.0]]))
    mixed_mu, mixed_log_sigma = weighted_posterior(mu, log_sigma, normalized_weights(None, 2))
    np.testing.assert_allclose(mixed_mu, [2.0, 0.0])
    np.testing.assert_allclose(np.exp(mixed_log_sigma), [2.0, 2.0])  # geometric mean of the sigmas
    one_hot_mu, one_hot_log_sigma = weighted_posterior(mu, log_sigma, np.array([0.0, 1.0]))
    np.testing.assert_allclose(one_hot_mu, mu[1])
    np.testing.assert_allclose(one_hot_log_sigma, log_sigma[1])


def test_reparameterize_scales_the_noise_by_sigma():
    mu, log_sigma = np.array([1.0, -1.0]), np.log(np.array([2.0, 0.5]))
    noise = np.array([[0.0, 0.0], [1.0, 2.0]])
    np.testing.assert_allclose(reparameterize(mu, log_sigma, noise), [[1.0, -1.0], [3.0, 0.0]])


def test_attribute_direction_sign_on_a_toy_labelled_set():
    rng = np.random.default_rng(2)
    labels = np.array([1, -1] * 20 + [0] * 5)  # 0: unlabelled rows are ignored
    mu = rng.normal(0.0, 0.1, (len(labels), 4))
    mu[:, 2] += 3.0 * labels  # dimension 2 carries the attribute
    mu[labels == 0, 2] = 100.0  # unlabelled outliers must not shift the direction
    direction = attribute_direction(mu, labels, min_count=10)
    assert direction[2] == pytest.approx(6.0, abs=0.2)
    assert np.abs(direction[[0, 1, 3]]).max() < 0.2
    np.testing.assert_allclose(attribute_direction(mu, -labels), -direction)


def test_attribute_direction_with_a_held_label_leaves_out_what_goes_with_it():
    # Dimension 0 carries the attribute, dimension 1 a second label (gender, say) that most positives have.
    rng = np.random.default_rng(3)
    other = np.where(rng.random(4000) < 0.5, 1, -1)
    labels = np.where(rng.random(4000) < np.where(other > 0, 0.8, 0.2), 1, -1)
    mu = rng.normal(0.0, 0.1, (4000, 3)) + np.column_stack([labels > 0, other > 0, np.zeros(4000)])
    marginal = attribute_direction(mu, labels)
    assert marginal[1] == pytest.approx(0.6, abs=0.05)  # the second label's difference between the two sides
    held = attribute_direction(mu, labels, held=other[:, None])
    np.testing.assert_allclose(held, [1.0, 0.0, 0.0], atol=0.02)
    everyone_alike = attribute_direction(mu[other > 0], labels[other > 0], held=other[other > 0])  # a constant column
    np.testing.assert_allclose(everyone_alike, [1.0, 0.0, 0.0], atol=0.03)


def test_attribute_direction_reports_too_few_labelled_images():
    labels = np.array([1, 1, -1, -1, -1])
    with pytest.raises(ValueError, match="2 positive and 3 negative labelled images found, need at least 10"):
        attribute_direction(np.zeros((5, 3)), labels, min_count=10)
    with pytest.raises(ValueError, match="0 positive"):
        attribute_direction(np.zeros((2, 3)), np.array([-1, -1]))


def test_attribute_sweep_adds_and_removes_the_direction():
    z, direction = np.array([1.0, 1.0]), np.array([0.5, -1.0])
    swept = attribute_sweep(z, direction, [-2, 0, 1])
    np.testing.assert_allclose(swept, [[0.0, 3.0], [1.0, 1.0], [1.5, 0.0]])


def test_traversal_grid_moves_along_one_direction_per_row():
    z = np.array([0.5, -0.5, 2.0])
    directions = np.array([[2.0, 0.0, 0.0], [0.0, 0.6, 0.8]])
    values = np.linspace(-3, 3, 7)
    grid = traversal_grid(z, directions, values)
    assert grid.shape == (2, 7, 3)
    np.testing.assert_allclose(grid[0, :, 0], 0.5 + 2 * values)
    np.testing.assert_allclose(grid[0, :, 1:], np.tile(z[1:], (7, 1)))  # the others stay as in z
    np.testing.assert_allclose(grid[1, :, 1:], z[1:] + values[:, None] * [0.6, 0.8])
    np.testing.assert_allclose(grid[:, 3], [z, z])  # value 0: the starting face itself


def test_principal_directions_of_a_known_covariance():
    rotation = np.array([[0.6, -0.8, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]])  # columns: the axes
    covariance = rotation @ np.diag([4.0, 0.25, 1.0]) @ rotation.T
    units, deviations = principal_directions(covariance, 2)
    np.testing.assert_allclose(deviations, [2.0, 1.0])
    np.testing.assert_allclose(units, [[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]], atol=1e-12)  # largest component > 0


# --------------------------------------------------------------------------- the fitted density
def random_covariance(rng: np.random.Generator, dims: int) -> np.ndarray:
    factor = rng.standard_normal((dims, dims)) * 0.5
    return factor @ factor.T + 0.5 * np.eye(dims)


def test_one_gaussian_recovers_mean_and_covariance():
    rng = np.random.default_rng(0)
    mean, covariance = rng.standard_normal(4), random_covariance(rng, 4)
    points = rng.multivariate_normal(mean, covariance, size=40_000)
    density = fit_mixture(points, 1)
    assert density.components == 1
    np.testing.assert_allclose(density.mean(), mean, atol=0.03)
    np.testing.assert_allclose(density.covariance(), covariance, atol=0.06)
    # and its samples have those moments again
    samples = density.sample(40_000, np.random.default_rng(1))
    np.testing.assert_allclose(np.cov(samples, rowvar=False), covariance, atol=0.08)


def two_blobs(rng: np.random.Generator, count: int) -> tuple[np.ndarray, list]:
    """Points of a known 2-component mixture in 3 dimensions (weights 0.3 / 0.7)."""
    means = [np.array([-4.0, 0.0, 1.0]), np.array([3.0, 2.0, -1.0])]
    covariances = [random_covariance(rng, 3), random_covariance(rng, 3) * 0.5]
    labels = rng.random(count) < 0.3
    points = np.where(
        labels[:, None],
        rng.multivariate_normal(means[0], covariances[0], size=count),
        rng.multivariate_normal(means[1], covariances[1], size=count),
    )
    return points, [(0.3, means[0], covariances[0]), (0.7, means[1], covariances[1])]


def test_mixture_recovers_weights_means_and_covariances():
    points, truth = two_blobs(np.random.default_rng(2), 30_000)
    density = fit_mixture(points, 2, seed=0)
    order = np.argsort(density.means[:, 0])  # the component with the smaller x first, as in truth
    for index, (weight, mean, covariance) in zip(order, truth, strict=True):
        assert density.weights[index] == pytest.approx(weight, abs=0.01)
        np.testing.assert_allclose(density.means[index], mean, atol=0.05)
        chol = density.cholesky[index]
        np.testing.assert_allclose(chol @ chol.T, covariance, atol=0.08)


def test_k_is_chosen_by_heldout_likelihood():
    rng = np.random.default_rng(3)
    points, _ = two_blobs(rng, 6_000)
    heldout, _ = two_blobs(rng, 2_000)
    density = select_density(points, heldout, sizes=(1, 2, 4))
    selection = density.info["selection"]
    scores = selection["heldout_log_likelihood"]
    assert set(scores) == {"1", "2", "4"} and scores["2"] > scores["1"] + 0.2
    assert selection["chosen_components"] == density.components == int(max(scores, key=lambda k: scores[k])) == 2
    # a gaussian blob prefers no more than it needs: one component is within noise of the best
    blob = rng.standard_normal((4_000, 3))
    single = select_density(blob[:3000], blob[3000:], sizes=(1, 2))
    one, two = (single.info["selection"]["heldout_log_likelihood"][k] for k in ("1", "2"))
    assert abs(one - two) < 0.02


def test_choosing_k_stops_within_its_work_and_says_so():
    rng = np.random.default_rng(4)
    points, _ = two_blobs(rng, 6_000)
    heldout, _ = two_blobs(rng, 2_000)
    said = []
    unit = 6_000 * 3**2 * latent.EM_ITERATIONS  # of one component's EM on these points
    # Work for k = 2 but not for 4 as well: the choice is made from 1 and 2, whatever the machine's load.
    density = select_density(points, heldout, sizes=(1, 2, 4), work=5 * unit, progress=said.append)
    assert density.info["selection"]["heldout_log_likelihood"].keys() == {"1", "2"}
    assert said[-1] == "  k =  4 and more: not tried, beyond the work for choosing k"
    assert latent.sizes_within_work([1, 2, 4, 8], 6_000, 3, 0.0) == [1]
    assert latent.sizes_within_work([1, 2, 4, 8], 6_000, 3, 6 * unit) == [1, 2, 4]
    # The default: k up to 8 for a 128-dimensional latent space, also at the most points fitted.
    assert latent.sizes_within_work(latent.MIXTURE_SIZES, latent.MAX_FIT_IMAGES, 128) == [1, 2, 4, 8]
    # The estimate of a fit's time grows with the images and includes their encoding.
    assert latent.fit_seconds(1_000, 8, 0.0) > 0
    assert latent.fit_seconds(1_000, 8, 1.0) >= 1_000 and latent.fit_seconds(1, 8, 100.0) == 0.0


def test_sampling_is_seeded_and_temperature_scales_around_each_mean():
    points, _ = two_blobs(np.random.default_rng(4), 4_000)
    density = fit_mixture(points, 2)
    a = density.sample(50, np.random.default_rng(7))
    assert np.array_equal(a, density.sample(50, np.random.default_rng(7)))
    assert not np.allclose(a, density.sample(50, np.random.default_rng(8)))
    components, noise = density.draw(50, np.random.default_rng(7))
    np.testing.assert_allclose(density.latents(components, noise, 0.0), density.means[components])
    half = density.latents(components, noise, 0.5) - density.means[components]
    np.testing.assert_allclose(half * 2, a - density.means[components], atol=1e-12)
    # the prior is T * eps with eps straight from the generator
    prior = LatentDensity.standard_normal(6).sample(3, np.random.default_rng(5), 0.7)
    np.testing.assert_allclose(prior, 0.7 * np.random.default_rng(5).standard_normal((3, 6)))


def test_density_file_round_trip_and_fallback(tmp_path, capsys):
    points, _ = two_blobs(np.random.default_rng(5), 3_000)
    density = fit_mixture(points, 2)
    density.info["fitted_on"] = {"split": "train", "count": 3000}
    path = write_density(density, tmp_path)
    assert path == tmp_path / DENSITY_FILE
    again = read_density(path, latent_dim=3)
    np.testing.assert_allclose(again.means, density.means, rtol=1e-6)
    np.testing.assert_allclose(again.cholesky, density.cholesky, rtol=1e-6, atol=1e-12)
    assert again.info["fitted_on"] == {"split": "train", "count": 3000}
    z = points[:10]
    np.testing.assert_allclose(again.log_likelihood(z), density.log_likelihood(z), rtol=1e-5)
    sampler, label = choose_sampler("density", tmp_path, 3)
    assert label == "density" and sampler.components == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert find_density(empty) is None
    sampler, label = choose_sampler("density", empty, 3)
    assert label == "prior" and "not found, sampling the N(0, I) prior" in capsys.readouterr().err
    assert choose_sampler("prior", tmp_path, 3)[1] == "prior"


def test_density_file_weights_are_a_distribution_numpy_accepts(tmp_path):
    """An app samples a component with rng.choice(k, p=weights), which refuses weights whose sum
    is more than about 1e-8 off 1 (7-digit weights were 5e-8 off in the pretrained model's file)."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        weights = rng.dirichlet(np.ones(16))
        density = LatentDensity(weights, np.zeros((16, 2)), np.tile(np.eye(2), (16, 1, 1)))
        written = json.loads(write_density(density, tmp_path).read_text())["weights"]
        rng.choice(16, p=written)
        np.testing.assert_allclose(written, weights, rtol=1e-12)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format": "something-else"}, "is not a celeba-vae-latent-density/1 file"),
        ({"latent_dim": 5}, "says latent_dim 5 but its means have 3"),
        ({"means": [[0.0, 0.0]]}, "mismatched shapes"),
        ({"means": [[float("nan"), 0.0, 0.0]]}, "NaN or infinite"),
        ({"weights": [0.5]}, "do not sum to 1"),
        ({"cholesky": [[[1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0]]]}, "not positive definite"),
        ({"cholesky": [[[1.0, 0.5, 0], [0, 1.0, 0], [0, 0, 1.0]]]}, "not lower triangular"),
        ({"weights": "heavy"}, "lacks weights, means or cholesky arrays of numbers"),
    ],
)
def test_bad_density_files_are_refused_in_one_line(tmp_path, change, message):
    good = json.loads((write_density(LatentDensity.standard_normal(3), tmp_path)).read_text())
    (tmp_path / DENSITY_FILE).write_text(json.dumps({**good, **change}).replace("NaN", "NaN"))
    with pytest.raises(DensityError) as error:
        read_density(tmp_path / DENSITY_FILE)
    text = str(error.value)
    assert message in text and "\n" not in text and "python latent.py --run" in text


def test_mismatched_and_unreadable_density_files(tmp_path):
    write_density(LatentDensity.standard_normal(3), tmp_path)
    with pytest.raises(DensityError, match="is for latent size 3, this model has 8"):
        find_density(tmp_path, latent_dim=8)
    (tmp_path / DENSITY_FILE).write_text('{"format": ')
    with pytest.raises(DensityError, match="is not valid JSON"):
        read_density(tmp_path / DENSITY_FILE)


def test_fitting_and_sampling_need_no_tensorflow(tmp_path):
    script = (
        "import sys, numpy as np, latent\n"
        "points = np.random.default_rng(0).standard_normal((500, 4))\n"
        f"path = latent.write_density(latent.select_density(points[:400], points[400:], sizes=(1, 2)), {str(tmp_path)!r})\n"
        "latent.read_density(path, 4).sample(8, np.random.default_rng(0))\n"
        "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "LOADED []" in result.stdout


class CountingBackend:
    """A runs.Backend stand-in whose encoder projects the faces' pixels, counting the images encoded."""

    def __init__(self, latent_dim: int, run_dir):
        self.latent_dim, self.image_size, self.channels, self.crop, self.run_dir = latent_dim, 8, 3, 148, run_dir
        self.encoded = 0

    def encode(self, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.encoded += len(faces)
        flat = faces.reshape(len(faces), -1)
        mu = flat @ np.random.default_rng(0).standard_normal((flat.shape[1], self.latent_dim))
        return mu, np.zeros_like(mu)


def test_a_fit_that_cannot_be_done_is_refused_before_any_image_is_encoded(face_folder, tmp_path, monkeypatch):
    """Too few images for every mixture size tried, or more memory than there is: one line,
    said before encoding the images (which takes minutes on CelebA), not after."""
    dataset = data.find_dataset(face_folder)
    backend = CountingBackend(16, tmp_path)
    with pytest.raises(DensityError, match=r"images are too few for a mixture of 2 components in 16 dimensions: it "
                       r"needs at least 128 \(2 x 4 x 16\); use more images or add 1 to --components"):  # fmt: skip
        fit_folder_density(backend, dataset, ["train"], sizes=[2, 4], log=lambda _: None)
    monkeypatch.setattr(data, "available_memory", lambda: 100_000)
    with pytest.raises(DensityError, match=r"takes about .* of memory, but only 100 kB is available; use fewer"):
        fit_folder_density(CountingBackend(512, tmp_path), dataset, ["train"], log=lambda _: None)
    assert backend.encoded == 0
    monkeypatch.setattr(data, "available_memory", lambda: None)
    density = fit_folder_density(backend, dataset, ["train"], sizes=[1, 2], log=lambda _: None)
    assert density.latent_dim == 16 and backend.encoded > 0
    with pytest.raises(DensityError, match="images are too few"):  # also for direct callers of select_density
        select_density(np.zeros((10, 16)), np.zeros((2, 16)), sizes=[8])


def test_latent_py_refuses_a_folder_it_cannot_write_before_any_work(tmp_path, monkeypatch):
    def never(*_):
        raise AssertionError("the model was opened before the folder was checked")

    monkeypatch.setattr(runs, "open_backend", never)
    run = tmp_path / "run"
    (run / DENSITY_FILE).mkdir(parents=True)  # where the file goes, a folder
    with pytest.raises(UserError, match=f"{run / DENSITY_FILE} is a folder; give a file path"):
        latent.main(["--run", str(run), "--data", str(tmp_path)])
    (run / DENSITY_FILE).rmdir()
    real_access = os.access
    monkeypatch.setattr(runs.os, "access", lambda path, mode: Path(path) != run and real_access(path, mode))
    with pytest.raises(UserError, match=f"{run} is not writable .permission denied.; give another --run"):
        latent.main(["--run", str(run), "--data", str(tmp_path)])
