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


def test_flops_of_the_papers_model():
    """The factorised 9L-S: the dominant C_out r d term alone is 0.861 G multiply-adds per
    32 x 32 image (summed by hand over the nine layers); the other terms add about 28%."""
    import coda
    from benchmarks.flops import coda_layer_macs, forward_flops, training_flops

    model = coda.build_model("cifar10-9L-S")
    dominant = sum(pos * layer.out_channels * layer.rank * layer.patch_size
                   for pos, layer in zip([1024, 1024, 256, 256, 256, 64, 64, 64, 64], model.layers, strict=True))
    assert dominant == 861_405_184  # 28.3 M + 3 x 75.5 M + 4 x 151.0 M + 2.6 M
    flops = forward_flops(model)
    assert 2 * dominant < flops < 1.35 * 2 * dominant
    assert training_flops(model) == 3 * flops
    assert coda_layer_macs(patch_size=4, rank=2, out_channels=3, weight_bias=False) == 8 + 24 + 6 + 12 + 6
    assert forward_flops(coda.build_model("cifar10-9L-S", rank_factor=8)) < flops / 3


def test_bench_training_quick_prints_the_machine_and_fractions(capsys, tmp_path):
    import json

    from benchmarks import bench_training

    bench_training.main(["--quick", "--steps", "1", "--json", str(tmp_path / "b.json")])
    out = capsys.readouterr().out
    assert out.startswith("CPU: ") and "matmul rate measured in this run" in out
    assert "precision 'auto' here: " in out and "GFLOP/s" in out
    record = json.loads((tmp_path / "b.json").read_text())
    row = record["rows"][0]
    assert row["fraction_of_matmul"] == pytest.approx(row["gflops"] / record["machine"]["matmul_gflops"]["fp32"])
    assert row["gflops"] == pytest.approx(row["images_per_s"] * row["gflop_per_image"])


def test_layer_rates_use_the_matmul_rate_of_the_same_dtype():
    machine = {"matmul_gflops": {"fp32": 100.0}}
    rows = bench_layers.add_rates([{"dtype": "fp32", "images_per_s": 10.0}, {"dtype": "bf16", "images_per_s": 20.0}],
                                  2e9, machine)
    assert [(r["gflops"], r["fraction_of_matmul"], r["matmul_reference"]) for r in rows] == [
        (20.0, 0.2, "fp32"), (40.0, 0.4, "fp32")]  # no native bf16 rate: compared with float32's


def test_bench_contraction_restores_the_current_form(capsys):
    import coda.dau as D
    from benchmarks import bench_contraction

    current = D._Contraction.apply
    bench_contraction.main(["--rank-factor", "4", "--batch", "2", "--rounds", "1", "--steps", "1", "--threads", "1"])
    assert D._Contraction.apply == current
    assert "current / earlier (best): " in capsys.readouterr().out


def test_occlusion_benchmark_writes_its_table(tmp_path):
    from benchmarks import bench_occlusion

    out = tmp_path / "occlusion.md"
    bench_occlusion.main(["--arch", "cifar10-tiny", "--size", "16", "--patches", "5,3", "--out", str(out)])
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| Occ")]
    assert [(r[0], r[1]) for r in rows] == [("| Occ5", "49"), ("| Occ3", "64")]  # windows: (ceil((16-p)/2)+1)^2
    assert all(float(r[-1].rstrip(" |")) < 1e-4 for r in rows)  # the same maps, to float32 rounding
