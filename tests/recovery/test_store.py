"""Checkpoint store: format, retention, half-written and damaged checkpoints."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import xxhash
from tests.recovery._sha256 import as_sha256

from tideflow._errors import ConfigError, StateError
from tideflow.state import (
    FORMAT,
    VERSION,
    CheckpointStore,
    SnapshotChunk,
    SnapshotFile,
    load_savepoint,
    write_savepoint,
)
from tideflow.state._store import VERSION_CHUNKS


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


# -- incremental snapshots: chunks shared between checkpoints ------------------------------------
def _xxh3(data: bytes) -> str:
    return xxhash.xxh3_128(data).hexdigest()


def _chunk_names(d: Path) -> list[str]:
    man = json.loads((d / "MANIFEST.json").read_text())
    return [c["name"] for e in man["parts"].values() for c in e.get("chunks", [])]


def test_a_chunk_is_written_once_and_shared_by_later_checkpoints(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    base, step = SnapshotChunk(b"folded rows"), SnapshotChunk(b"rows since")
    d1 = store.write(1, [{"top": {"version": 2, "state": base, "pending": []}}])
    written = (store.shared / _chunk_names(d1)[0]).stat()
    d2 = store.write(2, [{"top": {"version": 2, "state": base, "pending": [step, step]}}])
    man = json.loads((d2 / "MANIFEST.json").read_text())
    assert man["version"] == VERSION_CHUNKS and man["chunk_dir"] == "../shared"
    assert _chunk_names(d2)[0] == _chunk_names(d1)[0] and len(_chunk_names(d2)) == 2
    again = (store.shared / _chunk_names(d1)[0]).stat()
    assert (again.st_ino, again.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    assert sorted(p.name for p in store.shared.iterdir()) == sorted(_chunk_names(d2))
    snap = store.latest().parts[0]["top"]  # type: ignore[union-attr]
    assert snap["state"].read() == b"folded rows"
    assert [c.read() for c in snap["pending"]] == [b"rows since", b"rows since"]
    assert snap["pending"][0] is snap["pending"][1]  # one object, one file
    # A chunk read back and handed to the next checkpoint is referred to, not written again.
    d3 = store.write(3, [{"top": snap}])
    assert _chunk_names(d3) == _chunk_names(d2)


def test_a_streamed_chunk_is_written_by_its_writer_once_and_verified(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    calls: list[int] = []
    body = bytes(range(256)) * 5000  # several writes of the file's buffer

    def write(fh: object) -> None:
        calls.append(1)
        for at in range(0, len(body), 70_000):
            fh.write(body[at : at + 70_000])  # type: ignore[attr-defined]

    chunk = SnapshotChunk.streamed(write)
    d1 = store.write(1, [{"s": {"rows": chunk}}])
    d2 = store.write(2, [{"s": {"rows": chunk}}])
    assert calls == [1] and chunk.size == len(body)
    assert _chunk_names(d1) == _chunk_names(d2)
    man = json.loads((d1 / "MANIFEST.json").read_text())
    entry = man["parts"]["worker-0000"]["chunks"][0]
    assert entry == {"name": entry["name"], "size": len(body), "xxh3_128": _xxh3(body)}
    assert store.latest().parts[0]["s"]["rows"].read() == body  # type: ignore[union-attr]
    # Read before any checkpoint holds it: the writer fills memory instead, once.
    early = SnapshotChunk.streamed(write)
    assert early.read() == body and early.read() == body and calls == [1, 1]


def test_a_streamed_chunk_cut_short_leaves_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path)
    store.write(1, [{"s": {"x": SnapshotChunk(b"one")}}])

    def fails(fh: object) -> None:
        fh.write(b"half a table")  # type: ignore[attr-defined]
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        store.write(2, [{"s": {"x": SnapshotChunk.streamed(fails)}}])
    assert not list(store.shared.glob(".tmp-*")) and store.ids() == [1]
    cp = store.latest()
    assert cp is not None and cp.id == 1 and cp.parts[0]["s"]["x"].read() == b"one"


def test_retention_deletes_the_chunks_no_kept_checkpoint_names(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    a, b, c = SnapshotChunk(b"a"), SnapshotChunk(b"b"), SnapshotChunk(b"c")
    store.write(1, [{"s": {"x": a}}])
    store.write(2, [{"s": {"x": a, "y": b}}])
    name_a = a.name
    store.write(3, [{"s": {"y": b}}])  # checkpoint 1 goes; 2 still names a
    assert (store.shared / str(name_a)).exists()
    store.write(4, [{"s": {"y": b, "z": c}}])  # checkpoint 2 goes: nothing names a any more
    assert sorted(p.name for p in store.shared.iterdir()) == sorted([str(b.name), str(c.name)])
    assert store.ids() == [3, 4]


def test_a_damaged_chunk_makes_its_checkpoints_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CheckpointStore(tmp_path)
    old, new = SnapshotChunk(b"old rows"), SnapshotChunk(b"new rows")
    store.write(1, [{"s": {"x": old}}])
    store.write(2, [{"s": {"x": old, "y": new}}])
    path = store.shared / str(new.name)
    path.write_bytes(b"NEW rows")
    with caplog.at_level(logging.WARNING, logger="tideflow.state"):
        cp = store.latest()
    assert cp is not None and cp.id == 1 and cp.parts[0]["s"]["x"].read() == b"old rows"
    assert "chunk" in caplog.text and "does not match" in caplog.text
    path.unlink()  # missing altogether: the same
    cp = store.latest()
    assert cp is not None and cp.id == 1


def test_a_crash_while_writing_chunks_leaves_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path)
    store.write(1, [{"s": {"x": SnapshotChunk(b"one")}}])
    real = store._write_file
    calls: list[Path] = []

    def cut(path: Path, data: bytes) -> None:
        calls.append(path)
        if len(calls) == 2:  # the second chunk of checkpoint 2: half a file, then power cut
            path.write_bytes(data[:1])
            raise OSError(errno.EIO, "power cut")
        real(path, data)

    monkeypatch.setattr(store, "_write_file", cut)
    two = [SnapshotChunk(b"two"), SnapshotChunk(b"three")]
    with pytest.raises(OSError, match="power cut"):
        store.write(2, [{"s": {"x": two}}])
    monkeypatch.setattr(store, "_write_file", real)
    # The first chunk is complete but named by no manifest; the half file was removed.
    assert len(list(store.shared.iterdir())) == 2
    assert not list(store.shared.glob(".tmp-*"))
    # A crash after the chunks, before the manifest: never used either.
    tmp = store.begin(2)
    store.write_part(tmp, 0, {"s": {"x": SnapshotChunk(b"four")}})
    cp = store.latest()
    assert cp is not None and cp.id == 1 and cp.parts[0]["s"]["x"].read() == b"one"
    # The next checkpoint completes and removes what no checkpoint names.
    store.write(3, [{"s": {"x": cp.parts[0]["s"]["x"]}}])
    assert [p.name for p in store.shared.iterdir()] == _chunk_names(tmp_path / "chk-00000003")


def test_older_versions_still_load_and_blobs_mix_with_chunks(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    d = store.write(1, [_state(1)])
    assert json.loads((d / "MANIFEST.json").read_text())["version"] == VERSION
    d = store.write(2, [{**_state(2), "top": {"c": SnapshotChunk(b"c")}}])
    cp = store.load(1)
    assert cp.parts[0]["agg"]["table"] == bytes([1, 0, 1, 2])
    cp = store.load(2)
    assert cp.parts[0]["agg"]["table"] == bytes([2, 0, 1, 2])
    assert cp.parts[0]["top"]["c"].read() == b"c"


def test_a_savepoint_holds_its_own_copies_of_the_chunks(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ck")
    chunk = SnapshotChunk(b"kept rows")
    d = store.write(5, [{"s": {"x": chunk}}, {"s": {"x": SnapshotChunk(b"w1")}}], {"flow": "f"})
    sp = write_savepoint(d, tmp_path / "sp")
    shutil.rmtree(tmp_path / "ck")  # the savepoint does not need the checkpoint directory
    cp, info = load_savepoint(sp)
    assert info["checkpoint"] == 5 and cp.parts[0]["s"]["x"].read() == b"kept rows"
    assert cp.parts[1]["s"]["x"].read() == b"w1"
    assert sorted(p.name for p in (sp / "shared").iterdir()) == sorted(_chunk_names(sp))
    # A job restored from it writes the chunks into its own checkpoint directory once.
    again = CheckpointStore(tmp_path / "ck2")
    restored = cp.parts[0]["s"]["x"]
    restored.release()
    d2 = again.write(1, [{"s": {"x": restored}}])
    assert (again.shared / _chunk_names(d2)[0]).read_bytes() == b"kept rows"
    assert again.latest().parts[0]["s"]["x"].read() == b"kept rows"  # type: ignore[union-attr]
    assert load_savepoint(sp)[0].parts[0]["s"]["x"].read() == b"kept rows"  # untouched


# -- checksums: XXH3 now, SHA-256 in checkpoints written before session 8 -----------------------
def _mixed(tmp_path: Path, i: int) -> dict[str, dict[str, object]]:
    """A state with a blob, a file and a chunk of several file buffers."""
    src = tmp_path / f"db-{i}.sqlite"
    src.write_bytes(bytes(range(256)) * 40 + bytes([i]))
    body = bytes(range(251)) * 2000 + bytes([i])
    chunk = SnapshotChunk.streamed(lambda fh: fh.write(body))
    return {**_state(i), "disk": {"db": SnapshotFile(src)}, "top": {"rows": chunk}}


def _files(d: Path) -> dict[str, Path]:
    """What the manifest of ``d`` names: ``json``, ``bin``, ``file`` and ``chunk`` of worker 0."""
    man = json.loads((d / "MANIFEST.json").read_text())
    part = man["parts"]["worker-0000"]
    chunk_dir = d / man.get("chunk_dir", "shared")
    return {
        "json": d / "worker-0000.json",
        "bin": d / "worker-0000.bin",
        "file": d / part["files"][0]["name"],
        "chunk": chunk_dir / part["chunks"][0]["name"],
    }


def test_every_manifest_entry_carries_the_xxh3_sum_of_its_file(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ck")
    d = store.write(1, [_mixed(tmp_path, 1), _mixed(tmp_path, 2)])
    man = json.loads((d / "MANIFEST.json").read_text())
    entries = [
        (e, path)
        for name, part in man["parts"].items()
        for e, path in [(part["json"], d / f"{name}.json"), (part["bin"], d / f"{name}.bin")]
        + [(f, d / f["name"]) for f in part["files"]]
        + [(c, store.shared / c["name"]) for c in part["chunks"]]
    ]
    assert len(entries) == 8
    for e, path in entries:
        body = path.read_bytes()
        assert set(e) - {"name"} == {"size", "xxh3_128"}
        assert (e["size"], e["xxh3_128"]) == (len(body), _xxh3(body))
    cp = store.latest()
    assert cp is not None and cp.parts[1]["top"]["rows"].read()[-1] == 2


@pytest.mark.parametrize("old_format", [False, True])
@pytest.mark.parametrize("kind", ["json", "bin", "file", "chunk"])
def test_one_flipped_byte_fails_the_load(tmp_path: Path, kind: str, old_format: bool) -> None:
    store = CheckpointStore(tmp_path / "ck")
    d = store.write(1, [_mixed(tmp_path, 1)])
    if old_format:
        as_sha256(d)
    assert store.load(1).parts[0]["agg"]["n"] == 1
    path = _files(d)[kind]
    body = bytearray(path.read_bytes())
    at = len(body) // 2
    body[at] ^= 0x01  # same size, one bit
    path.write_bytes(bytes(body))
    with pytest.raises(StateError, match="does not match its manifest sum"):
        store.load(1)
    body[at] ^= 0x01
    path.write_bytes(bytes(body))
    assert store.load(1).parts[0]["agg"]["n"] == 1


def test_checkpoints_with_sha256_sums_load_and_their_chunks_keep_them(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ck", keep=10)
    d1 = store.write(1, [_mixed(tmp_path, 1)])
    as_sha256(d1)
    old = json.loads((d1 / "MANIFEST.json").read_text())["parts"]["worker-0000"]
    cp = store.latest()
    assert cp is not None and cp.id == 1
    chunk = cp.parts[0]["top"]["rows"]
    body = chunk.read()
    assert chunk.checksum == ("sha256", hashlib.sha256(body).hexdigest())
    assert cp.parts[0]["disk"]["db"].read_bytes()[-1] == 1
    # A resumed job refers to the old chunk with its SHA-256 sum; what it writes has XXH3.
    d2 = store.write(2, [{"top": {"rows": chunk, "new": SnapshotChunk(b"since")}}])
    part = json.loads((d2 / "MANIFEST.json").read_text())["parts"]["worker-0000"]
    assert part["chunks"][0] == old["chunks"][0]
    assert set(part["chunks"][1]) == {"name", "size", "xxh3_128"}
    assert "xxh3_128" in part["json"] and "sha256" not in part["json"]
    back = store.load(2).parts[0]["top"]
    assert (back["rows"].read(), back["new"].read()) == (body, b"since")
    # A savepoint of each holds its chunks with the sums they were written with.
    for cid, d in ((1, d1), (2, d2)):
        sp = write_savepoint(d, tmp_path / f"sp{cid}")
        assert load_savepoint(sp)[0].parts[0]["top"]["rows"].read() == body
        man = json.loads((sp / "MANIFEST.json").read_text())
        assert man["parts"]["worker-0000"]["chunks"][0] == old["chunks"][0]
    # Damaged after the conversion: skipped like any damaged checkpoint.
    path = store.shared / old["chunks"][0]["name"]
    path.write_bytes(b"x" + path.read_bytes()[1:])
    assert store.latest() is None


def test_an_entry_without_a_known_checksum_is_a_state_error(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    d = store.write(1, [{"s": {"x": SnapshotChunk(b"rows")}}])
    man = json.loads((d / "MANIFEST.json").read_text())
    entry = man["parts"]["worker-0000"]["chunks"][0]
    entry["blake9"] = entry.pop("xxh3_128")
    (d / "MANIFEST.json").write_text(json.dumps(man))
    with pytest.raises(StateError, match=r"has no checksum this tideflow verifies.*blake9"):
        store.load(1)
