"""The README's "Use it from Python" block runs as written, on the shipped checkpoint, and plans as
scripts/plan.py does: it reaches at least 4 of its 5 held-out goals."""

from __future__ import annotations

import contextlib
import io
import os
import re

from tests.conftest import REPO


def readme_python_block() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", (REPO / "README.md").read_text(), re.M | re.S)
    assert blocks, "README.md has no ```python block"
    return blocks[0]


def test_readme_python_snippet_reaches_goals(monkeypatch):
    monkeypatch.chdir(REPO)  # the snippet names checkpoints/reach relative to the repo, as a user would
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_python_block(), "README.md", "exec"), namespace)  # noqa: S102
    namespace["env"].close()
    assert namespace["reached"] >= 4, out.getvalue()
    assert re.search(r"reached \d/5 goals", out.getvalue())
    assert os.getcwd() == str(REPO)
