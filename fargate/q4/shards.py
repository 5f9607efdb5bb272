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
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray
from q4_contract import shards as plan

from q4.assemble import assemble_csv, assemble_parquet
from q4.energy import EnergyTally
from q4.errors import InputError, contract_errors
from q4.features import ID_MIN_ROWS, row_id_warnings_from
from q4.job import (
    OUTPUT_DIRS,
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
    scratch_dir,
    setup_job,
)
from q4.model import Q4Model
from q4.moments import Moments
from q4.outputs import OpenSink, csv_header, row_output_schemas
from q4.progress import Progress
from q4.projectors import Standardization
from q4.slices import check_boundaries, finish_counts, slice_table
from q4.sources import LocalSource, Source, as_sources
from q4.study import QuadrantStats

_MOMENTS = ("shift", "offset", "comoment", "minimum", "maximum")
_QUADRANTS = ("rows", "sums", "squares", "minimum", "maximum")


@dataclass
class Partial:
    """A step's result: ``meta`` (small, JSON: ``partial.json``) and ``arrays`` (``data.npz``, exact
    floats)."""

    meta: dict[str, Any]
    arrays: dict[str, NDArray[Any]] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """The arrays as an ``.npz`` file (no pickles; floats as their exact bits)."""
        buffer = io.BytesIO()
        np.savez(buffer, **self.arrays)  # type: ignore[arg-type]
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, meta: Mapping[str, Any], data: bytes) -> Partial:
        """A partial from its meta and the bytes of :meth:`to_bytes`."""
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        return cls(dict(meta), arrays)


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
            error = {"code": exc.code, "message": exc.message, "details": exc.details}
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


def _merge_pass1(pass1: Sequence[Partial], features: list[str], by_default: bool, spec: JobSpec) -> _Merged:
    """Check the cut boundaries (``unshardable_csv``), raise the first shard's kept error, merge the moments
    and redo the first chunk's row-id check over the whole input's first chunk."""
    check_boundaries([r for p in pass1 for r in p.meta["ranges"]])
    for partial in pass1:
        error = partial.meta.get("error")
        if error:
            raise InputError(error["code"], error["message"], error.get("details"))
    d = len(features)
    moments = Moments(d)
    for partial in pass1:
        moments.merge(_moments(partial, d))
    n_input = sum(int(p.meta["rows"]) for p in pass1)
    warnings: list[dict[str, str]] = []
    if by_default and n_input:
        chunk_rows = effective_chunk_rows(spec.chunk_rows, d)
        warnings = row_id_warnings_from(features, _counting_starts(pass1, d, chunk_rows))
    return _Merged(moments, n_input, warnings)


def _moments(partial: Partial, d: int) -> Moments:
    m = Moments(d)
    m.n = int(partial.meta["valid"])
    for name in _MOMENTS:
        setattr(m, name, np.asarray(partial.arrays[f"moments_{name}"], dtype=np.float64))
    return m


def _counting_starts(pass1: Sequence[Partial], d: int, chunk_rows: int) -> list[float | None]:
    """What run_job's first chunk shows (``q4.features.counts_up`` per feature): the first ``chunk_rows``
    rows of the first file with rows, pieced together from the shards' first chunks."""
    v0: NDArray[np.float64] | None = None
    key: str | None = None
    taken = 0
    ok = np.ones(d, dtype=bool)
    for partial in pass1:
        rows = int(partial.meta["head_rows"])
        if not rows:
            continue
        if v0 is None:
            v0, key = np.asarray(partial.arrays["head_first"], dtype=np.float64), partial.meta["head_key"]
        elif partial.meta["head_key"] != key:
            break  # run_job's first chunk ends with its file
        else:
            ok &= partial.arrays["head_first"] == v0 + np.float64(taken)
        take = min(chunk_rows - taken, rows)
        ok &= partial.arrays["head_run"] >= take
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
    merged = _merge_pass1(pass1, features, setup.by_default, spec)
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
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _finish(list(sources), input_names, spec, pass1, pass2, run_dir, input_sha256)
    except BaseException:
        for name in OUTPUT_DIRS:
            shutil.rmtree(run_dir / name, ignore_errors=True)
        raise


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
    merged = _merge_pass1(pass1, features, setup.by_default, spec)
    read = _Read(merged.moments, merged.n_input, None, effective_chunk_rows(spec.chunk_rows, d))
    first = pass2[0]
    model = _model(first)
    warnings = list(first.meta["warnings"])
    tallies = _merge_pass2(pass2, d, spec)
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


def _model(partial: Partial) -> Q4Model:
    a, meta = partial.arrays, partial.meta["model"]
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


def _merge_pass2(pass2: Sequence[Partial], d: int, spec: JobSpec) -> Tallies:
    energy = EnergyTally()
    stats = QuadrantStats(d) if spec.mode == "full" else None
    sample = _Sample(stride=1)
    for partial in pass2:
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
    k = int(pass2[0].meta["k"])
    return Tallies(energy, stats, sample, k, spec.mode in ("enhanced", "full"))


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
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _run_sharded(sources, names, run_dir, spec, shards)
    except BaseException:
        for name in OUTPUT_DIRS:
            shutil.rmtree(run_dir / name, ignore_errors=True)
        raise


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
        first = [_stored(pass1(sources, names, ranges, spec)) for ranges in slices]
        timings["pass1"] = time.perf_counter() - clock

        clock = time.perf_counter()
        second = []
        for shard, ranges in enumerate(slices):
            folder = parts / f"{shard:05d}"
            (folder / "output").mkdir(parents=True)
            sinks = _file_sinks(folder)
            second.append(_stored(pass2(sources, names, ranges, spec, first, shard, sinks)))
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


def _stored(partial: Partial) -> Partial:
    """The partial as the next step reads it back: meta through JSON, arrays through ``.npz``."""
    meta = json.loads(json.dumps(partial.meta, allow_nan=False))
    return Partial.from_bytes(meta, partial.to_bytes())
