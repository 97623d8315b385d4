"""One model with a FileField: what django_resto replicates."""

from django.db import models


class Upload(models.Model):
    """A file a visitor uploaded.

    ``upload_to`` nests the files by year and month: nested names are the case that
    strict WebDAV servers (lighttpd) answer with 409 until the parent collections exist,
    which django_resto handles, so the example exercises it on every upload. The field
    uses the default storage, which settings.py points at django_resto.
    """

    title = models.CharField(max_length=200, blank=True)
    file = models.FileField(upload_to="uploads/%Y/%m/")
    uploaded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-uploaded_at", "-pk"]

    def __str__(self) -> str:
        return self.title or self.file.name
