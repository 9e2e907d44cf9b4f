"""The benchmark scripts run (at toy sizes) and their bookkeeping is right; no timing is asserted."""

import pytest

pytest.importorskip("benchmarks.bench_layers")

from benchmarks import bench_layers  # noqa: E402


def test_profile_groups_add_up_to_the_step():
    spec = bench_layers.Spec("cifar10-tiny", "factorised", "fp32", batch=2, image_size=16, steps=1, warmup=1,
                             threads=1)
    rows = bench_layers.profile_step(spec)
    assert [r["group"] for r in rows[:-1]] == [label for label, _ in bench_layers.OP_GROUPS]
    assert rows[-1]["group"].startswith("everything else (largest: ")
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert all(r["seconds"] >= 0 for r in rows)
    convolutions = sum(r["seconds"] for r in rows[:2])
    assert convolutions > 0  # the factorised layer runs on convolutions


def test_ratios_pair_each_factorised_result_with_its_materialised_one():
    results = [{"mode": "factorised", "dtype": "fp32", "batch": 4, "images_per_s": 30.0, "peak_mb": 100.0},
               {"mode": "materialised", "dtype": "fp32", "batch": 4, "images_per_s": 3.0, "peak_mb": 400.0},
               {"mode": "factorised", "dtype": "bf16", "batch": 4, "images_per_s": 50.0, "peak_mb": 80.0}]
    ratios = bench_layers.add_ratios(results)
    assert ratios == [{"dtype": "fp32", "batch": 4, "speed_up": 10.0, "memory_fraction": 0.25}]
    table = bench_layers.markdown(results, ratios)
    assert "| fp32 | 4 | 10.00x | 0.25 |" in table
