"""Loopback stand-ins for an unreachable network, shared by the download tests.

They count the connections they get, so a test can assert how often a script tried (once, never in a
retry loop) instead of how long it took.
"""
import socket
import threading


class Listener:
    """A loopback TCP port that counts connections and closes each at once (a host that hangs up) or,
    with `answer_never`, holds it open without a byte (a host that never answers). `url` is its http URL."""

    def __init__(self, answer_never=False):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.answer_never, self.connections, self.held = answer_never, 0, []
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed by __exit__
                return
            self.connections += 1
            if self.answer_never:
                self.held.append(conn)
            else:
                conn.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.sock.close()
        for conn in self.held:
            conn.close()
