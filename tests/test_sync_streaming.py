# The fixture media_server_factory is imported from tests.servers, and pytest passes it
# back as an argument of the same name, which pyflakes reads as a redefinition.
# ruff: noqa: F811
"""The audit compares each host directory by directory, as its listing arrives.

Large audits (issue 12: 300,000 files x 3 hosts) keep only the master copy and the
differences in memory, so what the whole-listing comparison used to find must still
come out of the per-directory one: names in directories a host lacks, extra
directories, files HEAD found (nginx's dot-files, directories that failed to list),
names a listing showed outside the directory asked for.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import SuspiciousFileOperation

from django_resto import listing
from django_resto.listing import Entry, Listing
from django_resto.names import MAX_NAME_LENGTH, validate_name
from django_resto.sync import HostReport, _master_tree, _Names, _Tally, audit, master_files
from tests.servers import MediaServer, media_server_factory  # noqa: F401 - fixture
from tests.test_sync import CREDENTIALS, configure, write_tree

Factory = Callable[..., MediaServer]


@pytest.fixture(autouse=True)
def fresh_detection() -> Iterator[None]:
    listing.forget_methods()
    yield
    listing.forget_methods()


TREE = {
    "": {"top.txt": 3},
    "a/": {"a/1.txt": 1, "a/2.txt": 2},
    "a/b/": {"a/b/deep.txt": 4},
    "c/": {"c/only-master.txt": 5},
}


def tally_report(tally: _Tally, listed: Listing | None = None) -> HostReport:
    report = HostReport("h")
    tally.report(report, listed or Listing(host="h", method="autoindex"))
    return report


def test_equal_directories_leave_nothing_to_report():
    tally = _Tally(TREE)
    for directory, files in TREE.items():
        tally.add(directory, dict(files))
    report = tally_report(tally)
    assert report.remote_files == 5
    assert (report.missing, report.extra, report.mismatched, report.sizes) == ([], [], [], {})


def test_missing_extra_and_mismatched_directory_by_directory():
    tally = _Tally(TREE)
    tally.add("", {"top.txt": 3})
    tally.add("a/", {"a/1.txt": 9, "a/x.txt": 1})  # 2.txt missing, 1.txt resized, x extra
    tally.add("a/b/", {"a/b/deep.txt": None})  # no size given: nothing to compare
    tally.add("new/", {"new/n.txt": 1})  # a directory the master copy has not
    # c/ never listed: its files are missing
    report = tally_report(tally)
    assert report.missing == ["a/2.txt", "c/only-master.txt"]
    assert report.extra == ["a/x.txt", "new/n.txt"]
    assert report.mismatched == ["a/1.txt"]
    assert report.sizes == {"a/1.txt": (1, 9)}
    assert report.remote_files == 5


def test_names_found_with_head_are_present_and_failures_unknown():
    tally = _Tally(TREE)
    tally.add("", {"top.txt": 3})
    tally.add("a/b/", {"a/b/deep.txt": 4})
    # a/ could not be listed: its names were probed; c/ was not there at all.
    probed = Listing(host="h", method="autoindex", complete=False)
    probed.files = {"a/1.txt": Entry(1), "top.txt": Entry(3)}  # top.txt listed already
    probed.failed = {"a/2.txt": "HEAD answered 500"}
    report = tally_report(tally, probed)
    assert report.missing == ["c/only-master.txt"]
    assert report.unknown == {"a/2.txt": "HEAD answered 500"}
    assert report.remote_files == 3  # top, deep, and a/1.txt once


def test_a_name_listed_outside_its_directory_counts_once():
    tally = _Tally(TREE)
    tally.add("", {"top.txt": 3, "c/only-master.txt": 6, "zz/odd.txt": 1})
    tally.add("a/", {"a/1.txt": 1, "a/2.txt": 2, "top.txt": 3})
    tally.add("a/b/", {"a/b/deep.txt": 4})
    tally.add("a/b/", {"a/b/deep.txt": 4})  # the same directory twice
    report = tally_report(tally)
    assert report.missing == []
    assert report.extra == ["zz/odd.txt"]
    assert report.sizes == {"c/only-master.txt": (5, 6)}
    assert report.remote_files == 6


def test_a_whole_listing_is_split_into_directories():
    tally = _Tally(TREE)
    tally.add_listing({"top.txt": Entry(3), "a/1.txt": Entry(1), "x/y/z": Entry(0)})
    report = tally_report(tally)
    assert report.missing == ["a/2.txt", "a/b/deep.txt", "c/only-master.txt"]
    assert report.extra == ["x/y/z"]
    assert report.remote_files == 3


def test_names_view_reads_the_tree_again_without_a_copy():
    names = _Names(TREE)
    assert len(names) == 5
    assert list(names) == list(names)
    assert sorted(names) == sorted(name for files in TREE.values() for name in files)
    assert "a/b/deep.txt" in names and "a/deep.txt" not in names and 3 not in names


def _validated_walk(root: Path) -> dict[str, int]:
    """The master copy as validate_name on every full name sees it: the reference."""
    found = {}
    for directory, _dirs, files in os.walk(root):
        relative = os.path.relpath(directory, root)
        for file_name in files:
            name = file_name if relative == "." else f"{relative}/{file_name}"
            try:
                name.encode("utf-8")
                validate_name(name)
            except (UnicodeEncodeError, SuspiciousFileOperation):
                continue
            found[name] = os.stat(os.path.join(directory, file_name)).st_size
    return found


def test_master_walk_skips_exactly_what_validate_name_refuses(tmp_path: Path):
    long_dir = "d" * 200
    write_tree(
        tmp_path,
        {
            "ok/\u00e9t\u00e9.txt": b"1",
            "ok/back\\slash": b"2",
            "tab\tdir/inner/f.txt": b"3",  # a bad directory: all below it is skipped
            "del\x7f": b"4",
            "/".join([long_dir] * 5) + "/x": b"5",  # fine: 1,005 characters
            "/".join([long_dir] * 5) + "/" + "y" * 30: b"6",  # over MAX_NAME_LENGTH
            "a/.hidden": b"7",
        },
    )
    os.mkdir(os.fsencode(tmp_path / "ok") + b"/bad-\xff")  # not UTF-8
    (Path(os.fsdecode(os.fsencode(tmp_path / "ok") + b"/bad-\xff")) / "f").write_bytes(b"8")
    (tmp_path / "ok" / "sym").symlink_to(tmp_path / "a")  # a directory link: not followed
    files, notes = master_files(tmp_path)
    assert files == _validated_walk(tmp_path)
    assert "a/.hidden" in files and "/".join([long_dir] * 5) + "/x" in files
    # backslash, tab directory, DEL, too long, undecodable
    assert len(notes) == 5
    assert sum(len(note) > MAX_NAME_LENGTH for note in notes) == 1
    tree, _ = _master_tree(tmp_path)
    assert set(tree) == {"ok/", "a/", "/".join([long_dir] * 5) + "/"}


def test_walk_submits_a_bounded_number_of_directories(monkeypatch: pytest.MonkeyPatch):
    """A tree of many directories is not submitted at once: a future each, held by the
    executor, was tens of megabytes at 3,000 directories x 3 hosts."""
    lock = threading.Lock()
    outstanding = peak = 0

    class Counting(concurrent.futures.ThreadPoolExecutor):
        def submit(self, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
            nonlocal outstanding, peak
            with lock:
                outstanding += 1
                peak = max(peak, outstanding)
            future = super().submit(*args, **kwargs)
            future.add_done_callback(lambda _: done())
            return future

    def done() -> None:
        nonlocal outstanding
        with lock:
            outstanding -= 1

    def read(directory: str) -> listing._Directory:
        subdirs = [f"d{i}/" for i in range(200)] if directory == "" else []
        return listing._Directory({f"{directory}f": 1}, None, subdirs, [])

    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", Counting)
    seen: list[str] = []
    result = Listing(host="h", method="autoindex")
    unlisted = listing._walk(read, 2, result, lambda directory, files: seen.extend(files))
    assert unlisted == []
    assert result.requests == 201 and result.files == {}
    assert sorted(seen) == sorted(["f", *(f"d{i}/f" for i in range(200))])
    assert peak <= 4


@pytest.mark.real_server
@pytest.mark.django_db
def test_audit_of_many_directories_with_dot_files_on_nginx(
    media_server_factory: Factory, media_root: Path, settings
):
    master = {f"u/{i:02d}/f{j}.txt": b"x" * (i + j) for i in range(40) for j in range(3)}
    master["u/07/.keep"] = b"k"
    master[".well-known/x"] = b"w"
    write_tree(media_root, master)
    nginx = media_server_factory("nginx", credentials=CREDENTIALS)
    host = dict(master)
    del host["u/03/f1.txt"]
    host["u/05/f2.txt"] = b"resized!!"
    host["u/99/new.txt"] = b"n"
    del host[".well-known/x"]
    write_tree(nginx.root, host)
    storage = configure(settings, [nginx])
    [report] = audit(storage, alias="default", workers=2).hosts
    assert report.method == "autoindex"
    assert report.missing == [".well-known/x", "u/03/f1.txt"]
    assert report.extra == ["u/99/new.txt"]
    assert report.sizes == {"u/05/f2.txt": (7, 9)}
    assert report.remote_files == len(host)
    checked = audit(storage, alias="default", checksum=True, workers=2).hosts[0]
    assert checked.checksum_mismatched == []
    assert checked.missing == [".well-known/x", "u/03/f1.txt"]
