"""The Python examples in docs/event-time.md run and their assertions hold."""

import pathlib
import re


def test_event_time_page_examples_run():
    page = pathlib.Path(__file__).parents[2] / "docs" / "event-time.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) == 6
    for block in blocks:
        exec(compile(block, str(page), "exec"), {})
