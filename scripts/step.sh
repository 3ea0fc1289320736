# Sourced by the CI scripts: run one stage under a header, time it, and record a failure
# without stopping, so one run reports every finding.
#
#   step TITLE COMMAND [ARGS...]
#
# Appends TITLE to the `failed` array and sets `status=1` when COMMAND fails (or is empty:
# a tool that was not found). Returns COMMAND's exit status.

status=0
failed=()

step() {
    local title=$1; shift
    printf '\n--- %s ---\n' "$title"
    if [[ -z "${1:-}" ]]; then
        printf '%s: tool not found; run `make install` (or activate the project venv)\n' "$title"
        status=1
        failed+=("$title")
        return 127
    fi
    local start=$SECONDS
    "$@"
    local rc=$?
    printf -- '--- %s: %s (%ss) ---\n' "$title" "$([[ $rc -eq 0 ]] && echo ok || echo "FAILED, exit $rc")" \
        "$((SECONDS - start))"
    if [[ $rc -ne 0 ]]; then
        status=1
        failed+=("$title")
    fi
    return "$rc"
}
