"""coda.recipes: the recipe study's runner, its evaluation rows, table and figure.

A tiny stand-in recipe (the 5-layer "cifar10-tiny" model on synthetic 8x8 images) replaces the
real ones, which train for CPU-hours.
"""

import json

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

import coda.recipes as R  # noqa: E402
from coda.checkpoint import load_checkpoint  # noqa: E402
from coda.train import TrainConfig  # noqa: E402
from tests.test_train import toy_data  # noqa: E402

TINY = R.Recipe("tiny", "a test", TrainConfig(model="cifar10-tiny", epochs=2, batch_size=8, precision="fp32",
                                               test_subset=20, warmup_epochs=0.5))


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    monkeypatch.setitem(R.RECIPES, "tiny", TINY)
    monkeypatch.setattr(R, "TEST_SUBSET", 20)
    return {"runs_dir": tmp_path / "runs", "results_dir": tmp_path / "results",
            "train_data": toy_data(48), "test_data": toy_data(40, seed=1)}


def test_every_recipe_continues_a_shipped_run_of_its_rank():
    from coda.pretrained import list_pretrained, list_retired  # retired: weights in the git history

    for recipe in R.RECIPES.values():
        f = recipe.config.model_overrides["rank_factor"]
        assert recipe.start == f"sweep-9L-S-f{f}-T1000"
        assert recipe.start in list_pretrained() or recipe.start in list_retired()
        assert recipe.config.model_overrides["temperature"] == 1000.0 and recipe.why


def test_train_recipe_stops_at_the_budget_and_evaluates_as_it_goes(tiny):
    rows = R.train_recipe("tiny", cpu_hours=1e-9, eval_every=1e-9, chunk_steps=2, n_grids=2, **tiny)
    ckpt = load_checkpoint(tiny["runs_dir"] / "tiny" / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (0, 2), "one chunk spends more than the tiny budget"
    assert ckpt["cpu_time"] > 0
    assert len(rows) == 1  # no shipped starting model for the stand-in
    row = rows[0]
    assert row["images"] == 16 and row["n_test"] == 40 and row["cpu_hours"] >= 0
    assert 0 <= row["test_accuracy"] <= 1
    assert row["localisation_mean"] is None if row["n_grids"] == 0 else 0 <= row["localisation_mean"] <= 1
    # A larger budget continues the same run and adds rows; the evaluated checkpoints are not repeated.
    rows = R.train_recipe("tiny", cpu_hours=1.0, eval_every=1e-9, chunk_steps=4, n_grids=2, **tiny)
    assert [r["images"] for r in rows] == [16, 48, 80, 96]  # 6 steps of 8 per epoch: stops at 2, 6, 10, 12
    assert load_checkpoint(tiny["runs_dir"] / "tiny" / "last.pt")["epoch"] == 2


def test_an_evaluation_a_killed_process_left_undone_is_done_at_the_restart(tiny):
    R.train_recipe("tiny", cpu_hours=1e-9, eval_every=1e-9, chunk_steps=2, n_grids=2, **tiny)
    ckpt = load_checkpoint(tiny["runs_dir"] / "tiny" / "last.pt")
    # The process was killed during the evaluation of its last chunk: the checkpoint is on
    # disk, its row is not.
    (tiny["results_dir"] / "tiny.json").unlink()
    rows = R.train_recipe("tiny", cpu_hours=1e-9, eval_every=1e-9, chunk_steps=2, n_grids=2, **tiny)
    assert [r["images"] for r in rows] == [16], "the budget is spent, but the crossed evaluation is still owed"
    assert load_checkpoint(tiny["runs_dir"] / "tiny" / "last.pt")["step"] == ckpt["step"], "nothing more trained"
    # Not owed: the checkpoint lies in the same multiple of eval_every as the last row.
    (tiny["results_dir"] / "tiny.json").unlink()
    assert R.train_recipe("tiny", cpu_hours=1e-9, eval_every=1e9, chunk_steps=2, n_grids=2, **tiny) == []


def test_chunks_end_at_epochs_and_the_last_epochs_states_are_kept(tiny):
    # 6 steps of 8 per epoch; chunks of 5 are cut at the epoch's end: 5, 6, 11, 12.
    rows = R.train_recipe("tiny", cpu_hours=1.0, eval_every=1e-9, chunk_steps=5, n_grids=2, **tiny)
    assert [r["images"] for r in rows] == [40, 48, 88, 96]
    assert R.end_epochs(TINY) == (1, 2)  # the last four of two
    run = tiny["runs_dir"] / "tiny"
    assert sorted(p.name for p in run.glob("epoch-*.pt")) == ["epoch-1.pt", "epoch-2.pt"]
    for e in (1, 2):
        kept = load_checkpoint(run / f"epoch-{e}.pt")
        assert (kept["epoch"], kept["step"]) == (e, 0) and kept["optimizer"] is None
    last = load_checkpoint(run / "last.pt")
    end = load_checkpoint(run / "epoch-2.pt")["model"]
    assert all(torch.equal(end[k], w.half() if w.is_floating_point() else w) for k, w in last["model"].items())
    assert not all(torch.equal(load_checkpoint(run / "epoch-1.pt")["model"][k], end[k]) for k in end)
    assert R.keep_epoch_state(run / "last.pt", last, R.end_epochs(TINY)) is None, "kept once"


def test_end_epochs_are_the_last_four():
    assert R.end_epochs(R.get_recipe("f32-b64-cosine")) == (57, 58, 59, 60)
    assert R.chunk_to_epoch_end({"step": 700}, 200, 781) == 81
    assert R.chunk_to_epoch_end(None, 200, 781) == 200


def test_evaluation_due():
    rows = [{"images": 0, "cpu_hours": 0.0}, {"images": 640, "cpu_hours": 14.069}]
    assert not R._evaluation_due(rows, 640, 15.5, 1.0, end=True), "a row has these images"
    assert R._evaluation_due(rows, 704, 15.28, 1.0, end=False)  # past 15, the last row before it
    assert not R._evaluation_due(rows, 704, 15.28, 2.0, end=False)  # 16 not reached yet
    assert R._evaluation_due(rows, 704, 14.5, 1.0, end=True)
    assert R._evaluation_due([], 64, 0.2, 1.0, end=False) is False


def test_train_recipe_rejects_bad_budgets_and_names(tiny):
    with pytest.raises(ValueError, match="cpu_hours and eval_every must be > 0"):
        R.train_recipe("tiny", cpu_hours=0, **tiny)
    with pytest.raises(ValueError, match="chunk_steps >= 1"):
        R.train_recipe("tiny", cpu_hours=1, chunk_steps=0, **tiny)
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        R.get_recipe("nope")


def test_start_row_comes_from_the_rank_sweep(tmp_path):
    results = tmp_path / "sweeps.json"
    results.write_text(json.dumps({"rows": [{"name": "sweep-9L-S-f32-T1000", "test_accuracy": 0.8,
                                             "localisation_mean": 0.75, "localisation_median": 0.76,
                                             "n_grids": 100}]}))
    row = R.start_row(R.RECIPES["f32-b16-paper"], results)
    assert (row["cpu_hours"], row["images"], row["localisation_mean"]) == (0.0, 0, 0.75)
    assert R.start_row(R.RECIPES["f16-b16-paper"], results) is None


def test_malformed_results_file_names_the_file(tmp_path):
    (tmp_path / "tiny.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="tiny.json: expected a JSON object"):
        R.read_rows("tiny", tmp_path)


def test_table_and_figure(tiny, tmp_path, monkeypatch):
    R.train_recipe("tiny", cpu_hours=1e-9, eval_every=1e-9, chunk_steps=2, n_grids=2, **tiny)
    table = R.markdown_table(tiny["results_dir"])
    assert "| tiny | 0.33 | 0.00 |" in table and table.endswith("| - | 0 |")  # 16 of 48 images; no grid
    rows = R.read_rows("tiny", tiny["results_dir"])
    rows = [{**r, "localisation_mean": 0.5} for r in rows] + [{**rows[0], "cpu_hours": 1.0, "localisation_mean": 0.6}]
    assert rows[0]["machine"].endswith(", fp32")  # the CPU and precision behind the CPU-hours
    fig = R.plot_recipe_study({"tiny": rows, "empty": []})
    ax_loc, ax_acc, ax_loc_epochs, ax_acc_epochs = fig.axes
    assert "epochs" in ax_loc_epochs.get_xlabel() and "CPU-hours" in ax_loc.get_xlabel()
    assert list(ax_loc_epochs.get_lines()[0].get_xdata()) == [rows[0]["epochs_done"]] * 2
    lines = [line for line in ax_loc.get_lines() if line.get_label() == "tiny"]
    assert len(lines) == 1 and list(lines[0].get_ydata()) == [0.5, 0.6]
    assert ax_loc.get_ylabel() and ax_acc.get_ylabel() and ax_loc.get_xlabel()
    assert not [line for line in ax_loc.get_lines() if line.get_label() == "empty"]
    torch.testing.assert_close(torch.tensor(ax_acc.get_lines()[0].get_ydata()[0]),
                               torch.tensor(100 * rows[0]["test_accuracy"]), check_dtype=False)
    # A finished run's shipped model on the full protocol: a star at the run's last row.
    evaluations = tmp_path / "evaluations"
    assert R.shipped_full_protocol("tiny", tiny["results_dir"], evaluations) is None  # the run shipped nothing
    monkeypatch.setitem(R.SHIPPED, "tiny", "tiny-model")
    assert R.shipped_full_protocol("tiny", tiny["results_dir"], evaluations) is None  # not evaluated
    (evaluations / "tiny-model").mkdir(parents=True)
    summary = {"mean": 0.7, "median": 0.71, "n": 45, "n_grids": 5}
    (evaluations / "tiny-model" / "results.json").write_text(
        json.dumps({"results": {"coda/localisation": {"summary": summary}}}))
    end = R.shipped_full_protocol("tiny", tiny["results_dir"], evaluations)
    last = max(R.read_rows("tiny", tiny["results_dir"]), key=lambda r: r["images"])
    assert end == {"model": "tiny-model", "cpu_hours": last["cpu_hours"], "epochs_done": last["epochs_done"],
                   "localisation_mean": 0.7, "localisation_median": 0.71, "n_grids": 5}
    fig = R.plot_recipe_study({"tiny": rows}, shipped={"tiny": end, "empty": None})
    stars = [line for line in fig.axes[0].get_lines() if line.get_marker() == "*"]
    assert len(stars) == 1 and list(stars[0].get_ydata()) == [0.7] and "tiny-model" in stars[0].get_label()


def test_save_writes_a_compact_state_that_a_fresh_machine_continues(tiny, tmp_path):
    state_dir = tmp_path / "state"
    with pytest.raises(ValueError, match="has no run to save"):
        R.save_state("tiny", tiny["runs_dir"], state_dir)
    R.train_recipe("tiny", cpu_hours=1e-9, eval_every=1e-9, chunk_steps=2, n_grids=2, state_dir=state_dir, **tiny)
    saved = R.save_state("tiny", tiny["runs_dir"], state_dir)
    assert saved == state_dir / "tiny" / "last.pt" and load_checkpoint(saved)["optimizer"] is None
    # A fresh machine: no runs/ folder, the committed state only.
    fresh = {**tiny, "runs_dir": tmp_path / "fresh-runs"}
    rows = R.train_recipe("tiny", cpu_hours=1.0, eval_every=1e-9, chunk_steps=2, n_grids=2, state_dir=state_dir,
                          **{k: v for k, v in fresh.items()})
    ckpt = load_checkpoint(fresh["runs_dir"] / "tiny" / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["rewarm_from"] == (0, 2) and ckpt["restarts"][0]["step"] == 2
    assert [r["images"] for r in rows][-1] == 96


def _evaluate_folder(folder, n_grids=4):
    """A coda.evaluate output folder: grid g scores 1 - g/10 in all 9 cells; another method too."""
    folder.mkdir()
    (folder / "results.json").write_text("{}")
    (folder / "localisation.csv").write_text("method,label,grid_size,n_grids,n,mean,median\n"
                                             f"coda,Ours,3,{n_grids},{9 * n_grids},0,0\ngrad,Grad,3,{n_grids},{n_grids},0,0\n")
    lines = ["method,grid,cell,class,image_index,score"]
    for grid in range(n_grids):
        lines += [f"coda,{grid},{cell},{cell},{100 * grid + cell},{1 - grid / 10}" for cell in range(9)]
    lines += [f"grad,{grid},0,0,0,0.0" for grid in range(n_grids)]
    (folder / "localisation_scores.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_prefix_localisation_takes_the_first_grids(tmp_path):
    path = _evaluate_folder(tmp_path / "run")
    rows = R.prefix_localisation(path, ns=(1, 2, 4, 10))
    assert [r["n"] for r in rows] == [1, 2, 4]  # no row for more grids than the folder has
    assert [r["cells"] for r in rows] == [9, 18, 36]
    assert rows[0]["mean"] == pytest.approx(1.0)
    assert rows[1]["mean"] == pytest.approx(0.95) and rows[1]["median"] == pytest.approx(0.95)
    assert rows[2]["mean"] == pytest.approx(0.85)
    assert R.prefix_localisation(path, ns=(4,), method="grad")[0]["mean"] == 0.0


def test_prefix_localisation_rejects_bad_folders(tmp_path):
    with pytest.raises(ValueError, match="missing: no results.json"):
        R.prefix_localisation(tmp_path / "missing")
    path = _evaluate_folder(tmp_path / "run")
    with pytest.raises(ValueError, match="no localisation scores for method 'occ9'"):
        R.prefix_localisation(path, method="occ9")


def test_committed_500_grid_measurement_agrees_with_its_summary():
    folder = R.PROJECT_ROOT / "results" / "recipes" / "f16-b64-cosine-7.58h-500grids"
    summary = json.loads((folder / "results.json").read_text())["results"]["coda/localisation"]["summary"]
    rows = R.prefix_localisation(folder)
    assert rows[-1]["n"] == 500 and rows[-1]["cells"] == 4500
    assert rows[-1]["mean"] == pytest.approx(summary["mean"], abs=1e-5)
    means = [r["mean"] for r in rows]
    assert means == sorted(means, reverse=True)  # the confident grids come first


def _full_protocol_folder(results_dir, name, model_record, mean=0.7):
    folder = results_dir / f"{name}-1.00h-500grids"
    folder.mkdir(parents=True)
    record = {"model": model_record,
              "results": {"coda/localisation": {"summary": {"mean": mean, "median": mean + 0.01, "n": 45,
                                                            "n_grids": 5}}}}
    (folder / "results.json").write_text(json.dumps(record))
    return folder


def test_full_protocol_rows_place_a_checkpoint_like_the_study_rows(tiny):
    from coda.pretrained import load_model

    R.train_recipe("tiny", cpu_hours=1e-9, eval_every=1e-9, chunk_steps=2, n_grids=2, **tiny)
    ckpt_path = tiny["runs_dir"] / "tiny" / "last.pt"
    ckpt = load_checkpoint(ckpt_path)
    _, info = load_model(str(ckpt_path))  # what coda.evaluate records about the model
    assert info["step"] == ckpt["step"] and info["cpu_hours"] == round(ckpt["cpu_time"] / 3600, 3)
    _full_protocol_folder(tiny["results_dir"], "tiny", info)
    (full,) = R.full_protocol_rows("tiny", tiny["results_dir"], n_train=48)
    (study,) = [r for r in R.read_rows("tiny", tiny["results_dir"]) if r["images"]]
    assert full["epochs_done"] == study["epochs_done"] and full["cpu_hours"] == study["cpu_hours"]
    assert (full["localisation_mean"], full["n_grids"], full["folder"]) == (0.7, 5, "tiny-1.00h-500grids")

    fig = R.plot_recipe_study({"tiny": R.read_rows("tiny", tiny["results_dir"])}, full_protocol={"tiny": [full]})
    squares = [line for line in fig.axes[0].get_lines() if line.get_label() == "tiny (all 5 grids)"]
    assert len(squares) == 1 and list(squares[0].get_ydata()) == [0.7] and squares[0].get_marker() == "s"
    assert any(line.get_label() == "target 0.85 (500 grids)" for line in fig.axes[0].get_lines())


def test_full_protocol_rows_need_the_training_progress(tiny):
    folder = _full_protocol_folder(tiny["results_dir"], "tiny", {"epoch": 3, "step": None, "cpu_hours": 1.0})
    with pytest.raises(ValueError, match=f"{folder.name}/results.json: the model record has no \\['step'\\]"):
        R.full_protocol_rows("tiny", tiny["results_dir"])


def test_committed_full_protocol_rows_sit_among_the_study_rows():
    rows = R.full_protocol_rows("f16-b64-cosine")
    study = R.read_rows("f16-b64-cosine")
    assert len(rows) >= 2 and all(r["n_grids"] == 500 for r in rows)
    for row in rows:  # each checkpoint's epochs lie between those of the study rows around its CPU-hours
        before = max((r for r in study if r["cpu_hours"] <= row["cpu_hours"]), key=lambda r: r["cpu_hours"])
        later = [r for r in study if r["cpu_hours"] >= row["cpu_hours"]]  # none past the last study row
        after = min(later, key=lambda r: r["cpu_hours"])["epochs_done"] if later else float("inf")
        assert before["epochs_done"] - 0.01 <= row["epochs_done"] <= after + 0.01
        assert row["localisation_mean"] < before["localisation_mean"]  # the 500 include the 100 easiest and harder ones


def _two_states(tiny, tmp_path):
    """Two checkpoints of the tiny recipe's run, 2 and 6 steps in."""
    R.train_recipe("tiny", cpu_hours=1e-9, eval_every=1e9, chunk_steps=2, n_grids=2, **tiny)
    first = tmp_path / "first.pt"
    first.write_bytes((tiny["runs_dir"] / "tiny" / "last.pt").read_bytes())
    R.train_recipe("tiny", cpu_hours=1.0, eval_every=1e9, chunk_steps=4, n_grids=2, **tiny)
    return first, tiny["runs_dir"] / "tiny" / "last.pt"


def test_average_checkpoints_is_the_mean_of_the_weights(tiny, tmp_path):
    from coda.pretrained import model_from_checkpoint
    from coda.train import average_checkpoints

    a, b = _two_states(tiny, tmp_path)
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    out = average_checkpoints([a, b], tmp_path / "avg.pt", dtype=torch.float32)
    avg = load_checkpoint(out)
    for key, value in avg["model"].items():
        expected = (ca["model"][key].double() + cb["model"][key].double()) / 2
        torch.testing.assert_close(value.double(), expected, rtol=1e-7, atol=1e-7)
    assert any(not torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"]), "the states must differ"
    assert (avg["epoch"], avg["step"], avg["history"]) == (cb["epoch"], cb["step"], cb["history"])
    assert avg["optimizer"] is None and [s["step"] for s in avg["averaged_from"]] == [ca["step"], cb["step"]]
    model = model_from_checkpoint(avg)  # what coda.evaluate --model and the export read
    torch.testing.assert_close(model.state_dict()[next(iter(avg["model"]))], next(iter(avg["model"].values())))
    # float16 by default, like a compact state
    small = load_checkpoint(average_checkpoints([a, b], tmp_path / "avg16.pt"))
    assert all(v.dtype == torch.float16 for v in small["model"].values() if v.is_floating_point())


def test_average_checkpoints_refuses_what_it_cannot_average(tiny, tmp_path):
    from coda.train import average_checkpoints

    a, b = _two_states(tiny, tmp_path)
    with pytest.raises(ValueError, match="at least 2 checkpoints"):
        average_checkpoints([a], tmp_path / "x.pt")
    other = load_checkpoint(a)
    other["model_config"] = {**other["model_config"], "temperature": 7.0}
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: model configuration"):
        average_checkpoints([a, tmp_path / "other.pt"], tmp_path / "x.pt")
    torch.save({"model": {}}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="plain.pt: expected a coda.train checkpoint"):
        average_checkpoints([a, tmp_path / "plain.pt"], tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_score_and_average_from_the_command_line(tiny, tmp_path, capsys):
    a, b = _two_states(tiny, tmp_path)
    capsys.readouterr()
    R.main(["average", "--out", str(tmp_path / "avg.pt"), str(a), str(b)])
    assert capsys.readouterr().out.strip() == str(tmp_path / "avg.pt")
    row = R.score_checkpoint(tmp_path / "avg.pt", n_grids=2, test=tiny["test_data"])
    assert row["averaged_from"] is not None and len(row["averaged_from"]) == 2 and row["n_test"] == 40
    assert 0 <= row["test_accuracy"] <= 1 and row["cpu_hours"] >= 0


def _row(epochs, accuracy, localisation):
    return {"epochs_done": epochs, "cpu_hours": epochs / 2, "test_accuracy": accuracy, "localisation_mean": localisation}


def test_at_equal_epochs_reads_the_reference_linearly_between_its_rows():
    reference = [_row(4.0, 0.84, 0.70), _row(0.0, 0.80, 0.60), _row(2.0, 0.82, 0.62), _row(3.0, 0.90, None)]
    rows = [_row(1.0, 0.85, 0.65), _row(3.0, 0.83, 0.66), _row(6.0, 0.86, 0.72), _row(5.0, 0.90, None)]
    out = R.at_equal_epochs(rows, reference)
    assert [c["epochs_done"] for c in out] == [1.0, 3.0, 6.0]  # rows without a localisation are left out
    # by hand: at 1 epoch halfway between (0, 0.60) and (2, 0.62); at 3 halfway between (2, 0.62) and (4, 0.70),
    # the reference's row without a localisation ignored; past its last row, its last value
    assert [c["reference_localisation"] for c in out] == pytest.approx([0.61, 0.66, 0.70])
    assert [c["reference_accuracy"] for c in out] == pytest.approx([0.81, 0.83, 0.84])
    assert [c["localisation_lead"] for c in out] == pytest.approx([0.04, 0.0, 0.02])
    assert [c["accuracy_lead"] for c in out] == pytest.approx([0.04, 0.0, 0.02])
    assert [c["reference_held"] for c in out] == [None, None, 4.0]  # 6 epochs: held at the reference's last row
    (before,) = R.at_equal_epochs([_row(-1.0, 0.5, 0.5)], reference)
    assert before["reference_held"] == 0.0 and before["reference_localisation"] == pytest.approx(0.60)
    with pytest.raises(ValueError, match="at least 2 rows"):
        R.at_equal_epochs(rows, reference[:1])


def test_compare_prints_the_committed_long_runs_side_by_side(capsys):
    R.main(["compare", "f32-b64-cosine", "f16-b64-cosine"])
    study, full = capsys.readouterr().out.strip().split("\n\n")
    lines = study.splitlines()
    rows = [r for r in R.read_rows("f32-b64-cosine") if r["localisation_mean"] is not None]
    assert len(lines) == 2 + len(rows) and "f16-b64-cosine at equal epochs" in lines[0]
    assert lines[2].startswith("| 0.00 | 0.00 | 81.37%, 0.755 | 80.02%, 0.688 |")  # both runs' starting rows
    # the second table: the committed 500-grid evaluations, the f32 run's first (26.25 epochs) against the
    # f16 run's two that bracket it, read by hand from their folders (22.10 epochs 0.714, 31.86 epochs 0.748)
    lines = full.splitlines()
    assert "all grids" in lines[0] and len(lines) == 2 + len(R.full_protocol_rows("f32-b64-cosine"))
    by_hand = 0.71376 + (26.248 - 22.102) / (31.855 - 22.102) * (0.74809 - 0.71376)
    assert lines[2] == f"| 26.25 | 18.19 | 0.770 (500 grids) | {by_hand:.3f} | {0.76977 - by_hand:+.3f} |"
    # past the f16 run's last 500-grid state (41.50 epochs) its value is held there, and the cell says so
    last = max(r["epochs_done"] for r in R.full_protocol_rows("f16-b64-cosine"))
    for line in lines[2:]:
        beyond = float(line.split("|")[1]) > last
        assert ("(held: its row at 41.50 epochs)" in line) == beyond, line
    assert any("held" in line for line in lines)  # the 43.75-epoch state (session 26) is past it


def test_at_equal_epochs_without_accuracy_compares_localisation_only():
    reference = [{"epochs_done": 0.0, "cpu_hours": 0.0, "localisation_mean": 0.6},
                 {"epochs_done": 4.0, "cpu_hours": 2.0, "localisation_mean": 0.7}]
    (c,) = R.at_equal_epochs([{"epochs_done": 1.0, "cpu_hours": 0.5, "localisation_mean": 0.65}], reference,
                             accuracy=False)
    assert c["reference_localisation"] == pytest.approx(0.625) and c["localisation_lead"] == pytest.approx(0.025)
    assert not {"test_accuracy", "reference_accuracy", "accuracy_lead"} & set(c)
