"""coda.hardware: CPU detection, the precision "auto" resolves to, matmul rates; and the
trainer, the inference helpers and the model cards using that choice."""

import warnings

import pytest
import torch

import coda.hardware as H
from coda.cards import _precision_text
from coda.hardware import CPUInfo, parse_cpuinfo, resolve_precision
from coda.inference import autocast

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 avx f16c fma avx2 bmi2 vaes
"""
SAPPHIRE_RAPIDS = """model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
CASCADE_LAKE = """model name\t: Intel(R) Xeon(R) Gold 6230
flags\t\t: sse2 avx avx2 avx512f avx512bw avx512_vnni
"""
GRAVITON3 = """processor\t: 0
Features\t: fp asimd sve bf16 i8mm
CPU implementer\t: 0x41
"""

NATIVE = CPUInfo("Test CPU with bf16", "AVX-512", True, "test")
EMULATED = CPUInfo("Test CPU without bf16", "AVX2", False, "test")


@pytest.mark.parametrize(
    "text, model, isa, native",
    [
        (EPYC, "AMD EPYC", "AVX2", False),
        (SAPPHIRE_RAPIDS, "Intel(R) Xeon(R) Platinum 8480+", "AMX", True),
        (CASCADE_LAKE, "Intel(R) Xeon(R) Gold 6230", "AVX-512", False),
    ],
    ids=["avx2", "amx", "avx512-without-bf16"],
)
def test_parse_cpuinfo_x86(text, model, isa, native):
    info = parse_cpuinfo(text)
    assert (info.model, info.isa, info.native_bf16) == (model, isa, native)
    assert ("lists" in info.bf16_evidence) == native


def test_parse_cpuinfo_arm_features_and_missing_flags():
    assert parse_cpuinfo(GRAVITON3).native_bf16
    assert parse_cpuinfo("model name\t: something\n") is None  # no flags: cpu_info() falls back to a benchmark


ZEN4 = CPUInfo("AMD EPYC", "AVX-512", True, "/proc/cpuinfo lists AVX512-BF16")


@pytest.mark.parametrize(
    "env, isa, native",
    [
        ({}, "AVX-512", True),
        ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, "AVX2", False),
        ({"ONEDNN_MAX_CPU_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2"}, "AVX2", False),
        ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, "AVX-512", False),
        ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "AVX-512", True),
        ({"ONEDNN_MAX_CPU_ISA": "ALL", "ATEN_CPU_CAPABILITY": "avx512"}, "AVX-512", True),
        ({"ATEN_CPU_CAPABILITY": "default"}, "SSE", False),
        ({"ONEDNN_MAX_CPU_ISA": "no-such-isa"}, "AVX-512", True),
    ],
    ids=["none", "onednn-avx2", "both-avx2", "avx512-without-bf16", "bf16-level", "no-cap", "aten-default", "unknown"],
)
def test_isa_caps_of_the_environment_lower_what_torch_may_use(env, isa, native):
    info = H.apply_isa_limits(ZEN4, env)
    assert (info.isa, info.native_bf16) == (isa, native)
    if (isa, native) == (ZEN4.isa, ZEN4.native_bf16):
        assert info == ZEN4  # nothing capped: the CPU as it is
    else:
        assert "capped from AVX-512" in info.describe() and ("no native bf16" in info.describe()) != native
    if not native:
        assert "keep torch from using it" in info.bf16_evidence


def test_isa_caps_never_raise_a_cpu_above_itself_and_leave_arm_alone():
    avx2 = CPUInfo("AMD EPYC", "AVX2", False, "no bf16 flag in /proc/cpuinfo")
    assert H.apply_isa_limits(avx2, {"ONEDNN_MAX_CPU_ISA": "AVX10_1_512_AMX", "ATEN_CPU_CAPABILITY": "avx512"}) == avx2
    graviton = parse_cpuinfo(GRAVITON3)
    assert H.apply_isa_limits(graviton, {"ONEDNN_MAX_CPU_ISA": "AVX2"}) == graviton


def test_auto_is_fp32_on_a_bf16_cpu_capped_to_avx2(monkeypatch):
    monkeypatch.setattr(H, "cpu_info", lambda: H.apply_isa_limits(ZEN4, {"ONEDNN_MAX_CPU_ISA": "AVX2"}))
    concrete, reason = resolve_precision("auto", "cpu")
    assert concrete == "fp32" and "ONEDNN_MAX_CPU_ISA=AVX2" in reason


def test_cpu_info_of_this_machine_is_consistent():
    info = H.cpu_info()
    assert info.model and info.isa and info.bf16_evidence
    assert info.describe().startswith(info.model)
    assert ("no native bf16" in info.describe()) != info.native_bf16


@pytest.mark.parametrize("cpu, expected", [(NATIVE, "bf16"), (EMULATED, "fp32")], ids=["native", "emulated"])
def test_auto_follows_native_bf16(monkeypatch, cpu, expected):
    monkeypatch.setattr(H, "cpu_info", lambda: cpu)
    precision, reason = resolve_precision("auto", "cpu")
    assert precision == expected
    assert reason.startswith("auto: ") and cpu.model in reason
    for explicit in ("fp32", "bf16", "fp16"):
        assert resolve_precision(explicit, "cpu") == (explicit, "requested")


def test_auto_is_fp32_on_other_devices_and_bad_names_raise():
    assert resolve_precision("auto", "meta")[0] == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8", "cpu")


@pytest.mark.parametrize("cpu, dtype", [(NATIVE, torch.bfloat16), (EMULATED, torch.float32)], ids=["native", "emulated"])
def test_autocast_auto_computes_in_the_resolved_dtype(monkeypatch, cpu, dtype):
    monkeypatch.setattr(H, "cpu_info", lambda: cpu)
    with autocast("cpu", "auto"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == dtype


def test_explicit_bf16_on_an_emulating_cpu_warns_once(monkeypatch):
    monkeypatch.setattr(H, "cpu_info", lambda: EMULATED)
    monkeypatch.setattr(H, "_warned_slow_bf16", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            with autocast("cpu", "bf16"):
                pass
        with autocast("cpu", "auto"):
            pass
    slow = [w for w in caught if "emulates bf16" in str(w.message)]
    assert len(slow) == 1 and slow[0].category is RuntimeWarning
    assert "Test CPU without bf16" in str(slow[0].message)


def test_explicit_bf16_on_a_native_cpu_does_not_warn(monkeypatch):
    monkeypatch.setattr(H, "cpu_info", lambda: NATIVE)
    monkeypatch.setattr(H, "_warned_slow_bf16", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with autocast("cpu", "bf16"):
            pass


def test_training_with_auto_records_what_ran(monkeypatch, capsys):
    from coda.train import TrainConfig
    from tests.test_train import TINY, run

    monkeypatch.setattr(H, "cpu_info", lambda: EMULATED)
    _, history = run(TrainConfig(**{**TINY, "precision": "auto"}, epochs=1, batch_size=16), progress=True)
    assert history[0]["precision"] == "fp32"
    out = capsys.readouterr().out
    assert "precision: fp32 (auto: Test CPU without bf16" in out
    assert "epoch   1/1  loss" in out and "{" not in out  # a readable line per epoch, not JSON


def test_matmul_rate_and_machine_summary(monkeypatch):
    rate = H.matmul_gflops(torch.float32, "cpu", n=64, seconds=0.01)
    assert rate > 0
    monkeypatch.setattr(H, "cpu_info", lambda: EMULATED)
    summary = H.machine_summary("cpu", n=64)
    assert set(summary["matmul_gflops"]) == {"fp32"}, "an emulated bf16 rate is no peak"
    monkeypatch.setattr(H, "cpu_info", lambda: NATIVE)
    summary = H.machine_summary("cpu", n=64)
    assert set(summary["matmul_gflops"]) == {"fp32", "bf16"}
    text = H.format_machine(summary)
    assert "Test CPU with bf16 (AVX-512, native bf16)" in text and "GFLOP/s" in text


def test_card_says_which_precision_ran():
    history = [{"precision": "bf16"}, {"precision": "bf16"}, {"precision": "fp32"}]
    assert _precision_text("auto", history) == "precision auto: ran bf16 autocast (epochs 1-2), fp32 (epoch 3)"
    assert "before 2026-12" in _precision_text("auto", [{"epoch": 1}])  # older runs did not record it
    assert _precision_text("fp32", []) == "fp32"


def test_remeasure_peak_keeps_the_best_rate_of_each_dtype(monkeypatch):
    monkeypatch.setattr(H, "cpu_info", lambda: NATIVE)
    rates = iter([100.0, 300.0, 150.0, 250.0])  # fp32, bf16 before; fp32, bf16 after
    monkeypatch.setattr(H, "matmul_gflops", lambda *args, **kwargs: next(rates))
    summary = H.machine_summary("cpu", n=64)
    assert summary["matmul_gflops"] == {"fp32": 100.0, "bf16": 300.0}
    H.remeasure_peak(summary, "cpu")
    assert summary["matmul_gflops"] == {"fp32": 150.0, "bf16": 300.0}
    assert summary["matmul_measurements"] == [{"fp32": 100.0, "bf16": 300.0}, {"fp32": 150.0, "bf16": 250.0}]
    assert "best of measurements before and after" in H.format_machine(summary)
