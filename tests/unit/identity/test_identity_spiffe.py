from __future__ import annotations

import pytest

from ztfm.errors import IdentityError
from ztfm.identity import Identity


def test_round_trip() -> None:
    ident = Identity("acme.example", "cams", "device", "cam-1")
    assert ident.uri == "spiffe://acme.example/segment/cams/role/device/id/cam-1"
    assert Identity.from_uri(ident.uri) == ident


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "https://acme.example/segment/cams/role/device/id/cam-1",
        "spiffe://acme.example/segment/cams/role/device/id/cam-1/extra",
        "spiffe://acme.example/segment/cams/role/admin/id/cam-1",
        "spiffe://acme.example/seg/cams/role/device/id/cam-1",
        "spiffe://acme.example/segment/../role/device/id/cam-1",
        "spiffe://acme.example/segment/cams/role/device/id/",
        "spiffe://ACME/segment/cams/role/device/id/cam-1",
        "spiffe://acme.example/segment/Cams/role/device/id/cam-1",
        "spiffe://acme.example/segment/cams/role/device/id/cam 1",
        "spiffe://acme.example/segment/cams/role/device/id/cam-1?x=1",
        "spiffe://acme.example/segment/cams/role/device/id/" + "a" * 600,
        "spiffe:///segment/cams/role/device/id/cam-1",
    ],
)
def test_bad_uris_rejected(uri: str) -> None:
    with pytest.raises(IdentityError):
        Identity.from_uri(uri)


def test_non_string_uri_rejected() -> None:
    with pytest.raises(IdentityError):
        Identity.from_uri(b"spiffe://x/segment/a/role/device/id/b")  # type: ignore[arg-type]
