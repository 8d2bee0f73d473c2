"""Checkpoint store: format, retention, half-written and damaged checkpoints."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import pytest

from tideflow._errors import ConfigError, StateError
from tideflow.state import FORMAT, VERSION, CheckpointStore


def _state(i: int) -> dict[str, dict[str, object]]:
    return {
        "agg": {"version": 1, "n": i, "table": bytes([i, 0, 1, 2])},
        "read": {"f": {"offset": i}},
    }


def test_round_trip_blobs_and_manifest(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    d = store.write(4, [_state(1), _state(2)], {"flow": "x"})
    man = json.loads((d / "MANIFEST.json").read_text())
    assert (man["format"], man["version"], man["workers"]) == (FORMAT, VERSION, 2)
    cp = store.latest()
    assert cp is not None and cp.id == 4 and cp.workers == 2 and cp.meta == {"flow": "x"}
    assert cp.parts[1]["agg"]["table"] == bytes([2, 0, 1, 2])
    assert cp.parts[0]["read"] == {"f": {"offset": 1}}


def test_retention_is_bounded(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    for i in range(1, 6):
        store.write(i, [_state(i)])
    assert store.ids() == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chk-00000004", "chk-00000005"]


def test_half_written_checkpoint_is_never_used(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.write(1, [_state(1)])
    tmp = store.begin(2)
    store.write_part(tmp, 0, _state(2))  # no manifest, no rename: a crash mid-checkpoint
    cp = store.latest()
    assert cp is not None and cp.id == 1


def test_corrupted_latest_falls_back_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CheckpointStore(tmp_path)
    store.write(1, [_state(1)])
    d = store.write(2, [_state(2)])
    blob = d / "worker-0000.bin"
    blob.write_bytes(b"\xff" + blob.read_bytes()[1:])
    with caplog.at_level(logging.WARNING, logger="tideflow.state"):
        cp = store.latest()
    assert cp is not None and cp.id == 1
    assert "skipping damaged checkpoint 2" in caplog.text
    (tmp_path / "chk-00000001" / "MANIFEST.json").write_text("{not json")
    assert store.latest() is None


def test_disk_full_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CheckpointStore(tmp_path)
    store.write(1, [_state(1)])

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_write_file", full)
    with pytest.raises(OSError, match="No space"):
        store.write(2, [_state(2)])
    assert [p.name for p in tmp_path.iterdir()] == ["chk-00000001"]
    cp = store.latest()
    assert cp is not None and cp.id == 1


def test_unknown_version_and_bad_settings(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    d = store.write(1, [_state(1)])
    man = json.loads((d / "MANIFEST.json").read_text())
    man["version"] = 99
    (d / "MANIFEST.json").write_text(json.dumps(man))
    with pytest.raises(StateError, match="format version 99"):
        store.load(1)
    with pytest.raises(ConfigError, match="keep must be"):
        CheckpointStore(tmp_path, keep=0)
    with pytest.raises(StateError, match="not plain data"):
        store.write(3, [{"x": {"v": object()}}])
