"""Command-line options shared by the django_resto management commands.

The commands select work the same way (by STORAGES alias, by host), so the options
are spelled and parsed the same way everywhere.
"""

from __future__ import annotations

from django.core.management.base import CommandParser


def add_storage_option(parser: CommandParser, help: str) -> None:
    parser.add_argument("--storage", action="append", dest="storages", metavar="ALIAS", help=help)


def add_host_option(parser: CommandParser, help: str) -> None:
    parser.add_argument("--host", action="append", dest="hosts", metavar="HOST", help=help)
