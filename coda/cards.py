"""Model cards of the shipped models: the markdown ``NAME.md`` generated from a manifest entry.

:func:`model_card` writes how a model was built and trained, how well it does, how to retrain
and load it; :mod:`coda.pretrained` calls it when it exports, re-stores or retires a model.
Plain text from plain data: this module imports no trainer and no weights.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from coda.hardware import cpu_info
from coda.models import RESNET_STAGE_ENDS

PRECISION_TEXT = {
    # What "auto" meant for runs whose history does not record the precision that ran.
    "auto": "precision auto (bf16 autocast on every CPU, as 'auto' meant before 2026-12)",
    "fp32": "fp32",
    "bf16": "bf16 autocast",
    "fp16": "fp16 autocast",
}
RESUME_TEXT = (
    "Rerunning the same command resumes from `runs/{name}/last.pt`. A resumed run ends with the same "
    "weights, optimiser state and per-epoch losses and accuracies as an uninterrupted one; only its "
    "wall time and images/s differ. (Checkpoints written before 2026-12 did not keep the running sums "
    "of the epoch in progress: a run resumed from one of them recorded only the steps after the resume "
    "in that epoch's train loss and accuracy.)"
)


def card_notes(card: Path) -> str:
    """The "Why this architecture" section of an existing card (empty if there is none)."""
    if not card.exists():
        return ""
    notes = card.read_text().partition("## Why this architecture\n\n")[2].strip()
    return "" if notes == "(no notes given)" else notes


def describe_machine() -> str:
    """A one-line description of this machine (for model cards)."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_info().describe()
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, {device}, torch {torch.__version__}"


def network_kind(mc: dict) -> str:
    """What kind of network the model config ``mc`` (a dict) builds, for the card's first line."""
    resnet, width = mc.get("resnet_stages", 0), mc.get("resnet_width", 1)
    resnet20 = "ResNet-20" if width == 1 else f"ResNet-20 x {width} (every stage {width} times wider)"
    if not _n_coda_layers(mc):
        return f"{resnet20} (He et al. 2016), an all-conventional CNN (no CoDA layer)" if resnet else \
            "An all-conventional CNN (no CoDA layer)"
    if resnet:
        return f"A hybrid CoDA-Net (the first {resnet} stage(s) of {resnet20}, CoDA layers)"
    return "A hybrid CoDA-Net (conventional stem, CoDA layers)" if mc["stem_depth"] else "A CoDA-Net"


def model_card(entry: dict, notes: str = "") -> str:
    """The markdown model card of a manifest ``entry`` (see :func:`export_pretrained`)."""
    name = entry["file"].removesuffix(".pt")
    mc = entry["model_config"]
    kind = network_kind(mc)
    sections = [
        f"# {name}\n\n{kind} for CIFAR-10, trained with `coda.train` and exported with "
        "`python -m coda.pretrained export`. Generated from the training checkpoint; do not edit by hand.",
        *([_retired_text(entry)] if entry.get("retired") else []),
        _summary_table(entry),
        _layer_table(entry["model_config"]),
        _per_class_table(entry),
        _history_table(entry["history"]),
        f"## Retrain\n\n```bash\n{entry['retrain']}\n```\n\n{RESUME_TEXT.format(name=name)}",
        f"## Load\n\n```python\nfrom coda.pretrained import load_pretrained\n\n"
        f"model = load_pretrained({name!r})  # checks the SHA-256 against manifest.json\n```",
        "## Why this architecture\n\n" + (notes.strip() or "(no notes given)"),
    ]
    return "\n\n".join(sections) + "\n"


def _summary_table(entry: dict) -> str:
    mc, tc = entry["model_config"], entry["train_config"]
    rows = [
        ("architecture", f"`{_build_call(entry['model'], tc['model_overrides'])}`"),
        ("parameters", f"{entry['parameters']:,}"),
        ("temperature T", f"{mc['temperature']:g}"),
        ("ranks", ", ".join(r for r in _ranks(mc) if r != "-") or "- (no CoDA layers)"),
        ("norm", mc["norm"] if _n_coda_layers(mc) else "-"),
        ("test accuracy", _accuracy_text(entry)),
        ("training", _training_text(entry)),
        ("schedule", _schedule_text(tc)),
        ("wall time", f"{_duration(entry['wall_time_s'])} of training on {entry['hardware']}"),
        ("file", _file_text(entry)),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _file_text(entry: dict) -> str:
    storage = entry.get("storage", "float32")
    text = f"`{entry['file']}`, {entry['size_bytes'] / 1e6:.1f} MB, SHA-256 `{entry['sha256']}`, weights stored as {storage}"
    text += ", loaded as float32" if storage != "float32" else ""
    previous = entry.get("previous_file")
    if previous:
        text += (f"; re-stored from a {previous['storage']} file of {previous['size_bytes'] / 1e6:.1f} MB "
                 f"(SHA-256 `{previous['sha256']}`)")
    return text


def _retired_text(entry: dict) -> str:
    commit = f" (last in commit `{entry['last_commit']}`)" if entry.get("last_commit") else ""
    return (f"> **Retired**: {entry['retired']} The weights file is no longer shipped; the project's git "
            f"history keeps it{commit}, and this card, the manifest entry and the results stay.")


def _build_call(model: str, overrides: dict) -> str:
    args = [repr(model)] + [f"{k}={v!r}" for k, v in overrides.items()]
    return f"build_model({', '.join(args)})"


def _accuracy_text(entry: dict) -> str:
    if entry["test_accuracy"] is None:
        return "not evaluated"
    n = entry["test_images"]
    where = f"{n:,} CIFAR-10 test images" if n else "the CIFAR-10 test set"
    text = f"**{100 * entry['test_accuracy']:.2f} %** on {where} (fp32)"
    previous = entry.get("previous_file")
    if previous:
        text += (f", with the weights as shipped ({entry['storage']}); the {previous['storage']} weights before: "
                 f"{100 * previous['test_accuracy_remeasured']:.2f} % re-measured, "
                 f"{100 * previous['test_accuracy_at_export']:.2f} % at export")
    return text


def _training_text(entry: dict) -> str:
    tc = entry["train_config"]
    done = f"{entry['epochs']} epoch" + ("s" if entry["epochs"] != 1 else "")
    if entry["epochs"] < tc["epochs"] or entry["steps_into_epoch"]:
        done = f"{entry['epochs']} of {tc['epochs']} planned epochs (stopped early)"
    if tc.get("init_from"):
        done += f" starting from the weights of `{tc['init_from']}` (its optimiser state not kept)"
    subset = f" on the first {tc['train_subset']:,} images" if tc["train_subset"] else ""
    aug = "random crop (pad 4) + horizontal flip" if tc["augment"] else "no augmentation"
    precision = _precision_text(tc["precision"], entry["history"])
    return (
        f"{done}{subset}, batch {tc['batch_size']} (accumulate {tc['accumulate']}), "
        f"{precision}, {aug}, seed {tc['seed']}"
    )


def _precision_text(requested: str, history: list[dict]) -> str:
    """The precision asked for and, where the history records it, what ran in which epochs."""
    ran = [row.get("precision") for row in history]
    if not ran or None in ran:
        return PRECISION_TEXT.get(requested, requested)
    spans, start = [], 1
    for i in range(1, len(ran) + 1):
        if i == len(ran) or ran[i] != ran[start - 1]:
            epochs = f"epoch {start}" if i == start else f"epochs {start}-{i}"
            spans.append(f"{PRECISION_TEXT[ran[start - 1]]} ({epochs})")
            start = i + 1
    return f"precision {requested}: ran " + ", ".join(spans)


def _schedule_text(tc: dict) -> str:
    optimizer = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD (Nesterov momentum 0.9)"}[tc.get("optimizer", "adam")]
    if tc.get("weight_decay"):
        optimizer += f", weight decay {tc['weight_decay']:g}"
    if tc.get("embedding_from"):
        how = "frozen" if tc.get("freeze_embedding") else "fine-tuned"
        optimizer += f", embedding from `{tc['embedding_from']}` ({how})"
    if tc["schedule"] == "paper":
        return f"{optimizer}, lr {tc['lr']:g} divided by 1.5 every 30 epochs (the paper's)"
    return (
        f"{optimizer}, peak lr {tc['lr']:g}, linear warm-up over {tc['warmup_epochs']:g} epoch(s), "
        "then cosine decay to 0"
    )


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def _n_coda_layers(mc: dict) -> int:
    """How many of a model config's layers are CoDA layers (the rest form the conventional stem)."""
    return len(mc["channels"]) - _coda_start(mc)


def _coda_start(mc: dict) -> int:
    """The layout index of the first CoDA layer (configs before resnet_stages have none)."""
    return max(mc["stem_depth"], RESNET_STAGE_ENDS[mc.get("resnet_stages", 0)])


def _ranks(mc: dict) -> list[str]:
    """Each layer's rank as text; "-" for the layers of a conventional stem (they have none)."""
    return [
        "-" if i < _coda_start(mc) else str(m * mc["rank_factor"]) for i, m in enumerate(mc["rank_multipliers"])
    ]


def _layer_kind(mc: dict, i: int) -> str:
    """Layer ``i`` of the layout as built: CoDA, a conventional block, or in a ResNet-20 stage."""
    ends = RESNET_STAGE_ENDS[: mc.get("resnet_stages", 0) + 1]
    if i < ends[-1]:
        return f"ResNet-20 stage {next(k for k in range(1, len(ends)) if i < ends[k])}"
    if i >= _coda_start(mc):
        return "CoDA"
    return "conv" if i == len(mc["channels"]) - 1 else "conv-BN-ReLU"


def _layer_table(mc: dict) -> str:
    n, stem = len(mc["channels"]), _coda_start(mc)
    kinds = [_layer_kind(mc, i) for i in range(n)]
    head = "## Layers\n\n| layer | " + " | ".join(str(i + 1) for i in range(n)) + " |"
    rows = [
        ("type", kinds),
        ("out channels", [c * mc.get("resnet_width", 1) if kind.startswith("ResNet-20 stage") else c
                          for c, kind in zip(mc["channels"], kinds, strict=True)]),
        ("kernel", mc["kernel_sizes"]),
        ("stride", mc["strides"]),
        ("rank", _ranks(mc)),
    ]
    lines = [head, "|---" * (n + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(map(str, values)) + " |" for label, values in rows]
    if mc.get("resnet_stages", 0):
        lines += ["", "The columns of a ResNet-20 stage are that stage as a whole: 3 basic residual blocks of "
                  "two 3x3 conv-BN each (stage 1 also the first 3x3 conv-BN-ReLU), in place of those layers "
                  "of the 9L-S layout, which end at the same resolution and channels"
                  + ("." if mc.get("resnet_width", 1) == 1 else
                     f" ({mc['resnet_width']} times those channels here: `resnet_width = {mc['resnet_width']}`).")]
    if not _n_coda_layers(mc):
        lines += ["", "All layers are conventional: a CNN baseline without contributions."]
    elif stem:
        first = f"The first {stem} layers are" if stem > 1 else "The first layer is"
        lines += ["", f"{first} a conventional stem; contributions are exact down to the "
                  "input of the first CoDA layer (`coda.contributions(..., layer=0)`), not to the pixels."]
    return "\n".join(lines)


def _per_class_table(entry: dict) -> str:
    per_class = entry["per_class_accuracy"]
    if not per_class:
        return "## Per-class test accuracy\n\nnot evaluated"
    rows = "\n".join(f"| {c} | {100 * a:.1f} % |" for c, a in per_class.items())
    return f"## Per-class test accuracy\n\n| class | accuracy |\n|---|---|\n{rows}"


def _history_table(history: list[dict]) -> str:
    if not history:
        return "## Training curve\n\nno finished epoch"
    rows = "\n".join(
        f"| {h['epoch']} | {h['lr']:.2e} | {h['train_loss']:.4f} | {100 * h['train_accuracy']:.1f} % "
        f"| {100 * h['test_accuracy']:.1f} % | {h['images_per_s']:.0f} |"
        for h in history
    )
    return (
        "## Training curve\n\nTest accuracy per epoch on the run's test set (`test_subset` if set); "
        "train loss and accuracy over the epoch's augmented batches.\n\n"
        "| epoch | lr | train loss | train acc | test acc | images/s |\n|---|---|---|---|---|---|\n" + rows
    )
