"""`q4 run` on compressed CSV (.csv.gz, .csv.bz2, .csv.zst): the same table as the plain file, read as a
stream; a stream that does not decompress is one sentence, exit 2, malformed_csv (docs/contract.md,
"Compressed CSV")."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from q4 import tables
from q4.sources import Source

Q4 = str(Path(sys.executable).with_name("q4"))


def _csv_text(rows: int = 400, seed: int = 5) -> bytes:
    """A table with a passthrough id ("007" stays text), a quoted value holding a newline and a comma."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 3)) @ rng.standard_normal((3, 3))
    lines = ["key,a,b,c,note"]
    lines += [f'{i:04d},{r[0]:.6f},{r[1]:.6f},{r[2]:.6f},"n {i},\nx"' for i, r in enumerate(x)]
    return ("\n".join(lines) + "\n").encode()


def _zstd(data: bytes) -> bytes:
    return pa.Codec("zstd").compress(data, asbytes=True)


COMPRESS = {".csv.gz": gzip.compress, ".csv.bz2": bz2.compress, ".csv.zst": _zstd, ".CSV.GZ": gzip.compress}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([Q4, "run", *args], capture_output=True, text=True, timeout=300, check=False)


#: Artifacts that show the input's name, size and sha256 (compared with those replaced).
SHOWS_INPUT = ("output/Q_study.json", "viz/report.html")


def _artifacts(run_dir: Path, src: Path) -> dict[str, bytes]:
    """Every artifact's bytes; the input's name, size and sha256 (MANIFEST, Q_study, report) left out."""
    out = {}
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    shown = {str(src): "INPUT", f"{src.stat().st_size:,} bytes": "SIZE bytes", digest: "SHA256"}
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        key = path.relative_to(run_dir).as_posix()
        data = path.read_bytes()
        if key in ("MANIFEST.json", "output/Q_study.json"):
            doc = json.loads(data)
            doc.pop("inputs" if key == "MANIFEST.json" else "input")
            if key == "MANIFEST.json":  # timings, and the two documents above, differ by nature
                doc.pop("timings")
                doc["artifacts"] = [a for a in doc["artifacts"] if a["key"] not in SHOWS_INPUT]
            data = json.dumps(doc, sort_keys=True).encode()
        if key == "viz/report.html":
            for value, token in shown.items():
                assert value.encode() in data, (value, key)
                data = data.replace(value.encode(), token.encode())
        out[key] = data
    return out


def test_the_codecs_q4_promises_are_in_this_pyarrow():
    assert all(pa.Codec.is_available(codec) for codec in tables.CSV_CODECS.values())


def test_compressed_csv_gives_the_plain_files_artifacts_bit_for_bit(tmp_path):
    text = _csv_text()
    (tmp_path / "t.csv").write_bytes(text)
    plain = _run(str(tmp_path / "t.csv"), "--out", str(tmp_path / "plain"), "--run-id", "r", "--mode", "full")
    assert plain.returncode == 0, plain.stderr
    expected = _artifacts(tmp_path / "plain" / "run=r", tmp_path / "t.csv")
    assert "output/Q_keep.csv" in expected and "viz/report.html" in expected
    for i, (suffix, compress) in enumerate(COMPRESS.items()):
        src = tmp_path / f"t{suffix}"
        src.write_bytes(compress(text))
        out = tmp_path / f"out{i}"
        done = _run(str(src), "--out", str(out), "--run-id", "r", "--mode", "full")
        assert done.returncode == 0, (suffix, done.stderr)
        assert _artifacts(out / "run=r", src) == expected, suffix
        manifest = json.loads((out / "run=r" / "MANIFEST.json").read_text())
        (entry,) = manifest["inputs"]  # the file as given: its compressed size and sha256
        assert entry["size"] == src.stat().st_size < len(text)
        assert entry["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()


def test_plain_and_compressed_parts_are_one_table(tmp_path):
    text = _csv_text(300)
    head, body = text.split(b"\n", 1)
    rows = body.split(b'x"\n')  # rows end with the quoted value's second line
    half = len(rows) // 2
    first = head + b"\n" + b'x"\n'.join(rows[:half]) + b'x"\n'
    second = head + b"\n" + b'x"\n'.join(rows[half:])
    (tmp_path / "a.csv").write_bytes(first)
    (tmp_path / "b.csv.gz").write_bytes(gzip.compress(second))
    (tmp_path / "b.csv").write_bytes(second)
    mixed = [str(tmp_path / "a.csv"), str(tmp_path / "b.csv.gz")]
    both = _run(*mixed, "--out", str(tmp_path / "o"), "--run-id", "r")
    plain = [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]  # the same parts, uncompressed
    whole = _run(*plain, "--out", str(tmp_path / "w"), "--run-id", "r")
    assert both.returncode == 0 and whole.returncode == 0, both.stderr + whole.stderr
    for name in ("Q_keep.csv", "Q_discard.csv"):
        assert (tmp_path / "o/run=r/output" / name).read_bytes() == (
            tmp_path / "w/run=r/output" / name
        ).read_bytes()


def _gzip_of_zeros(path: Path, head: bytes, mib: int) -> Path:
    """A gzip stream of ``head`` and then ``mib`` MiB of '0' (no newline): ~1000x smaller than its text."""
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    with path.open("wb") as f:
        f.write(z.compress(head))
        block = b"0" * (1 << 20)
        for _ in range(mib):
            f.write(z.compress(block))
        f.write(z.flush())
    return path


def _bad_inputs(d: Path) -> dict[str, tuple[Path, str, str]]:
    text = _csv_text(50)
    packed = gzip.compress(text)
    flipped = bytearray(packed)
    flipped[len(flipped) // 2] ^= 0xFF
    zst = _zstd(text)
    cases = {
        "truncated_gz": ("t.csv.gz", packed[: len(packed) // 2], "not a complete gzip stream"),
        "not_gzip": ("p.csv.gz", text, "not a complete gzip stream"),
        "corrupt_gz": ("c.csv.gz", bytes(flipped), "not a complete gzip stream"),
        "truncated_bz2": ("t.csv.bz2", bz2.compress(text)[:300], "not a complete bzip2 stream"),
        "not_bz2": ("p.csv.bz2", text, "not a complete bzip2 stream"),
        "truncated_zst": ("t.csv.zst", zst[: len(zst) // 2], "not a complete Zstandard stream"),
        "not_zst": ("p.csv.zst", text, "not a complete Zstandard stream"),
        "empty_inside": ("e.csv.gz", gzip.compress(b""), "is empty once decompressed"),
        "unclosed_quote": ("q.csv.gz", gzip.compress(text + b'1,2,3,4,"open\n5,6,7,8,x\n'), "on line 102"),
        "semicolons": ("s.csv.gz", gzip.compress(text.replace(b",", b";")), "separated by ';'"),
        "utf16": ("u.csv.bz2", bz2.compress("a,b\n1,2\n3,4\n".encode("utf-16")), "not UTF-8 text"),
        "ragged": ("r.csv.zst", _zstd(text + b"1,2\n"), "Expected 5 columns, got 2"),
    }
    out = {}
    for case, (name, data, needle) in cases.items():
        (d / name).write_bytes(data)
        out[case] = (d / name, "empty_input" if case == "empty_inside" else "malformed_csv", needle)
    return out


@pytest.mark.parametrize(
    "case",
    [
        "truncated_gz",
        "not_gzip",
        "corrupt_gz",
        "truncated_bz2",
        "not_bz2",
        "truncated_zst",
        "not_zst",
        "empty_inside",
        "unclosed_quote",
        "semicolons",
        "utf16",
        "ragged",
    ],
)
def test_a_bad_compressed_input_is_one_sentence_exit_2_and_error_json(tmp_path, case):
    src, code, needle = _bad_inputs(tmp_path)[case]
    done = _run(str(src), "--out", str(tmp_path / "out"), "--run-id", "bad")
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("q4: error: The ") and src.name in line and needle in line, line
    assert line.endswith(f"[{code}]") and "Traceback" not in done.stderr
    error = json.loads((tmp_path / "out" / "run=bad" / "ERROR.json").read_text())
    assert error["code"] == code
    assert not (tmp_path / "out" / "run=bad" / "MANIFEST.json").exists()


#: Run argv[2:] with stderr to the file argv[1]; print its exit code and its own peak RSS (KiB).
_PEAK_OF_CHILD = """
import os, subprocess, sys
with open(sys.argv[1], "wb") as err:
    child = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=err)
    _, status, usage = os.wait4(child.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def test_a_zip_bomb_is_streamed_in_bounded_memory(tmp_path):
    # 512 MiB of text in ~0.5 MB of gzip: one row longer than a block, refused without holding the text
    src = _gzip_of_zeros(tmp_path / "bomb.csv.gz", b"a,b\n", 512)
    assert src.stat().st_size < 4 << 20
    # The child is started by a small Python process, not by pytest: Linux carries the peak RSS of the
    # process that forks into the child's ru_maxrss, and pytest itself may be past the bound by then.
    measured = subprocess.run(
        [sys.executable, "-c", _PEAK_OF_CHILD, str(tmp_path / "stderr"),
         Q4, "run", str(src), "--out", str(tmp_path / "out"), "--run-id", "bomb"],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    returncode, maxrss_kib = (int(v) for v in measured.stdout.split())
    stderr = (tmp_path / "stderr").read_text()
    assert returncode == 2, stderr
    assert "longer than the reader's block" in stderr and stderr.strip().endswith("[malformed_csv]")
    assert maxrss_kib * 1024 < 320 << 20, maxrss_kib  # Linux: KiB; the text alone is 512 MiB


def test_the_last_value_check_reads_the_decompressed_tail(tmp_path):
    # a file whose last value, closed and quoted, spans lines: not an unclosed quote
    text = _csv_text(30)[:-1] + b"\n"
    src = tmp_path / "t.csv.gz"
    src.write_bytes(gzip.compress(text))
    table = tables.open_inputs([src])
    digests: dict[Source, str] = {}
    rows = sum(b.num_rows for _, b in tables.iter_batches(table, 7, digests=digests))
    assert rows == 30 and digests[table.sources[0]] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert tables.unclosed_quote(src) is None
