"""The latent math of generate.py on plain numpy arrays (no model, no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest

from generate import (
    attribute_direction,
    attribute_sweep,
    latent_path,
    lerp,
    most_active_dims,
    normalized_weights,
    reparameterize,
    slerp,
    traversal_grid,
    weighted_posterior,
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


def test_traversal_grid_sets_one_dimension_per_row():
    z = np.array([0.5, -0.5, 2.0])
    values = np.linspace(-3, 3, 7)
    grid = traversal_grid(z, [0, 2], values)
    assert grid.shape == (2, 7, 3)
    np.testing.assert_allclose(grid[0, :, 0], values)
    np.testing.assert_allclose(grid[1, :, 2], values)
    np.testing.assert_allclose(grid[0, :, 1:], np.tile(z[1:], (7, 1)))  # the others stay as in z
    np.testing.assert_allclose(grid[1, :, :2], np.tile(z[:2], (7, 1)))


def test_most_active_dims_ranks_by_variance_of_mu():
    rng = np.random.default_rng(3)
    mu = rng.standard_normal((200, 5)) * np.array([0.01, 2.0, 0.5, 0.01, 1.0])
    assert most_active_dims(mu, 3) == [1, 4, 2]
