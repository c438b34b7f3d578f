"""Nearest class centre search: same answer as a float64 brute force, near-ties included."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import eqmcli.analysis.nearest as nearest_module
from eqmcli.analysis.nearest import exact_nearest, float32_error_bound, nearest_centers_cosine
from eqmcli.bench.nearest_search import benchmark_nearest_centers
from eqmcli.errors import UserError


def _dense_float64(centers: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The full C x C float64 cosine matrix, self excluded: (best cosine, first argmax)."""
    w = centers.double().numpy()
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    dense = w @ w.T
    np.fill_diagonal(dense, -np.inf)
    return dense.max(axis=1), dense.argmax(axis=1)


def _near_ties(groups: int, ties: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Groups of one hub and `ties` spokes all at the same float64 cosine to the hub.

    Rounded to float32, the spokes' cosines to the hub differ by ~1e-8: far below what a
    float32 product resolves (~1e-6 at these sizes), so only the float64 re-check can
    order them.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(groups):
        basis, _ = np.linalg.qr(rng.normal(size=(dim, ties + 1)))
        hub = basis[:, 0]
        rows.append(hub)
        rows.extend(hub + 0.3 * basis[:, k] for k in range(1, ties + 1))
    return torch.from_numpy(np.stack(rows).astype(np.float32))


@pytest.mark.parametrize(("classes", "dim", "block"), [(300, 512, 64), (257, 16, None),
                                                       (57, 5, 7), (29, 3, 1), (2, 4, None)])
def test_random_centres_match_float64_brute_force(classes, dim, block):
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(classes))
    cos, nearest = nearest_centers_cosine(centers, block)
    ref_cos, ref_nearest = _dense_float64(centers)
    np.testing.assert_array_equal(nearest, ref_nearest)
    np.testing.assert_allclose(cos, ref_cos, rtol=0, atol=1e-12)


@pytest.mark.parametrize("block", [1, 5, 16, None])
def test_near_ties_below_float32_resolution_match_float64(block):
    centers = _near_ties(groups=12, ties=5, dim=32)
    hubs = np.arange(0, centers.shape[0], 6)
    ref_cos, ref_nearest = _dense_float64(centers)
    spokes = centers[hubs[0] + 1 : hubs[0] + 6].double().numpy()
    hub = centers[hubs[0]].double().numpy()
    gaps = np.ptp(spokes @ hub / np.linalg.norm(spokes, axis=1) / np.linalg.norm(hub))
    assert 0 < gaps < float32_error_bound(32), "the spokes must be a near-tie for float32"
    cos, nearest = nearest_centers_cosine(centers, block)
    np.testing.assert_array_equal(nearest, ref_nearest)
    np.testing.assert_allclose(cos, ref_cos, rtol=0, atol=1e-12)


def test_crowded_classes_fall_back_to_the_exact_scan(monkeypatch):
    monkeypatch.setattr(nearest_module, "MAX_CANDIDATES", 2)
    centers = _near_ties(groups=6, ties=5, dim=16, seed=3)
    _, ref_nearest = _dense_float64(centers)
    _, nearest = nearest_centers_cosine(centers, 8)
    np.testing.assert_array_equal(nearest, ref_nearest)


def test_equal_centres_pick_another_class_at_angle_zero():
    cos, nearest = nearest_centers_cosine(torch.ones(40, 8), 7)
    assert np.allclose(cos, 1.0) and (nearest != np.arange(40)).all()
    assert ((nearest >= 0) & (nearest < 40)).all()


def test_exact_nearest_matches_dense_on_a_subset_of_rows(monkeypatch):
    monkeypatch.setattr(nearest_module, "EXACT_ROWS", 7)
    monkeypatch.setattr(nearest_module, "EXACT_COLUMNS", 11)
    centers = torch.randn(50, 6, generator=torch.Generator().manual_seed(1))
    ref_cos, ref_nearest = _dense_float64(centers)
    rows = np.array([0, 3, 49, 12])
    cos, nearest = exact_nearest(centers, rows)
    np.testing.assert_array_equal(nearest, ref_nearest[rows])
    np.testing.assert_allclose(cos, ref_cos[rows], atol=1e-12)


def test_float32_error_bound_holds_for_unit_vectors():
    w = torch.randn(600, 512, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = torch.nn.functional.normalize(w, dim=1)
    error = (w.float() @ w.float().T).double() - w @ w.T
    assert error.abs().max() < float32_error_bound(512)


def test_single_class_and_non_finite_centres():
    cos, nearest = nearest_centers_cosine(torch.ones(1, 4))
    assert np.isnan(cos[0]) and nearest[0] == -1
    bad = torch.randn(5, 4)
    bad[2, 1] = float("nan")
    with pytest.raises(UserError, match="NaN or infinite"):
        nearest_centers_cosine(bad)


def test_bench_analysis_agrees_with_the_exact_search():
    result = benchmark_nearest_centers(700, 32, check=True, block=128)
    assert result.mismatches == 0 and result.seconds > 0 and result.exact_seconds > 0
    assert result.block == 128 and result.to_dict()["benchmark"] == "analysis"


def test_cli_bench_analysis_writes_json(tmp_path, eqm):

    out = tmp_path / "bench.json"
    result = eqm("bench", "analysis", "--classes", "300", "--dim", "16", "--check",
                 "--json", str(out))
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["classes"] == 300 and payload["mismatches"] == 0
    assert "plain float64" in result.output


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_search_matches_float64_brute_force():
    centers = torch.cat([_near_ties(groups=8, ties=5, dim=64), torch.randn(500, 64)])
    _, ref_nearest = _dense_float64(centers)
    _, nearest = nearest_centers_cosine(centers, 128, device="cuda")
    np.testing.assert_array_equal(nearest, ref_nearest)
