"""STARTTLS: smtplib, swaks --tls, the Received: header, and the STARTTLS
command-injection attack (CVE-2011-0411)."""
import re
import smtplib
import ssl
import subprocess

import harness
from harness import EXPECTED_EHLO, HOSTNAME, check_received, make_message, split_received, stored_for

ALICE = "alice@local.example"
BOB = "bob@local.example"


def no_verify():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def tls_version_in(field):
    m = re.search(r"\b(TLSv1\.[23])\b", field)
    assert m, "Received: header does not name the TLS version: %s" % field
    return m.group(1)


def test_starttls_smtplib(server):
    msg = make_message(to=ALICE)
    with smtplib.SMTP("127.0.0.1", server.smtp_port, local_hostname="client.example", timeout=30) as s:
        s.ehlo()
        assert s.has_extn("starttls")
        code, _ = s.starttls(context=no_verify())
        assert code == 220
        version = s.sock.version()
        assert version in ("TLSv1.2", "TLSv1.3"), version
        code, resp = s.ehlo()
        assert code == 250
        lines = resp.decode().splitlines()
        assert sorted(lines[1:]) == sorted(e for e in EXPECTED_EHLO if e != "STARTTLS"), lines
        assert s.mail("tls@remote.example")[0] == 250
        assert s.rcpt(ALICE)[0] == 250
        code, text = s.data(msg)
        assert code == 250, text
        qid = harness.QUEUED_RE.match(text.decode()).group(1)
    raw = stored_for(server, ALICE, qid)
    field, rest = split_received(raw)
    check_received(field, qid, tls=True)
    assert tls_version_in(field) == version
    assert rest == msg


def test_starttls_swaks(server):
    tag = "swaks-tls-%d" % harness._seq[0]
    harness._seq[0] += 1
    p = subprocess.run(["swaks", "--server", "127.0.0.1:%d" % server.smtp_port, "--tls",
                        "--helo", "swaks.example", "--from", "swaks@remote.example", "--to", BOB,
                        "--header", "Subject: %s" % tag, "--body", "Body of %s" % tag,
                        "--timeout", "30"],
                       capture_output=True, text=True, timeout=60 * harness.SLOW)
    assert p.returncode == 0, p.stdout + p.stderr
    m = re.search(r"<~  250 2\.0\.0 Ok: queued as ([0-9A-Z]{26})", p.stdout)
    assert m, p.stdout
    qid = m.group(1)
    raw = stored_for(server, BOB, qid)
    field, rest = split_received(raw)
    check_received(field, qid, tls=True)
    tls_version_in(field)
    assert b"Subject: " + tag.encode() in rest
    assert b"Body of " + tag.encode() in rest


def test_starttls_discards_pipelined_plaintext(server):
    """CVE-2011-0411: commands sent before the handshake must never be
    executed as if they had come over TLS."""
    before = len(server.mail_uids(BOB))
    with server.smtp() as c:
        c.ehlo()
        c.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<inject@remote.example>\r\nRCPT TO:<%s>\r\n" % BOB.encode())
        r = c.reply()
        assert r.code == 220, r
        # nothing after the 220 in plaintext either
        assert c.buf == b"", c.buf
        ctx = no_verify()
        c.sock = ctx.wrap_socket(c.sock, server_hostname=HOSTNAME)
        # had the injected commands run, their replies would come first, and a
        # transaction with a recipient would be open: it must not be.
        r = c.cmd("DATA")
        assert r.code == 503, r
        c.ehlo()
        r = c.cmd("RCPT TO:<%s>" % BOB)
        assert r.code == 503, r
        c.expect("QUIT", 221)
    assert len(server.mail_uids(BOB)) == before


def test_starttls_arguments_and_twice(server):
    with server.smtp() as c:
        c.ehlo()
        r = c.cmd("STARTTLS extra")
        assert r.code == 501, r
        c.starttls()
        c.ehlo()
        r = c.cmd("STARTTLS")
        assert r.code == 503 or r.code == 554, r
        c.expect("NOOP", 250)
        c.expect("QUIT", 221)


def test_failed_handshake_leaves_server_healthy(server):
    before = server.metrics()
    with server.smtp() as c:
        c.ehlo()
        c.expect("STARTTLS", 220)
        c.send(b"this is not a TLS ClientHello\r\n" * 10)
        assert c.at_eof(), "server kept a connection whose TLS handshake failed"
    after = server.metrics()
    assert after["strata_smtp_tls_failures_total"] == before["strata_smtp_tls_failures_total"] + 1
    with server.smtp() as c:
        c.expect("QUIT", 221)
    assert server.http_get("/health")[0] == 200
