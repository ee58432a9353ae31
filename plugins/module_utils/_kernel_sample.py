# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A kernel_counters sample taken inside another module's run.

The experiment samples the client's namespace (the kernel's keepalive
counters and the client socket's timer, _kernel_evidence.sample) before the
client connects, after each unanswered probe and after the client failed. On
a lab VM under software emulation every module run costs seconds (SSH, sudo,
a Python start that compiles ansible's module_utils again), so these samples
ride along with the run that happens at that moment anyway: the endpoint's
start of the client and its status, and pcap_info's wait. The option is the
same everywhere (kernel_sample: {port, peer_port}) and the sample is exactly
what the kernel_counters module returns.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

# the option, as an argument_spec entry (the modules document it as kernel_sample)
SPEC = dict(type='dict', options=dict(port=dict(type='int', required=True), peer_port=dict(type='int')))


class KernelSampleError(ValueError):
    """A bad kernel_sample option (the message names the option and its range)."""


def _evidence():
    # imported only when a sample is asked for: a module run that takes none does not compile it
    from ansible_collections.tcplab.keepalive.plugins.module_utils import _kernel_evidence  # pylint: disable=import-outside-toplevel
    return _kernel_evidence


def check(options):
    """Refuse bad ports before the module changes anything (KernelSampleError); None and {} ask for no sample."""
    if not options:
        return
    evidence = _evidence()
    try:
        evidence.check_ports(options.get('port'), options.get('peer_port'))
    except evidence.KernelEvidenceError as exc:
        raise KernelSampleError('kernel_sample: %s' % exc)


def take(options):
    """The sample of the network namespace the calling process runs in, or None when options ask for none."""
    if not options:
        return None
    check(options)
    return _evidence().sample(options.get('port'), options.get('peer_port'))
