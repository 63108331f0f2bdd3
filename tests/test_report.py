"""The summary's tables: per-phase tables by metric, and the student lines of dbd-like runs."""

from __future__ import annotations

from typing import Any

import pytest

from instil.errors import InstilError
from instil.report import phase_table, seed_table, student_lines, summarise, summary_markdown


def run(method: str, seed: int, phases: list[int], shift: float,
        student: bool = False) -> dict[str, Any]:
    metrics = []
    for t in phases:
        m = {"phase": t, "acc_test": 90.0 + shift + t, "pp": shift + t, "acc_base": 91.0,
             "f": 0.1 * t, "f_rel": 0.1, "nfr": 1.0, "train_seconds": 2.0}
        if student:
            m.update(student_acc_test=m["acc_test"] - 0.5 - seed, student_acc_base=90.0)
        metrics.append(m)
    return {"method": method, "order_seed": seed, "uses_old_data": method == "joint",
            "parameters": 10, "base": {"acc_test": 89.0, "acc_base": 91.0},
            "phases": metrics}


@pytest.fixture
def runs() -> list[dict[str, Any]]:
    return [run("dbd", s, [1, 2, 3], s, student=True) for s in (0, 1)] + \
        [run("joint", s, [3], 2.0 * s) for s in (0, 1)]


def test_a_phase_table_has_a_row_per_phase_and_a_column_per_method(runs: list) -> None:
    lines = phase_table(runs, ["dbd", "joint"], "pp").splitlines()
    assert lines[0] == "| phase | dbd | joint |"
    assert len(lines) == 2 + 3
    # Phase 1: dbd's pp is 1 and 2 on its two seeds; joint did not run that phase.
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[0] == "1" and cells[1].startswith("1.50 ± ") and cells[2] == "–"
    cells = [c.strip() for c in lines[4].strip("|").split("|")]
    assert cells[0] == "3" and cells[2].startswith("4.00 ± ")


def test_student_lines_report_the_lead_of_the_deployed_model(runs: list) -> None:
    text = student_lines(runs)
    # Student acc_test is 0.5 + seed below the teacher's: lead 0.5 and 1.5, mean 1.0.
    assert text.startswith("- dbd's student after the last phase: acc_test 92.50 ± ")
    assert "(deployed − student 1.00 ± " in text and "joint" not in text
    assert student_lines([r for r in runs if r["method"] == "joint"]) == ""


def test_every_also_evaluated_model_gets_a_line(runs: list) -> None:
    # iCaRL deploys its nearest-mean classifier and reports its CNN head as head_*.
    icarl = [{**r, "method": "icarl",
              "phases": [{**p, "head_acc_test": p["acc_test"] + 2.0, "head_acc_base": 91.0}
                         for p in r["phases"]]}
             for r in runs if r["method"] == "joint"]
    text = student_lines(icarl)
    assert text.startswith("- icarl's head after the last phase: acc_test ")
    assert "(deployed − head -2.00 ± " in text and "student" not in text


def test_the_summary_has_one_per_phase_table_per_metric(runs: list) -> None:
    text = summary_markdown("toy", runs, summarise(runs))
    for title in ("### acc_test", "### pp (promotion", "### f (forgetting"):
        assert text.count(title) == 1
    assert text.count("| phase | dbd | joint |") == 3


def test_a_shift_stream_adds_acc_shift_to_every_table(runs: list) -> None:
    for r in runs:
        r["base"]["acc_shift"] = 80.0
        for p in r["phases"]:
            p["acc_shift"] = 80.0 + p["phase"]
    text = summary_markdown("toy", runs, summarise(runs))
    assert "acc_test 89.00 ± 0.00, acc_base 91.00 ± 0.00, acc_shift 80.00 ± 0.00" in text
    assert "| method | old data | params | phase | seeds | acc_test | pp | f | f_rel | nfr | " \
           "acc_shift | train s |" in text
    assert "| dbd | no | 10 | 3 | 2 | " in text and "| 83.00 ± 0.00 | 6.0 |" in text
    assert text.count("### acc_shift") == 1
    assert "acc_shift" not in summary_markdown(
        "toy", [run("dbd", 0, [1], 0.0)], summarise([run("dbd", 0, [1], 0.0)]))


def test_paired_differences_are_per_order_seed(runs: list) -> None:
    from instil.report import paired_table

    runs = runs + [run("finetune", s, [1, 2, 3], s - 0.5) for s in (0, 1)] + \
        [run("finetune", 7, [1, 2, 3], 50.0)]  # a seed dbd did not run: left out
    table = paired_table({"here": {"runs": runs}}, "dbd")
    assert "| finetune | 2 | -0.50 ± 0.00 | 0.00 ± 0.00 | 0.00 ± 0.00 | 0 of 2 | 0 of 3 |" \
        in table
    # Joint (after phase 3 only) is 0 and 1 point above dbd: higher on one seed of two (a tie
    # is not higher); no phase-by-phase count.
    assert "| joint | 2 | 0.50 ± 6.35 | 0.00 ± 0.00 | 0.00 ± 0.00 | 1 of 2 | – |" in table
    with pytest.raises(InstilError, match="--paired-to lwf: no such method"):
        paired_table({"here": {"runs": runs}}, "lwf")


def test_curves_get_an_acc_shift_panel_and_m0_levels_on_a_shift_stream(runs: list,
                                                                          tmp_path) -> None:
    from instil.viz.curves import PANELS, SHIFT_PANEL, base_level, panels_for, plot_curves

    assert panels_for(runs) == PANELS
    assert base_level(runs, "acc_test") == pytest.approx(89.0)
    assert base_level(runs, "pp") is None and base_level(runs, "acc_shift") is None
    for r in runs:
        r["base"]["acc_shift"] = 70.0 + 10 * r["order_seed"]  # seeds 0 and 1: mean 75
        for p in r["phases"]:
            p["acc_shift"] = 80.0 + p["phase"]
    assert panels_for(runs) == PANELS + (SHIFT_PANEL,)
    assert base_level(runs, "acc_shift") == pytest.approx(75.0)
    plot_curves(runs, tmp_path / "curves.png", "toy")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_seed_table_has_a_row_per_order_seed_with_the_final_values(runs: list) -> None:
    runs = runs + [run("finetune", 7, [1, 2, 3], 50.0)]  # a seed only finetune ran
    lines = seed_table(runs, ["dbd", "joint", "finetune"], "pp").splitlines()
    assert lines[0] == "| order seed | dbd | joint | finetune |"  # M(0) has no pp
    # After phase 3, pp is seed + 3 for dbd and 2 * seed + 3 for joint.
    assert lines[2:] == ["| 0 | 3.00 | 3.00 | – |", "| 1 | 4.00 | 5.00 | – |",
                         "| 7 | – | – | 53.00 |"]
    lines = seed_table(runs, ["dbd"], "acc_test").splitlines()
    assert lines[0] == "| order seed | M(0) | dbd |"
    assert lines[2] == "| 0 | 89.00 | 93.00 |"
    # Another folder's run of seed 0 on another M(0): no single M(0) value to show.
    other = {**runs[0], "base": {"acc_test": 88.0, "acc_base": 91.0}}
    assert seed_table([*runs, other], ["dbd"], "acc_test").splitlines()[0] == \
        "| order seed | dbd |"
