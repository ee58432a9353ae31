"""Background processes of the audit scenario (started by prepare.yml).

  holder.py sockets PIDFILE IDLE  a keepalive connection on loopback whose client
                                  sets TCP_KEEPIDLE=IDLE (a per-socket override)
  holder.py netns PIDFILE NAME    a process alone in a new, unnamed network
                                  namespace, named NAME (its comm)

Each daemonizes, writes its pid to PIDFILE and returns once ready;
destroy.yml kills the pids (the lab's absent also kills what runs in lab
namespaces).
"""
import ctypes
import os
import socket
import sys
import time

CLONE_NEWNET = 0x40000000


def daemonize(pidfile):
    read_end, write_end = os.pipe()
    if os.fork():
        os.close(write_end)
        ok = os.read(read_end, 2)
        sys.exit(0 if ok == b'ok' else 1)
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    with open(pidfile, 'w') as handle:
        handle.write('%d\n' % os.getpid())
    return write_end


def main():
    mode, pidfile, arg = sys.argv[1:4]
    ready = daemonize(pidfile)
    keep = []
    if mode == 'sockets':
        server = socket.socket()
        server.bind(('127.0.0.1', 0))
        server.listen(1)
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, int(arg))
        client.connect(server.getsockname())
        accepted = server.accept()[0]
        keep = [server, client, accepted]
    else:
        libc = ctypes.CDLL('libc.so.6', use_errno=True)
        if libc.unshare(CLONE_NEWNET) != 0:
            os.write(ready, b'no')
            os._exit(1)
        with open('/proc/self/comm', 'w') as handle:
            handle.write(arg[:15])
    os.write(ready, b'ok')
    os.close(ready)
    while keep is not None:
        time.sleep(3600)


if __name__ == '__main__':
    main()
