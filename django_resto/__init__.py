"""django_resto: replicated media storage for Django.

Files are stored through Django's Storage API and copied over HTTP (PUT/DELETE) to
every media server in parallel. See django_resto.storage for the backends.
"""

__version__ = "2.0.0.dev0"
