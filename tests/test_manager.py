"""The plugin manager: built-ins registered in code, third-party entry points, errors that help."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

import memplug
from memplug.core import manager
from memplug.core.registry import PluginError, Registry, UnknownComponentError

BUILTIN_ENCODERS = {"legs", "legt", "fout", "jacobi"}
BUILTIN_RETRIEVERS = {"uniform", "warped", "learned"}


def test_builtins_are_registered_in_code():
    plugins = manager.build_plugins()
    assert not plugins.failures
    assert BUILTIN_ENCODERS <= set(plugins.registries["encoder"].names())
    assert BUILTIN_RETRIEVERS <= set(plugins.registries["retriever"].names())
    for entry in plugins.registries["encoder"].entries().values():
        assert entry.provider == manager.BUILTIN_PROVIDER


def test_builtins_need_no_entry_points(monkeypatch):
    """A source checkout that was never (re)installed has no memplug entry points: every built-in
    still registers, from the tuple in the manager."""
    monkeypatch.setattr(manager, "_entry_points", lambda: [])
    plugins = manager.build_plugins()
    kinds = {kind: set(reg.names()) for kind, reg in plugins.registries.items()}
    assert BUILTIN_ENCODERS <= kinds["encoder"] and "elastic" in kinds["memory"] and "tiny" in kinds["backbone"]
    assert {"sdpa", "flex"} <= kinds["attention"] and {"literature", "code", "pydocs"} <= kinds["dataset"]


def test_every_builtin_module_registers_something():
    """Each module of BUILTIN_PLUGINS adds at least one class: a line there that adds nothing is a
    typo or a module that lost its hook."""
    plugins = manager.build_plugins()
    registered = {entry.cls.__module__ for reg in plugins.registries.values() for entry in reg.entries().values()}
    assert set(manager.BUILTIN_PLUGINS) <= registered


def test_unknown_name_lists_what_exists_and_where_from():
    with pytest.raises(UnknownComponentError) as info:
        memplug.make_encoder("legz", order=4)
    message = str(info.value)
    assert "legz" in message and "legs (memplug" in message and "fout" in message
    assert isinstance(info.value, KeyError)


def test_duplicate_names_name_both_providers():
    class A(memplug.Encoder):
        name = "dup"

    class B(memplug.Encoder):
        name = "dup"

    registry = Registry("encoder", memplug.Encoder)
    registry.provider = "first-dist 1.0"
    registry.add(A)
    registry.provider = "second-dist 2.0"
    with pytest.raises(PluginError) as info:
        registry.add(B)
    assert "first-dist 1.0" in str(info.value) and "second-dist 2.0" in str(info.value)


def test_wrong_base_class_is_refused():
    class NotAnEncoder:
        name = "nope"

    with pytest.raises(PluginError, match="must subclass Encoder"):
        Registry("encoder", memplug.Encoder).add(NotAnEncoder)


def test_register_in_code_and_mix_components():
    class Doubling(memplug.Retriever):
        """Samples at the support's end points only (a toy sampler)."""

        name = "test-endpoints"
        samples = 2

        def positions(self, t, encoder):
            lo, hi = encoder.support(float(t))
            return torch.tensor([lo + 0.25 * (hi - lo), lo + 0.75 * (hi - lo)], dtype=torch.float64)

    memplug.register(Doubling)
    try:
        assert "test-endpoints" in memplug.available("retriever")
        retriever = memplug.make_retriever("test-endpoints")
        encoder = memplug.make_encoder("legs", order=8)
        state = encoder.update(encoder.init_state(channels=3, dtype=torch.float64), torch.ones(10, 3, dtype=torch.float64), 0)
        samples = retriever.read(encoder, state, 10)
        assert samples.shape == (2, 3)
        torch.testing.assert_close(samples, torch.ones(2, 3, dtype=torch.float64))
    finally:
        manager.reset_plugin_manager()


def test_register_rejects_non_components():
    with pytest.raises(TypeError, match="not a memplug component"):
        memplug.register(dict)


def _fake_distribution(root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    dist = root / f"{name}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[memplug]\n{lines}\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    _fake_distribution(
        tmp_path,
        "memplug_thirdparty",
        {"tp-good": "tp_good", "tp-broken": "tp_broken"},
        {
            "tp_good": '''
                import memplug
                from memplug.plugins.encoders.legs import LegS

                class Wide(LegS):
                    name = "tp-wide"

                @memplug.hookimpl
                def memplug_add_encoders(registry):
                    registry.add(Wide)
            ''',
            "tp_broken": "raise ImportError('this plugin is broken on purpose')\n",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for module in ("tp_good", "tp_broken"):
        sys.modules.pop(module, None)


def test_third_party_failure_is_reported_and_the_rest_load(third_party):
    with pytest.warns(UserWarning, match="tp-broken"):
        plugins = manager.build_plugins(autoload=True)
    assert "tp-broken" in plugins.failures
    assert "broken on purpose" in plugins.failures["tp-broken"]
    entry = plugins.registries["encoder"].entries()["tp-wide"]
    assert entry.provider == "memplug_thirdparty 1.0"
    assert BUILTIN_ENCODERS <= set(plugins.registries["encoder"].names())


def test_disable_autoload_skips_third_party_but_keeps_builtins(third_party, monkeypatch):
    monkeypatch.setenv(manager.DISABLE_ENV, "1")
    plugins = manager.build_plugins()
    assert "tp-wide" not in plugins.registries["encoder"].names()
    assert not plugins.failures
    assert BUILTIN_ENCODERS <= set(plugins.registries["encoder"].names())


def test_cli_lists_plugins_with_providers(capsys):
    from memplug.app.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for name in BUILTIN_ENCODERS | BUILTIN_RETRIEVERS:
        assert f" {name} " in out
    assert "memplug 0.1.0" in out


def test_make_with_object_and_options_is_an_error():
    encoder = memplug.make_encoder("legs", order=4)
    assert memplug.make_encoder(encoder) is encoder
    with pytest.raises(ValueError, match="ready encoder object"):
        memplug.make_encoder(encoder, order=8)
