"""A plain SMTP session: banner, EHLO, delivery, the stored bytes and their
Received: header, PIPELINING and CHUNKING (BDAT)."""
import re
import smtplib
import subprocess

import harness
from harness import EXPECTED_EHLO, HOSTNAME, check_received, make_message, queued_id, split_received, stored_for

ALICE = "alice@local.example"
BOB = "bob@local.example"


def test_banner_and_ehlo_features(server):
    with server.smtp(banner=False) as c:
        b = c.banner()
        assert b.lines == ["%s ESMTP Strata" % HOSTNAME], b
        r = c.ehlo("client.example")
        assert r.lines[0].split()[0] == HOSTNAME, r
        assert sorted(r.lines[1:]) == sorted(EXPECTED_EHLO), r.lines
        # HELO gives a one-line reply and no extensions
        r = c.cmd("HELO client.example")
        assert r.code == 250 and len(r.lines) == 1, r
        c.expect("NOOP", 250, "2.0.0")
        c.expect("RSET", 250, "2.0.0")
        r = c.cmd("VRFY alice")
        assert r.code == 252, r          # smtp.vrfy=cannot: never reveals accounts
        r = c.cmd("QUIT")
        assert r.code == 221 and r.enhanced == "2.0.0", r
        assert c.at_eof()


def test_smtplib_delivery_exact_bytes(server):
    before = server.mail_uids(ALICE)
    msg = make_message(to=ALICE, body="Line one\r\n.leading dot\r\n..two dots\r\n.\r\nlast line\r\n")
    with smtplib.SMTP("127.0.0.1", server.smtp_port, local_hostname="client.example", timeout=30) as s:
        code, _ = s.ehlo()
        assert code == 250
        for ext in ("pipelining", "size", "8bitmime", "enhancedstatuscodes", "starttls", "smtputf8",
                    "chunking"):
            assert s.has_extn(ext), ext
        assert s.esmtp_features["size"] == "52428800"
        assert s.mail("sender@remote.example")[0] == 250
        assert s.rcpt(ALICE)[0] == 250
        code, text = s.data(msg)
        assert code == 250, text
        m = harness.QUEUED_RE.match(text.decode())
        assert m, text
        qid = m.group(1)
    after = server.mail_uids(ALICE)
    assert len(after) == len(before) + 1, (before, after)
    assert set(before) < set(after)
    new_uid = max(after)
    raw = server.mail_cat(ALICE, new_uid)
    field, rest = split_received(raw)
    check_received(field, qid)
    assert rest == msg, (rest, msg)
    # the blob file is named by the queue id and starts with the same bytes
    with open(server.blob_path(qid), "rb") as f:
        assert f.read(len(raw)) == raw


def test_swaks_pipelined(server):
    tag = "swaks-plain-%d" % harness._seq[0]
    harness._seq[0] += 1
    p = subprocess.run(["swaks", "--server", "127.0.0.1:%d" % server.smtp_port, "--pipeline",
                        "--helo", "swaks.example", "--from", "swaks@remote.example",
                        "--to", "%s,%s" % (ALICE, BOB), "--header", "Subject: %s" % tag,
                        "--body", "Body of %s" % tag, "--timeout", "30"],
                       capture_output=True, text=True, timeout=60 * harness.SLOW)
    assert p.returncode == 0, p.stdout + p.stderr
    m = re.search(r"<[-~]  250 2\.0\.0 Ok: queued as ([0-9A-Z]{26})", p.stdout)
    assert m, p.stdout
    qid = m.group(1)
    for rcpt in (ALICE, BOB):
        field, rest = split_received(stored_for(server, rcpt, qid))
        check_received(field, qid)
        assert b"\r\nSubject: " + tag.encode() + b"\r\n" in rest
        assert b"\r\n\r\nBody of " + tag.encode() + b"\r\n" in rest, rest
        assert rest.endswith(b"\r\n") and b"\n" not in rest.replace(b"\r\n", b""), rest
    assert server.blob_row(qid)[0] == 2


def test_uids_increase(server):
    uids_before = server.mail_uids(BOB)
    for _ in range(3):
        server.deliver([BOB])
    uids = server.mail_uids(BOB)
    assert len(uids) == len(uids_before) + 3
    assert uids == sorted(uids) and len(set(uids)) == len(uids)


def test_8bitmime_and_smtputf8(server):
    body = "Grüße aus Köln – ünïcödé\r\n".encode()
    msg = make_message(to=ALICE, body=body)
    with server.smtp() as c:
        c.ehlo()
        c.expect("MAIL FROM:<jörg@remote.example> BODY=8BITMIME SMTPUTF8".encode(), 250)
        c.expect("RCPT TO:<%s>" % ALICE, 250)
        c.expect("DATA", 354)
        c.send(msg + b".\r\n")
        qid = queued_id(c.reply())
    raw = stored_for(server, ALICE, qid)
    assert split_received(raw)[1] == msg


def test_pipelining_replies_in_order(server):
    before_alice = len(server.mail_uids(ALICE))
    before_bob = len(server.mail_uids(BOB))
    with server.smtp() as c:
        c.ehlo()
        c.send("MAIL FROM:<p@remote.example>\r\nRCPT TO:<%s>\r\nRCPT TO:<nobody@local.example>\r\n"
               "RCPT TO:<%s>\r\nDATA\r\n" % (ALICE, BOB))
        replies = [c.reply() for _ in range(5)]
        assert [r.code for r in replies] == [250, 250, 550, 250, 354], replies
        assert replies[2].enhanced == "5.1.1"
        msg = make_message(to=ALICE)
        # the message, a second transaction and QUIT, in one write
        c.send(msg + b".\r\nRSET\r\nMAIL FROM:<q@remote.example>\r\nRCPT TO:<%s>\r\nNOOP\r\nQUIT\r\n"
               % ALICE.encode())
        replies = [c.reply() for _ in range(6)]
        assert [r.code for r in replies] == [250, 250, 250, 250, 250, 221], replies
        queued_id(replies[0])
        assert c.at_eof()
    assert len(server.mail_uids(ALICE)) == before_alice + 1
    assert len(server.mail_uids(BOB)) == before_bob + 1


def bdat_session(server, chunks, rcpts=(ALICE,), pipelined=False):
    """Sends chunks with BDAT (the last with LAST); returns (replies, data)."""
    with server.smtp() as c:
        c.ehlo()
        c.expect("MAIL FROM:<b@remote.example>", 250)
        for r in rcpts:
            c.expect("RCPT TO:<%s>" % r, 250)
        replies = []
        wire = b""
        for i, chunk in enumerate(chunks):
            last = " LAST" if i == len(chunks) - 1 else ""
            piece = b"BDAT %d%s\r\n" % (len(chunk), last.encode()) + chunk
            if pipelined:
                wire += piece
            else:
                c.send(piece)
                replies.append(c.reply())
        if pipelined:
            c.send(wire)
            replies = [c.reply() for _ in chunks]
        c.expect("QUIT", 221)
    return replies, b"".join(chunks)


def test_bdat_chunks_stored_exactly(server):
    msg = make_message(to=ALICE, body="a\r\n.\r\n..x\r\n.y\r\nlast line\r\n" + "z" * 500 + "\r\n")
    # chunk boundaries fall inside CRLF pairs and inside "\r\n.\r\n"
    cut = [0, 1, 37, msg.index(b"\r\n.\r\n") + 1, msg.index(b"\r\n.\r\n") + 3, len(msg) - 1, len(msg)]
    chunks = [msg[a:b] for a, b in zip(cut, cut[1:])]
    assert b"".join(chunks) == msg
    replies, data = bdat_session(server, chunks)
    assert all(r.code == 250 for r in replies), replies
    qid = queued_id(replies[-1])
    raw = stored_for(server, ALICE, qid)
    assert split_received(raw)[1] == msg


def test_bdat_pipelined_and_zero_last(server):
    msg = make_message(to=ALICE, size=3000)
    chunks = [msg[:1000], msg[1000:2000], msg[2000:], b""]
    replies, _ = bdat_session(server, chunks, pipelined=True)
    assert [r.code for r in replies] == [250, 250, 250, 250], replies
    qid = queued_id(replies[-1])
    assert split_received(stored_for(server, ALICE, qid))[1] == msg


def test_bdat_without_transaction_skips_the_chunk(server):
    """A rejected BDAT still consumes its bytes: they are never read as commands."""
    before = len(server.mail_uids(BOB))
    smuggled = b"MAIL FROM:<x@remote.example>\r\nRCPT TO:<%s>\r\n" % BOB.encode()
    with server.smtp() as c:
        c.ehlo()
        c.send(b"BDAT %d LAST\r\n" % len(smuggled) + smuggled)
        r = c.reply()
        assert r.code == 503, r
        r = c.cmd("NOOP")
        assert r.code == 250, r
        # DATA and BDAT do not mix in one transaction
        c.expect("MAIL FROM:<y@remote.example>", 250)
        c.expect("RCPT TO:<%s>" % BOB, 250)
        c.send(b"BDAT 5\r\nhello")
        assert c.reply().code == 250
        r = c.cmd("DATA")
        assert r.code == 503, r
        c.expect("RSET", 250)
        c.expect("QUIT", 221)
    assert len(server.mail_uids(BOB)) == before


def test_bdat_bad_size_argument(server):
    """No chunk size can be read from these, so the server cannot know where
    the next command starts: it answers 501 and hangs up."""
    for bad in ("BDAT", "BDAT -1", "BDAT x LAST", "BDAT LAST", "BDAT 99999999999999999999999"):
        with server.smtp() as c:
            c.ehlo()
            c.expect("MAIL FROM:<y@remote.example>", 250)
            c.expect("RCPT TO:<%s>" % BOB, 250)
            r = c.cmd(bad)
            assert r.code == 501 and r.enhanced == "5.5.4", (bad, r)
            assert c.at_eof(), bad
