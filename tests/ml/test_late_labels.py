"""Labels that arrive later than the features: join by id within an event-time bound, learn."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tideflow as tf
from tideflow.ml import join_labels, learn, model_from_checkpoint, preprocessing
from tideflow.state import CheckpointStore
from tideflow.testing import ABORT, PAUSE, CollectSink, TestingSource


def _data(
    n: int, seed: int, within: int, disorder: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], set[int]]:
    """Features one per second; labels for most ids after a random delay, out of order.

    Returns features, labels (in arrival order) and the ids a brute-force reference matches.
    """
    rng = np.random.default_rng(seed)
    x = rng.random(n)
    feats = [{"id": i, "t": i, "x": float(x[i])} for i in range(n)]
    labels = []
    for i in range(n):
        if rng.random() < 0.15:
            continue  # this label never comes
        delay = int(rng.integers(-5, within + 30))  # some too late, a few before the feature
        labels.append({"id": i, "t": i + delay, "y": bool(x[i] > 0.5)})
    # Arrival order: by time, shuffled within `disorder` seconds.
    labels.sort(key=lambda r: r["t"] + rng.random() * disorder)
    matched = {r["id"] for r in labels if 0 <= r["t"] - r["id"] <= within}
    return feats, labels, matched


def _flow(
    name: str,
    feats: list[Any],
    labels: list[Any],
    within: int,
    disorder: int,
    model: Any,
    batch: int = 50,
) -> tuple[tf.Dataflow, CollectSink, CollectSink]:
    flow = tf.Dataflow(name)
    f = flow.source(TestingSource(feats, batch_size=batch), name="features").event_time(
        "t", unit="s"
    )
    lab = flow.source(TestingSource(labels, batch_size=batch), name="labels").event_time(
        "t", unit="s", delay=timedelta(seconds=disorder)
    )
    res = join_labels(f, lab, on="id", within=timedelta(seconds=within))
    joined, expired = CollectSink(), CollectSink()
    learn(res.joined, model, target="y", features=["x"]).sink(joined)
    res.expired.sink(expired, name="expired")
    return flow, joined, expired


def _ids(sink: CollectSink) -> list[int]:
    frame = sink.frame()
    return sorted(frame["id"].to_list()) if frame.height else []


@pytest.mark.parametrize("workers", [1, 2])
def test_out_of_order_labels_match_a_brute_force_reference(workers: int, tmp_path: Path) -> None:
    feats, labels, matched = _data(1500, seed=1, within=60, disorder=20)
    flow, joined, expired = _flow(
        "late", feats, labels, 60, 20, preprocessing.StandardScaler(), batch=100
    )
    result = tf.run(flow, workers=workers, batch_size=100, checkpoint_dir=tmp_path / "ck")
    assert _ids(joined) == sorted(matched)
    assert _ids(expired) == sorted(set(range(1500)) - matched)
    assert result.steps["late.join_labels"].late == 1500 - len(matched)
    frame = joined.frame()
    assert frame.columns == ["id", "t", "x", "t_label", "y"]  # features, then the label
    assert (frame["y"] == (frame["x"] > 0.5)).all()
    # The model learned every labelled record once, and nothing else.
    scaler = model_from_checkpoint(tmp_path / "ck", "late.learn")
    assert scaler._n == [float(len(matched))]
    assert scaler.means["x"] == pytest.approx(np.mean([feats[i]["x"] for i in matched]))


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(1, 300),
    seed=st.integers(0, 2**16),
    within=st.integers(0, 40),
    disorder=st.integers(0, 15),
    batch=st.integers(1, 64),
)
def test_label_join_property(n: int, seed: int, within: int, disorder: int, batch: int) -> None:
    feats, labels, matched = _data(n, seed, within, disorder)
    model = preprocessing.StandardScaler()
    flow, joined, expired = _flow("late_prop", feats, labels, within, disorder, model, batch)
    tf.run(flow, batch_size=batch)
    assert _ids(joined) == sorted(matched)
    assert _ids(expired) == sorted(set(range(n)) - matched)
    assert sum(model._n) == len(matched)  # learned each labelled record once


def test_waiting_features_and_labels_survive_a_crash(tmp_path: Path) -> None:
    feats, labels, matched = _data(2000, seed=5, within=60, disorder=20)
    ref = preprocessing.StandardScaler()
    flow, _, _ = _flow("late_ck", feats, labels, 60, 20, ref)
    tf.run(flow, batch_size=50)

    ck = tmp_path / "ck"
    crash_feats = [*feats[:1000], ABORT, *feats[1000:]]
    flow, joined1, expired1 = _flow(
        "late_ck", crash_feats, labels, 60, 20, preprocessing.StandardScaler()
    )
    with pytest.raises(tf.JobError, match="ABORT"):
        tf.run(
            flow, batch_size=50, checkpoint_dir=ck, checkpoint_interval=timedelta(milliseconds=1)
        )
    cp = CheckpointStore(ck).latest()
    assert cp is not None
    state = cp.parts[0]["late_ck.join_labels"]
    assert state["pending"]  # features were waiting for their labels at the checkpoint

    resumed_feats = [*feats[:1000], PAUSE, *feats[1000:]]
    flow, joined2, expired2 = _flow(
        "late_ck", resumed_feats, labels, 60, 20, preprocessing.StandardScaler()
    )
    tf.run(flow, batch_size=50, checkpoint_dir=ck)
    assert sorted(set(_ids(joined1)) | set(_ids(joined2))) == sorted(matched)
    assert sorted(set(_ids(expired1)) | set(_ids(expired2))) == sorted(set(range(2000)) - matched)
    model = model_from_checkpoint(ck, "late_ck.learn")
    assert model._n == ref._n == [float(len(matched))]  # learned once each, across the crash
    assert model.means["x"] == pytest.approx(ref.means["x"])


def test_learn_with_labels_joins_them_itself() -> None:
    feats, labels, matched = _data(400, seed=9, within=30, disorder=5)
    flow = tf.Dataflow("late_learn")
    f = flow.source(TestingSource(feats), name="features").event_time("t", unit="s")
    lab = flow.source(TestingSource(labels), name="labels").event_time(
        "t", unit="s", delay=timedelta(seconds=5)
    )
    scaler = preprocessing.StandardScaler()
    out = CollectSink()
    learn(f, scaler, target="y", labels=lab, on="id", within=timedelta(seconds=30)).sink(out)
    result = tf.run(flow, batch_size=40)
    assert _ids(out) == sorted(matched)
    assert list(scaler.means) == ["x"]  # neither the id nor the times are features
    assert result.steps["late_learn.join_labels"].late == 400 - len(matched)
    with pytest.raises(tf.ConfigError, match="say how features and labels meet"):
        learn(f, scaler, target="y", labels=lab)
    plain = flow.source(TestingSource([{"id": 1}]), name="plain")
    with pytest.raises(tf.ConfigError, match="has no event time"):
        join_labels(plain, lab, on="id", within=timedelta(seconds=1))
