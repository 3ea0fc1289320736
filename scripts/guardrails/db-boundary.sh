#!/usr/bin/env bash
# Database-boundary guardrails (`make guardrails`): fails when code outside symphony.db
# reaches PostgreSQL directly, switches roles, or ships test-only code.
#
#   1. scripts/guardrails/db_boundary.py   AST checker over every Python file (DB001-DB007)
#   2. lint-imports (.importlinter)        architecture layers and forbidden imports
#   3. ruff --select TID251 src            banned driver APIs (pyproject.toml)
#
# All three always run, so one CI run lists every finding; the exit status is non-zero
# if any of them failed. Runs from any working directory. Tools come from the
# repository's .venv when there is one, otherwise from PATH.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root" || exit 2

tool() {
    if [[ -x "$root/.venv/bin/$1" ]]; then
        printf '%s\n' "$root/.venv/bin/$1"
    else
        command -v "$1" || true
    fi
}

python=$(tool python3)
lint_imports=$(tool lint-imports)
ruff=$(tool ruff)

# shellcheck source=../step.sh
source "$root/scripts/step.sh"

step "db-boundary checker (DB001-DB007)" "$python" scripts/guardrails/db_boundary.py --root "$root"
# PYTHONPATH=src: import-linter must analyse this tree's package, installed or not.
step "import-linter contracts (.importlinter)" \
    env PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" "$lint_imports" "$root/.importlinter"
step "ruff banned driver API (TID251)" "$ruff" check --no-cache --select TID251 src

if [[ $status -ne 0 ]]; then
    joined=$(printf '%s; ' "${failed[@]}")
    printf '\nguardrails FAILED: %s\n' "${joined%; }"
    printf 'Run scripts/guardrails/db-boundary.sh to reproduce; each finding says what to use instead.\n'
else
    printf '\nguardrails: all checks passed\n'
fi
exit "$status"
