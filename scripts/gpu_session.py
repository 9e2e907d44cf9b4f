"""One lent GPU machine, two calls: train and evaluate what the CPUs cannot in a session.

The device tool gives a session about 15 minutes of one GPU and carries at most 64 MiB with
the checkout per call; whatever a call starts as a daemon (a new process session) runs on while
the machine stays warm, which is 30 s after each call. This script uses that to keep the GPU
busy from the first call to the last. Session 14 wrote it (ResNet-20 at width 1); session 15
ran this version, which trained the interpretable-depth study on ResNet-20 x 4 (its results:
data/training/README.md; earlier versions are in git history):

``start --hold S``
    Call 1, which carries the JPEG packs of the CIFAR-10 training and test images
    (``python -m coda.data pack --splits train test``, in ``data/cifar10-jpeg/``) and the
    captum wheel (``.whl/``). Decodes the packs once, starts CUDA's multi-process service (the
    kernels of several processes then share the GPU instead of taking turns), times one step
    of ResNet-20 x 4 to choose its epochs, launches it as a daemon, runs ``tests/test_cuda.py``
    beside it and reports its progress until S seconds have passed.
``finish --seconds S --out DIR``
    Call 2, at once, which carries the exact test images (``data/cifar10/test.npz``), the
    default model, ``data/pretrained/manifest.json`` (again: the machine drops the copy call 1
    carried) and the default's results folder. Sets the deadline S seconds from now, runs the
    post-hoc evaluation of the default model until then, stops every job at the deadline and
    packs what they made into DIR (the device's ``$OUT``; at most 8 files of 16 MiB).

The jobs (issue 16, the interpretable-depth study, and issue 15's post-hoc baselines):

* ``resnet``: ResNet-20 x :data:`WIDTH` (``--resnet-width``) from scratch, softmax
  cross-entropy, SGD with Nesterov momentum at peak rate 0.2 on batches of 256, weight decay
  5e-4, two warm-up epochs and cosine decay, float32, for as many epochs (30 to 100) as fit in
  :data:`RESNET_SECONDS` by a step timed at the start; exported (provisionally, as
  :func:`embedding_name`), then it launches the hybrids on its stages and the post-hoc job.
  (Session 15: a step of 16.1 ms at batch 256, 50 epochs in 172 s, 90.95%.)
* ``coda1-3``, the hybrids, each fine-tuning the first d stages of the ResNet under CoDA layers:
  one budget for all, :data:`CODA_EPOCHS` epochs at batch 128, Adam at peak rate 1e-3, one
  warm-up epoch, cosine decay, BCE, bf16 autocast. The pure 9L-S with that budget (``d = 0``)
  trained in session 14. (Session 15: 92, 157 and 293 s for d = 3, 2, 1, side by side.)
* ``posthoc``: ``coda.evaluate`` of the default model, the methods of :data:`POSTHOC` in that
  order, each on its grids and removal images; what the results folder holds already is
  skipped, and the grids are those stored there (the CPU's), so GPU and CPU results pair up.
  It starts with the hybrids, once call 2 has brought the default model and the test images.

The per-epoch test accuracy the training jobs log is on the JPEG copy of the test images (a
monitor only); every number the project reports is measured afterwards on the exact ones.
Back on the CPU the returned states are exported with ``coda.pretrained.export_pretrained``.

Getting the data there: the tracked tree is mostly shipped weights and figures, which the
jobs do not need, so for the two calls the large files leave the index and are ignored, and
come back right after (commit nothing in between)::

    git ls-files -z | xargs -0 du -b | awk '$1>100000 && $2!="data/pretrained/manifest.json" {print $2}' > big.txt
    git rm -q --cached --pathspec-from-file=big.txt && sed 's#^#/#' big.txt >> .git/info/exclude
    # ... the two device calls ...
    git reset -q -- $(cat big.txt)    # and remove those lines from .git/info/exclude again

``GPU_SESSION_DRY=1`` runs the same plumbing on the CPU with a few images and epochs.

What sessions 14 and 15 learnt. The daemons run on between the calls as planned. Call 2 must carry
``data/pretrained/manifest.json`` (it stays tracked: the copy call 1 carried is replaced by the
tree's), and the jobs keep the wheels' ``PYTHONPATH``. Grids drawn on the GPU are not the CPU's
(the most confident images of each class are ranked by logits in which the two devices differ:
207 of 500 grids differed in session 14), which is why ``coda.evaluate`` scores the grids stored
in the results folder it writes to. In session 15 the two calls held the machine 194 s and then
526 s (720 of the 900 s): 172 s of ResNet-20 x 4, 293 s of hybrids after it, and post-hoc
methods beside them until the deadline.
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
DEFAULT_NAME = "cifar10-9L-S-f16-T1000"
WIDTH = 4  # ResNet-20 x 4: its stages 4x wider (session 14 ran width 1)
CODA_EPOCHS = 12
DRY = os.environ.get("GPU_SESSION_DRY") == "1"  # a rehearsal on the CPU
DEVICE = "cpu" if DRY else "cuda"
MPS_ENV = {"CUDA_MPS_PIPE_DIRECTORY": "/tmp/mps-pipe", "CUDA_MPS_LOG_DIRECTORY": "/tmp/mps-log"}
# the post-hoc methods issue 15 still lacks, in order of need (occlusion 9x9 led the old default)
POSTHOC = (("occ9", 50, 128), ("occ5", 50, 128), ("intgrad", 50, 128), ("guided_backprop,deeplift", 500, 1024),
           ("lime", 20, 64))

COMMON = ["--seed", "0", "--schedule", "cosine", "--accumulate", "1"]
RESNET = ["--model", "cifar10-resnet20", "--epochs", "100", "--optimizer", "sgd", "--weight-decay", "0.0005",
          "--warmup-epochs", "2.0", "--precision", "fp32", "--loss", "ce", "--batch-size", "256", "--lr", "0.2",
          *COMMON]
CONVENTIONAL_RUNS = {
    "resnet": (f"resnet20x{WIDTH}-b256", [*RESNET, "--resnet-width", str(WIDTH)]),
}
RESNET_SECONDS = 240  # what ResNet-20 x WIDTH may take: its epochs are chosen to fit (start())
HYBRID_STAGES = (3, 2, 1)  # the pure 9L-S at f = 8 (d = 0) trained in session 14, kept on the CPU


def coda_name(d: int) -> str:
    """The run (and shipped) name of the d-stage hybrid; d = 0 is the pure 9L-S."""
    if d == 0:
        return f"cifar10-9L-S-f8-e{CODA_EPOCHS}-T1000"
    return f"cifar10-hybrid-d{d}-x{WIDTH}-f8-e{CODA_EPOCHS}-T1000"


def embedding_name() -> str:
    """The shipped name of ResNet-20 x WIDTH, with the epochs start() chose for it."""
    return f"cifar10-resnet20x{WIDTH}-e{(WORK / 'resnet-epochs').read_text().strip()}-T64"


def coda_args(d: int) -> list[str]:
    args = ["--rank-factor", "8", "--temperature", "1000.0", "--epochs", str(CODA_EPOCHS), "--batch-size", "128",
            "--lr", "0.001", "--warmup-epochs", "1.0", "--optimizer", "adam", "--weight-decay", "0.0",
            "--precision", "auto", "--loss", "bce", "--test-subset", "2000", *COMMON]
    if d == 0:
        return ["--model", "cifar10-9L-S", *args]
    return ["--model", "cifar10-hybrid", "--resnet-stages", str(d), "--resnet-width", str(WIDTH),
            "--embedding-from", embedding_name(), *args]


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
    return (train.first(512), test.first(256)) if DRY else (train, test)


def dry_args(args: list[str]) -> list[str]:
    """In a rehearsal: one or two epochs."""
    if not DRY:
        return args
    args = list(args)
    i = args.index("--epochs")
    args[i + 1] = "2" if "cifar10-resnet20" in args else "1"
    return args


def train_run(args: list[str], out: Path) -> dict:
    """Train (resume) the coda.train run ``args`` in ``out``; its final checkpoint."""
    from coda.checkpoint import load_checkpoint
    from coda.train import config_from_args, train

    cfg, _ = config_from_args(["--out", str(out), *dry_args(args)])
    train_data, test = load_jpeg_data()
    t = time.time()
    train(cfg, out, device=DEVICE, train_data=train_data, test_data=test, save_every=10**9, progress=True)
    ckpt = load_checkpoint(out / "last.pt")
    log(out.name, f"finished {ckpt['epoch']} epochs in {time.time() - t:.0f} s")
    return ckpt


# ----- the jobs --------------------------------------------------------------------------------


def job_conventional(key: str) -> None:
    from coda.pretrained import export_pretrained, load_model
    from coda.train import evaluate_accuracy

    run, args = CONVENTIONAL_RUNS[key]
    args = list(args)
    args[args.index("--epochs") + 1] = (WORK / "resnet-epochs").read_text().strip()
    ckpt = train_run(args, WORK / run)
    # Provisional export, so that the hybrids can name their embedding; the accuracy here is on
    # the JPEG test copy, and the CPU exports again with the exact images.
    _, test = load_jpeg_data()
    result = evaluate_accuracy(load_model(str(WORK / run / "last.pt"))[0].to(DEVICE), test, precision="fp32")
    export_pretrained(WORK / run / "last.pt", embedding_name(), test_accuracy=result["accuracy"],
                      test_images=result["n"])
    log(key, f"exported {embedding_name()} (JPEG test copy: {result['accuracy']:.4f}, epoch {ckpt['epoch']})")
    children = [spawn(f"coda{d}") for d in HYBRID_STAGES] + [spawn("posthoc")]
    for child in children:
        child.wait()


def job_coda(d: int) -> None:
    train_run(coda_args(d), WORK / coda_name(d))


def job_posthoc() -> None:
    """Started with the hybrids (the default model and the exact test images come with call 2)."""
    runs = [(m, ["--n-grids", str(g), "--n-removal", str(r)]) for m, g, r in POSTHOC]
    if DRY:
        runs = [("grad", ["--smoke"]), ("occ5", ["--smoke"])]
    for methods, extra in runs:
        left = deadline() - time.time() - 20
        if left < 20:
            break
        command = [sys.executable, "-m", "coda.evaluate", "--model", DEFAULT_NAME, "--device", DEVICE,
                   "--methods", methods, "--batch-size", "256", "--data", str(ROOT / "data"), *extra]
        log("posthoc", " ".join(command[1:]))
        try:
            subprocess.run(command, timeout=left, check=False)
        except subprocess.TimeoutExpired:
            log("posthoc", f"{methods}: stopped by the deadline")


JOBS = {"resnet": lambda: job_conventional("resnet"), "posthoc": job_posthoc,
        **{f"coda{d}": (lambda d=d: job_coda(d)) for d in HYBRID_STAGES}}


def job_env() -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # keeps the wheels'
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2", "PYTHONPATH": path}
    if (WORK / "mps").exists():
        env.update(MPS_ENV)
    return env


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


def start_mps() -> bool:
    control = shutil.which("nvidia-cuda-mps-control")
    if DRY or control is None:
        return False
    for folder in MPS_ENV.values():
        os.makedirs(folder, exist_ok=True)
    ok = subprocess.run([control, "-d"], env={**os.environ, **MPS_ENV}, timeout=30).returncode == 0
    if ok:
        code = "import torch; x = torch.ones(2048, 2048, device='cuda'); print((x @ x).sum().item())"
        ok = subprocess.run([sys.executable, "-c", code], env={**os.environ, **MPS_ENV}, timeout=60).returncode == 0
    return ok


def resnet_epochs() -> int:
    """As many epochs of ResNet-20 x WIDTH (30 to 100) as fit in :data:`RESNET_SECONDS`, from the
    time of one optimiser step measured here (the data, the test pass each epoch and the jobs
    beside it add about half again)."""
    from coda.train import config_from_args, seconds_per_step

    if DRY:
        return 2
    run, args = CONVENTIONAL_RUNS["resnet"]
    cfg, _ = config_from_args(["--out", str(WORK / run), *args])
    step = seconds_per_step(cfg, DEVICE, steps=10)
    epoch = 1.5 * step * -(-50_000 // cfg.batch_size)
    epochs = max(30, min(100, int(RESNET_SECONDS / epoch)))
    log("start", f"one step of ResNet-20 x {WIDTH} at batch {cfg.batch_size}: {step * 1e3:.1f} ms; "
        f"an epoch about {epoch:.1f} s: {epochs} epochs")
    return epochs


def start(hold: float) -> None:
    """Launch the training as a daemon, test CUDA beside it, and keep the call open until
    ``hold`` seconds after it began, reporting progress (the next call must follow at once)."""
    import torch

    t = time.time()
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "started").touch()
    decode_packs()
    log("start", f"data decoded in {time.time() - t:.1f} s; torch {torch.__version__}, "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")
    if start_mps():
        (WORK / "mps").touch()
        log("start", "MPS started")
    (WORK / "resnet-epochs").write_text(str(resnet_epochs()))
    spawn("resnet", daemon=True)
    log("start", "jobs launched")
    try:
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"],
                       timeout=75, check=False, env=job_env(), cwd=ROOT)
    except subprocess.TimeoutExpired:
        log("start", "tests/test_cuda.py: stopped after 75 s")
    while True:
        tail = (WORK / "resnet.log").read_text().strip().splitlines()[-1:]
        log("resnet", tail[0] if tail else "(no output yet)")
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
    """At most 8 files of at most 16 MiB come back: every run as a compact state (float16 weights,
    no optimiser state; ResNet-20 x 4 alone is 8.6 MB so), one tar per CoDA run."""
    from coda.train import compact_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    runs = {d: coda_name(d) for d in HYBRID_STAGES} | {key: run for key, (run, _) in CONVENTIONAL_RUNS.items()}
    compact = {}
    for key, run in runs.items():
        if (WORK / run / "last.pt").exists():
            compact[key] = WORK / f"{run}.compact.pt"
            compact_checkpoint(WORK / run / "last.pt", compact[key])
    groups = {
        "conventional.tar": [compact.get(key) for key in CONVENTIONAL_RUNS],
        **{f"coda{d}.tar": [compact.get(d)] for d in HYBRID_STAGES},
        "posthoc.tar": [ROOT / "results" / DEFAULT_NAME],
        "logs.tar": list(WORK.glob("*.log")),
    }
    for name, paths in groups.items():
        with tarfile.open(out / name, "w") as tar:
            for p in paths:
                if p is not None and p.exists():
                    tar.add(p, arcname=str(p.relative_to(ROOT)))
        log("pack", f"{name}: {(out / name).stat().st_size / 2**20:.1f} MiB")


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
