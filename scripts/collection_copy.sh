#!/usr/bin/env bash
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Sourced by scripts/test.sh and scripts/stage_matrix.sh; it only defines collection_copy_to.
#
# collection_copy_to DEST: a copy of this collection (tracked and new, not ignored files) in DEST
# (.../ansible_collections/tcplab/keepalive, where ansible-test wants to run), made once, with a
# git repository of its own: ansible-test lists files through git when it finds one. Prints DEST.
collection_copy_to() {
  local dest=$1
  if [ ! -d "$dest" ]; then
    mkdir -p "$dest"
    (cd "$TCPLAB_ROOT" && git ls-files -z -co --exclude-standard | xargs -0 -I{} cp --parents {} "$dest/" 2>/dev/null)
    (cd "$dest" && git init -q && git add -A && git -c user.name=ci -c user.email=ci@localhost commit -qm copy)
  fi
  echo "$dest"
}
