"""Where the task stores the objects it downloads (``q4.aws.local_path_for``): any S3 key listed under a
run's input prefix either is refused or becomes a file strictly under the download root — a real file,
created here — and different keys never share a file."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from q4 import aws

HOSTILE = settings.get_profile("hostile")

segment = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/"), min_size=0, max_size=12
) | st.sampled_from(["", ".", "..", "...", "a.csv", "\x00", "x" * 300 + ".csv", "é" * 200 + ".parquet", "~"])
keys = st.lists(segment, min_size=1, max_size=4).map("/".join) | st.sampled_from(
    ["/etc/passwd", "../../x.csv", "a//b.csv", "a/./b.csv", "./a.csv", "a/..", "C:\\x.csv", "a\\..\\b.csv"]
)


@settings(HOSTILE, max_examples=300)
@given(key_list=st.lists(keys, min_size=1, max_size=5, unique=True))
def test_listed_keys_stay_under_the_download_root(
    tmp_path_factory: pytest.TempPathFactory, key_list: list[str]
) -> None:
    root = tmp_path_factory.mktemp("dl") / "input"
    stored: dict[Path, str] = {}
    for key in key_list:
        try:
            aws.local_path_for(root, key)
        except aws.UnsafeKeyError as exc:
            assert exc.key == key
            assert key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")) or "\x00" in key
    safe = [k for k in key_list if not _unsafe(k)]
    for key, path in zip(safe, aws.input_paths(root, safe), strict=True):
        assert path.resolve().is_relative_to(root.resolve()) and path.resolve() != root.resolve()
        assert path not in stored, (key, stored.get(path))  # two keys never share one file
        stored[path] = key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(key, encoding="utf-8", errors="surrogatepass")  # the file system accepts the name
        suffix = Path(key.split("/")[-1]).suffix
        assert path.suffix == suffix or len(suffix.encode()) > 32  # .csv / .parquet survive shortening


def _unsafe(key: str) -> bool:
    try:
        aws.local_path_for(Path("/r"), key)
    except aws.UnsafeKeyError:
        return True
    return False


def test_a_300_character_file_name_is_shortened_keeping_its_suffix(tmp_path):
    key = "x" * 300 + ".csv"
    path = aws.local_path_for(tmp_path, key)
    path.write_text("a,b\n")
    assert path.suffix == ".csv" and len(path.name.encode()) <= 255
    assert aws.local_path_for(tmp_path, key) == path  # stable
    assert aws.local_path_for(tmp_path, "x" * 299 + "y.csv") != path
