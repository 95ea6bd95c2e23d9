"""Every ```python block of README.md and docs/*.md runs as written, on its own, at toy sizes.

Each block runs with nothing of another block: its own globals (a block that uses a name it
does not define fails here) and its own empty working folder, with ``AWP_SNIPPET_TINY=1``,
the size switch the blocks document. All blocks run one after another in one fresh
interpreter (tests/snippet_runner.py), which imports torch once instead of once per block. A
block that imports a name it never uses fails too.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """(line number of the fence, code) of every ```python block of a markdown file."""
    text = path.read_text(encoding="utf-8")
    return [(text[: m.start()].count("\n") + 1, m.group(1)) for m in FENCE.finditer(text)]


BLOCKS = [(p, line, code) for p in DOCS for line, code in python_blocks(p)]


def unused_imports(code: str) -> list[str]:
    """Names a block imports and never mentions again."""
    tree = ast.parse(code)
    imported = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                name = (alias.asname or alias.name).split(".")[0]
                imported[name] = node.lineno
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    used |= {
        n.value.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
    }
    return sorted(name for name in imported if name not in used)


def test_the_docs_have_blocks_to_run():
    assert len(BLOCKS) >= 4, [str(p) for p, _, _ in BLOCKS]
    assert unused_imports("import os\nfrom a import b, c\nprint(os.sep, b)\n") == ["c"]


@pytest.fixture(scope="module")
def block_results(tmp_path_factory) -> dict[str, str]:
    """Run every block in one fresh interpreter: block -> "" (it ran) or its traceback."""
    folder = tmp_path_factory.mktemp("snippets")
    blocks = [
        {"where": f"{p.relative_to(ROOT)}:{line}", "code": code, "cwd": str(folder / str(k))}
        for k, (p, line, code) in enumerate(BLOCKS)
    ]
    (folder / "blocks.json").write_text(json.dumps(blocks))
    env = {
        **os.environ,
        "AWP_SNIPPET_TINY": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
    }
    runner = ROOT / "tests" / "snippet_runner.py"
    proc = subprocess.run(
        [sys.executable, str(runner), str(folder / "blocks.json"), str(folder / "results.json")],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((folder / "results.json").read_text())


@pytest.mark.parametrize(
    "path, line, code", BLOCKS, ids=[f"{p.name}:{line}" for p, line, _ in BLOCKS]
)
def test_block_runs_on_its_own(path, line, code, block_results):
    where = f"{path.relative_to(ROOT)}:{line}"
    assert not unused_imports(code), f"{where} imports names it never uses"
    assert "AWP_SNIPPET_TINY" in code, f"{where} does not read the size switch AWP_SNIPPET_TINY"
    assert block_results[where] == "", f"{where} failed:\n{block_results[where][-3000:]}"
