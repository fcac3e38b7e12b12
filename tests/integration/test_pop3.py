"""POP3 against the real daemon: greeting and CAPA, USER/PASS and AUTH
PLAIN (initial response and continuation), STLS and implicit TLS (pop3s),
STAT/LIST/UIDL/TOP/RETR byte-exact against what SMTP delivered (with a
dot-stuffing round trip), DELE + QUIT (one transaction, blobs and quota
right), RSET, a dropped connection that deletes nothing, the maildrop
lock, UIDLs stable across a restart, IMAP and POP3 on the same mailbox,
imaps, curl's pop3:// and pop3s://, and malformed input.

The daemon runs with pop3.listen, pop3s.listen, imap.listen and
imaps.listen on free loopback ports (a loopback peer may log in without
TLS)."""
import imaplib
import os
import poplib
import socket
import ssl
import subprocess
import time

import pytest

import harness
from harness import make_message

ALICE, BOB, CAROL = "alice@local.example", "bob@local.example", "carol@local.example"
PASSWORD = "secret-pw"   # the suite's shared hash (harness.shared_hash)


@pytest.fixture(scope="module")
def srv(module_factory):
    ports = {k: harness.free_port() for k in ("pop3", "pop3s", "imap", "imaps")}
    s = module_factory.new(options={
        "pop3.listen": "127.0.0.1:%d" % ports["pop3"],
        "pop3s.listen": "127.0.0.1:%d" % ports["pop3s"],
        "imap.listen": "127.0.0.1:%d" % ports["imap"],
        "imaps.listen": "127.0.0.1:%d" % ports["imaps"],
        "pop3.max_errors": "5",
    }, populate=True)
    s.ports = ports
    return s


def tls_ctx():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def pop(srv):
    return poplib.POP3("127.0.0.1", srv.ports["pop3"], timeout=30)


def login(srv, user=ALICE):
    p = pop(srv)
    p.user(user)
    p.pass_(PASSWORD)
    return p


class Raw(harness.LineClient):
    """Line-level POP3 client for exact replies and hostile input."""

    def __init__(self, srv, port=None, timeout=10):
        super().__init__(port or srv.ports["pop3"], timeout)

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.line()

    def multi_raw(self):
        """The body of a multi-line reply up to (not including) CRLF.CRLF,
        exactly as on the wire (still dot-stuffed), ending with CRLF."""
        for _ in range(1000000):
            i = self.buf.find(b"\r\n.\r\n")
            if self.buf.startswith(b".\r\n"):
                self.buf = self.buf[3:]
                return b""
            if i >= 0:
                body, self.buf = self.buf[:i + 2], self.buf[i + 5:]
                return body
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("connection closed in a multi-line reply")
            self.buf += chunk
        raise AssertionError("unbounded reply")

    def at_eof(self, timeout=10):
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def login(self, user=ALICE):
        assert self.cmd("USER " + user).startswith("+OK")
        r = self.cmd("PASS " + PASSWORD)
        assert r.startswith("+OK"), r
        return r


def unstuff(body):
    return b"\r\n".join(l[1:] if l.startswith(b".") else l for l in body.split(b"\r\n"))


def inbox_count(srv, user=ALICE):
    return srv.query("SELECT COUNT(*) FROM messages m JOIN mailboxes mb ON mb.id = m.mailbox_id "
                     "JOIN accounts a ON a.id = mb.account_id WHERE a.address = ? AND mb.name = 'INBOX'",
                     (user,))[0][0]


def usage(srv, user=ALICE):
    return srv.query("SELECT used_messages, used_bytes FROM accounts WHERE address = ?", (user,))[0]


def big_message(to, size):
    """make_message(size=...) pads one line at a time (quadratic): build the
    body in one go."""
    line = b"y" * 70 + b"\r\n"
    return make_message(to=to, body=line * (size // len(line)))


def stored_message(srv, qid):
    """The message bytes of a delivery's blob: [0, size), without the trailer."""
    size = srv.blob_row(qid)[1]
    with open(srv.blob_path(qid), "rb") as f:
        data = f.read()
    assert len(data) > size
    return data[:size]


def empty_inbox(srv, user):
    p = login(srv, user)
    n, _ = p.stat()
    for i in range(1, n + 1):
        p.dele(i)
    p.quit()
    assert inbox_count(srv, user) == 0


# ---- greeting, CAPA, authentication ------------------------------------------------------

def test_greeting_capa_and_no_apop(srv):
    r = Raw(srv)
    try:
        assert r.greeting == "+OK Strata POP3 ready."   # no <timestamp>: APOP is not offered
        assert r.cmd("CAPA").startswith("+OK")
        caps = r.multi_raw().decode().split("\r\n")[:-1]
        for c in ("TOP", "UIDL", "USER", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "SASL PLAIN",
                  "STLS", "IMPLEMENTATION Strata"):
            assert c in caps, caps
        assert r.cmd("APOP %s 0123456789abcdef0123456789abcdef" % ALICE).startswith("-ERR")
        assert r.cmd("STAT").startswith("-ERR")        # not in the AUTHORIZATION state
        assert r.cmd("QUIT") == "+OK Logging out."
        assert r.at_eof()
    finally:
        r.close()


def test_user_pass_and_wrong_password(srv):
    p = pop(srv)
    p.user(ALICE)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.pass_("wrong-password")
    p.user(ALICE)
    assert p.pass_(PASSWORD).startswith(b"+OK")
    p.quit()
    r = Raw(srv)
    try:
        assert r.cmd("PASS " + PASSWORD).startswith("-ERR")   # no USER first
    finally:
        r.close()


def test_auth_plain_initial_response_and_continuation(srv):
    import base64
    tok = base64.b64encode(("\0%s\0%s" % (ALICE, PASSWORD)).encode()).decode()
    r = Raw(srv)
    try:
        assert r.cmd("AUTH PLAIN " + tok).startswith("+OK")
        assert r.cmd("STAT").startswith("+OK")
        r.cmd("QUIT")
    finally:
        r.close()
    r = Raw(srv)
    try:
        assert r.cmd("AUTH PLAIN") == "+ "
        assert r.cmd(tok).startswith("+OK")
        r.cmd("QUIT")
    finally:
        r.close()
    r = Raw(srv)
    try:
        assert r.cmd("AUTH PLAIN") == "+ "
        assert r.cmd("*").startswith("-ERR")
        bad = base64.b64encode(("\0%s\0nope" % ALICE).encode()).decode()
        assert r.cmd("AUTH PLAIN " + bad).startswith("-ERR [AUTH]")
        assert r.cmd("AUTH PLAIN !!!notbase64").startswith("-ERR")
        assert r.cmd("AUTH CRAM-MD5").startswith("-ERR")
        assert r.cmd("AUTH") == "+OK"
        assert r.multi_raw() == b"PLAIN\r\n"
    finally:
        r.close()
    # poplib's own AUTH-less path still works afterwards
    p = login(srv)
    p.quit()


def test_stls_then_login(srv):
    p = pop(srv)
    p.stls(context=tls_ctx())
    caps = p.capa()
    assert "STLS" not in caps and "USER" in caps
    p.user(ALICE)
    p.pass_(PASSWORD)
    p.stat()
    p.quit()


def test_stls_discards_pipelined_plaintext(srv):
    r = Raw(srv)
    try:
        r.send("STLS\r\nUSER %s\r\nPASS %s\r\n" % (ALICE, PASSWORD))
        assert r.line().startswith("+OK")
        tls = tls_ctx().wrap_socket(r.sock)
        tls.sendall(b"STAT\r\n")
        data = tls.recv(4096)
        assert data.startswith(b"-ERR"), data     # not logged in: USER/PASS were dropped
        tls.sendall(b"STLS\r\n")
        assert tls.recv(4096).startswith(b"-ERR")
    finally:
        r.close()


def test_pop3s_implicit_tls(srv):
    p = poplib.POP3_SSL("127.0.0.1", srv.ports["pop3s"], context=tls_ctx(), timeout=30)
    assert p.getwelcome() == b"+OK Strata POP3 ready."
    assert "STLS" not in p.capa()
    p.user(ALICE)
    p.pass_(PASSWORD)
    p.stat()
    p.quit()


def test_imaps_implicit_tls(srv):
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=tls_ctx(), timeout=30)
    try:
        assert "STARTTLS" not in m.capabilities
        m.login(ALICE, PASSWORD)
        typ, _ = m.select("INBOX")
        assert typ == "OK"
    finally:
        m.logout()


def test_plaintext_garbage_on_tls_ports_is_dropped(srv):
    for port in (srv.ports["pop3s"], srv.ports["imaps"]):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            s.sendall(b"USER x\r\n" * 10)
            data = b""
            try:
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except (ConnectionResetError, socket.timeout):
                pass
            assert b"+OK" not in data and b"* OK" not in data
        finally:
            s.close()
    p = login(srv)       # and the server still works
    p.quit()


# ---- reading ---------------------------------------------------------------------------

def test_quit_frees_the_maildrop_before_its_reply(srv):
    """A client that logs in again the moment it reads QUIT's +OK (with
    and without deletions) finds the maildrop free, every time."""
    for i in range(30):
        if i % 3 == 0:
            srv.deliver([BOB], make_message(to=BOB))
        r = Raw(srv)
        try:
            r.login(BOB)
            if i % 3 == 0:
                assert r.cmd("DELE 1").startswith("+OK")
            assert r.cmd("QUIT").startswith("+OK")
        finally:
            r.close()
        r = Raw(srv)
        try:
            r.login(BOB)                   # asserts +OK, not -ERR [IN-USE]
            assert r.cmd("QUIT").startswith("+OK")
        finally:
            r.close()


def test_stat_list_uidl_top_retr_byte_exact(srv):
    empty_inbox(srv, BOB)
    body = (b"Line one\r\n.starts with a dot\r\n..two dots\r\n.\r\nafter a lone dot\r\n"
            + b"x" * 3000 + b"\r\n" + b"last\r\n")
    msgs = [make_message(to=BOB, body=body), big_message(BOB, 200000),
            make_message(to=BOB, body=b"")]
    qids = [srv.deliver([BOB], m)[0] for m in msgs]
    # What the store holds: the delivered message with its Received: header
    # on top; exactly the blob's bytes [0, size), never its trailer.
    stored = [stored_message(srv, q) for q in qids]
    for m, st in zip(msgs, stored):
        assert st.endswith(m) and st.startswith(b"Received: ")
    msgs = stored
    r = Raw(srv)
    try:
        r.login(BOB)
        assert r.cmd("STAT") == "+OK 3 %d" % sum(len(m) for m in msgs)
        assert r.cmd("LIST").startswith("+OK")
        listing = r.multi_raw().decode().split("\r\n")[:-1]
        assert listing == ["%d %d" % (i + 1, len(m)) for i, m in enumerate(msgs)]
        assert r.cmd("LIST 2") == "+OK 2 %d" % len(msgs[1])
        assert r.cmd("UIDL").startswith("+OK")
        uidls = [l.split() for l in r.multi_raw().decode().split("\r\n")[:-1]]
        assert [int(n) for n, _ in uidls] == [1, 2, 3]
        assert len({u for _, u in uidls}) == 3 and all(len(u) == 16 for _, u in uidls)
        assert r.cmd("UIDL 3") == "+OK 3 %s" % uidls[2][1]
        for i, m in enumerate(msgs):
            assert r.cmd("RETR %d" % (i + 1)) == "+OK %d octets" % len(m)
            wire = r.multi_raw()
            assert unstuff(wire) == m
        # the dot-stuffing itself, on the wire
        assert r.cmd("RETR 1").startswith("+OK")
        wire = r.multi_raw()
        assert b"\r\n..starts with a dot\r\n...two dots\r\n..\r\nafter" in wire
        # TOP: headers, blank line, n body lines (dot-stuffed too)
        head, _ = msgs[0].split(b"\r\n\r\n", 1)
        assert r.cmd("TOP 1 0") == "+OK"
        assert r.multi_raw() == head + b"\r\n\r\n"
        assert r.cmd("TOP 1 2") == "+OK"
        assert r.multi_raw() == head + b"\r\n\r\nLine one\r\n..starts with a dot\r\n"
        assert r.cmd("TOP 1 1000") == "+OK"
        assert unstuff(r.multi_raw()) == msgs[0]
        assert r.cmd("TOP 3 5") == "+OK"
        assert r.multi_raw() == msgs[2]
        for bad in ("RETR 0", "RETR 4", "LIST 99"):       # no such message: not counted
            assert r.cmd(bad).startswith("-ERR"), bad
        r.cmd("QUIT")
    finally:
        r.close()
    for bad in ("TOP 1", "TOP 1 x", "RETR abc", "RETR -1", "LIST 99999999999", "DELE", "UIDL 1 2",
                "RETR 1 2"):
        r = Raw(srv)         # a session each: pop3.max_errors is 5 here
        try:
            r.login(BOB)
            assert r.cmd(bad).startswith("-ERR"), bad
            assert r.cmd("NOOP") == "+OK"
        finally:
            r.close()
    # poplib agrees (it un-stuffs lines itself)
    p = login(srv, BOB)
    try:
        resp, lines, octets = p.retr(2)   # (poplib refuses lines over 2048 bytes: not RETR 1)
        assert b"\r\n".join(lines) + b"\r\n" == msgs[1]
    finally:
        p.quit()


def stuff(data):
    """RFC 1939 3 dot-stuffing of a CRLF message, as the wire must carry it."""
    return b"\r\n".join(b"." + l if l.startswith(b".") else l for l in data.split(b"\r\n"))


STUFF_CASES = [
    # (label, padding before the dot lines): with 3-byte ".\r\n" lines one
    # padding in three puts a line start exactly on a 64 KiB read boundary
    ("padding 0", 0), ("padding 1", 1), ("padding 2", 2),
]


@pytest.mark.parametrize("label,pad", STUFF_CASES, ids=[c[0] for c in STUFF_CASES])
def test_retr_dot_stuffing_across_read_chunks(srv, label, pad):
    empty_inbox(srv, CAROL)
    body = b"p" * pad + b"\r\n" + b".\r\n" * 30000 + b".last\r\n"   # 90 KB: crosses 64 KiB
    stored = stored_message(srv, srv.deliver([CAROL], make_message(to=CAROL, body=body))[0])
    r = Raw(srv)
    try:
        r.login(CAROL)
        assert r.cmd("RETR 1") == "+OK %d octets" % len(stored), label
        wire = r.multi_raw()
        expect = stuff(stored)
        assert wire == expect, (label, len(wire), len(expect),
                                next((i for i, (a, b) in enumerate(zip(wire, expect)) if a != b), None))
    finally:
        r.close()


def test_large_message_streamed(srv):
    empty_inbox(srv, CAROL)
    big = stored_message(srv, srv.deliver([CAROL], big_message(CAROL, 6 * 1024 * 1024))[0])
    p = login(srv, CAROL)
    resp, lines, octets = p.retr(1)
    assert b"\r\n".join(lines) + b"\r\n" == big
    p.quit()


# ---- deleting -------------------------------------------------------------------------

def test_dele_quit_removes_in_one_transaction(srv):
    empty_inbox(srv, BOB)
    qids = [srv.deliver([BOB], make_message(to=BOB))[0] for _ in range(3)]
    msgs = [stored_message(srv, q) for q in qids]
    used = usage(srv, BOB)
    assert used == (3, sum(len(m) for m in msgs))
    p = login(srv, BOB)
    p.dele(1)
    p.dele(3)
    with pytest.raises(poplib.error_proto):
        p.retr(1)                       # deleted in this session
    with pytest.raises(poplib.error_proto):
        p.dele(1)
    assert p.stat() == (1, len(msgs[1]))
    assert inbox_count(srv, BOB) == 3   # nothing happens before QUIT
    assert p.quit().startswith(b"+OK")
    assert inbox_count(srv, BOB) == 1
    assert usage(srv, BOB) == (1, len(msgs[1]))
    import os
    assert srv.blob_row(qids[0]) is None and not os.path.exists(srv.blob_path(qids[0]))
    assert srv.blob_row(qids[2]) is None and not os.path.exists(srv.blob_path(qids[2]))
    assert srv.blob_row(qids[1]) is not None and os.path.exists(srv.blob_path(qids[1]))
    p = login(srv, BOB)
    assert p.stat() == (1, len(msgs[1]))
    p.quit()


def test_shared_blob_keeps_other_reference(srv):
    empty_inbox(srv, BOB)
    empty_inbox(srv, CAROL)
    qid, _ = srv.deliver([BOB, CAROL], make_message(to=BOB))
    data = stored_message(srv, qid)
    assert srv.blob_row(qid)[0] == 2
    p = login(srv, BOB)
    p.dele(1)
    p.quit()
    assert srv.blob_row(qid)[0] == 1
    p = login(srv, CAROL)
    resp, lines, _ = p.retr(1)
    assert b"\r\n".join(lines) + b"\r\n" == data
    p.quit()


def test_rset_undoes_dele(srv):
    empty_inbox(srv, BOB)
    srv.deliver([BOB], make_message(to=BOB))
    srv.deliver([BOB], make_message(to=BOB))
    p = login(srv, BOB)
    p.dele(1)
    p.dele(2)
    assert p.stat()[0] == 0
    p.rset()
    assert p.stat()[0] == 2
    p.quit()
    assert inbox_count(srv, BOB) == 2


def test_dele_then_connection_drop_removes_nothing(srv):
    empty_inbox(srv, BOB)
    srv.deliver([BOB], make_message(to=BOB))
    r = Raw(srv)
    r.login(BOB)
    assert r.cmd("DELE 1").startswith("+OK")
    r.close()                            # no QUIT
    # the lock is released once the server notices; then nothing was deleted
    harness.wait_until(lambda: _can_login(srv, BOB), 10, what="maildrop lock released")
    assert inbox_count(srv, BOB) == 1


def _can_login(srv, user):
    p = pop(srv)
    p.user(user)
    try:
        p.pass_(PASSWORD)
    except poplib.error_proto as e:
        assert b"[IN-USE]" in e.args[0], e
        p.quit()
        return False
    p.quit()
    return True


def test_maildrop_lock(srv):
    first = login(srv, CAROL)
    p = pop(srv)
    p.user(CAROL)
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\] mailbox locked by another POP3 session"):
        p.pass_(PASSWORD)
    p.quit()
    first.quit()
    second = login(srv, CAROL)           # released by QUIT
    second.quit()


# ---- IMAP and POP3 together ----------------------------------------------------------------

def test_imap_and_pop3_agree(srv):
    empty_inbox(srv, BOB)
    msgs = [stored_message(srv, srv.deliver([BOB], make_message(to=BOB))[0]) for _ in range(3)]
    m = imaplib.IMAP4("127.0.0.1", srv.ports["imap"], timeout=30)
    m.login(BOB, PASSWORD)
    m.select("INBOX")
    typ, data = m.uid("FETCH", "1:*", "(RFC822.SIZE)")
    imap_sizes = sorted(int(x.split(b"RFC822.SIZE ")[1].rstrip(b")")) for x in data if x)
    p = login(srv, BOB)
    pop_sizes = sorted(int(l.split()[1]) for l in p.list()[1])
    assert imap_sizes == pop_sizes == sorted(len(x) for x in msgs)
    uidvalidity = int(m.untagged_responses["UIDVALIDITY"][0])
    uids = [int(x) for x in m.uid("SEARCH", None, "ALL")[1][0].split()]
    pop_uidls = [l.split()[1].decode() for l in p.uidl()[1]]
    assert pop_uidls == ["%08X%08X" % (u, uidvalidity) for u in uids]
    p.dele(2)
    p.quit()
    m.noop()
    uids_after = [int(x) for x in m.uid("SEARCH", None, "ALL")[1][0].split()]
    assert uids_after == [uids[0], uids[2]]
    m.logout()


def test_uidls_stable_across_restart(srv):
    p = login(srv)
    before = p.uidl()[1]
    p.quit()
    if not before:
        srv.deliver([ALICE], make_message(to=ALICE))
        p = login(srv)
        before = p.uidl()[1]
        p.quit()
    srv.restart()
    p = login(srv)
    assert p.uidl()[1] == before
    p.quit()


# ---- curl -------------------------------------------------------------------------------

def test_curl_pop3_and_pop3s(srv):
    empty_inbox(srv, CAROL)
    data = stored_message(srv, srv.deliver([CAROL], make_message(to=CAROL, body=b"curl body\r\n.dot line\r\n"))[0])
    for url, extra in (("pop3://127.0.0.1:%d/1" % srv.ports["pop3"], []),
                       ("pop3s://127.0.0.1:%d/1" % srv.ports["pop3s"], ["-k"])):
        out = subprocess.run(["curl", "-sS", "--max-time", "30", "-u", "%s:%s" % (CAROL, PASSWORD)]
                             + extra + [url], capture_output=True, check=True).stdout
        assert out == data, (url, out)
    # and a listing
    out = subprocess.run(["curl", "-sS", "--max-time", "30", "-u", "%s:%s" % (CAROL, PASSWORD),
                          "pop3://127.0.0.1:%d/" % srv.ports["pop3"]], capture_output=True,
                         check=True).stdout
    assert out == b"1 %d\r\n" % len(data)


def test_curl_imap_and_imaps(srv):
    """curl's IMAP client: list mailboxes, fetch a message by UID over
    imap:// and imaps:// (byte-identical to the store), search, and APPEND
    (curl's upload) a message that then reads back the same."""
    user = "curlimap@local.example"
    srv.add_user(user)
    data = stored_message(srv, srv.deliver([user], make_message(to=user, subject="curl imap",
                                                                 body=b"imap body\r\n"))[0])
    base = ["curl", "-sS", "--max-time", "30", "-u", "%s:%s" % (user, PASSWORD)]
    plain = "imap://127.0.0.1:%d" % srv.ports["imap"]
    tls = "imaps://127.0.0.1:%d" % srv.ports["imaps"]
    listing = subprocess.run(base + [plain + "/"], capture_output=True, check=True).stdout.decode()
    assert any(l.startswith("* LIST") and l.rstrip().strip('"').endswith("INBOX") for l in listing.splitlines()), listing
    for url, extra in ((plain + "/INBOX;UID=1", []), (tls + "/INBOX;UID=1", ["-k"])):
        out = subprocess.run(base + extra + [url], capture_output=True, check=True).stdout
        assert out == data, (url, out[:200])
    found = subprocess.run(base + [plain + "/INBOX?SUBJECT%20%22curl%20imap%22"], capture_output=True,
                           check=True).stdout.decode()
    assert found.strip() == "* SEARCH 1", found
    upload = make_message(to=user, subject="uploaded by curl", body=b"appended\r\n")
    eml = os.path.join(srv.dir, "curl-upload.eml")
    with open(eml, "wb") as f:
        f.write(upload)
    subprocess.run(base + ["-T", eml, plain + "/INBOX"], capture_output=True, check=True)
    out = subprocess.run(base + [plain + "/INBOX;UID=2"], capture_output=True, check=True).stdout
    assert out == upload, out[:200]


# ---- hostile input ------------------------------------------------------------------------

def test_malformed_input(srv):
    r = Raw(srv)
    try:
        for bad in ("", "FROBNICATE", "USER", "LIST\0X"):
            assert r.cmd(bad).startswith("-ERR"), repr(bad)
        assert r.cmd("CAPA").startswith("+OK")
        r.multi_raw()
    finally:
        r.close()
    r = Raw(srv)
    try:
        assert r.cmd("US ER x").startswith("-ERR")
        assert r.cmd("CAPA").startswith("+OK")
        r.multi_raw()
    finally:
        r.close()
    r = Raw(srv)
    try:
        assert r.cmd("X" * 600).startswith("-ERR")            # too long: resynchronises
        assert r.cmd("NOOP").startswith("-ERR")                # (not in AUTHORIZATION)
        r.send(b"\xff\xfe\x00garbage\r\n")
        assert r.line().startswith("-ERR")
        assert r.cmd("A" * 100000).startswith("-ERR")
        # max_errors = 5: the fifth error hangs up
        assert r.cmd("BOGUS").startswith("-ERR")
        assert r.line().startswith("-ERR Too many")
        assert r.at_eof()
    finally:
        r.close()
    r = Raw(srv)
    try:
        r.login()
        r.send("STAT\r\nLIST 1 2 3 4 5 6\r\nNOOP\r\n")          # pipelined
        assert r.line().startswith("+OK ")
        assert r.line().startswith("-ERR")
        assert r.line() == "+OK"
        r.send("USER x\r\nQUIT\r\n")
        assert r.line().startswith("-ERR")
        assert r.line().startswith("+OK")
        assert r.at_eof()
    finally:
        r.close()
    p = login(srv)                      # the server keeps working
    p.quit()


def _status_kib(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError("no " + key)


@pytest.mark.slow_asan
def test_retr_20mb_to_a_slow_reader_bounded_memory(srv):
    empty_inbox(srv, CAROL)
    qid, _ = srv.deliver([CAROL], big_message(CAROL, 20 * 1024 * 1024))
    want = stored_message(srv, qid)
    r = Raw(srv, timeout=60)
    try:
        r.login(CAROL)
        # Reset the peak ("5" to clear_refs), so the peak measured is this RETR's.
        with open("/proc/%d/clear_refs" % srv.pid, "w") as f:
            f.write("5")
        before = _status_kib(srv.pid, "VmRSS")
        assert r.cmd("RETR 1") == "+OK %d octets" % len(want)
        time.sleep(1)                       # not reading: the server must wait, not buffer
        assert unstuff(r.multi_raw()) == want
        grew = _status_kib(srv.pid, "VmHWM") - before
        print("peak RSS growth during a 20 MB RETR: %d KiB" % grew)
        assert grew < 8 * 1024, "peak RSS grew by %d KiB for a 20 MB RETR" % grew
        r.cmd("QUIT")
    finally:
        r.close()


def test_client_not_reading_a_big_retr_then_vanishing(srv):
    empty_inbox(srv, CAROL)
    srv.deliver([CAROL], big_message(CAROL, 4 * 1024 * 1024))
    r = Raw(srv)
    r.login(CAROL)
    r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    r.send("RETR 1\r\n" * 20)
    time.sleep(0.5)
    r.close()
    harness.wait_until(lambda: _can_login(srv, CAROL), 10, what="maildrop lock released")
    assert inbox_count(srv, CAROL) == 1


# ---- failures, limits, shutdown -------------------------------------------------------------

def test_update_failure_deletes_nothing(srv):
    """QUIT's transaction cannot start (another writer holds the index past
    busy_timeout): -ERR [SYS/TEMP], every message stays, the lock goes."""
    import os
    import sqlite3
    empty_inbox(srv, BOB)
    srv.deliver([BOB], make_message(to=BOB))
    srv.deliver([BOB], make_message(to=BOB))
    r = Raw(srv, timeout=60)
    try:
        r.login(BOB)
        assert r.cmd("DELE 1").startswith("+OK")
        assert r.cmd("DELE 2").startswith("+OK")
        con = sqlite3.connect(os.path.join(srv.state_dir, "index.db"), timeout=30, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            reply = r.cmd("QUIT")
            con.execute("ROLLBACK")
        finally:
            con.close()
        assert reply.startswith("-ERR [SYS/TEMP]"), reply
        assert r.at_eof()
    finally:
        r.close()
    assert inbox_count(srv, BOB) == 2
    harness.wait_until(lambda: _can_login(srv, BOB), 10, what="maildrop lock released")


def test_login_timeout_and_connection_cap(strata_factory):
    port = harness.free_port()
    s = strata_factory.new(options={"pop3.listen": "127.0.0.1:%d" % port, "pop3.timeout.login": "1s",
                                    "pop3.max_connections": "2"}, populate=True)
    s.ports = {"pop3": port}
    a, b = Raw(s), Raw(s)
    try:
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            data = c.recv(4096)
            assert data.startswith(b"-ERR [SYS/TEMP] Too many connections"), data
        finally:
            c.close()
        assert a.line() == "-ERR Disconnected for inactivity"
        assert a.at_eof()
    finally:
        a.close()
        b.close()
    # slots come back
    def greeted():
        r = Raw(s)
        r.close()
        return r.greeting.startswith("+OK")
    harness.wait_until(greeted, 10, what="a free slot")


def test_shutdown_mid_session_deletes_nothing(strata_factory):
    port = harness.free_port()
    s = strata_factory.new(options={"pop3.listen": "127.0.0.1:%d" % port}, populate=True)
    s.ports = {"pop3": port}
    s.deliver([ALICE], make_message(to=ALICE))
    r = Raw(s)
    try:
        r.login()
        assert r.cmd("DELE 1").startswith("+OK")
        s.stop()                              # SIGTERM drains: exit 0 checked
        assert r.line() == "-ERR [SYS/TEMP] Server shutting down"
        assert r.at_eof()
    finally:
        r.close()
    s.start()
    assert inbox_count(s) == 1
    p = login(s)
    assert p.stat()[0] == 1
    p.quit()
