"""Delete an upload's file, on the master copy and every media server, with its row.

Django leaves files behind when rows are deleted. Doing it in a ``post_delete`` receiver
covers the site's delete button, the admin's delete page and its bulk action alike. The
file goes once the transaction commits, so a rolled-back delete keeps it; with
``RESTO_FATAL_EXCEPTIONS`` on, a media server that fails raises ``ReplicationError`` to the
code that deleted the row (the row is gone and the failure is journaled for
``process_failed_media``).
"""

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from .models import Upload


@receiver(post_delete, sender=Upload, dispatch_uid="gallery.delete_upload_file")
def delete_upload_file(sender: type[Upload], instance: Upload, **kwargs: object) -> None:
    name = instance.file.name
    if not name:
        return
    storage = instance.file.storage
    transaction.on_commit(lambda: storage.delete(name))
