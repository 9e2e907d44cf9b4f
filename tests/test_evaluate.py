"""The quantitative interpretability metrics (coda.metrics) and the evaluation command line (coda.evaluate).

Known answers come from constructed cases: explainers that are perfect or uniform by
construction, and a CoDA-Net whose dynamic weights are constant (A = B = 0), which makes it
exactly linear, so its removal curve follows in closed form from its contributions.
"""

import csv
import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import coda
from coda.checkpoint import load_checkpoint, load_data, save_checkpoint
from coda.data import PROJECT_ROOT
from coda.evaluate import (
    PUBLISHED,
    convert_task_files,
    main,
    markdown_table,
    paired_difference,
    paired_grid_scores,
    read_results,
    task_path,
    write_tables,
)
from coda.explainers import EXPLAINERS, explain
from coda.hardware import cpu_info
from coda.metrics import (
    Grids,
    cell_sums,
    grids_from_indices,
    grids_from_logits,
    localisation_scores,
    make_grids,
    pixel_removal,
    removal_masks,
    removal_points,
    sample_grid_indices,
    tile,
)
from coda.models import CoDANet, CoDANetConfig
from coda.pretrained import load_model


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(1)
    return coda.build_model("cifar10-tiny")


def linear_codanet(weights: torch.Tensor, temperature: float = 1.0, logit_bias: float = -2.0) -> CoDANet:
    """A one-layer 1x1 CoDA-Net with constant dynamic weights: logit_c = sum_hw g(b_c)^T a / T + b0.

    ``weights`` (K, 6) are the b_c over the encoded channels [x, 1 - x]; A = B = 0.
    """
    k = weights.shape[0]
    config = CoDANetConfig(channels=(k,), kernel_sizes=(1,), strides=(1,), rank_multipliers=(1,), rank_factor=1,
                           temperature=temperature, logit_bias=logit_bias)
    model = CoDANet(config)
    layer = model.layers[0]
    with torch.no_grad():
        layer.A.zero_()
        layer.B.zero_()
        layer.b.copy_(weights.reshape(k, 6, 1, 1))
    return model.eval()


# ----- localisation -----------------------------------------------------------------------------


def coded_grids(grid_size: int, n: int = 2, cell: int = 8) -> Grids:
    """Grids whose cell of class c is filled with the value (c + 1) / 20."""
    gen = torch.Generator().manual_seed(0)
    classes = torch.stack([torch.randperm(10, generator=gen)[: grid_size**2] for _ in range(n)])
    cells = ((classes + 1) / 20)[..., None, None, None].expand(-1, -1, 3, cell, cell)
    return Grids(tile(cells, grid_size), classes, grid_size)


def perfect(model, images, targets):
    """Attribution exactly on the pixels of the target's cell."""
    return (images == ((targets + 1) / 20)[:, None, None, None]).float()


def uniform(model, images, targets):
    return torch.ones_like(images)


@pytest.mark.parametrize("grid_size", [2, 3])
def test_perfect_explainer_scores_one_and_uniform_scores_chance(tiny, grid_size):
    grids = coded_grids(grid_size)
    assert grids.images.shape == (2, 3, 8 * grid_size, 8 * grid_size)
    best = localisation_scores(tiny, grids, perfect)
    assert best.scores.shape == (2, grid_size**2)
    assert torch.equal(best.scores, torch.ones(2, grid_size**2)) and best.mean == 1.0 and best.median == 1.0
    chance = localisation_scores(tiny, grids, uniform)
    torch.testing.assert_close(chance.scores, torch.full((2, grid_size**2), 1 / grid_size**2))


def test_only_positive_attribution_counts_and_none_scores_zero(tiny):
    grids = coded_grids(3, n=1)

    def inside_positive_outside_negative(model, images, targets):
        return 2 * perfect(model, images, targets) - 1

    assert torch.equal(localisation_scores(tiny, grids, inside_positive_outside_negative).scores, torch.ones(1, 9))

    def nothing_positive(model, images, targets):
        return -torch.ones_like(images)

    assert torch.equal(localisation_scores(tiny, grids, nothing_positive).scores, torch.zeros(1, 9))


def test_tile_and_cell_sums_agree():
    images = torch.arange(9.0)[:, None, None, None].expand(9, 2, 4, 5)  # image k is constant k
    grid = tile(images, 3)
    assert grid.shape == (2, 12, 15)
    assert grid[0, 4, 10].item() == 5  # row 1, column 2 -> cell 5
    torch.testing.assert_close(cell_sums(grid[:1], 3), (torch.arange(9.0) * 20)[None])


def confident_logits(labels: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
    """Logits that predict ``labels`` with the given true-class logit (others at -10)."""
    logits = torch.full((len(labels), 10), -10.0)
    logits[torch.arange(len(labels)), labels] = confidence
    return logits


def test_grid_sampling_follows_the_protocol():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 10
    logits = confident_logits(labels, torch.rand(200, generator=gen) * 4 - 1)  # some sigmoid < 0.5
    logits[::7, 0] = 50.0  # a few wrong predictions, very confident: must never be used
    idx = sample_grid_indices(logits, labels, n_grids=1000, grid_size=3, seed=0)
    assert idx.shape[1] == 9 and 0 < len(idx) < 1000  # stops when a class runs out
    assert (labels[idx].sort(1).values.diff(dim=1) > 0).all(), "distinct classes in each grid"
    assert (logits[idx.flatten()].argmax(1) == labels[idx.flatten()]).all()
    assert (torch.sigmoid(logits[idx.flatten(), labels[idx.flatten()]]) > 0.5).all()
    assert len(set(idx.flatten().tolist())) == idx.numel(), "each image used once"
    for c in range(10):  # each class's images in decreasing confidence
        conf = logits[idx[labels[idx] == c], c]
        assert (conf.diff() <= 0).all()
    # it stopped because some class had no confident image left
    used = torch.bincount(labels[idx.flatten()], minlength=10)
    available = torch.tensor([((labels == c) & (logits.argmax(1) == c) & (logits[:, c] > 0)).sum() for c in range(10)])
    assert (used == available).any()
    assert torch.equal(idx, sample_grid_indices(logits, labels, 1000, 3, seed=0))
    assert not torch.equal(idx, sample_grid_indices(logits, labels, 1000, 3, seed=1))


def test_grids_from_logits_tiles_the_chosen_images_and_warns_when_short():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(10)  # one image per class: after one 2x2 grid, four classes are used up
    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8, generator=gen)
    data = coda.data.ImageDataset(images, labels, coda.data.CIFAR10_CLASSES)
    with pytest.warns(UserWarning, match="only 1 of 5 grids"):
        grids = grids_from_logits(confident_logits(labels, torch.ones(10)), data, n_grids=5, grid_size=2, seed=0)
    assert len(grids) == 1 and grids.exhausted and grids.images.shape == (1, 3, 8, 8)
    assert torch.equal(grids.classes, labels[grids.indices])
    cells = [grids.images[0, :, :4, :4], grids.images[0, :, :4, 4:], grids.images[0, :, 4:, :4], grids.images[0, :, 4:, 4:]]
    for k, cell in enumerate(cells):  # row-major cells
        assert torch.equal(cell, images[grids.indices[0, k]])


def test_grid_bad_arguments(tiny):
    logits, labels = confident_logits(torch.arange(10), torch.ones(10)), torch.arange(10)
    for kwargs, message in [({"grid_size": 1}, "grid_size must be an int >= 2"),
                            ({"n_grids": 0}, "n_grids must be an int >= 1"),
                            ({"grid_size": 4}, "needs 16 distinct classes")]:
        with pytest.raises(ValueError, match=message):
            sample_grid_indices(logits, labels, **{"n_grids": 1, "grid_size": 3, **kwargs})
    with pytest.raises(ValueError, match="unknown explainer"):
        localisation_scores(tiny, coded_grids(2), "nonsense")
    with pytest.raises(ValueError, match="classes must have shape"):
        Grids(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, dtype=torch.long), 2)


def test_localisation_with_a_real_explainer(tiny):
    grids = coded_grids(2, n=1)
    result = localisation_scores(tiny, grids, "coda")
    assert result.scores.shape == (1, 4) and ((result.scores >= 0) & (result.scores <= 1)).all()
    assert result.seconds > 0 and result.n_attributions == 4


def test_evaluation_logged_to_a_file_draws_no_bar(tiny, capsys, monkeypatch):
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)  # stderr is pytest's capture: not a terminal
    localisation_scores(tiny, coded_grids(2, n=2), "coda", progress=True)
    test = coda.data.load_cifar10("test", download=False).first(2)
    pixel_removal(tiny, test.images, test.labels, "grad", batch_size=1, eval_batch_size=100, progress=True)
    assert capsys.readouterr().err == "", "a log file gets no carriage-return bars"


def test_evaluation_in_a_jupyter_kernel_draws_its_bars(tiny, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    localisation_scores(tiny, coded_grids(2, n=2), "coda", progress=True)
    assert "localisation coda" in capsys.readouterr().err  # the bar (plain tqdm outside a real kernel)
    localisation_scores(tiny, coded_grids(2, n=2), "coda", progress=False)
    assert capsys.readouterr().err == "", "progress=False draws nothing anywhere"


# ----- pixel removal -----------------------------------------------------------------------------


def test_removal_points():
    points = removal_points(32 * 32)
    assert len(points) == 129 and points[0] == 0 and points[-1] == 256 and (points.diff() == 2).all()
    with pytest.raises(ValueError, match="fraction"):
        removal_points(1024, fraction=0)
    with pytest.raises(ValueError, match="stride"):
        removal_points(1024, stride=0)


def test_removal_masks_remove_in_order():
    importance = torch.tensor([[[3.0, 1.0], [2.0, 0.0]]])
    least = removal_masks(importance, torch.tensor([0, 1, 2, 4]), "least")
    assert least[0].int().tolist() == [[[1, 1], [1, 1]], [[1, 1], [1, 0]], [[1, 0], [1, 0]], [[0, 0], [0, 0]]]
    most = removal_masks(importance, torch.tensor([1, 2]), "most")
    assert most[0].int().tolist() == [[[0, 1], [1, 1]], [[0, 1], [0, 1]]]
    with pytest.raises(ValueError, match="order must be one of"):
        removal_masks(importance, torch.tensor([1]), "random")


@pytest.mark.parametrize("order", ["least", "most"])
def test_removal_curve_of_a_linear_model(order):
    """For a linear model, removing a pixel subtracts exactly its contribution from the logit."""
    gen = torch.Generator().manual_seed(0)
    model = linear_codanet(torch.rand(4, 6, generator=gen), temperature=40.0)
    images, labels = torch.rand(3, 3, 8, 8, generator=gen), torch.tensor([0, 2, 3])
    result = pixel_removal(model, images, labels, "coda", fraction=0.5, stride=3, order=order)
    assert result.n_removed.tolist() == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
    per_pixel = explain(model, images, labels, "coda").sum(1).flatten(1).double()  # (3, 64)
    ordered = per_pixel.sort(1, descending=order == "most").values
    removed = torch.cat([torch.zeros(3, 1, dtype=torch.float64), ordered.cumsum(1)], 1)[:, result.n_removed]
    logit = model(images).gather(1, labels[:, None]).double()
    expected = torch.sigmoid(logit - removed)
    torch.testing.assert_close(result.probabilities.double(), expected, rtol=1e-5, atol=1e-6)
    # nonnegative weights and inputs: every contribution is >= 0, so the curve can only fall
    assert (result.probabilities.diff(dim=1) <= 1e-6).all()
    assert result.mean == pytest.approx(result.curve.mean().item())


def test_least_first_stays_above_most_first_for_a_linear_model():
    gen = torch.Generator().manual_seed(1)
    model = linear_codanet(torch.randn(4, 6, generator=gen), temperature=20.0)
    images, labels = torch.rand(4, 3, 8, 8, generator=gen), torch.tensor([0, 1, 2, 3])
    least = pixel_removal(model, images, labels, "coda", order="least")
    most = pixel_removal(model, images, labels, "coda", order="most")
    assert (least.probabilities >= most.probabilities - 1e-6).all()
    assert least.mean > most.mean


@pytest.mark.skipif(not (coda.data.data_dir() / "cifar10" / "test.npz").exists(),
                    reason="CIFAR-10 cache not found (set CODA_DATA to a folder with cifar10/)")
def test_removal_on_cifar_starts_at_the_model_probability(tiny):
    test = coda.data.load_cifar10("test", download=False).first(3)
    result = pixel_removal(tiny, test.images, test.labels, "grad", eval_batch_size=100)
    assert result.probabilities.shape == (3, 129) and result.n_pixels == 1024
    start = torch.sigmoid(tiny(coda.data.to_float(test.images))).gather(1, test.labels[:, None]).squeeze(1)
    torch.testing.assert_close(result.probabilities[:, 0], start)
    assert result.fraction_removed[-1].item() == 0.25


# ----- command line and reference data ----------------------------------------------------------


COLOURS = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])


@pytest.fixture
def colour_world(tmp_path):
    """Four classes of 8x8 images of one colour each, and a linear CoDA-Net that tells them apart.

    g(b_c)^T [x, 1 - x] counts the channels where the pixel matches colour c, so each image's
    own class wins by a margin; logit_bias = 0 makes every correct prediction "confident".
    """
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 4
    images = (COLOURS[labels] * 0.9 + 0.05 + 0.04 * torch.rand(40, 3, generator=gen))
    images = (images[:, :, None, None].expand(-1, -1, 8, 8) * 255).round().to(torch.uint8)
    folder = tmp_path / "data" / "cifar10"
    folder.mkdir(parents=True)
    np.savez(folder / "test.npz", images=images.permute(0, 2, 3, 1).numpy(), labels=labels.numpy(),
             classes=np.array(["k", "yellow", "magenta", "cyan"]))
    model = linear_codanet(torch.cat([COLOURS, 1 - COLOURS], 1), temperature=16.0, logit_bias=0.0)
    ckpt = tmp_path / "run" / "last.pt"
    save_checkpoint({"model_config": model.config.to_dict(), "model": model.state_dict()}, ckpt)
    return tmp_path, model, coda.data.load_cifar10("test", tmp_path / "data", download=False)


def test_make_grids_with_a_model(colour_world):
    _, model, data = colour_world
    grids = make_grids(model, data, n_grids=3, grid_size=2, seed=0)
    assert len(grids) == 3 and not grids.exhausted and grids.images.shape == (3, 3, 16, 16)
    assert torch.equal(grids.classes.sort(1).values, torch.arange(4).expand(3, -1))


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_command_line_writes_the_results(colour_world):
    root, model, _ = colour_world
    out = root / "results"
    argv = ["--model", str(root / "run" / "last.pt"), "--data", str(root / "data"), "--methods", "coda,grad",
            "--grid-size", "2", "--n-grids", "3", "--n-removal", "5", "--orders", "least,most", "--out", str(out)]
    main(argv)
    summary = read_csv(out / "localisation.csv")
    assert [r["method"] for r in summary] == ["coda", "grad"] and all(r["n"] == "12" for r in summary)
    scores = read_csv(out / "localisation_scores.csv")
    assert len(scores) == 2 * 3 * 4
    coda_mean = np.mean([float(r["score"]) for r in scores if r["method"] == "coda"])
    assert coda_mean == pytest.approx(float(summary[0]["mean"]), rel=1e-5)
    removal = read_csv(out / "removal.csv")
    assert len(removal) == 2 * 2 * len(removal_points(64))
    assert {(r["method"], r["order"]) for r in removal} == {(m, o) for m in ("coda", "grad") for o in ("least", "most")}
    timing = read_csv(out / "timing.csv")
    assert len(timing) == 2 * 3 and all(float(r["seconds_per_attribution"]) > 0 for r in timing)
    record = json.loads((out / "results.json").read_text())
    assert set(record["results"]) == {f"{m}/{t}" for m in ("coda", "grad")
                                      for t in ("localisation", "removal-least", "removal-most")}
    coda_loc = record["results"]["coda/localisation"]
    assert coda_loc["command"].startswith("python -m coda.evaluate --model ")
    assert coda_loc["settings"]["seed"] == 0 and coda_loc["versions"]["captum"]
    assert coda_loc["summary"]["n_grids"] == 3 and coda_loc["summary"]["mean"] == pytest.approx(float(summary[0]["mean"]))
    assert record["model"]["source"] == "checkpoint" and record["test_accuracy"]["accuracy"] == 1.0


def test_command_line_resumes_and_mixes_sizes(colour_world, capsys):
    """Stored (method, task) results are reused; a later call adds a method at its own sizes."""
    root, _, _ = colour_world
    out = root / "results"
    base = ["--model", str(root / "run" / "last.pt"), "--data", str(root / "data"), "--grid-size", "2",
            "--out", str(out)]
    main([*base, "--methods", "coda", "--n-grids", "4", "--n-removal", "6"])
    stamp = task_path(out, "coda", "localisation").stat().st_mtime_ns
    capsys.readouterr()
    main([*base, "--methods", "coda,ixg", "--n-grids", "4", "--n-removal", "6", "--tasks", "localisation"])
    assert "coda localisation: already in" in capsys.readouterr().out
    assert task_path(out, "coda", "localisation").stat().st_mtime_ns == stamp
    main([*base, "--methods", "grad", "--n-grids", "2", "--n-removal", "3"])
    summary = {r["method"]: r for r in read_csv(out / "localisation.csv")}
    assert list(summary) == ["coda", "grad", "ixg"]
    assert (summary["coda"]["n_grids"], summary["grad"]["n_grids"], summary["ixg"]["n_grids"]) == ("4", "2", "4")
    scores = read_csv(out / "localisation_scores.csv")
    first = {(r["grid"], r["cell"]): r["image_index"] for r in scores if r["method"] == "coda" and int(r["grid"]) < 2}
    assert first == {(r["grid"], r["cell"]): r["image_index"] for r in scores if r["method"] == "grad"}
    removal = read_csv(out / "removal.csv")
    assert {(r["method"], r["n_images"]) for r in removal} == {("coda", "6"), ("grad", "3")}
    main([*base, "--methods", "coda", "--n-grids", "3", "--n-removal", "6", "--tasks", "localisation"])
    assert {r["method"]: r["n_grids"] for r in read_csv(out / "localisation.csv")}["coda"] == "3"
    results = read_results(out)
    assert list(results["localisation"]) == ["coda", "grad", "ixg"] and results["scores"]["coda"].shape == (3 * 4,)
    assert results["scores"]["coda"].mean() == pytest.approx(results["localisation"]["coda"]["mean"], rel=1e-5)
    curve = results["removal"]["grad"]
    assert curve["n_images"] == 3 and curve["fractions"][0] == 0 and curve["curve"].mean() == pytest.approx(curve["mean"])
    assert results["removal_most"] == {} and read_results(root / "nowhere") is None
    # The README table from the stored results: one row per method, best localisation first.
    capsys.readouterr()
    main(["--model", str(root / "run" / "last.pt"), "--out", str(out), "--table"])
    table = capsys.readouterr().out
    assert table == markdown_table(out)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`" in line]
    means = {m: results["localisation"][m]["mean"] for m in ("coda", "grad", "ixg")}
    assert [r.split("`")[1] for r in rows] == ["coda"] + sorted(["grad", "ixg"], key=lambda m: -means[m])
    grad_row = next(r for r in rows if "`grad`" in r).split(" | ")
    assert grad_row[1] == f"{means['grad']:.3f} ({results['localisation']['grad']['median']:.3f})"
    assert grad_row[2] == "2" and grad_row[4] == f"{PUBLISHED['localisation_mean']['grad']:.3f}"
    # Ours on the same 2 grids (the first 2 x 4 scores), and on the same 3 removal images.
    assert grad_row[3] == f"{results['scores']['coda'][:8].mean():.3f}"
    assert grad_row[5] == f"{curve['mean']:.3f}" and grad_row[6] == "3"
    ours_first3 = load_data(task_path(out, "coda", "removal-least"))["result"]["probabilities"][:3]
    assert grad_row[7] == f"{ours_first3.mean():.3f}"
    ixg_row = next(r for r in rows if "`ixg`" in r).split(" | ")
    assert ixg_row[5] == ixg_row[7] == "-"  # no removal run for ixg
    assert "Better than Ours on the same grids (localisation): " in table
    assert "Occlusion was computed" not in table  # no occlusion run
    with pytest.raises(ValueError, match="no results"):
        markdown_table(root / "nowhere")
    # Which code computed each method is recorded: occlusion of this pure CoDA-Net by coda.occlusion.
    main([*base, "--methods", "occ5", "--n-grids", "2", "--tasks", "localisation"])
    implementations = {(r["method"], r["task"]): r["implementation"] for r in read_csv(out / "timing.csv")}
    assert implementations[("coda", "localisation")] == "coda" and implementations[("grad", "removal-least")] == "captum"
    assert implementations[("occ5", "localisation")] == "coda.occlusion"
    assert "Occlusion was computed and timed with coda.occlusion, which recomputes" in markdown_table(out)
    # A folder committed without its tasks/ still pairs the localisation, through its CSV.
    bare = root / "bare"
    shutil.copytree(out, bare, ignore=shutil.ignore_patterns("tasks"))
    with_tasks, without = markdown_table(out).splitlines(), markdown_table(bare).splitlines()
    for row, bare_row in zip(with_tasks, without, strict=True):
        if "`" in row and row.startswith("| "):
            cells, bare_cells = row.split(" | "), bare_row.split(" | ")
            assert bare_cells[:5] == cells[:5]  # localisation and Ours on the same grids
            assert bare_cells[7] == "-" or "`coda`" in row or cells[7] == "-"  # removal: no per-image record
    assert "not paired with Ours: Grad" in markdown_table(bare)
    # Every timing names the CPU it ran on; a ratio to Ours is starred unless both name the same one.
    timing_rows = read_csv(out / "timing.csv")
    assert {r["cpu"] for r in timing_rows} == {cpu_info().describe()}
    grad_line = next(r for r in markdown_table(out).splitlines() if "`grad`" in r)
    assert not grad_line.endswith("* |") and "may compare two machines" not in markdown_table(out)

    def rewrite_timing(field: str, value: str) -> list[str]:
        for row in timing_rows:
            if row["method"] == "grad":
                row[field] = value
        with open(out / "timing.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(timing_rows[0]))
            writer.writeheader()
            writer.writerows(timing_rows)
        return next(r for r in markdown_table(out).splitlines() if "`grad`" in r).split(" | ")

    for other in ("Another CPU (AVX2, no native bf16)", ""):  # another CPU, or a record naming none
        grad_row = rewrite_timing("cpu", other)
        assert grad_row[10].endswith(" * |") and "may compare two machines" in markdown_table(out)
    # A method timed on a GPU has no CPU seconds to compare: the device is named instead.
    grad_row = rewrite_timing("device", "cuda")
    assert grad_row[9:] == ["- (ran on cuda)", "- |"]


class Tampered:
    """Unpickling this creates ``marker``: what a tampered result file could do instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def small_run(root, out, methods="coda"):
    main(["--model", str(root / "run" / "last.pt"), "--data", str(root / "data"), "--methods", methods,
          "--grid-size", "2", "--n-grids", "2", "--n-removal", "3", "--out", str(out)])


def test_task_files_are_data_that_load_without_unpickling(colour_world, tmp_path):
    root, _, _ = colour_world
    out = root / "results"
    small_run(root, out)
    files = sorted(p.name for p in (out / "tasks").iterdir())
    assert files == ["coda.localisation.npz", "coda.removal-least.npz"]
    with np.load(out / "tasks" / files[0], allow_pickle=False) as f:  # plain arrays and one JSON text
        assert json.loads(str(f["__json__"]))["settings"]["method"] == "coda"
    marker = tmp_path / "code-ran"
    import pickle

    for name in ("grad.localisation.npz", "grad.localisation.pt"):  # a tampered file in either format
        (out / "tasks" / name).write_bytes(pickle.dumps({"settings": Tampered(marker)}))
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            markdown_table(out)
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            small_run(root, out, methods="coda")  # the table writer names the file
        assert not marker.exists()
        (out / "tasks" / name).unlink()


@pytest.mark.parametrize("damage", ["random", "truncated", "empty", "not-a-task"])
def test_unreadable_task_file_is_named_or_recomputed(colour_world, damage, capsys):
    root, _, _ = colour_world
    out = root / "results"
    small_run(root, out, methods="coda,grad")
    path = task_path(out, "grad", "localisation")
    good = path.read_bytes()
    if damage == "random":
        path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)))
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        np.savez(path, __json__=np.array(json.dumps({"settings": {"task": "localisation"}})))
    with pytest.raises(ValueError, match=str(path)):
        write_tables(out)
    with pytest.raises(ValueError, match=str(path)):
        small_run(root, out, methods="coda")  # another method's run: the tables name the bad file
    capsys.readouterr()
    small_run(root, out, methods="grad")  # its own method and task: computed again
    assert (f"{path}: unreadable, computed again" in capsys.readouterr().out) == (damage != "not-a-task")
    assert load_data(path)["settings"]["method"] == "grad"


def test_old_pickled_task_files_convert_once(colour_world):
    """The committed results were converted with convert_task_files; it reads with weights_only=True."""
    from torch.torch_version import TorchVersion

    root, _, _ = colour_world
    out = root / "results"
    small_run(root, out)
    before = markdown_table(out)
    for path in sorted((out / "tasks").glob("*.npz")):  # the old format: torch.save of the same dict
        t = load_data(path)
        t["versions"]["torch"] = TorchVersion(t["versions"]["torch"])
        torch.save(t, path.with_suffix(".pt"))
        path.unlink()
    with pytest.raises(ValueError, match="old pickled format.*convert_task_files"):
        markdown_table(out)
    assert len(convert_task_files(out)) == 2 and not list((out / "tasks").glob("*.pt"))
    assert markdown_table(out) == before


def test_committed_results_are_data_files():
    folder = PROJECT_ROOT / "results" / "cifar10-9L-S-f8-T1000"
    if not (folder / "tasks").exists():
        pytest.skip("no committed results")
    assert not list(folder.glob("tasks/*.pt")) and list(folder.glob("tasks/*.npz"))
    assert "| Ours (`coda`) |" in markdown_table(folder)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n-removal", "0"], "--n-removal must be >= 1, got 0"),
        (["--n-removal", "-9998"], "--n-removal must be >= 1, got -9998"),
        (["--n-grids", "0"], "--n-grids must be >= 1"),
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--lime-samples", "-1"], "--lime-samples must be >= 1"),
        (["--stride", "0"], "--stride must be >= 1"),
        (["--grid-pool", "0"], "--grid-pool must be >= 1"),
        (["--grid-size", "1"], "--grid-size must be >= 2"),
        (["--fraction", "nan"], r"--fraction must be in \(0, 1\], got nan"),
        (["--fraction", "1.5"], r"--fraction must be in \(0, 1\]"),
    ],
)
def test_command_line_rejects_bad_sizes_before_loading_anything(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "no-such-model", *args])  # the model would fail to load: the sizes are checked first
    assert exit_info.value.code == 2 and re.search(message, capsys.readouterr().err)


def test_pixel_removal_rejects_a_zero_batch_size(tiny):
    for kwargs in ({"batch_size": 0}, {"eval_batch_size": 0}):
        with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
            pixel_removal(tiny, torch.rand(2, 3, 8, 8), torch.tensor([0, 1]), "grad", **kwargs)


def test_command_line_rejects_bad_tasks(colour_world):
    root, _, _ = colour_world
    with pytest.raises(SystemExit):
        main(["--model", str(root / "run" / "last.pt"), "--tasks", "pointing"])


def test_load_model_rejects_other_files(tmp_path):
    path = tmp_path / "weights.pt"
    save_checkpoint({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a coda.train checkpoint"):
        load_model(str(path))
    with pytest.raises(ValueError, match="not found"):
        load_model(str(tmp_path / "missing.pt"))


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_load_model_names_the_commit_that_holds_the_checkpoint(colour_world):
    root, _, _ = colour_world
    ckpt = root / "run" / "last.pt"

    def git(*args):
        return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    assert load_model(str(ckpt))[1]["git_commit"] is None  # not in a repository
    git("init", "-q")
    assert load_model(str(ckpt))[1]["git_commit"] is None  # untracked
    git("add", "run/last.pt")
    git("commit", "-q", "-m", "state one")
    first = git("rev-parse", "HEAD")
    (root / "other.txt").write_text("a later commit that leaves the checkpoint alone")
    git("add", "other.txt")
    git("commit", "-q", "-m", "other")
    _, info = load_model(str(ckpt))
    assert info["git_commit"] == first != git("rev-parse", "HEAD") and info["path"] == str(ckpt)
    state = load_checkpoint(ckpt)
    state["epoch"] = 1
    save_checkpoint(state, ckpt)  # trained on since: no commit holds these bytes
    assert load_model(str(ckpt))[1]["git_commit"] is None
    git("commit", "-q", "-am", "state two")
    assert load_model(str(ckpt))[1]["git_commit"] == git("rev-parse", "HEAD")


def test_load_model_records_paths_inside_the_project_relative_to_it():
    from coda.pretrained import _shown_path

    assert _shown_path(PROJECT_ROOT / "data" / "training" / "x.pt") == "data/training/x.pt"
    assert _shown_path(Path("/elsewhere/x.pt")) == "/elsewhere/x.pt"


def test_published_numbers_are_keyed_by_explainer_names():
    for table in ("localisation_mean", "localisation_median", "removal_mean", "removal_at_25_percent"):
        assert set(PUBLISHED[table]) <= set(EXPLAINERS)
        assert all(0 < v < 1 for v in PUBLISHED[table].values())
    assert PUBLISHED["localisation_mean"]["coda"] == 0.912 and PUBLISHED["removal_mean"]["coda"] == 0.964


def _imported_by(statement: str) -> set[str]:
    """The modules a fresh interpreter has imported after ``statement`` (the package's own and a few others)."""
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT)
    return set(out.stdout.split())


def test_layers_and_metrics_import_no_trainer():
    # torch itself imports tqdm (torch.hub), so the trainer's progress bars are checked as tqdm.auto
    layers = _imported_by("import coda.dau, coda.layers")
    assert not layers & {"coda.train", "coda.pretrained", "coda.evaluate", "coda.metrics", "coda.data",
                         "tqdm.auto", "matplotlib"}
    metrics = _imported_by("import coda.metrics")
    assert not metrics & {"coda.train", "coda.pretrained", "coda.evaluate", "coda.sweeps", "matplotlib"}
    evaluation = _imported_by("import coda.evaluate")  # the registry loads models; the trainer only exports
    assert "coda.pretrained" in evaluation and not evaluation & {"coda.train", "coda.sweeps", "matplotlib"}


def test_evaluate_keeps_the_metrics_and_load_model_importable():
    import coda.evaluate
    import coda.metrics
    import coda.pretrained

    for name in ("Clock", "Grids", "make_grids", "grids_from_logits", "localisation_scores", "pixel_removal", "ORDERS"):
        assert getattr(coda.evaluate, name) is getattr(coda.metrics, name)
    assert coda.evaluate.load_model is coda.pretrained.load_model


# ----- which model a stored result belongs to; the authors' models by name ----------------------------


def test_results_of_the_float32_file_stay_the_results_of_the_float16_model(capsys):
    """The shipped weights were re-stored in float16: results keyed by the SHA-256 of the float32 file
    (the manifest's ``previous_file``) are still that model's, and other keys are not."""
    from coda.evaluate import read_tasks

    folder = PROJECT_ROOT / "results" / "cifar10-9L-S-f8-T1000"
    entry = coda.pretrained.read_manifest()["models"].get("cifar10-9L-S-f8-T1000")
    if not (folder / "tasks").exists() or entry is None or "previous_file" not in entry:
        pytest.skip("no committed results of a re-stored model")
    old, new = entry["previous_file"]["sha256"], entry["sha256"]
    stored = read_tasks(folder, old)
    assert len(stored) == len(list(folder.glob("tasks/*.npz"))) and {t["settings"]["model"] for t in stored} == {old}
    assert [t["settings"] for t in read_tasks(folder, new)] == [t["settings"] for t in stored]
    capsys.readouterr()
    assert read_tasks(folder, "0" * 64) == [] and "a different model" in capsys.readouterr().out


def test_a_result_of_the_previous_file_is_reused_and_tabled(colour_world, monkeypatch, capsys):
    """A stored result keyed by a model's previous file (float32, before a float16 re-save) is not recomputed."""
    from coda.checkpoint import save_data, sha256

    root, _, _ = colour_world
    out = root / "results"
    small_run(root, out)
    current = sha256(root / "run" / "last.pt")
    for path in out.glob("tasks/*.npz"):  # as if computed from the file before the re-save
        t = load_data(path)
        t["settings"]["model"] = "f" * 64
        save_data(t, path)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("tasks/*.npz")}
    manifest = {"format": 1, "default": None, "retired": {},
                "models": {"m": {"file": "m.pt", "model_config": {}, "sha256": current,
                                 "previous_file": {"sha256": "f" * 64}}}}
    monkeypatch.setattr(coda.pretrained, "read_manifest", lambda root=None: manifest)
    capsys.readouterr()
    small_run(root, out)
    printed = capsys.readouterr().out
    assert printed.count("already in") == 2 and "a different model" not in printed
    assert {p: p.stat().st_mtime_ns for p in out.glob("tasks/*.npz")} == stamps
    assert [r["method"] for r in read_csv(out / "localisation.csv")] == ["coda"]
    manifest["models"]["m"]["previous_file"]["sha256"] = "e" * 64  # no longer the same model: computed again
    small_run(root, out)
    assert "a different model" not in capsys.readouterr().out
    assert all(load_data(p)["settings"]["model"] == current for p in out.glob("tasks/*.npz"))


def test_load_model_takes_the_authors_published_names(tmp_path, monkeypatch):
    """A published name loads through coda.load_published (here from a file:// URL, no network)."""
    import coda.published as pub
    from coda.checkpoint import sha256
    from coda.evaluate import load_model
    from coda.reference import to_reference_state_dict

    spec = pub.PublishedModel("cifar10-tiny-T100", "cifar10-tiny", 100.0, "no-such-share", "CIFAR-10", 1)
    monkeypatch.setitem(pub.PUBLISHED, spec.name, spec)
    monkeypatch.setattr(pub, "default_cache_dir", lambda: tmp_path / "cache")
    torch.manual_seed(0)
    reference = coda.build_model("cifar10-tiny", temperature=100.0).eval()
    torch.save(to_reference_state_dict(reference), tmp_path / "model_epoch_1.pkl")
    pub.load_published(spec.name, url=(tmp_path / "model_epoch_1.pkl").as_uri(), progress=False)  # first use
    model, info = load_model(spec.name)
    assert info["name"] == spec.name and info["source"] == "coda.published" and not model.training
    assert info["sha256"] == sha256(tmp_path / "cache" / f"{spec.name}.pt") and info["model_config"]["temperature"] == 100.0
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_a_later_call_scores_the_stored_grids_even_where_its_logits_rank_otherwise(colour_world, monkeypatch, capsys):
    """Another device's logits reorder near-ties; the stored grids keep every method on the same ones."""
    import coda.evaluate as evaluate

    root, _, _ = colour_world
    base = ["--model", str(root / "run" / "last.pt"), "--data", str(root / "data"), "--grid-size", "2",
            "--tasks", "localisation"]
    main([*base, "--out", str(root / "a"), "--methods", "coda", "--n-grids", "4"])
    drawn = load_data(task_path(root / "a", "coda", "localisation"))["grids"]["indices"]

    real_predict = evaluate.predict

    def other_device(model, images, *args, **kwargs):  # the same decisions, the confidence ranking reversed
        logits = real_predict(model, images, *args, **kwargs)
        return logits + 1e-3 * torch.arange(len(logits), dtype=logits.dtype)[:, None]

    monkeypatch.setattr(evaluate, "predict", other_device)
    main([*base, "--out", str(root / "b"), "--methods", "coda", "--n-grids", "4"])
    fresh = load_data(task_path(root / "b", "coda", "localisation"))["grids"]["indices"]
    assert not torch.equal(fresh, drawn), "the perturbed logits must draw other grids, or this test proves nothing"
    capsys.readouterr()
    main([*base, "--out", str(root / "a"), "--methods", "grad", "--n-grids", "3"])
    assert "grids: the first 3 of the 4 stored in coda.localisation.npz" in capsys.readouterr().out
    assert torch.equal(load_data(task_path(root / "a", "grad", "localisation"))["grids"]["indices"], drawn[:3])
    # More grids than stored: drawn afresh from this call's logits.
    main([*base, "--out", str(root / "a"), "--methods", "ixg", "--n-grids", "5"])
    assert not torch.equal(load_data(task_path(root / "a", "ixg", "localisation"))["grids"]["indices"][:4], drawn)


def test_grids_from_indices_checks_its_indices(colour_world):
    _, _, data = colour_world
    grids = grids_from_indices(data, torch.tensor([[0, 1, 2, 3]]), 2)
    assert grids.images.shape == (1, 3, 16, 16) and grids.classes.tolist() == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match=r"expected grid indices \(n, 4\)"):
        grids_from_indices(data, torch.tensor([[0, 1, 2]]), 2)
    with pytest.raises(ValueError, match="grid indices in"):
        grids_from_indices(data, torch.tensor([[0, 1, 2, 40]]), 2)


def test_paired_difference_of_per_grid_scores():
    ours = np.array([0.5, 0.6, 0.7, 0.8])
    same = paired_difference(ours + 0.1, ours)  # higher everywhere by the same amount: no doubt left
    assert same["mean"] == pytest.approx(0.1) and same["low"] == pytest.approx(0.1) and same["high"] == pytest.approx(0.1)
    assert (same["higher"], same["lower"], same["n"]) == (4, 0, 4)
    mixed = paired_difference(np.array([0.6, 0.5, 0.9, 0.7]), ours)  # +0.1, -0.1, +0.2, -0.1
    assert mixed["mean"] == pytest.approx(0.025) and mixed["low"] < 0 < mixed["high"]
    assert (mixed["higher"], mixed["lower"]) == (2, 2)
    assert paired_difference(ours, ours, seed=1) == paired_difference(ours, ours, seed=1)
    with pytest.raises(ValueError, match="equally long"):
        paired_difference(np.array([]), np.array([]))


def test_paired_grid_scores_pair_the_same_cells_only(tmp_path):
    rows = ["method,grid,cell,class,image_index,score"]
    for grid in range(3):  # Ours on 3 grids of 2 cells; "good" on the first 2, "other" on different images
        for cell in range(2):
            rows.append(f"coda,{grid},{cell},{cell},{10 * grid + cell},{0.5 + 0.1 * grid}")
            if grid < 2:
                rows.append(f"good,{grid},{cell},{cell},{10 * grid + cell},{0.9}")
                rows.append(f"other,{grid},{cell},{cell},{999},{0.9}")
    (tmp_path / "localisation_scores.csv").write_text("\n".join(rows) + "\n")
    paired = paired_grid_scores(tmp_path)
    assert set(paired) == {"coda", "good"}
    scores, ours = paired["good"]
    assert scores.tolist() == pytest.approx([0.9, 0.9]) and ours.tolist() == pytest.approx([0.5, 0.6])
    assert paired_grid_scores(tmp_path / "nowhere") == {}
