"""Mail submission (RFC 6409 on submission.listen, RFC 8314 implicit TLS on
submissions.listen) with AUTH PLAIN and LOGIN (RFC 4954).

Checked against a real daemon with smtplib, swaks and a byte-exact client:
AUTH only after TLS, MAIL only after AUTH, the sender must belong to the
user, local delivery with "with ESMTPSA" and the added Date:/Message-ID:,
remote recipients handed to the outbound queue, brute force slowed down
and banned per address while the real user still gets in, and port 25
unchanged (no AUTH, no relaying).
"""
import base64
import re
import smtplib
import ssl
import subprocess
import time

import pytest

import harness
from harness import HOSTNAME, SLOW, RawSMTP, check_reply, free_port, wait_until
from smtp_sink import Sink
from test_guard import REFUSAL, SourcedSMTP, expect_refused, options

LOCAL = "local.example"
ALICE = "alice@%s" % LOCAL
BOB = "bob@%s" % LOCAL
PASSWORD = "secret-pw"   # the suite's shared hash (harness.shared_hash)


def no_verify():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def b64(text):
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def plain(user, password, authz=""):
    return b64("%s\0%s\0%s" % (authz, user, password))


@pytest.fixture(scope="module")
def sink():
    s = Sink()
    yield s
    s.close()


@pytest.fixture(scope="module")
def sub(module_factory, sink):
    sub_port, subs_port = free_port(), free_port()
    s = module_factory.new(options={
        "submission.listen": "127.0.0.1:%d" % sub_port,
        "submissions.listen": "127.0.0.1:%d" % subs_port,
        "relay.transport": "*=127.0.0.1:%d" % sink.port,
        "relay.retry_min": "1h",
    }, populate=True)
    s.sub_port, s.subs_port = sub_port, subs_port
    s.cli("alias", "add", "sales@%s" % LOCAL, ALICE)
    s.cli("alias", "add", "team@%s" % LOCAL, "%s,%s" % (ALICE, BOB))
    s.cli("alias", "add", "bobby@%s" % LOCAL, BOB)
    return s


def submission(s, login=True):
    c = smtplib.SMTP("127.0.0.1", s.sub_port, local_hostname="mua.example", timeout=30 * SLOW)
    c.ehlo()
    c.starttls(context=no_verify())
    c.ehlo()
    if login:
        c.login(ALICE, PASSWORD)
    return c


def raw_tls(s):
    """A byte-exact client on the submission port, after STARTTLS and EHLO."""
    c = RawSMTP(s.sub_port)
    c.banner()
    c.ehlo()
    c.starttls()
    c.ehlo()
    return c


def stored(s, address, subject):
    for raw in s.mailbox_contents(address):
        if ("Subject: %s\r\n" % subject).encode() in raw:
            return raw
    raise AssertionError("no message %r for %s" % (subject, address))


def header_block(raw):
    """The header section, with LF line ends (for re.M)."""
    return raw.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").replace("\r\n", "\n")


def unfolded_received(raw):
    field, _ = harness.split_received(raw)
    return field


# ---- sessions on 587 and 465 ----------------------------------------------------

def test_587_starttls_auth_and_local_delivery(sub):
    subject = "sub-local-%d" % time.monotonic_ns()
    msg = ("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\n\r\nhello over submission\r\n" % (ALICE, BOB, subject))
    with smtplib.SMTP("127.0.0.1", sub.sub_port, local_hostname="mua.example", timeout=30 * SLOW) as c:
        c.ehlo()
        assert c.has_extn("starttls")
        assert not c.has_extn("auth"), "AUTH advertised before TLS"
        c.starttls(context=no_verify())
        c.ehlo()
        assert c.esmtp_features.get("auth", "").split() == ["PLAIN", "LOGIN"], c.esmtp_features
        code, text = c.login(ALICE, PASSWORD)
        assert code == 235 and text == b"2.7.0 Authentication successful", (code, text)
        c.sendmail(ALICE, [BOB], msg.encode())
    raw = stored(sub, BOB, subject)
    received = unfolded_received(raw)
    assert re.search(r"\bwith ESMTPSA\b", received), received
    assert re.search(r"\(using TLSv1\.[23]", received), received
    head = header_block(raw)
    assert re.search(r"^Date: %s$" % harness.DATE_RE, head, re.M), head
    qid = re.search(r"\bid ([0-9A-Z]{26})\b", received).group(1)
    assert "\nMessage-ID: <%s@%s>\n" % (qid, HOSTNAME) in head + "\n", head
    # The fields go at the end of the header section, the body is untouched.
    date = re.search(r"^Date: (.*)$", head, re.M).group(1)
    tail = ("Subject: %s\r\nDate: %s\r\nMessage-ID: <%s@%s>\r\n\r\nhello over submission\r\n"
            % (subject, date, qid, HOSTNAME))
    assert raw.endswith(tail.encode()), raw
    assert "sasl_method=PLAIN, sasl_username=%s" % ALICE in sub.read_log()


def test_existing_date_and_message_id_are_kept(sub):
    subject = "sub-keep-%d" % time.monotonic_ns()
    msg = ("Date: Thu, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <mine@mua.example>\r\n"
           "Subject: %s\r\n\r\nbody\r\n" % subject)
    with submission(sub) as c:
        c.sendmail(ALICE, [BOB], msg.encode())
    head = header_block(stored(sub, BOB, subject))
    assert head.count("Date:") == 1 and "Date: Thu, 1 Jan 2026 00:00:00 +0000" in head, head
    assert head.count("Message-ID:") == 1 and "Message-ID: <mine@mua.example>" in head, head


def test_bdat_headers_only_message_gets_the_fields(sub):
    subject = "sub-bdat-%d" % time.monotonic_ns()
    body = ("Subject: %s\r\nX-Note: no body at all" % subject).encode()
    with raw_tls(sub) as c:
        check_reply(c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)), 235)
        check_reply(c.cmd("MAIL FROM:<%s>" % ALICE), 250)
        check_reply(c.cmd("RCPT TO:<%s>" % BOB), 250)
        c.send(b"BDAT %d LAST\r\n" % len(body) + body)
        r = c.reply()
        check_reply(r, 250)
    raw = stored(sub, BOB, subject)
    _, rest = harness.split_received(raw)
    text = rest.decode()
    assert re.match(r"Subject: %s\r\nX-Note: no body at all\r\nDate: %s\r\nMessage-ID: <[0-9A-Z]{26}@%s>\r\n$"
                    % (subject, harness.DATE_RE, re.escape(HOSTNAME)), text), text


def test_465_implicit_tls_auth_login(sub):
    subject = "sub-465-%d" % time.monotonic_ns()
    with smtplib.SMTP_SSL("127.0.0.1", sub.subs_port, local_hostname="mua.example", context=no_verify(),
                          timeout=30 * SLOW) as c:
        code, _ = c.ehlo()
        assert code == 250
        assert not c.has_extn("starttls"), "STARTTLS offered inside TLS"
        assert "LOGIN" in c.esmtp_features.get("auth", "").split()
        c.user, c.password = ALICE, PASSWORD
        code, text = c.auth("LOGIN", c.auth_login, initial_response_ok=False)
        assert code == 235, text
        c.sendmail(ALICE, [BOB], ("Subject: %s\r\n\r\nimplicit\r\n" % subject).encode())
    received = unfolded_received(stored(sub, BOB, subject))
    assert re.search(r"\bwith ESMTPSA\b", received), received
    assert "sasl_method=LOGIN, sasl_username=%s" % ALICE in sub.read_log()


def test_swaks_auth_plain(sub):
    subject = "sub-swaks-%d" % time.monotonic_ns()
    p = subprocess.run(["swaks", "--server", "127.0.0.1:%d" % sub.sub_port, "--tls", "--helo", "swaks.example",
                        "--auth", "PLAIN", "--auth-user", BOB, "--auth-password", PASSWORD,
                        "--from", BOB, "--to", ALICE, "--header", "Subject: %s" % subject,
                        "--timeout", "30"],
                       capture_output=True, text=True, timeout=60 * SLOW)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "<~  235 2.7.0 Authentication successful" in p.stdout, p.stdout
    stored(sub, ALICE, subject)


def test_plaintext_probe_on_465_gets_nothing(sub):
    with RawSMTP(sub.subs_port) as c:
        c.send(b"EHLO plain.example\r\n")
        assert c.reply_or_eof() is None, "a plaintext reply on the implicit TLS port"


# ---- the rules -------------------------------------------------------------------

def test_auth_before_tls_refused(sub):
    with RawSMTP(sub.sub_port) as c:
        c.banner()
        r = c.ehlo()
        assert "STARTTLS" in r.lines and not any(l.startswith("AUTH") for l in r.lines), r
        check_reply(c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)), 538, "5.7.11")
        check_reply(c.cmd("MAIL FROM:<%s>" % ALICE), 530, "5.7.0")


def test_mail_before_auth(sub):
    with raw_tls(sub) as c:
        r = c.cmd("MAIL FROM:<%s>" % ALICE)
        check_reply(r, 530, "5.7.0")
        assert r.text == "5.7.0 Authentication required", r
        check_reply(c.cmd("RCPT TO:<%s>" % BOB), 503, "5.5.1")


def test_wrong_password_and_protocol_errors(sub):
    with raw_tls(sub) as c:
        r = c.cmd("AUTH PLAIN " + plain(ALICE, "wrong"))
        check_reply(r, 535, "5.7.8")
        check_reply(c.cmd("AUTH PLAIN not-base64!"), 501, "5.5.2")
        check_reply(c.cmd("AUTH PLAIN ="), 501, "5.5.2")          # empty: no user
        check_reply(c.cmd("AUTH CRAM-MD5"), 504, "5.5.4")
        check_reply(c.cmd("AUTH"), 501, "5.5.4")
        check_reply(c.cmd("AUTH PLAIN " + plain(BOB, PASSWORD, authz=ALICE)), 535, "5.7.8")
        # Challenge and cancel.
        r = c.cmd("AUTH LOGIN")
        assert r.code == 334 and r.text == "VXNlcm5hbWU6", r
        r = c.cmd(b64(ALICE))
        assert r.code == 334 and r.text == "UGFzc3dvcmQ6", r
        check_reply(c.cmd("*"), 501)
        r = c.cmd("AUTH PLAIN")
        assert r.code == 334 and r.text == "", r
        check_reply(c.cmd("*"), 501)
        r = c.cmd("AUTH PLAIN")
        assert r.code == 334, r
        check_reply(c.cmd("A" * 5000), 500, "5.5.6")
        # Still usable: a good exchange with an initial user name.
        r = c.cmd("AUTH LOGIN " + b64(ALICE))
        assert r.code == 334 and r.text == "UGFzc3dvcmQ6", r
        check_reply(c.cmd(b64(PASSWORD)), 235, "2.7.0")
        check_reply(c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)), 503, "5.5.1")
    assert "SASL PLAIN authentication failed, sasl_username=%s" % ALICE in sub.read_log()


def test_sender_ownership(sub):
    with raw_tls(sub) as c:
        check_reply(c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)), 235)
        r = c.cmd("MAIL FROM:<%s>" % BOB)
        check_reply(r, 553, "5.7.1")
        assert r.text == "5.7.1 <%s>: Sender address rejected: not owned by user %s" % (BOB, ALICE), r
        check_reply(c.cmd("MAIL FROM:<bobby@%s>" % LOCAL), 553, "5.7.1")      # bob's alias
        check_reply(c.cmd("MAIL FROM:<>"), 553, "5.7.1")                       # null sender
        check_reply(c.cmd("MAIL FROM:<alice@elsewhere.example>"), 553, "5.7.1")
        check_reply(c.cmd("MAIL FROM:<nobody@%s>" % LOCAL), 553, "5.7.1")
        for owned in ("Alice@Local.Example", "sales@%s" % LOCAL, "team@%s" % LOCAL):
            check_reply(c.cmd("MAIL FROM:<%s>" % owned), 250, what=owned)
            check_reply(c.cmd("RSET"), 250)
        # RFC 4954 5: the AUTH parameter is accepted (and ignored).
        check_reply(c.cmd("MAIL FROM:<%s> AUTH=<>" % ALICE), 250)
    assert "not owned by user %s; sasl_username=%s" % (ALICE, ALICE) in sub.read_log()


def test_sender_check_can_be_turned_off(strata_factory):
    port = free_port()
    s = strata_factory.new(options={"submission.listen": "127.0.0.1:%d" % port,
                                    "submission.sender_login_match": "no"}, populate=True)
    s.sub_port = port
    with raw_tls(s) as c:
        check_reply(c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)), 235)
        check_reply(c.cmd("MAIL FROM:<%s>" % BOB), 250)


def test_remote_recipient_goes_to_the_outbound_queue(sub, sink):
    subject = "sub-remote-%d" % time.monotonic_ns()
    with submission(sub) as c:
        c.mail(ALICE)
        assert c.rcpt("Someone@Remote.Example")[0] == 250
        assert c.rcpt(BOB)[0] == 250
        check = c.rcpt("x@[192.0.2.1]")
        assert check[0] == 550, check
        code, text = c.data(("Subject: %s\r\n\r\nout and in\r\n" % subject).encode())
        assert code == 250, text
    stored(sub, BOB, subject)   # the local copy

    def handed_over():
        rows = sub.query("SELECT sender, recipient FROM outbound")
        if ("alice@local.example", "Someone@Remote.Example") in rows:
            return "queued"
        for _helo, mail, rcpts, data in sink.messages:
            sender = re.search(r"<([^>]*)>", mail).group(1)
            if ("Subject: %s" % subject).encode() in data:
                assert sender == ALICE and rcpts == ["Someone@Remote.Example"], (sender, rcpts)
                return "relayed"
        return None
    wait_until(handed_over, 20 * SLOW, what="the remote recipient in the outbound queue or relayed")


def test_recipient_limit_counts_remote(strata_factory):
    port = free_port()
    s = strata_factory.new(options={"submission.listen": "127.0.0.1:%d" % port, "smtp.max_recipients": "2",
                                    "relay.transport": "*=127.0.0.1:9"}, populate=True)
    s.sub_port = port
    with raw_tls(s) as c:
        check_reply(c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)), 235)
        check_reply(c.cmd("MAIL FROM:<%s>" % ALICE), 250)
        check_reply(c.cmd("RCPT TO:<a@remote.example>"), 250)
        check_reply(c.cmd("RCPT TO:<b@remote.example>"), 250)
        check_reply(c.cmd("RCPT TO:<c@remote.example>"), 452, "4.5.3")


def test_mx_port_unchanged(sub):
    with RawSMTP(sub.smtp_port) as c:
        c.banner()
        r = c.ehlo()
        assert not any(l.startswith("AUTH") for l in r.lines), r
        check_reply(c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)), 500, "5.5.2")
        c.starttls()
        r = c.ehlo()
        assert not any(l.startswith("AUTH") for l in r.lines), r
        check_reply(c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)), 500, "5.5.2")
        check_reply(c.cmd("MAIL FROM:<%s> AUTH=<>" % ALICE), 555, "5.5.4")
        check_reply(c.cmd("MAIL FROM:<%s>" % ALICE), 250)
        check_reply(c.cmd("RCPT TO:<someone@remote.example>"), 554, "5.7.1")


def test_submission_has_its_own_connection_cap(strata_factory):
    """A full port 25 does not keep users from submitting, and the other way round."""
    port = free_port()
    s = strata_factory.new(options={"submission.listen": "127.0.0.1:%d" % port, "smtp.max_connections": "1",
                                    "submission.max_connections": "1"}, populate=True)
    mx = RawSMTP(s.smtp_port)
    try:
        mx.banner()
        with RawSMTP(s.smtp_port) as over:
            r = over.reply()
            check_reply(r, 421, "4.7.0")
        user = RawSMTP(port)
        try:
            user.banner()
            with RawSMTP(port) as over:
                check_reply(over.reply(), 421, "4.7.0")
        finally:
            user.close()
        wait_until(lambda: s.metrics().get("strata_smtp_sessions_active", -1) == 1, 10 * SLOW,
                   what="the submission session freed")
        with RawSMTP(port) as again:
            again.banner()
    finally:
        mx.close()


# ---- brute force -----------------------------------------------------------------

AUTH_OPTS = {"guard.auth.delay": "200ms", "guard.auth.max_delay": "3s", "guard.auth.ban_after": "4"}


def sourced_tls(port, source):
    c = smtplib.SMTP("127.0.0.1", port, local_hostname="mua.example", timeout=30 * SLOW,
                     source_address=(source, 0))
    c.ehlo()
    c.starttls(context=no_verify())
    c.ehlo()
    return c


def test_brute_force_delays_ban_and_real_user_gets_in(strata_factory):
    port = free_port()
    o = options(submission__listen="127.0.0.1:%d" % port, smtp__max_errors="50")
    o.update(AUTH_OPTS)
    s = strata_factory.new(options=o, populate=True)
    attacker = sourced_tls(port, "127.29.0.1")
    try:
        waits = []
        for i in range(4):
            t0 = time.monotonic()
            code, text = attacker.docmd("AUTH", "PLAIN " + plain(ALICE, "wrong-%d" % i))
            waits.append(time.monotonic() - t0)
            assert code == 535, (code, text)
        # 200 ms, 400 ms, 800 ms, 1.6 s: each at least its share.
        for i, w in enumerate(waits):
            assert w >= 0.2 * 2 ** i * 0.9, "failure %d answered after %.2f s: %s" % (i + 1, w, waits)
        # The real user, from another address, gets in at once.
        user = sourced_tls(port, "127.29.9.9")
        try:
            t0 = time.monotonic()
            code, _ = user.login(ALICE, PASSWORD)
            waited = time.monotonic() - t0
            assert code == 235
            assert waited < 0.5 * SLOW + 0.5, "the real user waited %.2f s" % waited
        finally:
            user.close()
    finally:
        attacker.close()
    expect_refused(s, "127.29.0.1", port, REFUSAL)
    m = s.metrics()
    assert m.get('strata_guard_offences_total{kind="auth"}') == 1, m
    assert m.get("strata_guard_auth_failures_total") == 4, m
    assert m.get('strata_smtp_auth_total{result="failure"}') == 4, m
    assert m.get('strata_smtp_auth_total{result="success"}') == 1, m
    assert "guard: too many failed logins from 127.29.0.1" in s.read_log()


def test_shutdown_during_auth_delay(strata_factory):
    port = free_port()
    o = options(submission__listen="127.0.0.1:%d" % port, submission__require_tls="no")
    o.update({"guard.auth.delay": "5s", "guard.auth.max_delay": "5s"})
    s = strata_factory.new(options=o, populate=True)
    c = SourcedSMTP(port, "127.29.3.1")
    try:
        c.banner()
        c.ehlo()
        c.send(("AUTH PLAIN %s\r\n" % plain(ALICE, "wrong")).encode())
        wait_until(lambda: s.metrics().get("strata_guard_auth_delayed_total", 0) == 1, 10 * SLOW,
                   what="the failure waiting for its delay")
        t0 = time.monotonic()
        s.stop()
        assert time.monotonic() - t0 < 15 * SLOW
    finally:
        c.close()
    s.check_log()


def test_client_gone_during_auth_check_and_delay(strata_factory):
    """A client that vanishes while its password is checked, or while its
    failure waits for the guard's delay, leaves nothing behind."""
    port = free_port()
    o = options(submission__listen="127.0.0.1:%d" % port, submission__require_tls="no")
    o.update({"guard.auth.delay": "2s", "guard.auth.max_delay": "2s"})
    s = strata_factory.new(options=o, populate=True)
    for i in range(20):
        c = SourcedSMTP(port, "127.29.4.%d" % (i + 1))
        c.banner()
        c.ehlo()
        good = i % 2 == 0
        c.send(("AUTH PLAIN %s\r\nMAIL FROM:<%s>\r\n" % (plain(ALICE, PASSWORD if good else "bad"), ALICE)).encode())
        c.close()
    wait_until(lambda: s.metrics().get("strata_smtp_sessions_active", -1) == 0, 20 * SLOW,
               what="every session freed")
    with RawSMTP(port) as c:
        c.banner()
        c.ehlo()
        check_reply(c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)), 235)
    s.stop()
    s.check_log()


def test_require_tls_off_allows_plaintext_auth(strata_factory):
    port = free_port()
    s = strata_factory.new(options={"submission.listen": "127.0.0.1:%d" % port,
                                    "submission.require_tls": "no"}, populate=True)
    with RawSMTP(port) as c:
        c.banner()
        r = c.ehlo()
        assert "AUTH PLAIN LOGIN" in r.lines, r
        check_reply(c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)), 235, "2.7.0")
        check_reply(c.cmd("MAIL FROM:<%s>" % ALICE), 250)
        check_reply(c.cmd("RCPT TO:<%s>" % BOB), 250)
        check_reply(c.cmd("DATA"), 354)
        c.send(b"Subject: plain-auth\r\n\r\nx\r\n.\r\n")
        check_reply(c.reply(), 250)
    received = unfolded_received(stored(s, BOB, "plain-auth"))
    assert re.search(r"\bwith ESMTPA\b", received), received
