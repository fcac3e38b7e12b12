"""tests/integration/smtp_sink.py - an SMTP server for the tests of outbound
mail (test_relay.py, test_submission.py): it stands in for the remote hosts
that relay.transport or the test's DNS server route to.

Owns: class Sink, one listening socket on a 127.x address, a thread per
connection, every transaction recorded.  Bounded: 1,000 commands per
session, a 60 s socket timeout, close() stops it."""
import re
import socket
import ssl
import threading
import time


class Sink:
    """An SMTP server on (host, port) recording every transaction.

    plan: {recipient: [reply, ...]}: RCPT replies given in turn per
    recipient (the last one repeats; None = 250).  hold: when set, the
    final dot gets no reply until it is cleared (a delivery in progress)."""

    def __init__(self, host="127.0.0.1", port=0, tls_ctx=None):
        self.tls_ctx = tls_ctx      # an ssl.SSLContext: STARTTLS offered
        self.tls_sessions = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.host, self.port = self.sock.getsockname()
        self.messages = []          # (helo, mail line, rcpts, data)
        self.plan = {}
        self.seen = {}
        self.hold = threading.Event()
        self.holding = threading.Event()
        self.lock = threading.Lock()
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        try:
            self.session(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def rcpt_reply(self, rcpt):
        with self.lock:
            n = self.seen.get(rcpt, 0)
            self.seen[rcpt] = n + 1
            replies = self.plan.get(rcpt) or [None]
            r = replies[min(n, len(replies) - 1)]
        return r or "250 2.1.5 ok"

    def session(self, conn):
        conn.settimeout(60)
        f = conn.makefile("rb")
        conn.sendall(b"220 sink.test ESMTP\r\n")
        helo, mail, rcpts = None, None, []
        for _ in range(1000):
            line = f.readline(4096)
            if not line:
                return
            verb = line[:4].upper()
            if verb == b"EHLO":
                helo = line.strip().decode()
                tls = b"250-STARTTLS\r\n" if self.tls_ctx is not None and f.raw is not None and \
                    not isinstance(conn, ssl.SSLSocket) else b""
                conn.sendall(b"250-sink.test\r\n" + tls + b"250-8BITMIME\r\n250-SIZE 10000000\r\n250 SMTPUTF8\r\n")
            elif verb == b"STAR" and self.tls_ctx is not None and not isinstance(conn, ssl.SSLSocket):
                conn.sendall(b"220 2.0.0 ready\r\n")
                conn = self.tls_ctx.wrap_socket(conn, server_side=True)
                f = conn.makefile("rb")
                with self.lock:
                    self.tls_sessions += 1
            elif verb == b"HELO":
                helo = line.strip().decode()
                conn.sendall(b"250 sink.test\r\n")
            elif verb == b"MAIL":
                mail, rcpts = line.strip().decode(), []
                conn.sendall(b"250 2.1.0 ok\r\n")
            elif verb == b"RCPT":
                rcpt = re.search(rb"<([^>]*)>", line).group(1).decode()
                r = self.rcpt_reply(rcpt)
                if r.startswith("250"):
                    rcpts.append(rcpt)
                conn.sendall(r.encode() + b"\r\n")
            elif verb == b"DATA":
                conn.sendall(b"354 go ahead\r\n")
                data = b""
                while True:
                    l2 = f.readline(1 << 20)
                    if not l2:
                        return
                    if l2 == b".\r\n":
                        break
                    data += l2[1:] if l2.startswith(b".") else l2
                with self.lock:
                    self.messages.append((helo, mail, list(rcpts), data))
                if self.hold.is_set():
                    self.holding.set()
                    while self.hold.is_set() and not self.stop:
                        time.sleep(0.05)
                    return      # no reply: the client never learns the outcome
                conn.sendall(b"250 2.0.0 queued on the sink\r\n")
            elif verb == b"RSET":
                rcpts = []
                conn.sendall(b"250 ok\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                return
            else:
                conn.sendall(b"502 5.5.1 not here\r\n")

    def for_rcpt(self, rcpt):
        with self.lock:
            return [m for m in self.messages if rcpt in m[2]]

    def close(self):
        self.stop = True
        self.hold.clear()
        self.sock.close()
        self.thread.join(5)


# ---- a DNS responder (UDP, MX / A / AAAA) --------------------------------------
