"""CoDA-Nets: stacks of CoDA layers with sum pooling, a temperature and a logit bias.

    logit_c = (sum over positions of a_L[c]) / T + b0,      a_L = CoDA_L(... CoDA_1([x, 1-x]))

``build_model(name, **overrides)`` builds the paper's configurations ("cifar10-9L-S",
"imagenet100-9L-L"), small CPU configurations, hybrids whose first layers are a thin
conventional CNN stem (``stem_depth``), the ResNet-20 of He et al. ("cifar10-resnet20") and
hybrids whose embedding is its first stages (``resnet_stages``, "cifar10-hybrid"). The
authors' published checkpoints load through :func:`coda.reference.from_reference_state_dict`.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from coda.layers import CoDAConv2d

LOGIT_BIAS = math.log(0.1 / 0.9)  # = -log 9: sigmoid(b0) = 0.1, the prior of one of 10 classes
RESNET_STAGE_CHANNELS = (16, 32, 64)  # ResNet-20's three stages of 3 basic blocks, strides 1, 2, 2
RESNET_BLOCKS_PER_STAGE = 3
# How many layers of the 9L-S layout the first d stages of ResNet-20 replace (d = 0, 1, 2, 3): the
# 9L-S has the same three resolutions, with 2, 3 and 3 layers, and then its 1x1 classifier layer.
RESNET_STAGE_ENDS = (0, 2, 5, 8)


@dataclasses.dataclass(frozen=True)
class CoDANetConfig:
    """Architecture and output scaling of a CoDA-Net (names as in the paper).

    Layer ``i`` has ``channels[i]`` DAUs of kernel ``kernel_sizes[i]``, stride ``strides[i]``,
    padding ``(k - 1) // 2`` and rank ``rank_multipliers[i] * rank_factor``. The last layer's
    channels are the classes. The first ``stem_depth`` layers are conventional
    conv-BN-ReLU blocks instead of CoDA layers (a hybrid network).

    ``resnet_stages = d`` (0 to 3, only for the 9L-S layout) makes the first d stages of
    ResNet-20 the network's conventional embedding: its first conv-BN-ReLU (counted with
    stage 1) and ``3 d`` basic residual blocks replace the first ``RESNET_STAGE_ENDS[d]`` =
    0, 2, 5 or 8 layers of the layout, which end at the same resolution and channels (16 at
    32 x 32, 32 at 16 x 16, 64 at 8 x 8 for CIFAR images), and the CoDA layers continue the
    layout from there. ``stem_depth`` is then 0, or, with d = 3, the number of layers: the
    classifier is a plain 1x1 convolution too, the all-conventional ResNet-20.

    ``resnet_width = k`` (with ``resnet_stages``) widens every ResNet-20 stage k times (16 k,
    32 k, 64 k channels; Zagoruyko and Komodakis' wide residual networks, here "ResNet-20 x k"):
    the first CoDA layer then takes ``16 k``, ``32 k`` or ``64 k`` channels, and the layers after
    it keep the layout's. 1, the default, is He et al.'s ResNet-20 and is left out of
    :meth:`to_dict`, so the configs stored before the field existed are unchanged.
    """

    channels: tuple[int, ...]
    kernel_sizes: tuple[int, ...]
    strides: tuple[int, ...]
    rank_multipliers: tuple[int, ...]
    rank_factor: int
    temperature: float
    logit_bias: float = LOGIT_BIAS
    norm: str = "squash"
    in_channels: int = 3
    stem_depth: int = 0
    resnet_stages: int = 0
    resnet_width: int = 1

    def __post_init__(self):
        n = len(self.channels)
        lengths = {len(self.kernel_sizes), len(self.strides), len(self.rank_multipliers)}
        if n == 0 or lengths != {n}:
            raise ValueError(
                "channels, kernel_sizes, strides and rank_multipliers need one entry per layer, "
                f"got lengths {n}, {len(self.kernel_sizes)}, {len(self.strides)}, "
                f"{len(self.rank_multipliers)}"
            )
        for name in ("channels", "kernel_sizes", "strides", "rank_multipliers"):
            values = getattr(self, name)
            if not all(_is_int(v) and v >= 1 for v in values):
                raise ValueError(f"{name} must be ints >= 1, got {values!r}")
        if not (_is_real(self.temperature) and math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if not (_is_real(self.logit_bias) and math.isfinite(self.logit_bias)):
            raise ValueError(f"logit_bias must be a finite number, got {self.logit_bias!r}")
        if not _is_int(self.rank_factor) or self.rank_factor < 1:
            raise ValueError(f"rank_factor must be a positive int, got {self.rank_factor!r}")
        if not _is_int(self.in_channels) or self.in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {self.in_channels!r}")
        if not _is_int(self.stem_depth) or not 0 <= self.stem_depth <= n:
            raise ValueError(f"stem_depth must be an int in [0, {n}], got {self.stem_depth!r}")
        if not _is_int(self.resnet_stages) or not 0 <= self.resnet_stages <= len(RESNET_STAGE_CHANNELS):
            raise ValueError(f"resnet_stages must be an int in [0, 3] (stages of ResNet-20), got {self.resnet_stages!r}")
        if not _is_int(self.resnet_width) or self.resnet_width < 1:
            raise ValueError(f"resnet_width must be a positive int, got {self.resnet_width!r}")
        if self.resnet_width != 1 and not self.resnet_stages:
            raise ValueError(f"resnet_width={self.resnet_width} widens ResNet-20 stages: it needs resnet_stages >= 1")
        if self.resnet_stages:
            self._check_resnet_layout()

    def _check_resnet_layout(self) -> None:
        """ResNet-20 stages replace layers of the 9L-S layout: only that layout takes them."""
        layout = (self.channels[:-1], self.kernel_sizes[:-1], self.strides[:-1])
        nine = (_CIFAR_9L_S.channels[:-1], _CIFAR_9L_S.kernel_sizes[:-1], _CIFAR_9L_S.strides[:-1])
        if layout != nine or self.kernel_sizes[-1] != 1:
            raise ValueError(
                "resnet_stages needs the 9L-S layout (channels 16, 16, 32, 32, 32, 64, 64, 64, classes; "
                f"strides 1, 1, 2, 1, 1, 2, 1, 1, 1; kernels 3 and a 1x1 classifier), got channels "
                f"{self.channels}, strides {self.strides}, kernels {self.kernel_sizes}"
            )
        n = len(self.channels)
        if self.stem_depth not in (0, n) or (self.stem_depth == n and self.resnet_stages != 3):
            raise ValueError(
                f"with resnet_stages={self.resnet_stages}, stem_depth must be 0 (CoDA layers after the ResNet "
                f"stages) or {n} with resnet_stages=3 (the all-conventional ResNet-20), got {self.stem_depth}"
            )

    @property
    def coda_start(self) -> int:
        """The index of the first CoDA layer in the layout (the layers before it are conventional)."""
        return max(self.stem_depth, RESNET_STAGE_ENDS[self.resnet_stages])

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(m * self.rank_factor for m in self.rank_multipliers)

    @property
    def num_classes(self) -> int:
        return self.channels[-1]

    def replace(self, **overrides) -> CoDANetConfig:
        """A copy with some fields changed; ``num_classes`` sets the last layer's channels."""
        fields = {f.name for f in dataclasses.fields(self)} | {"num_classes"}
        unknown = set(overrides) - fields
        if unknown:
            raise ValueError(f"unknown config fields {sorted(unknown)}; expected some of {sorted(fields)}")
        if "num_classes" in overrides:
            overrides["channels"] = (*self.channels[:-1], int(overrides.pop("num_classes")))
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        """The fields as a dict; ``resnet_width`` only where it is not 1 (see the class docstring)."""
        fields = dataclasses.asdict(self)
        if fields["resnet_width"] == 1:
            del fields["resnet_width"]
        return fields

    @property
    def embedding_channels(self) -> int:
        """Channels of the ResNet-20 stages' output (the first CoDA layer's input); 0 without them."""
        return RESNET_STAGE_CHANNELS[self.resnet_stages - 1] * self.resnet_width if self.resnet_stages else 0


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_CIFAR_9L_S = CoDANetConfig(
    channels=(16, 16, 32, 32, 32, 64, 64, 64, 10),
    kernel_sizes=(3, 3, 3, 3, 3, 3, 3, 3, 1),
    strides=(1, 1, 2, 1, 1, 2, 1, 1, 1),
    rank_multipliers=(1, 1, 2, 2, 2, 2, 2, 2, 2),
    rank_factor=32,
    temperature=1000.0,
)

CONFIGS: dict[str, CoDANetConfig] = {
    # The paper's CIFAR-10 model (7,782,816 parameters); rank_factor=f gives its rank ablation.
    "cifar10-9L-S": _CIFAR_9L_S,
    # The paper's Imagenet-100 model (first 100 classes, 240 px crops).
    "imagenet100-9L-L": CoDANetConfig(
        channels=(16, 32, 32, 64, 64, 64, 64, 64, 100),
        kernel_sizes=(7, 3, 3, 3, 3, 3, 3, 3, 3),
        strides=(3, 1, 1, 2, 1, 1, 2, 1, 1),
        rank_multipliers=(1, 1, 1, 2, 2, 2, 4, 4, 4),
        rank_factor=64,
        temperature=1e5,
    ),
    # An all-conventional CNN in the 9L-S layout at 4x the width (about the parameters of the
    # teaching model): the baseline of the interpretable-depth experiment. Temperature 64 =
    # average pooling over its 8 x 8 output positions.
    "cifar10-cnn": CoDANetConfig(
        channels=(64, 64, 128, 128, 128, 256, 256, 256, 10),
        kernel_sizes=_CIFAR_9L_S.kernel_sizes,
        strides=_CIFAR_9L_S.strides,
        rank_multipliers=_CIFAR_9L_S.rank_multipliers,
        rank_factor=8,
        temperature=64.0,
        stem_depth=9,
    ),
    # ResNet-20 (He et al. 2016, CIFAR variant; 270,154 parameters) in the 9L-S layout: its three
    # stages replace layers 1-8 and a 1x1 conv with bias the classifier. Temperature 64 =
    # average pooling over its 8 x 8 output positions: global average pooling and a linear layer.
    "cifar10-resnet20": _CIFAR_9L_S.replace(rank_factor=8, temperature=64.0, stem_depth=9, resnet_stages=3),
    # CoDA layers on the first d stages of ResNet-20 (resnet_stages=d, 1 by default; 0 is the
    # 9L-S itself), continuing the 9L-S layout with its ranks and temperature.
    "cifar10-hybrid": _CIFAR_9L_S.replace(resnet_stages=1),
    # A 5-layer CIFAR model for tests, smoke runs and lessons that train live on a CPU.
    "cifar10-tiny": CoDANetConfig(
        channels=(16, 32, 32, 32, 10),
        kernel_sizes=(3, 3, 3, 3, 1),
        strides=(1, 2, 1, 2, 1),
        rank_multipliers=(1, 2, 2, 2, 2),
        rank_factor=8,
        temperature=100.0,
    ),
}


def build_model(name: str, **overrides) -> CoDANet:
    """Build a named CoDA-Net.

    Parameters
    ----------
    name : one of ``CONFIGS`` ("cifar10-9L-S", "imagenet100-9L-L", "cifar10-resnet20",
        "cifar10-hybrid", "cifar10-cnn", "cifar10-tiny").
    **overrides : fields of :class:`CoDANetConfig` to change, e.g. ``temperature=100``,
        ``rank_factor=8`` (the paper's rank ablation), ``stem_depth=2`` (a hybrid with a
        thin conventional stem), ``resnet_stages=2`` (a hybrid on the first two stages of
        ResNet-20), ``resnet_width=4`` (those stages 4x wider; "cifar10-resnet20" with it is
        the all-conventional ResNet-20 x 4), ``norm="l2"``, ``num_classes=...``. Unknown names raise.

    Returns
    -------
    A :class:`CoDANet` mapping images (B, 3, H, W) in [0, 1] to logits (B, num_classes).
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(CONFIGS)}")
    return CoDANet(CONFIGS[name].replace(**overrides))


def conv_block(in_channels: int, out_channels: int, kernel_size: int, stride: int, last: bool = False) -> nn.Module:
    """A conventional conv-BN-ReLU block (a hybrid network's stem); ``last``: a plain conv."""
    padding = (kernel_size - 1) // 2
    if last:  # the classifier of an all-conventional network
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """ResNet's basic residual block (He et al. 2016): two 3x3 conv-BN, ReLU after the sum.

        out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))

    The shortcut is the identity, or, where the block changes the resolution or the channels,
    "option A" of the CIFAR ResNets: every ``stride``-th position, with zero channels appended
    (no parameters). Shapes: (B, C_in, H, W) -> (B, C_out, H / stride, W / stride).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"option-A shortcuts only add channels, got {in_channels} -> {out_channels}")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - self.in_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def resnet20_stages(in_channels: int, stages: int, width: int = 1) -> list[nn.Module]:
    """The first ``stages`` stages of ResNet-20 for CIFAR (He et al. 2016, section 4.2).

    A 3x3 conv-BN-ReLU to 16 channels (counted with stage 1), then per stage 3 basic blocks
    with 16, 32, 64 channels, the first of stages 2 and 3 with stride 2; ``width`` multiplies
    every count. Convolutions start from He et al.'s initialisation (normal, fan-out). Returns
    the modules in order: ``1 + 3 * stages`` of them.
    """
    channels = [c * width for c in RESNET_STAGE_CHANNELS]
    modules = [conv_block(in_channels, channels[0], 3, 1)]
    c_in = channels[0]
    for stage, c_out in enumerate(channels[:stages]):
        for block in range(RESNET_BLOCKS_PER_STAGE):
            modules.append(BasicBlock(c_in, c_out, stride=2 if stage > 0 and block == 0 else 1))
            c_in = c_out
    for m in modules:
        for conv in (c for c in m.modules() if isinstance(c, nn.Conv2d)):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return modules


class CoDANet(nn.Module):
    """A CoDA-Net: encoding ``[x, 1-x]``, optional conventional stem, CoDA layers, pooling.

    Attributes
    ----------
    config : the :class:`CoDANetConfig` it was built from.
    stem : ``nn.Sequential``, the conventional embedding: conv-BN-ReLU blocks, or ResNet-20's
        first conv-BN-ReLU and basic blocks (``resnet_stages``); empty for a pure CoDA-Net.
    layers : ``nn.ModuleList`` of :class:`CoDAConv2d`, the explained part (empty for an
        all-conventional network).
    temperature, logit_bias : the output scaling ``logit = sum(a_L) / T + logit_bias``.
    stem_frozen : whether :meth:`freeze_stem` was called (the stem then stays in eval mode).
    """

    def __init__(self, config: CoDANetConfig):
        super().__init__()
        self.config = config
        self.temperature = float(config.temperature)
        self.logit_bias = float(config.logit_bias)
        self.stem_frozen = False
        c_in = 2 * config.in_channels
        stem = resnet20_stages(c_in, config.resnet_stages, config.resnet_width) if config.resnet_stages else []
        layers = []
        specs = zip(config.channels, config.kernel_sizes, config.strides, config.ranks, strict=True)
        for i, (c_out, k, s, r) in enumerate(specs):
            if i < RESNET_STAGE_ENDS[config.resnet_stages]:
                c_in = config.embedding_channels  # replaced by the ResNet stages: their output's channels
                continue
            if i < config.stem_depth:
                stem.append(conv_block(c_in, c_out, k, s, last=i == len(config.channels) - 1))
            else:
                layers.append(CoDAConv2d(c_in, c_out, k, s, rank=r, norm=config.norm))
            c_in = c_out
        self.stem = nn.Sequential(*stem)
        self.layers = nn.ModuleList(layers)

    def freeze_stem(self) -> CoDANet:
        """Freeze the conventional stem: no gradients for its parameters, and its batch norms
        keep their running statistics (eval mode) also while the model trains. Returns the model."""
        if not len(self.stem):
            raise ValueError("this network has no conventional stem to freeze")
        self.stem.requires_grad_(False)
        self.stem_frozen = True
        return self.train(self.training)

    def train(self, mode: bool = True) -> CoDANet:
        """``nn.Module.train``, except that a frozen stem stays in eval mode."""
        super().train(mode)
        if self.stem_frozen:
            self.stem.eval()
        return self

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> encoded input ``[x, 1 - x]``, (B, 2C, H, W).

        Floating-point images of another dtype than the model's weights (float64, float16,
        bfloat16 into a float32 model) are cast to the weights' dtype; autocast still applies.
        The values are checked except in training mode on a GPU, where the check would make
        the host wait for the device at every step (the trainer's images come from uint8 and
        are in [0, 1] by construction; its divergence check catches a NaN loss).
        """
        on_gpu = isinstance(images, torch.Tensor) and images.device.type != "cpu"
        check_images(images, self.config.in_channels, values=not (self.training and on_gpu))
        images = images.to(next(self.parameters()).dtype)
        return torch.cat([images, 1 - images], dim=1)

    def layer_input(self, images: torch.Tensor, layer: int) -> torch.Tensor:
        """The input of CoDA layer ``layer`` (0-based, the stem not counted), (B, C_l, H_l, W_l).

        The project's layer numbering: docs/method.md#layer-numbering.

        ``layer == len(self.layers)`` gives the output of the last layer.
        """
        a = self.stem(self.encode(images))
        for module in self.layers[:layer]:
            a = module(a)
        return a

    def head(self, a: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Run CoDA layers ``start, start+1, ...`` on ``a`` and pool to logits (B, classes)."""
        for module in self.layers[start:]:
            a = module(a)
        return self.pool(a)

    def pool(self, a: torch.Tensor) -> torch.Tensor:
        """Sum pooling, temperature and logit bias: (B, classes, H, W) -> (B, classes).

        Sums in float32 at least (bf16/fp16 activations under autocast), float64 stays float64.
        """
        dtype = torch.promote_types(a.dtype, torch.float32)
        return a.sum((2, 3), dtype=dtype) / self.temperature + self.logit_bias

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W), float in [0, 1] -> logits (B, num_classes)."""
        return self.head(self.stem(self.encode(images)))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}, logit_bias={self.logit_bias:.4f}"


def check_images(images: torch.Tensor, channels: int, values: bool = True) -> None:
    """Raise ``ValueError`` unless ``images`` is a float batch (B, channels, H, W), H, W >= 1,
    with values in [0, 1] (so no NaN or inf; checked only if ``values``)."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"expected images as a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != channels:
        raise ValueError(
            f"expected images of shape (B, {channels}, H, W), got {tuple(images.shape)}"
        )
    if images.shape[2] < 1 or images.shape[3] < 1:
        raise ValueError(f"expected images of at least 1 x 1 pixels, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"expected floating-point images in [0, 1], got dtype {images.dtype}")
    if values and not ((images >= 0) & (images <= 1)).all():  # one check (and one sync) for range, NaN and inf
        if not torch.isfinite(images).all():
            raise ValueError("images contain NaN or inf; expected values in [0, 1]")
        raise ValueError(
            f"expected images with values in [0, 1] (the model encodes [x, 1 - x]), got values in "
            f"[{images.min().item():.4g}, {images.max().item():.4g}]"
        )

