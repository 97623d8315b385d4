"""``manage.py resto_sync``: audit the media servers against the master copy, and repair.

Exit status: 0 when every audited host matches its reference at the end of the
run (after repairs, if asked for); 1 while differences remain, a host cannot be
reached or an action failed; 2 for a usage error (unknown storage or host,
incompatible options). So ``resto_sync`` alone is a monitoring check, and
``resto_sync --repair --delete-extra`` a fix that says whether it worked.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.files.storage import storages
from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_resto import registry
from django_resto.listing import DEFAULT_WORKERS, METHODS
from django_resto.management.options import add_host_option, add_storage_option
from django_resto.management.progress import Progress, command_stream
from django_resto.sync import HostReport, SyncReport, audit, repair

#: Names listed per category in the text output unless -v 2 asks for all of them.
SHOWN = 20

#: JSON output is written this many encoder pieces at a time.
JSON_PIECES = 4096


def _usage(message: str) -> CommandError:
    return CommandError(message, returncode=2)


class Command(BaseCommand):
    help = (
        "Compare the files on each media server with the master copy (MEDIA_ROOT): "
        "report missing, extra and different files; optionally repair them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_storage_option(
            parser,
            "Audit this STORAGES alias (repeatable). Default: every HybridStorage and "
            "AsyncStorage. A DistributedStorage must be named: its hosts are compared with "
            "each other, report only.",
        )
        add_host_option(
            parser, "Only this media server, as written in the storage's hosts (repeatable)."
        )
        parser.add_argument(
            "--checksum",
            action="store_true",
            help="Also compare contents: download every same-size file and compare its "
            "SHA-256 with the master copy's. In a bucket (a storage:ALIAS host), an object "
            "whose ETag is its MD5 is compared without a download.",
        )
        parser.add_argument(
            "--repair",
            action="store_true",
            help="Upload missing and different files from the master copy (and files whose "
            "state on a host could not be read).",
        )
        parser.add_argument(
            "--delete-extra",
            action="store_true",
            help="Delete files a media server has and the master copy does not.",
        )
        parser.add_argument(
            "--method",
            choices=("auto", *METHODS),
            default="auto",
            help="How to list a media server: PROPFIND (lighttpd, Apache), nginx's JSON "
            "autoindex, or HEAD per file (cannot find extra files). Default: detected. "
            "A storage:ALIAS host is always listed by its storage (S3: ListObjectsV2).",
        )
        parser.add_argument(
            "--listing-prefix",
            metavar="PATH",
            help="URL path of nginx's JSON autoindex of the media root "
            "(default: RESTO_LISTING_PREFIX or /_resto/list/).",
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=DEFAULT_WORKERS,
            help=f"Parallel requests per media server (default {DEFAULT_WORKERS}).",
        )
        parser.add_argument("--json", action="store_true", help="Print a JSON summary on stdout.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["workers"] < 1:
            raise _usage("--workers must be a positive number")
        targets = self._storages(options["storages"])
        modifying = options["repair"] or options["delete_extra"]
        for alias, storage in targets:
            capabilities = registry.capabilities_of(storage)
            master_copy = capabilities is not None and capabilities.master_copy
            if not master_copy and (modifying or options["checksum"]):
                raise _usage(
                    f"STORAGES[{alias!r}] is a DistributedStorage: it has no master copy, so "
                    "resto_sync only compares its hosts with each other (no --checksum, "
                    "--repair or --delete-extra). Missed writes are repaired from the "
                    "journal by process_failed_media."
                )
        if options["hosts"]:
            known = {host for _, storage in targets for host in storage.hosts}
            unknown = [host for host in options["hosts"] if host not in known]
            if unknown:
                raise _usage(f"{unknown[0]!r} is not a host of the audited storage(s)")
        method = None if options["method"] == "auto" else options["method"]
        stream = command_stream(self.stderr)

        def progress(total: int, label: str) -> Progress:
            return Progress(total, label, stream=stream)

        reports: list[SyncReport] = []
        for alias, storage in targets:
            hosts = [h for h in storage.hosts if not options["hosts"] or h in options["hosts"]]
            try:
                report = audit(
                    storage,
                    alias=alias,
                    hosts=hosts,
                    checksum=options["checksum"],
                    method=method,
                    prefix=options["listing_prefix"],
                    workers=options["workers"],
                    progress=progress,
                )
                if modifying:
                    repair(
                        storage,
                        report,
                        fix=options["repair"],
                        delete_extra=options["delete_extra"],
                        workers=options["workers"],
                        progress=progress,
                    )
            finally:
                storage.close()
            reports.append(report)

        ok = all(report.ok for report in reports)
        if options["json"]:
            summary = {"ok": ok, "storages": [report.to_dict() for report in reports]}
            self._write_json(summary)
        else:
            for report in reports:
                self._print(report, options["verbosity"], modifying)
        if not ok:
            raise SystemExit(1)

    def _write_json(self, summary: dict[str, Any]) -> None:
        """Print ``summary`` in pieces: a host that lost 300,000 files makes a report of
        megabytes, which ``json.dumps`` would hold whole, with its pieces, on top of the
        audit's own memory."""
        pieces: list[str] = []
        for piece in json.JSONEncoder(indent=2).iterencode(summary):
            pieces.append(piece)
            if len(pieces) >= JSON_PIECES:
                self.stdout.write("".join(pieces), ending="")
                pieces.clear()
        self.stdout.write("".join(pieces))

    def _storages(self, aliases: list[str] | None) -> list[tuple[str, Any]]:
        configured = registry.configured()
        if aliases:
            found = []
            for alias in dict.fromkeys(aliases):
                if alias not in configured:
                    raise _usage(f"{alias!r} is not in STORAGES")
                if registry.backend_class(alias) is None:
                    raise _usage(f"STORAGES[{alias!r}] is not a django_resto storage")
                found.append((alias, storages[alias]))
            return found
        # Classes first: instantiating an unrelated backend (staticfiles) can fail on
        # settings this command does not need.
        found = [(alias, storages[alias]) for alias in registry.aliases(master_copy=True)]
        if not found:
            raise _usage(
                "No HybridStorage or AsyncStorage in STORAGES; name a DistributedStorage "
                "with --storage to compare its hosts with each other."
            )
        return found

    def _print(self, report: SyncReport, verbosity: int, modifying: bool) -> None:
        reference = "the master copy" if report.reference == "master" else "the union of its hosts"
        self.stdout.write(
            f"Storage {report.storage!r} ({report.backend}): {report.reference_files} file(s) "
            f"in {reference}; {len(report.hosts)} host(s) audited in {report.elapsed:.2f}s."
        )
        for note in report.notes:
            self.stdout.write(f"  note: {note}")
        for host in report.hosts:
            self._print_host(host, verbosity, modifying)
        if report.ok:
            self.stdout.write(self.style.SUCCESS("  Every audited host matches."))
        else:
            bad = sum(1 for host in report.hosts if not host.ok)
            self.stdout.write(self.style.ERROR(f"  Differences remain on {bad} host(s)."))

    def _print_host(self, host: HostReport, verbosity: int, modifying: bool) -> None:
        if not host.reachable:
            self.stdout.write(self.style.ERROR(f"  {host.host}: UNREACHABLE"))
            for error in host.errors:
                self.stdout.write(f"    {error}")
            return
        counts = (
            f"{len(host.missing)} missing, {len(host.extra)} extra, "
            f"{len(host.mismatched)} size mismatch"
        )
        if host.checksum_mismatched:
            counts += f", {len(host.checksum_mismatched)} content mismatch"
        if host.unknown:
            counts += f", {len(host.unknown)} unknown"
        self.stdout.write(
            f"  {host.host} [{host.method}]: {host.remote_files} file(s); {counts}"
            + ("" if host.complete else " (extra files cannot be detected)")
        )
        for label, names in (
            ("missing", host.missing),
            ("extra", host.extra),
            ("size mismatch", host.mismatched),
            ("content mismatch", host.checksum_mismatched),
            ("unknown", list(host.unknown)),
        ):
            shown = names if verbosity >= 2 else names[:SHOWN]
            for name in shown:
                detail = ""
                if name in host.sizes:
                    expected, found = host.sizes[name]
                    detail = f" (expected {expected} bytes, found {found})"
                elif name in host.unknown:
                    detail = f" ({host.unknown[name]})"
                self.stdout.write(f"    {label}: {name}{detail}")
            if len(names) > len(shown):
                self.stdout.write(
                    f"    ... and {len(names) - len(shown)} more {label} (-v 2 or --json)"
                )
        if modifying:
            self.stdout.write(f"    repaired {len(host.repaired)}, deleted {len(host.deleted)}")
        for error in host.errors:
            self.stdout.write(self.style.ERROR(f"    error: {error}"))
        if verbosity >= 2:
            for note in host.notes:
                self.stdout.write(f"    note: {note}")
        elif host.notes:
            self.stdout.write(f"    {len(host.notes)} note(s) (-v 2 or --json)")
