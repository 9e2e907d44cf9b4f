"""An independent float64 oracle of CoDA layers and CoDA-Nets (docs/method.md: the DAU, the network, the published checkpoint layout).

Written from the equations, not from :mod:`coda`: every output position takes its k x k
patch ``p`` (entry ``c * k * k + ki * k + kj``, zero padding, stride), materialises all
dynamic weights

    z = A p,    w_j = B_j z + b_j,    out_j = g(w_j)^T p,

and uses the authors' *published* parameter layout (docs/method.md#the-published-checkpoint-layout), so that it shares
no reshape with the package:

* ``A``: (r, C_in, k, k), a conv weight without bias;
* ``B``: (C_out * d, r, 1, 1), a 1x1 conv weight; output channel ``p * C_out + j`` is entry
  ``p`` of ``w_j`` (``d = C_in * k * k``, ``p`` in unfold order);
* ``bias``: (C_out * d,) or None, the bias of that 1x1 conv (of the *weights*).
"""

from __future__ import annotations

import math

import torch

LOGIT_BIAS = math.log(1 / 9)


def squash(w: torch.Tensor) -> torch.Tensor:
    """g(w) = ||w||^2 / (1 + ||w||^2) * w / ||w|| along the last dim (g(0) = 0)."""
    n = w.norm(dim=-1, keepdim=True)
    return torch.where(n > 0, n**2 / (1 + n**2) * w / n.clamp_min(1e-300), torch.zeros_like(w))


def l2(w: torch.Tensor) -> torch.Tensor:
    """g(w) = w / ||w|| along the last dim (g(0) = 0 by convention)."""
    n = w.norm(dim=-1, keepdim=True)
    return torch.where(n > 0, w / n.clamp_min(1e-300), torch.zeros_like(w))


NORMS = {"squash": squash, "l2": l2}


def patches(x: torch.Tensor, k: int, stride: int, padding: int) -> torch.Tensor:
    """All k x k patches of ``x`` (N, C, H, W) as (N, H_out, W_out, C * k * k).

    Entry ``c * k * k + ki * k + kj`` of the patch at ``(oh, ow)`` is the zero-padded input
    at channel ``c``, row ``oh * stride + ki``, column ``ow * stride + kj``.
    """
    n, c, h, w = x.shape
    xp = x.new_zeros(n, c, h + 2 * padding, w + 2 * padding)
    xp[:, :, padding : padding + h, padding : padding + w] = x
    h_out = (h + 2 * padding - k) // stride + 1
    w_out = (w + 2 * padding - k) // stride + 1
    out = x.new_empty(n, h_out, w_out, c * k * k)
    for oh in range(h_out):
        for ow in range(w_out):
            window = xp[:, :, oh * stride : oh * stride + k, ow * stride : ow * stride + k]
            out[:, oh, ow] = window.reshape(n, c * k * k)  # c-major, then ki, then kj
    return out


def dynamic_weights(
    p: torch.Tensor, A: torch.Tensor, B: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Un-normalised weights ``w_j = B_j A p + b_j`` of patches ``p`` (..., d) -> (..., C_out, d)."""
    r, d = A.shape[0], p.shape[-1]
    c_out = B.shape[0] // d
    A_mat = A.reshape(r, d)
    # B_j is (d, r) with row q = 1x1-conv output channel q * C_out + j.
    B_j = B.reshape(d, c_out, r).permute(1, 0, 2)  # (C_out, d, r)
    z = torch.einsum("rd,...d->...r", A_mat, p)
    w = torch.einsum("jdr,...r->...jd", B_j, z)
    if bias is not None:
        w = w + bias.reshape(d, c_out).T  # b_j[q] = bias[q * C_out + j]
    return w


def coda_conv2d(
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int = 1,
    padding: int = 0,
    norm: str = "squash",
    weights_from: torch.Tensor | None = None,
) -> torch.Tensor:
    """The CoDA layer, (N, C_in, H, W) -> (N, C_out, H_out, W_out), in float64.

    ``weights_from`` (same shape as ``x``): compute the dynamic weights from this input
    instead of ``x`` and apply them to ``x``, i.e. the frozen linear map ``W(x0) x``.
    """
    k = A.shape[-1]
    p = patches(x.double(), k, stride, padding)  # (N, H_out, W_out, d)
    p0 = p if weights_from is None else patches(weights_from.double(), k, stride, padding)
    w = dynamic_weights(p0, A.double(), B.double(), None if bias is None else bias.double())
    out = torch.einsum("nhwjd,nhwd->nhwj", NORMS[norm](w), p)
    return out.permute(0, 3, 1, 2)


def layer_keys(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Prefixes ``"[module.]i.weight_mod.weighting_f."`` of the CoDA layers, by numeric ``i``."""
    prefixes = [k[: -len("0.weight")] for k in state_dict if k.endswith("weight_mod.weighting_f.0.weight")]
    return sorted(prefixes, key=lambda s: int(s.removeprefix("module.").split(".")[0]))


def network(
    images: torch.Tensor,
    state_dict: dict[str, torch.Tensor],
    strides: list[int],
    temperature: float,
    norm: str = "squash",
) -> torch.Tensor:
    """A pure CoDA-Net from a published-layout state dict: images (N, C, H, W) -> logits.

    Encodes ``[x, 1 - x]``, applies the layers (padding ``(k - 1) // 2``), sums over positions,
    divides by ``temperature`` and adds ``log(1/9)``.
    """
    return head(encode(images.double()), state_dict, strides, temperature, norm)


def head(
    a: torch.Tensor,
    state_dict: dict[str, torch.Tensor],
    strides: list[int],
    temperature: float,
    norm: str = "squash",
    frozen_at: torch.Tensor | None = None,
) -> torch.Tensor:
    """The network from its encoded input ``a`` (N, 2C, H, W) to the logits.

    With ``frozen_at`` (an encoded input like ``a``), every layer's dynamic weights come from
    the activations of ``frozen_at``: the linear map ``W_{1->L}(a0)`` applied to ``a``.
    """
    a = a.double()
    a0 = None if frozen_at is None else frozen_at.double()
    for prefix, stride in zip(layer_keys(state_dict), strides, strict=True):
        A, B = state_dict[prefix + "0.weight"], state_dict[prefix + "1.weight"]
        bias = state_dict.get(prefix + "1.bias")
        padding = (A.shape[-1] - 1) // 2
        a_next = coda_conv2d(a, A, B, bias, stride, padding, norm, weights_from=a0)
        if a0 is not None:
            a0 = coda_conv2d(a0, A, B, bias, stride, padding, norm)
        a = a_next
    return a.sum((2, 3)) / temperature + LOGIT_BIAS


def encode(images: torch.Tensor) -> torch.Tensor:
    """[x, 1 - x] along channels."""
    return torch.cat([images, 1 - images], 1)


def to_published(
    A: torch.Tensor, B: torch.Tensor, b: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Package layout (A, B (C_out, r, C_in, k, k), b (C_out, C_in, k, k)) -> published layout.

    Written entry by DAU: column ``j`` of the (d, C_out) grid of 1x1-conv output channels
    ``q * C_out + j`` holds ``B_j`` and ``b_j``.
    """
    c_out, r = B.shape[:2]
    d = B[0, 0].numel()
    B_pub = B.new_empty(d, c_out, r)
    b_pub = None if b is None else b.new_empty(d, c_out)
    for j in range(c_out):
        B_pub[:, j, :] = B[j].reshape(r, d).T  # B[j] is B_j^T
        if b is not None:
            b_pub[:, j] = b[j].reshape(d)
    b_flat = None if b_pub is None else b_pub.reshape(d * c_out)
    return A.clone(), B_pub.reshape(d * c_out, r, 1, 1), b_flat


def model_to_published(model) -> dict[str, torch.Tensor]:
    """A :class:`coda.CoDANet`'s CoDA layers as a published-layout state dict (keys 0, 1, ...)."""
    out = {}
    for i, layer in enumerate(model.layers):
        A, B, b = to_published(
            layer.A.detach(), layer.B.detach(), None if layer.b is None else layer.b.detach()
        )
        out[f"{i}.weight_mod.weighting_f.0.weight"] = A
        out[f"{i}.weight_mod.weighting_f.1.weight"] = B
        if b is not None:
            out[f"{i}.weight_mod.weighting_f.1.bias"] = b
    return out


def random_published_state_dict(
    in_channels: int,
    channels: list[int],
    kernel_sizes: list[int],
    ranks: list[int],
    indices: list[int] | None = None,
    prefix: str = "",
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Random CoDA layers in the published layout, as float64 tensors.

    Values are drawn in float32 and widened, so a float32 model can hold them exactly.
    ``indices`` are the ``nn.Sequential`` positions of the layers (default 0, 1, ...).
    """
    indices = list(range(len(channels))) if indices is None else indices
    out, c_in = {}, 2 * in_channels
    for i, c_out, k, r in zip(indices, channels, kernel_sizes, ranks, strict=True):
        d = c_in * k * k
        key = f"{prefix}{i}.weight_mod.weighting_f."
        out[key + "0.weight"] = _uniform((r, c_in, k, k), d, generator)
        out[key + "1.weight"] = _uniform((c_out * d, r, 1, 1), r, generator)
        out[key + "1.bias"] = _uniform((c_out * d,), r, generator)
        c_in = c_out
    return out


def _uniform(shape: tuple[int, ...], fan_in: int, generator: torch.Generator | None) -> torch.Tensor:
    bound = 1 / math.sqrt(fan_in)
    u = torch.rand(shape, generator=generator, dtype=torch.float32)
    return ((2 * u - 1) * bound).double()
