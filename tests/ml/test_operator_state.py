"""Models as checkpointed operator state: abort mid-stream, resume, compare; workers; per key."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import tideflow as tf
from tideflow.connectors._base import SourceBatch, SourceContext, SourceReader
from tideflow.ml import (
    anomaly,
    keyed_models,
    learn,
    model_from_checkpoint,
    predict,
    preprocessing,
    tree,
)
from tideflow.ml import linear_model as lm
from tideflow.ml.datasets import synth
from tideflow.state import CheckpointStore
from tideflow.testing import ABORT, PAUSE, CollectSink, TestingSource

FEATURES = ["a", "b", "c"]
BATCH = 100


def _rows(n: int, seed: int, keys: int = 0) -> list[dict[str, Any]]:
    X, y = synth.SEA(seed=seed).arrays(n)
    rows = []
    for i, (r, t) in enumerate(zip(X.tolist(), y.tolist(), strict=True)):
        row: dict[str, Any] = {"id": i, "a": r[0], "b": r[1], "c": r[2], "label": bool(t)}
        if keys:
            # Every source batch holds one key, and a key's batches all go to the same
            # worker's source share: each key's records reach its model in one order.
            row["k"] = f"s{(i // BATCH) % keys}"
        rows.append(row)
    return rows


def _items(rows: list[dict[str, Any]], at: int, marker: Any, pauses: int = 0) -> list[Any]:
    """Rows with ``pauses`` PAUSE markers and then ``marker`` after row ``at``."""
    return [*rows[:at], *([PAUSE] * pauses), marker, *rows[at:]]


def _flow(
    name: str, items: list[Any], model: Any, out: CollectSink, key: str | None = None
) -> tf.Dataflow:
    flow = tf.Dataflow(name)
    src = flow.source(TestingSource(items, batch_size=BATCH))
    scored = predict(src, model, features=FEATURES, key=key, output="pred")
    learn(scored, model, target="label", features=FEATURES, key=key).sink(out)
    return flow


def _run(flow: tf.Dataflow, **kw: Any) -> tf.RunResult:
    # Source batches of BATCH rows go down the flow as they are (no coalescing by time).
    return tf.run(flow, batch_size=BATCH, **kw)


def _predictions(*sinks: CollectSink) -> dict[int, Any]:
    """Prediction per id; rows written twice (after the checkpoint, before the crash) agree."""
    got: dict[int, Any] = {}
    for sink in sinks:
        for i, p in sink.frame().select("id", "pred").iter_rows():
            assert got.setdefault(i, p) == p, f"record {i} predicted {got[i]!r}, then {p!r}"
    return got


MODELS: dict[str, Callable[[], Any]] = {
    "pipeline": lambda: preprocessing.StandardScaler() | lm.LogisticRegression(),
    "hoeffding": lambda: tree.HoeffdingTreeClassifier(grace_period=50),
    "hst": lambda: anomaly.HalfSpaceTrees(seed=3, window_size=200),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_model_restored_mid_stream_predicts_like_an_uninterrupted_run(
    kind: str, tmp_path: Path
) -> None:
    # One worker: with several, a global model gets the workers' batches in arrival order,
    # which differs from run to run (the per-key tests below cover several workers).
    rows = _rows(3000, seed=1)
    ref_out = CollectSink()
    _run(_flow("ml_state", _items(rows, 1700, PAUSE), MODELS[kind](), ref_out))
    reference = _predictions(ref_out)
    assert len(reference) == 3000

    ck, crashed = tmp_path / "ck", CollectSink()
    crash_flow = _flow("ml_state", _items(rows, 1700, ABORT), MODELS[kind](), crashed)
    with pytest.raises(tf.JobError, match="ABORT"):
        _run(crash_flow, checkpoint_dir=ck, checkpoint_interval=timedelta(milliseconds=1))
    cp = CheckpointStore(ck).latest()
    assert cp is not None
    position = cp.parts[0]["ml_state.source"]["w0of1"]
    assert 0 < position <= 17  # the checkpoint is mid-stream
    assert "state" in cp.parts[0]["ml_state.learn"]  # the model is in the checkpoint

    resumed = CollectSink()
    fresh = MODELS[kind]()  # a new process: the model comes from the checkpoint only
    _run(
        _flow("ml_state", _items(rows, 1700, PAUSE), fresh, resumed),
        checkpoint_dir=ck,
        checkpoint_interval=timedelta(seconds=60),
    )
    assert resumed.frame()["id"].min() == position * BATCH  # it did resume mid-stream
    assert _predictions(crashed, resumed) == reference


def test_model_state_is_the_models_own_snapshot_without_pickle(tmp_path: Path) -> None:
    rows = _rows(1000, seed=2)
    model = preprocessing.StandardScaler() | lm.LogisticRegression()
    flow = _flow("ml_snap", rows, model, CollectSink())
    _run(flow, checkpoint_dir=tmp_path / "ck")
    blob = CheckpointStore(tmp_path / "ck").latest().parts[0]["ml_snap.learn"]["state"]  # type: ignore[union-attr]
    assert blob[:2] == b"PK" and b"pickle" not in blob  # an .npz archive: JSON + raw arrays
    restored = model_from_checkpoint(tmp_path / "ck", "ml_snap.learn")
    np.testing.assert_allclose(restored.steps[1]._W, model.steps[1]._W)
    with pytest.raises(tf.TideflowError, match=r"holds no model of step 'ml_snap\.nope'"):
        model_from_checkpoint(tmp_path / "ck", "ml_snap.nope")


def test_global_model_with_two_workers_learns_every_record_once(tmp_path: Path) -> None:
    rows = _rows(2000, seed=3)
    out = CollectSink()
    flow2 = tf.Dataflow("ml_two")
    s = learn(
        flow2.source(TestingSource(rows, batch_size=BATCH)),
        preprocessing.StandardScaler(),
        target=None,
        features=FEATURES,
    )
    s.sink(out)
    _run(flow2, workers=2, checkpoint_dir=tmp_path / "ck")
    scaler = model_from_checkpoint(tmp_path / "ck", "ml_two.learn")
    X = np.asarray([[r[c] for c in FEATURES] for r in rows])
    assert scaler._n == [2000.0] * 3
    np.testing.assert_allclose([scaler.means[c] for c in FEATURES], X.mean(axis=0))
    assert out.frame().height == 2000


@pytest.mark.parametrize(("first_workers", "then_workers"), [(1, 1), (2, 2), (2, 1), (1, 2)])
def test_per_key_models_resume_and_are_redistributed(
    first_workers: int, then_workers: int, tmp_path: Path
) -> None:
    rows = _rows(4000, seed=4, keys=4)
    ref_out = CollectSink()
    ref_model = MODELS["pipeline"]()
    _run(_flow("ml_keys", rows, ref_model, ref_out, key="k"))
    reference = _predictions(ref_out)
    assert sorted(keyed_models(ref_model)) == ["s0", "s1", "s2", "s3"]

    # The first half ends with a checkpoint (models of the 4 keys spread over the workers) ...
    ck, first = tmp_path / "ck", CollectSink()
    model = MODELS["pipeline"]()
    _run(
        _flow("ml_keys", rows[:2000], model, first, key="k"),
        workers=first_workers,
        checkpoint_dir=ck,
    )
    cp = CheckpointStore(ck).latest()
    assert cp is not None and cp.workers == first_workers
    saved = [p["ml_keys.learn"] for p in cp.parts if "ml_keys.learn" in p]
    assert sum(pl.read_ipc(s["keys"]).height for s in saved if s["keys"]) == 4

    # ... and the job resumes from it, with the same or another number of workers. (Source
    # positions of TestingSource are per worker count: a rescaled run gets the second half.)
    then = CollectSink()
    rest = rows if then_workers == first_workers else rows[2000:]
    _run(
        _flow("ml_keys", rest, MODELS["pipeline"](), then, key="k"),
        workers=then_workers,
        checkpoint_dir=ck,
    )
    assert then.frame()["id"].min() == 2000
    ids = set(first.frame()["id"].to_list()) | set(then.frame()["id"].to_list())
    assert ids == set(range(4000))
    if first_workers == then_workers == 1:
        # With several workers, predict and learn batches of a key interleave by timing (see
        # the test below): the predictions may differ, the learned models may not.
        assert _predictions(first, then) == reference
    models = model_from_checkpoint(ck, "ml_keys.learn")
    assert sorted(models) == ["s0", "s1", "s2", "s3"]
    # The final per-key models are those of the uninterrupted run.
    for k, m in keyed_models(ref_model).items():
        np.testing.assert_allclose(models[k].steps[1]._W, m.steps[1]._W, rtol=1e-12)


class _AbortAfterCheckpoints(TestingSource):
    """A TestingSource whose ABORT waits until two checkpoints are complete in ``ck``.

    Worker processes start slowly; without the wait, a worker may reach the abort before the
    first checkpoint.
    """

    def __init__(self, items: list[Any], ck: Path, **kw: Any) -> None:
        super().__init__(items, **kw)
        self.ck = ck

    def build(self, ctx: SourceContext) -> SourceReader:
        return _Gate(super().build(ctx), self.ck)


class _Gate(SourceReader):
    def __init__(self, inner: Any, ck: Path) -> None:
        self.inner = inner
        self.ck = ck

    def poll(self) -> SourceBatch | None:
        i = self.inner
        at_abort = i.pos < len(i.batches) and getattr(i.batches[i.pos], "name", "") == "abort"
        if at_abort and len(list(self.ck.glob("chk-*"))) < 2:
            return None
        got: SourceBatch | None = i.poll()
        return got

    @property
    def finished(self) -> bool:
        done: bool = self.inner.finished
        return done

    def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = self.inner.snapshot()
        return snap


def test_per_key_models_two_workers_abort_and_resume(tmp_path: Path) -> None:
    # With two workers the predict and learn steps of a key run as separate steps whose
    # batches interleave by timing, so a prediction may come before or after the previous
    # batch was learned: predictions vary from run to run. What must not vary is what each
    # key's model learned: every record once, in its key's order. Compare the final models.
    rows = _rows(3000, seed=6, keys=4)
    ref_out = CollectSink()
    ref_ck = tmp_path / "ref"
    _run(_flow("ml_crash2", rows, MODELS["pipeline"](), ref_out, key="k"), checkpoint_dir=ref_ck)
    reference = model_from_checkpoint(ref_ck, "ml_crash2.learn")
    assert sorted(reference) == ["s0", "s1", "s2", "s3"]

    # TestingSource deals its items (markers included) round-robin to the workers: one marker
    # would shift the dealing after it, and a key's later batches would come from the other
    # worker's share, racing its earlier ones. Two marker items keep every key in one share.
    ck, crashed = tmp_path / "ck", CollectSink()
    flow = tf.Dataflow("ml_crash2")
    gated = _AbortAfterCheckpoints(_items(rows, 1600, ABORT, pauses=1), ck, batch_size=BATCH)
    src = flow.source(gated)
    model = MODELS["pipeline"]()
    scored = predict(src, model, features=FEATURES, key="k", output="pred")
    learn(scored, model, target="label", features=FEATURES, key="k").sink(crashed)
    with pytest.raises(tf.JobError, match="ABORT"):
        _run(flow, workers=2, checkpoint_dir=ck, checkpoint_interval=timedelta(milliseconds=20))
    cp = CheckpointStore(ck).latest()
    assert cp is not None and cp.workers == 2
    assert cp.parts[0]["ml_crash2.source"]["w0of2"] > 0  # mid-stream
    resumed = CollectSink()
    _run(
        _flow("ml_crash2", _items(rows, 1600, PAUSE, pauses=1), MODELS["pipeline"](), resumed, "k"),
        workers=2,
        checkpoint_dir=ck,
    )
    ids = set(crashed.frame()["id"].to_list()) | set(resumed.frame()["id"].to_list())
    assert ids == set(range(3000))
    assert resumed.frame()["id"].min() > 0  # it resumed mid-stream
    models = model_from_checkpoint(ck, "ml_crash2.learn")
    probe = pl.DataFrame(rows).select(FEATURES)
    for key, model in reference.items():
        want = model.predict_proba_many(probe)
        got = models[key].predict_proba_many(probe)
        assert np.allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-12), key


def test_a_model_shared_by_steps_needs_one_key_and_no_replicas() -> None:
    model = lm.LogisticRegression()
    flow = tf.Dataflow("ml_conf")
    src = flow.source(TestingSource([{"k": "a", "x": 1.0, "y": True}]))
    learn(src, model, target="y", key="k")
    with pytest.raises(tf.ConfigError, match="use the same key"):
        predict(src, model)
    other = lm.LogisticRegression()
    learn(src, other, target="y")
    with pytest.raises(tf.ConfigError, match=r"replicate=True\) would predict with stale copies"):
        predict(src, other, replicate=True)
    with pytest.raises(tf.ConfigError, match="on= and within= need labels"):
        learn(src, lm.LogisticRegression(), target="y", on="k")


def test_per_key_models_see_exactly_their_keys_rows(tmp_path: Path) -> None:
    # One worker: with two, a key's rows from both workers' sources may reach its model in
    # either order (the other per-key tests keep each key in one source share for that).
    rng = np.random.default_rng(7)
    n, batch = 3000, 250
    site = rng.choice(["north", "south"], n).tolist()
    unit = rng.integers(0, 3, n).tolist()
    x = rng.normal(size=n)
    rows = [
        {
            "site": s,
            "unit": u,
            "x": float(v * (1 + u) + (5 if s == "north" else 0)),
            "y": bool(v > 0),
        }
        for s, u, v in zip(site, unit, x.tolist(), strict=True)
    ]
    flow = tf.Dataflow("ml_mixed")
    src = flow.source(TestingSource(rows, batch_size=batch))
    out = CollectSink()
    model = preprocessing.StandardScaler() | lm.LogisticRegression()
    scored = predict(src, model, features=["x"], key=["site", "unit"], output="p")
    learn(scored, model, target="y", features=["x"], key=["site", "unit"]).sink(out)
    tf.run(flow, batch_size=batch, checkpoint_dir=tmp_path / "ck")
    models = model_from_checkpoint(tmp_path / "ck", "ml_mixed.learn")
    assert sorted(models) == [(s, u) for s in ("north", "south") for u in range(3)]
    frame = pl.DataFrame(rows).with_row_index("i")
    for (s, u), got in models.items():
        mine = frame.filter((pl.col("site") == s) & (pl.col("unit") == u))
        twin = preprocessing.StandardScaler() | lm.LogisticRegression()
        # The same per-key mini-batches: the key's rows of each source batch.
        for _, part in mine.group_by(pl.col("i") // batch, maintain_order=True):
            twin.learn_many(part.select("x"), part["y"].to_numpy())
        np.testing.assert_allclose(got.steps[1]._W, twin.steps[1]._W, rtol=1e-10)
        assert got.steps[0].means["x"] == pytest.approx(mine["x"].mean())
    res = out.frame()
    # Each key is predicted before it learns anything in the first batch that reaches it.
    assert res.height == n and res["p"].null_count() == batch


def test_replicated_model_predicts_on_every_worker() -> None:
    rows = _rows(2000, seed=8)
    model = MODELS["pipeline"]()
    X = {c: np.asarray([r[c] for r in rows]) for c in FEATURES}
    model.learn_many(X, np.asarray([r["label"] for r in rows]))
    expected = model.predict_many(X).tolist()
    flow = tf.Dataflow("ml_rep")
    out = CollectSink()
    src = flow.source(TestingSource(rows, batch_size=BATCH))
    predict(src, model, features=FEATURES, output="pred", replicate=True).sink(out)
    assert [n.kind for n in flow.nodes] == ["source", "custom", "sink"]  # no gathering
    result = _run(flow, workers=2)
    assert result.workers == 2
    got = dict(out.frame().select("id", "pred").iter_rows())
    assert [got[i] for i in range(2000)] == expected
