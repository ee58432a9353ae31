# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the lab's VMs get from this machine: their base images and the lab's apt proxy.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

The images come from the machine-wide cache (_vm_image.ImageCache), built
unless cached (always with image_rebuild). The lab's own apt-cacher-ng
(_apt_proxy.AptProxy) listens on the bridge address while the lab has VMs;
the manifest records it before it starts and its pid and start time after.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.tcplab.keepalive.plugins.module_utils._apt_proxy import AptProxy, AptProxyError
from ansible_collections.tcplab.keepalive.plugins.module_utils._common import CommandError
from ansible_collections.tcplab.keepalive.plugins.module_utils._lab_manifest import LabError
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_image import (
    MIN_FREE_BYTES, ImageCache, VmImageError, check_free_space)

PROXY_DIR = 'apt-proxy'


class LabVmSupply:
    """The images and proxy part of _lab_vm.LabVms (a mixin: it uses the lab, its manifest and settings)."""

    def _cache(self):
        try:
            return ImageCache(self.lab.run, self.cache_dir, log=None, note=self._note)   # an image removed or kept
        except VmImageError as exc:
            raise LabError(str(exc))

    def ensure_images(self, hosts):
        """The base image of each release the VMs use: built unless cached (always with image_rebuild).

        The releases' builds run side by side, one thread each (mmdebstrap waits on the archive as much as it
        works): a lab of three releases on a machine without cached images is ready in about the time of its
        slowest build instead of the sum. Each build has its own work directory and lock; the first failure
        is raised once every build has ended (a failed build removes its own work directory)."""
        cache = self._cache()
        releases = sorted({host['release'] for host in hosts})
        if self.lab.check_mode:
            for release in releases:
                self.images[release] = self._image_in_check_mode(cache, release)
            return
        self._room_for_builds(cache, releases)
        with ThreadPoolExecutor(max_workers=max(1, len(releases)), thread_name_prefix='tcplab-image') as pool:
            futures = [(release, pool.submit(self._image, cache, release)) for release in releases]
        for release, future in futures:
            self.images[release] = future.result()

    def _room_for_builds(self, cache, releases):
        """Builds side by side need room for all of them at once: refused before any starts."""
        try:
            cold = [r for r in releases if self.rebuild or cache.cached(cache.spec(r)) is None]
            if len(cold) > 1:
                os.makedirs(cache.cache_dir, mode=0o700, exist_ok=True)
                check_free_space(cache.cache_dir, MIN_FREE_BYTES * len(cold))
        except VmImageError as exc:
            raise LabError(str(exc))

    def _image(self, cache, release):
        try:
            info = cache.ensure(release, rebuild=self.rebuild)
        except VmImageError as exc:
            raise LabError(str(exc))
        if info['built']:
            self.lab._note(['mmdebstrap', '--variant=apt', release, info['dir']])
        return info

    def _image_in_check_mode(self, cache, release):
        try:
            spec = cache.spec(release)
            info = None if self.rebuild else cache.cached(spec)
        except VmImageError as exc:
            raise LabError(str(exc))
        if info is None:
            self.lab._note(['mmdebstrap', '--variant=apt', release, cache.entry_dir(spec)])
            info = {'release': release, 'key': spec['key'], 'build_id': None, 'built': True}
        return info

    def _proxy(self, address, port):
        tools = {name: self.tools[name] for name in ('apt-cacher-ng', 'setpriv') if self.tools.get(name)}
        return AptProxy(self.lab.run, os.path.join(self.lab.state_dir, PROXY_DIR), address, port, tools=tools)

    def ensure_proxy(self, address):
        """The lab's apt proxy on the bridge address; returns its URL."""
        entry = self.manifest.data.get('apt_proxy') or {}
        if entry and (entry.get('address'), entry.get('port')) != (address, self.proxy_port):
            self.stop_proxy(purge=False)  # another bridge address or port: the cache stays
        proxy = self._proxy(address, self.proxy_port)
        self.proxy = proxy
        if self.lab.check_mode:
            if proxy.owned_pid() is None:
                self.lab._note(['apt-cacher-ng', '-c', proxy.dirs['conf']])
            return proxy.url
        self.manifest.data['apt_proxy'] = dict(entry, state_dir=proxy.state_dir, address=address, port=self.proxy_port)
        self.lab._save(self.manifest.save())
        try:
            started = proxy.start()
        except (AptProxyError, CommandError) as exc:
            raise LabError(getattr(exc, 'msg', str(exc)))
        if started['changed']:
            self.lab._note(['apt-cacher-ng', '-c', proxy.dirs['conf']])
        record = proxy.load()
        self.manifest.data['apt_proxy'].update(pid=record.get('pid'), starttime=record.get('starttime'))
        self.lab._save(self.manifest.save())
        return proxy.url

    def stop_proxy(self, purge=True):
        """Stop the lab's proxy (proven by its record or its -c argv); with purge also remove its directory."""
        entry = self.manifest.data.get('apt_proxy') or {}
        directory = os.path.join(self.lab.state_dir, PROXY_DIR)
        if not entry and not os.path.isdir(directory):
            return
        # the address only matters to start(); stop() finds the process by its record or its -c argv
        proxy = self._proxy(entry.get('address') or '0.0.0.0', entry.get('port') or self.proxy_port)
        if self.lab.check_mode:
            if proxy.owned_pid() is not None or os.path.isdir(directory):
                self.lab._note(['kill', '-TERM', 'apt-cacher-ng -c %s' % proxy.dirs['conf']])
            return
        stopped = proxy.stop(purge=purge)
        if stopped['changed']:
            self.lab._note(['kill', '-TERM', 'apt-cacher-ng -c %s' % proxy.dirs['conf']])
        if entry:
            self.manifest.data['apt_proxy'] = None
            self.lab._save(self.manifest.save())

    def summary(self):
        """What the module returns about the images and the proxy."""
        images = [{key: info.get(key) for key in ('release', 'key', 'dir', 'built', 'seconds', 'kernel_version')}
                  for _release, info in sorted(self.images.items())]
        proxy = self.proxy.status() if self.proxy is not None and not self.lab.check_mode else {}
        return {'images': images, 'apt_proxy': {key: proxy.get(key) for key in ('url', 'pid', 'cache_dir')} if proxy else {},
                'notes': list(self.notes)}
