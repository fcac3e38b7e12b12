"""A scripted neomutt session (Debian's neomutt, a real IMAP client with its
own idea of the protocol) against the real daemon: it opens INBOX (listing
the headers of every message), reads one message in the pager, flags it,
deletes another, saves a third to a folder it creates, expunges and quits.
The test then checks over imaplib that the mailbox holds exactly what the
user asked for.

neomutt needs a terminal: it runs on a pseudo-terminal whose output is
drained and kept for the failure message.  Its keystrokes come from `push`
in the command line; it quits by itself, and the test kills it if it has
not after 60 s."""
import imaplib
import os
import pty
import shutil
import subprocess
import threading
import time

import pytest

import harness
from harness import make_message

USER = "mutt@local.example"
PASSWORD = "secret-pw"   # the suite's shared hash (harness.shared_hash)

pytestmark = pytest.mark.skipif(shutil.which("neomutt") is None,
                                reason="neomutt is not installed (scripts/deps installs it)")


@pytest.fixture(scope="module")
def srv(module_factory):
    port = harness.free_port()
    s = module_factory.new(options={"imap.listen": "127.0.0.1:%d" % port}, populate=True)
    s.imap_port = port
    return s


MUTTRC = """
set folder = "imap://{user}@127.0.0.1:{port}/"
set imap_user = "{user}"
set imap_pass = "{password}"
set spoolfile = "+INBOX"
set ssl_starttls = no
set ssl_force_tls = no
set record = ""
set postponed = ""
set header_cache = ""
set message_cachedir = ""
set confirmcreate = no
set confirmappend = no
set delete = yes
set move = no
set mark_old = no
set resolve = no
set sort = date-received
set wait_key = no
set quit = yes
set beep = no
set pager_stop = yes
set imap_check_subscribed = no
set mail_check_stats = no
"""


def run_neomutt(home, muttrc, keys, timeout=60):
    master, slave = pty.openpty()
    env = dict(os.environ, HOME=home, TERM="xterm", LANG="C.UTF-8", COLUMNS="120", LINES="40")
    p = subprocess.Popen(["neomutt", "-n", "-F", muttrc, "-e", 'push "%s"' % keys],
                         stdin=slave, stdout=slave, stderr=slave, env=env, cwd=home, close_fds=True)
    os.close(slave)
    out = bytearray()

    def drain():
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            out.extend(chunk)

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        rc = p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        rc = None
    t.join(5)
    os.close(master)
    return rc, bytes(out)


def subjects_and_flags(srv, mailbox):
    m = imaplib.IMAP4("127.0.0.1", srv.imap_port, timeout=30)
    try:
        m.login(USER, PASSWORD)
        typ, data = m.select(mailbox, readonly=True)
        assert typ == "OK", (mailbox, data)
        if int(data[0]) == 0:
            return []
        typ, data = m.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK"
        out = []
        for item in data:
            if isinstance(item, tuple):
                subject = item[1].decode().strip().split(":", 1)[1].strip()
                flags = imaplib.ParseFlags(item[0])
                out.append((subject, sorted(f.decode() for f in flags)))
        return out
    finally:
        m.logout()


def test_neomutt_lists_reads_flags_saves_and_deletes(srv, tmp_path):
    srv.add_user(USER)
    for subject in ("one", "two", "three"):
        srv.deliver([USER], make_message(to=USER, subject=subject))
        time.sleep(1.1)    # distinct INTERNALDATEs: neomutt sorts by them
    home = str(tmp_path)
    muttrc = os.path.join(home, "muttrc")
    with open(muttrc, "w") as f:
        f.write(MUTTRC.format(user=USER, port=srv.imap_port, password=PASSWORD))
    keys = ("<first-entry><next-entry><display-message><exit><flag-message>"
            "<first-entry><delete-message>"
            "<last-entry><save-message>=Archive<enter>"
            "<sync-mailbox><quit>")
    rc, screen = run_neomutt(home, muttrc, keys)
    tail = screen[-3000:].decode("utf-8", "replace")
    assert rc == 0, "neomutt did not quit cleanly (rc %r); screen tail:\n%s" % (rc, tail)
    assert subjects_and_flags(srv, "INBOX") == [("two", ["\\Flagged", "\\Seen"])], tail
    assert [s for s, _ in subjects_and_flags(srv, "Archive")] == ["three"], tail
