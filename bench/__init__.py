"""The django_resto benchmark: ``python bench/run.py`` (or ``python -m bench``)."""
