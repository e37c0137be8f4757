"""Mutation testing: does the suite catch small, plausible bugs in memplug's core invariants?

Each entry of :data:`MUTATIONS` names a file, a code snippet that must occur in it exactly once,
its replacement (a plausible bug), and the tests that should catch it. For each mutation, one
at a time, the script copies the snippet's replacement into a copy of the tree (never the
working tree), runs those tests there, and reports:

- ``caught``: a test failed (or the run hit the time limit);
- ``SURVIVED``: the tests passed with the bug in place: a gap in the suite;
- ``not applied``: the snippet is not in the file, or not exactly once (the code moved: update
  the entry);
- ``error``: pytest could not run the tests (a collection error, no such test).

Usage (about 10 s a mutation, 8 minutes for all, on two cores; before a release, not in CI)::

    python tools/mutate.py                  # every mutation; a table at the end
    python tools/mutate.py --list           # the mutations, without running anything
    python tools/mutate.py --only resume-rng bptt-detach
    python tools/mutate.py --markdown       # the table as Markdown (docs/testing.md)

It is a plain script rather than mutmut or cosmic-ray: those generate mutants by operator (every
``<`` flipped, every constant changed) over whole files and run the whole suite per mutant,
which on this suite is days of CPU and mostly equivalent or trivial mutants. Curated mutations
name the invariant each one attacks, and the tests that claim to guard it.

Exit status: 0 when every mutation was applied and caught, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    """Replace ``old`` (which must occur exactly once in ``file``) by ``new``; ``tests`` (pytest
    node ids or files) must then fail."""

    id: str
    invariant: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


def m(id: str, invariant: str, file: str, old: str, new: str, *tests: str) -> Mutation:
    return Mutation(id, invariant, file, old, new, tests)


TRAIN = "memplug/app/train.py"
EXACT = "tests/test_train_exactness.py"
ELASTIC = "plugins/memories/elastic.py"
LAYER = "memplug/core/layer.py"
SCAN = "memplug/hippo/scan.py"
FUSED = "memplug/hippo/fused_scan.py"
KIT_MEMORY = "memplug/testing/memories.py"
KIT_ENCODER = "memplug/testing/encoders.py"
KIT_RETRIEVER = "memplug/testing/retrievers.py"
VIOLATIONS = "tests/test_kit_violations.py::test_the_kit_names_the_one_broken_invariant"

#: The curated mutations, grouped by what they attack. Ids are stable names for ``--only``.
MUTATIONS: list[Mutation] = [
    # -- training loop: exact resume, truncated BPTT --------------------------------------------
    m("resume-rng", "exact resume", TRAIN,
      "            restore_rng(ckpt.rng())\n", "",
      f"{EXACT}::test_resume_with_a_random_retriever_gives_the_same_losses_bit_for_bit"),
    m("resume-optimizer", "exact resume", TRAIN,
      "            ckpt.load_optimizer(self.optimizer)\n", "",
      f"{EXACT}::test_resume_with_a_random_retriever_gives_the_same_losses_bit_for_bit"),
    m("resume-data-order", "exact resume", TRAIN,
      "rows = self.sampler.batch(step, tc.batch_size)", "rows = self.sampler.batch(step - self.result.start_step, tc.batch_size)",
      f"{EXACT}::test_resume_with_a_random_retriever_gives_the_same_losses_bit_for_bit"),
    m("rng-restore-torch", "exact resume", "memplug/app/checkpoint.py",
      '    torch.set_rng_state(state["torch"])\n', "",
      f"{EXACT}::test_resume_with_a_random_retriever_gives_the_same_losses_bit_for_bit",
      "tests/test_checkpoint.py::test_round_trip_weights_optimizer_rng_and_extra_files"),
    m("bptt-detach", "truncated BPTT", TRAIN,
      "state = output.state.detach()", "state = output.state",
      f"{EXACT}::test_truncated_bptt_with_elastic"),
    m("bptt-reset", "truncated BPTT", TRAIN,
      "            if s == 0:\n", "            if True:\n",
      f"{EXACT}::test_truncated_bptt_with_elastic"),
    m("bptt-loss-scale", "truncated BPTT", TRAIN,
      "loss = output.loss * (micro * x.shape[1]) / (share * seq)", "loss = output.loss * micro / share",
      f"{EXACT}::test_truncated_bptt_with_elastic"),
    m("lr-warmup", "learning-rate schedule", TRAIN,
      "return lr * step / max(warmup, 1)", "return lr * (step - 1) / max(warmup, 1)",
      "tests/test_train.py::test_lr_schedule_warms_up_then_decays_to_the_floor"),
    # -- elastic -------------------------------------------------------------------------------
    m("elastic-sample-position", "elastic sample positions", ELASTIC,
      "rel = self.retriever.positions(t, self.encoder) - t.unsqueeze(-1)",
      "rel = self.retriever.positions(t, self.encoder) - t.unsqueeze(-1) - 1",
      "tests/test_elastic.py::test_sample_positions"),
    m("elastic-empty-shown", "an empty memory is hidden", ELASTIC,
      "first_hidden=when[0] == 0)", "first_hidden=False)",
      "tests/test_elastic.py"),
    m("elastic-block-times", "block form = step form", ELASTIC,
      "return torch.arange(first, first + nb * step, step,", "return torch.arange(0, nb * step, step,",
      "tests/test_elastic.py"),
    m("elastic-state-stale", "chunking invariance", ELASTIC,
      'final = rearrange(states[complete], "n (b c) -> b n c"', 'final = rearrange(states[0], "n (b c) -> b n c"',
      "tests/test_elastic.py", "tests/test_memories.py::test_chunking_invariance"),
    m("elastic-bf16-memory", "bf16 reads the memory", ELASTIC,
      "samples = self._sample(states.to(dtype), when)  # (nb, P, B*Hkv*2D)",
      "samples = self._sample(states.to(dtype), when) * (dtype != torch.bfloat16)  # (nb, P, B*Hkv*2D)",
      "tests/test_elastic.py::test_float32_state_under_bf16_autocast"),
    # -- other memories ------------------------------------------------------------------------
    m("xl-first-block", "chunking invariance", "plugins/memories/xl.py",
      '{"keys": k[:, :, complete - 1].detach().clone(), "values": v[:, :, complete - 1].detach().clone()}',
      '{"keys": k[:, :, 0].detach().clone(), "values": v[:, :, 0].detach().clone()}',
      "tests/test_memories.py::test_chunking_invariance",
      "tests/test_memories.py::test_xl_caches_the_previous_block_detached"),
    m("xl-gradient-through-cache", "xl is a stop-gradient cache", "plugins/memories/xl.py",
      "keys = torch.cat([prev_k.unsqueeze(2), k[:, :, : nb - 1].detach()], dim=2)",
      "keys = torch.cat([prev_k.unsqueeze(2), k[:, :, : nb - 1]], dim=2)",
      "tests/test_memories.py::test_xl_caches_the_previous_block_detached"),
    # -- encoders ------------------------------------------------------------------------------
    m("legs-drive-start", "encoder exactness", "memplug/hippo/scale_invariant.py",
      "return own if t0 == 0 else self._by_ratio([(t0, t1)], dtype, device)[0][1] @ own", "return own",
      "tests/test_encoders_legs.py::test_state_is_the_exact_projection_at_any_t_and_chunking"),
    # one block update serves both measure bases: the carried state must stay in float32
    m("bf16-carry", "float32 state under bf16 tokens", SCAN,
      "return transition @ state.to(dtype) + measure.span_drive",
      "return transition @ state.to(x.dtype).to(dtype) + measure.span_drive",
      "tests/test_encoders_legs.py::test_bf16_tokens_are_projected_in_bf16_and_accumulated_in_float32",
      "tests/test_encoders_lti.py::test_bf16_tokens_accumulate_in_the_state_dtype"),
    m("scan-block-starts", "encoder scan = update", SCAN,
      "spans = [(t0 + i * block, t0 + (i + 1) * block) for i in range(full)]",
      "spans = [(t0 + (i + 1) * block, t0 + (i + 2) * block) for i in range(full)]",
      "tests/test_encoders_legs.py::test_update_chunking_and_scan_agree_float64"),
    m("scan-empty-state-bf16", "float32 state under bf16 tokens", SCAN,
      "dtype = torch.promote_types(torch.float32 if state is None else state.dtype, x.dtype)",
      "dtype = torch.promote_types(x.dtype if state is None else state.dtype, x.dtype)",
      "tests/test_encoders_legs.py::test_bf16_tokens_are_projected_in_bf16_and_accumulated_in_float32",
      "tests/test_elastic.py::test_float32_state_under_bf16_autocast"),
    m("scan-triangular-columns", "triangular steps = dense steps", SCAN,
      "cols = slice(k * r0, None) if upper else slice(0, k * r1)",
      "cols = slice(k * r0, None) if upper else slice(0, k * r0)",
      "tests/test_ops_scan.py::test_lower_triangular_steps_equal_dense"),
    m("scan-backward-transpose", "scan gradients", SCAN,
      "left = _left_operand(A.mT) if ctx.split else A.mT", "left = _left_operand(A.mT) if ctx.split else A",
      "tests/test_ops_scan.py::test_gradients_agree"),
    m("scan-compiled-chunks", "out-of-place steps = in-place steps", SCAN,
      "c = step + torch.cat([a[:, r0:r1, :r1] @ c[:, :r1] for r0, r1 in chunks], dim=-2)",
      "c = step + torch.cat([a[:, r0:r1, r0:r1] @ c[:, r0:r1] for r0, r1 in chunks], dim=-2)",
      "tests/test_ops_scan.py::test_out_of_place_triangular_steps_equal_the_in_place_scan_and_run_compiled"),
    m("scan-auto-threshold", "the auto scan method", SCAN,
      'if u.device.type == "cpu" or u.shape[-3] < PARALLEL_MIN_STEPS:',
      'if u.device.type == "cpu" or u.shape[-3] < PARALLEL_MIN_STEPS - 1:',
      "tests/test_ops_scan.py::test_auto_method_on_an_accelerator"),
    m("fused-lower-tiles", "fused scan = sequential scan", FUSED,
      "k_hi = r0 + BLOCK_N if LOWER else n", "k_hi = r0 if LOWER else n",
      "tests/test_fused_scan.py::test_fused_scan_equals_the_sequential_scan_under_the_interpreter"),
    m("fused-backward-step", "fused scan = sequential scan", FUSED,
      "                a_step = i + 1\n", "                a_step = i\n",
      "tests/test_fused_scan.py::test_fused_scan_equals_the_sequential_scan_under_the_interpreter"),
    m("legendre-recurrence", "encoder basis", "memplug/hippo/legendre.py",
      "value=(2 * k + 1) / (k + 1)", "value=(2 * k + 1) / (k + 2)",
      "tests/test_ops_legendre.py::test_legendre_matches_scipy"),
    m("legt-sign", "encoder matrices", "plugins/encoders/legt.py",
      "sign = torch.where(diff >= 0, 1.0, (-1.0) ** diff.abs())",
      "sign = torch.where(diff >= 0, 1.0, (-1.0) ** (diff.abs() + 1))",
      "tests/test_encoders_lti.py::test_matrices_match_reference"),
    m("legt-window", "encoder basis", "plugins/encoders/legt.py",
      "return shifted_legendre(self.order, 1 - lag / self.window)",
      "return shifted_legendre(self.order, 1 - lag / (self.window + 1))",
      "tests/test_encoders_lti.py::test_basis_matches_reference"),
    # -- retrievers ----------------------------------------------------------------------------
    m("uniform-midpoints", "retriever positions", "memplug/ops/sampling.py",
      "return (torch.arange(samples, dtype=dtype, device=device) + 0.5) / samples",
      "return (torch.arange(samples, dtype=dtype, device=device) + 0.25) / samples",
      "tests/test_retrievers.py"),
    m("warp-exponential", "retriever positions", "plugins/retrievers/warped.py",
      "return torch.expm1(rate * u) / math.expm1(rate)", "return torch.expm1(rate * u) / math.expm1(rate) * 0.999",
      "tests/test_retrievers.py"),
    m("learned-ends", "retriever positions", "plugins/retrievers/learned.py",
      "return torch.softmax(self.logits.to(torch.float64), dim=0).cumsum(0)[:-1]",
      "return torch.softmax(self.logits.to(torch.float64), dim=0).cumsum(0)[1:]",
      "tests/test_retrievers.py"),
    m("jittered-random-in-eval", "retriever positions", "plugins/retrievers/jittered.py",
      "fractions = self.draw() if self.training else self.fractions", "fractions = self.draw()",
      "tests/test_evidence_smoke.py::test_jittered_retriever_contract_and_randomness"),
    m("read-basis-time", "read = basis @ state", "memplug/core/contracts.py",
      "phi = encoder.basis(pos, t).to(state)", "phi = encoder.basis(pos, t * 0.999).to(state)",
      "tests/test_retrievers.py"),
    # -- the layer -----------------------------------------------------------------------------
    m("mask-causal", "causality", "memplug/ops/attention.py",
      "visible = j <= i + (local_keys - queries)", "visible = j <= i + (local_keys - queries) + 1",
      "tests/test_attention.py", "tests/test_model.py::test_causality"),
    m("layer-partial-values", "chunking invariance", LAYER,
      'new_cache["k"], new_cache["v"] = k[:, :, complete * L : n].clone(), v[:, :, complete * L : n].clone()',
      'new_cache["k"], new_cache["v"] = k[:, :, complete * L : n].clone(), k[:, :, complete * L : n].clone()',
      "tests/test_model.py::test_chunking_invariance_4k"),
    m("layer-memory-bias", "memory bias", LAYER,
      "                mask = mask + bias  # (B|1, H|1, nb|1, L, K)\n", "",
      "tests/test_layers.py", "tests/test_model.py"),
    m("layer-memory-rotation", "memory key positions", LAYER,
      "mem_k = rotate(mem_k, w0 + read.key_positions)", "mem_k = rotate(mem_k, read.key_positions)",
      "tests/test_layer_memory_positions.py", "tests/test_layers.py"),
    m("layer-previous-rotation", "local positions", LAYER,
      "keys.insert(0, rotate(prev_k, pos - L))", "keys.insert(0, rotate(prev_k, pos))",
      "tests/test_layers.py"),
    m("layer-gate-ignored", "gate", LAYER,
      "        return open_by_gate(base, joint, self.gate)\n", "        return joint\n",
      "tests/test_gate_sink.py"),
    m("layer-mask-ignored", "memory_masked", LAYER,
      "if self.memory is not None and not self.masked:", "if self.memory is not None:",
      "tests/test_evaluate.py", "tests/test_gate_sink.py"),
    # -- the model -----------------------------------------------------------------------------
    m("model-position", "chunking invariance", "memplug/core/model.py",
      "ModelState(state.position + input_ids.shape[1], caches,", "ModelState(state.position, caches,",
      "tests/test_model.py::test_chunking_invariance_4k"),
    m("model-swap-shared", "one retriever per layer", "memplug/core/model.py",
      "                new = copy.deepcopy(retriever)\n", "                pass\n",
      "tests/test_elastic.py::test_swap_retriever_changes_logits_not_weights"),
    # -- the kit (memplug.testing) -------------------------------------------------------------
    m("kit-memory-chunking", "kit: memory chunking", KIT_MEMORY,
      "        for length in case.chunking:\n            out, state = h.logits(",
      "        for length in (ids.shape[1],):\n            out, state = h.logits(",
      f"{VIOLATIONS}[chunking invariance]", "tests/test_testing_kit.py"),
    m("kit-round-trip-self", "kit: state round trip", KIT_MEMORY,
      "expect_close(h.logits(rest, loaded)[0], h.logits(rest, state)[0], 0.0,",
      "expect_close(h.logits(rest, loaded)[0], h.logits(rest, loaded)[0], 0.0,",
      f"{VIOLATIONS}[state round-trip]"),
    m("kit-causality-self", "kit: causality", KIT_MEMORY,
      "other_logits, _ = h.logits(_redrawn(case, ids, h.vocab))", "other_logits, _ = h.logits(ids)",
      "tests/test_testing_kit.py::test_leaking_memory_is_caught"),
    m("kit-reach-off", "kit: gradient reach", KIT_MEMORY,
      "    if not change > 100 * h.tolerance:\n", "    if False:\n",
      "tests/test_testing_kit.py::test_memory_whose_state_is_never_read_is_caught"),
    m("kit-read-self", "kit: retriever read", KIT_RETRIEVER,
      "expect_close(out, want, 1e-9,", "expect_close(out, out, 1e-9,",
      f"{VIOLATIONS}[read]"),
    m("kit-linearity-self", "kit: encoder linearity", KIT_ENCODER,
      "expect_close(mixed, apart,", "expect_close(mixed, mixed,",
      f"{VIOLATIONS}[linearity]"),
    m("kit-basis-self", "kit: encoder basis", KIT_ENCODER,
      "expect_close(batched, torch.stack([phi for _, phi in rows]), 1e-12,", "expect_close(batched, batched, 1e-12,",
      f"{VIOLATIONS}[basis]"),
    m("kit-precision-self", "kit: float32 vs float64", KIT_ENCODER,
      "err = relative_error(finals[0], finals[1])", "err = relative_error(finals[1], finals[1])",
      f"{VIOLATIONS}[float32 vs float64]"),
    m("kit-support-off", "kit: retriever positions", KIT_RETRIEVER,
      "outside = ((pos < lo - tol) | (pos > hi + tol)).nonzero().flatten().tolist()",
      "outside = ((pos < lo - tol) & (pos > hi + tol)).nonzero().flatten().tolist()",
      "tests/test_testing_kit.py::test_retriever_outside_the_support_is_caught"),
]


@dataclass
class Outcome:
    mutation: Mutation
    result: str  # caught | SURVIVED | not applied | error
    seconds: float = 0.0
    detail: str = ""


def copy_tree(dest: Path) -> None:
    """The files git knows (tracked, and untracked but not ignored) into ``dest``, with the
    package layout the editable install maps (``memplug.plugins`` is ``plugins/``,
    ``memplug.backbones`` is ``backbones/``) made by links, so ``PYTHONPATH=dest`` imports
    every module from the copy."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    for package in ("plugins", "backbones"):
        (dest / "memplug" / package).symlink_to(Path("..") / package)


def environment(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONDONTWRITEBYTECODE": "1"}


def check_imports_from(tree: Path) -> None:
    """Fail loudly unless the copy, not the working tree, is what the tests import."""
    code = ("import memplug, memplug.plugins.memories.elastic as e, memplug.testing.memories as k; "
            "print(memplug.__file__); print(e.__file__); print(k.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=environment(tree), check=True,
                         capture_output=True, text=True).stdout.split()
    outside = [p for p in out if not Path(p).resolve().is_relative_to(tree.resolve())]
    if outside:
        raise SystemExit(f"mutate: the copy imports modules from outside it: {outside}")


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[int | None, str]:
    """pytest on ``tests`` in ``tree``, single-threaded, stopping at the first failure.
    Returns (exit status or None on timeout, the last line of the report)."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *tests]
    try:
        done = subprocess.run(command, cwd=tree, env=environment(tree), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    failed = [line.split(" ", 1)[1].split(" - ")[0] for line in lines if line.startswith(("FAILED ", "ERROR "))]
    return done.returncode, (failed[0] if failed else lines[-1] if lines else done.stderr.strip()[-200:])


def apply(tree: Path, mutation: Mutation) -> str | None:
    """Write the mutant into ``tree``; return the original text, or None when the snippet is not
    there exactly once."""
    path = tree / mutation.file
    if not path.is_file():
        return None
    text = path.read_text()
    if occurrences(text, mutation.old) != 1:
        return None
    path.write_text(text.replace(mutation.old, mutation.new))
    return text


def occurrences(text: str, old: str) -> int:
    """How often ``old`` occurs in ``text``; a snippet that starts with indentation counts only at
    the start of a line (inside a more indented line it would change the indentation, not the code)."""
    if not old[:1].isspace():
        return text.count(old)
    return len(re.findall(r"(?m)^" + re.escape(old), text))


def mutate(tree: Path, mutation: Mutation, timeout: float) -> Outcome:
    path = tree / mutation.file
    original = apply(tree, mutation)
    if original is None:
        found = occurrences(path.read_text(), mutation.old) if path.is_file() else 0
        return Outcome(mutation, "not applied", detail=f"snippet found {found} times in {mutation.file}, expected once")
    start = time.perf_counter()
    try:
        status, detail = run_tests(tree, mutation.tests, timeout)
    finally:
        path.write_text(original)
    seconds = time.perf_counter() - start
    result = {None: "caught", 0: "SURVIVED", 1: "caught"}.get(status, "error")
    return Outcome(mutation, result, seconds, detail if status != 0 else "all passed")


def table(outcomes: list[Outcome], markdown: bool) -> str:
    rows = [(o.mutation.id, o.mutation.invariant, o.mutation.file, o.result, f"{o.seconds:.0f}", o.detail)
            for o in outcomes]
    header = ("mutation", "invariant", "file", "result", "s", "first failing test / note")
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join([f"`{r[0]}`", r[1], f"`{r[2]}`", r[3], r[4], f"`{r[5]}`"]) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in [header, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only these mutations")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutation (a timeout counts as caught)")
    parser.add_argument("--markdown", action="store_true", help="print the final table as Markdown")
    parser.add_argument("--keep", action="store_true", help="keep the copy of the tree (its path is printed)")
    args = parser.parse_args(argv)
    chosen = MUTATIONS
    if args.only:
        unknown = sorted(set(args.only) - {mu.id for mu in MUTATIONS})
        if unknown:
            print(f"mutate: error: --only: no mutation {', '.join(unknown)}; see --list", file=sys.stderr)
            return 2
        chosen = [mu for mu in MUTATIONS if mu.id in args.only]
    if args.list:
        for mu in chosen:
            print(f"{mu.id:28} {mu.invariant:28} {mu.file}")
        return 0
    tree = Path(tempfile.mkdtemp(prefix="memplug-mutate-"))
    try:
        copy_tree(tree)
        check_imports_from(tree)
        outcomes = []
        for i, mutation in enumerate(chosen, 1):
            outcome = mutate(tree, mutation, args.timeout)
            outcomes.append(outcome)
            print(f"[{i}/{len(chosen)}] {mutation.id}: {outcome.result} ({outcome.seconds:.0f} s) {outcome.detail}",
                  flush=True)
        print()
        print(table(outcomes, args.markdown))
    finally:
        if args.keep:
            print(f"mutate: the copy is kept at {tree}", file=sys.stderr)
        else:
            shutil.rmtree(tree, ignore_errors=True)
    return 0 if all(o.result == "caught" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
