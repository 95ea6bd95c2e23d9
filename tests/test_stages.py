"""The stage registry: one module per measure, and nothing else naming a stage's files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from awp_landscape.stages import STAGES, SWEEP_STAGES, stage

ROOT = Path(__file__).resolve().parents[1]
#: The registry's consumers: they iterate STAGES and must not name a stage's files.
CONSUMERS = [
    ROOT / "awp_landscape" / "pipeline.py",
    ROOT / "awp_landscape" / "over_seeds.py",
    ROOT / "awp_landscape" / "sweep.py",
    *sorted((ROOT / "awp_landscape" / "report").glob("*.py")),
]


def test_stage_names_are_unique_and_every_part_is_complete():
    names = [s.name for s in STAGES]
    assert len(set(names)) == len(names)
    for s in STAGES:
        assert s.files and s.heading
        if s.sections or s.measures:
            assert s.read is not None or s.name == "training", s.name
        assert bool(s.sweep_columns) == (s.sweep_values is not None), s.name
    assert {s.name for s in SWEEP_STAGES} >= {"training", "evaluate", "gap", "flatness"}
    with pytest.raises(KeyError, match="no stage 'nope'"):
        stage("nope")


def test_no_consumer_names_a_stage_file():
    files = {f.split("/")[-1] for s in STAGES for f in s.files if "." in f.split("/")[-1]}
    folders = {f.split("/")[0] for s in STAGES for f in s.files if "/" in f}
    assert {"gap.json", "quantize.json", "flatness_final"} <= files | folders
    for path in CONSUMERS:
        text = path.read_text()
        for name in sorted(files | folders):
            hits = re.findall(rf"[\"'/]{re.escape(name)}[\"'/]", text)
            assert not hits, f"{path.relative_to(ROOT)} names {name!r}: ask the stage instead"


def test_each_stage_reads_what_it_wrote_in_a_folder_of_an_older_layout(tmp_path):
    """The sweep's old layout had flatness.json directly in analysis/: still read."""
    from awp.io import write_json

    flat = stage("flatness")
    write_json(tmp_path / "analysis" / "flatness.json", {"rows": [{"label": "AT", "kind": "x"}]})
    assert flat.read_seed(tmp_path) == [{"label": "AT", "kind": "x"}]
    write_json(tmp_path / "analysis" / "flatness_final" / "flatness.json", {"rows": []})
    assert flat.read_seed(tmp_path) == []  # the stage's own file first
