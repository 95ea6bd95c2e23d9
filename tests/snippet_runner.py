"""Run documentation blocks one after another in this interpreter, each in its own globals and
working folder (tests/test_snippets.py): ``python snippet_runner.py BLOCKS.json RESULTS.json``
writes, per block, "" when it ran and its traceback when it failed."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path


def main(blocks_file: str, results_file: str) -> int:
    results = {}
    for block in json.loads(Path(blocks_file).read_text()):
        Path(block["cwd"]).mkdir(parents=True, exist_ok=True)
        os.chdir(block["cwd"])
        try:
            exec(compile(block["code"], block["where"], "exec"), {"__name__": "__main__"})
            results[block["where"]] = ""
        except BaseException:  # noqa: BLE001 - every failure is the block's result
            results[block["where"]] = traceback.format_exc()
    Path(results_file).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
