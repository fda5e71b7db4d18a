"""experiments/numeric_deviation.py + launch/deviation.py (Golden et al. 2024; spec model-variants §8.1): the tiny
preset writes rows whose 1-ULP yardstick is > 0 and finite, and the difference statistics against numpy."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import numeric_deviation
from launch import configs, deviation


def test_one_ulp_and_parameter_difference():
    x = {"a": jnp.asarray([1.0, -2.0, 0.0], jnp.float32), "b": jnp.asarray([[3.0]], jnp.float32)}
    moved = deviation.one_ulp(x)
    expected = np.nextafter(np.float32([1.0, -2.0, 0.0]), np.float32(np.inf))
    np.testing.assert_array_equal(np.asarray(moved["a"]), expected)
    rng = np.random.default_rng(0)
    a = {"w": rng.normal(size=(4, 3)), "v": rng.normal(size=5)}
    b = {"w": a["w"] + rng.normal(size=(4, 3)) * 0.1, "v": a["v"][::-1].copy()}  # a permutation: W1 = 0
    got = deviation.parameter_difference(b, a)
    diffs = np.concatenate([(b["v"] - a["v"]).ravel(), (b["w"] - a["w"]).ravel()])
    assert got["rms"] == pytest.approx(np.sqrt(np.mean(diffs**2)), rel=1e-12)
    assert got["max"] == pytest.approx(np.abs(diffs).max(), rel=1e-12)
    w1_w = np.mean(np.abs(np.sort(b["w"].ravel()) - np.sort(a["w"].ravel())))
    assert got["wasserstein"] == pytest.approx((0.0 + w1_w) / 2, abs=1e-15)


def test_tiny_preset_writes_rows_with_a_positive_ulp_yardstick(tmp_path):
    cfg = configs.apply_overrides(numeric_deviation.get_config("tiny"), {"train.steps": 10})
    rows = deviation.run(cfg, numeric_deviation.get_arms("tiny"), tmp_path)
    on_disk = [json.loads(line) for line in (tmp_path / "deviation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in on_disk] == [5, 10] and on_disk == json.loads(json.dumps(rows))
    for r in on_disk:
        assert 0 < r["ulp_rms"] < 1e-5 and np.isfinite(r["ulp_max"]) and r["ulp_wasserstein"] >= 0
        assert np.isfinite(r["variant_rms"]) and r["variant_over_ulp"] == pytest.approx(r["variant_rms"] / r["ulp_rms"])
    assert json.loads((tmp_path / "deviation.json").read_text())["variant"] == {"model.dtype": "bfloat16"}
