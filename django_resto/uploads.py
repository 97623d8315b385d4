"""Django uploads as bodies every media host can read at once (see transport.Body)."""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.core.files import File

from .transport import Body, BytesBody, FileBody

__all__ = ["body_of"]


@contextmanager
def body_of(content: File) -> Iterator[Body]:
    """Something every host can read in parallel, without loading big files in memory.

    Uploads larger than FILE_UPLOAD_MAX_MEMORY_SIZE already sit in a temporary file
    and small ones in a BytesIO; anything else is spooled to a temporary file once.
    """
    if hasattr(content, "temporary_file_path"):
        yield FileBody(content.temporary_file_path())
        return
    inner = getattr(content, "file", content)
    if isinstance(inner, io.BytesIO):
        # getvalue(), not getbuffer(): a BytesIO made from bytes (ContentFile,
        # SimpleUploadedFile) hands over that very bytes object, where getbuffer() would
        # first copy it (1 MiB per 1 MiB save). A BytesIO that Django's upload handler
        # wrote into is trimmed to its size, in place.
        yield BytesBody(inner.getvalue())
        return
    with tempfile.NamedTemporaryFile(
        prefix="django_resto_", dir=settings.FILE_UPLOAD_TEMP_DIR
    ) as spool:
        if hasattr(content, "chunks"):
            for chunk in content.chunks():
                spool.write(chunk.encode() if isinstance(chunk, str) else chunk)
        else:
            shutil.copyfileobj(content, spool)
        spool.flush()
        yield FileBody(spool.name)
