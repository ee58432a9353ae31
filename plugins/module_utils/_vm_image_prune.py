# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The image cache's housekeeping: images that nothing has used for a while go.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

Every change to what shapes an image (the package list, the baked files, the
builder's version, the mirror) makes a new cache entry, and a base image is
hundreds of MiB. Each use of an entry (_vm_image.ImageCache.ensure) stamps it;
after that, the other entries of the cache that no use has stamped for
PRUNE_AFTER_DAYS days are removed - only those proven ours (a directory named
<release>-<key> whose manifest names that release and key) and only while no
process (a VM's QEMU, whose command line names the image's kernel) uses them.
"""

from __future__ import annotations

import json
import os
import re
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cmdline, pids

PRUNE_AFTER_DAYS = 14
USED_STAMP = 'last-used'
MANIFEST = 'manifest.json'


def entry_name_re(releases):
    return re.compile(r'^(%s)-([0-9a-f]{16})$' % '|'.join(re.escape(r) for r in releases))


def mark_used(directory):
    """Stamp a cache entry as used now."""
    with open(os.path.join(directory, USED_STAMP), 'w'):
        pass


def last_used(directory, manifest):
    """When the entry was last used: its stamp, else when it was built."""
    try:
        return os.stat(os.path.join(directory, USED_STAMP)).st_mtime
    except OSError:
        return float(manifest.get('built_at') or 0)


def our_entry(directory, release, key):
    """The manifest of a cache entry whose manifest names the release and key of its directory, or None."""
    try:
        with open(os.path.join(directory, MANIFEST)) as handle:
            manifest = json.load(handle)
    except (IOError, OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get('release') != release or manifest.get('key') != key:
        return None
    return manifest


def users(directory, read_pids=pids, read_cmdline=cmdline):
    """Pids of the processes whose command line names a file of the entry (a VM's -kernel, -initrd)."""
    prefix = directory.rstrip('/') + '/'
    return [pid for pid in read_pids() if any(prefix in arg for arg in read_cmdline(pid))]


def stale_entry(directory, name_re, now, max_age_days=PRUNE_AFTER_DAYS):
    """(release, key, days since last use) of an entry of ours unused for more than max_age_days, else None."""
    match = name_re.match(os.path.basename(directory))
    if not match or os.path.islink(directory) or not os.path.isdir(directory):
        return None
    manifest = our_entry(directory, match.group(1), match.group(2))
    if manifest is None:
        return None
    days = (now - last_used(directory, manifest)) / 86400.0
    return (match.group(1), match.group(2), days) if days > max_age_days else None


def prune(cache_dir, releases, keep, remove_tree, log, lock, now=None, read_users=users):
    """Remove the entries of releases other than keep that no use has stamped for PRUNE_AFTER_DAYS days and no
    process uses, each under its lock (lock(release, key): a context manager giving the held lock, with the lock
    file's path; it raises BlockingIOError when another process holds it - then the entry stays), and their lock
    files; the directories removed."""
    name_re, removed = entry_name_re(releases), []
    now = time.time() if now is None else now
    for name in sorted(os.listdir(cache_dir)):
        directory = os.path.join(cache_dir, name)
        if directory == keep or stale_entry(directory, name_re, now) is None:
            continue
        try:
            with lock(*name_re.match(name).groups()) as held:
                removed += _remove_if_unused(directory, held.path, name_re, now, remove_tree, log, read_users)
        except BlockingIOError:
            log('kept the lab VM image %s: another run holds its lock' % directory)
    return removed


def _remove_if_unused(directory, lock_file, name_re, now, remove_tree, log, read_users):
    """Under the entry's lock: still stale (no use stamped it meanwhile) and no process uses it - then it goes,
    and its lock file with it."""
    stale = stale_entry(directory, name_re, now)
    if stale is None:
        return []
    busy = read_users(directory)
    if busy:
        log('kept the lab VM image %s, unused for %.0f days: process %s uses it' % (directory, stale[2], busy[0]))
        return []
    remove_tree(directory)
    if os.path.isfile(lock_file):
        os.unlink(lock_file)
    log('removed the lab VM image %s, unused for %.0f days (more than %d)' % (directory, stale[2], PRUNE_AFTER_DAYS))
    return [directory]
