"""The datasets live in data/: checksummed on load, documented, overridable, and the hub only on request."""
import gzip
import hashlib
import os
import re
import shutil
import sys
import types
from pathlib import Path

import pytest

from cgar_src.tasks import data, datafiles
from cgar_src.tasks.datafiles import FILES, DataChecksumError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
SHARED = ROOT.parent / "shared" / "data"   # this workplace's original copies, compared while they exist


def stored_files() -> dict[str, str]:
    """data/SHA256SUMS: stored file -> sha256 of the file as stored."""
    lines = (DATA / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split(None, 1) for line in lines if line.strip())}


def test_default_is_the_repository_data_folder(monkeypatch):
    monkeypatch.delenv("CGAR_DATA_DIR", raising=False)
    assert data.data_dir() == DATA
    assert datafiles.bundled_dir() == DATA


def test_stored_checksums_match_files_and_readme():
    stored = stored_files()
    readme = (DATA / "README.md").read_text()
    on_disk = sorted(str(p.relative_to(DATA)) for p in DATA.rglob("*") if p.is_file()
                     and p.name not in ("README.md", "SHA256SUMS"))
    assert sorted(stored) == on_disk
    for name, digest in stored.items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest, name
        assert digest in readme, f"data/README.md lacks the sha256 of {name}"
    # every logical file is stored plain or gzipped, and its contents match the loader's registry
    for name, digest in FILES.items():
        path = DATA / name if name in stored else DATA / f"{name}.gz"
        raw = path.read_bytes()
        content = gzip.decompress(raw) if path.suffix == ".gz" else raw
        assert hashlib.sha256(content).hexdigest() == digest, name
        assert digest in readme, f"data/README.md lacks the content sha256 of {name}"
    assert datafiles.verify_all(DATA).keys() == FILES.keys()


def test_readme_row_counts_are_the_loaded_counts(monkeypatch):
    monkeypatch.delenv("CGAR_DATA_DIR", raising=False)
    readme = (DATA / "README.md").read_text()
    counts = {
        "sst2 train": len(data.load_examples("sst2", "train")), "sst2 test": len(data.load_examples("sst2", "test")),
        "agnews": len(data.load_examples("agnews", "test-even")) + len(data.load_examples("agnews", "test-odd")),
        "trec train": len(data.load_examples("trec", "train")), "trec test": len(data.load_examples("trec", "test")),
        "lama": len(data.load_facts()),
    }
    assert counts == {"sst2 train": 6920, "sst2 test": 1821, "agnews": 7600, "trec train": 5452, "trec test": 500,
                      "lama": 51703}
    for n in counts.values():
        assert re.search(rf"\b{n}\b", readme), f"data/README.md lacks the row count {n}"


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(DATA, dst)
    return dst


def test_mismatch_is_a_clear_error_naming_the_file(tmp_path, monkeypatch):
    copy = _copy(tmp_path)
    path = copy / "trec" / "test.txt"
    path.write_text(path.read_text(encoding="latin-1").replace("Denver", "Boulder"), encoding="latin-1")
    with pytest.raises(DataChecksumError, match=r"data file .*trec/test\.txt does not match the recorded copy"):
        data.load_examples("trec", "test", root=copy)
    assert issubclass(DataChecksumError, ValueError)
    # a damaged gzip of LAMA's facts (other contents, valid gzip) is caught the same way
    packed = copy / "lama" / "triples.jsonl.gz"
    packed.write_bytes(gzip.compress(gzip.decompress(packed.read_bytes()).replace(b"Indiana", b"Ohio")))
    with pytest.raises(DataChecksumError, match=r"triples\.jsonl\.gz"):
        data.load_facts(["P1001"], root=copy)
    # deliberately different copies are allowed when asked for
    monkeypatch.setenv("CGAR_DATA_VERIFY", "0")
    assert len(data.load_examples("trec", "test", root=copy)) == 500


def test_missing_file_names_it(tmp_path):
    copy = _copy(tmp_path)
    (copy / "sst2" / "stsa.binary.test").unlink()
    with pytest.raises(FileNotFoundError, match="sst2/stsa.binary.test"):
        data.load_examples("sst2", "test", root=copy)


def test_cgar_data_dir_overrides(tmp_path, monkeypatch):
    copy = _copy(tmp_path)
    # the same records from an uncompressed copy (the layout of the original download)
    for gz in copy.rglob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    monkeypatch.setenv("CGAR_DATA_DIR", str(copy))
    assert data.data_dir() == copy
    assert data.load_examples("agnews", "test-odd") == data.load_examples("agnews", "test-odd", root=DATA)
    assert data.load_facts(["P30"]) == data.load_facts(["P30"], root=DATA)
    monkeypatch.setenv("CGAR_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="CGAR_DATA_DIR=.*nowhere.* is not a directory"):
        data.data_dir()
    with pytest.raises(ValueError, match="root=.*nowhere2"):
        data.data_dir(tmp_path / "nowhere2")


def test_hub_only_on_request(monkeypatch):
    """root="hub" / CGAR_DATA_DIR=hub reads the hub's parquet at the pinned revisions; nothing else does."""
    calls = []

    class FakeDataset(list):
        def __init__(self, rows, columns):
            super().__init__(rows)
            self.column_names = columns

    def load_dataset(repo, config=None, *, split, revision):
        calls.append((repo, config, split, revision))
        if repo == "CogComp/trec":
            return FakeDataset([{"text": "What is a hub ?", "coarse_label": 5, "fine_label": 0}],
                               ["text", "coarse_label", "fine_label"])
        if repo == "facebook/lama":
            return FakeDataset([{"predicate_id": "P30", "template": "[X] is located in [Y] .", "sub_label": "Kenya",
                                 "obj_label": "Africa"}], ["predicate_id", "template", "sub_label", "obj_label"])
        rows = [{"text": f"row\\{i}", "label": i % 2} for i in range(4)]
        return FakeDataset(rows, ["text", "label"])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.delenv("CGAR_DATA_DIR", raising=False)
    assert data.load_examples("sst2", "test") == data.load_examples("sst2", "test", root=DATA)
    assert calls == []                                   # the default never touches the hub
    assert data.load_examples("trec", "test", root="hub") == [data.Example("What is a hub ?", 5)]
    ag = data.load_examples("agnews", "test-odd", root="hub")
    assert [e.text for e in ag] == ["row 1", "row 3"]    # odd rows; backslashes become spaces as in the local copy
    monkeypatch.setenv("CGAR_DATA_DIR", "hub")
    assert data.load_facts(["P30"]) == [data.Fact("P30", "[X] is located in [Y] .", "Kenya", "Africa", "train")]
    assert calls == [("CogComp/trec", None, "test", "refs/convert/parquet"),
                     ("fancyzhx/ag_news", None, "test", "refs/convert/parquet"),
                     ("facebook/lama", "trex", "train", "refs/convert/parquet")]
    assert {s.revision for s in datafiles.HUB.values()} == {"refs/convert/parquet"}


@pytest.mark.skipif(not SHARED.is_dir(), reason="no ../shared/data beside the repository")
def test_records_identical_to_the_original_copies():
    for name, task in data.TASKS.items():
        for split in (task.demo_split, task.query_split):
            assert data.load_examples(name, split, root=DATA) == data.load_examples(name, split, root=SHARED)
    assert data.load_facts(root=DATA) == data.load_facts(root=SHARED)


def test_nothing_depends_on_shared_data():
    """No code, notebook, test, configuration or document points at this workplace's ../shared/data any more."""
    pattern = re.compile(r"shared/data|\.\./shared|parents\[2\] / \"shared\"")
    skip_dirs = {"_build", ".git", "data", "results", "__pycache__", ".ipynb_checkpoints", ".pytest_cache"}
    suffixes = {".py", ".ipynb", ".md", ".yml", ".yaml", ".toml", ".txt", ".cfg", ".lock", ""}
    offenders = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in skip_dirs and not d.endswith(".egg-info")]
        for fname in filenames:
            path = Path(dirpath) / fname
            if path.suffix in suffixes and path.name != "test_data.py" and pattern.search(
                    path.read_text(errors="replace")):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"files that still point at ../shared/data: {offenders}"
