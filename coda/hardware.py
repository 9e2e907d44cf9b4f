"""What the machine can do: the CPU's instruction set, native bfloat16, matmul rates.

Training precision follows the hardware (:func:`resolve_precision`): bfloat16 autocast pays
only where the CPU computes bf16 natively (AVX512-BF16 or AMX on x86). Elsewhere, PyTorch
emulates bf16 arithmetic in float32 with extra conversions, and a bf16 training step of a
CoDA-Net is about ten times *slower* than a float32 one (measured on an AVX2-only AMD EPYC).

Nothing runs at import; every probe runs once per process on first use and is cached.
"""

from __future__ import annotations

import functools
import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# /proc/cpuinfo flags that mean the CPU executes bf16 dot products in hardware (x86 and Arm).
_BF16_FLAGS = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16", "bf16": "Arm BF16"}


@dataclass(frozen=True)
class CPUInfo:
    """The CPU as far as training speed is concerned.

    model : the marketing name (``/proc/cpuinfo``'s "model name", else ``platform.processor()``).
    isa : the widest vector instruction set: "AMX", "AVX-512", "AVX2", "AVX", "SSE", or the
        architecture name on non-x86 machines ("aarch64", "arm64", ...).
    native_bf16 : True if the CPU computes bf16 matrix products in hardware.
    bf16_evidence : how ``native_bf16`` was decided ("cpuinfo flag avx512_bf16",
        "no bf16 flag in /proc/cpuinfo", "torch CPU capability", "micro-benchmark: ...").
    """

    model: str
    isa: str
    native_bf16: bool
    bf16_evidence: str

    def describe(self) -> str:
        """E.g. ``"AMD EPYC (AVX2, no native bf16)"``."""
        bf16 = "native bf16" if self.native_bf16 else "no native bf16"
        return f"{self.model} ({self.isa}, {bf16})"

    def to_dict(self) -> dict:
        return asdict(self)


def _cpuinfo_text() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _cpuinfo_field(text: str, key: str) -> str | None:
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return None


def _isa_from_flags(flags: set[str]) -> str:
    if "amx_tile" in flags:
        return "AMX"
    if "avx512f" in flags:
        return "AVX-512"
    for flag, name in (("avx2", "AVX2"), ("avx", "AVX"), ("sse2", "SSE")):
        if flag in flags:
            return name
    return platform.machine() or "unknown"


def parse_cpuinfo(text: str) -> CPUInfo | None:
    """A :class:`CPUInfo` from the text of ``/proc/cpuinfo``; None if it lists no flags.

    x86 lists its extensions under "flags", Arm under "Features".
    """
    flags_text = _cpuinfo_field(text, "flags") or _cpuinfo_field(text, "Features")
    if flags_text is None:
        return None
    flags = set(flags_text.split())
    model = _cpuinfo_field(text, "model name") or _cpuinfo_field(text, "Model") or platform.processor() or "unknown CPU"
    found = [name for flag, name in _BF16_FLAGS.items() if flag in flags]
    evidence = f"/proc/cpuinfo lists {found[0]}" if found else "no bf16 flag in /proc/cpuinfo"
    return CPUInfo(model=model, isa=_isa_from_flags(flags), native_bf16=bool(found), bf16_evidence=evidence)


# The x86 instruction sets of CPUInfo.isa, lowest first.
_X86_ISAS = ("SSE", "AVX", "AVX2", "AVX-512", "AMX")
# oneDNN's ONEDNN_MAX_CPU_ISA values, lowest first, with the ISA they allow and whether bf16 dot
# products run in hardware at that level (oneDNN executes torch's bf16 matmuls and convolutions).
_ONEDNN_ISAS = {
    "SSE41": ("SSE", False), "AVX": ("AVX", False), "AVX2": ("AVX2", False),
    "AVX2_VNNI": ("AVX2", False), "AVX2_VNNI_2": ("AVX2", False),
    "AVX512_CORE": ("AVX-512", False), "AVX512_CORE_VNNI": ("AVX-512", False),
    "AVX512_CORE_BF16": ("AVX-512", True), "AVX512_CORE_FP16": ("AVX-512", True),
    "AVX10_1_512": ("AVX-512", True), "AVX512_CORE_AMX": ("AMX", True),
    "AVX10_1_512_AMX": ("AMX", True), "AVX512_CORE_AMX_FP16": ("AMX", True),
    "AVX10_1_512_AMX_FP16": ("AMX", True), "AVX10_2_512": ("AVX-512", True),
    "AVX10_2_512_AMX_2": ("AMX", True),
}
# ATen's ATEN_CPU_CAPABILITY values on x86: the vector kernels torch's own operators may use.
_ATEN_ISAS = {"default": "SSE", "avx2": "AVX2", "avx512": "AVX-512"}


def apply_isa_limits(info: CPUInfo, env: dict[str, str] | None = None) -> CPUInfo:
    """``info`` as the process may use the CPU when the environment caps its instruction set.

    ``ONEDNN_MAX_CPU_ISA`` (oneDNN: matmuls and convolutions) and ``ATEN_CPU_CAPABILITY``
    (torch's other operators) keep torch below what the CPU has; set to AVX2 on a CPU with
    AVX512-BF16 they make it compute like an AVX2 CPU at the same clock, bf16 emulated (how the
    workbook's times "without native bf16" can be measured on such a CPU). The reported ISA is
    the lowest allowed, and bf16 counts as native only if neither variable caps it away; the
    evidence says which variable did. Unknown values and non-x86 CPUs are left as they are.
    """
    env = os.environ if env is None else env
    if info.isa not in _X86_ISAS:
        return info
    caps, isa, native = [], info.isa, info.native_bf16
    onednn = env.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if onednn in _ONEDNN_ISAS:
        allowed, bf16_level = _ONEDNN_ISAS[onednn]
        caps.append(f"ONEDNN_MAX_CPU_ISA={onednn}")
        isa = min(isa, allowed, key=_X86_ISAS.index)
        native = native and bf16_level
    aten = env.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if aten in _ATEN_ISAS:
        caps.append(f"ATEN_CPU_CAPABILITY={aten}")
        isa = min(isa, _ATEN_ISAS[aten], key=_X86_ISAS.index)
        native = native and _X86_ISAS.index(_ATEN_ISAS[aten]) >= _X86_ISAS.index("AVX-512")
    if not caps or (isa, native) == (info.isa, info.native_bf16):
        return info
    evidence = info.bf16_evidence
    if native != info.native_bf16:
        evidence = f"{evidence}, but {' and '.join(caps)} keep torch from using it"
    return CPUInfo(model=f"{info.model} capped from {info.isa} by {', '.join(caps)}", isa=isa,
                   native_bf16=native, bf16_evidence=evidence)


@functools.cache
def cpu_info() -> CPUInfo:
    """This machine's :class:`CPUInfo` (probed once per process).

    Linux: the kernel's CPU flags, which are authoritative, lowered to what
    ``ONEDNN_MAX_CPU_ISA`` / ``ATEN_CPU_CAPABILITY`` allow (:func:`apply_isa_limits`).
    Elsewhere (macOS, Windows) the flags are not readable, so native bf16 is decided by a
    one-off micro-benchmark (:func:`bf16_speedup`): bf16 matmuls at least 1.3x faster than
    float32 (which sees any such cap by itself).
    """
    text = _cpuinfo_text()
    info = parse_cpuinfo(text) if text else None
    if info is not None:
        return apply_isa_limits(info)
    model = platform.processor() or platform.machine() or "unknown CPU"
    capability = torch.backends.cpu.get_cpu_capability()  # "AVX2", "AVX512", "DEFAULT", ...
    isa = {"AVX512": "AVX-512", "AVX2": "AVX2"}.get(capability, platform.machine() or capability)
    speedup = bf16_speedup()
    return CPUInfo(model=model, isa=isa, native_bf16=speedup >= 1.3,
                   bf16_evidence=f"micro-benchmark: bf16 matmul {speedup:.2f}x float32")


def matmul_gflops(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", n: int = 1024,
                  seconds: float = 0.5) -> float:
    """The machine's measured matrix-multiply rate in GFLOP/s (``2 n^3`` per ``n x n`` product).

    Best of repeated timings over about ``seconds`` after one warm-up product, with the
    threads torch uses now. On CUDA, ``n`` should be 4096 or more to reach the GPU's rate.
    """
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=g, device=device).to(dtype)
    b = torch.randn(n, n, generator=g, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)
    _sync(device)
    best, spent = float("inf"), 0.0
    while spent < seconds or best == float("inf"):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        _sync(device)
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
    return 2 * n**3 / best / 1e9


def bf16_speedup(n: int = 512) -> float:
    """bf16 matmul rate / float32 matmul rate on the CPU, measured now (about 0.3 s)."""
    return matmul_gflops(torch.bfloat16, "cpu", n, 0.15) / matmul_gflops(torch.float32, "cpu", n, 0.15)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_bf16_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def resolve_precision(precision: str, device: str | torch.device) -> tuple[str, str]:
    """The precision that runs for a requested one, and why: ``(concrete, reason)``.

    concrete : "fp32", "bf16" or "fp16" (never "auto").
    "auto" means bf16 autocast on a CPU with native bf16, float32 on any other CPU; on CUDA,
    bf16 where the GPU supports it, else fp16 (trained with a gradient scaler); float32 on
    other devices. An explicit choice is kept as it is.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    if precision != "auto":
        return precision, "requested"
    if device.type == "cuda":
        if cuda_bf16_supported(device):
            return "bf16", f"auto: {torch.cuda.get_device_name(device)} supports bf16"
        return "fp16", f"auto: {torch.cuda.get_device_name(device)} has no bf16; fp16 with a gradient scaler"
    if device.type != "cpu":
        return "fp32", f"auto: float32 on {device.type}"
    info = cpu_info()
    if info.native_bf16:
        return "bf16", f"auto: {info.describe()}; {info.bf16_evidence}"
    return "fp32", f"auto: {info.describe()} would emulate bf16 (about 10x slower than float32)"


_warned_slow_bf16 = False


def warn_if_emulated(precision: str, device: str | torch.device) -> None:
    """Warn (once per process) when bf16 is asked for explicitly on a CPU that emulates it."""
    global _warned_slow_bf16
    if precision != "bf16" or torch.device(device).type != "cpu" or _warned_slow_bf16:
        return
    info = cpu_info()
    if not info.native_bf16:
        _warned_slow_bf16 = True
        warnings.warn(
            f"precision 'bf16' on {info.describe()}: this CPU emulates bf16, which trains about "
            "10x slower than float32; use precision 'auto' or 'fp32'",
            RuntimeWarning,
            stacklevel=3,
        )


def machine_summary(device: str | torch.device = "cpu", measure: bool = True, n: int | None = None) -> dict:
    """The machine a benchmark ran on, with its own matmul rates measured now.

    Returns ``{"device", "cpu", "isa", "native_bf16", "bf16_evidence", "threads", "torch",
    "matmul_gflops": {"fp32": ..., "bf16": ...}}``; bf16 is measured only where it is native
    (a CPU with native bf16, or a GPU with bf16), since an emulated rate is no peak to compare with.
    """
    device = torch.device(device)
    info = cpu_info()
    summary = {"device": device.type, "cpu": info.model, "isa": info.isa, "native_bf16": info.native_bf16,
               "bf16_evidence": info.bf16_evidence, "threads": torch.get_num_threads(),
               "cpu_count": os.cpu_count(), "torch": torch.__version__, "matmul_gflops": {}}
    if device.type == "cuda":
        summary["gpu"] = torch.cuda.get_device_name(device)
    if measure:
        summary["matmul_n"] = n or (8192 if device.type == "cuda" else 1024)
        summary["matmul_gflops"] = _measure_rates(summary, device)
        summary["matmul_measurements"] = [dict(summary["matmul_gflops"])]
    return summary


def _measure_rates(summary: dict, device: torch.device, seconds: float = 1.0) -> dict:
    n = summary["matmul_n"]
    rates = {"fp32": matmul_gflops(torch.float32, device, n, seconds)}
    if cuda_bf16_supported(device) or (device.type == "cpu" and summary["native_bf16"]):
        rates["bf16"] = matmul_gflops(torch.bfloat16, device, n, seconds)
    return rates


def remeasure_peak(summary: dict, device: str | torch.device = "cpu") -> dict:
    """Measure the matmul rates of :func:`machine_summary` again and keep the higher of each.

    On a shared or virtual machine one half-second measurement can miss the peak by 20-30%
    (measured: 140-190 GFLOP/s in float32 on one 2-core EPYC VM within a minute), which would
    flatter every fraction of it; a benchmark calls this after its rows, so that the reference
    is the best rate seen before or after them. Updates ``summary`` in place and returns it.
    """
    rates = _measure_rates(summary, torch.device(device))
    summary["matmul_measurements"].append(rates)
    summary["matmul_gflops"] = {k: max(m[k] for m in summary["matmul_measurements"]) for k in rates}
    return summary


def format_machine(summary: dict) -> str:
    """One or two lines that say what :func:`machine_summary` found."""
    bf16 = "native bf16" if summary["native_bf16"] else "no native bf16"
    lines = [f"CPU: {summary['cpu']} ({summary['isa']}, {bf16}); {summary['threads']} torch threads "
             f"of {summary['cpu_count']} CPUs; torch {summary['torch']}"]
    if "gpu" in summary:
        lines.append(f"GPU: {summary['gpu']}")
    if summary["matmul_gflops"]:
        rates = ", ".join(f"{k} {v:.1f}" for k, v in summary["matmul_gflops"].items())
        runs = len(summary.get("matmul_measurements", [])) > 1
        best = ", the best of measurements before and after the benchmark" if runs else ""
        lines.append(f"matmul rate measured in this run ({summary['device']}, GFLOP/s{best}): {rates}")
    return "\n".join(lines)
