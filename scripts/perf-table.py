#!/usr/bin/env python3
"""Prints the table of docs/performance.md from the JSON files scripts/bench-cpu.sh writes.
   python3 scripts/perf-table.py docs/perf/*.json"""

import json
import sys
from pathlib import Path

COLUMNS = [("ceiling", "ceiling_images_per_s", "{:,.0f}"),
           ("base", "base_images_per_s", "{:,.0f}"),
           ("base / ceiling", "base_of_ceiling", "{:.0%}"),
           ("finetune", "finetune_images_per_s", "{:,.0f}"),
           ("data-path overhead", "data_path_overhead", "{:.1%}"),
           ("dbd", "dbd_images_per_s", "{:,.0f}"),
           ("dbd / finetune time", "dbd_vs_finetune_epoch_time", "{:.2f}x"),
           ("eval", "eval_images_per_s", "{:,.0f}"),
           ("protocol estimate", "protocol_s_estimate", "{:.0f} s"),
           ("joint / dbd phase", "joint_vs_dbd_phase", "{:.1f}x"),
           ("peak memory", "peak_memory_mb", "{:,.0f} MiB")]

print("| run | " + " | ".join(name for name, _, _ in COLUMNS) + " |")
print("|---" * (len(COLUMNS) + 1) + "|")
for path in sys.argv[1:]:
    figures = json.loads(Path(path).read_text())["figures"]
    cells = [fmt.format(figures[key]) for _, key, fmt in COLUMNS]
    print(f"| {Path(path).stem} | " + " | ".join(cells) + " |")
