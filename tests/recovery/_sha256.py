"""Checkpoints in the format written before session 8: SHA-256 sums under ``"sha256"``.

``as_sha256(d)`` rewrites the manifest of a checkpoint (or savepoint) directory as an older
tideflow wrote it: every entry's XXH3 checksum replaced by the SHA-256 of the file it names,
computed here from the file itself (hashlib, independent of the store's code).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _old(entry: dict[str, Any], path: Path) -> None:
    assert isinstance(entry.pop("xxh3_128"), str), entry  # the current format, converted once
    assert entry["size"] == path.stat().st_size
    entry["sha256"] = _sha256(path)


def as_sha256(d: Path) -> None:
    """Rewrite the manifest in ``d`` with SHA-256 sums (the format before XXH3)."""
    manifest = json.loads((d / "MANIFEST.json").read_bytes())
    chunk_dir = d / str(manifest.get("chunk_dir", "shared"))
    for name, part in manifest["parts"].items():
        for kind in ("json", "bin"):
            _old(part[kind], d / f"{name}.{kind}")
        for f in part.get("files", []):
            _old(f, d / f["name"])
        for c in part.get("chunks", []):
            _old(c, chunk_dir / c["name"])
    (d / "MANIFEST.json").unlink()  # may be a hard link shared with a savepoint
    (d / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
