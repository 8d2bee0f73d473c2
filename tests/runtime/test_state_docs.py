"""The Python examples in docs/state.md run and their assertions hold."""

import pathlib
import re


def test_state_page_examples_run() -> None:
    page = pathlib.Path(__file__).parents[2] / "docs" / "state.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) == 3
    for block in blocks:
        exec(compile(block, str(page), "exec"), {})
