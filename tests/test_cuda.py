"""Every memory, encoder and retriever on a CUDA device, against the same model on the CPU.

Skipped without a GPU (CI has none). On a GPU machine: ``pytest tests/test_cuda.py``. Each case
builds one small model, copies it to the GPU, and checks that the forward pass in float32, the
gradients, a streamed forward with state, and a bf16-autocast training step agree with the CPU
model (float32 to 1e-4, bf16 to its rounding), so a tensor left on the wrong device or a
CPU-only op anywhere on the path fails here. The last two tests run ``evaluate`` with windows on
the GPU and ``memplug train`` with ``train.device=cuda`` (both crashed on the first GPU run).
"""

import copy
import math

import pytest
import torch

import memplug

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SMALL = dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
CASES = {
    "none": dict(memory=None),
    "xl": dict(memory="xl"),
    "knn": dict(memory="knn"),
    "melodi": dict(memory="melodi"),
    "infini": dict(memory="infini"),
    "full": dict(memory="full"),
    "elastic-legs": dict(memory="elastic", memory_options=dict(order=16, samples=8)),
    "elastic-jacobi": dict(memory="elastic", memory_options=dict(order=16, samples=8, encoder="jacobi",
                                                                 encoder_options={"beta": 1.0})),
    "elastic-legt": dict(memory="elastic", memory_options=dict(order=16, samples=8, encoder="legt",
                                                               encoder_options={"window": 128.0})),
    "elastic-fout": dict(memory="elastic", memory_options=dict(order=16, samples=8, encoder="fout",
                                                               encoder_options={"window": 128.0})),
    "elastic-warped": dict(memory="elastic", memory_options=dict(order=16, samples=8, retriever="warped")),
    "elastic-learned": dict(memory="elastic", memory_options=dict(order=16, samples=8, retriever="learned")),
    "elastic-bf16x6": dict(memory="elastic", memory_options=dict(order=16, samples=8,
                                                                 encoder_options={"scan_precision": "bf16x6"})),
    "elastic-previous-sample": dict(memory="elastic", span="previous",
                                    memory_options=dict(order=16, samples=8, positions="sample")),
}
CUDA = torch.device("cuda")


def pair(case: str) -> tuple[memplug.MemoryModel, memplug.MemoryModel]:
    torch.manual_seed(0)
    cpu = memplug.build_model("tiny", block=32, backbone_options=SMALL, **CASES[case])
    return cpu, copy.deepcopy(cpu).to(CUDA)


def ids(length: int = 160, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("case", sorted(CASES))
def test_float32_forward_and_gradients_match_cpu(case):
    cpu, gpu = pair(case)
    x = ids()
    loss_cpu = cpu(x, labels=x).loss
    loss_gpu = gpu(x.to(CUDA), labels=x.to(CUDA)).loss
    torch.testing.assert_close(loss_gpu.cpu(), loss_cpu, atol=1e-4, rtol=1e-4)
    loss_cpu.backward()
    loss_gpu.backward()
    for (name, a), b in zip(cpu.named_parameters(), gpu.parameters()):
        if a.grad is None:
            assert b.grad is None, name
            continue
        scale = a.grad.abs().max().clamp_min(1e-6)
        torch.testing.assert_close(b.grad.cpu() / scale, a.grad / scale, atol=2e-4, rtol=0, msg=name)


@pytest.mark.parametrize("case", sorted(CASES))
def test_streamed_state_on_cuda(case):
    _, gpu = pair(case)
    gpu.eval()
    x = ids().to(CUDA)
    with torch.no_grad():
        whole = gpu(x).logits
        first = gpu(x[:, :70])
        second = gpu(x[:, 70:], state=first.state)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), whole, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bf16_training_step_matches_float32(case):
    _, gpu = pair(case)
    x = ids().to(CUDA)
    with torch.no_grad():
        exact = gpu(x, labels=x).loss
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = gpu(x, labels=x).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in gpu.parameters() if p.grad is not None)
    torch.testing.assert_close(loss.float(), exact, atol=3e-2, rtol=1e-2)


def test_evaluate_takes_windows_on_the_gpu():
    from memplug.app.evaluate import evaluate

    _, gpu = pair("elastic-legs")
    windows = ids(length=97, batch=3)
    on_host = evaluate(gpu, windows, batch_size=2)
    on_gpu = evaluate(gpu, windows.to(CUDA), batch_size=2)
    assert on_gpu["memory"]["bpb"] == pytest.approx(on_host["memory"]["bpb"], rel=1e-6)


def test_train_command_on_cuda(tmp_path, monkeypatch):
    from train_helpers import tiny_config

    from memplug.app.train import train

    monkeypatch.setenv("MEMPLUG_CACHE", str(tmp_path / "cache"))
    result = train(tiny_config(tmp_path, "train.steps=3", "train.warmup=1", "train.device=cuda", memory="elastic"))
    assert math.isfinite(result.evals[max(result.evals)]["bpb"])


@pytest.mark.parametrize("options", [{"scan_precision": "bf16x6"}, {"scan_method": "fused"}], ids=["bf16x6", "fused"])
def test_fast_scans_on_cuda_keep_float32_accuracy(options):
    """LegS at N = 300, forward and backward, as close to float64 as the float32 sequential scan:
    the split scan's bf16 products with float32 outputs (torch.bmm's out_dtype) in triangular row
    chunks (three), and the fused scan's Triton kernel compiled for the GPU (the CPU tests run it
    interpreted; lower-triangular tiles, a partial last tile)."""
    if options.get("scan_method") == "fused":
        pytest.importorskip("triton")
    from memplug.plugins.encoders.legs import LegS

    x = torch.randn(2, 1000, 70, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    weight = torch.linspace(-1, 1, 2 * 10 * 300 * 70, dtype=torch.float64).view(2, 10, 300, 70)
    results = {}
    for name, dtype, device, chosen in (("exact", torch.float64, "cpu", {}), ("float32", torch.float32, "cuda", {}),
                                        ("fast", torch.float32, "cuda", options)):
        leaf = x.detach().to(device, dtype).requires_grad_()
        states = LegS(300, **({"scan_method": "sequential"} | chosen)).scan(leaf, 100)
        (states * weight.to(device, dtype)).sum().backward()
        results[name] = (states.detach().cpu().double(), leaf.grad.cpu().double())
    for exact, single, fast in zip(results["exact"], results["float32"], results["fast"]):
        assert (fast - exact).abs().max() <= 4 * (single - exact).abs().max() + 1e-7 * exact.abs().max()
