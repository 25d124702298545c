"""A TCP proxy on 127.0.0.1 that the fault suite controls: it forwards every connection to a
target (the PostgreSQL primary, Redis, ...) until told to black-hole, and then it forwards
nothing, in either direction, while every socket stays open, as a network that drops packets
would look to both ends (no FIN, no RST, nothing to read). New connections are accepted but
not connected through while black-holed. restore() lets the bytes flow again, those held back
included (as TCP would retransmit them once the network heals).

    proxy = FaultProxy(target_port).start()
    ... DATABASE_URL=postgresql://...@127.0.0.1:{proxy.port}/...
    proxy.blackhole(); ...; proxy.restore()
    proxy.stop()

Only the standard library; one thread per direction of each connection (the suite opens a few
dozen at most).
"""

import select
import socket
import threading

from helpers import free_port

_POLL_S = 0.05
_CHUNK = 65536


class FaultProxy:
    def __init__(self, target_port, target_host="127.0.0.1", port=None):
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self._cond = threading.Condition()
        self._flowing = True
        self._moving = 0  # transfers under way (a read and its forwarding)
        self._stopped = False
        self._sockets = set()
        self._threads = []
        self._listener = None
        self.accepted = 0

    # -- control ------------------------------------------------------------------------------

    def start(self):
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(128)
        self._spawn(self._accept_loop)
        return self

    def blackhole(self):
        """Stops forwarding: returns once no byte is in transit through the proxy."""
        with self._cond:
            self._flowing = False
            while self._moving:
                self._cond.wait()

    def restore(self):
        with self._cond:
            self._flowing = True
            self._cond.notify_all()

    @property
    def blackholed(self):
        return not self._flowing

    def stop(self):
        """Closes the listener and every connection; joins the threads."""
        with self._cond:
            self._stopped = True
            self._flowing = True
            self._cond.notify_all()
            sockets = list(self._sockets)
        if self._listener:
            self._listener.close()
        for s in sockets:
            _close(s)
        for t in self._threads:
            t.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- internals ----------------------------------------------------------------------------

    def _spawn(self, fn, *args):
        t = threading.Thread(target=fn, args=args, daemon=True)
        with self._cond:
            self._threads.append(t)
        t.start()

    def _track(self, s):
        with self._cond:
            if self._stopped:
                _close(s)
                return False
            self._sockets.add(s)
            return True

    def _accept_loop(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed by stop()
            self.accepted += 1
            if self._track(client):
                self._spawn(self._connect_through, client)

    def _wait_flowing(self):
        """Blocks while black-holed; False once stopped."""
        with self._cond:
            while not self._flowing and not self._stopped:
                self._cond.wait()
            return not self._stopped

    def _connect_through(self, client):
        if not self._wait_flowing():
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _close(client)  # the target is down: the client sees its connection closed
            return
        upstream.settimeout(None)
        if not self._track(upstream):
            _close(client)
            return
        done = threading.Barrier(2, action=lambda: (_close(client), _close(upstream)))
        self._spawn(self._pump, client, upstream, done)
        self._spawn(self._pump, upstream, client, done)

    def _begin_transfer(self):
        """Waits until bytes may flow; True with the transfer counted, False once stopped."""
        with self._cond:
            while not self._flowing and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return False
            self._moving += 1
            return True

    def _end_transfer(self):
        with self._cond:
            self._moving -= 1
            self._cond.notify_all()

    def _pump(self, src, dst, done):
        try:
            while True:
                try:
                    readable, _, _ = select.select([src], [], [], _POLL_S)
                except (OSError, ValueError):
                    return
                if not readable:
                    if self._stopped:
                        return
                    continue
                if not self._begin_transfer():
                    return
                try:
                    # Re-checked under the count: blackhole() waits for this read and its
                    # forwarding, so nothing moves once it has returned.
                    try:
                        data = src.recv(_CHUNK)
                    except OSError:
                        data = b""
                    if not data:
                        try:
                            dst.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                        return
                    try:
                        dst.sendall(data)
                    except OSError:
                        return
                finally:
                    self._end_transfer()
        finally:
            try:
                done.wait(timeout=None if not self._stopped else 0)
            except threading.BrokenBarrierError:
                pass


def _close(s):
    try:
        s.close()
    except OSError:
        pass
