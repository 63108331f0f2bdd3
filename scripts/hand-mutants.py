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
PROTOCOL = "instil/engine/protocol.py"
RESUME = "instil/engine/resume.py"
METRICS = "instil/metrics.py"
PROMOTE_FILES = "instil/promotion/files.py"
PROMOTE_PHASE = "instil/promotion/phase.py"
PROMOTE_REPORT = "instil/promotion/report.py"
PROMOTE_GATE = "instil/promotion/gate.py"
WIRING = "tests/engine/test_protocol.py"
STARTS = f"{WIRING}::test_every_phase_starts_from_the_model_the_last_one_deployed[dbd]"
ACC_BASE = f"{WIRING}::test_acc_base_is_the_accuracy_on_exactly_d0"
PP_F_NFR = f"{WIRING}::test_pp_f_and_nfr_match_predictions_computed_here"
CACHE_KEY = (f"{WIRING}::test_the_m0_cache_key_follows_the_model_and_the_base_budget "
             f"{WIRING}::test_a_changed_model_or_base_budget_trains_a_new_m0")
RESUMES = ("tests/engine/test_resume.py::"
           "test_resume_after_an_interruption_gives_the_same_numbers[finetune]")
REFUSED = "tests/engine/test_resume.py::test_a_state_that_cannot_be_resumed_is_refused_in_one_line"
GATE = "tests/test_promote_gate.py"

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
    # The protocol's wiring (METHOD.md §1).
    ("protocol: the next phase starts from the student, not the deployed model", PROTOCOL,
     "        elif state.phase > 0:\n            previous = method.deployed()",
     "        elif state.phase > 0:\n            previous = method.trainable()", STARTS),
    ("protocol: the student evaluated as M(t)", PROTOCOL,
     "    deployed = method.deployed()\n    metrics = phase_metrics(",
     "    deployed = method.trainable()\n    metrics = phase_metrics(", STARTS),
    ("protocol: acc_base scored on the test set", PROTOCOL,
     'session.predict(deployed, "train", base_idx), base_labels)',
     "session.predict_eval(deployed, split), test_labels)", ACC_BASE),
    ("protocol: acc_base scored on the whole training set", PROTOCOL,
     'session.predict(deployed, "train", base_idx), base_labels)',
     'session.predict(deployed, "train", None), session.source.labels("train"))', ACC_BASE),
    ("protocol: M(0)'s acc_base (f's reference) scored on the test set", PROTOCOL,
     'session.predict(model, "train", base_idx),\n'
     '                    session.source.labels("train", base_idx))',
     "session.predict_eval(model, split), session.eval_labels(split))", ACC_BASE),
    ("metrics: nfr counts the positive flips", METRICS,
     "flips = ref_correct & (predictions != labels)",
     "flips = ~ref_correct & (predictions == labels)", PP_F_NFR),
    ("metrics: pp measured against M(0)'s acc_base", METRICS,
     '"pp": acc_test - ref.acc_test,', '"pp": acc_test - ref.acc_base,', PP_F_NFR),
    ("metrics: f with its sign reversed", METRICS,
     "f = ref.acc_base - acc_base", "f = acc_base - ref.acc_base", PP_F_NFR),
    # Resume.
    ("resume: the saved state thrown away (the method reruns from scratch)", PROTOCOL,
     "state = interrupted_run(session, name, order_seed, method) if resume else None",
     "state = None", RESUMES),
    ("resume: M(0)'s saved state thrown away", PROTOCOL,
     "state = interrupted_run(session, tag, split.order_seed, fresh) if session.resume \\\n"
     "        else None", "state = None",
     "tests/engine/test_resume.py::"
     "test_an_interrupted_base_training_resumes_from_its_last_saved_epoch"),
    ("resume: a damaged state file fails with a traceback", RESUME,
     "except Exception as e:  # a damaged scratch file",
     "except EOFError as e:  # a damaged scratch file", f"{REFUSED}[truncated]"),
    ("resume: a state of another version accepted", RESUME,
     "if state.versions != versions():", "if False:", f"{REFUSED}[another-version]"),
    ("resume: changed method options accepted", PROTOCOL,
     "if options_of(state.method) != options_of(fresh):", "if False:",
     f"{REFUSED}[other-options]"),
    # Promotion.
    ("promote: the unchanged input model saved", PROMOTE_FILES,
     "new_ckpt = promoted_checkpoint(ckpt, promotion.model, report)",
     "new_ckpt = promoted_checkpoint(ckpt, build_model(ckpt, request.model), report)",
     f"{GATE}::test_the_written_checkpoint_is_the_model_scored_after"),
    ("promote: the positive-flip rate fed to the gate", PROMOTE_REPORT,
     'gate(scores["gain"], scores["negative_flips"]["nfr"],',
     'gate(scores["gain"], scores["positive_flips"]["rate"],',
     f"{GATE}::test_a_case_failing_only_on_max_nfr_exits_3_and_writes_no_checkpoint"),
    ("promote: 'after' scored on the untrained model", PROMOTE_PHASE,
     'after = session.predict(deployed, "test", None)',
     'after = session.predict(previous, "test", None)',
     f"{GATE}::test_the_written_checkpoint_is_the_model_scored_after"),
    ("promote: a gain equal to --min-gain refused", PROMOTE_GATE,
     "if gain < min_gain:", "if gain <= min_gain:",
     f"{GATE}::test_a_case_passing_only_because_of_the_gain_threshold"),
    # The base-model cache.
    ("cache: the model dropped from M(0)'s key", PROTOCOL,
     '"fingerprint": split.fingerprint, "model": config.model, "base": config.base,',
     '"fingerprint": split.fingerprint, "base": config.base,', CACHE_KEY),
    ("cache: the base budget dropped from M(0)'s key", PROTOCOL,
     '"fingerprint": split.fingerprint, "model": config.model, "base": config.base,',
     '"fingerprint": split.fingerprint, "model": config.model,', CACHE_KEY),
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
