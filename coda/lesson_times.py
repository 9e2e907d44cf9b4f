"""Measured wall times of the lessons, per kind of machine, and the sentence each lesson prints.

A lesson's cost depends above all on whether the CPU computes bf16 natively (``coda.hardware``):
the same notebook can take twice as long where it does not. So the workbook keeps one measured
time per notebook, mode (full or smoke) and kind of machine, in ``results/workbook/lesson_times.json``:

* ``python -m coda.workbook --full --record-times`` runs every lesson and, if all succeed, writes
  their wall times under this machine's kind (:func:`machine_kind`), replacing that kind's
  earlier record; the other kinds' records stay;
* each lesson prints :func:`timing_sentence` at its start: what it took on each kind of machine
  measured so far, or that no measurement exists yet.

Times are those of one run, with the lessons' default parameters, on an otherwise idle machine; the
record says which CPU, how many CPUs and when.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from pathlib import Path

from coda import checkpoint

TIMES_FILE = Path(__file__).resolve().parent.parent / "results" / "workbook" / "lesson_times.json"
KINDS = {  # machine kind -> how the sentence names it
    "cpu-native-bf16": "a CPU with native bf16",
    "cpu-no-native-bf16": "a CPU without native bf16",
    "cuda": "a CUDA GPU",
}
FORMAT = 1


def machine_kind(device: str = "cpu") -> str:
    """``"cuda"`` for a CUDA device, else the CPU's kind: ``"cpu-native-bf16"`` or ``"cpu-no-native-bf16"``."""
    if str(device).startswith("cuda"):
        return "cuda"
    from coda.hardware import cpu_info

    return "cpu-native-bf16" if cpu_info().native_bf16 else "cpu-no-native-bf16"


def read_times(path: Path = TIMES_FILE) -> dict:
    """The record (``{"format", "machines": {kind: {mode: {...}}}}``); an empty one if there is no file.

    ``ValueError`` (naming the file) for a file that is not such a record.
    """
    path = Path(path)
    if not path.exists():
        return {"format": FORMAT, "machines": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("machines"), dict):
        raise ValueError(f"{path} is not a lesson-times record (format {FORMAT}, a 'machines' mapping)")
    return data


def record_times(results: Sequence, smoke: bool, device: str = "cpu", path: Path = TIMES_FILE) -> dict:
    """Store the wall times of a successful run of the lessons under this machine's kind.

    Parameters
    ----------
    results : the :class:`coda.workbook.NotebookResult` of every lesson run (``name``, ``seconds``,
        ``ok``); a failed one makes the record refuse (a partial run's times mislead).
    smoke : the mode the lessons ran in.
    device : the device they ran on ("cpu" or "cuda...").
    path : the record file; written atomically.

    Returns the entry written: ``{"notebooks": {name: seconds}, "total_seconds", "cpu",
    "cpus", "date"}``.
    """
    failed = [r.name for r in results if not r.ok]
    if failed or not results:
        raise ValueError(f"not recording lesson times: {'failed: ' + ', '.join(failed) if failed else 'no lessons ran'}")
    from coda.hardware import cpu_info

    entry = {
        "notebooks": {r.name: round(float(r.seconds), 1) for r in results},
        "total_seconds": round(sum(float(r.seconds) for r in results), 1),
        "cpu": cpu_info().describe(),
        "cpus": os.cpu_count(),
        "date": dt.date.today().isoformat(),
    }
    data = read_times(path)
    data["machines"].setdefault(machine_kind(device), {})["smoke" if smoke else "full"] = entry
    checkpoint.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", path)
    return entry


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def timing_sentence(notebook: str, smoke: bool = False, path: Path = TIMES_FILE) -> str:
    """What ``notebook`` (e.g. "03_interpretable_depth.ipynb" or "03") took in ``smoke`` or full mode,
    on every kind of machine measured, e.g. "Measured wall time of this lesson (full mode): 9 s on a
    CPU with native bf16 (AMD EPYC ..., 2 CPUs, 2026-12-02); not measured yet on a CPU without
    native bf16."""
    mode = "smoke" if smoke else "full"
    machines = read_times(path)["machines"]
    parts, missing = [], []
    for kind, text in KINDS.items():
        entry = machines.get(kind, {}).get(mode)
        name = _match(entry["notebooks"], notebook) if entry else None
        if name is None:
            if kind != "cuda":
                missing.append(text)
            continue
        parts.append(f"{_minutes(entry['notebooks'][name])} on {text} ({entry['cpu']}, {entry['cpus']} CPUs, "
                     f"{entry['date']}; all lessons {_minutes(entry['total_seconds'])})")
    sentence = f"Measured wall time of this lesson ({mode} mode): " + ("; ".join(parts) if parts else "none yet")
    if missing:
        sentence += f"; not measured yet on {' or '.join(missing)}"
    return sentence + " (`python -m coda.workbook --full --record-times`)."


def _match(notebooks: dict, notebook: str) -> str | None:
    """The recorded name that is ``notebook`` or starts with its number ("03" -> "03_...ipynb")."""
    if notebook in notebooks:
        return notebook
    hits = [n for n in notebooks if n.split("_")[0] == str(notebook).split("_")[0]]
    return hits[0] if len(hits) == 1 else None
