#!/usr/bin/env bash
# The README's main job on the embedded defaults (Amazon reviews, MiniLM-L6 teacher), on a budget for
# 2 CPU cores: quick meta-teacher -> quick Meta-KD student for one domain -> test on that domain's
# test split -> export to a plain HF directory -> a prediction through transformers.pipeline.
# DOMAIN=dvd bash scripts/quick_amazon.sh picks another domain; a run directory from an earlier call
# is reused (the teacher is not retrained when its best.ckpt exists).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DOMAIN=${DOMAIN:-books}
RUNS=${RUNS:-runs}
teacher_dir=$RUNS/amazon/meta_teacher_quick
student_dir=$RUNS/amazon/meta_distill_quick/$DOMAIN

if [[ ! -f $teacher_dir/checkpoints/best.ckpt ]]; then
  echo "== meta-teacher (all four domains) -> $teacher_dir"
  "$PY" -m metakd fit --config configs/amazon/meta_teacher_quick.yaml --trainer.default_root_dir "$teacher_dir"
fi
echo "== meta-teacher: per-domain test accuracy"
"$PY" -m metakd test --config configs/amazon/meta_teacher_quick.yaml --trainer.default_root_dir "$teacher_dir" \
  --ckpt_path best

echo "== Meta-KD student for $DOMAIN -> $student_dir"
"$PY" -m metakd fit --config configs/amazon/meta_distill_quick.yaml --data.init_args.target_domain "$DOMAIN" \
  --model.init_args.teacher_ckpt "$teacher_dir/checkpoints/best.ckpt" --trainer.default_root_dir "$student_dir"
"$PY" -m metakd test --config configs/amazon/meta_distill_quick.yaml --data.init_args.target_domain "$DOMAIN" \
  --model.init_args.teacher_ckpt "$teacher_dir/checkpoints/best.ckpt" --trainer.default_root_dir "$student_dir" \
  --ckpt_path best

echo "== export -> $student_dir/export"
"$PY" -m metakd export --ckpt "$student_dir/checkpoints/best.ckpt" --out "$student_dir/export" --onnx --overwrite
"$PY" - "$student_dir/export" <<'PYEOF'
import sys
from transformers import pipeline
classify = pipeline("text-classification", model=sys.argv[1])
for text in ["A wonderful book, beautifully written and a joy to read.", "Dull, badly written and far too long."]:
    print(f"{text!r} -> {classify(text)[0]}")
PYEOF
