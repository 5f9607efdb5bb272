"""The Q4 job spread over shards (docs/contract.md, "Sharded runs"): the three steps and a local driver.

- :func:`pass1` reads one slice (:mod:`q4.slices`) and returns its :class:`Partial`: rows, valid rows, the
  valid rows' moments, the quote counts of its cut CSV ranges and what its first chunk showed (the row-id
  check).
- :func:`pass2` merges every pass-1 partial in shard order (every shard gets the same moments, the same
  model, the same warnings), scores its slice and writes its part of each row output (CSV without the
  header line, Parquet as a complete file) to the sinks it is given; it returns energy, per-quadrant
  moments (full mode) and its part of the plot sample.
- :func:`finish` merges the pass-2 partials in shard order and writes er.json, Q_study.json, the model and
  the plots under the run directory exactly as ``run_job`` does; the caller assembles the row outputs
  (:mod:`q4.assemble`) from the parts.

:func:`run_sharded` runs all of it in one process (``q4 run --shards N``), with the same answer as
``run_job``: the same rows in each output, numbered alike, the same model and er.json to ~1e-15.

All three steps reuse ``run_job``'s code (q4.job): the checks, the reading pass, the fit, the projecting
pass and the documents; only the merging of partials is this module's.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray
from q4_contract import shards as plan

from q4.assemble import assemble_csv, assemble_parquet
from q4.energy import EnergyTally
from q4.errors import InputError, contract_errors
from q4.features import ID_MIN_ROWS, row_id_warnings_from
from q4.job import (
    Artifact,
    JobSpec,
    RunResult,
    SpillPlan,
    Tallies,
    _artifacts,
    _fit,
    _listed,
    _project_pass,
    _Read,
    _read_pass,
    _recording,
    _render_viz,
    _Sample,
    _write_documents,
    effective_chunk_rows,
    leaving_nothing_on_failure,
    scratch_dir,
    setup_job,
)
from q4.model import Q4Model
from q4.moments import Moments
from q4.outputs import OpenSink, csv_header, row_output_schemas
from q4.progress import Progress
from q4.projectors import Standardization
from q4.slices import CsvSlice, RangeRead, check_boundaries, check_parquet_rows, finish_counts, slice_table
from q4.sources import LocalSource, Source, as_sources
from q4.study import QuadrantStats
from q4.tables import InputTable

_MOMENTS = ("shift", "offset", "comoment", "minimum", "maximum")
_QUADRANTS = ("rows", "sums", "squares", "minimum", "maximum")


#: Loads a stored partial's arrays (a new copy on every call).
ArraysLoader = Callable[[], dict[str, NDArray[Any]]]


class Partial:
    """A step's result: ``meta`` (small, JSON: ``partial.json``) and ``arrays`` (``data.npz``, exact
    floats).

    The arrays are held (``Partial(meta, arrays)``, a step's own result) or loaded from where they are
    stored on every access to :attr:`arrays`, never cached (:meth:`deferred`: the partials a step reads
    back). Merging reads each partial's arrays once, in shard order, and drops them before the next: a
    step holds one partial's arrays at a time, however many shards (a pass-1 partial holds a d x d
    co-moment: d = 5000 is 200 MB, 50 shards would be 10 GB)."""

    __slots__ = ("_arrays", "_load", "meta")

    def __init__(self, meta: dict[str, Any], arrays: dict[str, NDArray[Any]] | None = None) -> None:
        self.meta = meta
        self._arrays: dict[str, NDArray[Any]] = {} if arrays is None else arrays
        self._load: ArraysLoader | None = None

    @classmethod
    def deferred(cls, meta: Mapping[str, Any], load: ArraysLoader) -> Partial:
        """A stored partial: ``meta`` now, the arrays from ``load()`` on every access to :attr:`arrays`."""
        partial = cls(dict(meta))
        partial._load = load
        return partial

    @property
    def arrays(self) -> dict[str, NDArray[Any]]:
        """The arrays: held, or (a deferred partial) loaded now; read it once per use."""
        return self._arrays if self._load is None else self._load()

    def to_bytes(self) -> bytes:
        """The arrays as an ``.npz`` file (no pickles; floats as their exact bits)."""
        buffer = io.BytesIO()
        np.savez(buffer, **self.arrays)  # type: ignore[arg-type]
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, meta: Mapping[str, Any], data: bytes) -> Partial:
        """A partial holding its arrays, from its meta and the bytes of :meth:`to_bytes`."""
        return cls(dict(meta), load_arrays(io.BytesIO(data)))


def load_arrays(file: IO[bytes] | Path) -> dict[str, NDArray[Any]]:
    """Every array of an ``.npz`` file written by :meth:`Partial.to_bytes` (a seekable file or a path; no
    pickles)."""
    with np.load(file, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


@dataclass(frozen=True)
class ShardedResult:
    """What :func:`finish` wrote (the documents) and what the manifest needs."""

    run_id: str
    mode: str
    run_dir: Path
    artifacts: tuple[Artifact, ...]  # the documents under run_dir (not the row outputs)
    fingerprints: Mapping[str, tuple[int, int, int]]
    rows: dict[str, int]
    timings: dict[str, float]
    warnings: tuple[dict[str, str], ...]
    input: dict[str, Any]  # as RunResult.input: keys, bytes, format, sha256, sizes
    report: Path | None
    #: the row outputs to assemble, by key below the run directory (``output/Q_keep.csv`` …), in order
    row_outputs: tuple[str, ...]
    #: the header line of each CSV row output (its parts have none); empty for Parquet outputs
    csv_headers: Mapping[str, bytes]


# ---------------------------------------------------------------- pass 1


def pass1(
    sources: Sequence[Source | Path],
    input_names: Sequence[str],
    ranges: Sequence[Mapping[str, Any]],
    spec: JobSpec,
) -> Partial:
    """Read one slice (``ranges``: the plan's ``{key, start, end}``, keyed by ``input_names``) and return
    its partial. The table (columns, numeric columns, features) is the whole input's, so every shard
    checks and chooses alike.

    A cut CSV range may have been cut inside a quoted value, which shows only when every shard's quote
    counts are in: bad input found reading such a slice is kept in the partial (``error``) and raised by
    :func:`pass2` after the boundary check (``unshardable_csv`` first)."""
    spec.validate()
    setup = setup_job(sources, spec, input_names)
    features = setup.features
    d = len(features)
    sliced, reads = slice_table(setup.table, ranges)
    head: dict[str, Any] = {"head_rows": 0, "head_key": None}
    head_arrays = {"head_first": np.zeros(d), "head_run": np.zeros(d, dtype=np.int64)}

    def first_chunk(file: int, values: NDArray[np.float64]) -> None:
        head.update(head_rows=int(values.shape[0]), head_key=sliced.names[file])
        head_arrays.update(head_first=values[0].copy(), head_run=_counting_run(values))

    error: dict[str, Any] | None = None
    moments, n_input = Moments(d), 0
    with ExitStack() as stack, Progress(enabled=False) as bar:
        try:
            read = _read_pass(
                sliced,
                spec,
                features,
                first_chunk,
                {},
                Path(tempfile.gettempdir()),  # never written: no spill (pass 2 reads its slice again)
                stack,
                bar,
                SpillPlan(0, spilled=False, reason="sharded"),
            )
            moments, n_input = read.moments, read.n_input
            finish_counts(reads)
        except InputError as exc:
            if not any(r.slice is not None for r in reads):
                raise
            error = _kept_error(exc, reads, sliced)
            finish_counts(reads, recount=True)
            head = {"head_rows": 0, "head_key": None}
    meta = {
        "schema": plan.PARTIAL_SCHEMA,
        "step": plan.PASS1,
        "rows": n_input,
        "valid": moments.n,
        "ranges": [r.to_dict() for r in reads],
        **head,
        "error": error,
    }
    arrays = {f"moments_{name}": getattr(moments, name) for name in _MOMENTS}
    return Partial(meta, {**arrays, **head_arrays})


def _kept_error(exc: InputError, reads: Sequence[RangeRead], sliced: InputTable) -> dict[str, Any]:
    """Bad input found reading a slice with a cut CSV range, as pass 1 keeps it for pass 2: the error, the
    position of the range it names (``range``, in the partial's ``ranges``; None if it names none) and, for
    a cut range, the file offset where the slice's rows begin (``slice_start``, also in the details): its
    line numbers count from there (line 1 is the slice's header line, line 2 the line at ``slice_start``),
    and a ``byte_offset`` in the details becomes the file's."""
    details = dict(exc.details or {})
    label = details.get("input")
    position = next((i for i, s in enumerate(sliced.sources) if label is not None and s.label == label), None)
    cut = sliced.sources[position] if position is not None else None
    error: dict[str, Any] = {"code": exc.code, "message": exc.message, "details": details, "range": position}
    if position is not None and isinstance(cut, CsvSlice) and reads[position].slice is cut:
        details["slice_start"] = error["slice_start"] = cut.body_start
        offset = details.get("byte_offset")
        if isinstance(offset, int) and offset >= cut.header_end:
            details["byte_offset"] = cut.body_start + offset - cut.header_end
        # the unclosed-quote check counts lines over the slice; pyarrow's parse errors number its rows
        error["lines_from_slice"] = "line" in details or "Row #" in exc.message
    return error


def _raise_kept(error: Mapping[str, Any], shard: int) -> None:
    """Raise the error pass-1 shard ``shard`` kept, its details naming the shard (``found_in_shard``); its
    message says where its line (or row) numbers count from when they count from a slice's start."""
    details = {**(error.get("details") or {}), "found_in_shard": shard}
    message = str(error["message"])
    if error.get("lines_from_slice"):
        message = (
            f"{message.rstrip('.')} (line and row numbers count within shard {shard}'s slice, whose header "
            f"is line 1 and whose rows begin at byte {int(error['slice_start']):,} of the file)."
        )
    raise InputError(str(error["code"]), message, details)


def _counting_run(values: NDArray[np.float64]) -> NDArray[np.int64]:
    """Per column, how many leading values count up by 1 from the first (``v0, v0+1, …``)."""
    m = values.shape[0]
    with np.errstate(invalid="ignore"):
        broken = values != values[0] + np.arange(m, dtype=np.float64)[:, None]
    return np.where(broken.any(axis=0), broken.argmax(axis=0), m).astype(np.int64)


@dataclass
class _Merged:
    """Every pass-1 partial merged in shard order."""

    moments: Moments
    n_input: int
    warnings: list[dict[str, str]]  # the input's, then the row-id check's


@dataclass(frozen=True)
class _Head:
    """A pass-1 shard's first chunk, for the row-id check (copies: d values each)."""

    rows: int
    key: str | None
    first: NDArray[np.float64]
    run: NDArray[np.int64]


def _merge_pass1(
    pass1: Sequence[Partial], table: InputTable, features: list[str], by_default: bool, spec: JobSpec
) -> _Merged:
    """Check the cut boundaries (``unshardable_csv``), raise the first shard's kept error, check the Parquet
    inputs' rows, merge the moments and redo the first chunk's row-id check over the whole input's first
    chunk. Each partial's arrays are loaded once, in shard order, and dropped before the next."""
    ranges = [r for p in pass1 for r in p.meta["ranges"]]
    check_boundaries(ranges)
    for shard, partial in enumerate(pass1):
        error = partial.meta.get("error")
        if error:
            _raise_kept(error, shard)
    check_parquet_rows(ranges, dict(zip(table.names, (s.label for s in table.sources), strict=True)))
    d = len(features)
    moments = Moments(d)
    heads = [_merge_moments(moments, partial, d) for partial in pass1]
    n_input = sum(int(p.meta["rows"]) for p in pass1)
    warnings: list[dict[str, str]] = []
    if by_default and n_input:
        chunk_rows = effective_chunk_rows(spec.chunk_rows, d)
        warnings = row_id_warnings_from(features, _counting_starts(heads, d, chunk_rows))
    return _Merged(moments, n_input, warnings)


def _merge_moments(moments: Moments, partial: Partial, d: int) -> _Head | None:
    """Merge one pass-1 partial's moments into ``moments`` (its arrays loaded once, dropped on return) and
    return its first chunk's row-id values (None: it read no rows)."""
    arrays = partial.arrays
    m = Moments(d)
    m.n = int(partial.meta["valid"])
    for name in _MOMENTS:
        setattr(m, name, np.asarray(arrays[f"moments_{name}"], dtype=np.float64))
    moments.merge(m)
    rows = int(partial.meta["head_rows"])
    if not rows:
        return None
    first = np.array(arrays["head_first"], dtype=np.float64)
    return _Head(rows, partial.meta["head_key"], first, np.array(arrays["head_run"], dtype=np.int64))


def _counting_starts(heads: Sequence[_Head | None], d: int, chunk_rows: int) -> list[float | None]:
    """What run_job's first chunk shows (``q4.features.counts_up`` per feature): the first ``chunk_rows``
    rows of the first file with rows, pieced together from the shards' first chunks."""
    v0: NDArray[np.float64] | None = None
    key: str | None = None
    taken = 0
    ok = np.ones(d, dtype=bool)
    for head in heads:
        if head is None:
            continue
        if v0 is None:
            v0, key = head.first, head.key
        elif head.key != key:
            break  # run_job's first chunk ends with its file
        else:
            ok &= head.first == v0 + np.float64(taken)
        take = min(chunk_rows - taken, head.rows)
        ok &= head.run >= take
        taken += take
        if taken >= chunk_rows:
            break
    if v0 is None or taken < ID_MIN_ROWS:
        return [None] * d
    with np.errstate(invalid="ignore"):
        ok &= np.isfinite(v0) & (v0 == np.floor(v0))
    return [float(v0[j]) if ok[j] else None for j in range(d)]


# ---------------------------------------------------------------- pass 2


def pass2(
    sources: Sequence[Source | Path],
    input_names: Sequence[str],
    ranges: Sequence[Mapping[str, Any]],
    spec: JobSpec,
    pass1: Sequence[Partial],
    shard: int,
    sinks: OpenSink,
) -> Partial:
    """Fit the model from every pass-1 partial (merged in shard order: each shard fits the same one),
    score shard ``shard``'s slice and write its part of each row output to ``sinks`` (``(key below the run
    directory, content type) -> Sink``; keys ``output/Q_keep.csv`` … as run_job's). CSV parts have no
    header line. Raises what the whole run would (too few rows, too few features, ``unshardable_csv``)."""
    spec.validate()
    setup = setup_job(sources, spec, input_names)
    table, features = setup.table, setup.features
    merged = _merge_pass1(pass1, table, features, setup.by_default, spec)
    warnings = [*setup.warnings, *merged.warnings]
    read = _Read(merged.moments, merged.n_input, None, effective_chunk_rows(spec.chunk_rows, len(features)))
    model, source = _fit(spec, table, features, read, setup.model, warnings)
    sliced, _ = slice_table(table, ranges)
    first_row = sum(int(p.meta["rows"]) for p in pass1[:shard])
    valid_before = sum(int(p.meta["valid"]) for p in pass1[:shard])
    opened: dict[str, Any] = {}
    with ExitStack() as stack, Progress(enabled=False) as bar:
        projected = _project_pass(
            Path("output"),
            spec,
            sliced,
            features,
            model,
            read,
            stack,
            bar,
            _recording(sinks, opened),
            first_row=first_row,
            valid_before=valid_before,
            header=False,
        )
        projected.writers.close()
    tallies = projected.tallies
    outputs = {key: writer.rows for key, writer in zip(opened, projected.writers.tables, strict=True)}
    meta = {
        "schema": plan.PARTIAL_SCHEMA,
        "step": plan.PASS2,
        "shard": shard,
        "rows": int(pass1[shard].meta["rows"]),
        "first_row": first_row,
        "outputs": outputs,
        "k": tallies.k,
        "warnings": warnings,
        "model_source": source,
    }
    arrays = {
        "energy_rows": tallies.energy.rows,
        "energy_energy": tallies.energy.energy,
        "energy_projected": tallies.energy.projected,
        **_sample_arrays(tallies.sample, len(features)),
    }
    if tallies.quadrant_stats is not None:
        arrays.update({f"quadrant_{n}": getattr(tallies.quadrant_stats, n) for n in _QUADRANTS})
    if shard == 0:  # the model, for finish (every shard fitted the same one)
        meta["model"] = {
            "features": list(model.features),
            "n_samples_fit": model.n_samples_fit,
            "source_run": model.source_run,
        }
        arrays.update(
            model_shift=model.std.shift,
            model_offset=model.std.offset,
            model_scale=model.std.scale,
            model_constant=model.std.constant,
            model_eigenvalues=model.eigenvalues,
            model_components=model.components,
        )
    return Partial(meta, arrays)


def _sample_arrays(sample: _Sample, d: int) -> dict[str, NDArray[Any]]:
    out: dict[str, NDArray[Any]] = {
        "sample_scores": np.concatenate(sample.scores) if sample.scores else np.zeros((0, 2)),
        "sample_labels": np.concatenate(sample.labels) if sample.labels else np.zeros(0, dtype=np.int8),
    }
    if sample.svd:
        out["sample_svd"] = np.concatenate(sample.svd)
    return out


# ---------------------------------------------------------------- finish


def finish(
    sources: Sequence[Source | Path],
    input_names: Sequence[str],
    spec: JobSpec,
    pass1: Sequence[Partial],
    pass2: Sequence[Partial],
    run_dir: Path,
    *,
    input_sha256: Sequence[str] | None = None,
) -> ShardedResult:
    """Merge the pass-2 partials in shard order and write er.json, Q_study.json, the model (enhanced, full)
    and the plots and report (full) under ``run_dir`` as run_job does. ``input_sha256``: the inputs'
    sha256 when the caller knows them (else they are read and hashed here). The row outputs are not
    assembled here: :attr:`ShardedResult.row_outputs` and ``csv_headers`` say what to assemble.

    On failure nothing it wrote is left behind."""
    spec.validate()
    with leaving_nothing_on_failure(run_dir):
        return _finish(list(sources), input_names, spec, pass1, pass2, run_dir, input_sha256)


def _finish(
    sources: list[Source | Path],
    input_names: Sequence[str],
    spec: JobSpec,
    pass1: Sequence[Partial],
    pass2: Sequence[Partial],
    run_dir: Path,
    input_sha256: Sequence[str] | None,
) -> ShardedResult:
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    setup = setup_job(sources, spec, input_names)
    table, features = setup.table, setup.features
    d = len(features)
    merged = _merge_pass1(pass1, table, features, setup.by_default, spec)
    read = _Read(merged.moments, merged.n_input, None, effective_chunk_rows(spec.chunk_rows, d))
    first = pass2[0]
    warnings = list(first.meta["warnings"])
    tallies, model = _merge_pass2(pass2, d, spec)
    sha = list(input_sha256) if input_sha256 is not None else _hash_all(table.sources)
    input_doc = {"keys": list(table.names), "bytes": table.bytes, "format": table.format, "sha256": sha}
    (run_dir / "output").mkdir(exist_ok=True)
    rows, er, study = _write_documents(
        run_dir, spec, model, first.meta["model_source"], input_doc, read, tallies, features,
        setup.passthrough, warnings,
    )  # fmt: skip
    timings["documents"] = time.perf_counter() - clock
    report: Path | None = None
    if spec.mode == "full":
        clock = time.perf_counter()
        report = _render_viz(run_dir / "viz", er, study, tallies.sample, model, read.moments, tallies.k)
        timings["viz"] = time.perf_counter() - clock
    fingerprints: dict[str, tuple[int, int, int]] = {}
    artifacts = _listed(list(_artifacts(run_dir, spec.run_id, fingerprints)))
    schemas = row_output_schemas(table, features, spec.output_format, tallies.k if tallies.enhanced else 0)
    keys = tuple(f"output/{name}" for name in schemas)
    headers = (
        {f"output/{name}": csv_header(schema.names) for name, schema in schemas.items()}
        if spec.output_format == "csv"
        else {}
    )
    return ShardedResult(
        run_id=spec.run_id,
        mode=spec.mode,
        run_dir=run_dir,
        artifacts=artifacts,
        fingerprints=fingerprints,
        rows=rows,
        timings=timings,
        warnings=tuple(warnings),
        input={**input_doc, "sizes": [s.size for s in table.sources]},
        report=report,
        row_outputs=keys,
        csv_headers=headers,
    )


def _model(meta: Mapping[str, Any], a: Mapping[str, NDArray[Any]]) -> Q4Model:
    std = Standardization(
        np.asarray(a["model_shift"], dtype=np.float64),
        np.asarray(a["model_offset"], dtype=np.float64),
        np.asarray(a["model_scale"], dtype=np.float64),
        np.asarray(a["model_constant"], dtype=bool),
    )
    return Q4Model(
        tuple(meta["features"]),
        std,
        np.asarray(a["model_eigenvalues"], dtype=np.float64),
        np.asarray(a["model_components"], dtype=np.float64),
        int(meta["n_samples_fit"]),
        meta["source_run"],
    )


def _merge_pass2(pass2: Sequence[Partial], d: int, spec: JobSpec) -> tuple[Tallies, Q4Model]:
    """The pass-2 partials' tallies merged in shard order, and the model (shard 0's). Each partial's arrays
    are loaded once and dropped before the next (the plot sample's pieces are kept: bounded)."""
    energy = EnergyTally()
    stats = QuadrantStats(d) if spec.mode == "full" else None
    sample = _Sample(stride=1)
    models = [_merge_tallies(partial, d, energy, stats, sample) for partial in pass2]
    model = models[0] if models else None
    if model is None:
        raise ValueError("finish needs the pass-2 partial of shard 0 (it carries the model)")
    k = int(pass2[0].meta["k"])
    return Tallies(energy, stats, sample, k, spec.mode in ("enhanced", "full")), model


def _merge_tallies(
    partial: Partial, d: int, energy: EnergyTally, stats: QuadrantStats | None, sample: _Sample
) -> Q4Model | None:
    """Merge one pass-2 partial (its arrays loaded once, dropped on return but for the sample's pieces);
    returns the model it carries (shard 0's), else None."""
    a = partial.arrays
    energy.merge(EnergyTally(a["energy_rows"], a["energy_energy"], a["energy_projected"]))
    if stats is not None:
        part = QuadrantStats(d)
        for name in _QUADRANTS:
            setattr(part, name, a[f"quadrant_{name}"])
        stats.merge(part)
    sample.scores.append(a["sample_scores"])
    sample.labels.append(a["sample_labels"])
    if "sample_svd" in a:
        sample.svd.append(a["sample_svd"])
    return _model(partial.meta["model"], a) if "model" in partial.meta else None


def _hash_all(sources: Sequence[Source]) -> list[str]:
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="q4-sha256") as pool:
        return list(pool.map(lambda s: s.sha256(), sources))


# ---------------------------------------------------------------- the local driver


def run_sharded(
    inputs: Sequence[Source | Path],
    run_dir: Path,
    spec: JobSpec,
    shards: int,
    input_names: Sequence[str] | None = None,
) -> RunResult:
    """The whole job as a sharded run in this process: plan ``shards`` slices (as the orchestrator does:
    fewer for a small input), run pass 1 and pass 2 of every shard, then finish, and assemble the row
    outputs under ``run_dir/output`` where run_job puts them. Each partial goes through its stored form
    (JSON meta, ``.npz`` arrays) as between the pipeline's tasks. Returns a RunResult like run_job's."""
    spec.validate()
    with contract_errors():
        plan.check_shards(shards)
    sources = as_sources(inputs)
    names = tuple(input_names) if input_names is not None else tuple(s.label for s in sources)
    with leaving_nothing_on_failure(run_dir):
        return _run_sharded(sources, names, run_dir, spec, shards)


def _run_sharded(
    sources: tuple[Source, ...], names: tuple[str, ...], run_dir: Path, spec: JobSpec, shards: int
) -> RunResult:
    timings: dict[str, float] = {}
    objects = [
        plan.InputObject(name, s.size if s.exists() else 0) for name, s in zip(names, sources, strict=True)
    ]
    count, _ = plan.shard_count(objects, plan.ShardLimits(max_shards=plan.SHARDS_RANGE[1]), shards)
    slices = plan.plan_slices(objects, count)
    with tempfile.TemporaryDirectory(prefix="q4-shards-", dir=scratch_dir()) as scratch:
        parts = Path(scratch)
        clock = time.perf_counter()
        first = [
            _stored(pass1(sources, names, ranges, spec), parts / plan.PASS1 / f"{shard:05d}")
            for shard, ranges in enumerate(slices)
        ]
        timings["pass1"] = time.perf_counter() - clock

        clock = time.perf_counter()
        second = []
        for shard, ranges in enumerate(slices):
            folder = parts / f"{shard:05d}"
            (folder / "output").mkdir(parents=True)
            sinks = _file_sinks(folder)
            partial = pass2(sources, names, ranges, spec, first, shard, sinks)
            second.append(_stored(partial, parts / plan.PASS2 / f"{shard:05d}"))
        timings["pass2"] = time.perf_counter() - clock

        result = finish(sources, names, spec, first, second, run_dir)
        timings.update(result.timings)

        clock = time.perf_counter()
        for key in result.row_outputs:
            pieces = [LocalSource(parts / f"{shard:05d}" / key) for shard in range(count)]
            with pa.OSFile(str(run_dir / key), "wb") as sink:
                if key in result.csv_headers:
                    assemble_csv(result.csv_headers[key], pieces, sink)
                else:
                    assemble_parquet(pieces, sink)
        timings["assemble"] = time.perf_counter() - clock
    fingerprints: dict[str, tuple[int, int, int]] = {}
    artifacts = _listed(list(_artifacts(run_dir, spec.run_id, fingerprints)))
    return RunResult(
        run_id=spec.run_id,
        mode=spec.mode,
        run_dir=run_dir,
        artifacts=artifacts,
        rows=result.rows,
        timings=timings,
        warnings=result.warnings,
        input=result.input,
        report=result.report,
        fingerprints=fingerprints,
    )


def _file_sinks(folder: Path) -> OpenSink:
    return lambda key, _content_type: pa.OSFile(str(folder / key), "wb")


def _stored(partial: Partial, folder: Path) -> Partial:
    """The partial stored in ``folder`` (``partial.json``, ``data.npz``) and as the next step reads it back:
    meta through JSON, the arrays loaded from ``data.npz`` when a merge reaches them (one at a time)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(partial.meta, allow_nan=False)
    (folder / "partial.json").write_text(text, encoding="utf-8")
    data = folder / "data.npz"
    data.write_bytes(partial.to_bytes())
    return Partial.deferred(json.loads(text), lambda: load_arrays(data))
