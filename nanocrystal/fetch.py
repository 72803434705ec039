"""Fetch the upstream dataset files (download at a pinned commit, or copy from a mirror) and verify checksums."""
from __future__ import annotations

import hashlib
import os
import shutil
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .files import write_atomic

UPSTREAM_REPO = "Sharpiless/Nanocrystals-Deep-Learning"
UPSTREAM_COMMIT = "bd4191ce3fc1a176e25f80ae6ee0235d887cfacd"
MIRROR_ENV = "NANOCRYSTAL_MIRROR"


@dataclass(frozen=True)
class RemoteFile:
    upstream_path: str  # path inside the upstream repository (and inside a mirror)
    local_path: str  # path inside this project
    sha256: str


FILES: tuple[RemoteFile, ...] = (
    RemoteFile("data/0309_classification_and_reg-raw-v3.csv", "data/0309_classification_and_reg-raw-v3.csv",
               "106f0c05042710d5fea7fd4bc7a0221f9556bbc63d658a2c9b3ab3030175e41d"),
    RemoteFile("data/0404_failure.csv", "data/0404_failure.csv",
               "2e85f769914be25a4759f07a4afe6d0629172d2cf3adecfd5a5e7b821bb8e7dc"),
    RemoteFile("data/shapes_list.txt", "data/shapes_list.txt",
               "8f59623178fd4828b902a1d9ee7d0287386eed612fa343bd38f41e297aa573d2"),
    RemoteFile("feats/unioml_feats_20240309_1x_ours_1x_mof.pkl", "feats/unioml_feats_20240309_1x_ours_1x_mof.pkl",
               "24d242dfe663a69fb7d00a899299656927783f551966f67088af8fe766001bee"),
    RemoteFile("Source data/Raw recipe dataset.xlsx", "data/source/Raw recipe dataset.xlsx",
               "73e45fcb15b79c63d5af097c2f657a8b9ae138abc960c7ba1de04e8cf52cd6e8"),
    RemoteFile("Source data/Chemical Abbreviations (4 sheets).xlsx",
               "data/source/Chemical Abbreviations (4 sheets).xlsx",
               "df49227262527dd4abaf4d2b8f8324b8f07dc6576bf218fcf56c8d85b4bff6cb"),
    RemoteFile("Source data/Figure3/b/size prediciton.csv", "data/source/size prediciton.csv",
               "970d3dab7cf98060be98b7b1b190abfbb46f39f9d75ab4935bcc38f442a9ba26"),
)


class FetchError(InputError, RuntimeError):
    pass


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def upstream_url(upstream_path: str) -> str:
    quoted = urllib.parse.quote(upstream_path)
    return f"https://raw.githubusercontent.com/{UPSTREAM_REPO}/{UPSTREAM_COMMIT}/{quoted}"


def _copy_verified(temp: Path, item: RemoteFile, mirror: Path | None) -> None:
    """Copy or download the file into `temp`, then check its checksum (FetchError: `temp` is not renamed)."""
    origin = mirror / item.upstream_path if mirror is not None else upstream_url(item.upstream_path)
    if mirror is not None:
        if not origin.is_file():
            raise FetchError(f"{origin}: missing from the mirror {mirror} ({MIRROR_ENV})")
        shutil.copyfile(origin, temp)
    else:
        try:
            with urllib.request.urlopen(origin, timeout=60) as response, open(temp, "wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as error:
            raise FetchError(f"{origin}: download failed ({error}); set {MIRROR_ENV} to a local copy") from error
    got = sha256_of(temp)
    if got != item.sha256:
        raise FetchError(f"{origin}: checksum mismatch for {item.local_path} (expected {item.sha256}, got {got})")


def fetch_file(item: RemoteFile, root: Path, mirror: Path | None) -> str:
    """Put one file in place. Returns 'present' or 'fetched'; never leaves a partial or unverified file."""
    target = root / item.local_path
    if target.is_file() and sha256_of(target) == item.sha256:
        return "present"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, lambda temp: _copy_verified(temp, item, mirror))
    return "fetched"


def fetch_all(root: Path, mirror: str | Path | None = None, log=print) -> None:
    mirror_path = Path(mirror) if mirror else None
    if mirror_path is None and os.environ.get(MIRROR_ENV):
        mirror_path = Path(os.environ[MIRROR_ENV])
    for item in FILES:
        state = fetch_file(item, root, mirror_path)
        log(f"{state:8s} {item.local_path}")
