#!/usr/bin/env bash
# The baselines' sweeps of docs/tuning.md: as many points per baseline as DBD's sweep had
# (10), on the same protocol, order seed and validation slice (scripts/tune-lib.sh).
#   scripts/tune-baselines.sh [GROUP ...]    # finetune lwf ewc finetune-es er der (default: all)
#   instil compare runs/tune/lwf-*/          # one group's table
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tune-lib.sh

# finetune: the phase's learning rate and epochs (the shared budget is lr 0.01, 12 epochs).
FINETUNE=()
for lr in 0.003 0.01 0.03; do
  for e in 4 8 12; do
    FINETUNE+=("ft-lr$lr-e$e|[finetune]|phase.lr=$lr phase.epochs=$e")
  done
done
FINETUNE+=("ft-lr0.001-e12|[finetune]|phase.lr=0.001 phase.epochs=12")

# lwf: the distillation weight and temperature (defaults λ 1, T 2).
LWF=()
for l in 0.3 1 3; do
  for t in 1 2 4; do
    LWF+=("lwf-l$l-t$t|[lwf]|method_options.lwf.lambda_kd=$l method_options.lwf.temperature=$t")
  done
done
LWF+=("lwf-l10-t2|[lwf]|method_options.lwf.lambda_kd=10 method_options.lwf.temperature=2")

# ewc: λ within SGD's stability bound (max F of M(0) ≈ 7 allows up to ~50 at lr 0.01), and
# fading old Fishers (gamma) or the empirical Fisher at two of them.
EWC=()
for l in 1 3 10 20 30 45; do
  EWC+=("ewc-l$l|[ewc]|method_options.ewc.lambda_ewc=$l")
done
EWC+=("ewc-l10-g0.5|[ewc]|method_options.ewc.lambda_ewc=10 method_options.ewc.gamma=0.5")
EWC+=("ewc-l30-g0.5|[ewc]|method_options.ewc.lambda_ewc=30 method_options.ewc.gamma=0.5")
EWC+=("ewc-l10-emp|[ewc]|method_options.ewc.lambda_ewc=10 method_options.ewc.fisher=empirical")
EWC+=("ewc-l45-emp|[ewc]|method_options.ewc.lambda_ewc=45 method_options.ewc.fisher=empirical")

# finetune-es: the held-out slice's size and what ranks the epochs (defaults: loss, 0.2,
# no patience).
FES=()
for h in 0.1 0.2 0.3; do
  for p in 0 3; do
    FES+=("fes-loss-h$h-p$p|[finetune-es]|method_options.finetune-es.criterion=loss method_options.finetune-es.holdout=$h method_options.finetune-es.patience=$p")
  done
  FES+=("fes-acc-h$h|[finetune-es]|method_options.finetune-es.criterion=accuracy method_options.finetune-es.holdout=$h")
done
FES+=("fes-acc-h0.2-p3|[finetune-es]|method_options.finetune-es.criterion=accuracy method_options.finetune-es.holdout=0.2 method_options.finetune-es.patience=3")

# er: the memory batch's size beside each new batch of 128, and the learning rate; the
# budget of 200 exemplars is the comparison's, not a knob. "mixed" is the old replay.
ER=()
for r in 16 32 64 128; do
  for lr in 0.01 0.003; do
    ER+=("er-r$r-lr$lr|[er]|method_options.er.replay_batch_size=$r phase.lr=$lr")
  done
done
ER+=("er-mixed-lr0.01|[er]|method_options.er.replay=mixed phase.lr=0.01")
ER+=("er-mixed-lr0.003|[er]|method_options.er.replay=mixed phase.lr=0.003")

# der: the auxiliary loss's weight, how a new extractor starts, how exemplars are chosen.
DER=()
for a in 0 0.5 1 2; do
  DER+=("der-a$a|[der]|method_options.der.lambda_aux=$a")
done
for a in 0.5 1 2; do
  DER+=("der-a$a-fresh|[der]|method_options.der.lambda_aux=$a method_options.der.init=fresh")
done
for a in 0.5 1 2; do
  DER+=("der-a$a-random|[der]|method_options.der.lambda_aux=$a method_options.der.selector=random")
done

groups=("$@")
[ ${#groups[@]} -gt 0 ] || groups=(finetune lwf ewc finetune-es er der)
for g in "${groups[@]}"; do
  case "$g" in
    finetune) run_points "${FINETUNE[@]}" ;;
    lwf) run_points "${LWF[@]}" ;;
    ewc) run_points "${EWC[@]}" ;;
    finetune-es) run_points "${FES[@]}" ;;
    er) run_points "${ER[@]}" ;;
    der) run_points "${DER[@]}" ;;
    *) echo "unknown group $g (finetune lwf ewc finetune-es er der)" >&2; exit 2 ;;
  esac
done
