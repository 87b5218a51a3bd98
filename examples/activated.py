#!/usr/bin/env python3
"""A socket-activated HTTP server for `portshare run --socket-activation`.

It binds nothing: it takes the listening socket passed as descriptor 3 (systemd's
LISTEN_FDS protocol, which `portshare run` speaks) and answers every GET with a line
naming the path it received.

    portshare run --url http://+:8080/act/ --socket-activation -- python3 examples/activated.py
"""

import http.server
import os
import socket
import socketserver
import sys

LISTEN_FDS_START = 3


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"activated: {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self):
        # A Unix socket's peer has no address to show.
        return str(self.client_address[0]) if self.client_address else "local"


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def __init__(self, sock):
        # No bind: the socket listens already.
        super().__init__(None, Handler, bind_and_activate=False)
        self.socket = sock
        self.server_address = sock.getsockname()

    def server_bind(self):
        pass

    def get_request(self):
        conn, addr = self.socket.accept()
        return conn, addr if isinstance(addr, tuple) else ("local", 0)


def main():
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        sys.exit("activated.py: expected one socket from LISTEN_FDS (run me with portshare run --socket-activation)")
    sock = socket.socket(fileno=LISTEN_FDS_START)
    print(f"activated.py: serving on {sock.getsockname()!r}", flush=True)
    Server(sock).serve_forever()


if __name__ == "__main__":
    main()
