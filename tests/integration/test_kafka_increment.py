"""examples/kafka_increment.py end to end: the real broker, the tideflow CLI, and kcat."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from .test_kafka_connectors import new_topic

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "kafka_increment.py"
CLI = "import sys; from tideflow.cli import main; sys.exit(main())"


@pytest.fixture(scope="session")
def kcat(services: object) -> str:
    """Path of kcat (installed from Debian's packages by scripts/services when missing)."""
    done = services("tool", "kcat")  # type: ignore[operator]
    assert done.returncode == 0, done.stderr
    return str(done.stdout.strip().splitlines()[-1])


def run_example(
    cwd: Path,
    bootstrap: str,
    src: str,
    dst: str,
    *extra: str,
    workers: int = 1,
    script: Path = EXAMPLE,
    options: list[str] | None = None,
) -> subprocess.Popen[str]:
    """Run an example through the tideflow CLI (default: kafka_increment with src -> dst)."""
    if options is None:
        options = ["--input-topic", src, "--output-topic", dst]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            CLI,
            "run",
            str(script),
            "--workers",
            str(workers),
            "--",
            "--bootstrap",
            bootstrap,
            *options,
            "--group-id",
            f"g-{uuid.uuid4().hex[:6]}",
            *extra,
        ],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kcat_produce(kcat: str, bootstrap: str, topic: str, lines: list[str]) -> None:
    subprocess.run(
        [kcat, "-P", "-b", bootstrap, "-t", topic, "-K", ":"],
        input="".join(f"{line}\n" for line in lines),
        text=True,
        check=True,
        timeout=60,
    )


def kcat_consume(kcat: str, bootstrap: str, topic: str) -> list[tuple[str, str]]:
    out = subprocess.run(
        [kcat, "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q", "-f", "%k\t%s\n"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [tuple(line.split("\t")) for line in out.stdout.splitlines()]  # type: ignore[misc]


@pytest.mark.parametrize(("partitions", "workers"), [(1, 1), (4, 2)])
def test_bounded_increment_against_kcat(
    kafka_bootstrap: str, kcat: str, partitions: int, workers: int, tmp_path: Path
) -> None:
    src = new_topic(kafka_bootstrap, partitions=partitions)
    dst = new_topic(kafka_bootstrap, partitions=partitions)
    n = 2000
    kcat_produce(
        kcat, kafka_bootstrap, src, [f"k{i % 37}:{i}" for i in range(n)] + ["bad:not-a-number"]
    )
    job = run_example(tmp_path, kafka_bootstrap, src, dst, "--bounded", workers=workers)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 0, err
    assert "1 dead letters" in err
    got = kcat_consume(kcat, kafka_bootstrap, dst)
    assert sorted(int(v) for _, v in got) == list(range(1, n + 1))
    assert all(k == f"k{(int(v) - 1) % 37}" for k, v in got)  # the key is kept
    dead = (tmp_path / "kafka_increment.dead-letters.jsonl").read_text()
    assert "not-a-number" in dead and "value is not an integer" in dead


def test_follow_mode_processes_new_messages_until_stopped(
    kafka_bootstrap: str, kcat: str, tmp_path: Path
) -> None:
    src = new_topic(kafka_bootstrap)
    dst = new_topic(kafka_bootstrap)
    job = run_example(tmp_path, kafka_bootstrap, src, dst)
    try:
        kcat_produce(kcat, kafka_bootstrap, src, [f"a:{i}" for i in range(100)])
        deadline = time.monotonic() + 60
        got: list[tuple[str, str]] = []
        while len(got) < 100 and time.monotonic() < deadline:
            assert job.poll() is None, job.stderr.read() if job.stderr else ""
            time.sleep(0.5)
            got = kcat_consume(kcat, kafka_bootstrap, dst)
        assert sorted(int(v) for _, v in got) == list(range(1, 101))
    finally:
        job.send_signal(signal.SIGINT)
        _, err = job.communicate(timeout=60)
    assert job.returncode in (0, 130), err  # stopped by Ctrl-C, sinks flushed
    assert "stopped: 100 records" in err
