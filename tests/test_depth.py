"""The interpretable-depth study of the ResNet-20 hybrids (``coda.depth``)."""

import json

import pytest
import torch

from coda import build_model
from coda import depth as D
from coda.data import ImageDataset
from coda.inference import evaluate_accuracy
from coda.metrics import grids_from_logits


def toy_test(n: int = 40, seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return ImageDataset(images, torch.arange(n) % 10, tuple(f"class{i}" for i in range(10)))


def confident_logits(labels: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
    """Logits that rank the true class first with the given logit, every other class at -5."""
    logits = torch.full((len(labels), 10), -5.0)
    logits[torch.arange(len(labels)), labels] = confidence
    return logits


def test_shared_grids_take_only_images_every_model_gets_right():
    test = toy_test(60)
    a = confident_logits(test.labels, torch.linspace(1, 6, 60))
    b = a.clone()
    wrong = torch.arange(0, 60, 3)  # model b gets every third image wrong
    b[wrong, (test.labels[wrong] + 1) % 10] = 10.0
    grids = D.shared_grids([a, b], test, n_grids=3)
    used = set(grids.indices.flatten().tolist())
    assert used and not used & set(wrong.tolist())
    # One model: the same grids as its own.
    alone = D.shared_grids([a], test, n_grids=3)
    assert torch.equal(alone.indices, grids_from_logits(a, test, 3).indices)
    # The least confident model ranks the images.
    c = confident_logits(test.labels, torch.linspace(6, 1, 60))
    joint = D.shared_grids([a, c], test, n_grids=1)
    first = joint.indices[0].tolist()
    least = torch.minimum(a, c)[torch.arange(60), test.labels]
    for i in first:  # each cell: its class's image whose least confident model is most confident
        same_class = test.labels == test.labels[i]
        assert least[i] == least[same_class].max()
    with pytest.raises(ValueError, match="at least one model"):
        D.shared_grids([], test, 1)


def test_reference_layers_have_the_resolution_and_width_of_the_stage():
    pure = build_model("cifar10-9L-S", rank_factor=8, temperature=1000.0)
    x = torch.rand(1, 3, 32, 32)
    inputs = {}
    h = pure.encode(x)
    for i, layer in enumerate(pure.layers):
        inputs[i] = h.shape[1:]
        h = layer(h)
    for d, layer in D.REFERENCE_LAYER.items():
        hybrid = build_model("cifar10-hybrid", resnet_stages=d, rank_factor=8, temperature=1000.0)
        stage_out = hybrid.stem(hybrid.encode(x))
        assert stage_out.shape[1:] == inputs[layer], d
        assert len(hybrid.layers) == len(pure.layers) - layer
        wide = build_model("cifar10-hybrid", resnet_stages=d, resnet_width=4, rank_factor=8, temperature=1000.0)
        wide_out = wide.stem(wide.encode(x))  # the x4 study: the same resolution, four times the channels
        assert wide_out.shape[2:] == inputs[layer][1:] and wide_out.shape[1] == 4 * inputs[layer][0], d
        assert len(wide.layers) == len(pure.layers) - layer


def test_the_studies_name_distinct_models_results_and_budgets():
    x4, x1 = D.STUDIES["x4"], D.STUDIES["x1"]
    assert D.STUDY is x4 and D.RESULTS == x4.results != x1.results
    assert not set(x4.model_names()) & set(x1.model_names())
    assert x4.hybrid_name(2) == "cifar10-hybrid-d2-x4-f8-e12-T1000" and x1.hybrid_name(2) == "cifar10-hybrid-d2-f8-T1000"
    assert (x4.epochs, x1.epochs) == (12, 40) and (x4.width, x1.width) == (4, 1)
    assert D._resnet_label({"name": x4.conventional, "resnet_width": 4}) == "ResNet-20 x 4"
    assert D._resnet_label({"name": x1.conventional}) == "ResNet-20"  # rows written before the width was recorded


def test_evaluate_depth_rows_table_and_figure(monkeypatch, tmp_path):
    torch.manual_seed(0)
    models = {D.STUDY.pure: build_model("cifar10-9L-S", rank_factor=8, temperature=1000.0).eval(),
              D.STUDY.hybrid_name(1): build_model("cifar10-hybrid", resnet_stages=1, rank_factor=8,
                                            temperature=1000.0).eval(),
              D.STUDY.conventional: build_model("cifar10-resnet20").eval()}
    test = toy_test(20)
    grids = grids_from_logits(confident_logits(test.labels, torch.ones(20)), test, n_grids=2)
    rows = D.evaluate_depth(models, test, grids=grids)
    by_name = {r["name"]: r for r in rows}
    pure, hybrid, resnet = by_name[D.STUDY.pure], by_name[D.STUDY.hybrid_name(1)], by_name[D.STUDY.conventional]
    assert (pure["d"], hybrid["d"]) == (0, 1) and pure["explained_from"].startswith("the image")
    assert hybrid["explained_from"] == "layer 0's input (after ResNet-20 stage 1)"
    wide = build_model("cifar10-hybrid", resnet_stages=2, resnet_width=4, rank_factor=8, temperature=1000.0)
    assert D._explained_from(wide) == "layer 0's input (after ResNet-20 x 4 stages 1-2)"
    assert hybrid["reference_layer"] == 2 and 0 <= hybrid["reference_localisation_mean"] <= 1
    assert "reference_layer" not in pure
    assert resnet["localisation_mean"] is None and resnet["explained_from"].startswith("nothing")
    assert (pure["resnet_width"], hybrid["resnet_width"], resnet["resnet_width"]) == (1, 1, 1)
    for r in (pure, hybrid):
        assert r["n_grids"] == 2 and 0 <= r["localisation_mean"] <= 1 and 0 <= r["test_accuracy"] <= 1
    assert hybrid["parameters"] == sum(p.numel() for p in models[D.STUDY.hybrid_name(1)].parameters())
    for r in rows:  # accuracy from the one prediction pass equals the trainer's evaluation
        assert r["test_accuracy"] == pytest.approx(evaluate_accuracy(models[r["name"]], test)["accuracy"], abs=1e-9)

    table = D.markdown_table(rows)
    assert table.count("\n") == 1 + len(rows) and f"| 3 (all) | `{D.STUDY.conventional}` |" in table
    assert "layer 2: " in table
    fig = D.plot_depth(rows)
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="nothing to draw"):
        D.plot_depth([resnet])

    path = tmp_path / "depth.json"
    path.write_text(json.dumps({"rows": rows}))
    assert D.read_results(path)["rows"] == json.loads(json.dumps(rows))
    path.write_text("[]")
    with pytest.raises(ValueError, match="depth.json: expected a JSON object"):
        D.read_results(path)
    assert D.read_results(tmp_path / "missing.json") is None


def test_find_model_prefers_shipped_then_a_finished_run(tmp_path, monkeypatch):
    import coda.pretrained

    assert D.find_model(D.STUDY.pure, tmp_path) == D.STUDY.pure
    # as if no hybrid were shipped yet, whichever are by now
    monkeypatch.setattr(coda.pretrained, "list_pretrained", lambda: [D.STUDY.pure])
    name = D.STUDY.hybrid_name(3)
    assert D.find_model(name, tmp_path) is None
    (tmp_path / name).mkdir()
    torch.save({"epoch": D.STUDY.epochs - 1}, tmp_path / name / "last.pt")
    assert D.find_model(name, tmp_path) is None, "an unfinished run is not evaluated"
    torch.save({"epoch": D.STUDY.epochs}, tmp_path / name / "last.pt")
    assert D.find_model(name, tmp_path) == str(tmp_path / name / "last.pt")
    assert D.STUDY.model_names() == [D.STUDY.pure, *(D.STUDY.hybrid_name(d) for d in (1, 2, 3)), D.STUDY.conventional]


def _depth_rows():
    """Rows as evaluate_depth writes them: the pure model, two hybrids with references, the ResNet-20."""
    pure = {"name": D.STUDY.pure, "d": 0, "parameters": 2_034_960, "test_accuracy": 0.86, "explained_from": "the image",
            "localisation_mean": 0.63, "localisation_median": 0.64, "n_grids": 100}
    hybrids = [{"name": D.STUDY.hybrid_name(d), "d": d, "parameters": 1, "test_accuracy": acc, "explained_from": "layer 0",
                "localisation_mean": loc, "localisation_median": loc, "n_grids": 100,
                "reference_layer": D.REFERENCE_LAYER[d], "reference_localisation_mean": ref,
                "reference_localisation_median": ref} for d, acc, loc, ref in ((1, 0.87, 0.50, 0.60), (3, 0.88, 0.45, 0.40))]
    resnet = {"name": D.STUDY.conventional, "d": 3, "resnet_width": 4, "parameters": 270_154, "test_accuracy": 0.876,
              "explained_from": "nothing (no CoDA layer)", "localisation_mean": None, "localisation_median": None,
              "n_grids": 0}
    return [pure, *hybrids, resnet]


def test_plot_depth_calls_depth_zero_the_pure_model_not_a_hybrid():
    fig = D.plot_depth(_depth_rows())
    acc, loc = fig.axes
    for ax in (acc, loc):
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        assert ticks == [f"0\n{D.PURE_LABEL}", "1", "3"]
        assert ax.get_ylabel() and ax.get_xlabel()
        hybrid_line = next(line for line in ax.lines if line.get_label().startswith("hybrid"))
        assert 0 not in list(hybrid_line.get_xdata()), "d = 0 is not a hybrid"
    pure_line = next(line for line in acc.lines if line.get_label() == D.PURE_LABEL)
    assert list(pure_line.get_xdata()) == [0] and list(pure_line.get_ydata()) == [86.0]
    ref = next(line for line in loc.lines if "explained from layer" in line.get_label())
    assert list(ref.get_xdata()) == [0, 1, 3] and list(ref.get_ydata()) == [0.63, 0.60, 0.40]
    assert "layer 2/8" in ref.get_label()
    (legend,) = fig.legends  # one legend for both panels, below them
    texts = [t.get_text() for t in legend.get_texts()]
    assert D.PURE_LABEL in texts and len(texts) == len(set(texts)) == 5
    assert any(t.startswith("ResNet-20 x 4, no CoDA layer (87.6%)") for t in texts)  # the width from the name
    table = D.markdown_table(_depth_rows())
    assert f"| 0 ({D.PURE_LABEL}) |" in table and "| 1 |" in table


def test_reference_sentences_say_which_is_higher_from_the_numbers():
    worse, better = D.reference_sentences(_depth_rows())
    assert "1 ResNet-20 stage," in worse and "localises worse than" in worse and "layer 2 (0.600)" in worse
    assert "-0.100" in worse
    assert "3 ResNet-20 stages" in better and "localises better than" in better and "+0.050" in better
    assert D.reference_sentences(_depth_rows()[:1]) == []  # no hybrid, no sentence


@pytest.mark.parametrize("d", [1, 3])
def test_same_depth_maps_are_complete_at_the_hybrids_depth(d):
    torch.manual_seed(0)
    pure = build_model("cifar10-9L-S", rank_factor=1, temperature=1000.0).eval()
    hybrid = build_model("cifar10-hybrid", resnet_stages=d, rank_factor=1, temperature=1000.0).eval()
    images, targets = torch.rand(2, 3, 32, 32), torch.tensor([3, 7])
    maps = D.same_depth_maps(pure, hybrid, images, targets)
    side = 32 // 2 ** (d - 1)
    assert list(maps) == ["pure, layer 0 (pixels)", f"pure, layer {D.REFERENCE_LAYER[d]}", f"hybrid d = {d}, layer 0"]
    assert [tuple(m.shape) for m in maps.values()] == [(2, 32, 32), (2, side, side), (2, side, side)]
    with torch.no_grad():
        pure_logits, hybrid_logits = pure(images), hybrid(images)
    rows = torch.arange(2)
    for title, m in maps.items():  # each map sums to its model's logit minus b0
        logits, bias = (hybrid_logits, hybrid.logit_bias) if title.startswith("hybrid") else (pure_logits, pure.logit_bias)
        torch.testing.assert_close(m.sum((1, 2)), logits[rows, targets] - bias, rtol=1e-4, atol=1e-4)
    fig = D.plot_same_depth_maps(maps, images, targets, [f"class{i}" for i in range(10)])
    assert len(fig.axes) == 2 * 4 + 2  # four panels and one colour bar per image
    assert fig.axes[0].get_title() == "class3"
    with pytest.raises(ValueError, match="expected a pure 9L-S and a hybrid"):
        D.same_depth_maps(hybrid, hybrid, images, targets)


def test_the_shipped_study_models_have_its_stages_width_and_budget():
    import coda.pretrained

    manifest = coda.pretrained.read_manifest()["models"]
    names = [n for n in D.STUDY.model_names() if n in manifest]
    if not names:
        pytest.skip("the depth study's models are not shipped here")
    for name in names:
        entry, model = manifest[name], coda.pretrained.load_pretrained(name)
        config = model.config
        if name == D.STUDY.conventional:
            assert not len(model.layers) and (config.resnet_stages, config.resnet_width) == (3, D.STUDY.width)
            assert entry["test_images"] == 10_000 and entry["test_accuracy"] >= 0.90  # what the study asks of it
            continue
        d = int(name.split("-d")[1][0]) if name != D.STUDY.pure else 0
        assert name == (D.STUDY.pure if d == 0 else D.STUDY.hybrid_name(d))
        assert config.resnet_stages == d and (config.rank_factor, config.temperature) == (8, 1000.0)
        assert config.resnet_width == (D.STUDY.width if d else 1)
        assert entry["epochs"] == D.STUDY.epochs and entry["test_images"] == 10_000
        if d:
            assert entry["train_config"]["embedding_from"] == D.STUDY.conventional
