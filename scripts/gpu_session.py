"""One lent GPU machine, one call: finish, train and evaluate what the CPUs cannot in a session.

The device tool gives a session about 15 minutes of one GPU and carries at most 64 MiB with the
checkout, so this script is written to run unattended under a hard deadline and to bring back
what it made as a few files. Two commands, run in the repository root of the device's copy:

``smoke``
    Decodes the CIFAR-10 JPEG pack (``python -m coda.data pack``, carried in
    ``data/cifar10-jpeg/``) once into ``runs/gpu-data/cifar10/train.npz``, runs
    ``tests/test_cuda.py`` and times one optimiser step of each model the main command trains.
``main --seconds S --out DIR``
    Runs these jobs side by side on the GPU, each its own process, and stops them all S seconds
    after the start, then packs their results into DIR (the device's ``$OUT``):

    * ``f16``: the recipe study's long run ``f16-b64-cosine`` from its committed compact state
      (copied to ``runs/gpu-in/f16-b64-cosine.pt``) to the end of its 60-epoch cosine, keeping
      the compact state of each of the last four epochs; then the weight-average rule (the
      average of the last four epochs ships if it localises better on 100 grids than the last
      state), export as ``cifar10-9L-S-f16-T1000`` (the new default) and the full evaluation:
      every cheap method on 500 grids and 1,024 removal images, the expensive ones (IntGrad,
      5x5 and 9x9 occlusion, LIME) on 50 grids and 128 removal images.
    * ``resnet``: the cross-entropy ResNet-20 ``cifar10-resnet20-ce-T64`` from its committed
      checkpoint to epoch 50, exported; then the three hybrids ``cifar10-hybrid-d{1,2,3}-f8-T1000``
      on its stages, side by side, as far as the time allows (compact states come back).
    * ``paper``: the paper's exact recipe from a random initialisation (9L-S, rank factor 32,
      T = 1000, batch 16, Adam 2.5e-4 divided by 1.5 every 30 epochs, 200 epochs) as far as
      the time allows; its compact state and a 500-grid evaluation come back.

Every job checkpoints as it goes, so a job stopped at the deadline still returns its last state.
``results/recipes/NOTES.md`` says how the returned files were used (session 13).

Getting the data there. The tracked tree is mostly shipped weights and figures (58 MB), which
the jobs do not need, so for the calls only take the large files out of the index and ignore
them, then put them back (commit nothing in between)::

    git ls-files -z | xargs -0 du -b | awk '$1>100000 && $2!="data/pretrained/manifest.json" {print $2}' > big.txt
    git rm -q --cached --pathspec-from-file=big.txt && sed 's#^#/#' big.txt >> .git/info/exclude
    # ... the device calls ...
    git reset -q -- $(cat big.txt)    # and remove those lines from .git/info/exclude again

Call 1 carries ``data/cifar10-jpeg`` (the training pack), ``runs/gpu-in`` (the committed states
to continue) and ``.whl`` (captum, which the GPU image lacks) and runs ``smoke``; call 2, within
the 30 s a machine stays warm, carries ``data/cifar10`` (the exact ``test.npz``) and runs
``main``: ignored paths the first call wrote stay on the machine. ``GPU_SESSION_DRY=1`` runs
the same plumbing on the CPU with a few images, a rehearsal before a lease.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IN = ROOT / "runs" / "gpu-in"
WORK = ROOT / "runs" / "gpu"
DATA = ROOT / "runs" / "gpu-data"
DEFAULT_NAME = "cifar10-9L-S-f16-T1000"
RESNET_NAME = "cifar10-resnet20-ce-T64"
RESNET_ARGS = ["--model", "cifar10-resnet20", "--epochs", "50", "--batch-size", "128", "--accumulate", "1",
               "--seed", "0", "--lr", "0.1", "--warmup-epochs", "1.0", "--schedule", "cosine", "--optimizer", "sgd",
               "--weight-decay", "0.0005", "--precision", "fp32", "--loss", "ce"]
CHEAP = "coda,grad,ixg,gradcam,guided_backprop,deeplift"
EXPENSIVE = "intgrad,occ5,occ9,lime"
# GPU_SESSION_DRY=1: the same plumbing on the CPU with a few images (a rehearsal before a lease).
DRY = os.environ.get("GPU_SESSION_DRY") == "1"
DEVICE = "cpu" if DRY else "cuda"


def log(job: str, text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} {job}] {text}", flush=True)


@contextmanager
def manifest_lock():
    """Exports of several jobs read-modify-write data/pretrained/manifest.json: one at a time."""
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / "manifest.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def load_data():
    from coda.data import load_cifar10

    train, test = load_cifar10("train", DATA), load_cifar10("test", DATA)
    return (train.first(256), test.first(300)) if DRY else (train, test)


def start_from(src: Path, out: Path) -> None:
    """Copy a committed state to ``out/last.pt`` unless the run there is further along."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / "last.pt").exists():
        return
    shutil.copyfile(src, out / "last.pt")
    if DRY:  # a few images make a shorter epoch than the state's step: start that epoch again
        from coda.checkpoint import load_checkpoint, save_checkpoint

        ckpt = load_checkpoint(out / "last.pt")
        ckpt["step"] = 0
        ckpt["epoch"] = int(os.environ.get("GPU_SESSION_DRY_EPOCH", ckpt["epoch"]))
        save_checkpoint(ckpt, out / "last.pt")


def train_until(cfg, out: Path, stop_at: float, train_data, test_data, keep_epochs=(), chunk: int = 400) -> dict:
    """Train ``cfg`` in ``out`` (resumable) until it is finished or the clock passes ``stop_at``.

    Chunks end at epoch boundaries, where the compact state of each epoch in ``keep_epochs``
    is kept as ``out/epoch-<e>.pt``. Returns the last checkpoint.
    """
    from coda.checkpoint import load_checkpoint
    from coda.train import compact_checkpoint, train

    steps_per_epoch = len(train_data) // cfg.batch_size
    path = out / "last.pt"
    while True:
        ckpt = load_checkpoint(path) if path.exists() else {"epoch": 0, "step": 0}
        if ckpt["step"] == 0 and ckpt["epoch"] in keep_epochs and not (out / f"epoch-{ckpt['epoch']}.pt").exists():
            compact_checkpoint(path, out / f"epoch-{ckpt['epoch']}.pt")
        if ckpt["epoch"] >= cfg.epochs or time.time() > stop_at:
            return ckpt
        steps = max(1, min(chunk, steps_per_epoch - ckpt["step"]))
        t = time.time()
        train(cfg, out, device=DEVICE, train_data=train_data, test_data=test_data, stop_after_steps=steps,
              save_every=steps, progress=False)
        ckpt = load_checkpoint(path)
        history = ckpt["history"][-1] if ckpt["history"] else {}
        log(out.name, f"epoch {ckpt['epoch']} step {ckpt['step']}: {steps} steps in {time.time() - t:.1f} s; "
            f"last epoch test {history.get('test_accuracy')}")


def score(path: Path, test, n_grids: int) -> dict:
    """Accuracy on the 10,000 test images and localisation on ``n_grids`` grids, on the GPU."""
    from coda.checkpoint import load_checkpoint
    from coda.pretrained import model_from_checkpoint
    from coda.recipes import evaluate_row

    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt).to(DEVICE).eval()
    return {"checkpoint": path.name, "epoch": ckpt["epoch"], "step": ckpt["step"],
            "averaged_from": ckpt.get("averaged_from"), **evaluate_row(model, test, n_grids)}


def export(path: Path, name: str, test, default: bool = False) -> dict:
    """Ship the checkpoint ``path`` as ``name`` (data/pretrained), its accuracy measured as stored."""
    from coda.checkpoint import load_checkpoint
    from coda.pretrained import as_stored, export_pretrained, model_from_checkpoint
    from coda.train import evaluate_accuracy

    model = as_stored(model_from_checkpoint(load_checkpoint(path))).to(DEVICE)
    result = evaluate_accuracy(model, test, precision="fp32")
    with manifest_lock():
        export_pretrained(path, name, test_accuracy=result["accuracy"], per_class=result["per_class"],
                          test_images=result["n"], default=default)
    log(name, f"exported: test accuracy {result['accuracy']:.4f}")
    return {"name": name, "test_accuracy": result["accuracy"]}


def write_json(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n")


# ----- the jobs --------------------------------------------------------------------------------


def job_f16(deadline: float) -> None:
    from coda.recipes import get_recipe
    from coda.train import average_checkpoints, compact_checkpoint

    cfg = get_recipe("f16-b64-cosine").config
    out = WORK / "f16-b64-cosine"
    start_from(IN / "f16-b64-cosine.pt", out)
    train_data, test = load_data()
    t = time.time()
    last = train_until(cfg, out, deadline - 150, train_data, test, keep_epochs=(57, 58, 59, 60), chunk=800)
    report = {"train_seconds": round(time.time() - t, 1), "epoch": last["epoch"], "step": last["step"]}
    write_json(report, WORK / "f16-report.json")
    if last["epoch"] < cfg.epochs:
        log("f16", "not finished by the deadline")
        compact_checkpoint(out / "last.pt", WORK / "f16-b64-cosine.compact.pt")
        return
    states = [out / f"epoch-{e}.pt" for e in (57, 58, 59, 60) if (out / f"epoch-{e}.pt").exists()]
    average_checkpoints(states, out / "avg.pt")
    report["averaged_epochs"] = [p.stem for p in states]
    rows = {k: score(out / f"{k}.pt", test, 5 if DRY else 100) for k in ("epoch-60", "avg")}
    chosen = "avg" if rows["avg"]["localisation_mean"] > rows["epoch-60"]["localisation_mean"] else "epoch-60"
    report.update(scores_100_grids=rows, chosen=chosen)
    write_json(report, WORK / "f16-report.json")
    log("f16", f"100 grids: last {rows['epoch-60']['localisation_mean']:.4f}, avg {rows['avg']['localisation_mean']:.4f}"
        f" -> {chosen}")
    report["export"] = export(out / f"{chosen}.pt", DEFAULT_NAME, test, default=True)
    write_json(report, WORK / "f16-report.json")
    results = ROOT / "results" / DEFAULT_NAME
    runs = ((CHEAP, []), (EXPENSIVE, ["--n-grids", "50", "--n-removal", "128"]))
    if DRY:
        runs = (("coda,grad", ["--smoke"]), ("occ9", ["--smoke"]))
    for methods, extra in runs:
        left = deadline - time.time()
        if left < 30:
            break
        command = [sys.executable, "-m", "coda.evaluate", "--model", DEFAULT_NAME, "--device", DEVICE,
                   "--methods", methods, "--batch-size", "256", "--data", str(DATA), "--out", str(results), *extra]
        log("f16", " ".join(command[1:]))
        try:
            subprocess.run(command, timeout=left - 10, check=False)
        except subprocess.TimeoutExpired:
            log("f16", "evaluation stopped by the deadline")


def job_resnet(deadline: float) -> None:
    from coda.train import config_from_args

    cfg, _ = config_from_args(["--out", "x", *RESNET_ARGS])
    out = WORK / RESNET_NAME
    start_from(IN / "resnet20-ce.pt", out)
    train_data, test = load_data()
    t = time.time()
    last = train_until(cfg, out, deadline - 60, train_data, test, chunk=400)
    report = {"train_seconds": round(time.time() - t, 1), "epoch": last["epoch"], "step": last["step"],
              "history": last["history"][-3:]}
    write_json(report, WORK / "resnet-report.json")
    if last["epoch"] < cfg.epochs:
        return
    report["export"] = export(out / "last.pt", RESNET_NAME, test)
    write_json(report, WORK / "resnet-report.json")
    children = [subprocess.Popen([sys.executable, __file__, "job", f"hybrid{d}", "--deadline", str(deadline)])
                for d in (3, 2, 1)]
    for child in children:
        child.wait()


def job_hybrid(d: int, deadline: float) -> None:
    from coda.train import compact_checkpoint, config_from_args

    name = f"cifar10-hybrid-d{d}-f8-T1000"
    cfg, _ = config_from_args([
        "--out", "x", "--model", "cifar10-hybrid", "--temperature", "1000.0", "--rank-factor", "8",
        "--resnet-stages", str(d), "--epochs", "40", "--batch-size", "64", "--accumulate", "1", "--seed", "0",
        "--lr", "0.001", "--warmup-epochs", "1.0", "--schedule", "cosine", "--optimizer", "adam",
        "--weight-decay", "0.0", "--precision", "auto", "--embedding-from", RESNET_NAME])
    out = WORK / name
    out.mkdir(parents=True, exist_ok=True)
    train_data, test = load_data()
    t = time.time()
    last = train_until(cfg, out, deadline - 45, train_data, test, chunk=800)
    compact_checkpoint(out / "last.pt", WORK / f"{name}.compact.pt")
    write_json({"train_seconds": round(time.time() - t, 1), "epoch": last["epoch"], "step": last["step"],
                "history": last["history"]}, WORK / f"hybrid-d{d}-report.json")


def paper_config():
    from coda.train import TrainConfig

    return TrainConfig(model="cifar10-9L-S", model_overrides={"rank_factor": 32, "temperature": 1000.0},
                       epochs=200, batch_size=16, lr=2.5e-4, schedule="paper", warmup_epochs=0.0,
                       precision="auto", seed=0, test_subset=2000)


def job_paper(deadline: float) -> None:
    from coda.train import compact_checkpoint

    out = WORK / "f32-b16-paper-gpu"
    out.mkdir(parents=True, exist_ok=True)
    train_data, test = load_data()
    t = time.time()
    last = train_until(paper_config(), out, deadline - 100, train_data, test, chunk=1000)
    compact_checkpoint(out / "last.pt", WORK / "f32-b16-paper-gpu.compact.pt")
    report = {"train_seconds": round(time.time() - t, 1), "epoch": last["epoch"], "step": last["step"],
              "history": last["history"]}
    write_json(report, WORK / "paper-report.json")
    report["score_500_grids"] = score(WORK / "f32-b16-paper-gpu.compact.pt", test, 5 if DRY else 500)
    write_json(report, WORK / "paper-report.json")


JOBS = {"f16": job_f16, "resnet": job_resnet, "paper": job_paper,
        **{f"hybrid{d}": (lambda deadline, d=d: job_hybrid(d, deadline)) for d in (1, 2, 3)}}


# ----- the two commands ------------------------------------------------------------------------


def decode_pack() -> None:
    """runs/gpu-data/cifar10/train.npz from the JPEG pack; test.npz copied from data/cifar10/."""
    import numpy as np

    from coda.data import read_jpeg_pack

    folder = DATA / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "train.npz").exists():
        images, labels, classes = read_jpeg_pack(ROOT / "data" / "cifar10-jpeg" / "train.npz")
        np.savez(folder / "train.tmp.npz", images=images, labels=labels, classes=np.array(classes))
        os.replace(folder / "train.tmp.npz", folder / "train.npz")
    if (ROOT / "data" / "cifar10" / "test.npz").exists():
        shutil.copyfile(ROOT / "data" / "cifar10" / "test.npz", folder / "test.npz")


MPS_ENV = {"CUDA_MPS_PIPE_DIRECTORY": "/tmp/mps-pipe", "CUDA_MPS_LOG_DIRECTORY": "/tmp/mps-log"}


def mps(command: str) -> bool:
    """Start ("start") or stop ("quit") CUDA's multi-process service, which lets the kernels of
    several processes share the GPU at once instead of taking turns. False if it is missing."""
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        return False
    for folder in MPS_ENV.values():
        os.makedirs(folder, exist_ok=True)
    env = {**os.environ, **MPS_ENV}
    if command == "start":
        return subprocess.run([control, "-d"], env=env, timeout=30).returncode == 0
    return subprocess.run([control], input="quit\n", text=True, env=env, timeout=30).returncode == 0


def check_mps() -> None:
    """Two processes on the GPU under MPS; runs/gpu-data/mps-ok records that it worked."""
    if not mps("start"):
        log("smoke", "no MPS")
        return
    code = "import torch; x = torch.ones(4096, 4096, device='cuda'); print((x @ x).sum().item())"
    env = {**os.environ, **MPS_ENV}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(2)]
    try:
        ok = all(p.wait(timeout=90) == 0 for p in procs)
    except subprocess.TimeoutExpired:
        ok = False
        for p in procs:
            p.kill()
    mps("quit")
    log("smoke", f"MPS with two processes: {'works' if ok else 'FAILED'}")
    if ok:
        (DATA / "mps-ok").touch()


def smoke() -> None:
    import torch

    from coda.train import TrainConfig, config_from_args, seconds_per_step

    t = time.time()
    decode_pack()
    log("smoke", f"data decoded in {time.time() - t:.1f} s; torch {torch.__version__}, {torch.cuda.get_device_name()}")
    try:
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"],
                       timeout=120, check=False)
    except subprocess.TimeoutExpired:
        log("smoke", "tests/test_cuda.py: stopped after 120 s")
    configs = {
        "f16-b64 (bf16)": TrainConfig(model="cifar10-9L-S", model_overrides={"rank_factor": 16, "temperature": 1000.0},
                                      batch_size=64),
        "paper f32-b16 (bf16)": paper_config(),
        "resnet20 b128 (fp32)": config_from_args(["--out", "x", *RESNET_ARGS])[0],
        "hybrid d1 b64 (bf16)": TrainConfig(model="cifar10-hybrid",
                                            model_overrides={"resnet_stages": 1, "rank_factor": 8}, batch_size=64),
    }
    for name, cfg in configs.items():
        seconds = seconds_per_step(cfg, "cuda", steps=20)
        log("smoke", f"{name}: {seconds * 1000:.1f} ms per step, {cfg.batch_size / seconds:.0f} images/s")
    check_mps()


def main_command(seconds: float, out: Path) -> None:
    start = time.time()
    deadline = start + seconds - 40  # the jobs end by then; the rest is for packing
    decode_pack()
    WORK.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "4"}
    if (DATA / "mps-ok").exists() and mps("start"):
        env.update(MPS_ENV)
        log("main", "MPS started")
    procs = {}
    for name in ("f16", "resnet", "paper"):
        logf = open(WORK / f"{name}.log", "w")
        procs[name] = subprocess.Popen([sys.executable, __file__, "job", name, "--deadline", str(deadline)],
                                       stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    while time.time() < deadline + 15 and any(p.poll() is None for p in procs.values()):
        time.sleep(2)
    for name, p in procs.items():
        if p.poll() is None:
            log("main", f"{name} still running at the deadline: stopped")
            os.killpg(p.pid, signal.SIGKILL)
    if "CUDA_MPS_PIPE_DIRECTORY" in env:
        mps("quit")
    pack(out)
    log("main", f"done in {time.time() - start:.0f} s")


def pack(out: Path) -> None:
    """At most 8 files of at most 16 MiB come back: the models in three tars, the rest in one."""
    out.mkdir(parents=True, exist_ok=True)
    groups = {
        "f16.tar": [WORK / "f16-b64-cosine" / "epoch-60.pt", ROOT / "data" / "pretrained" / f"{DEFAULT_NAME}.pt",
                    WORK / "f16-b64-cosine.compact.pt"],  # (the average's weights are the export's if it won)
        "paper.tar": [WORK / "f32-b16-paper-gpu.compact.pt"],
        "resnet-hybrids.tar": [WORK / RESNET_NAME / "last.pt", ROOT / "data" / "pretrained" / f"{RESNET_NAME}.pt",
                               *(WORK / f"cifar10-hybrid-d{d}-f8-T1000.compact.pt" for d in (1, 2, 3))],
        "results.tar": [*WORK.glob("*.json"), *WORK.glob("*.log"), ROOT / "data" / "pretrained" / "manifest.json",
                        *(ROOT / "data" / "pretrained").glob("*.md"), ROOT / "results" / DEFAULT_NAME],
    }
    for name, paths in groups.items():
        with tarfile.open(out / name, "w") as tar:
            for p in paths:
                if p.exists():
                    tar.add(p, arcname=str(p.relative_to(ROOT)))
        log("pack", f"{name}: {(out / name).stat().st_size / 2**20:.1f} MiB")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("smoke")
    m = sub.add_parser("main")
    m.add_argument("--seconds", type=float, required=True)
    m.add_argument("--out", type=Path, required=True)
    j = sub.add_parser("job")
    j.add_argument("name", choices=sorted(JOBS))
    j.add_argument("--deadline", type=float, required=True)
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if a.command == "smoke":
        smoke()
    elif a.command == "main":
        main_command(a.seconds, a.out)
    else:
        JOBS[a.name](a.deadline)


if __name__ == "__main__":
    main()
