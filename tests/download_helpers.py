"""Shared by the download tests: run a data script as a user would, check its one-line error, and
loopback stand-ins for the network (hosts that hang up or never answer, a small HTTP file server).

The stand-ins count the connections or requests they get, so a test asserts how often a script tried
(once, never in a retry loop) instead of how long it took.
"""
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(script, args, env):
    """Run `python <script> <args>` from the repo root with environment `env`; the CompletedProcess.
    The timeout only turns a hang into a failure: no test asserts elapsed time."""
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def assert_one_clear_error(r, *phrases):
    """Exit status 1, no traceback, and stderr is one line `error: ...` containing every phrase."""
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    err = r.stderr.strip()
    assert err.startswith("error: ") and err.count("error: ") == 1 and "\n" not in err, err
    for phrase in phrases:
        assert phrase in err, err


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


class FileServer:
    """An HTTP server on loopback serving `files` ({url path: bytes}) to HEAD and GET, 404 otherwise, and
    recording every request as (method, path). `headers(body)` adds headers to a 200, `missing_headers`
    to a 404; `short_by` > 0 announces that many more bytes than it sends, then closes (a cut connection).
    `url` is its base URL."""

    def __init__(self, files, headers=lambda body: {}, missing_headers=None, short_by=0):
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, with_body):
                server.requests.append((self.command, self.path))
                body = files.get(self.path)
                if body is None:
                    self._head(404, {**(missing_headers or {}), "Content-Length": "0"})
                    return
                self._head(200, {**headers(body), "Content-Length": str(len(body) + short_by)})
                if with_body:
                    self.wfile.write(body)
                    self.close_connection = bool(short_by)

            def _head(self, status, fields):
                self.send_response(status)
                for key, value in fields.items():
                    self.send_header(key, value)
                self.end_headers()

            def do_HEAD(self):
                self._reply(False)

            def do_GET(self):
                self._reply(True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
