"""Long-context probes for any MemoryModel (Hugging Face ones included), through its own tokenizer.

Needle in a haystack (one needle, several keys, several values), passkey retrieval and variable
tracking, as in RULER, at context lengths from 1k tokens to 64k and beyond and needle depths from
0 to 100%. The haystack is held-out text of a registered corpus (``literature`` by default)::

    from memplug.probes import MemoryModelReader, make_probe, run_probes, to_markdown
    result = run_probes(MemoryModelReader(model), tokenizer, [make_probe("passkey")],
                        lengths=[1024, 4096, 16384], depths=[0.0, 0.5, 1.0], samples=8)
    print(to_markdown(result))

``memplug probe`` runs the same from the command line and writes JSON, Markdown and a heatmap.
"""

from .base import Needle, Probe, ProbeSample
from .haystack import Haystack
from .needle import MultiKeyNeedle, MultiValueNeedle, SingleNeedle
from .passkey import Passkey
from .readers import HFCausalLMReader, MemoryModelReader, Reader
from .runner import SCORINGS, heatmap, run_probes, to_markdown
from .variables import VariableTracking

#: name -> probe class
PROBES: dict[str, type[Probe]] = {cls.name: cls for cls in (SingleNeedle, MultiKeyNeedle, MultiValueNeedle, Passkey,
                                                            VariableTracking)}


def make_probe(name: str, **options) -> Probe:
    """A probe by name: ``needle``, ``multikey``, ``multivalue``, ``passkey`` or ``variables``."""
    if name not in PROBES:
        raise ValueError(f"probe must be one of {', '.join(PROBES)}; got {name!r}")
    return PROBES[name](**options)


__all__ = ["PROBES", "SCORINGS", "HFCausalLMReader", "Haystack", "MemoryModelReader", "MultiKeyNeedle",
           "MultiValueNeedle", "Needle", "Passkey", "Probe", "ProbeSample", "Reader", "SingleNeedle",
           "VariableTracking", "heatmap", "make_probe", "run_probes", "to_markdown"]
