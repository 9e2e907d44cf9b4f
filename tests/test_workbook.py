"""coda.workbook: finding the numbered notebooks, injecting parameters, reporting failures."""

import json
import os

import nbformat
import pytest
from papermill.exceptions import PapermillExecutionError

from coda import workbook


def _notebook(path, *sources, parameters="SMOKE = False\nFIG_DIR = 'figures'"):
    """Write a notebook: a tagged parameters cell, then one code cell per source."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# a test notebook"), params]
    nb.cells += [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)
    return path


def test_find_notebooks_takes_numbered_ones_in_order(tmp_path):
    for name in ("02_b.ipynb", "01_a.ipynb", "10_c.ipynb", "notes.ipynb", "1_x.ipynb", "03_d.txt"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in workbook.find_notebooks(tmp_path)] == ["01_a.ipynb", "02_b.ipynb", "10_c.ipynb"]
    assert [p.name for p in workbook.find_notebooks(tmp_path, only=["10", "01_a"])] == ["01_a.ipynb", "10_c.ipynb"]
    with pytest.raises(ValueError, match="99"):
        workbook.find_notebooks(tmp_path, only=["99"])


def test_describe_error_names_the_cell_of_the_committed_notebook():
    sources = ["# title", "SMOKE = False", "x = 1", "y = 1 / 0"]
    err = PapermillExecutionError(cell_index=4, exec_count=3, source="y = 1 / 0", ename="ZeroDivisionError",
                                  evalue="division by zero", traceback=[])
    text = workbook.describe_error(err, sources)
    assert text.startswith("cell 3 (In [3])")  # index 3 in the committed notebook, not papermill's 4
    assert "'y = 1 / 0'" in text and "ZeroDivisionError: division by zero" in text


def test_format_summary_lists_wall_times(tmp_path):
    results = [workbook.NotebookResult("01_a.ipynb", tmp_path, 12.34),
               workbook.NotebookResult("02_long_name.ipynb", tmp_path, 5.0, error="cell 2: boom")]
    table = workbook.format_summary(results)
    assert "01_a.ipynb" in table and "12.3 s" in table
    assert "FAILED" in table and "5.0 s" in table
    assert "17.3 s" in table  # the total


@pytest.mark.slow
def test_runner_injects_parameters_and_reports_the_failing_notebook_and_cell(tmp_path, capsys):
    """One papermill run of three tiny notebooks: ok, failing, never reached."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _notebook(notebooks / "01_ok.ipynb",
              "import json, os, pathlib\n"
              "pathlib.Path(FIG_DIR).mkdir(parents=True, exist_ok=True)\n"
              "(pathlib.Path(FIG_DIR) / 'params.json').write_text(json.dumps({'SMOKE': SMOKE, 'EXTRA': EXTRA,\n"
              "    'TQDM_DISABLE': os.environ.get('TQDM_DISABLE')}))",
              "from tqdm.auto import tqdm\n"  # a bar enabled explicitly, as the trainer's: stripped afterwards
              "for _ in tqdm(range(3), desc='epoch 1/1', disable=False, leave=False):\n    pass\n"
              "print('epoch   1/1  loss 0.5')",
              parameters="SMOKE = False\nFIG_DIR = 'figures'\nEXTRA = 0")
    _notebook(notebooks / "02_fails.ipynb", "x = 1", "raise RuntimeError('deliberate failure')", "print('unreachable')")
    _notebook(notebooks / "03_never.ipynb", "print('never run')")
    fig_dir = tmp_path / "figs"
    out = tmp_path / "build"
    tqdm_before = os.environ.get("TQDM_DISABLE")

    code = workbook.main(["--notebooks", str(notebooks), "--out", str(out), "--fig-dir", str(fig_dir),
                          "--smoke", "-p", "EXTRA", "7", "--no-progress"])
    captured = capsys.readouterr()

    assert code == 1
    assert json.loads((fig_dir / "params.json").read_text()) == {"SMOKE": True, "EXTRA": 7, "TQDM_DISABLE": "1"}
    assert os.environ.get("TQDM_DISABLE") == tqdm_before, "the kernels' environment is restored"
    outputs = nbformat.read(out / "01_ok.ipynb", as_version=4).cells[-1].outputs  # the cell with the bar
    assert [o.get("text") for o in outputs] == ["epoch   1/1  loss 0.5\n"], "no progress bar, the epoch line"
    assert (out / "01_ok.ipynb").exists() and (out / "02_fails.ipynb").exists()
    assert not (out / "03_never.ipynb").exists(), "the runner stops at the first failure"
    assert "FAILED: 02_fails.ipynb, cell 3" in captured.err
    assert "RuntimeError: deliberate failure" in captured.err
    assert "raise RuntimeError" in captured.err  # the failing cell's first line
    summary = captured.out[captured.out.index("notebook  "):]
    lines = {line.split()[0]: line for line in summary.splitlines() if line.endswith(" s")}
    assert "ok" in lines["01_ok.ipynb"] and "FAILED" in lines["02_fails.ipynb"]
    assert "03_never.ipynb" not in lines
    assert "total" in lines


def test_strip_progress_bars_keeps_the_lines_printed_beside_them():
    bar = nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "bar", "version_major": 2, "version_minor": 0},
        "text/plain": "epoch 1/2:   0%|          | 0/78 [00:00<?, ?it/s]"})
    slider = nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "box", "version_major": 2, "version_minor": 0},
        "text/plain": "VBox(children=(FloatSlider(value=60.0),))"})
    stream = nbformat.v4.new_output("stream", name="stderr", text=(
        "\rremoval:  50%|#####     | 1/2 [00:01<00:01,  1.00it/s]\rremoval: 100%|##########| 2/2 [00:02<00:00]"
        "\r                                        \rdone\nwarning: kept\n"))
    only_bar = nbformat.v4.new_output("stream", name="stderr", text="\r12it [00:01, 9.5it/s]\r   \r")
    epoch = nbformat.v4.new_output("stream", name="stdout", text="epoch   1/2  loss 0.3250  test 0.094\n")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("train()", outputs=[bar, epoch, stream, only_bar]),
                nbformat.v4.new_code_cell("explorer", outputs=[slider]), nbformat.v4.new_markdown_cell("text")]
    state = {"bar": {"state": {"children": ["IPY_MODEL_progress"]}}, "progress": {"state": {}},
             "box": {"state": {"children": ["IPY_MODEL_slider"]}}, "slider": {"state": {}}}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": state}}

    assert workbook.strip_progress_bars(nb) == 3
    assert nb.cells[0].outputs[0].text == epoch.text
    assert nb.cells[0].outputs[1].text == "done\nwarning: kept\n"
    assert len(nb.cells[0].outputs) == 2 and nb.cells[1].outputs == [slider]
    kept = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert set(kept) == {"box", "slider"}, "only the bars' widget models go"
    assert workbook.strip_progress_bars(nb) == 0


# ----- what the notebooks share ---------------------------------------------------------------


@pytest.mark.parametrize("smoke, ci, expected", [(None, "true", True), (None, "", False), (False, "true", False),
                                                 (True, "", True)])
def test_start_lesson_derives_smoke_seeds_and_applies_the_style(monkeypatch, smoke, ci, expected):
    import matplotlib
    import torch

    from coda import plotting

    monkeypatch.setenv("CI", ci)
    with matplotlib.rc_context():
        matplotlib.rcParams["savefig.dpi"] = 17
        lesson = workbook.start_lesson(smoke, seed=3, device="cpu", fig_dir="figs")
        assert matplotlib.rcParams["savefig.dpi"] == plotting.DPI
    drawn = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(drawn, torch.rand(3))
    smoke_out, device, fig_dir = lesson
    assert smoke_out is expected and device == torch.device("cpu") and str(fig_dir) == "figs"


def test_text_table_aligns_text_left_and_numbers_right():
    rows = [{"name": "a", "n": 1500, "acc": 0.71234, "T": 1000.0, "loc": None},
            {"name": "long-name", "n": 2, "acc": 0.5, "T": 10.0, "loc": 0.25}]
    assert workbook.text_table(rows, ["name", "n", "acc", "T", "loc"]).splitlines() == [
        "name           n    acc     T    loc",
        "a          1,500  0.712  1000      -",
        "long-name      2  0.500    10  0.250",
    ]


# ----- the MODEL parameter of notebooks 03-05 ---------------------------------------------------

TINY_PUBLISHED = "cifar10-tiny-T100"


@pytest.fixture
def published_in_cache(tmp_path, monkeypatch):
    """A published entry of the tiny architecture whose file sits in a temporary cache (no network)."""
    import torch

    import coda.published as pub
    from coda.models import build_model
    from coda.reference import to_reference_state_dict

    spec = pub.PublishedModel(TINY_PUBLISHED, "cifar10-tiny", 100.0, "no-such-share", "CIFAR-10", 1)
    monkeypatch.setitem(pub.PUBLISHED, TINY_PUBLISHED, spec)
    monkeypatch.setattr(pub, "default_cache_dir", lambda: tmp_path)
    torch.manual_seed(0)
    model = build_model("cifar10-tiny", temperature=100.0).eval()
    torch.save(to_reference_state_dict(model), tmp_path / f"{TINY_PUBLISHED}.pt")
    return model


def test_resolve_model_loads_a_shipped_model_by_name_and_the_default_for_none():
    import torch

    import coda

    name = coda.pretrained.default_name()
    model, resolved = workbook.resolve_model(None)
    assert resolved == name and not model.training
    expected = coda.load_pretrained(name)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), expected.state_dict().values(),
                                                 strict=True))
    assert workbook.resolve_model(name)[1] == name


def test_resolve_model_loads_a_published_model_through_load_published(published_in_cache):
    import torch

    model, name = workbook.resolve_model(TINY_PUBLISHED)
    assert name == TINY_PUBLISHED and not model.training and model.temperature == 100.0
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), published_in_cache(x))
    loaded, entry, message = workbook.load_shipped_model(name=TINY_PUBLISHED)
    assert entry is None and "published model 'cifar10-tiny-T100'" in message and "non-commercial" in message


def test_resolve_model_calls_load_published_for_the_authors_names(monkeypatch):
    import coda

    seen = []
    tiny = coda.build_model("cifar10-tiny").train()
    monkeypatch.setattr("coda.published.load_published", lambda name: seen.append(name) or tiny)
    model, name = workbook.resolve_model("cifar10-9L-S-T1000")
    assert seen == ["cifar10-9L-S-T1000"] and model is tiny and not model.training


def test_unknown_model_name_lists_the_shipped_and_the_published_names():
    import coda

    with pytest.raises(ValueError, match="unknown model 'no-such-model'") as err:
        workbook.resolve_model("no-such-model")
    assert coda.pretrained.default_name() in str(err.value) and "cifar10-9L-S-T1000" in str(err.value)
    with pytest.raises(ValueError, match="unknown model"):
        workbook.load_shipped_model(name="no-such-model")  # a named model is never replaced by a stand-in
