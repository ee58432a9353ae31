#!/usr/bin/env bash
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# The docs stage: the collection's documentation site (docs/development.md), with the tools of
# .venv-docs (requirements-docs.txt), Debian's pandoc and Debian's chromium:
#   stage    a copy of the collection (tracked and new files) in .build/docs-site/collections, with
#            each user guide docs/<guide>.md listed in docs/docsite/extra-docs.yml converted by
#            pandoc (scripts/docs_md2rst.lua) into the extra doc docs/docsite/rst/<guide>.rst
#   lint     antsibull-docs lint-collection-docs of that copy: plugin and role docs (schema, markup,
#            references to any collection), extra docs (rstcheck, labels, references); no finding
#   site     antsibull-docs sphinx-init + antsibull-docs collection + sphinx-build (the steps of the
#            build.sh sphinx-init writes) into .build/docs-site/html, warnings as errors, none
#            allowed; intersphinx reads a local inventory of the ansible-core docs targets our pages
#            refer to (scripts/docs_site.py inventory), so the build fetches nothing
#   offline  no page or style sheet of the site loads anything from another host; the external
#            hyperlinks are listed
#   shot     headless chromium renders the audit module's page (its DOM must hold the page's title)
#            into .build/test/docs-audit_module.png; its network log must show no request to
#            another host
#
#   bash scripts/stage_docs.sh          the stage on its own (as root)
#   STAGES=docs bash scripts/test.sh     the same through the test suite
#
# Sourced (by scripts/test.sh) it only defines stage_docs.

DOCS_SCREENSHOT_PAGE=collections/tcplab/keepalive/audit_module.html
DOCS_SCREENSHOT_TITLE='tcplab.keepalive.audit module'
DOCS_ANSIBLE_DOCS=https://docs.ansible.com/projects/ansible/devel/

# docs_stage SITE: the collection's copy under SITE/collections, with the guides converted.
docs_stage() {
  local site=$1 src guide guides plugins
  src="$site/collections/ansible_collections/tcplab/keepalive"
  mkdir -p "$src"
  git -C "$TCPLAB_ROOT" ls-files -z -co --exclude-standard | (cd "$TCPLAB_ROOT" && xargs -0 cp --parents -t "$src") 2>/dev/null
  # a repository of its own: antsibull-docs copies a collection inside a git work tree by
  # `git ls-files`, and in the checkout's, .build/ is ignored
  git init -q "$src" || return 1
  guides=$("$DOCS_BIN/python" "$TCPLAB_ROOT/scripts/docs_site.py" guides "$src") || return 1
  plugins=$("$DOCS_BIN/python" "$TCPLAB_ROOT/scripts/docs_site.py" plugins "$src") || return 1
  mkdir -p "$src/docs/docsite/rst"
  for guide in $guides; do
    DOC_NAME=$guide DOC_GUIDES="$(echo "$guides" | tr '\n' ' ')" DOC_PLUGINS=$plugins \
      pandoc -f gfm -t rst --wrap=preserve --columns=1000 --lua-filter "$TCPLAB_ROOT/scripts/docs_md2rst.lua" \
      -o "$src/docs/docsite/rst/$guide.rst" "$src/docs/$guide.md" || { echo "docs: pandoc failed on docs/$guide.md"; return 1; }
  done
  DOCS_GUIDES=$(echo "$guides" | wc -w)
  echo "docs: $DOCS_GUIDES guides converted: $(echo "$guides" | tr '\n' ' ')"
}

docs_lint() {
  local src=$1 log="$OUT/docs-lint.log" rc
  antsibull-docs lint-collection-docs --plugin-docs --check-extra-docs-refs --validate-collection-refs all \
    --disallow-unknown-collection-refs "$src" > "$log" 2>&1
  rc=$?
  sed "s|$src/||" "$log"
  DOCS_LINT=$(grep -c . "$log")
  echo "docs: antsibull-docs lint-collection-docs: exit $rc, $DOCS_LINT findings (log: $log)"
  [ "$rc" -eq 0 ] && [ "$DOCS_LINT" -eq 0 ]
}

docs_index() {  # the site's front page (sphinx-init's index.rst, with our words)
  cat <<'EOF'
.. _docsite_root_index:

tcplab.keepalive
================

Repeatable, verified and reversible TCP keepalive experiments, a fleet-wide audit of the keepalive
settings of every host and network namespace, and local lab hosts to run both on: the modules,
filters, connection plugin and roles of the collection, and its user guides.

.. toctree::
   :maxdepth: 2
   :caption: Collection:

   collections/tcplab/keepalive/index

.. toctree::
   :maxdepth: 1
   :caption: Plugin indexes:
   :glob:

   collections/index_*

.. toctree::
   :maxdepth: 1
   :caption: Reference indexes:

   collections/environment_variables
EOF
}

docs_site() {
  local site=$1 conf="$1/sphinx" log="$OUT/docs-sphinx.log" rc
  mkdir -p "$conf"
  docs_index > "$site/index.rst"
  antsibull-docs sphinx-init --use-current --fail-on-error --dest-dir "$conf" --index-rst-source "$site/index.rst" \
    --project tcplab.keepalive --copyright 'tcplab.keepalive developers' --title 'tcplab.keepalive' \
    --html-short-title tcplab.keepalive tcplab.keepalive > "$OUT/docs-init.log" 2>&1 || { cat "$OUT/docs-init.log"; return 1; }
  "$DOCS_BIN/python" "$TCPLAB_ROOT/scripts/docs_site.py" inventory "$conf/ansible_devel.inv" || return 1
  # Only the local inventory: no other inventory is referred to, and nothing is fetched.
  printf '\n# tcplab.keepalive (scripts/stage_docs.sh): offline, from a local inventory only\nintersphinx_mapping = %s\n' \
    "{'ansible_devel': ('$DOCS_ANSIBLE_DOCS', '$conf/ansible_devel.inv')}" >> "$conf/conf.py"
  mkdir -p "$conf/rst" && chmod og-w "$conf/rst"  # as build.sh: antsibull-docs wants it so
  (cd "$conf" && antsibull-docs --config-file antsibull-docs.cfg collection --cleanup everything --use-current \
    --fail-on-error --dest-dir rst tcplab.keepalive) > "$OUT/docs-collection.log" 2>&1 \
    || { cat "$OUT/docs-collection.log"; return 1; }
  sphinx-build -b html -c "$conf" -q -W --keep-going -w "$OUT/docs-warnings.log" -j 2 "$conf/rst" "$site/html" > "$log" 2>&1
  rc=$?
  cat "$log"
  DOCS_WARNINGS=$(grep -c 'WARNING' "$OUT/docs-warnings.log")
  echo "docs: sphinx-build $(sphinx-build --version | cut -d' ' -f2): exit $rc, $DOCS_WARNINGS warnings (log: $log)"
  [ "$rc" -eq 0 ] && [ "$DOCS_WARNINGS" -eq 0 ]
}

# docs_shot SITE: the screenshot, and proof that the page rendered and fetched nothing from elsewhere.
docs_shot() {
  local site=$1 png="$OUT/docs-audit_module.png" url profile netlog rc=0 size
  url="file://$site/html/$DOCS_SCREENSHOT_PAGE"
  profile=$(mktemp -d /tmp/tcplab-docs-chromium.XXXXXX)
  netlog="$OUT/docs-chromium-netlog.json"
  rm -f "$png"
  # no host name resolves: neither the page nor the browser's own services reach another host
  local opts=(--headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run --disable-extensions
    --disable-background-networking --disable-component-update --disable-sync "--user-data-dir=$profile"
    '--host-resolver-rules=MAP * ~NOTFOUND')
  timeout 60 chromium "${opts[@]}" --window-size=1280,1600 "--screenshot=$png" "--log-net-log=$netlog" "$url" \
    > "$OUT/docs-chromium.log" 2>&1 || { cat "$OUT/docs-chromium.log"; rc=1; }
  if ! timeout 60 chromium "${opts[@]}" --dump-dom "$url" 2>/dev/null | grep -qF "$DOCS_SCREENSHOT_TITLE"; then
    echo "docs: chromium's DOM of $DOCS_SCREENSHOT_PAGE does not hold '$DOCS_SCREENSHOT_TITLE'"; rc=1
  fi
  rm -rf "$profile"
  "$DOCS_BIN/python" "$TCPLAB_ROOT/scripts/docs_site.py" netlog "$netlog" || rc=1
  size=$("$DOCS_BIN/python" -c 'import struct, sys
data = open(sys.argv[1], "rb").read(24)
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
print("%dx%d" % struct.unpack(">II", data[16:24]))' "$png" 2>&1) || { echo "docs: no screenshot: $size"; return 1; }
  DOCS_SHOT="$png ($size, $(stat -c %s "$png") bytes)"
  echo "docs: screenshot of $DOCS_SCREENSHOT_PAGE: $DOCS_SHOT"
  return "$rc"
}

docs_offline() {
  "$DOCS_BIN/python" "$TCPLAB_ROOT/scripts/docs_site.py" check "$1/html" > "$OUT/docs-offline.log" 2>&1
  local rc=$?
  head -1 "$OUT/docs-offline.log"; grep -E '^(  LOAD|docs:)' "$OUT/docs-offline.log"
  return "$rc"
}

docs_timed() {  # NAME COMMAND...: the command, and how long it took
  local name=$1 start=$SECONDS rc
  shift
  "$@"; rc=$?
  echo "docs: $name $([ "$rc" -eq 0 ] && echo ok || echo FAILED) ($((SECONDS - start)) s)"
  return "$rc"
}

stage_docs() {
  local site="$TCPLAB_ROOT/.build/docs-site" src start=$SECONDS rc=0 tool
  DOCS_VENV=${TCPLAB_DOCS_VENV:-$TCPLAB_ROOT/.venv-docs}
  DOCS_BIN="$DOCS_VENV/bin"
  DOCS_GUIDES=0 DOCS_LINT="?" DOCS_WARNINGS="?" DOCS_SHOT=none
  [ -x "$DOCS_BIN/antsibull-docs" ] || { echo "docs: $DOCS_VENV has no antsibull-docs (scripts/bootstrap.sh makes it)"; return 1; }
  for tool in pandoc chromium; do
    command -v "$tool" >/dev/null || { echo "docs: $tool is missing (scripts/bootstrap.sh installs it)"; return 1; }
  done
  src="$site/collections/ansible_collections/tcplab/keepalive"
  rm -rf "$site" "$OUT"/docs-*
  mkdir -p "$site" "$OUT"
  # ansible-doc (run by antsibull-docs) of .venv-docs, on the copy only; no ansible.cfg; all of
  # it in a subshell, so the other stages keep their PATH and collections
  (
    # shellcheck disable=SC2030  # local to the subshell on purpose
    export PATH="$DOCS_BIN:$PATH" ANSIBLE_COLLECTIONS_PATH="$site/collections"
    unset ANSIBLE_CONFIG
    cd "$site" || exit 1
    docs_timed stage docs_stage "$site" || exit 1
    r=0
    # the lint and the site side by side (each mostly waits on its own ansible-doc and Python)
    docs_timed lint docs_lint "$src" > "$site/lint.out" 2>&1 &
    lint=$!
    docs_timed site docs_site "$site" || r=1
    wait "$lint" || r=1
    cat "$site/lint.out"
    DOCS_LINT=$(grep -c . "$OUT/docs-lint.log")
    docs_timed offline docs_offline "$site" || r=1
    docs_timed shot docs_shot "$site" || r=1
    printf '%s\n' "$DOCS_GUIDES" "$DOCS_LINT" "$DOCS_WARNINGS" "$DOCS_SHOT" > "$site/summary"
    exit "$r"
  ) || rc=1
  if [ -f "$site/summary" ]; then
    mapfile -t DOCS_RESULT < "$site/summary"
  else
    DOCS_RESULT=("?" "?" "?" none)
  fi
  SUMMARY[docs]="${DOCS_RESULT[0]} guides; lint-collection-docs ${DOCS_RESULT[1]} findings; sphinx ${DOCS_RESULT[2]} warnings;"
  SUMMARY[docs]+=" site .build/docs-site/html ($(grep -oE '^[0-9]+ pages: [0-9]+ loads' "$OUT/docs-offline.log" 2>/dev/null || echo 'not checked')"
  SUMMARY[docs]+=" from other hosts); screenshot ${DOCS_RESULT[3]}; $((SECONDS - start)) s"
  return "$rc"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -uo pipefail
  # shellcheck source=scripts/bootstrap.sh
  . "$(dirname "$0")/bootstrap.sh" || exit 1
  OUT="$TCPLAB_ROOT/.build/test"
  declare -A SUMMARY
  stage_docs; status=$?
  printf '\ndocs %s: %s\n' "$([ "$status" -eq 0 ] && echo ok || echo FAILED)" "${SUMMARY[docs]}"
  exit "$status"
fi
