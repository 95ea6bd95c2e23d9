"""The measure registry: one module per measure, and nothing else naming a measure's files."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from awp_landscape.measures import MEASURES, SWEEP_MEASURES, measure

ROOT = Path(__file__).resolve().parents[1]
#: The registry's consumers: they iterate MEASURES and must not name a measure's files.
CONSUMERS = [
    ROOT / "awp_landscape" / "pipeline.py",
    ROOT / "awp_landscape" / "over_seeds.py",
    ROOT / "awp_landscape" / "sweep.py",
    ROOT / "awp_landscape" / "cli.py",
    ROOT / "awp_landscape" / "plans.py",
    *sorted((ROOT / "awp_landscape" / "report").glob("*.py")),
]


def test_measure_names_are_unique_and_every_part_is_complete():
    from awp_landscape.measures.base import Measure
    from awp_landscape.plans import AnalysisPlan, SweepPlan

    names = [m.name for m in MEASURES]
    assert len(set(names)) == len(names)
    commands = [c for m in MEASURES for c in (m.command, *m.aliases) if c]
    assert len(set(commands)) == len(commands)
    for m in MEASURES:
        assert m.files and m.heading, m.name
        if m.sweep_columns:
            assert type(m).sweep_values is not Measure.sweep_values, m.name
    assert {m.name for m in SWEEP_MEASURES} >= {"training", "evaluate", "gap", "flatness"}
    with pytest.raises(KeyError, match="no measure 'nope'"):
        measure("nope")
    # every size a measure declares is a field of its plans, with the config field's range
    for m in MEASURES:
        for size in m.sizes:
            for plan in size.plans:
                cls = {"demo": AnalysisPlan, "sweep": SweepPlan}[plan]
                assert size.name in {f.name for f in dataclasses.fields(cls)}, size.name
                if size.config is not None:
                    with pytest.raises(ValueError, match=size.name):
                        cls(**{size.name: -1 if not isinstance(size.default, tuple) else (-1,)})


def test_no_consumer_names_a_measure_file():
    files = {f.split("/")[-1] for m in MEASURES for f in m.files if "." in f.split("/")[-1]}
    folders = {f.split("/")[0] for m in MEASURES for f in m.files if "/" in f}
    assert {"gap.json", "quantize.json", "flatness_final"} <= files | folders
    for path in CONSUMERS:
        text = path.read_text()
        for name in sorted(files | folders):
            hits = re.findall(rf"[\"'/]{re.escape(name)}[\"'/]", text)
            assert not hits, f"{path.relative_to(ROOT)} names {name!r}: ask the measure instead"


def test_each_measure_reads_what_it_wrote_in_a_folder_of_an_older_layout(tmp_path):
    """The sweep's old layout had flatness.json directly in analysis/: still read."""
    from awp.io import write_json

    flat = measure("flatness")
    write_json(tmp_path / "analysis" / "flatness.json", {"rows": [{"label": "AT", "kind": "x"}]})
    assert flat.read_seed(tmp_path) == [{"label": "AT", "kind": "x"}]
    write_json(tmp_path / "analysis" / "flatness_final" / "flatness.json", {"rows": []})
    assert flat.read_seed(tmp_path) == []  # the measure's own file first
