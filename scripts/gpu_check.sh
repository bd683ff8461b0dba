#!/usr/bin/env bash
# One prepared GPU check (issue 24): six checks, one summary line each
# (PASS|FAIL|SKIP name: numbers), exit status 1 if any FAILs. Under 8 minutes on
# one H100 without network; --dry-run runs the same code on the CPU in tiny shapes.
#
#   bash scripts/gpu_check.sh [--dry-run] [--only triton engine ...] [--budget S]
#
# Runs from the working tree (nothing installed): PYTHONPATH is the repo root.
# $PYTHON picks the interpreter (default: python3, else python). When the
# interpreter lacks a runtime dependency (safetensors, tokenizers, tqdm) and a
# carried .venv/lib/python3*/site-packages holds it, that folder is appended.
# With $OUT set, results also go to $OUT/gpu_check.txt, gpu_check.json and
# gpu_check_logs/. Details: the docstring of scripts/gpu_check.py.
set -u
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 2
py="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

missing="$("$py" - <<'EOF'
import importlib.util
print(" ".join(m for m in ("safetensors", "tokenizers", "tqdm")
               if importlib.util.find_spec(m) is None))
EOF
)"
if [ -n "$missing" ]; then
    for site in "$repo"/.venv/lib/python3*/site-packages; do
        if [ -d "$site" ]; then
            export PYTHONPATH="$PYTHONPATH:$site"
            echo "gpu_check: $py lacks $missing; appended $site to PYTHONPATH" >&2
        fi
    done
fi
exec "$py" "$repo/scripts/gpu_check.py" "$@"
