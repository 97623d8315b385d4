# The fixture media_server_factory is imported from tests.servers, and pytest passes it
# back as an argument of the same name, which pyflakes reads as a redefinition.
# ruff: noqa: F811
"""``manage.py resto_sync``: audit media servers against the master copy, and repair them.

The hosts are real nginx and lighttpd processes on loopback (and TestHttpServer for
faults); the master copy is the per-test MEDIA_ROOT.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import storages
from django.core.management import CommandError, call_command

from django_resto import journal, listing
from django_resto.management.progress import Progress
from django_resto.models import PendingReplication
from django_resto.sync import master_files
from tests.servers import MediaServer, media_server_factory  # noqa: F401 - fixture

Factory = Callable[..., MediaServer]
CREDENTIALS = ("resto", "s3cret")

MASTER = {
    "same.txt": b"identical",
    "uploads/2026/\u00e9t\u00e9.jpg": b"\xff\xd8summer",
    "uploads/2026/missing #1.txt": b"only in the master copy",
    "uploads/\u65e5\u672c/size.bin": b"0123456789",
    "uploads/\u65e5\u672c/content.bin": b"AAAA",
    "deep/a/b/c.txt": b"deep",
}


@pytest.fixture(autouse=True)
def fresh_detection() -> Iterator[None]:
    listing.forget_methods()
    yield
    listing.forget_methods()


def write_tree(root: Path, tree: dict[str, bytes]) -> None:
    for name, data in tree.items():
        path = root.joinpath(*name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def configure(settings, servers: list[MediaServer], backend: str = "HybridStorage", **options):
    settings.STORAGES = {
        "default": {
            "BACKEND": f"django_resto.storage.{backend}",
            "OPTIONS": {
                "hosts": [server.host for server in servers],
                "timeout": 5,
                "auth": CREDENTIALS,
                **options,
            },
        },
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    return storages["default"]


def run(*args: str) -> tuple[int, str, str]:
    """Run resto_sync; return (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("resto_sync", *args, stdout=out, stderr=err)
    except SystemExit as exc:
        return int(exc.code), out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def run_json(*args: str) -> tuple[int, dict[str, Any]]:
    status, out, _ = run("--json", *args)
    return status, json.loads(out)


def host_entry(summary: dict[str, Any], host: str, storage: str = "default") -> dict[str, Any]:
    for item in summary["storages"]:
        if item["storage"] == storage:
            for entry in item["hosts"]:
                if entry["host"] == host:
                    return entry
    raise AssertionError(f"{host} not in the summary")


@pytest.fixture
def drifted(media_server_factory: Factory, media_root: Path, settings):
    """A master copy, one nginx and one lighttpd, each out of line in known ways."""
    nginx = media_server_factory("nginx", credentials=CREDENTIALS)
    lighttpd = media_server_factory("lighttpd", credentials=CREDENTIALS)
    write_tree(media_root, MASTER)
    for server in (nginx, lighttpd):
        tree = dict(MASTER)
        del tree["uploads/2026/missing #1.txt"]
        tree["uploads/\u65e5\u672c/size.bin"] = b"012345"  # shorter
        tree["uploads/\u65e5\u672c/content.bin"] = b"BBBB"  # same size, other bytes
        write_tree(server.root, tree)
    nginx.write("uploads/extra \u00e0 nginx.txt", b"stray")
    lighttpd.write("old/extra.txt", b"stray")
    lighttpd.path("deep/a/b/c.txt").unlink()
    configure(settings, [nginx, lighttpd])
    return nginx, lighttpd


@pytest.mark.real_server
@pytest.mark.django_db
def test_audit_reports_exact_differences(drifted):
    nginx, lighttpd = drifted
    status, summary = run_json()
    assert status == 1
    assert summary["ok"] is False
    [storage] = summary["storages"]
    assert storage["storage"] == "default"
    assert storage["backend"] == "HybridStorage"
    assert storage["reference"] == "master"
    assert storage["reference_files"] == len(MASTER)
    assert storage["checksum"] is False
    first = host_entry(summary, nginx.host)
    assert first["reachable"] is True
    assert first["method"] == "autoindex"
    assert first["complete"] is True
    assert first["missing"] == ["uploads/2026/missing #1.txt"]
    assert first["extra"] == ["uploads/extra \u00e0 nginx.txt"]
    assert first["mismatched"] == ["uploads/\u65e5\u672c/size.bin"]
    assert first["checksum_mismatched"] == []
    assert first["sizes"] == {"uploads/\u65e5\u672c/size.bin": [10, 6]}
    assert first["remote_files"] == len(MASTER)  # one missing, one extra
    assert first["counts"] == {
        "missing": 1,
        "extra": 1,
        "mismatched": 1,
        "checksum_mismatched": 0,
        "unknown": 0,
        "repaired": 0,
        "deleted": 0,
        "errors": 0,
        "remaining": 3,
    }
    second = host_entry(summary, lighttpd.host)
    assert second["method"] == "propfind"
    assert second["missing"] == ["deep/a/b/c.txt", "uploads/2026/missing #1.txt"]
    assert second["extra"] == ["old/extra.txt"]
    assert second["mismatched"] == ["uploads/\u65e5\u672c/size.bin"]
    assert second["counts"]["remaining"] == 4
    # An audit changes nothing.
    assert nginx.read("uploads/extra \u00e0 nginx.txt") == b"stray"
    assert not lighttpd.exists("deep/a/b/c.txt")


@pytest.mark.real_server
@pytest.mark.django_db
def test_json_structure(drifted):
    nginx, _ = drifted
    _, summary = run_json()
    assert set(summary) == {"ok", "storages"}
    [storage] = summary["storages"]
    assert set(storage) == {
        "storage",
        "backend",
        "reference",
        "reference_files",
        "checksum",
        "ok",
        "elapsed",
        "notes",
        "hosts",
    }
    assert set(host_entry(summary, nginx.host)) == {
        "host",
        "reachable",
        "method",
        "complete",
        "remote_files",
        "counts",
        "missing",
        "extra",
        "mismatched",
        "checksum_mismatched",
        "sizes",
        "unknown",
        "repaired",
        "deleted",
        "errors",
        "notes",
        "ok",
        "elapsed",
    }


@pytest.mark.real_server
@pytest.mark.django_db
def test_checksum_finds_same_size_different_content(drifted):
    nginx, lighttpd = drifted
    status, summary = run_json("--checksum")
    assert status == 1
    assert summary["storages"][0]["checksum"] is True
    for server in (nginx, lighttpd):
        entry = host_entry(summary, server.host)
        assert entry["checksum_mismatched"] == ["uploads/\u65e5\u672c/content.bin"]
        assert entry["mismatched"] == ["uploads/\u65e5\u672c/size.bin"]
        assert entry["errors"] == []


@pytest.mark.django_db
def test_checksum_that_cannot_be_read_is_unknown(
    media_server_factory: Factory, media_root: Path, settings
):
    server = media_server_factory("test")
    tree = {"a.txt": b"aaa", "b.txt": b"bbb"}
    write_tree(media_root, tree)
    write_tree(server.root, tree)
    configure(settings, [server])
    server.fail_next(500, methods="GET")  # HEAD listing: the only GETs are the checksums
    status, summary = run_json("--method", "head", "--checksum", "--workers", "1")
    assert status == 1
    entry = host_entry(summary, server.host)
    assert entry["checksum_mismatched"] == []
    assert entry["unknown"] == {
        "a.txt": "checksum: UnexpectedStatusCode: GET "
        f"http://{server.host}/media/a.txt on host {server.host} answered unexpected status "
        "500 Internal Server Error"
    }
    assert entry["counts"]["remaining"] == 1
    # Retried, the same audit is clean: nothing was changed.
    assert run_json("--method", "head", "--checksum")[0] == 0
    # With --repair, a name in an unknown state is uploaded again from the master copy.
    server.fail_next(500, methods="GET")
    status, summary = run_json("--method", "head", "--checksum", "--workers", "1", "--repair")
    assert status == 0
    entry = host_entry(summary, server.host)
    assert (list(entry["unknown"]), entry["repaired"]) == (["a.txt"], ["a.txt"])
    assert server.files() == tree


@pytest.mark.real_server
@pytest.mark.django_db
def test_repair_without_delete_extra_leaves_extras_and_exits_1(drifted, media_root: Path):
    nginx, lighttpd = drifted
    status, summary = run_json("--repair")
    assert status == 1  # the extras remain
    first = host_entry(summary, nginx.host)
    assert first["repaired"] == ["uploads/2026/missing #1.txt", "uploads/\u65e5\u672c/size.bin"]
    assert first["deleted"] == []
    assert first["counts"]["remaining"] == 1
    expected = dict(MASTER)
    expected["uploads/\u65e5\u672c/content.bin"] = b"BBBB"  # not found without --checksum
    assert nginx.files() == {**expected, "uploads/extra \u00e0 nginx.txt": b"stray"}
    assert lighttpd.files() == {**expected, "old/extra.txt": b"stray"}


@pytest.mark.real_server
@pytest.mark.django_db
def test_repair_and_delete_extra_make_trees_byte_equal(drifted):
    nginx, lighttpd = drifted
    status, summary = run_json("--checksum", "--repair", "--delete-extra")
    assert status == 0
    assert summary["ok"] is True
    second = host_entry(summary, lighttpd.host)
    assert second["repaired"] == [
        "deep/a/b/c.txt",
        "uploads/2026/missing #1.txt",
        "uploads/\u65e5\u672c/content.bin",
        "uploads/\u65e5\u672c/size.bin",
    ]
    assert second["deleted"] == ["old/extra.txt"]
    assert second["counts"]["remaining"] == 0
    assert nginx.files() == MASTER
    assert lighttpd.files() == MASTER
    # A second audit finds nothing left to do.
    status, summary = run_json("--checksum")
    assert status == 0
    for server in (nginx, lighttpd):
        entry = host_entry(summary, server.host)
        assert (entry["missing"], entry["extra"], entry["mismatched"]) == ([], [], [])
        assert entry["checksum_mismatched"] == []


@pytest.mark.real_server
@pytest.mark.django_db
def test_delete_extra_alone(drifted):
    nginx, lighttpd = drifted
    status, summary = run_json("--delete-extra")
    assert status == 1  # missing and mismatched files remain
    assert host_entry(summary, nginx.host)["deleted"] == ["uploads/extra \u00e0 nginx.txt"]
    assert host_entry(summary, lighttpd.host)["deleted"] == ["old/extra.txt"]
    assert host_entry(summary, nginx.host)["repaired"] == []
    assert not nginx.exists("uploads/extra \u00e0 nginx.txt")
    assert not lighttpd.exists("old/extra.txt")
    assert not nginx.exists("uploads/2026/missing #1.txt")


@pytest.mark.real_server
@pytest.mark.django_db
def test_host_option_limits_the_audit(drifted):
    nginx, lighttpd = drifted
    status, summary = run_json("--host", lighttpd.host, "--repair", "--delete-extra")
    assert status == 0
    assert [entry["host"] for entry in summary["storages"][0]["hosts"]] == [lighttpd.host]
    assert nginx.exists("uploads/extra \u00e0 nginx.txt")  # untouched
    assert not lighttpd.exists("old/extra.txt")


@pytest.mark.django_db
def test_unknown_host_or_storage_is_a_usage_error(media_server_factory: Factory, settings):
    configure(settings, [media_server_factory("test")])
    with pytest.raises(CommandError, match="'nowhere:80' is not a host") as caught:
        run("--host", "nowhere:80")
    assert caught.value.returncode == 2
    with pytest.raises(CommandError, match="'other' is not in STORAGES"):
        run("--storage", "other")
    with pytest.raises(CommandError, match="not a django_resto storage"):
        run("--storage", "staticfiles")


@pytest.mark.real_server
@pytest.mark.django_db
def test_unreachable_host_counts_as_differences(
    media_server_factory: Factory, media_root: Path, settings
):
    up = media_server_factory("nginx", credentials=CREDENTIALS)
    down = media_server_factory("nginx", credentials=CREDENTIALS)
    write_tree(media_root, {"a.txt": b"a"})
    up.write("a.txt", b"a")
    configure(settings, [up, down], timeout=1)
    down.stop()
    status, summary = run_json("--repair")
    assert status == 1
    assert host_entry(summary, up.host)["ok"] is True
    gone = host_entry(summary, down.host)
    assert gone["reachable"] is False
    assert gone["method"] is None
    assert gone["counts"]["remaining"] == 1
    assert len(gone["errors"]) == 1
    assert gone["errors"][0].startswith(f"Cannot list {down.host}: ConnectionError")
    status, out, _ = run()
    assert status == 1
    assert f"  {down.host}: UNREACHABLE" in out.splitlines()


@pytest.mark.real_server
@pytest.mark.django_db
def test_in_line_hosts_exit_0_with_text_report(
    media_server_factory: Factory, media_root: Path, settings
):
    servers = [media_server_factory("nginx"), media_server_factory("lighttpd")]
    tree = {"x/\u00fc.txt": b"u", "y.bin": b"yy"}
    write_tree(media_root, tree)
    for server in servers:
        write_tree(server.root, tree)
    configure(settings, servers, auth=None)
    status, out, err = run()
    assert status == 0
    assert err == ""  # no progress bar: stderr is not a terminal
    lines = out.splitlines()
    assert lines[0].startswith(
        "Storage 'default' (HybridStorage): 2 file(s) in the master copy; 2 host(s) audited in "
    )
    assert f"  {servers[0].host} [autoindex]: 2 file(s); 0 missing, 0 extra, 0 size mismatch" in (
        lines
    )
    assert f"  {servers[1].host} [propfind]: 2 file(s); 0 missing, 0 extra, 0 size mismatch" in (
        lines
    )
    assert lines[-1] == "  Every audited host matches."


@pytest.mark.real_server
@pytest.mark.django_db
def test_text_report_lists_differences(drifted):
    nginx, lighttpd = drifted
    status, out, _ = run()
    assert status == 1
    lines = out.splitlines()
    start = lines.index(
        f"  {nginx.host} [autoindex]: 6 file(s); 1 missing, 1 extra, 1 size mismatch"
    )
    assert lines[start + 1 : start + 10] == [
        "    missing: uploads/2026/missing #1.txt",
        "    extra: uploads/extra \u00e0 nginx.txt",
        "    size mismatch: uploads/\u65e5\u672c/size.bin (expected 10 bytes, found 6)",
        f"  {lighttpd.host} [propfind]: 5 file(s); 2 missing, 1 extra, 1 size mismatch",
        "    missing: deep/a/b/c.txt",
        "    missing: uploads/2026/missing #1.txt",
        "    extra: old/extra.txt",
        "    size mismatch: uploads/\u65e5\u672c/size.bin (expected 10 bytes, found 6)",
        "  Differences remain on 2 host(s).",
    ]
    assert start + 10 == len(lines)


@pytest.mark.django_db
def test_head_method_cannot_see_extras(media_server_factory: Factory, media_root: Path, settings):
    server = media_server_factory("test", listing_prefix=None)
    write_tree(media_root, {"a.txt": b"a", "b.txt": b"b"})
    server.write("a.txt", b"a")
    server.write("stray.txt", b"s")
    configure(settings, [server])
    status, summary = run_json()
    entry = host_entry(summary, server.host)
    assert (entry["method"], entry["complete"]) == ("head", False)
    assert entry["missing"] == ["b.txt"]
    assert entry["extra"] == []
    assert any("extra files cannot be detected" in note for note in entry["notes"])
    assert status == 1
    status, summary = run_json("--repair")
    assert status == 0  # what HEAD can see is in line; extras are out of its reach
    assert server.files() == {"a.txt": b"a", "b.txt": b"b", "stray.txt": b"s"}


@pytest.mark.django_db
def test_forced_method(media_server_factory: Factory, media_root: Path, settings):
    server = media_server_factory("test")
    write_tree(media_root, {"a.txt": b"a"})
    server.write("a.txt", b"a")
    configure(settings, [server])
    status, summary = run_json("--method", "head")
    assert status == 0
    assert host_entry(summary, server.host)["method"] == "head"
    assert [r.method for r in server.requests] == ["HEAD"]


# Transactional: the repair's threads take the name locks and numbers on connections of
# their own, which on SQLite would wait for this test's open transaction.
@pytest.mark.django_db(transaction=True)
def test_repair_clears_matching_journal_rows(
    media_server_factory: Factory, media_root: Path, settings
):
    server = media_server_factory("test-strict")
    write_tree(media_root, {"a/b.txt": b"b", "c.txt": b"c"})
    server.write("c.txt", b"c")
    storage = configure(settings, [server])
    old = journal.now_seq()
    journal.mark("default", [server.host], "a/b.txt", "PUT", old, error="boom")
    journal.mark("default", [server.host], "c.txt", "PUT", old, error="in line already")
    status, summary = run_json("--repair")
    assert status == 0
    assert host_entry(summary, server.host)["repaired"] == ["a/b.txt"]
    assert server.files() == {"a/b.txt": b"b", "c.txt": b"c"}
    # The repaired name's row is settled; the other one is for process_failed_media.
    remaining = list(PendingReplication.objects.values_list("storage", "host", "name"))
    assert remaining == [("default", server.host, "c.txt")]
    assert storage.journal_key == "default"


@pytest.mark.django_db
def test_repair_failure_is_reported(media_server_factory: Factory, media_root: Path, settings):
    server = media_server_factory("test")
    write_tree(media_root, {"a.txt": b"a"})
    configure(settings, [server])
    server.force_status(507, methods="PUT")
    status, summary = run_json("--repair")
    assert status == 1
    entry = host_entry(summary, server.host)
    assert entry["repaired"] == []
    assert entry["counts"]["remaining"] == 1
    assert len(entry["errors"]) == 1
    assert entry["errors"][0].startswith("repair of a.txt: UnexpectedStatusCode: PUT ")
    assert "507" in entry["errors"][0]


@pytest.mark.django_db
def test_repair_follows_the_master_copy_at_repair_time(
    media_server_factory: Factory, media_root: Path, settings, monkeypatch: pytest.MonkeyPatch
):
    """An extra file uploaded between audit and repair is sent, not deleted."""
    from django_resto import sync

    server = media_server_factory("test")
    server.write("new.txt", b"new")
    configure(settings, [server])
    real_repair = sync.repair

    def upload_then_repair(storage, report, **kwargs):
        write_tree(media_root, {"new.txt": b"newer"})
        return real_repair(storage, report, **kwargs)

    monkeypatch.setattr("django_resto.management.commands.resto_sync.repair", upload_then_repair)
    status, summary = run_json("--delete-extra")
    entry = host_entry(summary, server.host)
    assert entry["extra"] == ["new.txt"]
    assert (entry["deleted"], entry["repaired"]) == ([], ["new.txt"])
    assert server.files() == {"new.txt": b"newer"}
    assert status == 0


@pytest.mark.django_db
def test_default_storages_and_several_aliases(
    media_server_factory: Factory, media_root: Path, settings, tmp_path: Path
):
    first, second, third = (media_server_factory("test") for _ in range(3))
    other_root = tmp_path / "other"
    write_tree(media_root, {"a": b"a"})
    write_tree(other_root, {"b": b"b"})
    first.write("a", b"a")
    settings.STORAGES = {
        "default": {
            "BACKEND": "django_resto.storage.HybridStorage",
            "OPTIONS": {"hosts": [first.host]},
        },
        "uploads": {
            "BACKEND": "django_resto.storage.AsyncStorage",
            "OPTIONS": {"hosts": [second.host], "location": str(other_root)},
        },
        "remote": {
            "BACKEND": "django_resto.storage.DistributedStorage",
            "OPTIONS": {"hosts": [third.host]},
        },
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    status, summary = run_json()
    assert [item["storage"] for item in summary["storages"]] == ["default", "uploads"]
    assert summary["storages"][0]["ok"] is True
    assert host_entry(summary, second.host, "uploads")["missing"] == ["b"]
    assert status == 1
    status, summary = run_json("--storage", "uploads", "--repair")
    assert status == 0
    assert second.files() == {"b": b"b"}
    assert first.files() == {"a": b"a"}


@pytest.mark.real_server
@pytest.mark.django_db
def test_distributed_storage_compares_hosts_with_each_other(
    media_server_factory: Factory, settings
):
    hosts = [
        media_server_factory("nginx", credentials=CREDENTIALS),
        media_server_factory("lighttpd", credentials=CREDENTIALS),
        media_server_factory("test", listing_prefix=None, credentials=CREDENTIALS),
    ]
    common = {"a/\u00e9.txt": b"abc", "b.txt": b"12345"}
    for server in hosts:
        write_tree(server.root, common)
    hosts[0].write("only-on-nginx.txt", b"n")
    hosts[1].write("b.txt", b"123")  # the minority size
    hosts[2].path("a/\u00e9.txt").unlink()
    configure(settings, hosts, backend="DistributedStorage")
    status, summary = run_json("--storage", "default")
    assert status == 1
    [storage] = summary["storages"]
    assert (storage["reference"], storage["reference_files"]) == ("hosts", 3)
    nginx, lighttpd, head_only = (host_entry(summary, server.host) for server in hosts)
    assert (nginx["missing"], nginx["mismatched"], nginx["extra"]) == ([], [], [])
    assert lighttpd["missing"] == ["only-on-nginx.txt"]
    assert lighttpd["mismatched"] == ["b.txt"]
    assert head_only["method"] == "head"
    assert head_only["missing"] == ["a/\u00e9.txt", "only-on-nginx.txt"]
    assert head_only["mismatched"] == []
    for option in ("--repair", "--delete-extra", "--checksum"):
        with pytest.raises(CommandError, match="DistributedStorage: it has no master copy"):
            run("--storage", "default", option)


def test_master_files_skips_what_cannot_be_sent(tmp_path: Path):
    write_tree(tmp_path, {"ok/\u00e9.txt": b"12", "back\\slash": b"x", "ctl\x01": b"y"})
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "ok")  # a directory link: not followed
    (tmp_path / "file-link").symlink_to(tmp_path / "ok" / "\u00e9.txt")
    files, notes = master_files(tmp_path)
    assert files == {"ok/\u00e9.txt": 2, "file-link": 2}
    assert sorted(notes) == [
        "Skipped 'back\\\\slash': cannot be sent to a media server.",
        "Skipped 'ctl\\x01': cannot be sent to a media server.",
    ]
    assert master_files(tmp_path / "nope") == (
        {},
        [f"The master copy {tmp_path / 'nope'} does not exist: it holds no file."],
    )


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_only_on_a_terminal():
    quiet = io.StringIO()
    bar = Progress(3, "Listing", stream=quiet)
    bar.advance()
    bar.advance(2)
    bar.close()
    assert quiet.getvalue() == ""
    assert bar.done == 3

    terminal = _Terminal()
    with Progress(4, "Repairing", stream=terminal) as bar:
        bar.advance(4)  # complete: drawn whatever the throttle says
    text = terminal.getvalue()
    assert text.startswith("\rRepairing [" + "#" * 30 + "] 4/4 100% ")
    assert text.endswith("\x1b[K\n")
    bar.close()  # twice is fine
    assert terminal.getvalue() == text


@pytest.mark.django_db
def test_progress_bar_goes_to_stderr_on_a_terminal(
    media_server_factory: Factory, media_root: Path, settings
):
    server = media_server_factory("test")
    write_tree(media_root, {"a.txt": b"a"})
    configure(settings, [server])
    out, err = io.StringIO(), _Terminal()
    call_command("resto_sync", "--json", "--repair", stdout=out, stderr=err)
    assert json.loads(out.getvalue())["ok"] is True
    assert "\rListing [" in err.getvalue()
    assert "\rRepairing [" in err.getvalue()
    # Drawn as it is: not painted in stderr's error colour, and no newline per redraw.
    assert "\x1b[31" not in err.getvalue() and "\x1b[1;31" not in err.getvalue()
    assert err.getvalue().count("\n") == err.getvalue().count("\x1b[K\n")
