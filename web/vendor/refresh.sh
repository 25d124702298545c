#!/usr/bin/env bash
# Copies the vendored browser libraries (served by /docs and /dashboard) from node_modules, which
# package-lock.json pins: run `npm ci` first, then this, after changing a version there.
# tests/integration/test_web.py checks the copies are byte-identical to node_modules'.
set -euo pipefail
cd "$(dirname "$0")"
modules=../../node_modules

copy() { # package file...
    local package=$1
    shift
    mkdir -p "$package"
    for file in "$@"; do
        cp "$modules/$package/$file" "$package/$(basename "$file")"
    done
}

copy swagger-ui-dist swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css \
    LICENSE NOTICE
copy chart.js dist/chart.umd.js LICENSE.md
