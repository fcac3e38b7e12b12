"""FETCH ENVELOPE, BODYSTRUCTURE, BODY and MIME part sections against the real
daemon, for every message of the corpus in tests/data/mime.

Each corpus message (LF in the repository, CRLF on the wire) is delivered by
SMTP; the expected ENVELOPE, BODYSTRUCTURE and BODY texts and part bytes in
<name>.expected were derived by hand from RFC 3501 (format: see
tests/unit/mime_test.c).  The SMTP server prepends a Received: field, which
changes no ENVELOPE, BODYSTRUCTURE or part text.

Also: the cache row written at delivery and at APPEND, the lazy computation
for a blob without a row (rows deleted behind the server's back, or dropped by
the schema v7 upgrade), a damaged row, the ALL and FULL macros, partial
fetches of parts, NIL for parts that do not exist, BAD for malformed section
numbers, and the size of the packed rows against the texts they give back."""
import imaplib
import os
import re
import sqlite3

import pytest

import harness

ALICE = "alice@local.example"
PASSWORD = "secret-pw"   # the suite's shared hash (harness.shared_hash)
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "mime")
CASES = sorted(f[:-4] for f in os.listdir(DATA) if f.endswith(".eml"))


@pytest.fixture(scope="module")
def srv(module_factory):
    port = harness.free_port()
    s = module_factory.new(options={"imap.listen": "127.0.0.1:%d" % port}, populate=True)
    s.imap_port = port
    return s


def login(srv):
    m = imaplib.IMAP4("127.0.0.1", srv.imap_port, timeout=30)
    m.login(ALICE, PASSWORD)
    return m


def ok(resp):
    typ, data = resp
    assert typ == "OK", (typ, data)
    return data


def unescape(s):
    out = bytearray()
    b = s.encode("utf-8")
    i = 0
    while i < len(b):
        if b[i:i + 2] == b"\\r":
            out += b"\r"
            i += 2
        elif b[i:i + 2] == b"\\n":
            out += b"\n"
            i += 2
        elif b[i:i + 2] == b"\\x" and i + 4 <= len(b):
            out.append(int(b[i + 2:i + 4], 16))
            i += 4
        else:
            out.append(b[i])
            i += 1
    return bytes(out)


def load_case(name):
    with open(os.path.join(DATA, name + ".eml"), "rb") as f:
        raw = f.read()
    msg = re.sub(rb"(?<!\r)\n", b"\r\n", raw)
    exp = {"PART": []}
    with open(os.path.join(DATA, name + ".expected"), encoding="utf-8") as f:
        for line in f.read().split("\n"):
            if not line or line.startswith("#"):
                continue
            key, _, rest = line.partition(" ")
            if key == "PART":
                exp["PART"].append(rest)
            else:
                exp[key] = unescape(rest)
    return msg, exp




def fetch_item(m, uid, item, name):
    """The text after '<name> ' in the response to UID FETCH uid (item)."""
    text = harness.imap_wire(ok(m.uid("FETCH", str(uid), "(%s)" % item)))
    key = b" " + name.encode() + b" "
    at = text.find(key)
    assert at >= 0, text
    assert text.endswith(b")"), text
    return text[at + len(key):-1]


def fetch_section(m, uid, section):
    """Bytes of BODY.PEEK[section], or None for NIL."""
    data = ok(m.uid("FETCH", str(uid), "(BODY.PEEK[%s])" % section))
    first = data[0]
    if isinstance(first, tuple):
        assert b"BODY[%s] {" % section.encode() in first[0], first
        return first[1]
    assert first.endswith(b"BODY[%s] NIL)" % section.encode()), first
    return None


def newest_uid(m):
    ok(m.select("INBOX"))
    return max(int(x) for x in ok(m.uid("SEARCH", None, "ALL"))[0].split())


def check_parts(m, uid, exp, name):
    for spec in exp["PART"]:
        sec, _, rest = spec.partition(" ")
        kind, _, val = rest.partition(" ")
        section = sec if kind in ("BODY", "NONE") else "%s.%s" % (sec, kind)
        got = fetch_section(m, uid, section)
        if kind == "NONE" or val == "NONE":
            assert got is None, (name, section, got)
        else:
            assert got == unescape(val), (name, section, got, unescape(val))


def check_structure(m, uid, exp, name):
    assert fetch_item(m, uid, "ENVELOPE", "ENVELOPE") == exp["ENVELOPE"], name
    assert fetch_item(m, uid, "BODYSTRUCTURE", "BODYSTRUCTURE") == exp["BODYSTRUCTURE"], name
    assert fetch_item(m, uid, "BODY", "BODY") == exp["BODY"], name


def mime_row(srv, qid):
    """The packed MIME row of a blob (src/mime/mime_pack.c), or None."""
    rows = srv.query("SELECT packed FROM mime WHERE blob_id ="
                     " (SELECT id FROM blobs WHERE msgid = ?)", (harness.qid_to_msgid(qid),))
    return bytes(rows[0][0]) if rows else None


def text_bytes(exp):
    return len(exp["ENVELOPE"]) + len(exp["BODYSTRUCTURE"]) + len(exp["BODY"])


@pytest.mark.parametrize("name", CASES)
def test_corpus_by_smtp(srv, name):
    msg, exp = load_case(name)
    qid, _ = srv.deliver([ALICE], msg)
    # computed by the queue's writer and committed with the blob row
    row = mime_row(srv, qid)
    assert row is not None and len(row) > 0
    m = login(srv)
    try:
        uid = newest_uid(m)
        check_structure(m, uid, exp, name)
        check_parts(m, uid, exp, name)
        # PEEK everywhere: still not \Seen
        assert b"\\Seen" not in harness.imap_wire(ok(m.uid("FETCH", str(uid), "FLAGS")))
    finally:
        m.logout()


def test_lazy_row_for_old_blobs(srv):
    """A blob without a row (older data) gets it computed on first FETCH."""
    msg, exp = load_case("nested_rfc822")
    qid, _ = srv.deliver([ALICE], msg)
    con = sqlite3.connect(os.path.join(srv.state_dir, "index.db"), timeout=10)
    try:
        con.execute("DELETE FROM mime")
        con.commit()
    finally:
        con.close()
    assert mime_row(srv, qid) is None
    m = login(srv)
    try:
        uid = newest_uid(m)
        # many messages at once: several pool jobs, output in order
        data = harness.imap_wire(ok(m.uid("FETCH", "1:*", "(UID BODYSTRUCTURE)")))
        assert data.count(b"BODYSTRUCTURE (") >= len(CASES)
        check_structure(m, uid, exp, "nested_rfc822")
        check_parts(m, uid, exp, "nested_rfc822")
    finally:
        m.logout()
    assert mime_row(srv, qid) is not None
    assert srv.query("SELECT count(*) FROM mime")[0][0] == srv.query("SELECT count(*) FROM blobs")[0][0]


def test_damaged_row_is_recomputed(srv):
    """A packed row that does not decode reads as missing: FETCH recomputes
    it from the blob, answers with the right texts, and replaces the row."""
    msg, exp = load_case("mixed_attachment")
    qid, _ = srv.deliver([ALICE], msg)
    good = mime_row(srv, qid)
    con = sqlite3.connect(os.path.join(srv.state_dir, "index.db"), timeout=10)
    try:
        con.execute("UPDATE mime SET packed = x'1001' WHERE blob_id ="
                    " (SELECT id FROM blobs WHERE msgid = ?)", (harness.qid_to_msgid(qid),))
        con.commit()
    finally:
        con.close()
    m = login(srv)
    try:
        uid = newest_uid(m)
        check_structure(m, uid, exp, "mixed_attachment")
        check_parts(m, uid, exp, "mixed_attachment")
    finally:
        m.logout()
    assert mime_row(srv, qid) == good


def test_append_computes_row(srv):
    msg, exp = load_case("alternative_related")
    m = login(srv)
    try:
        typ, data = m.append("Archive", None, None, msg)
        assert typ == "OK", data
        uid = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
        rows = srv.query("SELECT count(*) FROM mime m JOIN blobs b ON b.id = m.blob_id"
                         " WHERE b.size = ?", (len(msg),))
        assert rows[0][0] >= 1
        ok(m.select("Archive"))
        check_structure(m, uid, exp, "alternative_related")
        check_parts(m, uid, exp, "alternative_related")
        # the top-level MIME header of a single part is the message header
        assert fetch_section(m, uid, "HEADER") == msg.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    finally:
        m.logout()


def test_macros_partials_and_errors(srv):
    msg, exp = load_case("mixed_attachment")
    srv.deliver([ALICE], msg)
    m = login(srv)
    try:
        uid = newest_uid(m)
        text = harness.imap_wire(ok(m.uid("FETCH", str(uid), "ALL")))
        assert b"FLAGS (" in text and b"INTERNALDATE " in text and b"RFC822.SIZE " in text
        assert b"ENVELOPE " + exp["ENVELOPE"] in text and b"BODY " not in text
        text = harness.imap_wire(ok(m.uid("FETCH", str(uid), "FULL")))
        assert text.endswith(b"ENVELOPE " + exp["ENVELOPE"] + b" BODY " + exp["BODY"] + b")")
        text = harness.imap_wire(ok(m.uid("FETCH", str(uid), "FAST")))
        assert b"ENVELOPE" not in text
        # partial of a part, and of a part's MIME header
        data = ok(m.uid("FETCH", str(uid), "(BODY.PEEK[2]<2.4>)"))
        assert b"BODY[2]<2> {4}" in data[0][0] and data[0][1] == b"BERi"
        data = ok(m.uid("FETCH", str(uid), "(BODY.PEEK[2.MIME]<0.12>)"))
        assert data[0][1] == b"Content-Type"
        data = ok(m.uid("FETCH", str(uid), "(BODY.PEEK[9]<0.5>)"))
        assert data[0].endswith(b"BODY[9]<0> NIL)")
        # a non-PEEK part fetch sets \Seen
        data = ok(m.uid("FETCH", str(uid), "(BODY[1])"))
        assert b"\\Seen" in data[0][0] and data[0][1] == b"Hi"
        for bad in ("(BODY[0])", "(BODY[1.])", "(BODY[.1])", "(BODY[1..2])", "(BODY[MIME])",
                    "(BODY[1.MIME.TEXT])", "(BODY[1.FOO])", "(ENVELOPE ALL)"):
            with pytest.raises(imaplib.IMAP4.error, match="BAD"):
                m.uid("FETCH", str(uid), bad)
        ok(m.noop())
    finally:
        m.logout()


def test_nested_header_fields(srv):
    msg, exp = load_case("nested_rfc822")
    srv.deliver([ALICE], msg)
    m = login(srv)
    try:
        uid = newest_uid(m)
        data = ok(m.uid("FETCH", str(uid), "(BODY.PEEK[2.HEADER.FIELDS (Subject)])"))
        assert data[0][1] == b"Subject: hello\r\n\r\n"
        data = ok(m.uid("FETCH", str(uid), "(BODY.PEEK[2.HEADER.FIELDS.NOT (Subject Content-Type)])"))
        assert data[0][1] == b"From: bob@example.net\r\n\r\n"
        # HEADER of a part that is not message/rfc822 does not exist
        assert fetch_section(m, uid, "1.HEADER") is None
    finally:
        m.logout()


def test_index_bytes_per_message(srv):
    """Reports the cache's index cost: the packed rows of the corpus against
    the ENVELOPE, BODYSTRUCTURE and BODY texts they give back."""
    packed = texts = 0
    for name in CASES:
        msg, exp = load_case(name)
        qid, _ = srv.deliver([ALICE], msg)
        packed += len(mime_row(srv, qid))
        texts += text_bytes(exp)
    print("corpus: %d packed bytes for %d bytes of texts" % (packed, texts))
    assert packed * 2 < texts
    avg, n = srv.query("SELECT avg(length(packed)), count(*) FROM mime")[0]
    assert n >= len(CASES)
    print("mime cache: %.0f bytes per message over %d messages" % (avg, n))
    assert avg < 1024


def test_upgrade_drops_text_rows(srv):
    """An index of schema v6 (the cache as IMAP texts) is upgraded at start:
    the text rows go, and FETCH recomputes a packed row from the blob."""
    msg, exp = load_case("nested_rfc822")
    qid, _ = srv.deliver([ALICE], msg)
    srv.stop()
    con = sqlite3.connect(os.path.join(srv.state_dir, "index.db"), timeout=10)
    try:
        con.executescript(
            "DROP TABLE mime;"
            "CREATE TABLE mime(blob_id INTEGER PRIMARY KEY REFERENCES blobs(id) ON DELETE CASCADE,"
            " envelope TEXT NOT NULL, bodystructure TEXT NOT NULL, body TEXT NOT NULL, parts BLOB NOT NULL);"
            "INSERT INTO mime SELECT id, 'x', 'y', 'z', x'00' FROM blobs;"
            "PRAGMA user_version = 6;")
        con.commit()
    finally:
        con.close()
    srv.start()
    assert srv.query("PRAGMA user_version")[0][0] >= 7
    assert srv.query("SELECT count(*) FROM mime")[0][0] == 0
    m = login(srv)
    try:
        uid = newest_uid(m)
        check_structure(m, uid, exp, "nested_rfc822")
        check_parts(m, uid, exp, "nested_rfc822")
    finally:
        m.logout()
    assert mime_row(srv, qid) is not None
