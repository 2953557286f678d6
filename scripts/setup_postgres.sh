#!/usr/bin/env bash
# Makes PostgreSQL's server programs (initdb, pg_ctl, postgres) available for the tests of multi-worker searches:
# installs Debian's `postgresql` package when they are missing and apt-get can run, then prints their folder.
# The tests start their own throw-away cluster on 127.0.0.1; nothing is started here. Exit status 1 if PostgreSQL
# cannot be installed (the tests then skip, saying so).
set -euo pipefail

find_bindir() {
    if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
        pg_config --bindir
        return 0
    fi
    for dir in /usr/lib/postgresql/*/bin; do
        if [ -x "$dir/initdb" ]; then echo "$dir"; return 0; fi
    done
    command -v initdb >/dev/null 2>&1 && dirname "$(command -v initdb)" && return 0
    return 1
}

if ! find_bindir >/dev/null; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "installing Debian's postgresql package" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2 \
            || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2; }
    else
        echo "PostgreSQL is missing and cannot be installed here (needs root and apt-get)" >&2
        exit 1
    fi
fi
find_bindir
