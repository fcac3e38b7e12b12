"""The verified-password cache (src/auth/auth_cache.c) on the three login
paths: IMAP LOGIN, POP3 USER/PASS and AUTH, submission AUTH PLAIN.

Each test uses its own accounts with their own {SHA512-CRYPT} hash (the
cache is keyed by stored hash and password, so accounts sharing the suite's
one hash would share entries), and reads strata_auth_cache_total from
/metrics before and after each login: a hit is a login answered without
running SHA512-crypt, a miss one that ran it.

Checked: a second login hits; a wrong password right after a success is
refused and is never remembered; `strata user passwd` while the daemon runs
makes the old password fail at the very next login; POP3 and submission
share the cache with IMAP; auth.cache_ttl=0 turns it off."""
import imaplib
import poplib
import smtplib
import subprocess

import pytest

import harness
from harness import SLOW, free_port

LOCAL = "local.example"
HIT = 'strata_auth_cache_total{result="hit"}'
MISS = 'strata_auth_cache_total{result="miss"}'


def sha512(password, salt):
    h = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, password],
                       capture_output=True, text=True, check=True).stdout.strip()
    return "{SHA512-CRYPT}" + h


def add_account(s, local, password, salt):
    address = "%s@%s" % (local, LOCAL)
    s.cli("user", "add", address, "--password-hash", sha512(password, salt))
    return address


def options(**extra):
    ports = {k: free_port() for k in ("imap", "pop3", "sub")}
    opts = {
        "imap.listen": "127.0.0.1:%d" % ports["imap"],
        "pop3.listen": "127.0.0.1:%d" % ports["pop3"],
        "submission.listen": "127.0.0.1:%d" % ports["sub"],
        "submission.require_tls": "no",   # loopback only: plain AUTH keeps the test about the cache
        "guard.auth.delay": "0",          # failed logins are part of the test, not its clock
    }
    opts.update(extra)
    return ports, opts


def start(factory, **extra):
    ports, opts = options(**extra)
    s = factory.new(options=opts)
    s.ports = ports
    s.add_domain(LOCAL)
    return s


@pytest.fixture(scope="module")
def srv(module_factory):
    return start(module_factory)


def counts(s):
    m = s.metrics()
    return m.get(HIT, 0), m.get(MISS, 0)


class Delta:
    """Counter movement across a block: `with Delta(s) as d: ...; d.hits`."""

    def __init__(self, s):
        self.s = s

    def __enter__(self):
        self.before = counts(self.s)
        return self

    def __exit__(self, *exc):
        after = counts(self.s)
        self.hits = after[0] - self.before[0]
        self.misses = after[1] - self.before[1]

    def __repr__(self):
        return "hits +%d, misses +%d" % (self.hits, self.misses)


def imap_login(s, user, password):
    """True when LOGIN succeeds, False on NO."""
    c = imaplib.IMAP4("127.0.0.1", s.ports["imap"], timeout=30 * SLOW)
    try:
        c.login(user, password)
        ok = True
    except imaplib.IMAP4.error as e:
        assert "AUTHENTICATIONFAILED" in str(e), e
        ok = False
    c.logout()
    return ok


def pop3_login(s, user, password):
    c = poplib.POP3("127.0.0.1", s.ports["pop3"], timeout=30 * SLOW)
    try:
        c.user(user)
        c.pass_(password)
        ok = True
    except poplib.error_proto:
        ok = False
    c.quit()
    return ok


def submission_login(s, user, password):
    c = smtplib.SMTP("127.0.0.1", s.ports["sub"], local_hostname="mua.example", timeout=30 * SLOW)
    c.ehlo()
    # One AUTH PLAIN exchange: smtplib's login() would retry with LOGIN after
    # a 535 and check the password twice.
    c.user, c.password = user, password
    try:
        c.auth("PLAIN", c.auth_plain)
        ok = True
    except smtplib.SMTPAuthenticationError as e:
        assert e.smtp_code == 535, e
        ok = False
    c.quit()
    return ok


def check(s, what, login, user, password, ok, hit):
    """One login, its verdict, and exactly one hit or one miss counted."""
    with Delta(s) as d:
        got = login(s, user, password)
    assert got == ok, "%s: login %s, expected %s" % (what, "succeeded" if got else "failed",
                                                        "success" if ok else "failure")
    want = (1, 0) if hit else (0, 1)
    assert (d.hits, d.misses) == want, "%s: expected a %s, got %r" % (what, "hit" if hit else "miss", d)


def test_metrics_exported(srv):
    m = srv.metrics()
    assert HIT in m and MISS in m, sorted(k for k in m if "auth" in k)


def test_second_imap_login_hits(srv):
    user = add_account(srv, "anna", "anna-pw", "annasalt")
    check(srv, "first login", imap_login, user, "anna-pw", ok=True, hit=False)
    check(srv, "second login", imap_login, user, "anna-pw", ok=True, hit=True)
    check(srv, "third login", imap_login, user, "anna-pw", ok=True, hit=True)


def test_wrong_password_refused_right_after_success(srv):
    user = add_account(srv, "wolf", "wolf-pw", "wolfsalt")
    check(srv, "success", imap_login, user, "wolf-pw", ok=True, hit=False)
    check(srv, "cached success", imap_login, user, "wolf-pw", ok=True, hit=True)
    for wrong in ("wolf-pW", "wolf-p", "wolf-pw ", "x"):
        check(srv, "wrong %r" % wrong, imap_login, user, wrong, ok=False, hit=False)
    # the same wrong password again: failures are never remembered
    check(srv, "wrong again", imap_login, user, "wolf-p", ok=False, hit=False)
    check(srv, "right one still cached", imap_login, user, "wolf-pw", ok=True, hit=True)


def test_password_change_takes_effect_at_once(srv):
    user = add_account(srv, "carl", "old-pw", "carlsalt")
    check(srv, "old password", imap_login, user, "old-pw", ok=True, hit=False)
    check(srv, "old password cached", imap_login, user, "old-pw", ok=True, hit=True)
    srv.cli("user", "passwd", user, "--password-stdin", input="new-pw\n")
    check(srv, "old password after passwd", imap_login, user, "old-pw", ok=False, hit=False)
    check(srv, "old password over POP3", pop3_login, user, "old-pw", ok=False, hit=False)
    check(srv, "old password over submission", submission_login, user, "old-pw", ok=False, hit=False)
    check(srv, "new password", imap_login, user, "new-pw", ok=True, hit=False)
    check(srv, "new password cached", imap_login, user, "new-pw", ok=True, hit=True)
    check(srv, "old password still refused", imap_login, user, "old-pw", ok=False, hit=False)


def test_deleted_account_refused(srv):
    user = add_account(srv, "dora", "dora-pw", "dorasalt")
    check(srv, "login", imap_login, user, "dora-pw", ok=True, hit=False)
    check(srv, "cached", imap_login, user, "dora-pw", ok=True, hit=True)
    srv.cli("user", "del", user)
    # no account, no stored hash: the cache is never asked
    with Delta(srv) as d:
        assert not imap_login(srv, user, "dora-pw")
    assert (d.hits, d.misses) == (0, 0), d


def test_pop3_and_submission_share_the_cache(srv):
    user = add_account(srv, "paul", "paul-pw", "paulsalt")
    check(srv, "POP3 first", pop3_login, user, "paul-pw", ok=True, hit=False)
    check(srv, "POP3 second", pop3_login, user, "paul-pw", ok=True, hit=True)
    check(srv, "submission after POP3", submission_login, user, "paul-pw", ok=True, hit=True)
    check(srv, "IMAP after POP3", imap_login, user, "paul-pw", ok=True, hit=True)
    check(srv, "POP3 wrong", pop3_login, user, "paul-pX", ok=False, hit=False)
    check(srv, "submission wrong", submission_login, user, "paul-pX", ok=False, hit=False)

    other = add_account(srv, "sue", "sue-pw", "suesalt")
    check(srv, "submission first", submission_login, other, "sue-pw", ok=True, hit=False)
    check(srv, "submission second", submission_login, other, "sue-pw", ok=True, hit=True)


def test_accounts_with_one_password_do_not_share_entries(srv):
    # same password, different salts: different stored hashes, different entries
    a = add_account(srv, "twin1", "same-pw", "twinsalt1")
    b = add_account(srv, "twin2", "same-pw", "twinsalt2")
    check(srv, "first twin", imap_login, a, "same-pw", ok=True, hit=False)
    check(srv, "second twin", imap_login, b, "same-pw", ok=True, hit=False)
    check(srv, "first twin cached", imap_login, a, "same-pw", ok=True, hit=True)


def test_ttl_zero_turns_the_cache_off(strata_factory):
    s = start(strata_factory, **{"auth.cache_ttl": "0"})
    user = add_account(s, "olga", "olga-pw", "olgasalt")
    for i in range(3):
        check(s, "login %d" % (i + 1), imap_login, user, "olga-pw", ok=True, hit=False)
    check(s, "POP3", pop3_login, user, "olga-pw", ok=True, hit=False)
    check(s, "wrong", imap_login, user, "olga-pX", ok=False, hit=False)


def test_size_zero_turns_the_cache_off(strata_factory):
    s = start(strata_factory, **{"auth.cache_size": "0"})
    user = add_account(s, "ivan", "ivan-pw", "ivansalt")
    check(s, "login 1", imap_login, user, "ivan-pw", ok=True, hit=False)
    check(s, "login 2", imap_login, user, "ivan-pw", ok=True, hit=False)
