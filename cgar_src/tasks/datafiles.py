"""The dataset files the book reads: where they are, their checksums, and the explicit online alternative.

The repository carries SST-2, AG-News, TREC and LAMA T-REx in ``data/`` (provenance, licences, citations, row
counts and checksums in ``data/README.md``); an installed ``cgar_src`` carries the same files as
``cgar_src.bookdata``. Every stored output of the book was computed from exactly these copies, so every file is
checked against its sha256 when it is first opened in a process (``open_text``): a changed or damaged file is a
``DataChecksumError`` naming the file, never a silently different sample. ``$CGAR_DATA_DIR`` points the loaders at
another copy with the same layout (plain or ``.gz`` files); it is checked the same way unless ``CGAR_DATA_VERIFY=0``
(for a deliberately different copy).

The Hugging Face hub is an explicit option only (``root="hub"`` or ``CGAR_DATA_DIR=hub``): ``HUB`` names each
dataset's repository, configuration and the revision read (the hub's parquet conversion, so that ``datasets`` >= 4,
which refuses loading scripts, can read TREC and LAMA). The hub's copies come from other sources in another order,
so the sampled queries and demonstrations differ and a chapter's outputs will not match the stored ones.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FILES", "HUB", "DataChecksumError", "HubSource", "bundled_dir", "open_text", "verify_all"]

# logical file (as read, uncompressed) -> sha256 of its uncompressed bytes; data/SHA256SUMS has the stored files'
FILES: dict[str, str] = {
    "agnews/classes.txt": "1a5783c08f1468ec5200f5b67ef041a2f72a7fe4645aa121769aaf481593663f",
    "agnews/test.csv": "1b1b6c5f1dd034c83fec3f585611d2bc65c34fafd86685fc92cee5e6059313ef",
    "lama/relations.jsonl": "a35bc05a53939b844dd2441fbf6f80d0a6a315fee61c863db81b9b37124699ba",
    "lama/triples.jsonl": "0aa59433c14d3626c19336730a36be2a011aba3b54b7822f123cadf06ac7b689",
    "sst2/stsa.binary.dev": "02fedc82855dbdcabe82c65ed1af6c6570788eaac51073cdb35ee8c7784426d1",
    "sst2/stsa.binary.test": "6a80dc9b9a0db2d3b37f2f809304febad31c90ab67a5b4157b7d9f881c53ef5b",
    "sst2/stsa.binary.train": "71c04bcc41291fa47454dd670df701b14ee9249156babeaac404cfe2c8d74338",
    "trec/test.txt": "69b2d406aa15b3b514b6bf9b3bf1fa2c3515ce7ae744651173f8e57347bfb2a9",
    "trec/train.txt": "202e3e1ad6143ed4f147f199324277e25b2573a78c08c3af1ff840b49c0779de",
}


@dataclass(frozen=True)
class HubSource:
    """A dataset on the Hugging Face hub: repository, configuration (or None) and the revision read."""

    repo: str
    config: str | None
    revision: str


# The explicit online path. "refs/convert/parquet" is the hub's parquet conversion of each repository (no loading
# script). These are not the copies the book's outputs come from: other sources, other order, other samples.
HUB: dict[str, HubSource] = {
    "agnews": HubSource("fancyzhx/ag_news", None, "refs/convert/parquet"),
    "lama": HubSource("facebook/lama", "trex", "refs/convert/parquet"),
    "sst2": HubSource("SetFit/sst2", None, "refs/convert/parquet"),
    "trec": HubSource("CogComp/trec", None, "refs/convert/parquet"),
}


class DataChecksumError(ValueError):
    """A data file whose sha256 differs from the recorded one."""


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (resolved path, size, mtime_ns) -> logical name, per process


def bundled_dir() -> Path:
    """The data shipped with the code: the repository's ``data/`` in a clone, else the installed ``bookdata``."""
    here = Path(__file__).resolve().parents[1]   # the cgar_src folder
    repo = here.parent / "data"
    if (repo / "SHA256SUMS").is_file():
        return repo
    installed = here / "bookdata"
    if (installed / "SHA256SUMS").is_file():
        return installed
    raise FileNotFoundError(f"no data/ folder beside {here} and no installed cgar_src/bookdata; reinstall cgar_src "
                            "from the repository, set CGAR_DATA_DIR to a copy, or CGAR_DATA_DIR=hub for the hub")


def _verify_enabled() -> bool:
    return os.environ.get("CGAR_DATA_VERIFY", "1").strip().lower() not in ("0", "false", "no", "off")


def _read(root: Path, name: str) -> tuple[Path, bytes]:
    """Bytes of ``root/name`` or of ``root/name.gz`` (decompressed), checked against ``FILES[name]``."""
    if name not in FILES:
        raise ValueError(f"unknown data file {name!r}; known: {sorted(FILES)}")
    plain, packed = root / name, root / f"{name}.gz"
    path = plain if plain.is_file() else packed if packed.is_file() else None
    if path is None:
        raise FileNotFoundError(f"data file {name} not found in {root} (looked for {plain.name} and {packed.name})")
    raw = path.read_bytes()
    data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if _verify_enabled() and key not in _VERIFIED:
        got = hashlib.sha256(data).hexdigest()
        if got != FILES[name]:
            raise DataChecksumError(
                f"data file {path} does not match the recorded copy: sha256 of its contents is {got}, expected "
                f"{FILES[name]} (data/README.md). The book's outputs were computed from the recorded file; restore "
                "it, or set CGAR_DATA_VERIFY=0 to read a deliberately different copy")
        _VERIFIED[key] = name
    return path, data


def open_text(root: Path, name: str, encoding: str = "utf-8", newline: str | None = None) -> io.TextIOWrapper:
    """Open a checked data file as text, with the newline handling of ``open(path, encoding=, newline=)``."""
    _, data = _read(Path(root), name)
    return io.TextIOWrapper(io.BytesIO(data), encoding=encoding, newline=newline)


def verify_all(root: str | os.PathLike | None = None) -> dict[str, str]:
    """Check every file of ``FILES`` under ``root`` (default :func:`bundled_dir`); return name -> file read."""
    root = Path(root) if root is not None else bundled_dir()
    return {name: str(_read(root, name)[0]) for name in sorted(FILES)}
