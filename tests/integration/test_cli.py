"""The admin CLI: domains, users, aliases, config, password handling."""
import os
import re

import pytest

import harness


@pytest.fixture(scope="module")
def admin(module_factory):
    """A state directory managed by the CLI alone (no daemon running)."""
    return module_factory.new(start=False)


def words(text):
    return set(text.split())


def test_domain_round_trip(admin):
    admin.cli("domain", "add", "one.example")
    admin.cli("domain", "add", "Two.Example")
    listed = admin.cli("domain", "list").stdout
    assert {"one.example", "two.example"} <= words(listed), listed
    # adding it again is an error, and says so
    r = admin.cli("domain", "add", "one.example", rc=None)
    assert r.returncode != 0, r
    assert "one.example" in r.stderr
    admin.cli("domain", "del", "two.example")
    listed = admin.cli("domain", "list").stdout
    assert "two.example" not in words(listed)
    assert "one.example" in words(listed)
    r = admin.cli("domain", "del", "never.example", rc=None)
    assert r.returncode != 0


def test_domain_name_validation(admin):
    for bad in ("", "no spaces.example", "a..b", "-lead.example", "x" * 300):
        r = admin.cli("domain", "add", bad, rc=None)
        assert r.returncode != 0, "domain %r was accepted" % bad
    assert not any("spaces" in w for w in words(admin.cli("domain", "list").stdout))


def test_user_round_trip(admin):
    admin.cli("domain", "add", "users.example")
    admin.cli("user", "add", "Ann@Users.Example", "--password-stdin", "--quota-bytes", "1048576",
              "--quota-messages", "500", input="pw-ann\n")
    admin.cli("user", "add", "ben@users.example", "--password-stdin", input="pw-ben\n")
    listed = admin.cli("user", "list").stdout
    assert "ann@users.example" in listed and "ben@users.example" in listed, listed

    shown = admin.cli("user", "show", "ann@users.example").stdout
    assert "ann@users.example" in shown
    assert "1048576" in shown, shown
    assert "500" in shown, shown
    assert "pw-ann" not in shown

    # the six standard mailboxes exist
    boxes = admin.cli("mailbox", "list", "ann@users.example").stdout
    for name in ("INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"):
        assert re.search(r"(^|\s)%s(\s|$)" % name, boxes, re.M), (name, boxes)

    # a taken address, an unknown domain and a malformed address are errors
    assert admin.cli("user", "add", "ann@users.example", "--password-stdin", input="x\n",
                     rc=None).returncode != 0
    assert admin.cli("user", "add", "zed@nowhere.example", "--password-stdin", input="x\n",
                     rc=None).returncode != 0
    assert admin.cli("user", "add", "no-at-sign", "--password-stdin", input="x\n",
                     rc=None).returncode != 0

    # a domain with accounts cannot be deleted
    assert admin.cli("domain", "del", "users.example", rc=None).returncode != 0

    admin.cli("user", "del", "ben@users.example")
    listed = admin.cli("user", "list").stdout
    assert "ben@users.example" not in listed
    assert admin.cli("user", "show", "ben@users.example", rc=None).returncode != 0


def test_user_quota_and_password(admin):
    admin.cli("domain", "add", "q.example")
    admin.cli("user", "add", "q@q.example", "--password-stdin", input="first\n")
    (h1,) = admin.query("SELECT pwhash FROM accounts WHERE address = ?", ("q@q.example",))[0]
    admin.cli("user", "passwd", "q@q.example", "--password-stdin", input="second\n")
    (h2,) = admin.query("SELECT pwhash FROM accounts WHERE address = ?", ("q@q.example",))[0]
    assert h1 != h2
    assert h2.startswith("{ARGON2ID}$argon2id$"), h2
    admin.cli("user", "quota", "q@q.example", "2048", "7")
    shown = admin.cli("user", "show", "q@q.example").stdout
    assert "2048" in shown and "7" in shown, shown


def test_password_never_on_argv(admin):
    admin.cli("domain", "add", "pw.example")
    # the password comes from stdin and is stored only as an Argon2id hash
    admin.cli("user", "add", "p@pw.example", "--password-stdin", input="Tr0ub4dor&3\n")
    (h,) = admin.query("SELECT pwhash FROM accounts WHERE address = ?", ("p@pw.example",))[0]
    assert h.startswith("{ARGON2ID}$argon2id$"), h
    assert "Tr0ub4dor" not in h
    # a password given as an argument is refused, and nothing is created
    r = admin.cli("user", "add", "argv@pw.example", "Tr0ub4dor&3", rc=None)
    assert r.returncode != 0
    assert admin.cli("user", "show", "argv@pw.example", rc=None).returncode != 0
    r = admin.cli("user", "add", "argv@pw.example", "--password", "Tr0ub4dor&3", rc=None)
    assert r.returncode != 0
    assert admin.cli("user", "show", "argv@pw.example", rc=None).returncode != 0
    # stdin that is not a terminal is read even without --password-stdin:
    # an empty one is no password, and is refused
    r = admin.cli("user", "add", "argv@pw.example", input="", rc=None)
    assert r.returncode != 0
    assert admin.cli("user", "show", "argv@pw.example", rc=None).returncode != 0
    # an empty password on stdin is refused
    r = admin.cli("user", "add", "empty@pw.example", "--password-stdin", input="\n", rc=None)
    assert r.returncode != 0


def test_alias_round_trip(admin):
    admin.cli("domain", "add", "al.example")
    for u in ("a", "b"):
        admin.cli("user", "add", "%s@al.example" % u, "--password-stdin", input="pw\n")
    admin.cli("alias", "add", "team@al.example", "a@al.example,b@al.example")
    admin.cli("alias", "add", "@al.example", "a@al.example")
    listed = admin.cli("alias", "list").stdout
    assert "team@al.example" in listed and "@al.example" in listed, listed
    line = [l for l in listed.splitlines() if "team@al.example" in l][0]
    assert "a@al.example" in line and "b@al.example" in line, line
    # a target that is neither an account nor an alias is refused
    r = admin.cli("alias", "add", "x@al.example", "ghost@al.example", rc=None)
    assert r.returncode != 0
    # an alias for a non-local domain is refused
    r = admin.cli("alias", "add", "x@elsewhere.example", "a@al.example", rc=None)
    assert r.returncode != 0
    admin.cli("alias", "del", "team@al.example")
    assert "team@al.example" not in admin.cli("alias", "list").stdout
    assert admin.cli("alias", "del", "team@al.example", rc=None).returncode != 0


def config_keys_from_source():
    src = os.path.join(harness.REPO, "src", "config", "config.c")
    with open(src) as f:
        text = f.read()
    keys = re.findall(r'\{\s*"([a-z_.]+)",\s*CFG_[A-Z]+', text)
    assert len(keys) >= 20, keys
    return keys


def test_config_show_lists_every_key(admin):
    out = admin.cli("config", "show").stdout
    for k in config_keys_from_source():
        assert re.search(r"^\s*%s\s*=" % re.escape(k), out, re.M), "config show lacks %s:\n%s" % (k, out)
    # the effective values, including -o overrides
    assert re.search(r"^\s*state_dir\s*=\s*\"?%s\"?\s*$" % re.escape(admin.state_dir), out, re.M), out
    assert re.search(r"^\s*threads\s*=\s*2\s*$", out, re.M), out


def test_config_doc_lists_every_key(admin):
    out = admin.cli("config", "doc").stdout
    for k in config_keys_from_source():
        assert k in out, k


def test_config_check(admin, tmp_path):
    os.chmod(tmp_path, 0o755)
    good = tmp_path / "good.conf"
    good.write_text("# comment\nsmtp.max_recipients = 50\nsmtp.timeout.command = 2m\n\n"
                    "hostname = \"mx.example\"  # trailing comment\n")
    r = harness.subprocess.run([harness.STRATA_BIN, "-c", str(good), "config", "check"],
                               capture_output=True, text=True, env=harness.proc_env())
    assert r.returncode == 0, r
    assert harness.sanitizer_report(r.stderr) is None, r.stderr

    bad = tmp_path / "bad.conf"
    bad.write_text("smtp.max_recipients = 50\n# fine\nsmtp.no_such_key = 1\n")
    r = harness.subprocess.run([harness.STRATA_BIN, "-c", str(bad), "config", "check"],
                               capture_output=True, text=True, env=harness.proc_env())
    assert r.returncode == 1, r
    assert "%s:3" % bad in r.stderr, r.stderr
    assert "smtp.no_such_key" in r.stderr, r.stderr
    assert harness.sanitizer_report(r.stderr) is None, r.stderr

    bad.write_text("smtp.max_recipients = 0\n")
    r = harness.subprocess.run([harness.STRATA_BIN, "-c", str(bad), "config", "check"],
                               capture_output=True, text=True, env=harness.proc_env())
    assert r.returncode == 1, r
    assert "%s:1" % bad in r.stderr and "smtp.max_recipients" in r.stderr, r.stderr

    r = admin.cli("config", "check", "-o", "smtp.max_line_length=banana", rc=None)
    assert r.returncode == 1, r
    assert "smtp.max_line_length" in r.stderr, r.stderr
