"""A sharded run (q4.shards: pass 1, pass 2, finish, run in one process) gives run_job's answer: the same rows
in each row output, numbered alike, the same columns, er.json and the model to 1e-12, for CSV and Parquet,
with rejected rows, quoted text, a 1e9 offset, empty slices, compressed and multi-file inputs; and a CSV cut
where a quoted line break crosses a slice boundary fails ``unshardable_csv`` instead of giving another
answer. The merges hold one stored partial's arrays at a time; a Parquet file whose row groups are out of
order or whose slices miss rows fails ``malformed_parquet``; bad input kept by pass 1 names where it was
found."""

from __future__ import annotations

import gzip
import io
import json
import struct
import weakref
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from q4 import tables
from q4.assemble import assemble_csv, assemble_parquet
from q4.errors import InputError
from q4.job import JobSpec, RunResult, run_job
from q4.shards import Partial, finish, load_arrays, pass1, pass2, run_sharded
from q4.slices import check_parquet_rows, row_group_starts, row_group_starts_problem
from q4.sources import LocalSource
from q4_contract import shards as plan
from support.tables import read_json

ROWS = 1500


def _table(rng: np.random.Generator, n: int = ROWS) -> pa.Table:
    """Four correlated features (one ~1e9 off zero), some rejected rows, a text column with commas, quotes
    and (every 50th row) a line break."""
    x = rng.normal(size=(n, 4)) @ rng.normal(size=(4, 4))
    x[:, 2] += 1e9
    cols: dict[str, Any] = {name: x[:, j].tolist() for j, name in enumerate("abcd")}
    cols["a"] = [np.nan if i % 97 == 5 else v for i, v in enumerate(cols["a"])]
    cols["b"] = [None if i % 89 == 3 else v for i, v in enumerate(cols["b"])]
    cols["d"] = [np.inf if i % 173 == 9 else v for i, v in enumerate(cols["d"])]
    cols["note"] = [f'x,{i} "q"' if i % 3 == 0 else f"n{i}" for i in range(n)]
    return pa.table(cols)


def _csv(path: Path, table: pa.Table) -> Path:
    pcsv.write_csv(table, path)
    return path


def _rows(run_dir: Path, name: str, fmt: str) -> pa.Table:
    path = run_dir / "output" / f"{name}.{fmt}"
    if fmt == "parquet":
        return pq.read_table(path)
    names = path.read_text(encoding="utf-8").split("\n", 1)[0].split(",")
    types = {n: pa.string() for n in names}
    types.update({n: pa.float64() for n in ("q4_score1", "q4_score2") if n in names})
    types.update({n: pa.int64() for n in ("q4_row",) if n in names})
    opts = pcsv.ConvertOptions(column_types=types, strings_can_be_null=False)
    return pcsv.read_csv(path, convert_options=opts, parse_options=pcsv.ParseOptions(newlines_in_values=True))


def _close(a: Any, b: Any, path: str = "") -> None:
    """Equal documents, numbers to 1e-12 (relative)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for key in a:
            _close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(a, bool):
        assert isinstance(b, float | int), path
        assert b == pytest.approx(a, rel=1e-12, abs=1e-12), path
    else:
        assert a == b, path


def _same_answer(a: RunResult, b: RunResult, fmt: str) -> None:
    assert a.rows == b.rows
    assert [x.key for x in a.artifacts] == [x.key for x in b.artifacts]
    assert a.warnings == b.warnings
    for name in ("Q_keep", "Q_discard", "Q_rejected"):
        ta, tb = _rows(a.run_dir, name, fmt), _rows(b.run_dir, name, fmt)
        assert ta.schema.names == tb.schema.names, name
        assert ta.num_rows == tb.num_rows, name
        assert ta["q4_row"].to_pylist() == tb["q4_row"].to_pylist(), name  # the same rows, in input order
        for column in ta.schema.names:  # the input's values as they were; the scores to 1e-12
            if column in ("q4_score1", "q4_score2"):
                x, y = ta[column].to_numpy(), tb[column].to_numpy()
                assert np.allclose(x, y, rtol=1e-12, atol=1e-12), (name, column)
            elif pa.types.is_floating(ta.schema.field(column).type):  # NaN is rejected, and unequal to itself
                x, y = ta[column].to_numpy(zero_copy_only=False), tb[column].to_numpy(zero_copy_only=False)
                assert np.array_equal(x, y, equal_nan=True), (name, column)
            else:
                assert ta[column].equals(tb[column]), (name, column)
    _close(read_json(a.run_dir / "output" / "er.json"), read_json(b.run_dir / "output" / "er.json"))
    study_a, study_b = (read_json(r.run_dir / "output" / "Q_study.json") for r in (a, b))
    study_a["run_id"] = study_b["run_id"]
    _close(study_a, study_b)
    if (a.run_dir / "model" / "q4_model.json").exists():
        ma, mb = (read_json(r.run_dir / "model" / "q4_model.json") for r in (a, b))
        ma["source_run"] = mb["source_run"]
        _close(ma, mb)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_sharded_runs_give_run_jobs_answer(tmp_path: Path, rng: np.random.Generator, fmt: str) -> None:
    table = _table(rng)
    if fmt == "csv":
        source = _csv(tmp_path / "t.csv", table)
    else:
        source = tmp_path / "t.parquet"
        pq.write_table(table, source, row_group_size=300)
    modes = {1: "standard", 2: "enhanced", 7: "full"}
    for shards, mode in modes.items():
        base = JobSpec(run_id=f"one-{shards}", mode=mode, output_format=fmt, chunk_rows=256)
        spec = JobSpec(run_id=f"sharded-{shards}", mode=mode, output_format=fmt, chunk_rows=256)
        a = run_job([source], tmp_path / f"a{shards}", base)
        b = run_sharded([source], tmp_path / f"b{shards}", spec, shards)
        _same_answer(a, b, fmt)
        assert a.rows["rejected"] > 0 and a.rows["keep"] > 0
        if mode == "full":
            assert (b.run_dir / "viz" / "report.html").is_file()
            assert [x.key for x in b.artifacts if x.key.startswith("viz/")]


def test_the_plan_gives_the_shards_asked_for_and_slices_hold_rows(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    source = _csv(tmp_path / "t.csv", _table(rng))
    objects = [plan.InputObject(str(source), source.stat().st_size)]
    count, _ = plan.shard_count(objects, plan.ShardLimits(), 7)
    assert count == 7  # the table is large enough: the test really cuts it 7 ways
    spec = JobSpec(run_id="r")
    parts = [pass1([source], [str(source)], ranges, spec) for ranges in plan.plan_slices(objects, count)]
    assert sum(p.meta["rows"] for p in parts) == ROWS
    assert all(p.meta["rows"] > 0 for p in parts)


def test_more_shards_than_rows_leaves_slices_empty(tmp_path: Path, rng: np.random.Generator) -> None:
    long = "y" * 12000  # rows longer than a slice: most slices hold no line start
    rows = [[float(v) for v in rng.normal(size=3)] for _ in range(3)]
    lines = ["a,b,c,text"] + [f"{r[0]!r},{r[1]!r},{r[2]!r},{long}{i}" for i, r in enumerate(rows)]
    source = tmp_path / "wide.csv"
    source.write_text("\n".join(lines) + "\n")
    objects = [plan.InputObject(str(source), source.stat().st_size)]
    slices = plan.plan_slices(objects, plan.shard_count(objects, plan.ShardLimits(), 8)[0])
    spec = JobSpec(run_id="r", features=("a", "b", "c"))
    counts = [pass1([source], [str(source)], ranges, spec).meta["rows"] for ranges in slices]
    assert len(counts) == 8 and counts.count(0) >= 4 and sum(counts) == 3
    a = run_job([source], tmp_path / "a", spec)
    b = run_sharded([source], tmp_path / "b", spec, 8)
    _same_answer(a, b, "csv")


def test_a_compressed_csv_goes_whole_to_one_slice(tmp_path: Path, rng: np.random.Generator) -> None:
    plain = _csv(tmp_path / "t.csv", _table(rng))
    packed = tmp_path / "t.csv.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    second = _csv(tmp_path / "u.csv", _table(rng, 800))
    objects = [plan.InputObject(str(p), p.stat().st_size) for p in (packed, second)]
    count, _ = plan.shard_count(objects, plan.ShardLimits(), 4)
    slices = plan.plan_slices(objects, count)
    spec = JobSpec(run_id="r", chunk_rows=300)
    rows = [pass1([packed, second], [str(packed), str(second)], s, spec).meta["rows"] for s in slices]
    assert rows[0] >= ROWS  # the whole compressed file in the slice holding its first byte
    a = run_job([packed, second], tmp_path / "a", spec)
    b = run_sharded([packed, second], tmp_path / "b", spec, 4)
    _same_answer(a, b, "csv")


def test_two_csv_files_sharded_number_rows_like_run_job(tmp_path: Path, rng: np.random.Generator) -> None:
    first = _csv(tmp_path / "one.csv", _table(rng, 900))
    second = _csv(tmp_path / "two.csv", _table(rng, 700))
    spec = JobSpec(run_id="r", mode="enhanced", chunk_rows=200)
    a = run_job([first, second], tmp_path / "a", spec)
    for shards in (3, 5):
        b = run_sharded([first, second], tmp_path / f"b{shards}", spec, shards)
        _same_answer(a, b, "csv")
    rows = set(_rows(a.run_dir, "Q_keep", "csv")["q4_row"].to_pylist())
    assert max(rows) >= 900  # the second file's rows continue the first's numbers


def test_a_quoted_line_break_across_a_boundary_is_unshardable(tmp_path: Path) -> None:
    value = "z" * 3000 + "\n" + "z" * 3000  # a long quoted value with a line break in its middle
    lines = ["a,b,note"] + [f'{i}.5,{i * i % 7}.25,"{value}"' for i in range(3)]
    source = tmp_path / "q.csv"
    source.write_text("\n".join(lines) + "\n")
    spec = JobSpec(run_id="r", features=("a", "b"))
    with pytest.raises(InputError) as caught:
        run_sharded([source], tmp_path / "b", spec, 4)
    assert caught.value.code == "unshardable_csv"
    assert not (tmp_path / "b" / "output").exists()
    assert run_job([source], tmp_path / "a", spec).rows["valid"] == 3  # unsharded it runs


def test_a_boundary_inside_a_quoted_value_without_a_line_break_is_fine(tmp_path: Path) -> None:
    value = "w," * 2500  # quoted (commas), long: slice boundaries fall inside it
    lines = ["a,b,note"] + [f'{i}.5,{i * i % 7}.25,"{value}{i}"' for i in range(6)]
    source = tmp_path / "q.csv"
    source.write_text("\n".join(lines) + "\n")
    spec = JobSpec(run_id="r", features=("a", "b"))
    _same_answer(
        run_job([source], tmp_path / "a", spec), run_sharded([source], tmp_path / "b", spec, 6), "csv"
    )


def test_row_id_warnings_see_the_whole_first_chunk(tmp_path: Path, rng: np.random.Generator) -> None:
    n = 1200
    x = rng.normal(size=(n, 2))
    lines = ["counter,a,b"] + [f"{i + 10},{float(x[i, 0])!r},{float(x[i, 1])!r}" for i in range(n)]
    source = tmp_path / "ids.csv"
    source.write_text("\n".join(lines) + "\n")
    for chunk_rows in (100, 5000):  # the first chunk inside slice 0, and spread over every slice
        spec = JobSpec(run_id="r", chunk_rows=chunk_rows)
        a = run_job([source], tmp_path / f"a{chunk_rows}", spec)
        b = run_sharded([source], tmp_path / f"b{chunk_rows}", spec, 5)
        assert [w["code"] for w in a.warnings] == ["row_id_feature"]
        assert a.warnings == b.warnings


def test_partials_round_trip_exactly() -> None:
    values = np.array([0.1, 1e9 + 1 / 3, -0.0, np.inf, np.nextafter(1.0, 2.0)])
    partial = Partial({"rows": 5}, {"v": values, "labels": np.array([1, 4], dtype=np.int8)})
    again = Partial.from_bytes(json.loads(json.dumps(partial.meta)), partial.to_bytes())
    assert again.meta == partial.meta
    assert again.arrays["v"].tobytes() == values.tobytes()
    assert again.arrays["labels"].dtype == np.int8


def test_pass2_parts_assemble_into_the_outputs(tmp_path: Path, rng: np.random.Generator) -> None:
    """The steps as the pipeline calls them: CSV parts have no header, Parquet parts are whole files, and
    the assembly helpers join them; every output's rows, counted by the shards, are run_job's."""
    source = _csv(tmp_path / "t.csv", _table(rng, 1000))
    names = [str(source)]
    objects = [plan.InputObject(str(source), source.stat().st_size)]
    slices = plan.plan_slices(objects, 3)
    outputs = {"Q_keep": "keep", "Q_discard": "discard", "Q_rejected": "rejected"}
    for fmt in ("csv", "parquet"):
        spec = JobSpec(run_id="r", output_format=fmt)
        whole = run_job([source], tmp_path / f"whole-{fmt}", spec)
        first = [pass1([source], names, s, spec) for s in slices]
        counted: Counter[str] = Counter()
        for k, s in enumerate(slices):
            folder = tmp_path / fmt / str(k)
            (folder / "output").mkdir(parents=True)
            partial = pass2(
                [source], names, s, spec, first, k, lambda key, _t, f=folder: pa.OSFile(str(f / key), "wb")
            )
            assert sorted(partial.meta["outputs"]) == sorted(f"output/{n}.{fmt}" for n in outputs)
            counted.update(partial.meta["outputs"])
        for name, rows in outputs.items():
            key = f"output/{name}.{fmt}"
            assert counted[key] == whole.rows[rows] > 0, name
            parts = [LocalSource(tmp_path / fmt / str(k) / key) for k in range(3)]
            out = tmp_path / f"{name}.{fmt}"
            with pa.OSFile(str(out), "wb") as sink:
                if fmt == "csv":
                    assert not parts[1].path.read_bytes().startswith(b"a,")  # no header in a part
                    header = (whole.run_dir / key).read_bytes().split(b"\n", 1)[0] + b"\n"
                    assemble_csv(header, parts, sink)
                else:
                    assemble_parquet(parts, sink)
            expected = _rows(whole.run_dir, name, fmt)["q4_row"].to_pylist()
            if fmt == "csv":
                got = pcsv.read_csv(out, parse_options=pcsv.ParseOptions(newlines_in_values=True))["q4_row"]
            else:
                got = pq.read_table(out)["q4_row"]
            got = got.to_pylist()
            assert got == expected, name
            assert len(got) == whole.rows[rows], name


# ---------------------------------------------------------------- memory: one partial's arrays at a time


class _Loads:
    """Stored partials whose arrays are loaded from their ``.npz`` bytes on every access, counting the loads
    of each and how many earlier loads' tracked arrays were still alive when another load began."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.alive_at_load: list[int] = []
        self._refs: list[weakref.ref[np.ndarray]] = []

    def alive(self) -> int:
        return sum(1 for ref in self._refs if ref() is not None)

    def stored(self, partial: Partial, name: str, tracked: Callable[[str], bool]) -> Partial:
        data = partial.to_bytes()
        meta = json.loads(json.dumps(partial.meta))

        def load() -> dict[str, Any]:
            self.alive_at_load.append(self.alive())
            arrays = load_arrays(io.BytesIO(data))
            self._refs += [weakref.ref(a) for n, a in arrays.items() if tracked(n)]
            self.count[name] += 1
            return arrays

        return Partial.deferred(meta, load)


def _every_array(_name: str) -> bool:
    return True


def _merged_array(name: str) -> bool:
    """A pass-2 array merged into a running tally (not the plot sample's pieces nor shard 0's model)."""
    return not name.startswith(("sample_", "model_"))


def test_merges_hold_one_partials_arrays_at_a_time(tmp_path: Path, rng: np.random.Generator) -> None:
    """Pass 2 and finish load each stored partial's arrays once, in shard order, and drop them before the
    next load (a pass-1 partial holds a d x d co-moment: 200 MB at d = 5000): no array of an earlier load
    is alive when the next load begins. The plot sample (bounded) and the model (shard 0's) are kept."""
    source = _csv(tmp_path / "t.csv", _table(rng, 1200))
    names = [str(source)]
    objects = [plan.InputObject(str(source), source.stat().st_size)]
    slices = plan.plan_slices(objects, 4)
    spec = JobSpec(run_id="r", mode="full", chunk_rows=256)
    loads = _Loads()
    first = [
        loads.stored(pass1([source], names, s, spec), f"p1-{k}", _every_array) for k, s in enumerate(slices)
    ]
    assert loads.count == Counter()  # nothing loaded until a merge reaches it
    second = []
    for k, s in enumerate(slices):
        folder = tmp_path / "parts" / str(k)
        (folder / "output").mkdir(parents=True)
        partial = pass2(
            [source], names, s, spec, first, k, lambda key, _t, f=folder: pa.OSFile(str(f / key), "wb")
        )
        assert loads.count == Counter({f"p1-{j}": k + 1 for j in range(4)})  # each once per pass 2
        second.append(loads.stored(partial, f"p2-{k}", _merged_array))
    assert loads.alive() == 0
    result = finish([source], names, spec, first, second, tmp_path / "run")
    assert loads.count == Counter({**{f"p1-{j}": 5 for j in range(4)}, **{f"p2-{j}": 1 for j in range(4)}})
    assert len(loads.alive_at_load) == 4 * 5 + 4
    assert max(loads.alive_at_load) == 0  # never two partials' arrays at once
    whole = run_job([source], tmp_path / "whole", JobSpec(run_id="w", mode="full", chunk_rows=256))
    assert result.rows == whole.rows
    _close(read_json(whole.run_dir / "output" / "er.json"), read_json(result.run_dir / "output" / "er.json"))


def test_the_local_driver_stores_partials_and_loads_them_when_merged(tmp_path: Path) -> None:
    """``q4 run --shards`` keeps no partial's arrays in memory between steps: each is stored (partial.json,
    data.npz) and read back when a merge reaches it."""
    partial = Partial({"rows": 2, "x": [1.5]}, {"v": np.array([0.1, 1e9 + 1 / 3])})
    from q4.shards import _stored

    again = _stored(partial, tmp_path / "p")
    assert json.loads((tmp_path / "p" / "partial.json").read_text()) == partial.meta
    assert again.meta == partial.meta
    one, two = again.arrays, again.arrays
    assert one["v"].tobytes() == partial.arrays["v"].tobytes()
    assert one["v"] is not two["v"]  # loaded anew on each access: never cached
    (tmp_path / "p" / "data.npz").unlink()
    with pytest.raises(FileNotFoundError):
        again.arrays  # noqa: B018


# ---------------------------------------------------------------- Parquet row groups


def test_row_group_starts_must_increase_within_the_file() -> None:
    assert row_group_starts_problem([], 100) is None
    assert row_group_starts_problem([4, 50, 99], 100) is None
    assert "row group 3 begins at byte 50, not after row group 2, which begins at byte 50" in str(
        row_group_starts_problem([4, 50, 50], 100)
    )
    assert "row group 2 begins at byte 4, not after row group 1" in str(
        row_group_starts_problem([40, 4], 100)
    )
    assert "row group 2 begins at byte 100, outside the file's 100 bytes" in str(
        row_group_starts_problem([4, 100], 100)
    )
    assert "outside" in str(row_group_starts_problem([-1, 4], 100))


def _parquet_with_group_start(
    path: Path, rng: np.random.Generator, group: int, start: int | None
) -> list[int]:
    """A 3-row-group Parquet file whose footer says row group ``group`` begins at ``start`` (its first
    column chunk's ``data_page_offset``, patched in the footer's Thrift, same varint length); the true
    starts. ``start`` None: unpatched."""
    table = pa.table({"a": rng.normal(size=3000), "b": rng.normal(size=3000)})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=1000, use_dictionary=False, write_statistics=False)
    data = bytearray(buffer.getvalue())
    meta = pq.ParquetFile(io.BytesIO(bytes(data))).metadata
    starts = [meta.row_group(i).column(0).data_page_offset for i in range(meta.num_row_groups)]
    if start is not None:
        length = struct.unpack("<I", data[-8:-4])[0]
        footer_at = len(data) - 8 - length

        def varint(n: int) -> bytes:
            z, out = n << 1, b""  # zigzag of a non-negative i64
            while z >= 0x80:
                out, z = out + bytes([z & 0x7F | 0x80]), z >> 7
            return out + bytes([z])

        old, new = varint(starts[group]), varint(start)
        footer = bytes(data[footer_at:])
        # the chunk's offsets (data_page_offset, and file_offset where the writer sets it): same-size patches
        assert len(old) == len(new) and 1 <= footer.count(old) <= 2
        data[footer_at:] = footer.replace(old, new)
    path.write_bytes(bytes(data))
    return starts


@pytest.mark.parametrize("where", ["not_after", "outside"])
def test_a_parquet_file_with_row_groups_out_of_order_is_malformed(
    tmp_path: Path, rng: np.random.Generator, where: str
) -> None:
    path = tmp_path / "bad.parquet"
    starts = _parquet_with_group_start(tmp_path / "good.parquet", rng, 2, None)
    assert starts[1] >= 8192  # 3-byte varints: the patch keeps the footer's size
    patched = starts[1] if where == "not_after" else 1_000_000
    _parquet_with_group_start(path, np.random.default_rng(20250825), 2, patched)
    with pytest.raises(InputError) as caught:
        row_group_starts(LocalSource(path))
    assert caught.value.code == "malformed_parquet"
    assert "bad.parquet" in caught.value.message and "row group 3 begins at byte" in caught.value.message
    objects = [plan.InputObject(str(path), path.stat().st_size)]
    with pytest.raises(InputError) as caught:  # a shard's pass 1 fails the run instead of losing rows
        pass1([path], [str(path)], plan.plan_slices(objects, 3)[1], JobSpec(run_id="r"))
    assert caught.value.code == "malformed_parquet"


def test_slices_that_miss_a_parquet_files_rows_fail_the_run(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(_table(rng, 900), path, row_group_size=100)
    names = [str(path)]
    objects = [plan.InputObject(str(path), path.stat().st_size)]
    slices = plan.plan_slices(objects, 3)
    spec = JobSpec(run_id="r")
    first = [pass1([path], names, s, spec) for s in slices]
    ranges = [r for p in first for r in p.meta["ranges"]]
    assert sum(r["rows"] for r in ranges) == 900 and {r["file_rows"] for r in ranges} == {900}
    check_parquet_rows(ranges)  # the slices hold every row once
    first[1].meta["ranges"][0]["rows"] -= 100  # as if a row group had fallen between the slices
    with pytest.raises(InputError) as caught:
        pass2([path], names, slices[0], spec, first, 0, lambda key, _t: pa.OSFile(str(tmp_path / "x"), "wb"))
    assert caught.value.code == "malformed_parquet"
    assert caught.value.message.startswith(
        "The Parquet file t.parquet contradicts itself (its footer declares 900"
    )
    assert caught.value.details == {"input": str(path), "problem": caught.value.details["problem"]}


def test_parquet_row_id_warnings_with_row_groups_smaller_than_a_chunk(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """Row groups of 40 rows, chunks of 500: run_job's first chunk spans row groups and shards; the sharded
    run pieces it together alike (a counter broken after the first chunk warns, one broken inside it does
    not)."""
    n = 1500
    x = rng.normal(size=(n, 2))
    counter = np.arange(n, dtype=np.float64) + 7
    late = counter.copy()
    late[700:] += 1000  # counts up through the first chunk: a row id to run_job
    early = counter.copy()
    early[300:] += 5  # breaks inside the first chunk, in a later shard than its first row
    table = pa.table({"counter": counter, "late": late, "early": early, "a": x[:, 0], "b": x[:, 1]})
    path = tmp_path / "ids.parquet"
    pq.write_table(table, path, row_group_size=40)
    objects = [plan.InputObject(str(path), path.stat().st_size)]
    slices = plan.plan_slices(objects, 5)
    spec = JobSpec(run_id="r", chunk_rows=500)
    heads = [pass1([path], [str(path)], s, spec).meta["head_rows"] for s in slices]
    assert heads[0] < 500 and sum(heads) >= 500  # the first chunk really spreads over shards
    a = run_job([path], tmp_path / "a", spec)
    b = run_sharded([path], tmp_path / "b", spec, 5)
    warned = sorted(w["message"].split("'")[1] for w in a.warnings if w["code"] == "row_id_feature")
    assert warned == ["counter", "late"]
    assert a.warnings == b.warnings
    _same_answer(a, b, "csv")


# ---------------------------------------------------------------- bad input kept by pass 1


def test_bad_input_found_in_a_cut_slice_says_where(tmp_path: Path, rng: np.random.Generator) -> None:
    """An unclosed quote in the last slice: the error names the pass-1 shard that found it, the byte where
    its slice's rows begin, the quote's offset in the file (run_job's), and its line counted within the
    slice, as its message says."""
    pad = "p" * 100  # over 1 MiB: the reader's first look (the first 1 MiB) finds nothing wrong
    values = rng.normal(size=(12000, 2)).tolist()
    lines = ["a,b,note"] + [f"{v[0]!r},{v[1]!r},{pad}{i}" for i, v in enumerate(values)]
    text = "\n".join(lines) + '\n1.5,2.5,"never closed\n3.5,4.5,x\n'
    source = tmp_path / "q.csv"
    source.write_text(text)
    spec = JobSpec(run_id="r", features=("a", "b"))
    with pytest.raises(InputError) as whole:
        run_job([source], tmp_path / "a", spec)
    with pytest.raises(InputError) as sharded:
        run_sharded([source], tmp_path / "b", spec, 4)
    error, details = sharded.value, sharded.value.details
    assert error.code == whole.value.code == "malformed_csv"
    assert details["problem"] == "unclosed_quote" and details["found_in_shard"] == 3
    start = details["slice_start"]
    data = text.encode()
    assert 0 < start < len(data) and data[start - 1 : start] == b"\n"
    assert details["byte_offset"] == whole.value.details["byte_offset"]  # the file's offset of the quote
    assert whole.value.details["line"] == details["line"] - 1 + data[:start].count(b"\n")
    assert f"line {details['line']:,} is never closed" in error.message
    note = (
        f"(line and row numbers count within shard 3's slice, whose header is line 1 and whose rows begin at "
        f"byte {start:,} of the file)."
    )
    assert error.message.endswith(note)


def test_a_parse_error_in_a_middle_slice_names_its_shard(tmp_path: Path, rng: np.random.Generator) -> None:
    pad = "p" * 100  # over 1 MiB: the reader's first look (the first 1 MiB) finds nothing wrong
    values = rng.normal(size=(16000, 2)).tolist()
    lines = ["a,b,note"] + [f"{v[0]!r},{v[1]!r},{pad}{i}" for i, v in enumerate(values)]
    lines[12000] += ",extra"  # a row with a field too many, past the first MiB
    source = tmp_path / "bad.csv"
    source.write_text("\n".join(lines) + "\n")
    spec = JobSpec(run_id="r", features=("a", "b"))
    objects = [plan.InputObject(str(source), source.stat().st_size)]
    slices = plan.plan_slices(objects, 4)
    kept = [pass1([source], [str(source)], s, spec).meta["error"] for s in slices]
    assert [k for k, e in enumerate(kept) if e] == [2]
    with pytest.raises(InputError) as caught:
        run_sharded([source], tmp_path / "b", spec, 4)
    error = caught.value
    assert error.code == "malformed_csv" and error.details["found_in_shard"] == 2
    start = error.details["slice_start"]
    bad_row = source.read_bytes().index(lines[12000].encode())
    assert start == kept[2]["slice_start"] and slices[2][0]["start"] <= start <= bad_row < slices[2][0]["end"]
    assert "Row #" in error.message  # pyarrow's row number, within the slice, as the message says:
    assert (
        f"numbers count within shard 2's slice, whose header is line 1 and whose rows begin at byte {start:,}"
        in (error.message)
    )


# ---------------------------------------------------------------- compressed suffixes


def test_the_reader_and_the_plan_agree_on_compressed_csv() -> None:
    """One list: the plan gives whole to one slice exactly the files the reader decompresses."""
    assert set(tables.CSV_CODECS) == set(plan.UNSPLITTABLE_SUFFIXES)
    for name in ("a.csv", "b.CSV.GZ", "c.csv.bz2", "d.Csv.Zst", "e.parquet", "f.csv.xz", "g.gz", "h.tar.gz"):
        compressed = tables.csv_codec(LocalSource(Path(name))) is not None
        assert compressed == (not plan.InputObject(f"in/{name}", 1).splittable), name
