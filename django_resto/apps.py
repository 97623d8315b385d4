from django.apps import AppConfig


class DjangoRestoConfig(AppConfig):
    name = "django_resto"
    verbose_name = "Replicated media storage"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the system checks.
        from . import checks  # noqa: F401
