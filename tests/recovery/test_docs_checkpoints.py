"""The Python example of docs/checkpoints.md runs and its assertions hold."""

import pathlib
import re


def test_checkpoints_page_examples_run():
    page = pathlib.Path(__file__).parents[2] / "docs" / "checkpoints.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    # examples that need the Kafka broker or PostgreSQL run in tests/integration/
    # (test_kafka_exactly_once.py, test_postgres_exactly_once.py)
    blocks = [b for b in blocks if "scripts/services start" not in b]
    assert len(blocks) == 3
    for block in blocks[1:]:  # the first is a one-line call without a flow
        exec(compile(block, str(page), "exec"), {"__name__": "docs_checkpoints"})
