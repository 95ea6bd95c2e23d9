"""Which RobustBench zoo entries (CIFAR-10/100, Linf/L2) load by name here, and why not.

Reads the installed robustbench package's model zoo (``awp.zoo.robustbench_catalog``: each
architecture is built on the meta device, so nothing is allocated or downloaded) and prints a
markdown table per dataset and threat model, then the counts, for docs/robustbench.md.

    python scripts/robustbench_zoo.py
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from awp.zoo import robustbench_catalog  # noqa: E402


def main() -> int:
    rows = robustbench_catalog()
    by = collections.defaultdict(list)
    for r in rows:
        by[(r["dataset"], r["threat_model"])].append(r)
    for (ds, tm), group in by.items():
        print(f"\n### {ds}, {tm} ({len(group)} entries)\n")
        print("| name | architecture | by name |")
        print("|---|---|---|")
        for r in group:
            print(f"| `{r['name']}` | {r['architecture'] or '-'} | {r['why'] or 'yes'} |")
    ok = sum(1 for r in rows if not r["why"])
    print(f"\n{ok} of {len(rows)} entries load by name.")
    reasons = collections.Counter(r["why"].split(" (")[0] for r in rows if r["why"])
    for why, n in reasons.most_common():
        print(f"- {n}: {why}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
