# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The scapy backend of the capture: the sniffer process's code (see _capture.py).

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

# -- the sniffer process ------------------------------------------------------

# Run as [python, -c, CHILD_CODE, MARKER, json-args]. The first process forks
# and exits (the module waits for it only); its child, the monitor, forks the
# sniffer and waits for it: when the sniffer ends without writing its own
# account ("finished" in the state record), the monitor records the signal or
# exit code ("died"). The sniffer reports {"pid", "monitor"} and then
# {"ready"} or {"error", "detail"} as JSON lines on the inherited fd
# ready_fd, and captures until SIGTERM or a limit.
# The module creates the pcap and passes its identity (device, inode); the
# sniffer opens exactly that file (no symlink, no other file put there since)
# and records it, with its own pid, start time and network namespace.
# On loopback a packet socket sees each segment twice (the outgoing copy,
# sll_pkttype PACKET_OUTGOING, and the incoming one); libpcap - and so
# tcpdump - drops the outgoing copy there, and so does this loop. scapy's
# L2ListenSocket does not report the packet type, so the loop reads the
# socket itself with recvmsg (address, kernel timestamp, original length).
CHILD_CODE = r'''
import json, logging, os, select, signal, socket, stat, struct, sys, time
A = json.loads(sys.argv[2])
R = A.pop("ready_fd")
if os.fork():
    os._exit(0)
os.umask(0o077)
signal.signal(signal.SIGHUP, signal.SIG_IGN)


def say(**kw):
    os.write(R, (json.dumps(kw) + "\n").encode())


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


monitor = os.getpid()
try:  # the monitor's own look at the pcap: how the sniffer left it, even after SIGKILL
    mfd = os.open(A["path"], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    if [os.fstat(mfd).st_dev, os.fstat(mfd).st_ino] != A["pcap_id"]:
        os.close(mfd)
        mfd = None
except OSError:
    mfd = None
sniffer = os.fork()
if sniffer:
    os.close(R)
    status = os.waitpid(sniffer, 0)[1]
    state = load()
    if isinstance(state, dict) and state.get("pid") == sniffer and not state.get("finished"):
        if mfd is not None:
            state["pcap_end"] = final(mfd)
        if os.WIFSIGNALED(status):
            try:
                name = signal.Signals(os.WTERMSIG(status)).name
            except ValueError:
                name = "signal %d" % os.WTERMSIG(status)
            state["died"] = {"signal": name, "at": time.time()}
        else:
            state["died"] = {"exit_code": os.WEXITSTATUS(status), "at": time.time()}
        save(state)
        print("the sniffer (pid %d) died: %s" % (sniffer, state["died"]), flush=True)
    os._exit(0)
if mfd is not None:
    os.close(mfd)


def fail(kind, exc):
    say(error=kind, detail="%s: %s" % (type(exc).__name__, exc))
    sys.exit(2)


pid = os.getpid()
starttime = ticks(pid)
say(pid=pid, starttime=starttime, monitor=monitor, monitor_starttime=ticks(monitor))
try:
    import scapy.arch  # noqa: sets conf.L2listen
    from scapy.config import conf
    from scapy.data import ARPHRD_TO_DLT
    from scapy.utils import PcapWriter
except ImportError as exc:
    fail("scapy", exc)
try:
    socket.if_nametoindex(A["iface"])
except OSError as exc:
    fail("iface", exc)
if A["filter"]:
    try:
        from scapy.arch.common import compile_filter
        compile_filter(A["filter"], iface=A["iface"])
    except ImportError as exc:  # no libpcap: scapy's sniff() would silently skip the filter
        fail("libpcap", exc)
    except Exception as exc:
        fail("filter", exc)
try:  # the file the module created, and nothing else: no symlink followed, no FIFO waited for
    fd = os.open(A["path"], os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or [st.st_dev, st.st_ino] != A["pcap_id"]:
        raise OSError("it is no longer the file the module created (replaced since)")
    os.set_blocking(fd, True)
    os.fchmod(fd, 0o600)
except OSError as exc:
    fail("pcap", exc)
try:
    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)  # not "Unable to guess type": we parse nothing
    listener = conf.L2listen(iface=A["iface"], filter=A["filter"] or None)  # filter attached before bind
    sock = listener.ins
    try:  # room for bursts of 64 KiB loopback segments
        sock.setsockopt(socket.SOL_SOCKET, 33, 1 << 23)  # SO_RCVBUFFORCE
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 23)
    sock.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS
    sock.setsockopt(263, 8, 1)  # SOL_PACKET, PACKET_AUXDATA: original length, VLAN tag
    hatype = sock.getsockname()[3]
    linktype = {12: 101}.get(ARPHRD_TO_DLT.get(hatype, 1), ARPHRD_TO_DLT.get(hatype, 1))
    out = PcapWriter(os.fdopen(fd, "wb", 0), linktype=linktype, sync=True, snaplen=A["snaplen"])
    out.write_header(None)
except Exception as exc:
    fail("socket", exc)
state = dict(A, marker=sys.argv[1], pid=pid, starttime=starttime, monitor={"pid": monitor, "starttime": ticks(monitor)},
             netns_inode=os.stat("/proc/self/ns/net").st_ino, pcap={"dev": st.st_dev, "ino": st.st_ino},
             started_at=time.time(), linktype=linktype, hatype=hatype)
save(state)
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append("stopped"))
signal.signal(signal.SIGINT, lambda *_: stop.append("stopped"))
say(ready=True, pid=pid, starttime=starttime, linktype=linktype)
os.close(R)
print("capturing on %s (filter %r) to %s, pid %d" % (A["iface"], A["filter"], A["path"], pid), flush=True)
TS = struct.Struct("ll")
AUX = struct.Struct("IIIHHHH")
packets, size, outgoing, reason = 0, 24, 0, None
deadline = time.monotonic() + A["max_seconds"]


def one():
    global packets, size, outgoing, reason
    try:
        data, anc, flags, addr = sock.recvmsg(A["snaplen"], 512, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    if addr[3] == 772 and addr[2] == 4:  # ARPHRD_LOOPBACK, PACKET_OUTGOING: the copy tcpdump drops
        outgoing += 1
        return True
    sec, usec, wire = None, 0, len(data)
    for level, kind, value in anc:
        if level == socket.SOL_SOCKET and kind == 35 and len(value) >= TS.size:
            sec, nsec = TS.unpack(value[:TS.size])
            usec = nsec // 1000
        elif level == 263 and kind == 8 and len(value) >= AUX.size:
            status, wire, _, _, _, tci, tpid = AUX.unpack(value[:AUX.size])
            if tci or status & 0x10:  # TP_STATUS_VLAN_VALID: put the tag back, as libpcap does
                tag = struct.pack("!HH", tpid if status & 0x40 else 0x8100, tci)
                data, wire = data[:12] + tag + data[12:], wire + 4
    if sec is None:
        now = time.time()
        sec, usec = int(now), int((now - int(now)) * 1e6)
    if packets >= A["max_packets"]:
        reason = "max_packets"
    elif size + 16 + len(data) > A["max_bytes"]:
        reason = "max_bytes"
    else:
        out.write_packet(data, sec=sec, usec=usec, caplen=len(data), wirelen=wire)
        packets, size = packets + 1, size + 16 + len(data)
    return reason is None


while reason is None:
    if stop:
        while one():  # what the kernel already queued belongs to the capture
            pass
        reason = reason or stop[0]
        break
    left = deadline - time.monotonic()
    if left <= 0:
        reason = "max_seconds"
        break
    if select.select([sock], [], [], min(left, 0.2))[0]:
        while reason is None and one():
            pass
    if packets >= A["max_packets"]:
        reason = "max_packets"
try:
    received, drops = struct.unpack("II", sock.getsockopt(263, 6, 8))  # PACKET_STATISTICS
except OSError:
    drops = None
state["pcap_end"] = final(fd)
out.close()
state["finished"] = {"reason": reason, "packets": packets, "bytes": size, "loopback_outgoing_dropped": outgoing,
                     "kernel_drops": drops, "at": time.time()}
save(state)
print("finished (%s): %d packets, %d bytes" % (reason, packets, size), flush=True)
'''
