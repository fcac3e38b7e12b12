"""IMAP4rev2 (RFC 9051) and the IMAP4rev1 extensions that came with it,
against the real daemon: ENABLE IMAP4rev2 and its differences (SELECT
without RECENT/UNSEEN and with LIST, SEARCH answered as ESEARCH, STATUS
SIZE and DELETED, OK [CLOSED], LSUB and UID EXPUNGE still there), BINARY
(RFC 3516: decoded base64 and quoted-printable parts, BINARY.SIZE,
partials, literal8 both ways, unknown encodings), MULTIAPPEND (RFC 3502:
several messages, all or nothing) and AUTHENTICATE LOGIN with and without
SASL-IR.

Each test uses its own account so the mailboxes' contents are known
exactly.  The daemon runs with imap.listen on a free loopback port (a
loopback peer may log in without TLS) and a 16 MiB imap.max_message_size so
an oversized literal is cheap to send."""
import base64
import os
import quopri
import re

import pytest

import harness

PASSWORD = "secret-pw"   # the suite's shared hash (harness.shared_hash)
DOMAIN = "local.example"
MAX_MESSAGE = 16 << 20


@pytest.fixture(scope="module")
def srv(module_factory):
    port = harness.free_port()
    s = module_factory.new(options={"imap.listen": "127.0.0.1:%d" % port,
                                    "imap.max_message_size": str(MAX_MESSAGE)}, populate=True)
    s.imap_port = port
    return s


_users = [0]


def new_user(srv, **quota):
    _users[0] += 1
    address = "rev2u%d@%s" % (_users[0], DOMAIN)
    srv.add_user(address, **quota)
    return address


class Raw(harness.LineClient):
    """Line-level IMAP client that also reads literals ({n} and ~{n})."""

    def __init__(self, srv, timeout=20):
        self.n = 0
        super().__init__(srv.imap_port, timeout)

    def tag(self):
        self.n += 1
        return "t%d" % self.n

    def raw_bytes(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed in a literal")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def response(self, tag):
        """Lines up to the tagged one; a line announcing a literal is
        joined with what follows it, and the literals are returned too:
        [(text, [literal bytes, ...]), ...]."""
        out = []
        for _ in range(100000):
            text, lits = self.line(), []
            m = re.search(r"~?\{(\d+)\}$", text)
            while m:
                lits.append(self.raw_bytes(int(m.group(1))))
                rest = self.line()
                text += "<lit>" + rest
                m = re.search(r"~?\{(\d+)\}$", rest)
            out.append((text, lits))
            if text.startswith(tag + " "):
                return out
        raise AssertionError("no tagged reply for %s" % tag)

    def cmd(self, text, expect="OK"):
        tag = self.tag()
        self.send("%s %s\r\n" % (tag, text))
        lines = self.until_tagged(tag)
        if expect is not None:
            assert lines[-1].startswith("%s %s" % (tag, expect)), (text, lines)
        return lines

    def fetch(self, text, expect="OK"):
        tag = self.tag()
        self.send("%s %s\r\n" % (tag, text))
        resp = self.response(tag)
        if expect is not None:
            assert resp[-1][0].startswith("%s %s" % (tag, expect)), (text, resp)
        return resp

    def append(self, mailbox, data, flags=""):
        tag = self.tag()
        self.send(b"%s APPEND %s (%s) {%d+}\r\n" % (tag.encode(), mailbox.encode(), flags.encode(),
                                                    len(data)))
        self.send(data + b"\r\n")
        lines = self.until_tagged(tag)
        assert lines[-1].startswith(tag + " OK"), lines
        return int(re.search(r"\[APPENDUID \d+ (\d+)\]", lines[-1]).group(1))


def session(srv, user):
    r = Raw(srv)
    r.cmd("LOGIN %s %s" % (user, PASSWORD))
    return r


def untagged(lines, word):
    """The untagged lines whose first word after '*' (or after a number) is word."""
    out = []
    for ln in lines:
        parts = ln.split(" ")
        if len(parts) >= 2 and parts[0] == "*" and (parts[1] == word or
                                                    (len(parts) >= 3 and parts[2] == word)):
            out.append(ln)
    return out


def simple(subject, body=b"hello\r\n"):
    return (b"From: a@remote.example\r\nTo: b@local.example\r\nSubject: " + subject.encode() +
            b"\r\nMessage-ID: <" + subject.encode() + b"@x>\r\n\r\n" + body)


def vm_kib(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no " + field)


def wrap76(data):
    return b"\r\n".join(data[i:i + 76] for i in range(0, len(data), 76)) + b"\r\n"


# The binary attachment: every byte value, NUL included, and long enough to
# span several of the server's 64 KiB decoding chunks.
ATTACHMENT = bytes(range(256)) * 700 + os.urandom(5000)
QP_TEXT = ("Caf\u00e9 cr\u00e8me = 100% \u00e9t\u00e9, a line long enough to need a soft break "
           "in quoted-printable encoding, and more.\r\nSecond line.\r\n").encode("utf-8")
# The CRLF before a boundary belongs to the boundary (RFC 2046 5.1.1).
QP_PART = QP_TEXT[:-2]


def multipart(cte3="7bit"):
    b64 = wrap76(base64.b64encode(ATTACHMENT))
    qp = quopri.encodestring(QP_TEXT.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")
    return (b"From: a@remote.example\r\nTo: b@local.example\r\nSubject: parts\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
            b"--XX\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + b64 +
            b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: Quoted-Printable\r\n\r\n" + qp +
            b"--XX\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: " + cte3.encode() +
            b"\r\n\r\nplain third part\r\n"
            b"--XX--\r\n")


# ---- capabilities and ENABLE ------------------------------------------------------------


class TestCapabilities:
    def test_advertised(self, srv):
        r = Raw(srv)
        try:
            pre = r.greeting
            for cap in ("IMAP4rev1", "IMAP4rev2", "AUTH=PLAIN", "AUTH=LOGIN", "SASL-IR", "LITERAL+"):
                assert " %s " % cap in pre, (cap, pre)
            user = new_user(srv)
            lines = r.cmd("LOGIN %s %s" % (user, PASSWORD))
            caps = untagged(r.cmd("CAPABILITY"), "CAPABILITY")[0].split()
            for cap in ("IMAP4rev1", "IMAP4rev2", "BINARY", "MULTIAPPEND", "STATUS=SIZE", "ESEARCH",
                        "UIDPLUS", "MOVE", "UNSELECT", "SPECIAL-USE", "IDLE", "ENABLE", "NAMESPACE",
                        "LIST-EXTENDED", "LIST-STATUS", "LITERAL+"):
                assert cap in caps, (cap, caps)
            assert "IMAP4rev2" in lines[-1], lines
        finally:
            r.close()

    def test_enable_rev2_once(self, srv):
        r = session(srv, new_user(srv))
        try:
            lines = r.cmd("ENABLE IMAP4rev2")
            assert lines[:-1] == ["* ENABLED IMAP4rev2"], lines
            lines = r.cmd("ENABLE IMAP4rev2 CONDSTORE")
            assert lines[:-1] == ["* ENABLED CONDSTORE"], lines
        finally:
            r.close()

    def test_enable_before_login_refused(self, srv):
        r = Raw(srv)
        try:
            r.cmd("ENABLE IMAP4rev2", expect="BAD")
        finally:
            r.close()


# ---- IMAP4rev2 behaviour -------------------------------------------------------------------


class TestRev2:
    def test_select_rev1_and_rev2(self, srv):
        user = new_user(srv)
        r = session(srv, user)
        try:
            r.append("INBOX", simple("one"), "\\Seen")
            r.append("INBOX", simple("two"))
            lines = r.cmd("SELECT INBOX")
            assert "* 2 RECENT" in lines and "* OK [UNSEEN 2] First unseen" in lines, lines
            assert not untagged(lines, "LIST"), lines
            r.cmd("ENABLE IMAP4rev2")
            lines = r.cmd("SELECT inbox")
            # the previous mailbox is closed first (RFC 9051 7.1, CLOSED)
            assert lines[0] == "* OK [CLOSED] Previous mailbox closed", lines
            assert '* LIST () "/" "INBOX"' in lines, lines
            assert not untagged(lines, "RECENT"), lines
            assert not [ln for ln in lines if "[UNSEEN" in ln], lines
            assert "* 2 EXISTS" in lines, lines
            assert lines[-1].endswith("[READ-WRITE] SELECT completed"), lines
        finally:
            r.close()

    def test_search_is_esearch(self, srv):
        user = new_user(srv)
        r = session(srv, user)
        try:
            for i in range(4):
                r.append("INBOX", simple("s%d" % i), "\\Seen" if i % 2 else "")
            r.cmd("SELECT INBOX")
            cases = [
                # (label, command, rev1 reply, rev2 reply)
                ("all", "SEARCH ALL", "* SEARCH 1 2 3 4", '* ESEARCH (TAG "{tag}") ALL 1:4'),
                ("unseen", "SEARCH UNSEEN", "* SEARCH 1 3", '* ESEARCH (TAG "{tag}") ALL 1,3'),
                ("uid", "UID SEARCH SEEN", "* SEARCH 2 4", '* ESEARCH (TAG "{tag}") UID ALL 2,4'),
                ("none", "SEARCH DELETED", "* SEARCH", '* ESEARCH (TAG "{tag}")'),
                ("return", "SEARCH RETURN (COUNT) ALL", '* ESEARCH (TAG "{tag}") COUNT 4',
                 '* ESEARCH (TAG "{tag}") COUNT 4'),
            ]
            for label, cmd, rev1, _ in cases:
                lines = r.cmd(cmd)
                want = rev1.format(tag="t%d" % r.n)
                assert lines[:-1] == [want], (label, "rev1", want, lines)
            r.cmd("ENABLE IMAP4rev2")
            for label, cmd, _, rev2 in cases:
                lines = r.cmd(cmd)
                want = rev2.format(tag="t%d" % r.n)
                assert lines[:-1] == [want], (label, "rev2", want, lines)
        finally:
            r.close()

    def test_status_size_deleted(self, srv):
        user = new_user(srv)
        r = session(srv, user)
        try:
            m1, m2, m3 = simple("a"), simple("bb", b"x" * 1000 + b"\r\n"), simple("c")
            r.append("INBOX", m1, "\\Deleted")
            r.append("INBOX", m2)
            r.append("INBOX", m3, "\\Deleted \\Seen")
            r.cmd("CREATE Empty")
            want_inbox = '* STATUS "INBOX" (MESSAGES 3 SIZE %d DELETED 2)' % (len(m1) + len(m2) + len(m3))
            for label in ("rev1", "rev2"):
                lines = r.cmd("STATUS INBOX (MESSAGES SIZE DELETED)")
                assert lines[:-1] == [want_inbox], (label, lines)
                lines = r.cmd("STATUS Empty (SIZE DELETED UIDNEXT)")
                assert lines[:-1] == ['* STATUS "Empty" (SIZE 0 DELETED 0 UIDNEXT 1)'], (label, lines)
                r.cmd("ENABLE IMAP4rev2")
            lines = r.cmd('LIST "" "*" RETURN (STATUS (SIZE DELETED))')
            assert want_inbox.replace("MESSAGES 3 ", "") in lines, lines
            r.cmd("STATUS INBOX (SIZES)", expect="BAD")
        finally:
            r.close()

    def test_lsub_uid_expunge_unselect_still_work(self, srv):
        user = new_user(srv)
        r = session(srv, user)
        try:
            r.cmd("ENABLE IMAP4rev2")
            r.cmd("CREATE Box")
            r.cmd("SUBSCRIBE Box")
            lines = r.cmd('LSUB "" "*"')
            assert '* LSUB (\\HasNoChildren) "/" "Box"' in lines, lines
            u1 = r.append("Box", simple("x"), "\\Deleted")
            u2 = r.append("Box", simple("y"), "\\Deleted")
            r.cmd("SELECT Box")
            lines = r.cmd("UID EXPUNGE %d" % u2)
            assert "* 2 EXPUNGE" in lines and "* 1 EXPUNGE" not in lines, lines
            lines = r.cmd("UID SEARCH ALL")
            assert lines[:-1] == ['* ESEARCH (TAG "t%d") UID ALL %d' % (r.n, u1)], lines
            r.cmd("UNSELECT")
        finally:
            r.close()

    def test_closed_on_reselect_for_condstore(self, srv):
        r = session(srv, new_user(srv))
        try:
            r.cmd("CREATE Other")
            r.cmd("SELECT INBOX (CONDSTORE)")
            lines = r.cmd("EXAMINE Other")
            assert lines[0] == "* OK [CLOSED] Previous mailbox closed", lines
            lines = r.cmd("SELECT Nope", expect="NO")
            assert lines[0] == "* OK [CLOSED] Previous mailbox closed", lines
            r.cmd("FETCH 1 FLAGS", expect="BAD")   # nothing selected any more
        finally:
            r.close()


# ---- BINARY ---------------------------------------------------------------------------------


class TestBinary:
    @pytest.fixture(scope="class")
    def box(self, srv):
        user = new_user(srv)
        r = session(srv, user)
        uid = r.append("INBOX", multipart())
        bad = r.append("INBOX", multipart("x-uuencode"))
        r.close()
        return user, uid, bad

    def test_decoded_parts(self, srv, box):
        user, uid, _ = box
        r = session(srv, user)
        try:
            r.cmd("EXAMINE INBOX")
            resp = r.fetch("UID FETCH %d (BINARY.PEEK[1] BINARY.PEEK[2] BINARY.PEEK[3])" % uid)
            text, lits = resp[0]
            assert lits[0] == ATTACHMENT, (len(lits[0]), len(ATTACHMENT))
            assert lits[1] == QP_PART, (lits[1], QP_PART)
            assert lits[2] == b"plain third part", lits[2]
            # the attachment has NUL bytes: literal8; the text parts do not
            assert "BINARY[1] ~{%d}" % len(ATTACHMENT) in text, text
            assert "BINARY[2] {%d}" % len(QP_PART) in text, text
        finally:
            r.close()

    def test_sizes_and_partials(self, srv, box):
        user, uid, _ = box
        r = session(srv, user)
        try:
            r.cmd("EXAMINE INBOX")
            resp = r.fetch("UID FETCH %d (BINARY.SIZE[1] BINARY.SIZE[2] BINARY.SIZE[3] BINARY.SIZE[7])" % uid)
            text = resp[0][0]
            for label, want in (("b64", "BINARY.SIZE[1] %d" % len(ATTACHMENT)),
                                ("qp", "BINARY.SIZE[2] %d" % len(QP_PART)),
                                ("7bit", "BINARY.SIZE[3] 16"), ("missing", "BINARY.SIZE[7] 0")):
                assert want in text, (label, want, text)
            cases = [
                # (label, item, expected bytes)
                ("b64 middle", "BINARY.PEEK[1]<70000.300>", ATTACHMENT[70000:70300]),
                ("b64 tail", "BINARY.PEEK[1]<%d.1000>" % (len(ATTACHMENT) - 10), ATTACHMENT[-10:]),
                ("b64 beyond", "BINARY.PEEK[1]<%d.5>" % (len(ATTACHMENT) + 3), b""),
                ("qp start", "BINARY.PEEK[2]<0.4>", QP_TEXT[:4]),
                ("qp escaped", "BINARY.PEEK[2]<3.2>", QP_TEXT[3:5]),
            ]
            for label, item, want in cases:
                resp = r.fetch("UID FETCH %d (%s)" % (uid, item))
                lits = resp[0][1]
                assert lits == [want], (label, lits, want)
                off = item.split("<")[1].split(".")[0]
                assert "BINARY[%s]<%s> " % (item.split("[")[1].split("]")[0], off) in resp[0][0], (label, resp)
            # the same part named several times: the same answers
            resp = r.fetch("UID FETCH %d (BINARY.SIZE[2] BINARY.PEEK[2]<0.4> BINARY.SIZE[1] BINARY.SIZE[2])" % uid)
            text = resp[0][0]
            assert text.count("BINARY.SIZE[2] %d" % len(QP_PART)) == 2, text
            assert "BINARY.SIZE[1] %d" % len(ATTACHMENT) in text and resp[0][1] == [QP_PART[:4]], resp
            resp = r.fetch("UID FETCH %d (BINARY.PEEK[9])" % uid)
            assert "BINARY[9] NIL" in resp[0][0], resp
            r.fetch("UID FETCH %d (BINARY.PEEK[1.HEADER])" % uid, expect="BAD")
            r.fetch("UID FETCH %d (BINARY.SIZE[1]<0.5>)" % uid, expect="BAD")
        finally:
            r.close()

    def test_whole_message_and_seen(self, srv, box):
        user, uid, _ = box
        r = session(srv, user)
        try:
            r.cmd("SELECT INBOX")
            resp = r.fetch("UID FETCH %d (BINARY.PEEK[] FLAGS)" % uid)
            assert resp[0][1] == [multipart()], len(resp[0][1][0])
            assert "FLAGS (\\Recent)" in resp[0][0], resp   # this SELECT is the first
            resp = r.fetch("UID FETCH %d (BINARY[3])" % uid)
            assert "\\Seen" in resp[0][0], resp
        finally:
            r.close()

    def test_unknown_cte(self, srv, box):
        user, uid, bad = box
        r = session(srv, user)
        try:
            r.cmd("EXAMINE INBOX")
            resp = r.fetch("UID FETCH %d (BINARY.PEEK[3])" % bad, expect="NO")
            assert "[UNKNOWN-CTE]" in resp[-1][0], resp
            assert len(resp) == 1, resp   # nothing of the message was sent
            # its other parts, and BODY[3], are fine
            resp = r.fetch("UID FETCH %d (BINARY.PEEK[2] BODY.PEEK[3])" % bad)
            assert resp[0][1] == [QP_PART, b"plain third part"], resp
            # the good message before it is still sent in full
            resp = r.fetch("UID FETCH %d:%d (BINARY.SIZE[3])" % (uid, bad), expect="NO")
            assert "BINARY.SIZE[3] 16" in resp[0][0] and "[UNKNOWN-CTE]" in resp[-1][0], resp
        finally:
            r.close()

    @pytest.mark.slow_asan   # ASan's quarantine keeps freed buffers resident
    def test_large_part_streams_with_bounded_memory(self, srv):
        user = new_user(srv)
        r = session(srv, user)
        try:
            big = os.urandom(9 << 20)
            msg = (b"From: a@remote.example\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
                   b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
                   wrap76(base64.b64encode(big)))
            uid = r.append("INBOX", msg)
            r.cmd("EXAMINE INBOX")
            with open("/proc/%d/clear_refs" % srv.pid, "w") as f:
                f.write("5")   # reset the peak: what is measured is this FETCH's
            before = vm_kib(srv.pid, "VmRSS")
            resp = r.fetch("UID FETCH %d (BINARY.SIZE[1] BINARY.PEEK[1] BINARY.PEEK[1]<8000000.100>)" % uid)
            grew = vm_kib(srv.pid, "VmHWM") - before
            text, lits = resp[0]
            assert "BINARY.SIZE[1] %d" % len(big) in text, text
            assert lits[0] == big and lits[1] == big[8000000:8000100]
            assert grew < 8 * 1024, "peak RSS grew by %d KiB to send a 9 MiB part" % grew
        finally:
            r.close()

    def test_literal8_append_with_nul(self, srv):
        user = new_user(srv)
        r = session(srv, user)
        try:
            body = b"binary \x00 bytes \x01\x02\xff and NUL\x00\r\n"
            msg = (b"From: a@remote.example\r\nSubject: bin\r\nContent-Type: application/octet-stream\r\n"
                   b"Content-Transfer-Encoding: binary\r\n\r\n" + body)
            tag = r.tag()
            r.send(b"%s APPEND INBOX (\\Seen) ~{%d}\r\n" % (tag.encode(), len(msg)))
            assert r.line().startswith("+"), "no continuation for literal8"
            r.send(msg + b"\r\n")
            lines = r.until_tagged(tag)
            assert lines[-1].startswith(tag + " OK [APPENDUID "), lines
            uid = int(re.search(r"APPENDUID \d+ (\d+)", lines[-1]).group(1))
            tag = r.tag()
            r.send(b"%s APPEND INBOX ~{%d+}\r\n" % (tag.encode(), len(msg)) + msg + b"\r\n")
            lines = r.until_tagged(tag)
            assert lines[-1].startswith(tag + " OK [APPENDUID "), lines
            r.cmd("EXAMINE INBOX")
            resp = r.fetch("UID FETCH %d (BINARY.PEEK[] BINARY.PEEK[1] BINARY.SIZE[1] RFC822.SIZE)" % uid)
            text, lits = resp[0]
            assert lits == [msg, body], lits
            assert "BINARY[] ~{%d}" % len(msg) in text and "BINARY.SIZE[1] %d" % len(body) in text, text
            assert "RFC822.SIZE %d" % len(msg) in text, text
        finally:
            r.close()


# ---- MULTIAPPEND ----------------------------------------------------------------------------


class TestMultiappend:
    def status(self, r, box):
        line = untagged(r.cmd("STATUS %s (MESSAGES UIDNEXT)" % box), "STATUS")[0]
        m = re.search(r"MESSAGES (\d+) UIDNEXT (\d+)", line)
        return int(m.group(1)), int(m.group(2))

    def test_sync_literals(self, srv):
        user = new_user(srv)
        r = session(srv, user)
        try:
            msgs = [simple("m%d" % i, b"body %d\r\n" % i) for i in range(3)]
            tag = r.tag()
            r.send(b"%s APPEND INBOX (\\Seen) {%d}\r\n" % (tag.encode(), len(msgs[0])))
            assert r.line().startswith("+")
            r.send(msgs[0] + b" (\\Flagged $Work) \"14-Jul-2021 02:44:25 +0200\" {%d}\r\n" % len(msgs[1]))
            assert r.line().startswith("+")
            r.send(msgs[1] + b" {%d}\r\n" % len(msgs[2]))
            assert r.line().startswith("+")
            r.send(msgs[2] + b"\r\n")
            lines = r.until_tagged(tag)
            m = re.match(r"%s OK \[APPENDUID (\d+) (\d+):(\d+)\]" % tag, lines[-1])
            assert m and int(m.group(3)) - int(m.group(2)) == 2, lines
            first = int(m.group(2))
            r.cmd("EXAMINE INBOX")
            resp = r.fetch("UID FETCH 1:* (FLAGS INTERNALDATE BODY.PEEK[])")
            got = [(t, l[0]) for t, l in resp[:-1]]
            assert len(got) == 3, resp
            # EXAMINE shows what nobody selected yet as \Recent
            assert "UID %d" % first in got[0][0] and "FLAGS (\\Recent \\Seen)" in got[0][0], got[0]
            assert "FLAGS (\\Recent \\Flagged $Work)" in got[1][0], got[1]
            assert '"14-Jul-2021 00:44:25 +0000"' in got[1][0], got[1]
            assert "FLAGS (\\Recent)" in got[2][0], got[2]
            assert [g[1] for g in got] == msgs
        finally:
            r.close()

    def test_nonsync_literals(self, srv):
        user = new_user(srv)
        r = session(srv, user)
        try:
            a, b = simple("n1"), simple("n2", b"y" * 70000 + b"\r\n")
            tag = r.tag()
            r.send(b"%s APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s\r\n" % (tag.encode(), len(a), a, len(b), b))
            lines = r.until_tagged(tag)
            assert re.match(r"%s OK \[APPENDUID \d+ 1:2\]" % tag, lines[-1]), lines
            assert self.status(r, "INBOX") == (2, 3)
        finally:
            r.close()

    def test_second_literal_too_large_sync(self, srv):
        user = new_user(srv)
        r = session(srv, user)
        try:
            a = simple("keep-out")
            tag = r.tag()
            r.send(b"%s APPEND INBOX {%d}\r\n" % (tag.encode(), len(a)))
            assert r.line().startswith("+")
            r.send(a + b" {%d}\r\n" % (MAX_MESSAGE + 1))
            lines = r.until_tagged(tag)
            assert lines[-1].startswith(tag + " NO [TOOBIG]"), lines
            assert self.status(r, "INBOX") == (0, 1)   # the first message was not added
            r.cmd("NOOP")                              # the session goes on
        finally:
            r.close()

    def test_second_literal_too_large_nonsync(self, srv):
        user = new_user(srv)
        r = session(srv, user)
        try:
            a = simple("keep-out")
            big = b"z" * (MAX_MESSAGE + 10)
            tag = r.tag()
            r.send(b"%s APPEND INBOX {%d+}\r\n%s {%d+}\r\n" % (tag.encode(), len(a), a, len(big)))
            r.send(big + b"\r\n")
            lines = r.until_tagged(tag)
            assert lines[-1].startswith(tag + " NO [TOOBIG]"), lines
            assert self.status(r, "INBOX") == (0, 1)
            r.append("INBOX", simple("after"))          # the stream is still in step
            assert self.status(r, "INBOX") == (1, 2)
        finally:
            r.close()

    def test_quota_all_or_nothing(self, srv):
        user = new_user(srv, quota_messages=2)
        r = session(srv, user)
        try:
            r.append("INBOX", simple("first"))
            a, b = simple("q1"), simple("q2")
            tag = r.tag()
            r.send(b"%s APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s\r\n" % (tag.encode(), len(a), a, len(b), b))
            lines = r.until_tagged(tag)
            assert lines[-1].startswith(tag + " NO [OVERQUOTA]"), lines
            assert self.status(r, "INBOX") == (1, 2)   # neither was added; no UID was spent
            tag = r.tag()
            r.send(b"%s APPEND INBOX {%d+}\r\n%s\r\n" % (tag.encode(), len(a), a))
            assert r.until_tagged(tag)[-1].startswith(tag + " OK"), "one still fits"
        finally:
            r.close()

    def test_missing_mailbox_and_syntax(self, srv):
        user = new_user(srv)
        r = session(srv, user)
        try:
            a = simple("x")
            cases = [
                # (label, command bytes after the tag, reply start)
                ("trycreate", b"APPEND Nope {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(a), a, len(a), a),
                 "NO [TRYCREATE]"),
                ("flags after last", b"APPEND INBOX {%d+}\r\n%s (\\Seen)\r\n" % (len(a), a), "BAD"),
                ("two flag lists", b"APPEND INBOX (\\Seen) (\\Seen) {%d+}\r\n%s\r\n" % (len(a), a), "BAD"),
                ("empty second", b"APPEND INBOX {%d+}\r\n%s {0+}\r\n\r\n" % (len(a), a), "NO"),
            ]
            for label, text, want in cases:
                tag = r.tag()
                r.send(tag.encode() + b" " + text)
                lines = r.until_tagged(tag)
                assert lines[-1].startswith("%s %s" % (tag, want)), (label, lines)
            assert self.status(r, "INBOX") == (0, 1)
            r.cmd("NOOP")
        finally:
            r.close()


# ---- AUTHENTICATE LOGIN --------------------------------------------------------------------


def b64(text):
    return base64.b64encode(text.encode()).decode()


class TestAuthLogin:
    def test_login_exchange(self, srv):
        user = new_user(srv)
        cases = [
            # (label, initial response or None, password, reply start)
            ("challenges", None, PASSWORD, "OK [CAPABILITY "),
            ("sasl-ir", b64(user), PASSWORD, "OK [CAPABILITY "),
            ("wrong password", None, "nope", "NO [AUTHENTICATIONFAILED]"),
        ]
        for label, ir, password, want in cases:
            r = Raw(srv)
            try:
                tag = r.tag()
                if ir is None:
                    r.send("%s AUTHENTICATE LOGIN\r\n" % tag)
                    assert r.line() == "+ VXNlcm5hbWU6", label   # "Username:"
                    r.send(b64(user) + "\r\n")
                else:
                    r.send("%s AUTHENTICATE LOGIN %s\r\n" % (tag, ir))
                assert r.line() == "+ UGFzc3dvcmQ6", label       # "Password:"
                r.send(b64(password) + "\r\n")
                lines = r.until_tagged(tag)
                assert lines[-1].startswith("%s %s" % (tag, want)), (label, lines)
                if want.startswith("OK"):
                    r.cmd("SELECT INBOX")
            finally:
                r.close()

    def test_cancel_and_garbage(self, srv):
        user = new_user(srv)
        r = Raw(srv)
        try:
            tag = r.tag()
            r.send("%s AUTHENTICATE LOGIN\r\n" % tag)
            assert r.line().startswith("+ ")
            r.send("*\r\n")
            assert r.until_tagged(tag)[-1].startswith(tag + " BAD"), "cancel"
            tag = r.tag()
            r.send("%s AUTHENTICATE LOGIN %s\r\n" % (tag, b64(user)))
            assert r.line().startswith("+ ")
            r.send("!!not-base64!!\r\n")
            assert r.until_tagged(tag)[-1].startswith(tag + " BAD"), "garbage"
            tag = r.tag()
            r.send("%s AUTHENTICATE LOGIN =\r\n" % tag)     # empty user name
            assert r.until_tagged(tag)[-1].startswith(tag + " NO [AUTHENTICATIONFAILED]")
            r.cmd("LOGIN %s %s" % (user, PASSWORD))         # still usable
        finally:
            r.close()


# ---- \Recent (IMAP4rev1) --------------------------------------------------------------------


def recent_of(lines):
    got = untagged(lines, "RECENT")
    assert len(got) <= 1, lines
    return int(got[0].split()[1]) if got else None


def flags_of(resp_lines):
    return [re.search(r"FLAGS \(([^)]*)\)", ln).group(1) for ln in resp_lines
            if ln.startswith("* ") and " FETCH " in ln]


class TestRecent:
    def test_first_session_only(self, srv):
        user = new_user(srv)
        a, b, c = session(srv, user), session(srv, user), session(srv, user)
        try:
            c.append("INBOX", simple("r1"))
            c.append("INBOX", simple("r2"))
            lines = c.cmd("STATUS INBOX (MESSAGES RECENT)")
            assert '* STATUS "INBOX" (MESSAGES 2 RECENT 2)' in lines, lines
            assert recent_of(a.cmd("SELECT INBOX")) == 2
            assert flags_of(a.cmd("FETCH 1:* FLAGS")) == ["\\Recent", "\\Recent"]
            assert recent_of(b.cmd("SELECT INBOX")) == 0
            assert flags_of(b.cmd("FETCH 1:* FLAGS")) == ["", ""]
            assert '* STATUS "INBOX" (RECENT 0)' in c.cmd("STATUS INBOX (RECENT)")
            # a new message: the first selected session to hear of it takes it
            c.append("INBOX", simple("r3"))
            assert '* STATUS "INBOX" (RECENT 1)' in c.cmd("STATUS INBOX (RECENT)")
            lines = b.cmd("NOOP")
            assert "* 3 EXISTS" in lines and recent_of(lines) == 1, lines
            lines = a.cmd("NOOP")
            assert "* 3 EXISTS" in lines and recent_of(lines) == 2, lines
            assert flags_of(b.cmd("FETCH 3 FLAGS")) == ["\\Recent"]
            # flag changes keep it; it is the session's, not the message's
            lines = a.cmd("STORE 1 +FLAGS (\\Seen)")
            assert flags_of(lines) == ["\\Recent \\Seen"], lines
            # b's answer, then the change a made (reported after it)
            assert flags_of(b.cmd("FETCH 1 FLAGS")) == ["", "\\Seen"]
            b.cmd("STORE 1 FLAGS (\\Recent)", expect="BAD")
        finally:
            for r in (a, b, c):
                r.close()

    def test_examine_and_rev2_do_not_claim(self, srv):
        user = new_user(srv)
        w, e, v2, s = session(srv, user), session(srv, user), session(srv, user), session(srv, user)
        try:
            w.append("INBOX", simple("x1"))
            lines = e.cmd("EXAMINE INBOX")
            assert recent_of(lines) == 1, lines
            assert flags_of(e.cmd("FETCH 1 FLAGS")) == ["\\Recent"]
            v2.cmd("ENABLE IMAP4rev2")
            lines = v2.cmd("SELECT INBOX")
            assert recent_of(lines) is None, lines
            assert flags_of(v2.cmd("FETCH 1 FLAGS")) == [""]
            assert recent_of(s.cmd("SELECT INBOX")) == 1   # nobody took it before
            assert recent_of(e.cmd("EXAMINE INBOX")) == 0
        finally:
            for r in (w, e, v2, s):
                r.close()

    def test_claims_survive_a_restart(self, srv):
        user = new_user(srv)
        r = session(srv, user)
        r.append("INBOX", simple("p1"))
        r.append("INBOX", simple("p2"))
        assert recent_of(r.cmd("SELECT INBOX")) == 2
        r.close()
        srv.restart()
        r = session(srv, user)
        try:
            r.append("INBOX", simple("p3"))
            assert recent_of(r.cmd("SELECT INBOX")) == 1
            assert flags_of(r.cmd("FETCH 1:* FLAGS")) == ["", "", "\\Recent"]
        finally:
            r.close()
