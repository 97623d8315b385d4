"""One process of the ordering drill (tests/test_ordering_drill.py).

``python -m tests.race_worker CONFIG.json`` configures Django by hand against the
drill's own test database (SQLite file or PostgreSQL, ``tests.dbconfig``) and master
copy, plays one role, and exits. Two of them run at once, as two gunicorn workers, a
worker and a timer, or two application servers would: separate interpreters that
share nothing but the database, the master copy and the media servers.

Each announces ``{"event": "ready"}`` once Django is set up, then waits for the drill's
"go" file, so that both start within a millisecond of each other.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from tests.worker_setup import configure_django, emit


def configure(config: dict[str, Any]) -> None:
    configure_django(config, config["storages"], "django_resto ordering drill")
    import django_resto.ordering

    django_resto.ordering.DISABLED = config["unordered"]
    if config.get("skew"):
        # This process's clock runs ahead; with ordering, nothing reads it any more.
        real = time.time_ns
        ahead = int(config["skew"] * 1e9)
        time.time_ns = lambda: real() + ahead  # type: ignore[assignment]


def wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.0005)
    return False


def complete(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size >= size
    except FileNotFoundError:
        return False


def content(name: str, size: int, tag: str) -> bytes:
    """Bytes that say who wrote them, so a stale copy is told from the right one."""
    seed = f"{tag}:{name}:".encode()
    return (seed * (size // len(seed) + 1))[:size]


def main(path: str) -> None:
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    configure(config)
    from django.core.files.base import ContentFile
    from django.core.files.storage import storages
    from django.core.management import call_command

    storage = storages[config["alias"]]
    names: list[str] = config["names"]
    size: int = config.get("size", 0)
    root = Path(config["media_root"])
    emit(event="ready")
    go = Path(config["go"])
    if not wait_for(go.exists, timeout=60):
        raise SystemExit("the drill never said go")
    role = config["role"]
    done = 0
    if role == "save":
        for name in names:
            storage.save(name, ContentFile(content(name, size, "big"), name=name))
            done += 1
    elif role in ("delete_when_complete", "overwrite_when_complete"):
        for name in names:
            if not wait_for(lambda name=name: complete(root / name, size)):
                continue
            if role == "delete_when_complete":
                storage.delete(name)
            else:
                small = content(name, config["small"], "small")
                storage.save(name, ContentFile(small, name=name))
            done += 1
    elif role == "delete":
        watch = [Path(item) for item in config.get("watch", [])]
        if watch and not wait_for(lambda: any(path.exists() for path in watch)):
            raise SystemExit("none of the watched files appeared")
        for name in names:
            storage.delete(name)
            done += 1
            time.sleep(config.get("pause", 0))
    elif role == "process_failed_media":
        with contextlib.suppress(SystemExit):  # exit 1: rows remain (the deletes' own)
            call_command("process_failed_media", "--storage", config["alias"])
        done = 1
    elif role == "resto_sync":
        with contextlib.suppress(SystemExit):
            call_command("resto_sync", "--repair", "--storage", config["alias"], stdout=sys.stderr)
        done = 1
    elif role == "overwrite_rounds":
        tag = config["tag"]
        for round_ in range(config["rounds"]):
            for index, name in enumerate(names):
                data = content(name, 512 + (round_ * 997 + index * 131) % size, f"{tag}{round_}")
                storage.save(name, ContentFile(data, name=name))
                done += 1
    else:
        raise SystemExit(f"unknown role {role!r}")
    if hasattr(storage, "wait"):
        storage.wait(timeout=60)
    emit(event="finished", done=done, pid=os.getpid())


if __name__ == "__main__":
    main(sys.argv[1])
