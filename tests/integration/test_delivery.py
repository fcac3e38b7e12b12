"""Recipient resolution: shared blobs for several recipients, aliases,
catch-all, plus-addressing, unknown users, and relay denial (with the
classic address tricks)."""
import os

import pytest

import harness
from harness import split_received

ALICE, BOB, CAROL = "alice@local.example", "bob@local.example", "carol@local.example"


@pytest.fixture(scope="module")
def srv(module_factory):
    s = module_factory.new(populate=True)
    s.cli("alias", "add", "team@local.example", "%s,%s" % (ALICE, BOB))
    s.cli("alias", "add", "everyone@local.example", "team@local.example,%s" % CAROL)
    s.add_domain("catch.example")
    s.add_user("postmaster@catch.example")
    s.add_user("real@catch.example")
    s.cli("alias", "add", "@catch.example", "postmaster@catch.example")
    return s


def counts(s, *addresses):
    return {a: len(s.mail_uids(a)) for a in addresses}


def message_count(s):
    return s.query("SELECT COUNT(*) FROM messages")[0][0]


def test_three_recipients_share_one_blob(srv):
    before = counts(srv, ALICE, BOB, CAROL)
    blobs_before = set(srv.blob_files())
    qid, msg = srv.deliver([ALICE, BOB, CAROL])
    after = counts(srv, ALICE, BOB, CAROL)
    assert all(after[a] == before[a] + 1 for a in after), (before, after)
    # one blob file, one blob row with refcount 3, three message rows naming it
    new_blobs = set(srv.blob_files()) - blobs_before
    assert new_blobs == {srv.blob_path(qid)}, new_blobs
    row = srv.blob_row(qid)
    assert row is not None and row[0] == 3, row
    assert srv.message_refs(qid) == 3
    # each INBOX holds the same bytes
    for a in (ALICE, BOB, CAROL):
        raw = srv.mail_cat(a, max(srv.mail_uids(a)))
        assert split_received(raw)[1] == msg
        assert row[1] == len(raw)


def test_alias_delivers_to_targets(srv):
    before = counts(srv, ALICE, BOB, CAROL)
    srv.deliver(["team@local.example"])
    after = counts(srv, ALICE, BOB, CAROL)
    assert after == {ALICE: before[ALICE] + 1, BOB: before[BOB] + 1, CAROL: before[CAROL]}


def test_nested_alias_and_deduplication(srv):
    before = counts(srv, ALICE, BOB, CAROL)
    # alice is named four ways; she still gets one copy
    qid, _ = srv.deliver(["everyone@local.example", ALICE, "alice+news@local.example", "ALICE@Local.Example"])
    after = counts(srv, ALICE, BOB, CAROL)
    assert after == {a: before[a] + 1 for a in before}, (before, after)
    assert srv.blob_row(qid)[0] == 3


def test_plus_addressing(srv):
    before = counts(srv, ALICE, BOB)
    qid, msg = srv.deliver(["bob+lists@local.example"])
    assert counts(srv, ALICE, BOB) == {ALICE: before[ALICE], BOB: before[BOB] + 1}
    raw = srv.mail_cat(BOB, max(srv.mail_uids(BOB)))
    assert split_received(raw)[1] == msg
    # the extension of an unknown user is still unknown
    with srv.smtp() as c:
        c.ehlo()
        c.expect("MAIL FROM:<x@remote.example>", 250)
        c.expect("RCPT TO:<nobody+tag@local.example>", 550, "5.1.1")


def test_catch_all(srv):
    pm, real = "postmaster@catch.example", "real@catch.example"
    before = counts(srv, pm, real)
    srv.deliver(["whoever@catch.example"])
    srv.deliver(["Someone.Else@CATCH.example"])
    srv.deliver([real])
    assert counts(srv, pm, real) == {pm: before[pm] + 2, real: before[real] + 1}


def test_unknown_user(srv):
    with srv.smtp() as c:
        c.ehlo()
        c.expect("MAIL FROM:<x@remote.example>", 250)
        r = c.cmd("RCPT TO:<nobody@local.example>")
        assert r.code == 550 and r.enhanced == "5.1.1", r
        # the transaction goes on with a valid recipient
        c.expect("RCPT TO:<%s>" % CAROL, 250)
        c.expect("RSET", 250)
        c.expect("QUIT", 221)


RELAY_TRICKS = [
    "victim@evil.example",
    "victim@EVIL.example",
    "victim%evil.example@local.example",         # percent hack
    "@local.example,@evil.example:victim@evil.example",  # source route
    "@local.example:victim@evil.example",
    "evil.example!victim@local.example",         # bang path
    "victim@[127.0.0.1]",                        # address literal
    "victim@[IPv6:::1]",
    '"victim@evil.example"@local.example',       # quoted local part
    '"victim%evil.example"@local.example',
    "victim@evil.example@local.example",
    "victim@local.example.evil.example",
    "victim@evil.example.",
    "victim@localhost",
    "victim",                                    # unqualified
]


@pytest.mark.parametrize("rcpt", RELAY_TRICKS)
def test_never_relays(srv, rcpt):
    before = message_count(srv)
    blobs_before = set(srv.blob_files())
    with srv.smtp() as c:
        c.ehlo()
        c.expect("MAIL FROM:<spammer@evil.example>", 250)
        r = c.cmd("RCPT TO:<%s>" % rcpt)
        assert 500 <= r.code < 600, (rcpt, r)
        assert r.code in (501, 550, 553, 554), (rcpt, r)
        r = c.cmd("DATA")
        assert r.code in (503, 554), r
        c.expect("QUIT", 221)
    assert message_count(srv) == before
    assert set(srv.blob_files()) == blobs_before


def test_relay_denied_reply(srv):
    with srv.smtp() as c:
        c.ehlo()
        c.expect("MAIL FROM:<spammer@evil.example>", 250)
        r = c.cmd("RCPT TO:<victim@evil.example>")
        assert r.code == 554 and r.enhanced == "5.7.1", r
        assert "Relay access denied" in r.text, r
        c.expect("QUIT", 221)


def test_deleted_user_no_longer_receives(srv):
    srv.add_user("temp@local.example")
    srv.deliver(["temp@local.example"])
    srv.cli("user", "del", "temp@local.example")
    with srv.smtp() as c:
        c.ehlo()
        c.expect("MAIL FROM:<x@remote.example>", 250)
        c.expect("RCPT TO:<temp@local.example>", 550, "5.1.1")
        c.expect("QUIT", 221)
    # its blob had refcount 1: removed with the account
    assert srv.query("SELECT COUNT(*) FROM blobs WHERE refcount <= 0")[0][0] == 0
    # every blob file left has its row, and every row its file
    on_disk = {os.path.basename(p) for p in srv.blob_files()}
    rows = {harness.msgid_to_qid(bytes(m)) for (m,) in srv.query("SELECT msgid FROM blobs")}
    assert on_disk == rows
