"""The gallery: a list of uploads, an upload form and a delete button per upload.

Nothing here knows about media servers: the FileField saves through the default storage
(django_resto, see settings.py), which writes the master copy and PUTs the file to every
media server before ``save()`` returns. The only django_resto-specific code is catching
``ReplicationError``, which ``RESTO_FATAL_EXCEPTIONS`` (on by default) raises when a media
server did not take the change, so the visitor is told instead of shown a 500 page, and
storing the file before saving the row, so that such a failure leaves no row pointing at
a file that is not everywhere.
"""

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from django_resto.storage import ReplicationError

from .forms import UploadForm
from .models import Upload

#: Answered when a media server refused an upload: the site is fine, an upstream is not.
REPLICATION_FAILED = 502


@require_http_methods(["GET", "HEAD", "POST"])
def index(request: HttpRequest) -> HttpResponse:
    status = 200
    if request.method == "POST":
        form = UploadForm(request.POST, request.FILES)
        if form.is_valid():
            upload = form.save(commit=False)
            try:
                # Store the file (master copy, then every media server) before the row,
                # and outside any transaction: a failure leaves no row behind, and does
                # not roll back the journal entry django_resto writes about it.
                upload.file.save(upload.file.name, upload.file.file, save=False)
            except ReplicationError as error:
                # No row is saved. The master copy keeps the file and the hosts that
                # failed are journaled: process_failed_media brings them in line.
                form.add_error(None, f"The file could not be stored on every media server: {error}")
                status = REPLICATION_FAILED
            else:
                upload.save()
                messages.success(request, f"Uploaded {upload.file.name}.")
                return redirect("gallery:index")  # POST/redirect/GET: no resubmission
        else:
            status = 400
    else:
        form = UploadForm()
    uploads = Upload.objects.all()
    return render(request, "gallery/index.html", {"form": form, "uploads": uploads}, status=status)


@require_POST
def delete(request: HttpRequest, pk: int) -> HttpResponse:
    upload = get_object_or_404(Upload, pk=pk)
    name = upload.file.name
    try:
        upload.delete()  # the post_delete receiver deletes the file (signals.py)
    except ReplicationError as error:
        messages.warning(
            request,
            f"Deleted {name}, but not yet on every media server ({error}); "
            "process_failed_media will finish the job.",
        )
    else:
        messages.success(request, f"Deleted {name}.")
    return redirect("gallery:index")
