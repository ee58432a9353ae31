# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The supervisor of every endpoint, and the curl wrapper (started detached by _endpoint.py).

Run as ``[python, -c, <this file's source>, TAG, json-spec]`` with spec
{"argv", "outcome", "exit", "curl"}. It runs the program (argv) as its
child, which the kernel kills when the supervisor dies (PR_SET_PDEATHSIG),
forwards the signals it can catch, and records how the program ended (exit
code or signal) in the exit record. For curl (spec "curl") it also records
the outcome: curl's exit code, the errno named in its error and the timing.
Standard library only.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def log(text, stream=None):
    """One line to the program's log (its stdout, or stream), at once."""
    stream = sys.stdout if stream is None else stream
    stream.write(text + '\n')
    stream.flush()


def write(path, data):
    """A JSON record, atomically."""
    tmp = path + '.tmp'
    with open(tmp, 'w') as handle:
        json.dump(data, handle)
    os.rename(tmp, path)


def curl_outcome(returncode, err, start):
    """The outcome record of curl's connection from its exit code and its stderr."""
    now = time.time()
    names = {os.strerror(code): name for code, name in errno.errorcode.items()}
    found = [names[text] for text in names if text in err]
    return {'state': 'failed' if returncode else 'closed', 'exit_code': returncode,
            'errno': found[0] if found else None, 'error': err.strip().splitlines()[-1] if err.strip() else '',
            'connected_at': start, 'failed_at': now, 'seconds': now - start}


class Supervisor:
    """The program as a child tied to the supervisor's life, and the records of how it ended."""

    def __init__(self, spec):
        self.spec = spec
        self.received = []
        self.proc = None
        self.parent = os.getpid()
        try:
            import ctypes  # pylint: disable=import-outside-toplevel
            self.prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (ImportError, OSError, AttributeError):  # no ctypes: stop and purge still end the program by its record
            self.prctl = None

    def one_unit(self):
        """In the child before exec: die with the supervisor."""
        if self.prctl is not None:
            self.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != self.parent:
            os._exit(70)

    def forward(self, signum, _frame):
        self.received.append(signal.Signals(signum).name)
        if self.proc is not None:
            try:
                os.kill(self.proc.pid, signum)
            except OSError:
                pass

    def start(self):
        """Start the program; exit 127 (recorded) when it cannot be run."""
        curl = self.spec['curl']
        try:
            self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
                self.spec['argv'], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE if curl else None,
                preexec_fn=self.one_unit, close_fds=True)  # pylint: disable=subprocess-popen-preexec-fn
        except OSError as exc:
            text = 'cannot run %s: %s' % (self.spec['argv'][0], exc.strerror)
            log(text, sys.stderr)
            write(self.spec['exit'], {'pid': None, 'exit_code': 127, 'signal': None, 'received': None, 'error': text,
                                      'at': time.time()})
            raise SystemExit(127)
        if self.received:
            os.kill(self.proc.pid, getattr(signal, self.received[0]))

    def run(self):
        for signum in FORWARDED:
            signal.signal(signum, self.forward)
        start = time.time()
        if self.spec['curl']:
            write(self.spec['outcome'], {'state': 'starting', 'connected_at': None})
        self.start()
        if self.spec['curl']:
            write(self.spec['outcome'], {'state': 'connected', 'connected_at': start, 'curl_pid': self.proc.pid})
            err = self.proc.communicate()[1].decode('utf-8', 'replace')
            sys.stderr.write(err)
            sys.stderr.flush()
            if self.proc.returncode >= 0:
                write(self.spec['outcome'], curl_outcome(self.proc.returncode, err, start))
        else:
            self.proc.wait()
        rc = self.proc.returncode
        write(self.spec['exit'], {'pid': self.proc.pid, 'exit_code': rc if rc >= 0 else None,
                                  'signal': signal.Signals(-rc).name if rc < 0 else None,
                                  'received': self.received[0] if self.received else None, 'at': time.time()})


def main(argv=None):
    Supervisor(json.loads((sys.argv if argv is None else argv)[2])).run()


if __name__ == '__main__':
    main()
