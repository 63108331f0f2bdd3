#!/usr/bin/env python3
"""The deliberate bugs of docs/testing.md, one at a time: each is applied to a copy of src/
(the checkout is never touched) and the tests that must catch it are run against the copy.
Prints KILLED or SURVIVED per mutant; exits 1 when any survives.

    .venv/bin/python scripts/hand-mutants.py            # every mutant
    .venv/bin/python scripts/hand-mutants.py dbd        # those whose name contains "dbd"
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DBD = "instil/methods/dbd.py"
SPEC = "tests/methods/test_dbd_spec.py"

# (name, file under src/, the text, its mutation, the tests that must fail)
MUTANTS = [
    ("dbd: KL direction reversed", DBD,
     "return tau * tau * (log_p.exp() * (log_p - log_q)).sum(1).mean()",
     "return tau * tau * (log_q.exp() * (log_q - log_p)).sum(1).mean()", SPEC),
    ("dbd: tau^2 dropped from L_DIS", DBD,
     "return tau * tau * (log_p.exp() * (log_p - log_q)).sum(1).mean()",
     "return (log_p.exp() * (log_p - log_q)).sum(1).mean()", SPEC),
    ("dbd: tau^2 dropped from the soft cross-entropy", DBD,
     "return tau * tau * -(target * log_q).sum(1).mean()",
     "return -(target * log_q).sum(1).mean()", SPEC),
    ("dbd: beta ignored", DBD,
     "+ o.beta * distillation_kl(teacher_dust, student_dust, o.tau))",
     "+ distillation_kl(teacher_dust, student_dust, o.tau))", SPEC),
    ("dbd: L_FL multiplied by zero", DBD,
     "return (self.label_loss(teacher, student, y)",
     "return (0 * self.label_loss(teacher, student, y)", SPEC),
    ("dbd: fused labels from the student's logits", DBD,
     "target = fused_labels(teacher_logits, y, o.lambda_in, o.lambda_out, o.tau)",
     "target = fused_labels(student_logits.detach(), y, o.lambda_in, o.lambda_out, o.tau)",
     SPEC),
    ("dbd: sigma fixed at 1", DBD,
     "return self.full_loss(x, dust(x, o.sigma), y)",
     "return self.full_loss(x, dust(x, 1.0), y)", SPEC),
    ("dbd: lambda_in and lambda_out swapped", DBD,
     "lam = torch.where(inner_mask(teacher_logits, labels), lambda_in, lambda_out)",
     "lam = torch.where(inner_mask(teacher_logits, labels), lambda_out, lambda_in)", SPEC),
    ("dbd: tau ignored in the label loss", DBD,
     "target = fused_labels(teacher_logits, y, o.lambda_in, o.lambda_out, o.tau)\n"
     "        return soft_cross_entropy(student_logits, target, o.tau)",
     "target = fused_labels(teacher_logits, y, o.lambda_in, o.lambda_out, 1.0)\n"
     "        return soft_cross_entropy(student_logits, target, 1.0)", SPEC),
    ("dbd: the per-step EMA ignores the freezing period", DBD,
     "if k and self.consolidating() and (step + 1) % k == 0:",
     "if k and self.options.kc and (step + 1) % k == 0:", SPEC),
    ("dbd: one EMA step too few (consolidation after epoch E_f + 1 on)", DBD,
     "return self.options.kc and self.epochs_done >= self.options.freeze_epochs",
     "return self.options.kc and self.epochs_done > self.options.freeze_epochs",
     "tests/methods/test_dbd.py"),
]


def run(name: str, file: str, before: str, after: str, tests: str, work: Path) -> bool:
    """True when the tests fail on the mutant (it is killed)."""
    src = work / "src"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(ROOT / "src", src)
    path = src / file
    text = path.read_text()
    if before not in text:
        raise SystemExit(f"{name}: the text to mutate is no longer in src/{file}; update "
                         "scripts/hand-mutants.py")
    path.write_text(text.replace(before, after))
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-o", "addopts=",
                             "-p", "no:cacheprovider", *tests.split()],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    return result.returncode != 0


def main() -> int:
    chosen = [m for m in MUTANTS if len(sys.argv) < 2 or sys.argv[1] in m[0]]
    survived = 0
    with tempfile.TemporaryDirectory() as tmp:
        for mutant in chosen:
            killed = run(*mutant, Path(tmp))
            survived += not killed
            print(f"{'KILLED' if killed else 'SURVIVED'}: {mutant[0]} ({mutant[4]})", flush=True)
    print(f"{len(chosen) - survived} of {len(chosen)} killed")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
