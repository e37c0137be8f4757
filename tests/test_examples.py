"""``memplug init``: the example configs installed with the package, written into a folder."""

from __future__ import annotations

from pathlib import Path

from memplug.app.cli import main
from memplug.app.config import load_config

SOURCE = Path(__file__).resolve().parent.parent / "configs"


def test_init_writes_every_example_config_that_loads(tmp_path, capsys):
    assert main(["init", "--dir", str(tmp_path / "configs")]) == 0
    written = sorted(p.name for p in (tmp_path / "configs").iterdir())
    assert written == sorted(p.name for p in SOURCE.glob("*.toml"))
    for name in written:
        assert (tmp_path / "configs" / name).read_text() == (SOURCE / name).read_text()
        load_config(tmp_path / "configs" / name)  # each is a valid experiment
    assert len(capsys.readouterr().out.splitlines()) == len(written)


def test_init_keeps_existing_files_unless_forced(tmp_path, capsys):
    target = tmp_path / "default.toml"
    target.write_text("# mine\n")
    assert main(["init", "default", "code-xl", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "default.toml already exists" in err and "--force" in err
    assert target.read_text() == "# mine\n" and not (tmp_path / "code-xl.toml").exists()  # nothing written
    assert main(["init", "default", "--dir", str(tmp_path), "--force"]) == 0
    assert target.read_text() == (SOURCE / "default.toml").read_text()


def test_init_refuses_an_unknown_name(tmp_path, capsys):
    assert main(["init", "default", "nope", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and "default" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_init_list_names_every_example(capsys):
    assert main(["init", "--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == sorted(p.stem for p in SOURCE.glob("*.toml"))
