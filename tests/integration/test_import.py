"""Bulk import: 50,000 accounts from CSV in under 30 s (plain build), a
smaller CSV under every build, and a Dovecot passwd-file."""
import os
import subprocess
import time

import pytest

import harness


@pytest.fixture(scope="module")
def sha512_hash():
    """One {SHA512-CRYPT} hash, as a Dovecot export would hold, reused per line."""
    h = subprocess.run(["openssl", "passwd", "-6", "-salt", "strataimport", "import-pw"],
                       capture_output=True, text=True, check=True).stdout.strip()
    assert h.startswith("$6$strataimport$")
    return "{SHA512-CRYPT}" + h


def write_csv(path, n, pwhash, domains):
    with open(path, "w") as f:
        f.write("# address,password_hash,quota_bytes,quota_messages\n")
        for i in range(n):
            f.write("user%05d@d%02d.example,%s,%d,%d\n" % (i, i % domains, pwhash,
                                                             (i % 4) * 1048576, i % 3))
    os.chmod(path, 0o644)


def count_listed(s, *args):
    out = s.cli("user", "list", *args).stdout
    return sum(1 for line in out.splitlines() if "@" in line)


def import_csv(strata_factory, n, pwhash, domains):
    s = strata_factory.new(start=False)
    path = os.path.join(s.dir, "users.csv")
    write_csv(path, n, pwhash, domains)
    t0 = time.monotonic()
    s.cli("user", "import", path, "--format", "csv", "--create-domains", timeout=600)
    elapsed = time.monotonic() - t0
    return s, elapsed


@pytest.mark.slow_asan
def test_import_50000_accounts(strata_factory, sha512_hash):
    n = 50000
    s, elapsed = import_csv(strata_factory, n, sha512_hash, 50)
    if not harness.ASAN:
        assert elapsed < 30, "importing %d accounts took %.1f s (limit 30 s)" % (n, elapsed)
    assert count_listed(s) == n
    assert s.query("SELECT COUNT(*) FROM accounts")[0][0] == n
    assert s.query("SELECT COUNT(*) FROM domains")[0][0] == 50
    # every account got its standard mailboxes
    assert s.query("SELECT COUNT(*) FROM mailboxes")[0][0] == 6 * n


def test_import_csv_small(strata_factory, sha512_hash):
    n = 2000
    s, _ = import_csv(strata_factory, n, sha512_hash, 7)
    assert count_listed(s) == n
    assert count_listed(s, "d03.example") == len([i for i in range(n) if i % 7 == 3])
    shown = s.cli("user", "show", "user00005@d05.example").stdout
    assert "1048576" in shown and "2" in shown, shown
    (h,) = s.query("SELECT pwhash FROM accounts WHERE address = ?", ("user00005@d05.example",))[0]
    assert h == sha512_hash
    # the running daemon delivers to imported accounts
    s.start()
    s.deliver(["user00007@d00.example"])
    assert len(s.mail_uids("user00007@d00.example")) == 1


def test_import_is_all_or_nothing(strata_factory, sha512_hash):
    s = strata_factory.new(start=False)
    s.cli("domain", "add", "ok.example")
    path = os.path.join(s.dir, "bad.csv")
    with open(path, "w") as f:
        f.write("a@ok.example,%s\n" % sha512_hash)
        f.write("b@ok.example,%s\n" % sha512_hash)
        f.write("c@ok.example,{MD5-CRYPT}$1$abcdefgh$0123456789abcdefghijkl\n")   # unverifiable scheme
        f.write("d@ok.example,%s\n" % sha512_hash)
    os.chmod(path, 0o644)
    r = s.cli("user", "import", path, "--format", "csv", rc=None)
    assert r.returncode != 0
    assert ":3" in r.stderr or "line 3" in r.stderr, r.stderr
    assert count_listed(s) == 0
    # without --create-domains an unknown domain is an error too
    with open(path, "w") as f:
        f.write("a@ok.example,%s\n" % sha512_hash)
        f.write("b@new.example,%s\n" % sha512_hash)
    r = s.cli("user", "import", path, "--format", "csv", rc=None)
    assert r.returncode != 0
    assert "new.example" in r.stderr, r.stderr
    assert count_listed(s) == 0


def test_import_dovecot_passwd_file(strata_factory, sha512_hash):
    s = strata_factory.new(start=False)
    path = os.path.join(s.dir, "users.passwd")
    blf = "{BLF-CRYPT}$2b$05$abcdefghijklmnopqrstuunVtTuY5QtX/b4/Tdb0snFTBlOaVNAmy"   # "import-pw"
    with open(path, "w") as f:
        f.write("# Dovecot passwd-file\n")
        f.write("alice@pw.example:%s:1000:1000::/home/alice::userdb_quota_rule=*:storage=1G\n" % sha512_hash)
        f.write("bob@pw.example:%s::::::\n" % sha512_hash[len("{SHA512-CRYPT}"):])   # bare $6$
        f.write("\n")
        f.write("carol@other.example:%s:1001:1001::/home/carol::\n" % blf)
    os.chmod(path, 0o644)
    s.cli("user", "import", path, "--format", "passwd", "--create-domains")
    listed = s.cli("user", "list").stdout
    for a in ("alice@pw.example", "bob@pw.example", "carol@other.example"):
        assert a in listed, listed
    rows = dict(s.query("SELECT address, pwhash FROM accounts"))
    assert rows["alice@pw.example"] == sha512_hash
    assert rows["bob@pw.example"] == sha512_hash            # normalised with its {SCHEME}
    assert rows["carol@other.example"] == blf
    # the userdb quota rule became the account's byte quota
    assert s.query("SELECT quota_bytes FROM accounts WHERE address = ?",
                   ("alice@pw.example",))[0][0] == 1 << 30
