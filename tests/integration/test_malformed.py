"""Hostile and broken clients: over-long lines, NUL, binary junk, bad line
ends, error limits, command order, bad addresses, abandoned transactions,
and no file-descriptor leak after hundreds of aborted connections."""
import random
import socket
import struct
import time

import pytest

from harness import SLOW, make_message, queued_id, wait_until

ALICE = "alice@local.example"


@pytest.fixture(scope="module")
def srv(module_factory):
    return module_factory.new(options={"smtp.max_errors": "5", "smtp.timeout.command": "3s",
                                       "smtp.timeout.data": "3s"},
                              populate=True)


def healthy(s):
    assert s.running(), s.log_tail()
    assert s.http_get("/health")[0] == 200
    with s.smtp() as c:
        c.ehlo()
        c.expect("QUIT", 221)


def stored_count(s):
    return s.query("SELECT COUNT(*) FROM messages")[0][0]


def test_overlong_command_line(srv):
    with srv.smtp() as c:
        c.ehlo()
        c.send(b"NOOP " + b"x" * 5000 + b"\r\n")
        r = c.reply()
        assert r.code == 500 and r.enhanced == "5.5.2", r
        # resynchronised at the next CRLF: the session works
        c.expect("NOOP", 250)
        c.send(b"MAIL FROM:<" + b"a" * 3000 + b"@remote.example>\r\n")
        r = c.reply()
        assert r.code == 500 and r.enhanced == "5.5.2", r
        qid = queued_id(c.send_message("ok@remote.example", [ALICE], make_message(to=ALICE), ehlo=False))
        assert qid
        c.expect("QUIT", 221)


def test_overlong_line_arrives_in_pieces(srv):
    with srv.smtp() as c:
        c.ehlo()
        for _ in range(10):
            c.send(b"y" * 1000)
            time.sleep(0.01)
        c.send(b"\r\n")
        r = c.reply()
        assert r.code == 500 and r.enhanced == "5.5.2", r
        c.expect("NOOP", 250)
        c.expect("QUIT", 221)


def test_nul_in_command(srv):
    with srv.smtp() as c:
        c.ehlo()
        c.send(b"NOOP\x00\r\n")
        r = c.reply()
        assert r.code in (500, 501), r
        c.send(b"MAIL FROM:<a\x00b@remote.example>\r\n")
        r = c.reply()
        assert r.code in (500, 501, 553), r
        c.expect("MAIL FROM:<ok@remote.example>", 250)
        c.expect("QUIT", 221)


def test_nul_in_message(srv):
    before = stored_count(srv)
    with srv.smtp() as c:
        c.ehlo()
        c.expect("MAIL FROM:<nul@remote.example>", 250)
        c.expect("RCPT TO:<%s>" % ALICE, 250)
        c.expect("DATA", 354)
        c.send(b"Subject: nul\r\n\r\nbefore\x00after\r\n.\r\n")
        r = c.reply()
        assert r.code == 554 and r.enhanced == "5.6.0", r
        c.expect("NOOP", 250)
        c.expect("QUIT", 221)
    assert stored_count(srv) == before


def test_binary_junk(srv):
    rnd = random.Random(1234)
    for i in range(5):
        junk = bytes(rnd.getrandbits(8) for _ in range(8192))
        with srv.smtp() as c:
            try:
                c.send(junk + b"\r\n")
                # the server answers with errors and hangs up at max_errors
                for _ in range(50):
                    if c.reply_or_eof() is None:
                        break
            except (ConnectionResetError, BrokenPipeError):
                pass
    healthy(srv)


def test_bare_lf_and_bare_cr_command_endings(srv):
    with srv.smtp() as c:
        # a bare LF ends a command line (as every MTA accepts)...
        c.send(b"EHLO lf.example\n")
        r = c.reply()
        assert r.code == 250, r
        c.send(b"NOOP\n")
        assert c.reply().code == 250
        # ...a bare CR does not: "NOOP\rNOOP" is one (bad) line
        c.send(b"NOOP\rNOOP\r\n")
        r = c.reply()
        assert r.code in (500, 501), r
        c.expect("RSET", 250)
        c.expect("QUIT", 221)


def test_unknown_commands_until_max_errors(srv):
    with srv.smtp() as c:
        c.ehlo()
        codes = []
        for i in range(10):
            try:
                c.send(b"XYZZY %d\r\n" % i)
            except (BrokenPipeError, ConnectionResetError):
                break
            r = c.reply_or_eof()
            if r is None:
                break
            codes.append(r.code)
            if r.code == 421:
                break
        # max_errors = 5: five errors are answered, then 421 and hang-up
        assert codes in ([500] * 4 + [421], [500] * 5 + [421]), codes
        assert c.at_eof()


def test_command_order(srv):
    # (max_errors is 5 on this server: at most 3 errors per session here)
    with srv.smtp() as c:
        r = c.cmd("MAIL FROM:<a@remote.example>")
        assert r.code == 503, r           # before EHLO
        c.ehlo()
        r = c.cmd("RCPT TO:<%s>" % ALICE)
        assert r.code == 503, r           # before MAIL
        r = c.cmd("DATA")
        assert r.code == 503, r           # before MAIL
        c.expect("QUIT", 221)
    with srv.smtp() as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@remote.example>", 250)
        r = c.cmd("MAIL FROM:<b@remote.example>")
        assert r.code == 503, r           # nested MAIL
        r = c.cmd("DATA")
        assert r.code == 503, r           # no recipient yet
        c.expect("QUIT", 221)
    with srv.smtp() as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@remote.example>", 250)
        r = c.cmd("RCPT TO:<nobody@local.example>")
        assert r.code == 550
        r = c.cmd("DATA")
        assert r.code in (503, 554), r    # every recipient was refused
        c.expect("RSET", 250)
        c.expect("QUIT", 221)


BAD_ADDRESSES = [
    ("MAIL FROM:<unterminated@remote.example", 501),
    ("MAIL FROM:", 501),
    ("MAIL FROM:<a@b> BOGUS=1", 555),
    ("MAIL FROM:<a@b> SIZE=abc", 501),
    ("MAIL FROM:<a b@remote.example>", 501),
    ("MAIL FROM:<a@@remote.example>", 501),
    ("MAIL FROM:<a@remote..example>", 501),
    ("MAIL TO:<a@remote.example>", 501),
]


@pytest.mark.parametrize("line,code", BAD_ADDRESSES)
def test_bad_mail_from(srv, line, code):
    with srv.smtp() as c:
        c.ehlo()
        r = c.cmd(line)
        assert r.code == code, (line, r)
        c.expect("MAIL FROM:<>", 250)         # the null sender is valid
        c.expect("QUIT", 221)


@pytest.mark.parametrize("line", [
    "RCPT TO:<>",
    "RCPT TO:",
    "RCPT TO:<alice@local.example",
    "RCPT TO:alice@local.example>",
    "RCPT TO:<@local.example>",
    "RCPT FROM:<alice@local.example>",
    "RCPT TO:<%s@local.example>" % ("a" * 300),
])
def test_bad_rcpt_to(srv, line):
    with srv.smtp() as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@remote.example>", 250)
        r = c.cmd(line)
        assert r.code in (501, 550, 553), (line, r)
        c.expect("RCPT TO:<%s>" % ALICE, 250)
        c.expect("QUIT", 221)


def test_unterminated_data_then_close(srv):
    before = stored_count(srv)
    blobs = set(srv.blob_files())
    for size in (100, 20000, 300000):
        with srv.smtp() as c:
            c.ehlo()
            c.expect("MAIL FROM:<cut@remote.example>", 250)
            c.expect("RCPT TO:<%s>" % ALICE, 250)
            c.expect("DATA", 354)
            c.send(make_message(to=ALICE, size=size))   # no final "."
    wait_until(lambda: srv.tmp_files() == [], 5 * SLOW, what="blobs/tmp to be empty")
    assert stored_count(srv) == before
    assert set(srv.blob_files()) == blobs
    healthy(srv)


def test_data_timeout(srv):
    before = stored_count(srv)
    with srv.smtp() as c:
        c.ehlo()
        c.expect("MAIL FROM:<slow@remote.example>", 250)
        c.expect("RCPT TO:<%s>" % ALICE, 250)
        c.expect("DATA", 354)
        c.send(b"Subject: slow\r\n\r\npartial")
        c.sock.settimeout(15 * SLOW)
        r = c.reply_or_eof()
        assert r is not None and r.code == 421 and r.enhanced == "4.4.2", r
        assert c.at_eof()
    wait_until(lambda: srv.tmp_files() == [], 5 * SLOW, what="blobs/tmp to be empty")
    assert stored_count(srv) == before


def test_command_timeout(srv):
    with srv.smtp() as c:
        c.sock.settimeout(15 * SLOW)
        r = c.reply_or_eof()
        assert r is not None and r.code == 421 and r.enhanced == "4.4.2", r
        assert c.at_eof()


def abort_connection(port, kind, rnd):
    s = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
    try:
        if kind == 0:
            pass                                    # close before the banner
        elif kind == 1:
            s.recv(512)
            s.sendall(b"EHLO x\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<%s>\r\nDATA\r\n" % ALICE.encode())
            s.sendall(b"Subject: x\r\n\r\n" + b"y" * rnd.randint(0, 70000))
        elif kind == 2:
            s.recv(512)
            s.sendall(b"EHLO x\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<%s>\r\nBDAT 100000\r\n" % ALICE.encode())
            s.sendall(b"z" * rnd.randint(0, 50000))
        elif kind == 3:
            s.sendall(b"EHLO x\r\nSTARTTLS\r\n\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        else:
            s.sendall(b"HELO " + b"h" * rnd.randint(0, 5000))   # no line end
        if rnd.random() < 0.5:
            # RST instead of FIN
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    finally:
        s.close()


def test_no_fd_leak_after_aborted_connections(srv):
    rnd = random.Random(42)
    # warm up every code path once so lazily opened descriptors are counted
    for i in range(25):
        abort_connection(srv.smtp_port, i % 5, rnd)
    for _ in range(4):
        srv.deliver([ALICE])
    wait_until(lambda: srv.tmp_files() == [], 10 * SLOW, what="blobs/tmp to be empty")
    time.sleep(0.5)
    baseline = srv.open_fds()
    for i in range(200):
        abort_connection(srv.smtp_port, i % 5, rnd)
    wait_until(lambda: srv.open_fds() <= baseline, 15 * SLOW,
               what="fd count back to baseline %d (now %d)" % (baseline, srv.open_fds()))
    wait_until(lambda: srv.tmp_files() == [], 10 * SLOW, what="blobs/tmp to be empty")
    m = srv.metrics()
    wait_until(lambda: srv.metrics()["strata_smtp_sessions_active"] == 0, 10 * SLOW,
               what="no active sessions")
    assert m["strata_smtp_connections_total"] >= 225
    healthy(srv)
