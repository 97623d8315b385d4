"""The async worker of the fault drill (tests/test_fault_drill.py), run as a subprocess.

``python -m tests.drill_worker CONFIG.json`` configures Django by hand against the
test's own database, SQLite or PostgreSQL (``"databases"``, from
tests.dbconfig.subprocess_databases()), and MEDIA_ROOT, then saves, overwrites and
deletes files through an ``AsyncStorage`` registered under the same STORAGES alias as the
drill's storage, so its journal rows are the drill's to repair. The drill kills it
with SIGKILL part-way through; the background replications it had queued die with it.

Every operation is announced on stdout as one JSON line before it starts
(``{"event": "begin", ...}``) and after it returns (``{"event": "done", ...}``), so
the drill knows which operation, if any, the kill interrupted. The sequence of
operations comes from the seed alone.
"""

from __future__ import annotations

import json
import random
import sys
import time
from typing import Any

from tests.worker_setup import configure_django, emit


def configure(config: dict[str, Any]) -> None:
    storage = {"BACKEND": "django_resto.storage.AsyncStorage", "OPTIONS": config["options"]}
    configure_django(config, {config["alias"]: storage}, "django_resto fault drill worker")


def main(path: str) -> None:
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    configure(config)
    from django.core.files.base import ContentFile
    from django.core.files.storage import storages

    storage = storages[config["alias"]]
    rng = random.Random(config["seed"])
    # What this worker believes the master copy holds, among the names it may touch.
    present = set(config["handoff"])
    own = 0
    emit(event="ready", journal_key=storage.journal_key)
    for index in range(config["operations"]):
        roll = rng.random()
        candidates = sorted(present)
        if roll < 0.45 or not candidates:
            own += 1
            op, name = "save", f"worker/{own % 7}/w{own}.bin"
        elif roll < 0.75:
            op, name = "overwrite", rng.choice(candidates)
        else:
            op, name = "delete", rng.choice(candidates)
        data = rng.randbytes(rng.randint(1, 48 * 1024)) if op != "delete" else b""
        emit(event="begin", i=index, op=op, name=name, size=len(data))
        if op == "delete":
            storage.delete(name)
            present.discard(name)
        else:
            saved = storage.save(name, ContentFile(data, name=name))
            assert saved == name, (saved, name)  # allow_overwrite: names never change
            present.add(name)
        emit(event="done", i=index)
        time.sleep(config["pause"])
    emit(event="finished")
    # Not reached in the drill (it kills the worker first); let queued work finish.
    storage.wait(timeout=60)


if __name__ == "__main__":
    main(sys.argv[1])
