"""coda.lesson_times: the measured wall times of the lessons, per kind of machine."""

import json
from pathlib import Path

import pytest

from coda import lesson_times
from coda.hardware import cpu_info
from coda.workbook import NotebookResult


def Result(name: str, seconds: float, error: str | None = None) -> NotebookResult:  # noqa: N802
    return NotebookResult(name, Path(name), seconds, error)


RUN = [Result("01_dau_alignment.ipynb", 10.04), Result("02_training.ipynb", 125.0)]


def test_no_record_says_not_measured(tmp_path):
    text = lesson_times.timing_sentence("01", path=tmp_path / "none.json")
    assert "none yet" in text
    assert "not measured yet on a CPU with native bf16 or a CPU without native bf16" in text


def test_a_recorded_run_is_reported_for_its_kind_only(tmp_path):
    path = tmp_path / "times.json"
    entry = lesson_times.record_times(RUN, smoke=False, path=path)
    assert entry["notebooks"] == {"01_dau_alignment.ipynb": 10.0, "02_training.ipynb": 125.0}
    assert entry["total_seconds"] == 135.0
    kind = lesson_times.machine_kind("cpu")
    assert kind == ("cpu-native-bf16" if cpu_info().native_bf16 else "cpu-no-native-bf16")
    text = lesson_times.timing_sentence("02", path=path)
    assert f"2.1 min on {lesson_times.KINDS[kind]}" in text and "all lessons 2.2 min" in text
    other = next(v for k, v in lesson_times.KINDS.items() if k not in (kind, "cuda"))
    assert f"not measured yet on {other}" in text
    assert "none yet" in lesson_times.timing_sentence("02", smoke=True, path=path)  # smoke not recorded
    assert lesson_times.timing_sentence("03", path=path).count("none yet") == 1  # a lesson not in the run


def test_recording_keeps_the_other_kinds_and_modes(tmp_path):
    path = tmp_path / "times.json"
    other = {"cuda": {"full": {"notebooks": {"01_dau_alignment.ipynb": 3.0}, "total_seconds": 3.0, "cpu": "x",
                               "cpus": 16, "date": "2026-01-01"}}}
    path.write_text(json.dumps({"format": 1, "machines": other}))
    lesson_times.record_times(RUN, smoke=True, path=path)
    data = lesson_times.read_times(path)
    assert data["machines"]["cuda"] == other["cuda"]
    assert "smoke" in data["machines"][lesson_times.machine_kind()]
    assert "3 s on a CUDA GPU" in lesson_times.timing_sentence("01", path=path)


def test_a_failed_or_empty_run_is_not_recorded(tmp_path):
    path = tmp_path / "times.json"
    with pytest.raises(ValueError, match="failed: 02_training.ipynb"):
        lesson_times.record_times([RUN[0], Result("02_training.ipynb", 3.0, "cell 4")], smoke=False, path=path)
    with pytest.raises(ValueError, match="no lessons ran"):
        lesson_times.record_times([], smoke=False, path=path)
    assert not path.exists()


@pytest.mark.parametrize("text", ["not json", json.dumps({"format": 2, "machines": {}}), json.dumps([1])])
def test_a_bad_record_names_the_file(tmp_path, text):
    path = tmp_path / "times.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="times.json"):
        lesson_times.read_times(path)


def test_record_times_needs_a_mode_every_lesson_and_the_defaults():
    from coda import workbook

    with pytest.raises(SystemExit):
        workbook.main(["--record-times"])
    with pytest.raises(SystemExit):
        workbook.main(["--full", "--only", "01", "--record-times"])
    with pytest.raises(SystemExit):
        workbook.main(["--full", "-p", "RUN_EXPENSIVE", "true", "--record-times"])
