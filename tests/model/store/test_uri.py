"""Store URIs: directories, file:// and gs:// parse; anything else is a clear error."""

from pathlib import Path

import pytest

from model.store import StoreError, open_store
from model.store.uri import parse_store_uri


def test_local_forms(tmp_path):
    assert parse_store_uri(str(tmp_path)).path == str(tmp_path)
    assert parse_store_uri(f"file://{tmp_path}").path == str(tmp_path)
    assert parse_store_uri(Path("rel/dir")).path == str(Path("rel/dir").resolve())


def test_gs_form():
    loc = parse_store_uri("gs://my-bucket/a/b/")
    assert (loc.scheme, loc.bucket, loc.path) == ("gs", "my-bucket", "a/b")
    assert str(loc) == "gs://my-bucket/a/b"
    assert parse_store_uri("gs://my-bucket").path == ""


@pytest.mark.parametrize(
    "uri, message",
    [
        ("s3://bucket/x", "unknown store URI scheme 's3'"),
        ("http://example.com/store", "unknown store URI scheme 'http'"),
        ("", "empty"),
        ("gs://Bad_Bucket!/x", "not a valid bucket name"),
        ("file://otherhost/x", "remote host"),
    ],
)
def test_bad_uris_say_how_to_fix(uri, message):
    with pytest.raises(StoreError, match=message):
        open_store(uri)


def test_a_file_is_not_a_store(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        open_store(f)
