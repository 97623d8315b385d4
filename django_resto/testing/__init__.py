"""Helpers for testing projects that use django_resto.

:class:`TestHttpServer` is an in-process media server on loopback, with fault
injection; the pytest plugin (:mod:`django_resto.testing.pytest_plugin`, loaded
automatically once django_resto is installed) gives a test one as the
``media_server`` fixture. Pure standard library: it imports before Django is set up.
"""

from .http_server import RequestRecord, TestHttpServer

__all__ = ["RequestRecord", "TestHttpServer"]
