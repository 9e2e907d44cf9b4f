"""One lent GPU machine, two calls: carry the recipe study's long run as far as the lease allows.

The device tool gives a session about 15 minutes of one GPU and carries at most 64 MiB with
the checkout per call; whatever a call starts as a daemon (a new process session) runs on while
the machine stays warm, which is 30 s after each call. This script uses that to keep the GPU
training from the first call to the last. Session 16 wrote this version for issue 15's long run
``f32-b64-cosine`` (rank factor 32, batch 64, Adam 1e-3, cosine over 60 epochs; about 0.6
CPU-hours an epoch on one core of a native-bf16 EPYC, and, from the f16 run's 56-65 s alone on
an H200 in session 13, about two minutes an epoch there). Earlier versions, in git history:
session 13's (the end of the f16 run, the paper's recipe from scratch), sessions 14-15's (the
interpretable-depth study on ResNet-20 x 4 and the post-hoc methods of the default).

``start --hold S``
    Call 1. Carries the JPEG packs (``data/cifar10-jpeg/``: the 50,000 training images and the
    first 1,000 test images, the trainer's per-epoch monitor) and the run's committed compact
    state (``data/training/recipes/f32-b64-cosine/``). Decodes the packs, launches the ``long``
    job as a daemon, runs ``tests/test_cuda.py`` beside it and reports its progress until S
    seconds have passed.
``finish --seconds S --out DIR``
    Call 2, at once; carries nothing. Sets the deadline S seconds from now, waits, stops the job
    and packs into DIR (the device's ``$OUT``; at most 8 files of 16 MiB): the run's compact state
    (float16 weights, no optimiser state: 15.6 MB), the compact states of the recipe's last four
    epochs if it reached them (for the weight average), and the logs with a report.

The job ``long`` continues the run from the committed state (a fresh Adam, its learning rate
re-warmed over a quarter epoch, as on a fresh CPU machine) in chunks of 400 steps that end at
epoch boundaries, bf16 autocast ("auto"), until 45 s before the deadline.

Getting the data there. The tracked tree is mostly shipped weights and figures, which the job
does not need, so for the two calls the files over 50 kB leave the index and are ignored, and
come back right after (commit nothing in between)::

    python -m coda.recipes save f32-b64-cosine          # if the committed state is behind the run
    python -m coda.data pack --splits train             # 46.8 MB
    python -m coda.data pack --splits test --first 1000 # 0.9 MB
    git ls-files -z | xargs -0 du -b | awk '$1>50000 && $2!="data/pretrained/manifest.json" {print $2}' > big.txt
    git rm -q --cached --pathspec-from-file=big.txt && sed 's#^#/#' big.txt >> .git/info/exclude
    # call 1: carry data/cifar10-jpeg and data/training/recipes/f32-b64-cosine (about 65.4 MB
    #         with the 2.0 MB of code and manifest); call 2: nothing
    git reset -q -- $(cat big.txt)    # and remove those lines from .git/info/exclude again

Back on the CPU, stop the CPU's run of the recipe, and if the returned state is further along
(its epoch and step), make it the run's state; ``coda.recipes train`` then continues from it
and evaluates it on the exact test images like any other row::

    tar xf logs.tar; cp f32-b64-cosine.compact.pt data/training/recipes/f32-b64-cosine/last.pt
    rm runs/recipes/f32-b64-cosine/last.pt    # train continues from the committed state

Its first row after that describes the machine that evaluated it: add the epochs the GPU trained
to that row's ``machine`` (as session 13 did for the f16 run), and say so in the notes.

``GPU_SESSION_DRY=1`` runs the same plumbing on the CPU with a few images (a rehearsal).

What sessions 13-15 learnt. The daemons run on between the calls as planned; a path carried by
call 1 and ignored stays on the machine for call 2 while it is warm; the jobs must keep the
``PYTHONPATH`` of wheels installed with ``--target``. Grids drawn on the GPU are not the CPU's
(the most confident images of each class are ranked by logits in which the two devices differ),
so the returned state is evaluated on the CPU, where every other row of the study was.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "gpu"
JPEG_DATA = ROOT / "runs" / "gpu-data"  # the decoded JPEG packs, as a coda data folder
LONG_RUN = "f32-b64-cosine"  # the recipe study's long run (coda.recipes)
CHUNK_STEPS = 400
DRY = os.environ.get("GPU_SESSION_DRY") == "1"  # a rehearsal on the CPU
DEVICE = "cpu" if DRY else "cuda"


def log(job: str, text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} {job}] {text}", flush=True)


def deadline() -> float:
    """The time the jobs must stop by: written by ``finish``; until then, far enough ahead."""
    path = WORK / "deadline"
    if path.exists():
        return float(path.read_text())
    return (WORK / "started").stat().st_mtime + 1500


def load_jpeg_data():
    from coda.data import load_cifar10

    train, test = load_cifar10("train", JPEG_DATA), load_cifar10("test", JPEG_DATA)
    return (train.first(256), test.first(64)) if DRY else (train, test)


def committed_state() -> Path:
    from coda.recipes import STATE_DIR

    return STATE_DIR / LONG_RUN / "last.pt"


def start_from(src: Path, out: Path) -> None:
    """Copy the committed state to ``out/last.pt`` unless a run is there already."""
    from coda.checkpoint import load_checkpoint, save_checkpoint

    if not src.exists():
        raise ValueError(f"{src} does not exist: commit the run's state first (python -m coda.recipes save {LONG_RUN})")
    out.mkdir(parents=True, exist_ok=True)
    if (out / "last.pt").exists():
        return
    shutil.copyfile(src, out / "last.pt")
    if DRY:  # a few images make a shorter epoch than the state's step: start that epoch again
        ckpt = load_checkpoint(out / "last.pt")
        ckpt["step"] = 0
        save_checkpoint(ckpt, out / "last.pt")


def train_until(cfg, out: Path, stop_at, train_data, test_data, keep=(), chunk: int = CHUNK_STEPS) -> dict:
    """Train ``cfg`` in ``out`` (resumable) until it is finished or the clock passes ``stop_at()``
    (read before every chunk: call 2 sets the deadline while the job runs).

    Chunks end at epoch boundaries, where the compact state of each epoch in ``keep`` is kept
    as ``out/epoch-<e>.pt``, and are shortened to end by ``stop_at()`` at the speed of the chunk
    before (a chunk cut off by the deadline would be lost). Returns the last checkpoint.
    """
    from coda.checkpoint import load_checkpoint
    from coda.recipes import chunk_to_epoch_end, keep_epoch_state
    from coda.train import train

    steps_per_epoch = len(train_data) // cfg.batch_size
    path = out / "last.pt"
    seconds_per_step = None
    while True:
        ckpt = load_checkpoint(path)
        keep_epoch_state(path, ckpt, keep)
        steps = chunk_to_epoch_end(ckpt, chunk, steps_per_epoch)
        if seconds_per_step is not None:
            steps = min(steps, int((stop_at() - time.time()) / seconds_per_step))
        if ckpt["epoch"] >= cfg.epochs or time.time() > stop_at() or steps < 1:
            return ckpt
        t = time.time()
        train(cfg, out, device=DEVICE, train_data=train_data, test_data=test_data, stop_after_steps=steps,
              save_every=steps, progress=False)
        seconds_per_step = (time.time() - t) / steps  # the monitor and checkpoint included
        ckpt = load_checkpoint(path)
        history = ckpt["history"][-1] if ckpt["history"] else {}
        log(out.name, f"epoch {ckpt['epoch']} step {ckpt['step']}: {steps} steps in {time.time() - t:.1f} s "
            f"({steps * cfg.batch_size / (time.time() - t):.0f} images/s); last epoch's monitor "
            f"{history.get('test_accuracy')}")


# ----- the job ---------------------------------------------------------------------------------


def job_long() -> None:
    """The recipe study's long run, from its committed state until 45 s before the deadline."""
    from coda.recipes import end_epochs, get_recipe

    recipe = get_recipe(LONG_RUN)
    cfg = recipe.config
    out = WORK / LONG_RUN
    start_from(committed_state(), out)
    train_data, test = load_jpeg_data()
    t = time.time()
    report = {"recipe": LONG_RUN, "device": _device_name(), "from": _position(out / "last.pt")}
    write_report(report)  # pack() completes it if the deadline stops the job
    last = train_until(cfg, out, lambda: deadline() - 45, train_data, test, keep=end_epochs(recipe))
    write_report({**report, "to": _position(out / "last.pt"), "seconds": round(time.time() - t, 1),
                  "history": last["history"][-10:]})
    log("long", f"epoch {report['from']['epoch']} step {report['from']['step']} -> epoch {last['epoch']} "
        f"step {last['step']} in {time.time() - t:.0f} s")


def write_report(report: dict) -> None:
    import json

    (WORK / "long-report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")


def _position(path: Path) -> dict:
    from coda.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    return {"epoch": ckpt["epoch"], "step": ckpt["step"], "cpu_hours": round(ckpt.get("cpu_time", 0.0) / 3600, 3)}


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() and not DRY else "cpu"


JOBS = {"long": job_long}


def job_env() -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # keeps the wheels'
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2", "PYTHONPATH": path}


def spawn(name: str, daemon: bool = False) -> subprocess.Popen:
    """Run job ``name`` in its own process, its output in runs/gpu/<name>.log. A daemon starts a
    new process session (it outlives the call) and records its group in runs/gpu/<name>.pid."""
    logf = open(WORK / f"{name}.log", "a")
    proc = subprocess.Popen([sys.executable, __file__, "job", name], stdout=logf, stderr=subprocess.STDOUT,
                            env=job_env(), start_new_session=daemon, cwd=ROOT)
    if daemon:
        (WORK / f"{name}.pid").write_text(str(proc.pid))
    return proc


# ----- the two calls ---------------------------------------------------------------------------


def decode_packs() -> None:
    """runs/gpu-data/cifar10/{train,test}.npz from the JPEG packs in data/cifar10-jpeg/."""
    import numpy as np

    from coda.data import read_jpeg_pack

    folder = JPEG_DATA / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        if not (folder / f"{split}.npz").exists():
            images, labels, classes = read_jpeg_pack(ROOT / "data" / "cifar10-jpeg" / f"{split}.npz")
            np.savez(folder / f"{split}.tmp.npz", images=images, labels=labels, classes=np.array(classes))
            os.replace(folder / f"{split}.tmp.npz", folder / f"{split}.npz")


def start(hold: float) -> None:
    """Launch the long run as a daemon, test CUDA beside it, and keep the call open until
    ``hold`` seconds after it began, reporting progress (the next call must follow at once)."""
    import torch

    t = time.time()
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "started").touch()
    decode_packs()
    log("start", f"data decoded in {time.time() - t:.1f} s; torch {torch.__version__}, {_device_name()}")
    spawn("long", daemon=True)
    log("start", "long run launched")
    try:
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"],
                       timeout=75, check=False, env=job_env(), cwd=ROOT)
    except subprocess.TimeoutExpired:
        log("start", "tests/test_cuda.py: stopped after 75 s")
    while True:
        tail = (WORK / "long.log").read_text().strip().splitlines()[-1:]
        log("long", tail[0] if tail else "(no output yet)")
        if time.time() - t > hold - 15:
            break
        time.sleep(min(15, max(1, hold - 15 - (time.time() - t))))


def stop_all() -> None:
    for pid_file in WORK.glob("*.pid"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            log("finish", f"{pid_file.stem} stopped")
        except ProcessLookupError:
            pass


def finish(seconds: float, out: Path) -> None:
    t0 = time.time()
    stop_at = t0 + seconds - 45  # the rest is for packing
    (WORK / "deadline").write_text(str(stop_at))
    while time.time() < stop_at:
        time.sleep(5)
        if int(time.time() - t0) % 60 < 5:
            running = [p.stem for p in WORK.glob("*.pid") if _alive(int(p.read_text()))]
            log("finish", f"running: {running}")
            if not running:
                break
    stop_all()
    time.sleep(2)
    pack(out)
    log("finish", f"done in {time.time() - t0:.0f} s")


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def pack(out: Path) -> None:
    """The run's compact state and those of its kept epochs (15.6 MB each at rank factor 32, each
    its own file: the device returns files of at most 16 MiB), and a tar of the logs and report."""
    import json

    from coda.train import compact_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    run = WORK / LONG_RUN
    if (run / "last.pt").exists():
        compact_checkpoint(run / "last.pt", out / f"{LONG_RUN}.compact.pt")
        report_path = WORK / "long-report.json"
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        if "to" not in report:  # the deadline stopped the job: where its last chunk left the run
            write_report({**report, "to": _position(run / "last.pt"), "stopped_by_the_deadline": True})
    for kept in sorted(run.glob("epoch-*.pt")):
        shutil.copyfile(kept, out / f"{LONG_RUN}.{kept.name}")
    with tarfile.open(out / "logs.tar", "w") as tar:
        for p in [*WORK.glob("*.log"), *WORK.glob("*-report.json")]:
            tar.add(p, arcname=str(p.relative_to(ROOT)))
    for p in sorted(out.iterdir()):
        log("pack", f"{p.name}: {p.stat().st_size / 2**20:.1f} MiB")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    st = sub.add_parser("start")
    st.add_argument("--hold", type=float, default=0.0, help="keep the call open this many seconds")
    f = sub.add_parser("finish")
    f.add_argument("--seconds", type=float, required=True)
    f.add_argument("--out", type=Path, required=True)
    j = sub.add_parser("job")
    j.add_argument("name", choices=sorted(JOBS))
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if a.command == "start":
        start(a.hold)
    elif a.command == "finish":
        finish(a.seconds, a.out)
    else:
        JOBS[a.name]()


if __name__ == "__main__":
    main()
