"""fetch: copying from a mirror is verified, idempotent, and never leaves a partial or corrupt file."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nanocrystal.config import ROOT
from nanocrystal.fetch import FILES, FetchError, fetch_all, sha256_of


@pytest.fixture
def mirror(tmp_path) -> Path:
    """A mirror with upstream's paths, built from the already fetched (and verified) files."""
    root = tmp_path / "mirror"
    for item in FILES:
        target = root / item.upstream_path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / item.local_path, target)
    return root


def test_fetch_is_idempotent(mirror, tmp_path):
    root = tmp_path / "project"
    first, second = [], []
    fetch_all(root, mirror, log=first.append)
    stamps = {item.local_path: (root / item.local_path).stat().st_mtime_ns for item in FILES}
    fetch_all(root, mirror, log=second.append)
    assert [line.split()[0] for line in first] == ["fetched"] * len(FILES)
    assert [line.split()[0] for line in second] == ["present"] * len(FILES)
    assert stamps == {item.local_path: (root / item.local_path).stat().st_mtime_ns for item in FILES}
    assert all(sha256_of(root / item.local_path) == item.sha256 for item in FILES)


def test_corrupted_mirror_file_is_rejected(mirror, tmp_path):
    item = next(f for f in FILES if f.local_path == "data/0404_failure.csv")
    corrupt = mirror / item.upstream_path
    data = bytearray(corrupt.read_bytes())
    data[1000] ^= 0x01
    corrupt.write_bytes(bytes(data))
    root = tmp_path / "project"
    with pytest.raises(FetchError, match=f"{corrupt}: checksum mismatch for data/0404_failure.csv"):
        fetch_all(root, mirror, log=lambda line: None)
    assert not (root / item.local_path).exists()
    assert not [p for p in root.rglob("*") if p.name.startswith(".fetch-")]  # no partial file left


def test_corrupted_file_in_place_is_replaced(mirror, tmp_path):
    """A damaged local copy is not 'present': fetch puts the verified file back."""
    root = tmp_path / "project"
    fetch_all(root, mirror, log=lambda line: None)
    local = root / "data/shapes_list.txt"
    local.write_text("cube\n")
    log = []
    fetch_all(root, mirror, log=log.append)
    assert "fetched  data/shapes_list.txt" in log and local.read_text().startswith("Irregular shape\ncube")


def test_missing_mirror_file_is_named(mirror, tmp_path):
    (mirror / "data/shapes_list.txt").unlink()
    with pytest.raises(FetchError, match="shapes_list.txt: missing from the mirror"):
        fetch_all(tmp_path / "project", mirror, log=lambda line: None)
