"""The import path TestHttpServer had before django_resto.testing; kept, as stable API.

``from django_resto.http_server import TestHttpServer`` goes on working: this module
is :mod:`django_resto.testing.http_server` itself, under its old name, so code that
patches or inspects it sees the same objects.
"""

import sys

from .testing import http_server as _http_server

sys.modules[__name__] = _http_server
