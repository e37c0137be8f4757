"""memplug.app.precision: bf16 autocast only where the hardware computes it fast, with an override."""

import pytest
import torch

from memplug.app import precision as prec
from memplug.app.precision import ENV, autocast, resolve_precision


@pytest.fixture
def cpu_speedup(monkeypatch):
    """Pretend the CPU micro-benchmark measured a given bf16 speed-up over float32."""
    monkeypatch.delenv(ENV, raising=False)

    def set_speedup(value: float) -> None:
        monkeypatch.setattr(prec, "cpu_bf16_speedup", lambda: value)

    return set_speedup


@pytest.mark.parametrize(("speedup", "expected"), [(0.02, "fp32"), (0.9, "fp32"), (1.1, "fp32"), (6.0, "bf16")])
def test_auto_follows_the_measured_speed(cpu_speedup, speedup, expected):
    cpu_speedup(speedup)
    choice = resolve_precision("auto", "cpu")
    assert choice.name == expected
    assert "matmul" in choice.reason  # the header says why


def test_slow_cpu_reason_names_the_slowdown(cpu_speedup):
    cpu_speedup(0.02)
    assert "50.0x slower" in resolve_precision("auto", "cpu").reason


def test_environment_forces_auto_but_not_an_explicit_choice(cpu_speedup, monkeypatch):
    cpu_speedup(6.0)
    monkeypatch.setenv(ENV, "fp32")
    assert resolve_precision("auto", "cpu").name == "fp32"
    assert resolve_precision("bf16", "cpu").name == "bf16"
    cpu_speedup(0.02)
    monkeypatch.setenv(ENV, "bf16")
    assert resolve_precision("auto", "cpu").name == "bf16"
    assert resolve_precision("fp32", "cpu").name == "fp32"
    monkeypatch.setenv(ENV, "fp16")
    with pytest.raises(ValueError, match=ENV):
        resolve_precision("auto", "cpu")


def test_bad_precision_names_the_choices():
    with pytest.raises(ValueError, match="auto, bf16, fp32"):
        resolve_precision("half")


def test_autocast_context_follows_the_choice(cpu_speedup):
    x = torch.randn(4, 4)
    cpu_speedup(0.02)
    with autocast("cpu", "auto"):
        assert (x @ x).dtype == torch.float32
    cpu_speedup(6.0)
    with autocast("cpu", "auto"):
        assert (x @ x).dtype == torch.bfloat16


def test_micro_benchmark_measures_both_dtypes():
    """The real measurement: a positive finite ratio (its value depends on the CPU)."""
    prec.cpu_bf16_speedup.cache_clear()
    speedup = prec.cpu_bf16_speedup()
    assert 0 < speedup < float("inf")
    assert prec.cpu_bf16_speedup() == speedup  # measured once per process
