"""The pooled rows of docs/performance.md's telemetry table: the per-round ratios of several
`instil bench telemetry --json` files together, per method, with their median and bootstrap
95% interval.
    .venv/bin/python scripts/telemetry-pool.py docs/perf/telemetry/paired-*.json
"""

from __future__ import annotations

import json
import sys

import numpy as np

from instil.bench_telemetry import bootstrap_median


def main() -> None:
    ratios: dict[str, list[float]] = {}
    for path in sys.argv[1:]:
        for m in json.load(open(path))["figures"]["methods"]:
            on, off = np.array(m["seconds_on"]), np.array(m["seconds_off"])
            ratios.setdefault(m["method"], []).extend((on / off - 1).tolist())
    for name, values in ratios.items():
        r = np.array(values)
        low, high = bootstrap_median(r)
        print(f"{name}: {len(r)} rounds, overhead {100 * np.median(r):+.2f}% "
              f"({100 * low:+.2f}% to {100 * high:+.2f}%)")


if __name__ == "__main__":
    main()
