# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The tcpdump backend of the capture (see _capture.py): for targets whose Python has no scapy.

tcpdump writes the pcap itself. Its command line cannot carry the module's
marker, so it runs as the child of a small monitor process (MONITOR_CODE,
run with ``python -c`` on the target's own Python, standard library only)
whose command line carries the marker and the capture's arguments, the
tcpdump argv included. A process is this module's tcpdump only when its
parent is such a monitor for the same pcap, its command line is exactly the
argv the monitor was given, and its start time is the recorded one
(tcpdump_ownership). tcpdump is tied to the monitor's life (PR_SET_PDEATHSIG,
which survives the exec because ``-Z root`` keeps its credentials), so it
never outlives the monitor that proves it ours.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import json

from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cmdline as proc_cmdline

# the kernel buffer of the capture in KiB (tcpdump -B): tcpdump's default of 2 MiB drops bursts of 64 KiB loopback
# segments (measured: 130 of the 208 frames of a 2 MB send), 16 MiB drops none of them; tcpdump's resident memory is
# then about 38 MB
BUFFER_KIB = 16384
# tcpdump -c takes an int
COUNT_MAX = 2 ** 31 - 1


def tcpdump_argv(tcpdump, settings):
    """tcpdump's argv: the pcap on its stdout (the file the monitor opened and checked), packet-buffered, root kept."""
    argv = [tcpdump, '-i', settings['iface'], '-n', '-U', '--immediate-mode', '-Z', 'root', '-B', str(BUFFER_KIB),
            '-s', str(settings['snaplen']), '-c', str(min(settings['max_packets'], COUNT_MAX)), '-w', '-']
    if settings.get('filter'):
        argv += ['--', settings['filter']]
    return argv


def parent_of(pid):
    """The parent pid of a process (from /proc/PID/stat), or None."""
    try:
        with open('/proc/%d/stat' % pid) as handle:
            return int(handle.read().rsplit(')', 1)[1].split()[1])
    except (IOError, OSError, IndexError, ValueError):
        return None


def marked_args(argv, marker):
    """The JSON arguments after marker in a command line, or None."""
    if marker not in argv or argv.index(marker) + 1 >= len(argv):
        return None
    try:
        args = json.loads(argv[argv.index(marker) + 1])
    except ValueError:
        return None
    return args if isinstance(args, dict) else None


def tcpdump_ownership(pid, argv, path, marker):
    """(True, '') when pid is the tcpdump of the capture of path, (False, why) when it is another capture's tcpdump,
    None when its parent is no tcpdump monitor of this module."""
    parent = parent_of(pid)
    args = marked_args(proc_cmdline(parent), marker) if parent and parent > 1 else None
    if args is None or args.get('backend') != 'tcpdump':
        return None
    if args.get('path') != path:
        return False, 'it is the tcpdump of the capture to %s' % args.get('path')
    if argv != args.get('tcpdump_argv'):
        return False, 'its command line is not the tcpdump its monitor (pid %d) started: %s' % (parent, ' '.join(argv)[:200])
    return True, ''


# Run as [python, -c, MONITOR_CODE, MARKER, json-args]. The first process forks
# and exits (the module waits for it only); its child is the monitor. It checks
# the interface, opens exactly the pcap the module created (no symlink, no file
# put there since), and runs tcpdump with that file as its stdout and its stderr
# on a pipe. tcpdump prints "listening on IFACE, link-type ..." only after the
# device is active and the filter attached: then the monitor writes the state
# record (tcpdump's pid, start time, network namespace, the pcap's identity)
# and says {"ready"} on ready_fd; an exit before that is classified from
# tcpdump's stderr into {"error", "detail"}. Afterwards it keeps tcpdump's
# stderr in the log, ends the capture at max_seconds and at max_bytes (SIGTERM;
# the pcap is then cut back to the whole records within max_bytes), forwards a
# SIGTERM/SIGINT of its own to tcpdump, and records how tcpdump ended:
# "finished" (an exit 0: stopped by a signal, or -c reached) or "died".
MONITOR_CODE = r'''
import json, os, re, select, signal, socket, stat, struct, subprocess, sys, time
A = json.loads(sys.argv[2])
R = [A.pop("ready_fd")]
if os.fork():
    os._exit(0)
os.umask(0o077)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
try:
    import ctypes
    LIBC = ctypes.CDLL(None, use_errno=True)
except Exception:  # no ctypes: tcpdump is not tied to the monitor's life
    LIBC = None
ARGV = A["tcpdump_argv"]
PROG = os.path.basename(ARGV[0])
COUNT = int(ARGV[ARGV.index("-c") + 1])


def say(**kw):
    if R:
        try:
            os.write(R[0], (json.dumps(kw) + "\n").encode())
        except OSError:  # the module stopped waiting
            pass


def save(state):
    tmp = A["state"] + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=2, sort_keys=True)
    os.rename(tmp, A["state"])


def load():
    try:
        fd = os.open(A["state"], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd) as f:
        try:
            return json.load(f)
        except ValueError:
            return None


def ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def final(fd):
    st = os.fstat(fd)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def walk(fd, limit):
    """(packets, bytes) of the whole records of the pcap at fd that fit in limit bytes."""
    total = os.fstat(fd).st_size
    head = os.pread(fd, 24, 0)
    if len(head) < 24:
        return 0, 0
    rec = struct.Struct(("<" if head[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">") + "IIII")
    packets, size = 0, 24
    while True:
        header = os.pread(fd, 16, size)
        if len(header) < 16:
            break
        end = size + 16 + rec.unpack(header)[2]
        if end > total or end > limit:
            break
        packets, size = packets + 1, end
    return packets, size


def fail(kind, detail):
    say(error=kind, detail=detail)
    print("not started (%s): %s" % (kind, detail), flush=True)
    sys.exit(2)


def message(lines):
    """tcpdump's complaint, without its program name and its warnings."""
    out = []
    for line in lines:
        line = line.strip()
        if line.startswith(PROG + ": "):
            line = line[len(PROG) + 2:]
        if line and "WARNING" not in line and not line.startswith("listening on "):
            out.append(line)
    return " ".join(out)


def classify(lines, status):
    """(kind, detail) of a tcpdump that exited before it was listening."""
    text = message(lines)
    if os.WIFSIGNALED(status):
        return "tcpdump", (text + " " if text else "") + "(killed by signal %d)" % os.WTERMSIG(status)
    if os.WEXITSTATUS(status) == 127 and text.startswith("cannot run "):
        return "exec", text
    if text.startswith(A["iface"] + ": "):  # libpcap names the device when it cannot open or activate it
        return ("iface" if "No such device" in text else "socket"), text
    if A["filter"]:  # compile the filter alone: does it fail by itself?
        check = subprocess.run([ARGV[0], "-d", "-i", A["iface"], "-s", str(A["snaplen"]), "--", A["filter"]],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        why = message(check.stderr.decode("utf-8", "replace").splitlines())
        if check.returncode != 0 and why and not why.startswith(A["iface"] + ": "):
            return "filter", why
    return "tcpdump", text or "it exited with code %d and said nothing" % os.WEXITSTATUS(status)


monitor = os.getpid()
mstart = ticks(monitor)
say(monitor=monitor, monitor_starttime=mstart)
try:
    socket.if_nametoindex(A["iface"])
except OSError as exc:
    fail("iface", "%s: %s" % (type(exc).__name__, exc))
try:  # the file the module created, and nothing else: no symlink followed, no FIFO waited for
    fd = os.open(A["path"], os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or [st.st_dev, st.st_ino] != A["pcap_id"]:
        raise OSError("it is no longer the file the module created (replaced since)")
    os.set_blocking(fd, True)
    os.fchmod(fd, 0o600)
    mfd = os.open(A["path"], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # our own offset: tcpdump's is not moved
    if [os.fstat(mfd).st_dev, os.fstat(mfd).st_ino] != A["pcap_id"]:
        raise OSError("it is no longer the file the module created (replaced since)")
except OSError as exc:
    fail("pcap", "%s: %s" % (type(exc).__name__, exc))
err_r, err_w = os.pipe()
child = os.fork()
if child == 0:
    try:
        if LIBC is not None:
            LIBC.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG: tcpdump ends, flushing, with the monitor
        if os.getppid() != monitor:
            os._exit(1)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        os.dup2(fd, 1)
        os.dup2(err_w, 2)
        os.close(R[0])
        os.execv(ARGV[0], ARGV)
    except BaseException as exc:
        try:
            os.write(2, ("cannot run %s: %s: %s\n" % (ARGV[0], type(exc).__name__, exc)).encode())
        finally:
            os._exit(127)
os.close(err_w)
start = ticks(child)
say(pid=child, starttime=start, monitor=monitor, monitor_starttime=mstart)
lines, buf, ready = [], b"", False


def take(chunk):
    global buf, ready
    buf += chunk
    while b"\n" in buf:
        raw, buf = buf.split(b"\n", 1)
        line = raw.decode("utf-8", "replace")
        print(line, flush=True)
        lines.append(line)
        if ("listening on %s, link-type " % A["iface"]) in line:
            ready = True


while not ready:
    chunk = os.read(err_r, 65536)
    if not chunk:
        break
    take(chunk)
if not ready:
    fail(*classify(lines, os.waitpid(child, 0)[1]))
deadline = time.monotonic() + 2
while os.fstat(mfd).st_size < 24 and time.monotonic() < deadline:  # written before "listening on"; never wait long
    time.sleep(0.01)
head = os.pread(mfd, 24, 0)
if len(head) < 24:
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    fail("pcap", "tcpdump wrote no pcap header to it (where AppArmor confines tcpdump, it may write only files named "
                 "*.pcap or *.cap)")
linktype = struct.unpack(("<" if head[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">") + "I", head[20:24])[0]
state = dict(A, marker=sys.argv[1], pid=child, starttime=start, monitor={"pid": monitor, "starttime": mstart},
             netns_inode=os.stat("/proc/%d/ns/net" % child).st_ino, pcap={"dev": st.st_dev, "ino": st.st_ino},
             started_at=time.time(), linktype=linktype)
save(state)
reason, termed = [], []


def end(why):
    """SIGTERM to tcpdump (it flushes the pcap and prints its counts), once; why the capture ends."""
    if not reason:
        reason.append(why)
    if not termed:
        termed.append(time.monotonic())
        try:
            os.kill(child, signal.SIGTERM)
        except OSError:
            pass


def stop(*_):
    end("stopped")


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
say(ready=True, pid=child, starttime=start, linktype=linktype)
os.close(R.pop())
print("capturing with tcpdump (pid %d) on %s (filter %r) to %s" % (child, A["iface"], A["filter"], A["path"]), flush=True)
deadline = time.monotonic() + A["max_seconds"]
status, eof = None, False
while status is None:
    if eof:  # tcpdump closed its stderr: it is exiting
        time.sleep(0.01)
    elif select.select([err_r], [], [], 0.1)[0]:
        chunk = os.read(err_r, 65536)
        eof = not chunk
        take(chunk)
    done, how = os.waitpid(child, os.WNOHANG)
    if done:
        status = how
    elif time.monotonic() >= deadline:
        end("max_seconds")
    elif os.fstat(mfd).st_size >= A["max_bytes"]:
        end("max_bytes")
    if status is None and termed and time.monotonic() - termed[0] > 5:
        os.kill(child, signal.SIGKILL)
while not eof:  # tcpdump's last words: its counts
    chunk = os.read(err_r, 65536)
    eof = not chunk
    take(chunk + (b"" if chunk or not buf else b"\n"))
text = "\n".join(lines)
record = load()
if isinstance(record, dict) and record.get("pid") == child:
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        captured = re.findall(r"^(\d+) packets? captured", text, re.M)
        drops = re.findall(r"^(\d+) packets? dropped by kernel", text, re.M)
        if reason and reason[0] == "max_bytes":  # cut back to the whole records within max_bytes, as scapy writes
            os.ftruncate(fd, walk(mfd, A["max_bytes"])[1])
            captured = None
        if captured:
            packets, size = int(captured[-1]), os.fstat(mfd).st_size
        else:
            packets, size = walk(mfd, os.fstat(mfd).st_size)
        why = reason[0] if reason else ("max_packets" if packets >= COUNT else "stopped")
        record["finished"] = {"reason": why, "packets": packets, "bytes": size, "loopback_outgoing_dropped": None,
                              "kernel_drops": int(drops[-1]) if drops else None, "at": time.time()}
        print("finished (%s): %d packets, %d bytes" % (why, packets, size), flush=True)
    elif os.WIFSIGNALED(status):
        try:
            name = signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            name = "signal %d" % os.WTERMSIG(status)
        record["died"] = {"signal": name, "at": time.time()}
    else:
        record["died"] = {"exit_code": os.WEXITSTATUS(status), "at": time.time()}
    record["pcap_end"] = final(mfd)
    save(record)
    if record.get("died"):
        print("tcpdump (pid %d) died: %s" % (child, record["died"]), flush=True)
os._exit(0)
'''
