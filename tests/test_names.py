import pytest
from django.core.exceptions import SuspiciousFileOperation

from django_resto.names import validate_name


@pytest.mark.parametrize(
    "name",
    ["x.jpg", "uploads/2026/11/x.jpg", "héllo wörld.txt", "a%20b#c?d+e.txt", "日本/写真.png"],
)
def test_good_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "/etc/passwd",
        "../secret",
        "a/../../b",
        "a/..",
        "a\\b",
        "..\\x",
        "a\x00b",
        "a\nb",
        "a\rb",
        "a\x7fb",
        "",
        ".",
        "a//b",
        "a/./b",
        "dir/",
    ],
)
def test_bad_names(name):
    # Ours alone (the default: Django's check costs a pathlib object per call)...
    with pytest.raises(SuspiciousFileOperation):
        validate_name(name)
    # ... and with Django's own validate_file_name as well.
    with pytest.raises(SuspiciousFileOperation):
        validate_name(name, django_check=True)


def test_non_string():
    with pytest.raises(SuspiciousFileOperation, match="must be a string"):
        validate_name(b"x.jpg")  # type: ignore[arg-type]
