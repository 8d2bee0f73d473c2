"""The Python examples of the "In a dataflow" section of docs/ml.md run and their assertions hold."""

import pathlib
import re


def test_dataflow_examples_in_the_ml_page_run() -> None:
    page = pathlib.Path(__file__).parents[2] / "docs" / "ml.md"
    text = page.read_text()
    section = text[text.index("## In a dataflow") : text.index("## Models")]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 3
    for block in blocks:
        exec(compile(block, str(page), "exec"), {})
