"""MIME rows compressed with a zstd dictionary trained on the index's own
mail (src/store/store_mime_dict.c, docs/STORAGE.md "MIME cache").

With a low store.mime_dict_rows, a first batch of varied messages (the
tests/data/mime corpus and generated mail of one domain: senders, subjects,
boundaries, MIME shapes) is delivered by SMTP and fetched (ENVELOPE,
BODYSTRUCTURE, BODY[1]) while no dictionary exists.  The same messages are
delivered again, which crosses the threshold; the tier mover's maintenance
trains a dictionary and re-packs the raw rows.  Every message, old copy and
new, must then FETCH byte for byte as before, and again after a restart.
The dictionary is observed through a read-only connection to the index."""
import imaplib
import os
import re

import pytest

import harness

ALICE = "alice@local.example"
PASSWORD = "secret-pw"   # the suite's shared hash (harness.shared_hash)
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "mime")
THRESHOLD = 150
GENERATED = 130
MARK = 0xD1              # first byte of a compressed row


@pytest.fixture(scope="module")
def srv(module_factory):
    port = harness.free_port()
    s = module_factory.new(options={"imap.listen": "127.0.0.1:%d" % port,
                                    "store.mime_dict_rows": str(THRESHOLD),
                                    "store.fsync": "no"}, populate=True)
    s.imap_port = port
    return s


def corpus():
    out = []
    for name in sorted(f for f in os.listdir(DATA) if f.endswith(".eml")):
        with open(os.path.join(DATA, name), "rb") as f:
            out.append(re.sub(rb"(?<!\r)\n", b"\r\n", f.read()))
    return out


SENDERS = ['"Alice Martin" <alice.martin@partner.example>', "bob@local.example",
           "Newsletter <news@lists.shop.example>", '"Support" <support@helpdesk.example.org>',
           "noreply@notifications.social.example",
           "=?UTF-8?Q?Ren=C3=A9_Dupont?= <rene@mail.example.fr>"]
SUBJECTS = ["Re: quarterly report", "Your order has shipped", "Meeting tomorrow at 10",
            "=?UTF-8?B?UsOpc3Vtw6kgZHUgbW9pcw==?=", "Invoice", "Fwd: photos"]


def generated(n):
    sender = SENDERS[n % len(SENDERS)]
    subject = "%s #%d" % (SUBJECTS[(n * 7) % len(SUBJECTS)], n)
    head = ("From: %s\r\nTo: alice@local.example\r\nSubject: %s\r\n"
            "Date: Mon, %d Jan 2024 10:%02d:00 +0000\r\n"
            "Message-ID: <%08x.%d@mx%d.partner.example>\r\nMIME-Version: 1.0\r\n"
            % (sender, subject, 1 + n % 28, n % 60, n * 2654435761 % 2**32, n, n % 4))
    shape = n % 3
    if shape == 0:
        body = "Content-Type: text/plain; charset=utf-8\r\n\r\nHello %d\r\n" % n
    elif shape == 1:
        b = "----=_Part_%d_%d" % (n % 7, n * 31)
        body = ("Content-Type: multipart/alternative; boundary=\"%s\"\r\n\r\n"
                "--%s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhi %d\r\n"
                "--%s\r\nContent-Type: text/html; charset=utf-8\r\n"
                "Content-Transfer-Encoding: quoted-printable\r\n\r\n<p>hi %d</p>\r\n--%s--\r\n"
                % (b, b, n, b, n, b))
    else:
        b = "b%d" % n
        body = ("Content-Type: multipart/mixed; boundary=\"%s\"\r\n\r\n--%s\r\n"
                "Content-Type: text/plain\r\n\r\nsee attached %d\r\n--%s\r\n"
                "Content-Type: application/pdf; name=\"doc%d.pdf\"\r\n"
                "Content-Disposition: attachment; filename=\"doc%d.pdf\"\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--%s--\r\n"
                % (b, b, n, b, n, n, b))
    return (head + body).encode()


MESSAGES = corpus() + [generated(n) for n in range(GENERATED)]


def ok(resp):
    typ, data = resp
    assert typ == "OK", (typ, data)
    return data




def fetch_all(srv):
    """{uid: the FETCH response's items without sequence number and UID}."""
    m = imaplib.IMAP4("127.0.0.1", srv.imap_port, timeout=60 * harness.SLOW)
    try:
        m.login(ALICE, PASSWORD)
        ok(m.select("INBOX"))
        uids = sorted(int(x) for x in ok(m.uid("SEARCH", None, "ALL"))[0].split())
        out = {}
        for uid in uids:
            text = harness.imap_wire(ok(m.uid("FETCH", str(uid), "(ENVELOPE BODYSTRUCTURE BODY.PEEK[1])")))
            text = re.sub(rb"^(\* )?\d+ (FETCH )?\(", b"", text)
            out[uid] = re.sub(rb"UID \d+ ?", b"", text)
        return out
    finally:
        m.logout()


def dicts(srv):
    return srv.query("SELECT count(*) FROM mime_dicts")[0][0]


def raw_rows(srv):
    return srv.query("SELECT count(*) FROM mime WHERE substr(packed, 1, 1) <> ?", (bytes([MARK]),))[0][0]


def test_compressed_rows_fetch_as_before(srv):
    n = len(MESSAGES)
    assert n < THRESHOLD <= 2 * n
    for msg in MESSAGES:
        srv.deliver([ALICE], msg)
    before = fetch_all(srv)
    assert len(before) == n
    assert dicts(srv) == 0, "trained below store.mime_dict_rows"
    assert raw_rows(srv) == n

    for msg in MESSAGES:
        srv.deliver([ALICE], msg)
    harness.wait_until(lambda: dicts(srv) >= 1, 120 * harness.SLOW, what="a trained MIME dictionary")
    harness.wait_until(lambda: raw_rows(srv) == 0, 120 * harness.SLOW, what="every row re-packed")
    (rows, created), = srv.query("SELECT rows, created FROM mime_dicts")
    assert rows >= THRESHOLD and created > 0
    raw, packed = srv.query("SELECT count(*), sum(length(packed)) FROM mime")[0]
    assert raw == 2 * n

    def check(label):
        after = fetch_all(srv)
        assert len(after) == 2 * n, label
        uids = sorted(after)
        for i, uid in enumerate(uids):
            want = before[uids[i % n]]
            assert after[uid] == want, (label, uid, after[uid], want)

    check("after training")
    srv.restart()
    check("after a restart")
    # A newer process reads the rows of an older one's dictionary: no new
    # training below 10x the rows, no damaged rows recomputed.
    assert dicts(srv) == 1
    assert "does not decode" not in srv.read_log()
