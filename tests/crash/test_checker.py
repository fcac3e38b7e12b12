"""The checker must be able to fail: each case damages a stopped server's
state the way a storage bug would, and the invariant that catches it must
report it (and an undamaged state must report nothing)."""
import os
import random
import sqlite3

import pytest

from crashlib import Checker, Driver, Model, new_server

DOMAIN = "check.example"
USERS = ["alice@" + DOMAIN, "bob@" + DOMAIN]


def rw(s):
    return sqlite3.connect(os.path.join(s.state_dir, "index.db"), timeout=10)


def first_message(s, con):
    """(mailbox_id, uid, blob_id, msgid) of the lowest message row."""
    return con.execute("SELECT m.mailbox_id, m.uid, m.blob_id, b.msgid FROM messages m JOIN blobs b ON b.id = "
                       "m.blob_id ORDER BY b.id, m.mailbox_id LIMIT 1").fetchone()


def blob_of(s, con):
    from harness import msgid_to_qid
    return s.blob_path(msgid_to_qid(bytes(first_message(s, con)[3])))


def d_delete_row(s, con):
    mb, uid, bid, _ = first_message(s, con)
    con.execute("DELETE FROM messages WHERE mailbox_id = ? AND uid = ?", (mb, uid))


def d_truncate_blob(s, con):
    p = blob_of(s, con)
    os.truncate(p, os.path.getsize(p) - 10)


def d_flip_byte(s, con):
    p = blob_of(s, con)
    with open(p, "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0x20]))


def d_remove_blob(s, con):
    os.unlink(blob_of(s, con))


def d_uidnext_back(s, con):
    con.execute("UPDATE mailboxes SET uidnext = 1")


def d_duplicate(s, con):
    mb, uid, bid, _ = first_message(s, con)
    con.execute("INSERT INTO messages (mailbox_id, uid, blob_id, flags, modseq) VALUES (?, 9999, ?, 0, 1)",
                (mb, bid))
    con.execute("UPDATE blobs SET refcount = refcount + 1 WHERE id = ?", (bid,))


def d_usage(s, con):
    con.execute("UPDATE accounts SET used_bytes = used_bytes + 1")


def d_refcount(s, con):
    con.execute("UPDATE blobs SET refcount = refcount + 1")


def d_tmp_file(s, con):
    with open(os.path.join(s.state_dir, "blobs", "tmp", "leftover"), "wb") as f:
        f.write(b"partial")


def d_nothing(s, con):
    pass


CASES = [
    ("delete-row", d_delete_row, "LOST"),
    ("truncate-blob", d_truncate_blob, "trailer"),
    ("flip-byte", d_flip_byte, "hash does not match"),
    ("remove-blob", d_remove_blob, "file missing"),
    ("uidnext-back", d_uidnext_back, "uidnext"),
    ("duplicate", d_duplicate, "times"),
    ("usage", d_usage, "used_bytes"),
    ("refcount", d_refcount, "refcount"),
    ("tmp-file", d_tmp_file, "blobs/tmp"),
    ("undamaged", d_nothing, None),
]


@pytest.mark.parametrize("name,damage,expect", CASES, ids=[c[0] for c in CASES])
def test_checker_detects(crash_root, name, damage, expect):
    s = new_server(crash_root, "check")
    s.start()
    try:
        s.add_domain(DOMAIN)
        for u in USERS:
            s.add_user(u)
        model = Model(USERS)
        checker = Checker(s, model)
        d = Driver(s, model, random.Random(7), "chk", USERS)
        for size in (3000, 300000):
            assert d.smtp(size).code == 250
            assert d.append(size)[0] == "OK"
        s.stop()
        con = rw(s)
        try:
            with con:
                damage(s, con)
        finally:
            con.close()
        v, _ = checker.check()
        if expect is None:
            assert v == [], v
        else:
            assert any(expect in x for x in v), "damage %s not reported as %r: %r" % (name, expect, v)
    finally:
        if s.proc is not None:
            s.stop()
