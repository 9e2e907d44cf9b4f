"""Sweep bookkeeping: run definitions, the shared centre run, status and resumption."""

import dataclasses
import json
import os

import pytest
import torch

from coda import build_model, contributions
from coda.data import ImageDataset
from coda.sweeps import (
    RANK_FACTORS,
    STEM_DEPTHS,
    SWEEP_BUDGET,
    TEMPERATURES,
    all_runs,
    run_name,
    run_status,
    sweep_runs,
    train_sweeps,
)


def test_every_sweep_shares_the_budget_and_names_end_in_temperature():
    for sweep in ("temperature", "rank", "depth"):
        for name, cfg in sweep_runs(sweep).items():
            for key, value in SWEEP_BUDGET.items():
                assert getattr(cfg, key) == value, (name, key)
            temperature = build_model(cfg.model, **cfg.model_overrides).temperature
            assert name.endswith(f"-T{temperature:g}")


def test_sweeps_cover_the_requested_values():
    temps = [cfg.model_overrides["temperature"] for cfg in sweep_runs("temperature").values()]
    assert temps == [float(t) for t in TEMPERATURES] and {10, 100, 1000, 5000} <= set(TEMPERATURES)
    ranks = [cfg.model_overrides["rank_factor"] for cfg in sweep_runs("rank").values()]
    assert ranks == list(RANK_FACTORS) == [4, 8, 16, 32]
    depth = sweep_runs("depth")
    stems = [cfg.model_overrides.get("stem_depth", 0) for cfg in depth.values() if cfg.model != "cifar10-cnn"]
    assert stems == list(STEM_DEPTHS)
    assert run_name(cnn=True) in depth


def test_centre_run_is_shared_once():
    centre = run_name(rank_factor=8, temperature=1000)
    runs = all_runs()
    assert all(centre in sweep_runs(s) for s in ("temperature", "rank", "depth"))
    assert list(runs).count(centre) == 1
    assert len(runs) == len(TEMPERATURES) + len(RANK_FACTORS) + len(STEM_DEPTHS) + 1 - 2


def test_unknown_sweep_rejected():
    with pytest.raises(ValueError, match="unknown sweep"):
        sweep_runs("width")


def test_hybrid_runs_explain_from_first_coda_layer():
    cfg = sweep_runs("depth")[run_name(stem_depth=3)]
    model = build_model(cfg.model, **cfg.model_overrides).eval()
    assert len(model.stem) == 3 and len(model.layers) == 6
    x = torch.rand(2, 3, 32, 32)
    contribs = contributions(model, x, 1, layer=0)
    assert contribs.shape == (2, 32, 16, 16)  # the stem's output, not the image
    torch.testing.assert_close(contribs.sum((1, 2, 3)), model(x)[:, 1] - model.logit_bias, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="stem"):
        contributions(model, x, 1)


def test_cnn_baseline_has_no_coda_layer():
    model = build_model("cifar10-cnn")
    assert len(model.layers) == 0 and len(model.stem) == 9
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def _tiny_data(n):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return ImageDataset(images, torch.arange(n) % 10, tuple("abcdefghij"))


def test_status_and_training_skip_finished_runs(tmp_path, monkeypatch):
    tiny = dict(model="cifar10-tiny", model_overrides={}, epochs=1, batch_size=8, precision="fp32")
    runs = {"sweep-tiny-T100": dataclasses.replace(sweep_runs("rank")[run_name(rank_factor=4)], **tiny)}
    monkeypatch.setattr("coda.sweeps.all_runs", lambda sweeps: runs)
    monkeypatch.setattr("coda.sweeps.load_cifar10", lambda split, root=None: _tiny_data(16), raising=False)
    calls = []

    def fake_train(cfg, out, **kw):
        calls.append(out.name)
        from coda.train import train as real_train

        return real_train(cfg, out, train_data=_tiny_data(16), test_data=_tiny_data(8), progress=False)

    monkeypatch.setattr("coda.sweeps.train", fake_train)
    name, cfg = next(iter(runs.items()))
    assert run_status(name, cfg, tmp_path)["epochs_done"] == 0
    train_sweeps(["rank"], tmp_path)
    status = run_status(name, cfg, tmp_path)
    assert status["finished"] and status["epochs_done"] == 1 and status["test_accuracy"] is not None
    train_sweeps(["rank"], tmp_path)  # finished: not trained again
    assert calls == [name]
    other = dataclasses.replace(cfg, lr=cfg.lr / 2)
    with pytest.raises(ValueError, match="another config"):
        run_status(name, other, tmp_path)
    monkeypatch.setattr("coda.pretrained.list_pretrained", lambda: [name])
    train_sweeps(["rank"], tmp_path / "fresh")  # shipped: not trained on a fresh machine either
    assert calls == [name] and not (tmp_path / "fresh").exists()
    monkeypatch.setattr("coda.pretrained.list_pretrained", lambda: [])
    monkeypatch.setattr("coda.pretrained.list_retired", lambda: [name])
    train_sweeps(["rank"], tmp_path / "fresh")  # retired (weights in the history): not retrained
    assert calls == [name] and not (tmp_path / "fresh").exists()
    assert run_status(name, cfg, tmp_path / "fresh")["retired"]


def test_a_run_locked_by_a_live_process_is_skipped_and_a_stale_lock_taken_over(tmp_path, monkeypatch):
    import subprocess

    from coda.checkpoint import LOCK
    from coda.sweeps import lock_holder

    tiny = dict(model="cifar10-tiny", model_overrides={}, epochs=1, batch_size=8, precision="fp32")
    cfg = dataclasses.replace(sweep_runs("rank")[run_name(rank_factor=4)], **tiny)
    monkeypatch.setattr("coda.sweeps.all_runs", lambda sweeps: {"sweep-tiny-T100": cfg})
    calls = []

    def fake_train(cfg, out, **kw):
        calls.append(lock_holder(out))  # the lock is held while training
        from coda.train import train as real_train

        return real_train(cfg, out, train_data=_tiny_data(16), test_data=_tiny_data(8), progress=False)

    monkeypatch.setattr("coda.sweeps.train", fake_train)
    folder = tmp_path / "sweep-tiny-T100"
    folder.mkdir()
    (folder / LOCK).write_text(str(os.getppid()))  # a live process (pytest's parent) trains it
    train_sweeps(["rank"], tmp_path)
    assert calls == [] and lock_holder(folder) == os.getppid()
    gone = subprocess.Popen(["true"])
    gone.wait()
    (folder / LOCK).write_text(str(gone.pid))  # its process died: the lock is stale
    assert lock_holder(folder) is None
    train_sweeps(["rank"], tmp_path)
    assert calls == [os.getpid()] and not (folder / LOCK).exists()  # trained, lock released
    assert run_status("sweep-tiny-T100", cfg, tmp_path)["finished"]


def test_layer_explainer_scores_the_layer_contributions():
    from coda.evaluate import Grids, localisation_scores
    from coda.sweeps import layer_explainer

    model = build_model("cifar10-tiny").eval()
    x = torch.rand(2, 3, 32, 32)
    attributions = layer_explainer(2)(model, x, torch.tensor([1, 4]))
    torch.testing.assert_close(attributions, contributions(model, x, torch.tensor([1, 4]), layer=2))
    # One 2x2 grid of 32x32 images: deeper maps are coarser but still score per cell.
    grid = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    grids = Grids(images=grid, classes=torch.tensor([[0, 1, 2, 3]]), indices=torch.zeros(1, 4, dtype=torch.long),
                  grid_size=2)
    result = localisation_scores(model, grids, layer_explainer(3))
    assert result.scores.shape == (1, 4) and (result.scores >= 0).all() and (result.scores <= 1).all()


def _confident_grids(model, data, n_grids, seed):
    """Grids as if the model classified every image confidently (an untrained one does not)."""
    from coda.evaluate import grids_from_logits

    logits = 10 * torch.nn.functional.one_hot(data.labels, 10).float() - 5
    return grids_from_logits(logits, data, n_grids, 3, seed)


def test_evaluate_model_on_pure_hybrid_and_cnn(monkeypatch):
    from coda.sweeps import evaluate_model

    monkeypatch.setattr("coda.sweeps.make_grids", _confident_grids)
    test = _tiny_data(20)
    for name, overrides, explained in [("cifar10-tiny", {}, "input"), ("cifar10-tiny", {"stem_depth": 2}, "layer 0"),
                                       ("cifar10-cnn", {}, "nothing")]:
        row = evaluate_model(build_model(name, **overrides).eval(), test, n_grids=2, n_removal=4)
        assert 0 <= row["test_accuracy"] <= 1 and row["explained_from"].startswith(explained)
        if explained == "nothing":  # no CoDA layer: accuracy only
            assert row["n_grids"] == 0 and row["localisation_mean"] is None
        else:
            assert row["n_grids"] == 2 and 0 <= row["localisation_mean"] <= 1
        assert row["n_removal"] == (4 if explained == "input" else 0)
        assert (row["removal_mean"] is None) == (explained != "input")


def _row(name, model="cifar10-9L-S", temperature=1000.0, rank_factor=8, stem_depth=0, localisation=0.5):
    return {"name": name, "sweeps": "", "model": model, "temperature": temperature, "rank_factor": rank_factor,
            "stem_depth": stem_depth, "epochs": SWEEP_BUDGET["epochs"], "source": "runs/x", "parameters": 1,
            "test_accuracy": 0.5, "explained_from": "input", "localisation_mean": localisation,
            "localisation_median": localisation, "n_grids": 0 if localisation is None else 10,
            "removal_mean": None if stem_depth else 0.8, "n_removal": 0 if stem_depth else 8}


def test_read_sweep_results_round_trips_the_written_tables(tmp_path):
    from coda.sweeps import _write_rows, read_sweep_results

    assert read_sweep_results(tmp_path) is None
    rows = [_row(run_name(temperature=1000)), _row(run_name(cnn=True), "cifar10-cnn", 64.0, 8, 9, None)]
    _write_rows(rows, tmp_path / "sweeps", "python -m coda.sweeps evaluate", {"budget": SWEEP_BUDGET, "n_grids": 10,
                                                                               "n_removal": 8})
    assert (tmp_path / "sweeps.csv").read_text().splitlines()[2].count(",,") >= 1  # None -> empty cell
    got = read_sweep_results(tmp_path)
    assert got["rows"] == rows and got["budget"] == SWEEP_BUDGET and got["n_grids"] == 10
    assert got["rows"][1]["localisation_mean"] is None and got["rows"][1]["removal_mean"] is None
    assert got["layers"] == [] and got["layers_model"] is None  # no layers.json yet
    layers = [{"layer": None, "localisation_mean": 0.7, "localisation_median": 0.8, "n_grids": 10}]
    _write_rows(layers, tmp_path / "layers", "python -m coda.sweeps layers", {"model": "m-T1000", "n_grids": 10})
    got = read_sweep_results(tmp_path)
    assert got["layers"] == layers and got["layers_model"] == "m-T1000"
    assert got["layers_of"] == {}
    centre = [{"layer": 3, "localisation_mean": 0.6, "localisation_median": 0.6, "n_grids": 10}]
    _write_rows(centre, tmp_path / "layers-c-T1000", "python -m coda.sweeps layers --model c-T1000",
                {"model": "c-T1000", "n_grids": 10})
    got = read_sweep_results(tmp_path)
    assert got["layers_of"] == {"c-T1000": centre} and got["layers"] == layers  # the default's file is untouched
    (tmp_path / "sweeps.json").unlink()
    only_layers = read_sweep_results(tmp_path)
    assert only_layers["rows"] == [] and only_layers["budget"] is None and only_layers["layers"] == layers
    for name in ("layers.json", "layers.csv"):
        (tmp_path / name).unlink()
    assert read_sweep_results(tmp_path)["layers_of"] == {"c-T1000": centre}  # a layers-*.json alone is enough
    (tmp_path / "sweeps.json").write_text('{"rows": {"a": 1}}')
    with pytest.raises(ValueError, match="list of rows"):
        read_sweep_results(tmp_path)


def test_sweep_rows_select_one_sweep_sorted_by_its_variable():
    from coda.sweeps import sweep_rows

    rows = [_row(run_name(cnn=True), "cifar10-cnn", 64.0, 8, 9, None)]
    rows += [_row(run_name(temperature=t), temperature=float(t)) for t in (5000, 10, 1000, 100)]  # 1000: the centre
    rows += [_row(run_name(rank_factor=f), rank_factor=f) for f in (32, 4)]
    rows += [_row(run_name(stem_depth=d), stem_depth=d, localisation=None) for d in (3, 1)]
    rows += [_row("sweep-9L-S-f8-T7")]  # not a run of any sweep
    temps = sweep_rows(rows, "temperature")
    assert [r["temperature"] for r in temps] == [10, 100, 1000, 5000]
    assert [r["rank_factor"] for r in sweep_rows(rows, "rank")] == [4, 8, 32]
    depth = sweep_rows(rows, "depth")
    assert [r["stem_depth"] for r in depth] == [0, 1, 3, 9] and depth[-1]["model"] == "cifar10-cnn"
    assert depth[1]["localisation_mean"] is None  # rows are returned as they are, None kept
    # A baseline sorts last even when its variable would sort first; a missing value sorts late.
    rows[0]["stem_depth"] = 0
    rows[-2]["stem_depth"] = None
    assert [r["name"] for r in sweep_rows(rows, "depth")][-2:] == [run_name(stem_depth=1), run_name(cnn=True)]
    assert sweep_rows([], "rank") == []
    with pytest.raises(ValueError, match="unknown sweep"):
        sweep_rows(rows, "width")


def test_markdown_tables_show_each_sweep_with_the_published_values(tmp_path, capsys):
    from coda.sweeps import _write_rows, main, markdown_tables

    with pytest.raises(ValueError, match="no sweep results"):
        markdown_tables(tmp_path)
    rows = [_row(run_name(temperature=t), temperature=float(t), localisation=0.1 * i)
            for i, t in enumerate((100, 10), start=1)]
    rows += [_row(run_name(rank_factor=4), rank_factor=4) | {"parameters": 1076984, "test_accuracy": 0.71234}]
    rows += [_row(run_name(stem_depth=3), stem_depth=3, localisation=0.25),
             _row(run_name(cnn=True), "cifar10-cnn", 64.0, 8, 0, None) | {"explained_from": "nothing"}]
    _write_rows(rows, tmp_path / "sweeps", "cmd", {"budget": SWEEP_BUDGET, "n_grids": 10, "n_removal": 8})
    text = markdown_tables(tmp_path)
    lines = text.splitlines()
    temperature = [line for line in lines if line.startswith("| 10 |") or line.startswith("| 100 |")]
    assert temperature == ["| 10 | 50.00% | 0.200 (0.200) | 10 | 0.314 | 0.800 | 0.801 |",  # sorted by T
                           "| 100 | 50.00% | 0.100 (0.100) | 10 | 0.637 | 0.800 | 0.865 |"]
    assert "| 4 | 1,076,984 | 71.23% | 0.500 (0.500) | 0.800 |" in lines
    assert "| stem depth 3 | 1 | 50.00% | input | 0.250 (0.250) |" in lines
    assert "| CNN baseline | 1 | 50.00% | nothing | - |" in lines
    missing = [line for line in lines if line.startswith("Not evaluated yet")]
    assert missing[0] == f"Not evaluated yet: {run_name(temperature=1000)}, {run_name(temperature=5000)}."
    assert f"{SWEEP_BUDGET['epochs']} epochs" in lines[0] and "10 grids" in lines[0]
    assert "Localisation at each layer" not in text  # no layers.json yet
    layers = [{"layer": 3, "localisation_mean": 0.7, "localisation_median": 0.75, "n_grids": 10}]
    _write_rows(layers, tmp_path / "layers", "cmd", {"model": "m-T1000", "n_grids": 10})
    assert "| layer 3 | 0.700 (0.750) | 10 |" in markdown_tables(tmp_path).splitlines()
    assert "explained from the same layer" not in markdown_tables(tmp_path)
    # The centre run explained from layer 3 goes next to the stem-3 hybrid, "-" elsewhere.
    _write_rows(layers, tmp_path / f"layers-{run_name()}", "cmd", {"model": run_name(), "n_grids": 10})
    lines = markdown_tables(tmp_path).splitlines()
    assert f"`{run_name()}` explained from the same layer |" in "\n".join(lines)
    assert "| stem depth 3 | 1 | 50.00% | input | 0.250 (0.250) | 0.700 (0.750) |" in lines
    assert "| CNN baseline | 1 | 50.00% | nothing | - | - |" in lines
    capsys.readouterr()
    main(["table", "--out", str(tmp_path)])
    assert capsys.readouterr().out == markdown_tables(tmp_path)


def test_weights_fingerprint_identifies_the_weights():
    from coda.sweeps import weights_fingerprint

    a, b = build_model("cifar10-tiny"), build_model("cifar10-tiny")
    b.load_state_dict(a.state_dict())
    assert weights_fingerprint(a) == weights_fingerprint(b)
    with torch.no_grad():
        next(b.parameters())[0].flatten()[0] += 1e-6
    assert weights_fingerprint(a) != weights_fingerprint(b)
    hybrid = build_model("cifar10-9L-S", rank_factor=4, stem_depth=1)  # batch norm: 0-dim buffers
    before = weights_fingerprint(hybrid)
    buffers = [b for b in hybrid.buffers() if b.dim() == 0]
    assert buffers, "expected a 0-dim buffer in the hybrid's stem"
    buffers[0] += 1
    assert weights_fingerprint(hybrid) != before


def test_evaluate_sweeps_keeps_each_run_and_reuses_it(tmp_path, monkeypatch):
    from coda.sweeps import evaluate_sweeps, read_sweep_results
    from coda.train import train as real_train

    tiny = dict(model="cifar10-tiny", model_overrides={}, epochs=1, batch_size=8, precision="fp32")
    runs = {"sweep-tiny-T100": dataclasses.replace(sweep_runs("rank")[run_name(rank_factor=4)], **tiny),
            "sweep-untrained-T100": dataclasses.replace(sweep_runs("rank")[run_name(rank_factor=16)], **tiny)}
    other = {"sweep-other-T100": runs["sweep-tiny-T100"]}  # a trained run of another sweep
    monkeypatch.setattr("coda.sweeps.all_runs", lambda sweeps: (runs if "rank" in sweeps else {})
                        | (other if "depth" in sweeps else {}))
    monkeypatch.setattr("coda.sweeps.load_cifar10", lambda split, root=None: _tiny_data(20))
    for name in ("sweep-tiny-T100", "sweep-other-T100"):
        real_train(runs["sweep-tiny-T100"], tmp_path / "runs" / name, train_data=_tiny_data(16),
                   test_data=_tiny_data(8), progress=False)
    calls = []

    def fake_evaluate_model(model, test, n_grids, n_removal, seed=0):
        calls.append((n_grids, n_removal))
        return {"parameters": 1, "test_accuracy": 0.25, "localisation_mean": 0.5, "n_grids": n_grids}

    monkeypatch.setattr("coda.sweeps.evaluate_model", fake_evaluate_model)
    out = tmp_path / "results"
    rows = evaluate_sweeps(["rank"], tmp_path / "runs", out, n_grids=3, n_removal=4, command="cmd")
    assert calls == [(3, 4)] and [r["name"] for r in rows] == ["sweep-tiny-T100"]  # the untrained run is skipped
    assert (out / "runs" / "sweep-tiny-T100.json").exists()
    again = evaluate_sweeps(["rank"], tmp_path / "runs", out, n_grids=3, n_removal=4, command="cmd")
    assert calls == [(3, 4)] and again == rows  # stored with the same settings: reused
    assert read_sweep_results(out)["rows"] == rows
    # Another sweep: evaluated now, and the rank sweep's stored row stays in the table.
    depth = evaluate_sweeps(["depth"], tmp_path / "runs", out, n_grids=3, n_removal=4, command="cmd")
    assert calls == [(3, 4)] * 2 and [r["name"] for r in depth] == ["sweep-other-T100"]
    assert [r["name"] for r in read_sweep_results(out)["rows"]] == ["sweep-tiny-T100", "sweep-other-T100"]
    evaluate_sweeps(["rank"], tmp_path / "runs", out, n_grids=5, n_removal=4)  # other sizes: recomputed
    evaluate_sweeps(["rank"], tmp_path / "runs", out, n_grids=5, n_removal=4, force=True)
    assert calls == [(3, 4)] * 2 + [(5, 4)] * 2
    # ...and the depth run, stored at other sizes, is left out rather than mixed in.
    assert [r["name"] for r in read_sweep_results(out)["rows"]] == ["sweep-tiny-T100"]


def test_evaluate_layers_scores_each_layer_once(monkeypatch):
    from coda.sweeps import evaluate_layers

    monkeypatch.setattr("coda.sweeps.make_grids", _confident_grids)
    model = build_model("cifar10-tiny").eval()
    rows = evaluate_layers(model, _tiny_data(20), n_grids=1)
    assert [r["layer"] for r in rows] == [None, *range(1, len(model.layers))]  # None: the input
    assert all(r["n_grids"] == 1 and 0 <= r["localisation_mean"] <= 1 for r in rows)
    hybrid = build_model("cifar10-tiny", stem_depth=2).eval()
    assert [r["layer"] for r in evaluate_layers(hybrid, _tiny_data(20), n_grids=1)] == list(range(len(hybrid.layers)))
    some = evaluate_layers(model, _tiny_data(20), n_grids=1, layers=[3, 0, 3])
    assert [r["layer"] for r in some] == [None, 3]
    assert some[1] == next(r for r in rows if r["layer"] == 3)  # same grids, same score
    for bad in ([], [len(model.layers)], [-1]):
        with pytest.raises(ValueError, match="layer indices"):
            evaluate_layers(model, _tiny_data(20), n_grids=1, layers=bad)


def test_evaluate_layers_resumes_from_its_cache(tmp_path, monkeypatch):
    from coda import sweeps
    from coda.sweeps import evaluate_layers

    monkeypatch.setattr("coda.sweeps.make_grids", _confident_grids)
    scored, real = [], sweeps.localisation_scores

    def counting(model, grids, explainer, **kw):
        scored.append(explainer)
        if len(scored) == stop_after:
            raise KeyboardInterrupt  # the session ends in the middle of a call
        return real(model, grids, explainer, **kw)

    monkeypatch.setattr("coda.sweeps.localisation_scores", counting)
    model, data, cache = build_model("cifar10-tiny").eval(), _tiny_data(20), tmp_path / "runs" / "layers.json"
    n = len(model.layers)
    stop_after = 3
    with pytest.raises(KeyboardInterrupt):
        evaluate_layers(model, data, n_grids=1, cache=cache)
    kept = json.loads(cache.read_text())["rows"]
    assert sorted(kept, key=int) == ["0", "1"]  # the two layers scored before the stop
    stop_after = 0
    scored.clear()
    rows = evaluate_layers(model, data, n_grids=1, cache=cache)
    assert len(scored) == n - 2 and [r["layer"] for r in rows] == [None, *range(1, n)]  # only the rest
    assert rows == evaluate_layers(model, data, n_grids=1)  # the same rows as one uninterrupted call
    scored.clear()
    assert evaluate_layers(model, data, n_grids=1, cache=cache) == rows and scored == []  # all kept
    evaluate_layers(model, data, n_grids=2, cache=cache, layers=[1])  # other settings: scored again
    assert len(scored) == 1
    with torch.no_grad():
        next(model.parameters()).mul_(2)
    scored.clear()
    evaluate_layers(model, data, n_grids=2, cache=cache, layers=[1])  # other weights: scored again
    assert len(scored) == 1
    record = json.loads(cache.read_text())
    for rows in ([1, 2], {"first": {}}):  # this model's settings, rows not by layer index
        cache.write_text(json.dumps({**record, "rows": rows}))
        with pytest.raises(ValueError, match="per-layer cache"):
            evaluate_layers(model, data, n_grids=2, cache=cache, layers=[1])
    cache.write_text("[1, 2]")
    with pytest.raises(ValueError, match="per-layer cache"):
        evaluate_layers(model, data, n_grids=1, cache=cache)


def test_layers_command_keeps_its_rows_in_the_tasks_folder(tmp_path, monkeypatch):
    from coda import sweeps

    seen = []
    monkeypatch.setattr(sweeps, "evaluate_layers", lambda *a, cache=None, **k: seen.append(cache) or [
        {"layer": None, "localisation_mean": 0.5}])
    monkeypatch.setattr(sweeps, "load_cifar10", lambda split, data: None)
    argv = ["layers", "--model", "cifar10-9L-S-f8-T1000", "--out", str(tmp_path)]
    sweeps.main(argv)
    cache = tmp_path / "tasks" / "layers-cifar10-9L-S-f8-T1000.json"
    assert seen == [cache]
    cache.parent.mkdir()
    cache.write_text("{}")
    sweeps.main(argv)
    assert cache.exists()  # kept: the next call resumes from it
    sweeps.main([*argv, "--force"])
    assert not cache.exists() and seen == [cache] * 3  # --force: every layer is scored again


def test_layers_of_the_default_model_and_of_others_go_to_separate_files(tmp_path):
    from coda import pretrained
    from coda.sweeps import layers_stem

    other = layers_stem("sweep-9L-S-f8-T1000", tmp_path)
    assert other == tmp_path / "layers-sweep-9L-S-f8-T1000"
    if pretrained.list_pretrained():
        assert layers_stem(pretrained.default_name(), tmp_path) == tmp_path / "layers"


def test_centre_from_layer_joins_the_centre_runs_row_and_its_layer_file():
    from coda.sweeps import centre_from_layer

    layer = {"layer": 3, "localisation_mean": 0.6, "localisation_median": 0.61, "n_grids": 10}
    results = {"rows": [_row(run_name(), localisation=0.7), _row(run_name(stem_depth=3), stem_depth=3)],
               "layers_of": {run_name(): [layer], "other-T10": [layer | {"layer": 1}]}}
    got = centre_from_layer(results)
    assert list(got) == [0, 3] and got[3] == layer
    assert got[0]["localisation_mean"] == 0.7 and got[0]["layer"] is None
    assert centre_from_layer({"rows": [], "layers_of": {}}) == {}


def test_each_sweep_is_data_and_its_run_names_are_derived():
    from coda.pretrained import check_name
    from coda.sweeps import SWEEP_SPECS, SWEEP_VARIABLES, SWEEPS

    assert SWEEPS == tuple(SWEEP_SPECS) == ("temperature", "rank", "depth")
    for name, spec in SWEEP_SPECS.items():
        assert SWEEP_VARIABLES[name] == spec.variable and set(spec.columns) <= set(_row("x"))
        runs = spec.runs()
        for value in spec.values:
            cfg = spec.config(value)
            assert runs[run_name(**cfg.model_overrides)] == cfg
            built = build_model(cfg.model, **cfg.model_overrides).config
            assert getattr(built, spec.variable) == value  # the swept value is what the model gets
        for run, cfg in runs.items():
            check_name(run, build_model(cfg.model, **cfg.model_overrides).temperature)  # suffix derived, not parsed
    assert "stem_depth" not in SWEEP_SPECS["depth"].model_overrides(0)  # depth 0 is the centre run itself
    assert SWEEP_SPECS["depth"].runs()[run_name(cnn=True)].model == "cifar10-cnn"
    with pytest.raises(ValueError, match="T1000"):
        check_name(run_name(temperature=100), 1000.0)


def test_layer_files_of_the_older_text_format_are_read_and_converted_once(tmp_path):
    from coda.sweeps import _write_rows, convert_layer_files, layer_text, read_sweep_results

    old = [{"explained": "input", "localisation_mean": 0.7, "localisation_median": 0.8, "n_grids": 10},
           {"explained": "layer 3", "localisation_mean": 0.6, "localisation_median": 0.5, "n_grids": 10}]
    new = [{"layer": None, "localisation_mean": 0.7, "localisation_median": 0.8, "n_grids": 10},
           {"layer": 3, "localisation_mean": 0.6, "localisation_median": 0.5, "n_grids": 10}]
    _write_rows(old, tmp_path / "layers", "cmd", {"model": "m-T1000", "n_grids": 10})
    _write_rows(old[1:], tmp_path / "layers-c-T1000", "cmd2", {"model": "c-T1000", "n_grids": 10})
    got = read_sweep_results(tmp_path)
    assert got["layers"] == new and got["layers_of"] == {"c-T1000": new[1:]}  # read as ints before converting
    assert convert_layer_files(tmp_path) == [tmp_path / "layers-c-T1000.json", tmp_path / "layers.json"]
    assert convert_layer_files(tmp_path) == []  # once
    converted = {p.name: p.read_text() for p in tmp_path.iterdir()}
    _write_rows(new, tmp_path / "layers", "cmd", {"model": "m-T1000", "n_grids": 10})  # as written now
    _write_rows(new[1:], tmp_path / "layers-c-T1000", "cmd2", {"model": "c-T1000", "n_grids": 10})
    assert converted == {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert (tmp_path / "layers.csv").read_text().splitlines() == [
        "layer,localisation_mean,localisation_median,n_grids", ",0.7,0.8,10", "3,0.6,0.5,10"]  # the input: empty
    assert [layer_text(r["layer"]) for r in new] == ["input", "layer 3"]
    assert [layer_text(r["layer"], short=True) for r in new] == ["input", "L3"]


def test_committed_layer_files_store_the_layer_as_an_int():
    import json

    from coda.sweeps import RESULTS_DIR

    for path in sorted(RESULTS_DIR.glob("layers*.json")):
        rows = json.loads(path.read_text())["rows"]
        assert rows and all("explained" not in r and (r["layer"] is None or type(r["layer"]) is int) for r in rows), path
