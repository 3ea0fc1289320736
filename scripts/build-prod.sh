#!/usr/bin/env bash
# Production build (`make build-prod`): builds the wheel and sdist into dist/ and proves
# that what ships carries no test-only code and imports cleanly on its own.
#
#   1. python -m build                      wheel + sdist into a freshly emptied dist/
#   2. build_prod_check.py artefacts        no symphony/db/test_only.py or symphony/db/tests/
#                                           in either artefact; the wheel ships all of src
#   3. clean virtualenv + pip install       the wheel alone, runtime dependencies only
#                                           (no pip, no dev extras, no system packages)
#   4. build_prod_check.py scan-installed   AST scan of the installed modules for any
#                                           import of the test-only modules
#   5. build_prod_check.py import-all       SYMPHONY_ENV=production, python -I: import
#                                           every shipped module and entry point; no
#                                           test-only module may end up in sys.modules
#
# Runs from any working directory; uses the repository's .venv when there is one.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 2

if [[ -x "$root/.venv/bin/python" ]]; then
    python="$root/.venv/bin/python"
else
    python=$(command -v python3) || { echo "build-prod: python3 not found"; exit 2; }
fi
dist="$root/dist"
work=$(mktemp -d "${TMPDIR:-/tmp}/symphony-build-prod.XXXXXX")
trap 'rm -rf "$work"' EXIT

# shellcheck source=step.sh
source "$root/scripts/step.sh"

finish() {
    if [[ $status -ne 0 ]]; then
        local joined
        joined=$(printf '%s; ' "${failed[@]}")
        printf '\nbuild-prod FAILED: %s\n' "${joined%; }"
    else
        printf '\nbuild-prod: artefacts in %s; no test-only code shipped, all modules import\n' "$dist"
    fi
    exit "$status"
}

rm -rf "$dist"
step "build wheel and sdist" "$python" -m build --outdir "$dist" "$root" || finish

step "inspect artefacts" "$python" scripts/build_prod_check.py artefacts "$dist" --src src/symphony

# Plain venv: no system site-packages, no dev extras, not even pip: only the wheel and
# the runtime dependencies it declares. The build environment's pip installs into it
# (pip >= 22.3 has --python), which also spares seeding pip into every fresh venv;
# an older pip falls back to the venv's own. --no-compile: byte-compiling every
# dependency costs more than the whole check, and the import step compiles what it uses.
install_wheel() {
    local venv=$1 wheel=$2
    local pip_args=(install --quiet --no-compile --disable-pip-version-check "$wheel")
    "$python" -m venv --without-pip "$venv" || return
    if "$python" -m pip --python "$venv/bin/python" --version >/dev/null 2>&1; then
        "$python" -m pip --python "$venv/bin/python" "${pip_args[@]}"
    else
        "$venv/bin/python" -m ensurepip --default-pip >/dev/null && "$venv/bin/python" -m pip "${pip_args[@]}"
    fi
}
venv="$work/venv"
wheels=("$dist"/*.whl)
step "install the wheel into a clean virtualenv" install_wheel "$venv" "${wheels[0]}" || finish

site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
step "scan installed modules for test-only imports" \
    "$python" scripts/build_prod_check.py scan-installed "$site"

# -I: only the installed wheel is importable (no cwd, no PYTHONPATH, no user site); run
# from the scratch directory so nothing of the source tree is on the path.
step "import every shipped module (SYMPHONY_ENV=production)" \
    bash -c 'cd "$1" && SYMPHONY_ENV=production "$2" -I "$3" import-all' \
    _ "$work" "$venv/bin/python" "$root/scripts/build_prod_check.py"

finish
