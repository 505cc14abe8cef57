"""URL inputs and URL roots: parsing VISIONQ_ALLOWED_ROOTS and containment."""

from __future__ import annotations

import pytest

from visionq.settings import Settings
from visionq.urls import is_url, split_roots, within_roots
from workers.paths import PathPolicy


@pytest.mark.parametrize(
    ("value", "roots"),
    [
        ("/data/a:/data/b", ("/data/a", "/data/b")),  # the old form keeps working
        ("/data/a::/data/b:", ("/data/a", "/data/b")),
        ("s3://photos/set/", ("s3://photos/set/",)),
        (
            "/data/a:s3://b/p/:https://h.example:8443/i/:/data/b",
            ("/data/a", "s3://b/p/", "https://h.example:8443/i/", "/data/b"),
        ),
        ("http://[::1]:8080/img/:/srv", ("http://[::1]:8080/img/", "/srv")),
        ("https://cdn.example.com", ("https://cdn.example.com",)),
    ],
)
def test_split_roots(value, roots):
    assert split_roots(value) == roots
    assert Settings(allowed_roots=value).roots == roots


def test_split_roots_on_a_semicolon_platform_is_a_plain_split():
    assert split_roots("C:\\data;s3://b/p/", sep=";") == ("C:\\data", "s3://b/p/")


@pytest.mark.parametrize(
    ("url", "inside"),
    [
        ("https://cdn.example.com/img/a.jpg", True),
        ("HTTPS://CDN.example.com:443/img/a.jpg?sig=1", True),  # case, default port, query
        ("https://cdn.example.com/img", True),
        ("https://cdn.example.com/imgs/a.jpg", False),  # a prefix of the name, not a folder
        ("https://cdn.example.com/img/../secret.jpg", False),
        ("https://cdn.example.com/img/%2e%2e/secret.jpg", False),
        ("https://cdn.example.com@evil.example/img/a.jpg", False),
        ("https://cdn.example.com:8443/img/a.jpg", False),
        ("http://cdn.example.com/img/a.jpg", False),  # another scheme
        ("s3://photos/set/a.jpg", True),
        ("s3://photos/settings/a.jpg", False),
        ("s3://other/set/a.jpg", False),
    ],
)
def test_within_roots(url, inside):
    roots = ("https://cdn.example.com/img/", "s3://photos/set")
    assert within_roots(url, roots) is inside


def test_ipv6_roots():
    assert within_roots("http://[::1]:8080/img/a.jpg", ("http://[::1]:8080/img/",))
    assert not within_roots("http://[::1]:8081/img/a.jpg", ("http://[::1]:8080/img/",))


def test_is_url():
    assert is_url("s3://b/k") and is_url("https://h/x") and is_url("gs://b/k")
    assert not is_url("/data/a.jpg") and not is_url("relative/a.jpg") and not is_url("C:\\x")
    assert not is_url(None)


def test_url_roots_alone_still_restrict_local_paths(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    policy = PathPolicy(roots=["s3://photos/set/"], max_bytes=100)
    assert policy.restricted and policy.roots == () and policy.url_roots == ("s3://photos/set/",)
    with pytest.raises(Exception, match="outside VISIONQ_ALLOWED_ROOTS"):
        policy.resolve(str(tmp_path / "a.jpg"))
