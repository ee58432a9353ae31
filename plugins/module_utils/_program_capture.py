# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The capture's detached program, for both backends (started by _capture_start.py).

Run as ``[python, -c, <this file's source>, MARKER, json-args]`` on the
target's own Python (standard library only; scapy is imported by the scapy
backend alone). The first process forks and exits (the module waits for it
only); its child, the monitor, outlives the module.

backend scapy: the monitor forks the sniffer and waits for it; when the
sniffer ends without writing its own account ("finished" in the state
record), the monitor records the signal or exit code ("died") and how the
sniffer left the pcap. The sniffer reports {"pid", "monitor"} and then
{"ready"} or {"error", "detail"} as JSON lines on the inherited fd ready_fd,
and captures until SIGTERM or a limit. On loopback a packet socket sees each
segment twice (the outgoing copy, sll_pkttype PACKET_OUTGOING, and the
incoming one); libpcap - and so tcpdump - drops the outgoing copy there, and
so does this loop. scapy's L2ListenSocket does not report the packet type,
so the loop reads the socket itself with recvmsg (address, kernel timestamp,
original length).

backend tcpdump: the monitor checks the interface, opens exactly the pcap
the module created and runs tcpdump with that file as its stdout and its
stderr on a pipe. tcpdump prints "listening on IFACE, link-type ..." only
after the device is active and the filter attached: then the monitor writes
the state record and says {"ready"}; an exit before that is classified from
tcpdump's stderr into {"error", "detail"}. Afterwards it keeps tcpdump's
stderr in the log, ends the capture at max_seconds and at max_bytes (the
pcap is then cut back to the whole records within max_bytes), forwards a
SIGTERM/SIGINT of its own to tcpdump, and records how tcpdump ended.

Either way the module creates the pcap and passes its identity (device,
inode); the program opens exactly that file (no symlink, no other file put
there since) and records it, with the capturing process's pid, start time
and network namespace.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import time

LITTLE_ENDIAN_MAGIC = (b'\xd4\xc3\xb2\xa1', b'\x4d\x3c\xb2\xa1')
PCAP_HEADER = 24
RECORD_HEADER = 16
ARPHRD_LOOPBACK = 772
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_STATISTICS = 6
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
TIMESPEC = struct.Struct('ll')
AUXDATA = struct.Struct('IIIHHHH')
# how long tcpdump gets after SIGTERM before SIGKILL
TCPDUMP_TERM_WAIT = 5
REPLACED = 'it is no longer the file the module created (replaced since)'


# -- shared by both backends ---------------------------------------------------------

def log(text, stream=None):
    """One line to the program's log (its stdout, or stream), at once."""
    stream = sys.stdout if stream is None else stream
    stream.write(text + '\n')
    stream.flush()


def ticks(pid):
    """Start time of pid in clock ticks after boot (/proc/PID/stat field 22)."""
    with open('/proc/%d/stat' % pid) as handle:
        return int(handle.read().rsplit(')', 1)[1].split()[19])


def final(fd):
    """How the capture left its pcap: size and times, to tell it later from a file put in its place."""
    st = os.fstat(fd)
    return {'size': st.st_size, 'mtime_ns': st.st_mtime_ns, 'ctime_ns': st.st_ctime_ns}


def ended(status):
    """The 'died' account of a wait status: the signal's name or the exit code."""
    if os.WIFSIGNALED(status):
        try:
            name = signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            name = 'signal %d' % os.WTERMSIG(status)
        return {'signal': name, 'at': time.time()}
    return {'exit_code': os.WEXITSTATUS(status), 'at': time.time()}


def linktype_of(head):
    """The link type in a pcap file header."""
    return struct.unpack(('<' if head[:4] in LITTLE_ENDIAN_MAGIC else '>') + 'I', head[20:24])[0]


def walk(fd, limit):
    """(packets, bytes) of the whole records of the pcap at fd that fit in limit bytes."""
    total = os.fstat(fd).st_size
    head = os.pread(fd, PCAP_HEADER, 0)
    if len(head) < PCAP_HEADER:
        return 0, 0
    rec = struct.Struct(('<' if head[:4] in LITTLE_ENDIAN_MAGIC else '>') + 'IIII')
    packets, size = 0, PCAP_HEADER
    while True:
        header = os.pread(fd, RECORD_HEADER, size)
        if len(header) < RECORD_HEADER:
            break
        end = size + RECORD_HEADER + rec.unpack(header)[2]
        if end > total or end > limit:
            break
        packets, size = packets + 1, end
    return packets, size


class Program:
    """The arguments, the ready pipe and the state record of one capture."""

    def __init__(self, argv):
        self.marker = argv[1]
        self.args = json.loads(argv[2])
        self.ready_fd = self.args.pop('ready_fd')

    def detach(self):
        """The first process exits (the module waits for it only); the rest runs on, immune to SIGHUP."""
        if os.fork():
            os._exit(0)
        os.umask(0o077)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def say(self, **message):
        """One JSON line to the module, while it listens."""
        if self.ready_fd is None:
            return
        try:
            os.write(self.ready_fd, (json.dumps(message) + '\n').encode())
        except OSError:  # the module stopped waiting
            pass

    def done_saying(self):
        if self.ready_fd is not None:
            os.close(self.ready_fd)
            self.ready_fd = None

    def fail(self, kind, detail):
        """Report an error before ready and exit."""
        self.say(error=kind, detail=detail)
        log('not started (%s): %s' % (kind, detail))
        raise SystemExit(2)

    def save(self, state):
        tmp = self.args['state'] + '.tmp'
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, 'w') as handle:
            json.dump(state, handle, indent=2, sort_keys=True)
        os.rename(tmp, self.args['state'])

    def load(self):
        try:
            fd = os.open(self.args['state'], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        with os.fdopen(fd) as handle:
            try:
                return json.load(handle)
            except ValueError:
                return None

    def open_pcap(self, flags):
        """A descriptor of the file the module created, and nothing else: no symlink followed, no FIFO waited for."""
        fd = os.open(self.args['path'], flags | os.O_NOFOLLOW | os.O_NONBLOCK)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or [st.st_dev, st.st_ino] != self.args['pcap_id']:
            os.close(fd)
            raise OSError(REPLACED)
        return fd, st

    def open_output(self):
        """(fd, stat) of the pcap opened for writing (blocking, 0600), or fail('pcap')."""
        try:
            fd, st = self.open_pcap(os.O_WRONLY)
            os.set_blocking(fd, True)
            os.fchmod(fd, 0o600)
        except OSError as exc:
            self.fail('pcap', '%s: %s' % (type(exc).__name__, exc))
        return fd, st

    def check_iface(self):
        try:
            socket.if_nametoindex(self.args['iface'])
        except OSError as exc:
            self.fail('iface', '%s: %s' % (type(exc).__name__, exc))

    def record(self, pid, start, monitor, monitor_start, st, **extra):
        """The state record of a capture that is ready."""
        state = dict(self.args, marker=self.marker, pid=pid, starttime=start,
                     monitor={'pid': monitor, 'starttime': monitor_start},
                     netns_inode=os.stat('/proc/%d/ns/net' % pid).st_ino, pcap={'dev': st.st_dev, 'ino': st.st_ino},
                     started_at=time.time())
        state.update(extra)
        self.save(state)
        return state


# -- backend scapy --------------------------------------------------------------------

def watch_sniffer(program, sniffer, mfd):
    """The monitor: wait for the sniffer; record how it ended unless it did so itself."""
    program.done_saying()
    status = os.waitpid(sniffer, 0)[1]
    state = program.load()
    if isinstance(state, dict) and state.get('pid') == sniffer and not state.get('finished'):
        if mfd is not None:
            state['pcap_end'] = final(mfd)
        state['died'] = ended(status)
        program.save(state)
        log('the sniffer (pid %d) died: %s' % (sniffer, state['died']))
    os._exit(0)


def scapy_socket(program):
    """scapy's packet socket on the interface with the filter attached before bind, and its link type."""
    args = program.args
    try:
        # importing scapy.arch sets conf.L2listen
        import scapy.arch  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
        from scapy.config import conf  # pylint: disable=import-outside-toplevel
        from scapy.data import ARPHRD_TO_DLT  # pylint: disable=import-outside-toplevel
    except ImportError as exc:
        program.fail('scapy', '%s: %s' % (type(exc).__name__, exc))
    program.check_iface()
    if args['filter']:
        try:
            from scapy.arch.common import compile_filter  # pylint: disable=import-outside-toplevel
            compile_filter(args['filter'], iface=args['iface'])
        except ImportError as exc:  # no libpcap: scapy's sniff() would silently skip the filter
            program.fail('libpcap', '%s: %s' % (type(exc).__name__, exc))
        except Exception as exc:  # pylint: disable=broad-except
            program.fail('filter', '%s: %s' % (type(exc).__name__, exc))
    fd, st = program.open_output()
    try:
        # scapy's logging (scapy imports it): a capture with tcpdump has no use for it
        import logging  # pylint: disable=import-outside-toplevel
        logging.getLogger('scapy.runtime').setLevel(logging.ERROR)  # not "Unable to guess type": we parse nothing
        listener = conf.L2listen(iface=args['iface'], filter=args['filter'] or None)  # filter attached before bind
        sock = listener.ins
        try:  # room for bursts of 64 KiB loopback segments
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 23)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 23)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)  # original length, VLAN tag
        hatype = sock.getsockname()[3]
        linktype = {12: 101}.get(ARPHRD_TO_DLT.get(hatype, 1), ARPHRD_TO_DLT.get(hatype, 1))
    except Exception as exc:  # pylint: disable=broad-except
        program.fail('socket', '%s: %s' % (type(exc).__name__, exc))
    return listener, fd, st, hatype, linktype


class Sniffer:
    """The capture loop of the scapy backend: packets from the socket to the pcap, within the limits."""

    def __init__(self, args, listener, out):
        self.args = args
        self.listener = listener  # scapy closes the socket when its listener goes
        self.sock = listener.ins
        self.out = out
        self.packets, self.size, self.outgoing, self.reason = 0, PCAP_HEADER, 0, None
        self.stop = []

    def one(self):
        """Take one queued packet; False when none is queued or a limit was reached."""
        try:
            data, anc, _flags, addr = self.sock.recvmsg(self.args['snaplen'], 512, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        if addr[3] == ARPHRD_LOOPBACK and addr[2] == PACKET_OUTGOING:  # the copy tcpdump drops
            self.outgoing += 1
            return True
        sec, usec, wire = None, 0, len(data)
        for level, kind, value in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= TIMESPEC.size:
                sec, nsec = TIMESPEC.unpack(value[:TIMESPEC.size])
                usec = nsec // 1000
            elif level == SOL_PACKET and kind == PACKET_AUXDATA and len(value) >= AUXDATA.size:
                status, wire, _snaplen, _mac, _net, tci, tpid = AUXDATA.unpack(value[:AUXDATA.size])
                if tci or status & TP_STATUS_VLAN_VALID:  # put the tag back, as libpcap does
                    tag = struct.pack('!HH', tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100, tci)
                    data, wire = data[:12] + tag + data[12:], wire + 4
        if sec is None:
            now = time.time()
            sec, usec = int(now), int((now - int(now)) * 1e6)
        if self.packets >= self.args['max_packets']:
            self.reason = 'max_packets'
        elif self.size + RECORD_HEADER + len(data) > self.args['max_bytes']:
            self.reason = 'max_bytes'
        else:
            self.out.write_packet(data, sec=sec, usec=usec, caplen=len(data), wirelen=wire)
            self.packets, self.size = self.packets + 1, self.size + RECORD_HEADER + len(data)
        return self.reason is None

    def run(self):
        """Capture until SIGTERM/SIGINT or a limit; the reason it ended."""
        deadline = time.monotonic() + self.args['max_seconds']
        while self.reason is None:
            if self.stop:
                while self.one():  # what the kernel already queued belongs to the capture
                    pass
                self.reason = self.reason or self.stop[0]
                break
            left = deadline - time.monotonic()
            if left <= 0:
                self.reason = 'max_seconds'
                break
            if select.select([self.sock], [], [], min(left, 0.2))[0]:
                while self.reason is None and self.one():
                    pass
            if self.packets >= self.args['max_packets']:
                self.reason = 'max_packets'
        return self.reason


def sniff(program, monitor):
    """The sniffer (the monitor's child): report, open the socket and the pcap, capture, record the end."""
    args = program.args
    pid = os.getpid()
    start = ticks(pid)
    program.say(pid=pid, starttime=start, monitor=monitor, monitor_starttime=ticks(monitor))
    listener, fd, st, hatype, linktype = scapy_socket(program)
    try:
        from scapy.utils import PcapWriter  # pylint: disable=import-outside-toplevel
        out = PcapWriter(os.fdopen(fd, 'wb', 0), linktype=linktype, sync=True, snaplen=args['snaplen'])
        out.write_header(None)
    except Exception as exc:  # pylint: disable=broad-except
        program.fail('socket', '%s: %s' % (type(exc).__name__, exc))
    state = program.record(pid, start, monitor, ticks(monitor), st, linktype=linktype, hatype=hatype)
    sniffer = Sniffer(args, listener, out)
    signal.signal(signal.SIGTERM, lambda *_: sniffer.stop.append('stopped'))
    signal.signal(signal.SIGINT, lambda *_: sniffer.stop.append('stopped'))
    program.say(ready=True, pid=pid, starttime=start, linktype=linktype)
    program.done_saying()
    log('capturing on %s (filter %r) to %s, pid %d' % (args['iface'], args['filter'], args['path'], pid))
    reason = sniffer.run()
    try:
        drops = struct.unpack('II', sniffer.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))[1]
    except OSError:
        drops = None
    state['pcap_end'] = final(fd)
    out.close()
    state['finished'] = {'reason': reason, 'packets': sniffer.packets, 'bytes': sniffer.size,
                         'loopback_outgoing_dropped': sniffer.outgoing, 'kernel_drops': drops, 'at': time.time()}
    program.save(state)
    log('finished (%s): %d packets, %d bytes' % (reason, sniffer.packets, sniffer.size))


def run_scapy(program):
    monitor = os.getpid()
    try:  # the monitor's own look at the pcap: how the sniffer left it, even after SIGKILL
        mfd = program.open_pcap(os.O_RDONLY)[0]
    except OSError:
        mfd = None
    child = os.fork()
    if child:
        watch_sniffer(program, child, mfd)
    if mfd is not None:
        os.close(mfd)
    sniff(program, monitor)


# -- backend tcpdump ------------------------------------------------------------------

def tcpdump_message(prog, lines):
    """tcpdump's complaint, without its program name and its warnings."""
    out = []
    for line in lines:
        line = line.strip()
        if line.startswith(prog + ': '):
            line = line[len(prog) + 2:]
        if line and 'WARNING' not in line and not line.startswith('listening on '):
            out.append(line)
    return ' '.join(out)


class Tcpdump:
    """tcpdump as the monitor's child, its stderr read line by line."""

    def __init__(self, program):
        self.program = program
        self.args = program.args
        self.argv = self.args['tcpdump_argv']
        self.prog = os.path.basename(self.argv[0])
        self.count = int(self.argv[self.argv.index('-c') + 1])
        self.pid = None
        self.err = None
        self.lines, self.buf, self.ready = [], b'', False
        self.reason, self.termed = [], []

    def start(self, fd, monitor):
        """Fork and exec tcpdump: the pcap on its stdout, its stderr on a pipe, tied to the monitor's life."""
        try:
            import ctypes  # pylint: disable=import-outside-toplevel
            libc = ctypes.CDLL(None, use_errno=True)
        except (ImportError, OSError, AttributeError):  # no ctypes: tcpdump is not tied to the monitor's life
            libc = None
        err_r, err_w = os.pipe()
        child = os.fork()
        if child == 0:
            try:
                if libc is not None:
                    libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG: tcpdump ends, flushing, with us
                if os.getppid() != monitor:
                    os._exit(1)
                for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                os.dup2(fd, 1)
                os.dup2(err_w, 2)
                if self.program.ready_fd is not None:
                    os.close(self.program.ready_fd)
                os.execv(self.argv[0], self.argv)
            except BaseException as exc:  # pylint: disable=broad-except
                try:
                    os.write(2, ('cannot run %s: %s: %s\n' % (self.argv[0], type(exc).__name__, exc)).encode())
                finally:
                    os._exit(127)
        os.close(err_w)
        self.pid, self.err = child, err_r

    def take(self, chunk):
        """Lines of tcpdump's stderr into the log; ready once it listens."""
        self.buf += chunk
        while b'\n' in self.buf:
            raw, self.buf = self.buf.split(b'\n', 1)
            line = raw.decode('utf-8', 'replace')
            log(line)
            self.lines.append(line)
            if ('listening on %s, link-type ' % self.args['iface']) in line:
                self.ready = True

    def classify(self, status):
        """(kind, detail) of a tcpdump that exited before it was listening."""
        text = tcpdump_message(self.prog, self.lines)
        if os.WIFSIGNALED(status):
            return 'tcpdump', (text + ' ' if text else '') + '(killed by signal %d)' % os.WTERMSIG(status)
        if os.WEXITSTATUS(status) == 127 and text.startswith('cannot run '):
            return 'exec', text
        if text.startswith(self.args['iface'] + ': '):  # libpcap names the device when it cannot open it
            return ('iface' if 'No such device' in text else 'socket'), text
        if self.args['filter']:  # compile the filter alone: does it fail by itself?
            check = subprocess.run([self.argv[0], '-d', '-i', self.args['iface'], '-s', str(self.args['snaplen']),
                                    '--', self.args['filter']], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, check=False)
            why = tcpdump_message(self.prog, check.stderr.decode('utf-8', 'replace').splitlines())
            if check.returncode != 0 and why and not why.startswith(self.args['iface'] + ': '):
                return 'filter', why
        return 'tcpdump', text or 'it exited with code %d and said nothing' % os.WEXITSTATUS(status)

    def end(self, why):
        """SIGTERM to tcpdump (it flushes the pcap and prints its counts), once; why the capture ends."""
        if not self.reason:
            self.reason.append(why)
        if not self.termed:
            self.termed.append(time.monotonic())
            try:
                os.kill(self.pid, signal.SIGTERM)
            except OSError:
                pass

    def watch(self, mfd):
        """Until tcpdump exits: its stderr to the log, the limits, SIGKILL when SIGTERM was not enough."""
        deadline = time.monotonic() + self.args['max_seconds']
        status, eof = None, False
        while status is None:
            if eof:  # tcpdump closed its stderr: it is exiting
                time.sleep(0.01)
            elif select.select([self.err], [], [], 0.1)[0]:
                chunk = os.read(self.err, 65536)
                eof = not chunk
                self.take(chunk)
            done, how = os.waitpid(self.pid, os.WNOHANG)
            if done:
                status = how
            elif time.monotonic() >= deadline:
                self.end('max_seconds')
            elif os.fstat(mfd).st_size >= self.args['max_bytes']:
                self.end('max_bytes')
            if status is None and self.termed and time.monotonic() - self.termed[0] > TCPDUMP_TERM_WAIT:
                os.kill(self.pid, signal.SIGKILL)
        while not eof:  # tcpdump's last words: its counts
            chunk = os.read(self.err, 65536)
            eof = not chunk
            self.take(chunk + (b'' if chunk or not self.buf else b'\n'))
        return status

    def finished(self, fd, mfd):
        """The 'finished' account of a tcpdump that exited 0 (stopped by a signal, or -c reached)."""
        text = '\n'.join(self.lines)
        captured = re.findall(r'^(\d+) packets? captured', text, re.M)
        drops = re.findall(r'^(\d+) packets? dropped by kernel', text, re.M)
        if self.reason and self.reason[0] == 'max_bytes':  # cut back to the whole records within max_bytes
            os.ftruncate(fd, walk(mfd, self.args['max_bytes'])[1])
            captured = None
        if captured:
            packets, size = int(captured[-1]), os.fstat(mfd).st_size
        else:
            packets, size = walk(mfd, os.fstat(mfd).st_size)
        why = self.reason[0] if self.reason else ('max_packets' if packets >= self.count else 'stopped')
        log('finished (%s): %d packets, %d bytes' % (why, packets, size))
        return {'reason': why, 'packets': packets, 'bytes': size, 'loopback_outgoing_dropped': None,
                'kernel_drops': int(drops[-1]) if drops else None, 'at': time.time()}


def await_listening(program, tcpdump, mfd):
    """Until tcpdump listens (or fail with why it did not); the link type of its pcap."""
    while not tcpdump.ready:
        chunk = os.read(tcpdump.err, 65536)
        if not chunk:
            break
        tcpdump.take(chunk)
    if not tcpdump.ready:
        program.fail(*tcpdump.classify(os.waitpid(tcpdump.pid, 0)[1]))
    deadline = time.monotonic() + 2
    while os.fstat(mfd).st_size < PCAP_HEADER and time.monotonic() < deadline:  # written before "listening on"
        time.sleep(0.01)
    head = os.pread(mfd, PCAP_HEADER, 0)
    if len(head) < PCAP_HEADER:
        os.kill(tcpdump.pid, signal.SIGKILL)
        os.waitpid(tcpdump.pid, 0)
        program.fail('pcap', 'tcpdump wrote no pcap header to it (where AppArmor confines tcpdump, it may write only '
                             'files named *.pcap or *.cap)')
    return linktype_of(head)


def run_tcpdump(program):
    """The monitor of tcpdump: start it, say ready once it listens, record how it ended."""
    args = program.args
    monitor = os.getpid()
    mstart = ticks(monitor)
    program.say(monitor=monitor, monitor_starttime=mstart)
    program.check_iface()
    fd, st = program.open_output()
    try:
        mfd = program.open_pcap(os.O_RDONLY)[0]  # our own offset: tcpdump's is not moved
    except OSError as exc:
        program.fail('pcap', '%s: %s' % (type(exc).__name__, exc))
    tcpdump = Tcpdump(program)
    tcpdump.start(fd, monitor)
    start = ticks(tcpdump.pid)
    program.say(pid=tcpdump.pid, starttime=start, monitor=monitor, monitor_starttime=mstart)
    linktype = await_listening(program, tcpdump, mfd)
    program.record(tcpdump.pid, start, monitor, mstart, st, linktype=linktype)
    signal.signal(signal.SIGTERM, lambda *_: tcpdump.end('stopped'))
    signal.signal(signal.SIGINT, lambda *_: tcpdump.end('stopped'))
    program.say(ready=True, pid=tcpdump.pid, starttime=start, linktype=linktype)
    program.done_saying()
    log('capturing with tcpdump (pid %d) on %s (filter %r) to %s' % (tcpdump.pid, args['iface'], args['filter'], args['path']))
    status = tcpdump.watch(mfd)
    record = program.load()
    if isinstance(record, dict) and record.get('pid') == tcpdump.pid:
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            record['finished'] = tcpdump.finished(fd, mfd)
        else:
            record['died'] = ended(status)
        record['pcap_end'] = final(mfd)
        program.save(record)
        if record.get('died'):
            log('tcpdump (pid %d) died: %s' % (tcpdump.pid, record['died']))
    os._exit(0)


def main(argv=None):
    program = Program(sys.argv if argv is None else argv)
    program.detach()
    if program.args.get('backend') == 'tcpdump':
        run_tcpdump(program)
    else:
        run_scapy(program)


if __name__ == '__main__':
    main()
