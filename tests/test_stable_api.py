"""The seed's stable API survives the replication core's redesign, one test each.

``execute`` and ``execute_one`` still decide how work runs and are still handed
picklable callables; the per-host methods, ``get_setting`` and ``TestHttpServer``
(under its old import path and the new one, and as the ``media_server`` fixture)
work as django-resto 1.x documented them. The last tests hold the package's
structure: no import circle, and no module outside the backends testing classes.
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
from django.core.files.base import ContentFile

from django_resto.fanout import Outcome
from django_resto.models import PendingReplication
from django_resto.settings import get_setting
from django_resto.storage import AsyncStorage, HybridStorage

pytestmark = pytest.mark.django_db(transaction=True)

PACKAGE = Path(__file__).resolve().parent.parent / "django_resto"


class Recording(HybridStorage):
    """Runs every operation itself, after pickling what it was handed, as rq would."""

    handed: list[tuple[str, str]] = []

    def execute(self, func, name, *args, **kwargs):
        func = pickle.loads(pickle.dumps(func))  # a queue would carry it like this
        type(self).handed.append((func.__name__, name))
        return [
            Outcome(host, result=func(host, name, *args, **kwargs)) for host in func.__self__.hosts
        ]


def test_execute_override_decides_how_every_replication_runs(test_servers, media_root):
    servers = test_servers(2)
    Recording.handed = []
    storage = Recording(journal_alias="tests", hosts=[s.host for s in servers])
    storage.save("a/b.txt", ContentFile(b"bytes"))
    storage.delete("a/b.txt")
    assert Recording.handed == [("put_file", "a/b.txt"), ("delete_file", "a/b.txt")]
    assert [s.exists("a/b.txt") for s in servers] == [False, False]
    assert [r.method for r in servers[0].requests] == ["PUT", "DELETE"]


class Queued(AsyncStorage):
    """An rq-style queue: execute_one keeps (pickled callable, host, name) for a worker."""

    queue: list[bytes] = []

    def execute_one(self, func, host, name, *args, **kwargs):
        type(self).queue.append(pickle.dumps((func, host, name, args, kwargs)))


def test_execute_one_override_gets_picklable_work_that_a_worker_can_run(test_servers, media_root):
    servers = test_servers(2)
    Queued.queue = []
    storage = Queued(journal_alias="tests", hosts=[s.host for s in servers])
    storage.save("q.txt", ContentFile(b"queued"))
    assert len(Queued.queue) == 2
    # Nothing ran yet: the intent rows say both hosts are behind.
    assert PendingReplication.objects.filter(name="q.txt").count() == 2
    for job in Queued.queue:
        func, host, name, args, kwargs = pickle.loads(job)
        assert func.__name__ == "converge"
        outcome = func.__self__.run_one(func, host, name, *args, **kwargs)
        assert outcome.ok and outcome.result == "PUT"
    assert [s.read("q.txt") for s in servers] == [b"queued"] * 2
    assert PendingReplication.objects.filter(name="q.txt").count() == 0


def test_per_host_methods_act_on_one_host(test_servers, media_root):
    one, other = test_servers(2)
    storage = HybridStorage(journal_alias="tests", hosts=[one.host, other.host])
    (media_root / "p.txt").write_bytes(b"master")
    assert storage.put_file(one.host, "p.txt") is True  # created
    assert storage.put_file(one.host, "p.txt") is False  # replaced
    assert one.read("p.txt") == b"master" and not other.exists("p.txt")
    assert storage.delete_file(one.host, "p.txt") is True
    assert storage.delete_file(one.host, "p.txt") is False  # already gone: a warning only
    assert storage.converge(other.host, "p.txt") == "PUT"
    assert other.read("p.txt") == b"master"
    (media_root / "p.txt").unlink()
    assert storage.converge(other.host, "p.txt") == "DELETE"
    assert not other.exists("p.txt")


def test_get_setting_reads_the_1x_names(settings):
    settings.RESTO_MEDIA_HOSTS = ["media-1:8080"]
    assert get_setting("MEDIA_HOSTS") == ["media-1:8080"]
    assert get_setting("RESTO_MEDIA_HOSTS") == ["media-1:8080"]


def test_test_http_server_under_both_import_paths():
    from django_resto import http_server as old
    from django_resto.testing import TestHttpServer
    from django_resto.testing import http_server as new

    assert old is new and old.TestHttpServer is TestHttpServer


def test_media_server_fixture_serves_media_url(media_server, settings):
    storage = HybridStorage(journal_alias="tests", hosts=[media_server.host])
    storage.save("fixture.txt", ContentFile(b"from the fixture"))
    assert media_server.base_path == "/media/"
    assert media_server.read("fixture.txt") == b"from the fixture"


@pytest.mark.media_server(strict=True)
def test_media_server_fixture_takes_options_from_its_marker(media_server):
    storage = HybridStorage(journal_alias="tests", hosts=[media_server.host])
    storage.save("deep/er/x.txt", ContentFile(b"x"))
    assert media_server.strict
    # A strict server refuses a PUT into a missing collection (409); the storage then
    # tries the innermost collection, walks up on 409 and creates both.
    assert [(r.method, r.status) for r in media_server.requests] == [
        ("PUT", 409),
        ("MKCOL", 409),
        ("MKCOL", 201),
        ("MKCOL", 201),
        ("PUT", 201),
    ]


# --- structure ---------------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    """The django_resto modules ``path`` imports, anywhere in it (deferred and typing too)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("django_resto")}


def _graph() -> dict[str, set[str]]:
    files = {
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in PACKAGE.rglob("*.py")
        if "migrations" not in p.parts
    }
    return {
        name: {i for i in _imports(path) if i in files and i != name}
        for name, path in files.items()
    }


def test_no_import_circle_in_the_package():
    graph = _graph()
    # The old http_server path loads the new module by design: an alias, not a circle.
    graph["django_resto.http_server"].discard("django_resto.testing")
    visiting, done, circles = set(), set(), []

    def visit(node: str, trail: list[str]) -> None:
        if node in done:
            return
        if node in visiting:
            circles.append([*trail[trail.index(node) :], node])
            return
        visiting.add(node)
        for target in sorted(graph[node]):
            visit(target, [*trail, node])
        visiting.discard(node)
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    assert graph["django_resto.storage"], "the import graph was not read"
    assert circles == []


def test_only_the_backends_test_for_backend_classes():
    backends = {"HybridStorage", "AsyncStorage", "DistributedStorage", "ReplicatedStorageMixin"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name in {"storage.py", "base.py"}:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in {"isinstance", "issubclass"}
                and any(isinstance(n, ast.Name) and n.id in backends for n in ast.walk(node))
            ):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []
