"""Security regressions that do not fit one protocol's file: envelope data
that tries to become message headers, and path traversal through mailbox
and user names.  (Open relay tricks: test_delivery.py; SMTP smuggling: test_smuggling.py;
STARTTLS injection: test_tls.py; IMAP literal and size abuse:
test_imap.py.)"""
import imaplib
import os

import pytest

import harness
from harness import make_message

PASSWORD = "secret-pw"   # the suite's shared hash (harness.shared_hash)


@pytest.fixture(scope="module")
def srv(module_factory):
    port = harness.free_port()
    s = module_factory.new(options={"imap.listen": "127.0.0.1:%d" % port}, populate=True)
    s.imap_port = port
    s.add_domain("catchall.example")
    s.add_user("bucket@catchall.example")
    s.cli("alias", "add", "@catchall.example", "bucket@catchall.example")
    return s


def stored_header(srv, qid):
    size = srv.blob_row(qid)[1]
    with open(srv.blob_path(qid), "rb") as f:
        data = f.read(size)
    return data.split(b"\r\n\r\n", 1)[0]


def header_names(header):
    """Names of the header fields (continuation lines folded in)."""
    names = []
    for line in header.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            continue
        names.append(line.split(b":", 1)[0].strip().lower())
    return names


@pytest.mark.parametrize("helo", [
    b"evil.example\rX-Injected: helo-cr",
    b"evil.example\nX-Injected: helo-lf",
    b"evil.example X-Injected: helo-space",
    b"evil.example\x00X-Injected: helo-nul",
])
def test_helo_cannot_inject_headers(srv, helo):
    with srv.smtp() as c:
        c.send(b"EHLO " + helo + b"\r\n")
        r = c.reply()
        if r.code != 250:       # refusing the greeting is fine too: then nothing is stored
            assert r.code in (500, 501), r.lines
            return
        if b"\n" in helo:       # a bare LF ends the command: the rest is a command of its own
            assert c.reply().code == 500
        c.expect("MAIL FROM:<sender@remote.example>", 250)
        c.expect("RCPT TO:<bucket@catchall.example>", 250)
        c.expect("DATA", 354)
        c.send(make_message(to="bucket@catchall.example") + b".\r\n")
        qid = harness.queued_id(c.reply())
    header = stored_header(srv, qid)
    assert b"x-injected" not in header_names(header), header
    assert b"\r" not in header.replace(b"\r\n", b""), header   # no bare CR
    assert b"\n" not in header.replace(b"\r\n", b""), header   # no bare LF
    assert b"\x00" not in header


@pytest.mark.parametrize("local", [
    '"a\rX-Injected: rcpt-cr"',
    '"a\x0bX-Injected: vt"',
    '"a X-Injected: space"',
    '"a\\\rX-Injected: quoted-pair-cr"',
])
def test_recipient_cannot_inject_headers(srv, local):
    """The catch-all accepts any local part, so the address reaches the
    Received: header's "for <...>" clause: it must not break out of it."""
    rcpt = local + "@catchall.example"
    with srv.smtp() as c:
        c.ehlo()
        c.expect("MAIL FROM:<sender@remote.example>", 250)
        c.send(("RCPT TO:<%s>\r\n" % rcpt).encode("latin-1"))
        r = c.reply()
        if r.code != 250:
            assert 500 <= r.code < 600, r.lines        # refused: nothing stored
            return
        c.expect("DATA", 354)
        c.send(make_message(to="bucket@catchall.example") + b".\r\n")
        qid = harness.queued_id(c.reply())
    header = stored_header(srv, qid)
    assert b"x-injected" not in header_names(header), header
    assert b"\r" not in header.replace(b"\r\n", b""), header
    assert b"\n" not in header.replace(b"\r\n", b""), header


@pytest.mark.parametrize("sender", [
    '"s\rX-Injected: from-cr"@remote.example',
    '"s X-Injected: from-space"@remote.example',
])
def test_sender_cannot_inject_headers(srv, sender):
    with srv.smtp() as c:
        c.ehlo()
        c.send(("MAIL FROM:<%s>\r\n" % sender).encode("latin-1"))
        r = c.reply()
        if r.code != 250:
            assert 500 <= r.code < 600, r.lines
            return
        c.expect("RCPT TO:<bucket@catchall.example>", 250)
        c.expect("DATA", 354)
        c.send(make_message(to="bucket@catchall.example") + b".\r\n")
        qid = harness.queued_id(c.reply())
    header = stored_header(srv, qid)
    assert b"x-injected" not in header_names(header), header
    assert b"\r" not in header.replace(b"\r\n", b""), header


def files_under(top):
    out = set()
    for root, dirs, files in os.walk(top):
        for n in dirs + files:
            out.add(os.path.join(root, n))
    return out


TRAVERSAL_NAMES = ["../../escape", "/etc/escape", "a/../../../escape", "..", ".", "a//b", "~root/escape",
                   "..\\..\\escape"]


def test_mailbox_names_cannot_traverse_the_filesystem(srv):
    """Mailboxes are rows of the index, never directories: whatever the
    name, nothing is created outside the state directory, and a refused
    name gets NO or BAD."""
    parent = os.path.dirname(srv.dir)
    before = files_under(parent)
    m = imaplib.IMAP4("127.0.0.1", srv.imap_port, timeout=30)
    try:
        m.login("alice@local.example", PASSWORD)
        for name in TRAVERSAL_NAMES:
            typ, data = m.create('"%s"' % name.replace("\\", "\\\\"))
            assert typ in ("OK", "NO"), (name, typ, data)
            if typ == "OK":
                typ, data = m.select('"%s"' % name.replace("\\", "\\\\"))
                assert typ == "OK", (name, data)
                typ, data = m.append('"%s"' % name.replace("\\", "\\\\"), None, None,
                                     make_message(to="alice@local.example"))
                assert typ == "OK", (name, data)
            typ, data = m.rename("INBOX", '"%s"' % name.replace("\\", "\\\\"))
            assert typ in ("OK", "NO"), (name, typ, data)
    finally:
        m.logout()
    after = files_under(parent)
    escaped = [p for p in after - before if not p.startswith(srv.dir + os.sep)]
    assert escaped == [], escaped
    assert not any(os.path.basename(p) == "escape" for p in after), sorted(after - before)[:20]


def test_user_names_cannot_traverse_the_filesystem(srv):
    """Addresses never become paths: odd local parts are refused or stored
    as index rows only; a login with a traversal name is a plain failure."""
    parent = os.path.dirname(srv.dir)
    before = files_under(parent)
    for name in ("../../escape@local.example", "a/../../escape@local.example", "/etc/escape@local.example"):
        r = srv.cli("user", "add", name, "--password-hash", harness.shared_hash(), rc=None)
        assert r.returncode in (0, 1, 2), r
        m = imaplib.IMAP4("127.0.0.1", srv.imap_port, timeout=30)
        try:
            try:
                m.login(name, PASSWORD)
                logged_in = True
            except imaplib.IMAP4.error:
                logged_in = False
            assert logged_in == (r.returncode == 0), (name, r)
        finally:
            m.logout()
        with srv.smtp() as c:
            c.ehlo()
            c.expect("MAIL FROM:<sender@remote.example>", 250)
            c.send(("RCPT TO:<%s>\r\n" % name).encode())
            reply = c.reply()
            if r.returncode == 0:
                assert reply.code == 250, (name, reply.lines)
            else:
                assert reply.code in (501, 550), (name, reply.lines)
    after = files_under(parent)
    escaped = [p for p in after - before if not p.startswith(srv.dir + os.sep)]
    assert escaped == [], escaped
    assert not any(os.path.basename(p).startswith("escape") for p in after), sorted(after - before)[:20]


# ---- least privilege -------------------------------------------------------------------------

def proc_status(pid):
    fields = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    return fields


def test_daemon_runs_under_the_system_call_filter(srv):
    st = proc_status(srv.pid)
    assert st["NoNewPrivs"] == "1", st
    assert st["Seccomp"] == "2", st              # 2 = filter mode
    if os.geteuid() == 0:                        # started as root: switched to the service user
        assert st["Uid"].split() == [str(os.stat(srv.state_dir).st_uid)] * 4, st
        assert st["Uid"].split()[0] != "0"
        assert st["CapEff"] == "0000000000000000", st


def test_filter_can_be_turned_off(module_factory):
    s = module_factory.new(options={"seccomp": "no"})
    st = proc_status(s.pid)
    assert st["Seccomp"] == "0", st


def test_state_is_private_to_the_service_user(srv):
    """Nothing under the state directory is readable or writable by other
    users (the certificate aside: it is public); the TLS key and the message
    files are the service user's alone."""
    srv.deliver(["alice@local.example"])
    owner = os.stat(srv.state_dir).st_uid
    for root, dirs, files in os.walk(srv.state_dir):
        for n in [root] + [os.path.join(root, f) for f in files]:
            st = os.stat(n)
            if n != os.path.join(srv.state_dir, "tls", "cert.pem"):
                assert st.st_mode & 0o007 == 0, (n, oct(st.st_mode))    # nothing for others
            assert st.st_uid == owner, (n, st.st_uid, owner)
    assert os.stat(os.path.join(srv.state_dir, "tls", "key.pem")).st_mode & 0o077 == 0
    blobs = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(srv.state_dir, "blobs")) for f in fs
             if len(f) == 26]
    assert blobs and all(os.stat(b).st_mode & 0o077 == 0 for b in blobs)
