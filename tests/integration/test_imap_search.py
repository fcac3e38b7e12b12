"""SEARCH with MIME and charset decoding, SEARCHRES, SORT and THREAD against
the real daemon (imaplib and raw lines).

Messages are APPENDed to their own mailboxes so internal dates are known.
Expected results were worked out by hand from RFC 3501 6.4.4 (matching on the
decoded text), RFC 5182 (the saved result), RFC 5256 (base subject, SORT keys,
ORDEREDSUBJECT and REFERENCES) and RFC 5957 (DISPLAYFROM, DISPLAYTO)."""
import base64
import imaplib
import re

import pytest

import harness

ALICE = "alice@local.example"
PASSWORD = "secret-pw"   # the suite's shared hash (harness.shared_hash)


@pytest.fixture(scope="module")
def srv(module_factory):
    port = harness.free_port()
    s = module_factory.new(options={"imap.listen": "127.0.0.1:%d" % port}, populate=True)
    s.imap_port = port
    return s


def login(srv):
    m = imaplib.IMAP4("127.0.0.1", srv.imap_port, timeout=60)
    m.login(ALICE, PASSWORD)
    return m


def ok(resp):
    typ, data = resp
    assert typ == "OK", (typ, data)
    return data


def crlf(text):
    if isinstance(text, str):
        text = text.encode("utf-8")
    return re.sub(rb"(?<!\r)\n", b"\r\n", text)


def fill(m, mailbox, messages, dates=None):
    """Creates `mailbox` and appends the messages (bytes) in order."""
    ok(m.create(mailbox))
    for i, msg in enumerate(messages):
        date = dates[i] if dates else '"01-May-2021 10:%02d:%02d +0000"' % (i // 60, i % 60)
        ok(m.append(mailbox, None, date, msg))
    ok(m.select(mailbox))


def search(m, *criteria, literal=None, charset="UTF-8"):
    """SEARCH CHARSET charset criteria [literal]: the sequence numbers."""
    if literal is not None:
        m.literal = literal.encode("utf-8")
    data = ok(m.search(charset, *criteria))
    return [int(x) for x in data[0].split()]


# ---- decoded SEARCH ------------------------------------------------------------------------

def b64(data):
    return base64.b64encode(data).decode("ascii")


MIME_MSGS = [
    # 1: UTF-8 encoded words, base64 UTF-8 body
    crlf("From: =?ISO-8859-1?Q?Fran=E7ois_Dupr=E9?= <francois@example.org>\n"
         "To: team@example.org\n"
         "Subject: =?UTF-8?B?w4l0w6kgY2hhdWQ=?=\n"
         "X-Note: =?UTF-8?Q?h=C3=A9llo?= =?UTF-8?Q?_w=C3=B6rld?=\n"
         "MIME-Version: 1.0\n"
         "Content-Type: text/plain; charset=utf-8\n"
         "Content-Transfer-Encoding: base64\n\n"
         + b64("Le café est très bon.\n".encode("utf-8")) + "\n"),
    # 2: KOI8-R subject and quoted-printable KOI8-R body
    crlf("From: ivan@example.ru\n"
         "To: team@example.org\n"
         "Subject: =?KOI8-R?B?" + b64("Привет".encode("koi8_r")) + "?=\n"
         "MIME-Version: 1.0\n"
         "Content-Type: text/plain; charset=KOI8-R\n"
         "Content-Transfer-Encoding: quoted-printable\n\n"
         "=F0=D2=C9=D7=C5=D4 =CD=C9=D2, =\n=CB=C1=CB =C4=C5=CC=C1?\n"),
    # 3: Shift_JIS subject (split in two words) and base64 Shift_JIS body
    crlf("From: =?Shift_JIS?B?" + b64("山田".encode("shift_jis")) + "?= <yamada@example.jp>\n"
         "To: team@example.org\n"
         "Subject: =?Shift_JIS?B?" + b64("テス".encode("shift_jis")) + "?=\n"
         " =?Shift_JIS?B?" + b64("ト".encode("shift_jis")) + "?=\n"
         "MIME-Version: 1.0\n"
         "Content-Type: text/plain; charset=Shift_JIS\n"
         "Content-Transfer-Encoding: base64\n\n"
         + b64("日本語のテキストです".encode("shift_jis")) + "\n"),
    # 4: multipart: latin-1 QP text, a base64 image whose bytes spell "zebra"
    crlf("From: shop@example.com\n"
         "To: team@example.org\n"
         "Subject: order\n"
         "MIME-Version: 1.0\n"
         "Content-Type: multipart/mixed; boundary=\"b1\"\n\n"
         "preamble zebra\n"
         "--b1\n"
         "Content-Type: text/plain; charset=iso-8859-1\n"
         "Content-Transfer-Encoding: quoted-printable\n\n"
         "Un caf=E9 cr=E8me, s'il vous pla=EEt.\n"
         "--b1\n"
         "Content-Type: image/png\n"
         "Content-Transfer-Encoding: base64\n\n"
         + b64(b"\x89PNG zebra stripes \x00\x01") + "\n"
         "--b1--\n"
         "epilogue zebra\n"),
    # 5: RFC 2231 charset parameter, 8bit latin-1 body
    crlf(b"From: school@example.fr\r\n"
         b"To: team@example.org\r\n"
         b"Subject: bulletin\r\n"
         b"MIME-Version: 1.0\r\n"
         b"Content-Type: text/plain; charset*0=iso-8859; charset*1=-1\r\n"
         b"Content-Transfer-Encoding: 8bit\r\n\r\n"
         b"Un \xe9l\xe8ve tr\xe8s \xc9TOURDI.\r\n"),
]


@pytest.fixture(scope="module")
def mime_box(srv):
    m = login(srv)
    fill(m, "decoded", MIME_MSGS)
    m.logout()
    return "decoded"


SEARCH_CASES = [
    # label, criteria, literal, expected sequence numbers
    ("utf-8 subject", ("SUBJECT",), "été", [1]),
    ("utf-8 subject, other case", ("SUBJECT",), "ÉTÉ", [1]),
    ("latin-1 from", ("FROM",), "françois", [1]),
    ("latin-1 from, upper case", ("FROM",), "FRANÇOIS DUPRÉ", [1]),
    ("from address still matches", ("FROM",), "francois@example", [1]),
    ("adjacent words joined", ("HEADER", "X-Note"), "héllo wörld", [1]),
    ("base64 utf-8 body", ("BODY",), "CAFÉ EST", [1]),
    ("koi8-r subject", ("SUBJECT",), "привет", [2]),
    ("koi8-r qp body, soft break", ("BODY",), "МИР, КАК", [2]),
    ("shift_jis split subject", ("SUBJECT",), "テスト", [3]),
    ("shift_jis from", ("FROM",), "山田", [3]),
    ("shift_jis base64 body", ("BODY",), "日本語のテキスト", [3]),
    ("latin-1 qp part of a multipart", ("BODY",), "café crème", [4]),
    ("café in two messages", ("TEXT",), "café", [1, 4]),
    ("rfc 2231 charset", ("BODY",), "élève très étourdi", [5]),
    ("base64 image not searched", ("BODY",), "zebra", []),
    ("nor by TEXT, nor preamble/epilogue", ("TEXT",), "zebra", []),
    ("TEXT covers the decoded header", ("TEXT",), "françois", [1]),
    ("BODY does not", ("BODY",), "françois", []),
    ("greek folding finds nothing here", ("BODY",), "ΣΟΦΊΑ", []),
    ("ascii header key", ("SUBJECT",), "ORDER", [4]),
    ("not", ("NOT", "BODY"), "café", [2, 3, 5]),
]


@pytest.mark.parametrize("label,criteria,literal,want", SEARCH_CASES, ids=[c[0] for c in SEARCH_CASES])
def test_decoded_search(srv, mime_box, label, criteria, literal, want):
    m = login(srv)
    ok(m.select(mime_box))
    got = search(m, *criteria, literal=literal)
    assert got == want, "%s: %r %r: want %r got %r" % (label, criteria, literal, want, got)
    m.logout()


def test_us_ascii_charset_and_no_charset(srv, mime_box):
    m = login(srv)
    ok(m.select(mime_box))
    assert search(m, "SUBJECT", "bulletin", charset="US-ASCII") == [5]
    assert [int(x) for x in ok(m.search(None, "BODY", "stripes"))[0].split()] == []
    m.logout()


def test_badcharset(srv, mime_box):
    m = login(srv)
    ok(m.select(mime_box))
    typ, data = m.search("ISO-8859-1", "SUBJECT", "x")
    assert typ == "NO", (typ, data)
    assert b"[BADCHARSET (UTF-8 US-ASCII)]" in data[0], data
    m.logout()


def test_large_attachment_streamed(srv):
    """A text part of 3 MB: the needle at its very end is found (the body
    is streamed in chunks; a match across chunk boundaries works)."""
    m = login(srv)
    filler = ("abcdefghij" * 7 + "\n") * 42000
    msg = crlf("From: big@example.com\nSubject: big\nContent-Type: text/plain\n\n" + filler + "NEEDLE-AT-END\n")
    fill(m, "big", [msg])
    assert search(m, "BODY", "needle-at-end") == [1]
    assert search(m, "BODY", "needle-not-there") == []
    m.logout()


def test_long_header(srv):
    """A 40 KB header (read in several pieces): a field at its end is found,
    and the body is not taken for header text."""
    m = login(srv)
    fields = "".join("X-Filler-%04d: %s\n" % (i, "f" * 60) for i in range(600))
    msg = crlf("From: long@example.com\n" + fields + "Subject: =?UTF-8?Q?late_s=C3=BCbject?=\n\n"
               "X-Not-A-Header: body text\n")
    fill(m, "longhdr", [msg])
    assert search(m, "SUBJECT", literal="SÜBJECT") == [1]
    assert search(m, "HEADER", "X-Filler-0599", "\"\"") == [1]
    assert search(m, "HEADER", "X-Not-A-Header", "\"\"") == []
    assert search(m, "BODY", "X-Not-A-Header") == [1]
    m.logout()


def test_header_end_across_read_pieces(srv):
    """The blank line after the header falls around the 16 KiB read step:
    the header ends there, never later or earlier."""
    m = login(srv)
    msgs = []
    for shift in range(-3, 4):
        head = "From: edge@example.com\r\nSubject: edge %d\r\n" % shift
        pad_to = 16384 + shift - len(head) - len("X-Pad: \r\n") - 2
        head += "X-Pad: " + "p" * pad_to + "\r\n"
        msg = (head + "\r\nX-Body: yes\r\n").encode()
        assert msg.index(b"\r\n\r\n") + 4 == 16384 + shift
        msgs.append(msg)
    fill(m, "edges", msgs)
    assert search(m, "HEADER", "X-Pad", "\"\"") == list(range(1, 8))
    assert search(m, "HEADER", "X-Body", "\"\"") == []
    assert search(m, "BODY", "\"X-Body: yes\"") == list(range(1, 8))
    m.logout()


def test_recent_new_old(srv):
    """RECENT, NEW and OLD follow the session's \\Recent: the first session
    to select the mailbox has the messages as recent, a second one does not."""
    m = login(srv)
    fill(m, "recent", [crlf("Subject: r%d\n\nb\n" % i) for i in range(3)])
    ok(m.store("1", "+FLAGS", "(\\Seen)"))
    assert [int(x) for x in ok(m.search(None, "RECENT"))[0].split()] == [1, 2, 3]
    assert [int(x) for x in ok(m.search(None, "NEW"))[0].split()] == [2, 3]
    assert [int(x) for x in ok(m.search(None, "OLD"))[0].split()] == []
    m2 = login(srv)
    ok(m2.select("recent"))
    assert [int(x) for x in ok(m2.search(None, "RECENT"))[0].split()] == []
    assert [int(x) for x in ok(m2.search(None, "OLD"))[0].split()] == [1, 2, 3]
    m2.logout()
    m.logout()


# ---- SEARCHRES -------------------------------------------------------------------------------

def raw_cmd(m, *args):
    """A command imaplib does not know: returns (typ, untagged-lines)."""
    typ, data = m._simple_command(*args)
    return typ, data


def test_searchres_fetch_and_expunge(srv):
    m = login(srv)
    msgs = [crlf("From: a@example.com\nSubject: item %d%s\n\nbody\n" % (i, " keep" if i % 2 else ""))
            for i in range(1, 7)]
    fill(m, "saved", msgs)
    caps = ok(m.capability())[0].decode()
    for cap in ("SEARCHRES", "SORT", "SORT=DISPLAY", "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES"):
        assert cap in caps.split(), caps
    # SAVE alone: no ESEARCH response, only OK.
    typ, data = raw_cmd(m, "SEARCH", "RETURN", "(SAVE)", "SUBJECT", "keep")
    assert typ == "OK", data
    assert "ESEARCH" not in m.untagged_responses, m.untagged_responses
    data = ok(m.fetch("$", "(UID)"))
    assert [int(re.match(rb"(\d+) ", d).group(1)) for d in data] == [1, 3, 5], data
    # $ in UID FETCH, SEARCH and UID SEARCH means the same messages.
    data = ok(m.uid("FETCH", "$", "(FLAGS)"))
    assert len(data) == 3, data
    assert [int(x) for x in ok(m.search(None, "$"))[0].split()] == [1, 3, 5]
    assert [int(x) for x in ok(m.search(None, "UID", "$", "SUBJECT", "item"))[0].split()] == [1, 3, 5]
    # STORE $ and the expunge of one saved message: it drops out.
    ok(m.store("3", "+FLAGS", "(\\Deleted)"))
    ok(m.expunge())
    data = ok(m.fetch("$", "(UID)"))
    assert [int(re.match(rb"(\d+) ", d).group(1)) for d in data] == [1, 4], data
    ok(m.store("$", "+FLAGS", "(\\Flagged)"))
    assert [int(x) for x in ok(m.search(None, "FLAGGED"))[0].split()] == [1, 4]
    # COPY $.
    ok(m.create("saved-copy"))
    ok(m.copy("$", "saved-copy"))
    typ, data = m.status("saved-copy", "(MESSAGES)")
    assert b"MESSAGES 2" in data[0], data
    # MIN and MAX alone save only those; ESEARCH is sent.
    typ, data = raw_cmd(m, "SEARCH", "RETURN", "(SAVE MIN MAX)", "ALL")
    assert typ == "OK"
    es = m.untagged_responses.pop("ESEARCH", [b""])[0]
    assert b"MIN 1" in es and b"MAX 5" in es, es
    data = ok(m.fetch("$", "(UID)"))
    assert [int(re.match(rb"(\d+) ", d).group(1)) for d in data] == [1, 5], data
    # A failed SEARCH with SAVE empties $.
    typ, data = raw_cmd(m, "SEARCH", "RETURN", "(SAVE)", "CHARSET", "KOI8-R", "ALL")
    assert typ == "NO", data
    assert [int(x) for x in ok(m.search(None, "$"))[0].split()] == []
    # A new SELECT starts with an empty $.
    raw_cmd(m, "SEARCH", "RETURN", "(SAVE)", "ALL")
    ok(m.select("saved"))
    assert [int(x) for x in ok(m.search(None, "$"))[0].split()] == []
    m.logout()


# ---- SORT ------------------------------------------------------------------------------------

def sort_msg(subject, frm, to=None, cc=None, date=None, body_len=100):
    h = "From: %s\n" % frm
    if to:
        h += "To: %s\n" % to
    if cc:
        h += "Cc: %s\n" % cc
    if date:
        h += "Date: %s\n" % date
    h += "Subject: %s\n\n" % subject
    return crlf(h + "x" * body_len + "\n")


SORT_MSGS = [
    sort_msg("Re: [list] Beta", "Zed <aaron@a.example>", "bob@b.example", "carol@c.example",
             "Fri, 3 Jan 2020 10:00:00 +0000", 300),
    sort_msg("Alpha", "=?UTF-8?Q?Mil=C3=A8ne?= <emile@x.example>", '"Adam" <zz@b.example>', None,
             "Wed, 1 Jan 2020 23:30:00 -0500", 100),
    sort_msg("Fwd: gamma (fwd)", "alice@y.example", "Yann <aaa@b.example>", None,
             "Thu, 02 Jan 2020 12:00:00 +0100", 200),
    sort_msg("[list] Re: alpha", "=?ISO-8859-1?Q?=C9mile?= <bob@z.example>", None, None, None, 400),
]
SORT_DATES = ['"01-May-2021 10:00:00 +0000"', '"03-May-2021 10:00:00 +0000"',
              '"02-May-2021 10:00:00 +0000"', '"04-May-2021 10:00:00 +0000"']

SORT_CASES = [
    ("ARRIVAL", [1, 3, 2, 4]),
    ("REVERSE ARRIVAL", [4, 2, 3, 1]),
    ("DATE", [3, 2, 1, 4]),   # 2 is 2 Jan 04:30 UTC, 3 is 2 Jan 11:00 UTC... see below
    ("SUBJECT", [2, 4, 1, 3]),
    ("REVERSE SUBJECT", [3, 1, 2, 4]),
    ("FROM", [1, 3, 4, 2]),
    ("DISPLAYFROM", [3, 4, 2, 1]),   # alice@y.example, Émile (sorts as E), Milène, Zed
    ("TO", [4, 3, 1, 2]),
    ("DISPLAYTO", [4, 2, 1, 3]),
    ("CC", [2, 3, 4, 1]),
    ("SIZE", [2, 3, 1, 4]),
    ("REVERSE SIZE", [4, 1, 3, 2]),
    ("SUBJECT REVERSE DATE", [4, 2, 1, 3]),
]
# DATE: message 2 is "1 Jan 2020 23:30 -0500" = 2 Jan 04:30 UTC; message 3 is
# "2 Jan 12:00 +0100" = 2 Jan 11:00 UTC; message 1 is 3 Jan; message 4 has no
# Date: and sorts by its internal date (2021).
SORT_CASES[2] = ("DATE", [2, 3, 1, 4])


@pytest.fixture(scope="module")
def sort_box(srv):
    m = login(srv)
    fill(m, "sorting", SORT_MSGS, SORT_DATES)
    m.logout()
    return "sorting"


@pytest.mark.parametrize("criteria,want", SORT_CASES, ids=[c[0] for c in SORT_CASES])
def test_sort(srv, sort_box, criteria, want):
    m = login(srv)
    ok(m.select(sort_box))
    data = ok(m.sort("(%s)" % criteria, "UTF-8", "ALL"))
    got = [int(x) for x in data[0].split()]
    assert got == want, "SORT (%s): want %r got %r" % (criteria, want, got)
    m.logout()


def test_uid_sort_and_search_keys(srv, sort_box):
    m = login(srv)
    ok(m.select(sort_box))
    uids = {}
    for d in ok(m.fetch("1:*", "(UID)")):
        seq, uid = re.match(rb"(\d+) \(UID (\d+)\)", d).groups()
        uids[int(seq)] = int(uid)
    typ, data = m.uid("SORT", "(SUBJECT)", "UTF-8", "ALL")
    assert typ == "OK"
    assert [int(x) for x in data[0].split()] == [uids[s] for s in (2, 4, 1, 3)], data
    data = ok(m.sort("(ARRIVAL)", "UTF-8", "SUBJECT", "alpha"))
    assert [int(x) for x in data[0].split()] == [2, 4], data
    data = ok(m.sort("(ARRIVAL)", "UTF-8", "SUBJECT", "nothing-like-this"))
    assert data == [None] or data[0] in (b"", None), data
    typ, data = m.sort("(ARRIVAL)", "KOI8-R", "ALL")
    assert typ == "NO" and b"BADCHARSET" in data[0], data
    for bad in ("(REVERSE)", "(FOO)", "(REVERSE REVERSE DATE)"):
        with pytest.raises(imaplib.IMAP4.error, match="BAD"):
            m.sort(bad, "UTF-8", "ALL")
    m.logout()


# ---- THREAD ----------------------------------------------------------------------------------

def thread_msg(n, msgid, subject, refs=None, irt=None):
    h = "From: p%d@example.com\nDate: Mon, %d Mar 2020 10:00:00 +0000\n" % (n, n)
    if msgid:
        h += "Message-ID: %s\n" % msgid
    if refs:
        h += "References: %s\n" % refs
    if irt:
        h += "In-Reply-To: %s\n" % irt
    h += "Subject: %s\n\nbody %d\n" % (subject, n)
    return crlf(h)


THREAD_MSGS = [
    thread_msg(1, "<a@x>", "Plan"),
    thread_msg(2, "<b@x>", "Re: Plan", refs="<a@x>"),
    thread_msg(3, "<c@x>", "Re: Plan", refs="<a@x>\n <b@x>"),
    thread_msg(4, "<d@x>", "Lost", refs="<missing@x>"),            # parent never arrived
    thread_msg(5, "<e@x>", "Re: Lost", refs="<missing@x>"),        # its sibling: a dummy parent
    thread_msg(6, "<f@x>", "Re: Plan"),                             # subject-only: joins "Plan"
    thread_msg(7, "<g@x>", "Re: Plan", irt="<b@x> (reply to b)"),  # In-Reply-To only
    thread_msg(8, "<h@x>", "Other"),
    thread_msg(9, "<a@x>", "Dup"),                                  # a duplicate Message-ID
]


@pytest.fixture(scope="module")
def thread_box(srv):
    m = login(srv)
    fill(m, "threads", THREAD_MSGS)
    m.logout()
    return "threads"


def test_thread_references(srv, thread_box):
    m = login(srv)
    ok(m.select(thread_box))
    data = ok(m.thread("REFERENCES", "UTF-8", "ALL"))
    assert data[0] == b"(1 (2 (3)(7))(6))((4)(5))(8)(9)", data
    # UID THREAD names UIDs.
    uids = {}
    for d in ok(m.fetch("1:*", "(UID)")):
        seq, uid = re.match(rb"(\d+) \(UID (\d+)\)", d).groups()
        uids[int(seq)] = int(uid)
    typ, data = m.uid("THREAD", "REFERENCES", "UTF-8", "ALL")
    want = "(%d (%d (%d)(%d))(%d))((%d)(%d))(%d)(%d)" % tuple(uids[i] for i in (1, 2, 3, 7, 6, 4, 5, 8, 9))
    assert typ == "OK" and data[0] == want.encode(), (want, data)
    # With a search program: the missing parent's thread alone.
    data = ok(m.thread("REFERENCES", "UTF-8", "SUBJECT", "lost"))
    assert data[0] == b"((4)(5))", data
    data = ok(m.thread("REFERENCES", "UTF-8", "SUBJECT", "no-such-subject"))
    assert data == [None] or data[0] in (b"", None), data
    m.logout()


def test_thread_orderedsubject(srv, thread_box):
    m = login(srv)
    ok(m.select(thread_box))
    data = ok(m.thread("ORDEREDSUBJECT", "UTF-8", "ALL"))
    assert data[0] == b"(1 (2)(3)(6)(7))(4 5)(8)(9)", data
    with pytest.raises(imaplib.IMAP4.error, match="BAD"):
        m.thread("NOSUCHALG", "UTF-8", "ALL")
    m.logout()


def test_thread_long_chain(srv):
    """300 replies each to the previous one: one deep thread, no recursion
    trouble, and the answer is the whole chain in order."""
    m = login(srv)
    msgs = [thread_msg(1, "<c1@x>", "Chain")]
    for i in range(2, 301):
        msgs.append(crlf("From: p@example.com\nDate: Mon, 2 Mar 2020 10:%02d:%02d +0000\n"
                         "Message-ID: <c%d@x>\nIn-Reply-To: <c%d@x>\nSubject: Re: Chain\n\nx\n"
                         % (i // 60, i % 60, i, i - 1)))
    fill(m, "chain", msgs)
    data = ok(m.thread("REFERENCES", "UTF-8", "ALL"))
    assert data[0] == ("(" + " ".join(str(i) for i in range(1, 301)) + ")").encode(), data[0][:200]
    m.logout()
