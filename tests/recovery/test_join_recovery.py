"""Jobs with joins crash mid-stream and resume from their checkpoint (1 worker, 2 workers, and
1 -> 2 and 2 -> 1 on resume); the committed output equals that of a run that never crashed.

The job and its input are in ``_join_job.py``. Its step ``maybe_crash`` throws at a record
past the middle while a flag file exists; the test removes the flag and runs the job again with
the same checkpoint directory. Output goes to ``files.sink_jsonl_parts`` (exactly-once).
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.recovery._join_job import STEP, build, committed, write_input
from tests.recovery.test_join_state import table_of
from tests.recovery.test_top_n_recovery import _chunks

import tideflow as tf
from tideflow._errors import JobError
from tideflow.state import CheckpointStore, load_savepoint, write_savepoint


def run(kind: str, d: Path, out: Path, ck: Path | None, workers: int) -> tf.RunResult:
    kw: dict[str, Any] = {}
    if ck is not None:
        kw = {"checkpoint_dir": ck, "checkpoint_interval": timedelta(milliseconds=20)}
    return tf.run(
        build(kind, d, out, 0.015 if ck is not None else 0.0),
        workers=workers,
        batch_size=20,
        dead_letter_path=out / "dead.jsonl",
        **kw,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("join_recovery")
    write_input(d)
    return d


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    refs = {}
    for kind in STEP:
        out = tmp_path_factory.mktemp(f"ref_{kind}")
        assert run(kind, data, out, None, 1).completed
        refs[kind] = committed(out / "results")
        assert refs[kind], kind
        assert not committed(out / "late")
    return refs


def crashed(kind: str, data: Path, tmp_path: Path, workers: int) -> tuple[Path, Path, Path]:
    """Run the job of ``kind`` until it crashes past checkpoint 3: its input, output and
    checkpoint directories."""
    # The job reads the flag and version files of its own copy of the input directory.
    d = tmp_path / "in"
    d.mkdir()
    for sub in ("events", "tiers"):
        (d / sub).symlink_to(data / sub)
    (d / "version").write_text("1")
    out, ck = tmp_path / "out", tmp_path / "ck"
    out.mkdir()
    # Past a third of the input, once checkpoint 3 is complete (2 workers start at their pace).
    (d / "crash").write_text(json.dumps({"at": 4 * 60, "checkpoints": str(ck), "min_id": 3}))
    with pytest.raises(JobError, match="crash requested by the test"):
        run(kind, d, out, ck, workers)
    return d, out, ck


@pytest.mark.parametrize("kind", list(STEP))
@pytest.mark.parametrize(("before", "after"), [(1, 1), (2, 2), (1, 2), (2, 1)])
def test_join_job_resumes_after_a_crash(
    kind: str,
    before: int,
    after: int,
    data: Path,
    reference: dict[str, list[Any]],
    tmp_path: Path,
) -> None:
    d, out, ck = crashed(kind, data, tmp_path, before)
    cp = CheckpointStore(ck).latest()
    assert cp is not None, "no checkpoint before the crash"
    step = f"join_recovery_{kind}.{STEP[kind]}"
    state = [p[step] for p in cp.parts if step in p]
    assert state and all(s["version"] == 3 for s in state)
    sides = ("window", "interval", "regular", "regular_unique", "best")
    held = {k: ("left", "right") for k in sides}.get(kind, ())
    held += {"table": ("table",), "lookup": ("cache",)}.get(kind, ())
    assert any(table_of(s[f]).height for s in state for f in held)
    if kind.startswith("regular"):
        # Incremental: the newest checkpoint refers to chunks the one before it refers to.
        names = _chunks(ck)
        assert len(names) >= 2 and set(names[-1]) & set(names[-2])
    (d / "crash").unlink()
    (d / "version").write_text("2")  # a lookup that fetched again would see new names
    assert run(kind, d, out, ck, after).completed
    assert committed(out / "results") == reference[kind]
    assert not committed(out / "late")


@pytest.mark.parametrize("case", [("regular_unique", 2, 1), ("best", 1, 2)])
def test_join_job_resumes_from_a_savepoint_without_the_checkpoints(
    case: tuple[str, int, int], data: Path, reference: dict[str, list[Any]], tmp_path: Path
) -> None:
    kind, before, after = case
    d, out, ck = crashed(kind, data, tmp_path, before)
    cp = CheckpointStore(ck).latest()
    assert cp is not None
    # The savepoint holds copies of the chunks; the checkpoints (and their chunks) are gone.
    sp = write_savepoint(cp.path, tmp_path / "sp")
    shutil.rmtree(ck)
    assert (sp / "shared").is_dir() and load_savepoint(sp)[0].id == cp.id
    (d / "crash").unlink()
    job = build(kind, d, out, 0.0)
    ck2 = tmp_path / "ck2"
    done = tf.run(
        job,
        workers=after,
        batch_size=20,
        from_savepoint=sp,
        checkpoint_dir=ck2,
        dead_letter_path=out / "dead.jsonl",
    )
    assert done.completed
    assert committed(out / "results") == reference[kind]
