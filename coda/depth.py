"""Interpretable depth as the journal means it: CoDA layers on the stages of a trained ResNet-20.

A hybrid computes the first ``d`` stages of a trained ResNet-20 (its embedding, started from the
conventional network's weights and fine-tuned) and then the 9L-S's CoDA layers from the same
resolution on (docs/method.md#interpretable-depth-and-hybrids). Its decisions decompose exactly
into contributions of the first CoDA layer's input, not of the pixels: the deeper the
embedding, the deeper the explanation starts. A :class:`Study` measures, for ``d = 0`` (the
pure 9L-S with the same budget), the hybrids ``d = 1, 2, 3`` and the all-conventional network:

* test accuracy on the 10,000 CIFAR-10 test images;
* localisation of the contributions at the input of the first CoDA layer, on grids that are the
  same for every model (:func:`shared_grids`: images that every model classifies correctly);
* as the reference, the pure 9L-S explained from its layer of the same resolution
  (:data:`REFERENCE_LAYER`): what localisation costs when an explanation starts that deep
  without a conventional embedding below it.

Two studies exist (:data:`STUDIES`). ``x4``, the one the workbook draws (:data:`STUDY`): ResNet-20
with its stages four times wider (91% on this project's test images), 12 epochs for every
CoDA-Net, trained on a lent GPU. ``x1``, the earlier one: the plain ResNet-20 (88.0%), 40 epochs
each, trained on CPUs; its embedding was too weak for the trade-off to show.

::

    python -m coda.depth status      # which of the models exist (shipped or finished runs)
    python -m coda.depth evaluate    # results/depth/depth.json (--study x1: depth-x1.json)
    python -m coda.depth table       # the README's markdown table
    python -m coda.depth figure      # figures/04_depth_tradeoff.png (as notebook 04 saves it)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from coda import cli
from coda.checkpoint import load_checkpoint, write_json
from coda.data import PROJECT_ROOT, ImageDataset, load_cifar10
from coda.explainers import layer_explainer
from coda.inference import predict
from coda.metrics import Grids, grids_from_logits, localisation_scores
from coda.models import CoDANet

PURE_LABEL = "pure CoDA-Net (9L-S)"  # d = 0 in tables and figures: no embedding, not a hybrid
DEPTHS = (1, 2, 3)
# The 9L-S layer whose input has the resolution of ResNet-20 stage d's output (32 x 32, 16 x 16,
# 8 x 8; and its width, 16, 32 or 64 channels, at ResNet-20 x 1): where a hybrid's CoDA part begins.
REFERENCE_LAYER = {1: 2, 2: 5, 3: 8}
N_GRIDS = 100
RESULTS_DIR = PROJECT_ROOT / "results" / "depth"
RUNS_DIR = PROJECT_ROOT / "runs"


@dataclass(frozen=True)
class Study:
    """The shipped names of one study's models and the budget they share.

    ``hybrids`` is the hybrids' name with ``{d}`` for the number of ResNet-20 stages; a model
    counts as trained when it is shipped or its run in ``runs/<name>/`` has ``epochs`` epochs.
    """

    key: str
    pure: str  # d = 0: the pure CoDA-Net with the hybrids' budget
    hybrids: str
    conventional: str  # the all-conventional network whose stages embed the hybrids
    width: int  # its stages are ResNet-20's, ``width`` times wider (``resnet_width``)
    epochs: int
    results: Path

    def hybrid_name(self, d: int) -> str:
        """The shipped name of the hybrid on the first ``d`` ResNet-20 stages."""
        return self.hybrids.format(d=d)

    def model_names(self) -> list[str]:
        """Every model of the study, shallowest explanation first: d = 0, 1, 2, 3, the ResNet-20."""
        return [self.pure, *(self.hybrid_name(d) for d in DEPTHS), self.conventional]


STUDIES = {
    "x4": Study("x4", pure="cifar10-9L-S-f8-e12-T1000", hybrids="cifar10-hybrid-d{d}-x4-f8-e12-T1000",
                conventional="cifar10-resnet20x4-e50-T64", width=4, epochs=12, results=RESULTS_DIR / "depth.json"),
    "x1": Study("x1", pure="cifar10-9L-S-f8-T1000", hybrids="cifar10-hybrid-d{d}-f8-T1000",
                conventional="cifar10-resnet20-e70-T64", width=1, epochs=40, results=RESULTS_DIR / "depth-x1.json"),
}
STUDY = STUDIES["x4"]  # the study the notebooks and the README show
RESULTS = STUDY.results


def find_model(name: str, runs_dir: Path = RUNS_DIR, epochs: int = STUDY.epochs) -> str | None:
    """How to load ``name``: its shipped name, else its finished run's checkpoint
    (``runs/<name>/last.pt`` after ``epochs`` epochs), else None."""
    from coda.pretrained import list_pretrained

    if name in list_pretrained():
        return name
    path = Path(runs_dir) / name / "last.pt"
    if path.exists() and load_checkpoint(path)["epoch"] >= epochs:
        return str(path)
    return None


def shared_grids(logits: Sequence[torch.Tensor], test: ImageDataset, n_grids: int, seed: int = 0) -> Grids:
    """Pointing-game grids built from images that *every* model classifies correctly.

    The grids of :func:`coda.metrics.make_grids` take each model's own confident images; to
    compare models on the same grids, the models' logits (N, K) are combined into one set: the
    true class gets the smallest of the models' logits and every other class the largest, so
    an image qualifies only if each model ranks its true class first with sigmoid(logit) > 0.5,
    and the images are ranked by the least confident model.
    """
    if not logits:
        raise ValueError("shared_grids needs the logits of at least one model")
    stacked = torch.stack([lg.float().cpu() for lg in logits])  # (M, N, K)
    true = torch.nn.functional.one_hot(test.labels.cpu(), stacked.shape[-1]).bool()
    joint = torch.where(true, stacked.min(0).values, stacked.max(0).values)
    return grids_from_logits(joint, test, n_grids, seed=seed)


def first_coda_layer_explainer(model: CoDANet):
    """Contributions at the input of the first CoDA layer: the image for a pure CoDA-Net."""
    return "coda" if not len(model.stem) else layer_explainer(0)


def evaluate_depth(models: Mapping[str, CoDANet], test: ImageDataset, n_grids: int = N_GRIDS,
                   seed: int = 0, grids: Grids | None = None) -> list[dict]:
    """One row per model (names as in :meth:`Study.model_names`; missing ones are skipped).

    Row keys: name, d (ResNet-20 stages before the first CoDA layer; 3 and no CoDA layer for
    the ResNet-20), resnet_width (1 for the pure model), parameters, test_accuracy, explained_from, localisation_mean and _median
    (None without CoDA layers), n_grids, and for a hybrid whose d has a reference and a pure
    model (no stem) among ``models``: reference_layer, reference_localisation_mean and _median (the pure model
    from that layer, same grids).
    """
    logits = {name: predict(m, test.images) for name, m in models.items()}  # one pass per model: accuracy and grids
    coda_names = [name for name, m in models.items() if len(m.layers)]
    pure = next((m for m in models.values() if len(m.layers) and not len(m.stem)), None)
    if grids is None and coda_names:
        grids = shared_grids([logits[name] for name in coda_names], test, n_grids, seed)
    rows = []
    for name, model in models.items():
        d = model.config.resnet_stages
        row = {"name": name, "d": d, "resnet_width": model.config.resnet_width,
               "parameters": sum(p.numel() for p in model.parameters()),
               "test_accuracy": (logits[name].argmax(1) == test.labels).float().mean().item(),
               "explained_from": _explained_from(model), "localisation_mean": None,
               "localisation_median": None, "n_grids": 0}
        if len(model.layers):
            loc = localisation_scores(model, grids, first_coda_layer_explainer(model))
            row.update(localisation_mean=loc.mean, localisation_median=loc.median, n_grids=len(grids))
            if d in REFERENCE_LAYER and pure is not None:
                ref = localisation_scores(pure, grids, layer_explainer(REFERENCE_LAYER[d]))
                row.update(reference_layer=REFERENCE_LAYER[d], reference_localisation_mean=ref.mean,
                           reference_localisation_median=ref.median)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _explained_from(model: CoDANet) -> str:
    if not len(model.layers):
        return "nothing (no CoDA layer)"
    if not len(model.stem):
        return "the image (layer 0's input)"
    d, width = model.config.resnet_stages, model.config.resnet_width
    network = "ResNet-20" if width == 1 else f"ResNet-20 x {width}"
    return f"layer 0's input (after {network} stage{'s 1-' if d > 1 else ' '}{d})"


def read_results(path: Path = RESULTS) -> dict | None:
    """``{"rows", "n_grids", "seed", "command", "models"}`` from :func:`evaluate_depth`'s file, or None."""
    path = Path(path)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    if not isinstance(record, dict) or not isinstance(record.get("rows"), list):
        raise ValueError(f"{path}: expected a JSON object with a list 'rows'")
    return record


def markdown_table(rows: Sequence[Mapping]) -> str:
    """The README's table: d, model, parameters, accuracy, localisation, the reference."""

    def loc(mean, median) -> str:
        return "-" if mean is None else f"{mean:.3f} ({median:.3f})"

    lines = ["| d | model | parameters | test accuracy | localisation at the first CoDA layer's input "
             "(mean, median) | reference: the pure 9L-S from the same depth | grids |",
             "|---:|---|---:|---:|---|---|---:|"]
    for r in rows:
        ref = "-"
        if r.get("reference_layer") is not None:
            ref = f"layer {r['reference_layer']}: " + loc(r["reference_localisation_mean"], r["reference_localisation_median"])
        d = f"{r['d']} (all)" if r["explained_from"].startswith("nothing") else (
            f"0 ({PURE_LABEL})" if r["d"] == 0 else str(r["d"]))
        lines.append(f"| {d} | `{r['name']}` | {r['parameters']:,} | {100 * r['test_accuracy']:.2f}% | "
                     f"{loc(r['localisation_mean'], r['localisation_median'])} | {ref} | {r['n_grids'] or '-'} |")
    return "\n".join(lines)


def depth_tick(d: int) -> str:
    """The x tick of depth ``d``: "0\npure CoDA-Net (9L-S)" for the pure model, else "d"."""
    return f"0\n{PURE_LABEL}" if d == 0 else str(d)


def reference_sentences(rows: Sequence[Mapping]) -> list[str]:
    """One sentence per hybrid with a reference: its localisation at its first CoDA layer's input
    against the pure model explained from the same depth (its layer ``REFERENCE_LAYER[d]``), and
    which is higher. Computed from :func:`evaluate_depth`'s rows; [] when no row has a reference."""
    out = []
    for r in sorted((r for r in rows if r.get("reference_layer") is not None), key=lambda r: r["d"]):
        own, ref = r["localisation_mean"], r["reference_localisation_mean"]
        verdict = ("localises better than" if own > ref else "localises worse than" if own < ref
                   else "localises as well as")
        out.append(f"The hybrid on {r['d']} ResNet-20 stage{'s' if r['d'] > 1 else ''}, explained at its layer 0 "
                   f"({own:.3f}), {verdict} the pure model explained from its layer {r['reference_layer']} "
                   f"({ref:.3f}), a difference of {own - ref:+.3f} on the same {r['n_grids']} grids.")
    return out


def _resnet_label(row: Mapping) -> str:
    """"ResNet-20" or "ResNet-20 x k" for the conventional network's row (rows written before
    the width was recorded are of width 1)."""
    width = row.get("resnet_width", 1)
    return "ResNet-20" if width == 1 else f"ResNet-20 x {width}"


def plot_depth(rows: Sequence[Mapping]):
    """Accuracy and localisation against interpretable depth (the number d of ResNet-20 stages
    before the first CoDA layer): the pure model (d = 0, "pure CoDA-Net (9L-S)", a square) and
    the hybrids (d >= 1, circles), the ResNet-20's accuracy as a dashed line, the pure model
    explained from the same depth as the reference. Returns the figure (two panels)."""
    import matplotlib.pyplot as plt

    from coda import plotting

    coda_rows = sorted((r for r in rows if r["localisation_mean"] is not None), key=lambda r: r["d"])
    conventional = [r for r in rows if r["localisation_mean"] is None]
    if not coda_rows:
        raise ValueError("nothing to draw: no model with CoDA layers in the rows")
    pure = [r for r in coda_rows if r["d"] == 0]
    hybrids = [r for r in coda_rows if r["d"] != 0]
    fig, (ax_acc, ax_loc) = plt.subplots(1, 2, figsize=(9.5, 4.6), layout="constrained")
    for ax, key, scale in ((ax_acc, "test_accuracy", 100), (ax_loc, "localisation_mean", 1)):
        if pure:
            ax.plot([0], [scale * pure[0][key]], "s", color=plotting.PALETTE[1], label=PURE_LABEL)
        if hybrids:
            ax.plot([r["d"] for r in hybrids], [scale * r[key] for r in hybrids], "o-", color=plotting.PALETTE[0],
                    label="hybrid: CoDA layers on d ResNet-20 stages (explained at its layer 0)")
    for r in conventional:
        ax_acc.axhline(100 * r["test_accuracy"], color="0.4", ls="--", lw=1,
                       label=f"{_resnet_label(r)}, no CoDA layer ({100 * r['test_accuracy']:.1f}%)")
    refs = [(r["d"], r["reference_localisation_mean"]) for r in coda_rows if r.get("reference_layer") is not None]
    if refs:
        start = [(0, pure[0]["localisation_mean"])] if pure else []
        ax_loc.plot(*zip(*(start + refs), strict=True), "^--", color="0.35",
                    label=f"{PURE_LABEL} explained from layer " + "/".join(
                        str(REFERENCE_LAYER[d]) for d, _ in refs))
    ax_loc.axhline(plotting.CHANCE_3X3, color="0.5", ls=":", lw=1, label="chance (3x3 grid)")
    xlabel = "d: ResNet-20 stages before the first CoDA layer"
    ax_acc.set(xlabel=xlabel, ylabel="test accuracy (%)", title="Accuracy")
    ax_loc.set(xlabel=xlabel, ylabel="localisation (mean share in the right cell)", ylim=(0, 1),
               title=f"Localisation ({coda_rows[0]['n_grids']} shared grids)")
    depths = sorted({r["d"] for r in coda_rows})
    for ax in (ax_acc, ax_loc):
        ax.set_xticks(depths, [depth_tick(d) for d in depths])
        ax.set_xlim(min(depths) - 0.4, max(depths) + 0.4)
    labelled = {}  # one legend below both panels, never on the data
    for ax in (ax_acc, ax_loc):
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            labelled.setdefault(label, handle)
    fig.legend(labelled.values(), labelled.keys(), loc="outside lower center", ncol=2, fontsize="small")
    fig.suptitle("Interpretable depth: a deeper conventional embedding, a deeper explanation")
    return fig


def same_depth_maps(pure: CoDANet, hybrid: CoDANet, images: torch.Tensor,
                    targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """The pure 9L-S and a hybrid explaining the same decisions.

    images: (N, 3, 32, 32) in [0, 1]; targets: (N,) classes. Returns three contribution maps
    (channel sums of :func:`coda.contributions`), keyed by a panel title: the pure model's at
    the pixels, (N, 32, 32); the pure model's at :data:`REFERENCE_LAYER` ``[d]``, the depth
    where the hybrid's explanation starts; the hybrid's at its layer 0, the output of its
    ``d`` ResNet-20 stages (both (N, h, h), h = 32 / 2**(d - 1)).
    """
    from coda.explain import contribution_map, contributions

    d = hybrid.config.resnet_stages
    if d not in REFERENCE_LAYER or len(pure.stem) or len(pure.layers) <= REFERENCE_LAYER[d]:
        raise ValueError(f"expected a pure 9L-S and a hybrid on 1-3 ResNet-20 stages, got d = {d} "
                         f"and a pure model with {len(pure.stem)} stem modules and {len(pure.layers)} CoDA layers")
    panels = (("pure, layer 0 (pixels)", pure, 0), (f"pure, layer {REFERENCE_LAYER[d]}", pure, REFERENCE_LAYER[d]),
              (f"hybrid d = {d}, layer 0", hybrid, 0))
    return {title: contribution_map(contributions(model, images, targets, layer=layer))
            for title, model, layer in panels}


def plot_same_depth_maps(maps: Mapping[str, torch.Tensor], images: torch.Tensor, targets: torch.Tensor,
                         classes: Sequence[str] | None = None):
    """One row per image: the image, then each map of :func:`same_depth_maps`, each on its own
    colour scale (the models' logits differ; the title gives the map's size and sum). Returns
    the figure."""
    import matplotlib.pyplot as plt

    from coda import plotting

    fig, axes = plt.subplots(len(images), 1 + len(maps), figsize=(2.0 * (1 + len(maps)) + 0.8, 2.1 * len(images)),
                             squeeze=False, layout="constrained")
    for i, row in enumerate(axes):
        plotting.show_image(row[0], images[i], title=classes[int(targets[i])] if classes is not None else None)
        for ax, (title, m) in zip(row[1:], maps.items(), strict=True):
            h, w = m.shape[-2:]
            im = plotting.show_contribution_map(ax, m[i], title=f"{title}\n{h}x{w}, sum {float(m[i].sum()):.2f}")
        plotting.add_colorbar(row[1:], im, shared_limit=False).set_label("")  # the scale is said once, below
    fig.suptitle("The same decisions, explained by the pure model and by a hybrid")
    fig.supxlabel("contributions to the logit of the image's class; each map on its own colour scale", fontsize="small")
    return fig


def _load_available(study: Study = STUDY, runs_dir: Path = RUNS_DIR) -> tuple[dict[str, CoDANet], dict[str, dict]]:
    from coda.pretrained import load_model

    models, info = {}, {}
    for name in study.model_names():
        spec = find_model(name, runs_dir, study.epochs)
        if spec is not None:
            models[name], record = load_model(spec)
            info[name] = {k: record.get(k) for k in ("source", "sha256") if k in record}
    return models, info


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog=cli.prog("depth"), description=__doc__.split("\n\n")[0])
    p.add_argument("--study", choices=sorted(STUDIES), default=STUDY.key,
                   help=f"which study (default {STUDY.key}: the one the workbook shows)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="which models of the study exist")
    e = sub.add_parser("evaluate", help="accuracy and localisation of every available model")
    e.add_argument("--n-grids", type=int, default=N_GRIDS)
    e.add_argument("--data", help="data folder (default: $CODA_DATA, else data/)")
    e.add_argument("--out", type=Path, help="results file (default: the study's, in results/depth/)")
    sub.add_parser("table", help="the markdown table of the stored results")
    f = sub.add_parser("figure", help="figures/04_depth_tradeoff.png from the stored results (the figure notebook 04 saves)")
    f.add_argument("--out", default=str(PROJECT_ROOT / "figures"))
    a = p.parse_args(argv)
    study = STUDIES[a.study]
    if a.command == "status":
        for name in study.model_names():
            print(f"{name:<36} {find_model(name, epochs=study.epochs) or 'missing'}")
        return
    if a.command == "evaluate":
        if a.n_grids < 1:
            p.error(f"--n-grids must be >= 1, got {a.n_grids}")
        models, info = _load_available(study)
        if not models:
            p.error(f"no model of the study is available (python -m coda.depth --study {study.key} status)")
        rows = evaluate_depth(models, load_cifar10("test", a.data), a.n_grids)
        command = cli.recorded_command("coda.depth", sys.argv[1:] if argv is None else argv)
        out = a.out or study.results
        write_json({"rows": rows, "n_grids": a.n_grids, "seed": 0, "command": command, "models": info}, out)
        print(out)
        return
    record = read_results(study.results)
    if record is None:
        p.error(f"no results yet: run python -m coda.depth --study {study.key} evaluate (expected {study.results})")
    if a.command == "table":
        print(markdown_table(record["rows"]))
    else:
        from coda import plotting

        plotting.use_style()  # the workbook's style, as the notebooks use it
        name = "04_depth_tradeoff" + ("" if study is STUDY else f"_{study.key}")
        print(plotting.save_figure(plot_depth(record["rows"]), name, a.out))


if __name__ == "__main__":
    main()
