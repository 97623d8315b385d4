"""URLs of the example site: the gallery at the root, and the admin."""

from django.conf import settings
from django.conf.urls.static import static
from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("gallery.urls")),
]

# In production the media servers answer MEDIA_URL; with DEBUG on, runserver serves the
# master copy so the site also works with no media server at all.
urlpatterns += static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT)
