"""SMTP smuggling: only CRLF.CRLF ends DATA.  A bare-LF or mixed "end of
data" inside a message must stay message content; the commands after it
are stored, never executed."""
import pytest

from harness import split_received

ALICE, BOB = "alice@local.example", "bob@local.example"

SEPARATORS = {
    "lf-dot-lf": b"\n.\n",
    "crlf-dot-lf": b"\r\n.\n",
    "lf-dot-crlf": b"\n.\r\n",
    "cr-dot-cr": b"\r.\r",
    "crlf-dot-cr-crlf": b"\r\n.\r\r\n",
}


@pytest.mark.parametrize("name", sorted(SEPARATORS))
def test_smuggled_commands_are_content(server, name):
    sep = SEPARATORS[name]
    before_alice = len(server.mail_uids(ALICE))
    before_bob = len(server.mail_uids(BOB))
    smuggled = (b"MAIL FROM:<smuggler@evil.example>\r\nRCPT TO:<%s>\r\nDATA\r\n"
                b"Subject: smuggled %s\r\n\r\nI should not exist\r\n" % (BOB.encode(), name.encode()))
    body = b"Subject: carrier %s\r\n\r\nfirst part" % name.encode() + sep + smuggled
    with server.smtp() as c:
        c.ehlo()
        c.expect("MAIL FROM:<carrier@remote.example>", 250)
        c.expect("RCPT TO:<%s>" % ALICE, 250)
        c.expect("DATA", 354)
        c.send(body + b".\r\n")
        r = c.reply()
        assert r.code == 250 and r.enhanced == "2.0.0", r
        # exactly one reply: the next one answers our QUIT
        r = c.cmd("QUIT")
        assert r.code == 221, r
    assert len(server.mail_uids(BOB)) == before_bob
    uids = server.mail_uids(ALICE)
    assert len(uids) == before_alice + 1
    _, stored = split_received(server.mail_cat(ALICE, max(uids)))
    assert b"MAIL FROM:<smuggler@evil.example>" in stored, stored
    assert b"I should not exist" in stored, stored
    assert stored.startswith(b"Subject: carrier %s\r\n\r\nfirst part" % name.encode()), stored
    # whatever the bare line ends became, a stored message has CRLF line ends only
    assert stored.endswith(b"I should not exist\r\n"), stored
    assert b"\n" not in stored.replace(b"\r\n", b""), stored


@pytest.fixture(scope="module")
def strict(module_factory):
    return module_factory.new(options={"smtp.bare_lf": "reject"}, populate=True)


@pytest.mark.parametrize("name", sorted(SEPARATORS))
def test_bare_line_ends_rejected_in_strict_mode(strict, name):
    """smtp.bare_lf=reject: a message with a bare CR or LF is refused whole,
    and what followed the fake end of data is still not executed."""
    sep = SEPARATORS[name]
    before = strict.query("SELECT COUNT(*) FROM messages")[0][0]
    body = (b"Subject: strict\r\n\r\nfirst" + sep + b"MAIL FROM:<smuggler@evil.example>\r\n"
            b"RCPT TO:<%s>\r\nDATA\r\nsmuggled\r\n" % BOB.encode())
    with strict.smtp() as c:
        c.ehlo()
        c.expect("MAIL FROM:<carrier@remote.example>", 250)
        c.expect("RCPT TO:<%s>" % ALICE, 250)
        c.expect("DATA", 354)
        c.send(body + b".\r\n")
        r = c.reply()
        assert r.code == 550 and r.enhanced == "5.6.11", r
        r = c.cmd("QUIT")
        assert r.code == 221, r
    assert strict.query("SELECT COUNT(*) FROM messages")[0][0] == before
    assert strict.tmp_files() == []
