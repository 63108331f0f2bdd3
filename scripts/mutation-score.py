"""The scores of the last `mutmut run` (make mutation): killed mutants per module, and every
survivor's diff, from mutmut's own `results` and `show` commands.

    .venv/bin/python scripts/mutation-score.py [OUT]   # default OUT: runs/mutation

Writes OUT/score.md (a table per module) and OUT/survivors.md (each surviving mutant's
diff, to judge by hand), and prints the table. A timeout counts as killed (the mutant made
the tests hang, which fails them); a mutant that no selected test reaches counts as
surviving; one not checked (a run stopped early) is left out of the score and counted
apart.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

MUTMUT = str(Path(sys.executable).with_name("mutmut"))
LINE = re.compile(r"^\s*(?P<name>[\w.]+__mutmut_\d+): (?P<status>.+)$")
NAME = re.compile(r"^(?P<module>.+?)\.x[_ǁ](?P<function>.+)__mutmut_\d+$")
KILLED = {"killed", "timeout"}


def results() -> list[tuple[str, str]]:
    out = subprocess.run([MUTMUT, "results", "--all", "true"], capture_output=True, text=True,
                         check=True).stdout
    return [(m["name"], m["status"].strip()) for m in map(LINE.match, out.splitlines()) if m]


def group_of(name: str) -> str:
    """instil.promotion.gate.x_gate__mutmut_3 -> "promotion/gate.py"."""
    # mutmut's names: module.x_function__mutmut_N, module.xǁClassǁmethod__mutmut_N
    match = NAME.match(name)
    if match is None:
        return name
    return match["module"].removeprefix("instil.").replace(".", "/") + ".py"


def table(rows: list[tuple[str, str]]) -> str:
    counts: dict[str, Counter] = defaultdict(Counter)
    for name, status in rows:
        counts[group_of(name)][status] += 1
    lines = ["| module | mutants | not checked | killed | survived | no tests | other | "
             "score (of checked) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for group in sorted(counts):
        c = counts[group]
        total = sum(c.values())
        killed = sum(c[s] for s in KILLED)
        checked = total - c["not checked"]
        other = checked - killed - c["survived"] - c["no tests"]
        score = f"{100 * killed / checked:.1f}%" if checked else "–"
        lines.append(f"| {group} | {total} | {c['not checked']} | {killed} | {c['survived']} | "
                     f"{c['no tests']} | {other} | {score} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/mutation")
    out.mkdir(parents=True, exist_ok=True)
    rows = results()
    if not rows:
        sys.exit("mutation-score: `mutmut results` lists no mutants; run `make mutation` first")
    score = table(rows)
    (out / "score.md").write_text(score)
    # The diffs of those that ran and lived (not those never checked: an interrupted run).
    survivors = [name for name, status in rows if status in ("survived", "no tests")]
    with open(out / "survivors.md", "w") as f:
        for name in survivors:
            shown = subprocess.run([MUTMUT, "show", name], capture_output=True, text=True)
            f.write(f"## {name} ({dict(rows)[name]})\n\n```diff\n{shown.stdout.strip()}\n```\n\n")
    print(score + f"\n{len(survivors)} survived or reached by no test: {out / 'survivors.md'}")


if __name__ == "__main__":
    main()
