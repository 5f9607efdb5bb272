"""A sharded run (q4.shards: pass 1, pass 2, finish, run in one process) gives run_job's answer: the same rows
in each row output, numbered alike, the same columns, er.json and the model to 1e-12, for CSV and Parquet,
with rejected rows, quoted text, a 1e9 offset, empty slices, compressed and multi-file inputs; and a CSV cut
where a quoted line break crosses a slice boundary fails ``unshardable_csv`` instead of giving another
answer."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from q4.assemble import assemble_csv, assemble_parquet
from q4.errors import InputError
from q4.job import JobSpec, RunResult, run_job
from q4.shards import Partial, pass1, pass2, run_sharded
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
    the assembly helpers join them."""
    source = _csv(tmp_path / "t.csv", _table(rng, 1000))
    names = [str(source)]
    objects = [plan.InputObject(str(source), source.stat().st_size)]
    slices = plan.plan_slices(objects, 3)
    for fmt in ("csv", "parquet"):
        spec = JobSpec(run_id="r", output_format=fmt)
        first = [pass1([source], names, s, spec) for s in slices]
        for k, s in enumerate(slices):
            folder = tmp_path / fmt / str(k)
            (folder / "output").mkdir(parents=True)
            partial = pass2(
                [source], names, s, spec, first, k, lambda key, _t, f=folder: pa.OSFile(str(f / key), "wb")
            )
            assert sum(partial.meta["outputs"].values()) >= partial.meta["rows"]
        key = f"output/Q_keep.{fmt}"
        parts = [LocalSource(tmp_path / fmt / str(k) / key) for k in range(3)]
        out = tmp_path / f"keep.{fmt}"
        with pa.OSFile(str(out), "wb") as sink:
            if fmt == "csv":
                assert not parts[1].path.read_bytes().startswith(b"a,")  # no header in a part
                assemble_csv(b"a,b,c,d,note,q4_row,q4_quadrant,q4_score1,q4_score2\n", parts, sink)
            else:
                assemble_parquet(parts, sink)
        whole = run_job([source], tmp_path / f"whole-{fmt}", spec)
        expected = _rows(whole.run_dir, "Q_keep", fmt)["q4_row"].to_pylist()
        got = (pcsv.read_csv(out) if fmt == "csv" else pq.read_table(out))["q4_row"].to_pylist()
        assert got == expected
