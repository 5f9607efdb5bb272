"""The whole Q4 job into a local run directory: ``run_job``.

Two exact passes over the input, memory bounded by ``chunk_rows``:

1. **read** every chunk, classify its rows (valid / rejected), merge the valid rows'
   moments (Chan et al.); CSV chunks are spilled to an uncompressed Arrow IPC file in the
   scratch dir so pass 2 does not parse the text again;
2. **fit** standardization and projectors from the moments (or take them from a model);
3. **project** every chunk, write it to Q_keep / Q_discard / Q_rejected (and svd_scores)
   in input order, tally energy and, in full mode, per-quadrant moments;
4. write er.json, Q_study.json, the model (enhanced, full) and the plots and report (full).

``run_job`` writes everything except MANIFEST.json / ERROR.json: committing is the
caller's business (``q4 run`` locally, the Fargate task on S3). Every artifact it writes is
deterministic for the same input, job and software version. It hashes each artifact after its
writer closed it and records the file's (inode, size, mtime) as hashed; :func:`verify_unchanged`
checks, just before a commit, that the run directory still holds exactly those files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import q4_contract as contract
from numpy.typing import NDArray

from q4 import __version__
from q4.checks import check_finite
from q4.cpus import available_cpus
from q4.energy import EnergyTally
from q4.errors import InputError, ModelError, RunStateError, contract_errors, name_list
from q4.features import FeatureBlock, feature_block, numeric_header_warning, row_id_warnings, select_features
from q4.model import Q4Model, fit_model, json_number, load_model
from q4.moments import Moments
from q4.outputs import OpenSink, Prepared, RowWriters, Sink, content_type, file_sinks
from q4.parallel import ordered_map
from q4.progress import Progress
from q4.projectors import Standardization, is_degenerate
from q4.quadrants import quadrant_labels, scores
from q4.sources import Source
from q4.study import QuadrantStats, study_section, svd_section
from q4.tables import InputTable, Spill, csv_codec, iter_batches, open_inputs, prefetched

STUDY_SCHEMA = "q4.study/v1"
#: At most this many rows (a fixed stride sample of the valid rows) reach the plots.
PLOT_SAMPLE_ROWS = 100_000
#: Chunks each output file may queue for its writer thread in full mode (lets the plots overlap the
#: writing); 1 otherwise, which keeps memory lowest.
FULL_MODE_QUEUE_CHUNKS = 3
#: The most feature columns a job may have, per mode: C is d x d float64 and its eigen-decomposition
#: is O(d^3); 10,000 features took 5 minutes and 4.8 GB on 2 cores, beyond a 4 GB task.
#: Full mode keeps 4 more d x d matrices (docs/decisions/core.md, "Wide tables").
MAX_FEATURES = {"standard": 5000, "enhanced": 5000, "full": 3000}
#: Directories under the run directory that run_job writes (and removes again on failure).
OUTPUT_DIRS = ("output", "model", "viz")


@dataclass(frozen=True)
class JobSpec:
    """What to run: the job parameters (docs/contract.md, Work message), resolved to local paths."""

    run_id: str
    mode: str = contract.DEFAULT_MODE
    features: tuple[str, ...] | None = None
    svd_k: int = contract.DEFAULT_SVD_K
    output_format: str = contract.DEFAULT_OUTPUT_FORMAT
    model_path: Path | None = None
    chunk_rows: int = 65_536
    model_name: str | None = None  # how Q_study.json names the model (e.g. its S3 key); default: the path

    def validate(self) -> None:
        """A clear :class:`InputError` for a parameter out of range; the job parameters' codes are the
        work message's (q4_contract's rules)."""
        with contract_errors():
            contract.check_run_id(self.run_id)
            contract.check_mode(self.mode)
            if self.features is not None:
                contract.check_feature_names(self.features)
            contract.check_svd_k(self.svd_k)
            contract.check_output_format(self.output_format)
        if self.chunk_rows < 1:
            raise InputError("invalid_chunk_rows", f"chunk_rows must be at least 1, not {self.chunk_rows}.")

    def to_job(self) -> dict[str, Any]:
        """The job parameters as recorded in MANIFEST.json."""
        doc = asdict(self)
        doc["features"] = list(self.features) if self.features is not None else None
        doc["model_path"] = str(self.model_path) if self.model_path is not None else None
        if doc["model_name"] is None:
            del doc["model_name"]
        return doc


@dataclass(frozen=True)
class Artifact:
    """One file written under the run directory (``key`` is relative to it, posix)."""

    key: str
    bytes: int
    sha256: str
    content_type: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunResult:
    """What ``run_job`` wrote and counted."""

    run_id: str
    mode: str
    run_dir: Path
    artifacts: tuple[Artifact, ...]
    rows: dict[str, int]
    timings: dict[str, float]
    warnings: tuple[dict[str, str], ...]
    input: dict[str, Any]
    report: Path | None = None
    #: ``(inode, size, mtime_ns)`` of each artifact (by key) when it was hashed
    fingerprints: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)
    #: keys of the artifacts written to run_job's ``sinks`` (already in place: not under run_dir)
    streamed: frozenset[str] = frozenset()
    #: what pass 1 did with its spill (:class:`SpillPlan`)
    spill: Mapping[str, Any] = field(default_factory=dict)

    def input_objects(self) -> list[dict[str, Any]]:
        """``{key, size, sha256}`` per input file, for the manifest."""
        return [
            {"key": k, "size": s, "sha256": h}
            for k, s, h in zip(self.input["keys"], self.input["sizes"], self.input["sha256"], strict=True)
        ]


@dataclass
class _Sample:
    """A fixed stride sample of the valid rows for the plots."""

    stride: int
    scores: list[NDArray[np.float64]] = field(default_factory=list)
    labels: list[NDArray[np.int8]] = field(default_factory=list)
    svd: list[NDArray[np.float64]] = field(default_factory=list)
    seen: int = 0

    def take(self, s: NDArray[np.float64], labels: NDArray[np.int8], svd: NDArray[np.float64] | None) -> None:
        first = (-self.seen) % self.stride
        picked = slice(first, None, self.stride)
        # copies, not views: a view would keep the whole chunk's arrays alive
        self.scores.append(s[picked].copy())
        self.labels.append(labels[picked].copy())
        if svd is not None:
            self.svd.append(svd[picked, :2].copy())
        self.seen += s.shape[0]


#: A chunk holds at most about this many feature cells (wide tables get fewer rows per chunk).
MAX_CHUNK_CELLS = 4_194_304


def effective_chunk_rows(chunk_rows: int, d: int) -> int:
    """``chunk_rows``, lowered for wide tables so a chunk's arrays stay ~32 MB per copy."""
    return max(1, min(chunk_rows, max(256, MAX_CHUNK_CELLS // max(d, 1))))


def single_threaded_blas() -> Any:
    """BLAS on one thread during the passes: its products are small here, and spinning BLAS
    threads starve the reader and writer threads on a small machine."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def scratch_dir() -> str | None:
    """Where spill files go: ``Q4_SCRATCH_DIR`` if set, else the system temp dir."""
    return os.environ.get("Q4_SCRATCH_DIR") or None


#: The pass-1 spill leaves at least this much of the scratch room free (the documents, the plots, logs) ...
SPILL_MARGIN_BYTES = 64 << 20
#: ... or this share of it, whichever is more (docs/decisions/runtime.md, "The spill rule").
SPILL_MARGIN_SHARE = 0.10


def spill_budget(scratch: Path, limit: int | None = None) -> int:
    """Bytes pass 1 may spill into ``scratch``: the free space of its file system (``statvfs``) and, when
    the caller knows it, ``limit`` (what the task's ephemeral storage has left), less the margin."""
    st = os.statvfs(scratch)
    room = st.f_bavail * st.f_frsize
    if limit is not None:
        room = min(room, limit)
    return max(0, int(room - max(SPILL_MARGIN_BYTES, room * SPILL_MARGIN_SHARE)))


@dataclass
class SpillPlan:
    """Whether pass 1 spills (CSV only) and what it did: recorded in the manifest as ``spill``."""

    budget: int
    spilled: bool = False
    bytes: int = 0
    reason: str = "parquet"  # parquet | fits | over_budget (the input, or the spill as it grew)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spilled": self.spilled,
            "bytes": self.bytes,
            "budget_bytes": self.budget,
            "reason": self.reason,
        }


def _plan_spill(table: InputTable, scratch: Path, limit: int | None) -> SpillPlan:
    """A plain CSV spills at least its own size (its text, plus offsets and the parsed features): one
    larger than the budget does not start; a compressed one starts and stops if it outgrows it."""
    plan = SpillPlan(spill_budget(scratch, limit))
    if table.format != "csv":
        return plan
    plain = all(csv_codec(s) is None for s in table.sources)
    if plain and table.bytes > plan.budget:
        plan.reason = "over_budget"
        return plan
    plan.spilled, plan.reason = True, "fits"
    return plan


def run_job(
    inputs: Sequence[Source | Path],
    run_dir: Path,
    spec: JobSpec,
    *,
    progress: bool = False,
    input_names: Sequence[str] | None = None,
    sinks: OpenSink | None = None,
    scratch_limit: int | None = None,
) -> RunResult:
    """Run the Q4 job on ``inputs`` and write its artifacts under ``run_dir`` (``.../run=<id>/``).

    ``inputs``: :class:`~q4.sources.Source` objects (a path is a local file). ``sinks``: where the row
    outputs go, ``(key below run_dir, content type) -> Sink`` (the task: S3 multipart uploads at their final
    keys); their artifacts carry the bytes and sha256 the sinks counted, and ``RunResult.streamed`` names
    them. Default: files under ``run_dir/output``. ``scratch_limit``: bytes the caller's scratch may still
    take (the task: its ephemeral storage left), for the spill rule (:func:`spill_budget`).

    Raises :class:`q4.errors.Q4Error` for bad input; then nothing run_job wrote is left behind (the sinks
    are aborted).
    """
    spec.validate()
    with leaving_nothing_on_failure(run_dir):
        return _run(list(inputs), run_dir, spec, progress, input_names, sinks, scratch_limit)


@contextmanager
def leaving_nothing_on_failure(run_dir: Path) -> Iterator[None]:
    """Create ``run_dir``; if the block fails, remove what a job writes under it (:data:`OUTPUT_DIRS`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for name in OUTPUT_DIRS:
            shutil.rmtree(run_dir / name, ignore_errors=True)
        raise


def _run(
    inputs: list[Source | Path],
    run_dir: Path,
    spec: JobSpec,
    progress: bool,
    input_names: Sequence[str] | None,
    sinks: OpenSink | None = None,
    scratch_limit: int | None = None,
) -> RunResult:
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    setup = setup_job(inputs, spec, input_names)
    table, features, passthrough, warnings = setup.table, setup.features, setup.passthrough, setup.warnings

    def first_chunk(_file: int, values: NDArray[np.float64]) -> None:
        if setup.by_default:  # names, and the first chunk's values
            warnings.extend(row_id_warnings(features, values))

    with ExitStack() as stack, Progress(enabled=progress) as bar:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="q4-", dir=scratch_dir())))
        digests: dict[Source, str] = {}
        # CSV files are hashed as they are parsed; Parquet files (read by row group) on the side.
        hasher = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="q4-sha256"))
        parquet_digests = (
            {s: hasher.submit(s.sha256) for s in table.sources} if table.format == "parquet" else {}
        )
        plan = _plan_spill(table, scratch, scratch_limit)
        read = _read_pass(table, spec, features, first_chunk, digests, scratch, stack, bar, plan)
        timings["read"] = time.perf_counter() - clock

        clock = time.perf_counter()
        model, source = _fit(spec, table, features, read, setup.model, warnings)
        timings["fit"] = time.perf_counter() - clock

        clock = time.perf_counter()
        streamed: dict[str, Sink] = {}  # the row outputs' sinks, when not files under run_dir
        hashed: dict[str, Sink] = {}  # the row outputs' files under run_dir, hashed as written
        if sinks is None:
            (run_dir / "output").mkdir(exist_ok=True)
            open_sink = _recording(file_sinks(run_dir), hashed)  # keys "output/<name>"
        else:
            open_sink = _recording(sinks, streamed)
        projected = _project_pass(
            run_dir / "output", spec, table, features, model, read, stack, bar, open_sink
        )
        timings["project"] = time.perf_counter() - clock

        # documents (and plots) while the writer threads finish the row files
        clock = time.perf_counter()
        sha = [digests[s] if s in digests else parquet_digests[s].result() for s in table.sources]
        input_doc = {"keys": list(table.names), "bytes": table.bytes, "format": table.format, "sha256": sha}
        rows, er, study = _write_documents(
            run_dir, spec, model, source, input_doc, read, projected.tallies, features, passthrough, warnings
        )
        timings["documents"] = time.perf_counter() - clock

        report: Path | None = None
        if spec.mode == "full":
            clock = time.perf_counter()
            report = _render_viz(
                run_dir / "viz", er, study, projected.tallies.sample, model, read.moments, projected.tallies.k
            )
            timings["viz"] = time.perf_counter() - clock

        clock = time.perf_counter()
        projected.writers.close()
        timings["finish_writing"] = time.perf_counter() - clock

    fingerprints: dict[str, tuple[int, int, int]] = {}
    artifacts = _listed(
        [*_artifacts(run_dir, spec.run_id, fingerprints, hashed), *_streamed_artifacts(streamed)]
    )
    return RunResult(
        run_id=spec.run_id,
        mode=spec.mode,
        run_dir=run_dir,
        artifacts=artifacts,
        rows=rows,
        timings=timings,
        warnings=tuple(warnings),
        input={**input_doc, "sizes": [s.size for s in table.sources]},
        report=report,
        fingerprints=fingerprints,
        streamed=frozenset(streamed),
        spill=plan.to_dict(),
    )


@dataclass
class Setup:
    """The job checked against the input's header: the table, the model given (if any), the features."""

    table: InputTable
    model: Q4Model | None
    features: list[str]
    passthrough: list[str]
    by_default: bool  # features chosen by default (no model, no --features): row-id warnings apply
    warnings: list[dict[str, str]]  # those known before any data row is read


def setup_job(inputs: Sequence[Source | Path], spec: JobSpec, input_names: Sequence[str] | None) -> Setup:
    """Open the inputs (their headers), load the model and choose the features; the checks that need no
    data row (width, CSV-writable passthrough columns)."""
    table = open_inputs(inputs, input_names)
    model = load_model(spec.model_path) if spec.model_path is not None else None
    features, passthrough = _features(table, spec, model)
    _check_width(len(features), spec.mode)
    if spec.output_format == "csv":
        _check_csv_writable(table, passthrough)
    by_default = model is None and spec.features is None
    return Setup(table, model, features, passthrough, by_default, _input_warnings(table))


@dataclass
class _Read:
    """What pass 1 leaves for the fit and pass 2."""

    moments: Moments
    n_input: int
    spill: Spill | None  # the CSV chunks, parsed (None for Parquet: pass 2 reads it again)
    chunk_rows: int


def _read_pass(
    table: InputTable,
    spec: JobSpec,
    features: list[str],
    first_chunk: Callable[[int, NDArray[np.float64]], None],
    digests: dict[Source, str],
    scratch: Path,
    stack: ExitStack,
    bar: Progress,
    plan: SpillPlan | None = None,
) -> _Read:
    """Pass 1: read every chunk, classify its rows, merge the valid rows' moments; CSV chunks are spilled
    to ``scratch`` (closed by ``stack``) and hashed into ``digests``; ``first_chunk`` gets the file index
    and the feature values of the first chunk with rows (the row-id check).

    Chunks are read in order (a reader thread), converted and reduced to partial moments on
    :func:`available_cpus` worker threads, and merged here in chunk order."""
    d = len(features)
    moments = Moments(d)
    n_input = 0
    id_checked = False
    spilling = plan.spilled if plan is not None else table.format == "csv"
    spill = Spill(scratch / "pass1.arrow", table.schema, d) if spilling else None
    if spill is not None:
        stack.callback(spill.close)
    task = bar.add("Reading", total=table.bytes, unit="bytes")
    chunk_rows = effective_chunk_rows(spec.chunk_rows, d)
    # A Parquet file's other columns are left for pass 2 (which writes them): pass 1 decodes the features.
    columns = features if spill is None and table.format == "parquet" else None
    batches = iter_batches(table, chunk_rows, on_bytes=task.advance, digests=digests, columns=columns)

    def reduce(item: tuple[int, pa.RecordBatch]) -> tuple[int, pa.RecordBatch, FeatureBlock, Moments]:
        file, batch = item
        block = feature_block(batch, features)
        return file, batch, block, Moments.of(block.values if block.all_valid else block.values[block.valid])

    with single_threaded_blas():
        for file, batch, block, partial in ordered_map(
            reduce, prefetched(batches), workers(), name="q4-read"
        ):
            if batch.num_rows and not id_checked:
                first_chunk(file, block.values)
                id_checked = True
            moments.merge(partial)
            n_input += batch.num_rows
            if spill is not None:
                spill.write(batch, block)
                spill = _within_budget(spill, plan)
        if spill is not None:
            spill.close()
    task.done()
    return _Read(moments, n_input, spill, chunk_rows)


def _within_budget(spill: Spill, plan: SpillPlan | None) -> Spill | None:
    """The spill, or None once it outgrew the plan's budget (deleted: pass 2 parses the input again)."""
    if plan is None:
        return spill
    plan.bytes = spill.bytes
    if spill.bytes <= plan.budget:
        return spill
    spill.discard()
    plan.spilled, plan.reason = False, "over_budget"
    return None


def workers() -> int:
    """Worker threads per pass: the CPUs this task really has (:func:`q4.cpus.available_cpus`); pyarrow's
    CPU pool (Parquet decoding, CSV conversion) is sized to the same count."""
    n = available_cpus()
    if pa.cpu_count() != n:
        pa.set_cpu_count(n)
    return n


def _fit(
    spec: JobSpec,
    table: InputTable,
    features: list[str],
    read: _Read,
    model: Q4Model | None,
    warnings: list[dict[str, str]],
) -> tuple[Q4Model, str]:
    """Fit the model from pass 1's moments, or take the given one; returns it and its source (for
    Q_study.json: "fitted", or the model's name)."""
    moments = read.moments
    _check_rows(read.n_input, moments.n, table)
    if model is None:
        check_finite(moments, features)
        if int((~moments.constant).sum()) < 2:
            d = len(features)
            constant = [f for f, c in zip(features, moments.constant, strict=True) if c]
            raise InputError(
                "too_few_features",
                f"Only {d - len(constant)} of the {d} feature columns vary over the valid rows "
                f"(constant: {name_list(constant)}); Q4 needs at least 2 non-constant features.",
                {"constant_columns": constant},
            )
        model = fit_model(moments, features, n_components=spec.svd_k, source_run=spec.run_id)
        source = "fitted"
    else:
        source = spec.model_name or str(spec.model_path)
    if is_degenerate(model.eigenvalues):
        warnings.append(
            {
                "code": "degenerate_projectors",
                "message": "The two leading eigenvalues are equal or zero, so the quadrant split "
                "depends on an arbitrary choice of basis; treat the split with care.",
            }
        )
    return model, source


@dataclass
class Tallies:
    """What pass 2 counts for the documents: energy, per-quadrant moments (full mode), the plot sample."""

    energy: EnergyTally
    quadrant_stats: QuadrantStats | None  # full mode only
    sample: _Sample
    k: int  # SVD components written (enhanced and full modes)
    enhanced: bool


@dataclass
class _Projected:
    """What pass 2 leaves: the row writers (still finishing) and the tallies."""

    writers: RowWriters
    tallies: Tallies


@dataclass
class _Chunk:
    """One chunk projected by a worker thread: its rows prepared for the files, and its partials."""

    rows: int
    prepared: Prepared
    energy: EnergyTally
    quadrant_stats: QuadrantStats | None
    s: NDArray[np.float64]
    labels: NDArray[np.int8]
    svd: NDArray[np.float64] | None


def _project_pass(
    output: Path,
    spec: JobSpec,
    table: InputTable,
    features: list[str],
    model: Q4Model,
    read: _Read,
    stack: ExitStack,
    bar: Progress,
    open_sink: OpenSink | None = None,
    *,
    first_row: int = 0,
    valid_before: int = 0,
    header: bool = True,
) -> _Projected:
    """Pass 2: project every chunk and hand it to the row writers (files under ``output``, or ``open_sink``'s;
    closed by ``stack`` on failure), tallying energy, the plot sample and, in full mode, per-quadrant moments.

    Worker threads score, split and format chunks in parallel (:func:`_project_chunk`); their partials are
    merged and their rows queued for the writers here, in chunk order. A shard's slice (q4.shards): its
    first row is row ``first_row`` of the input, ``valid_before`` valid rows come before it (the plot
    sample's stride continues), and ``header`` False writes CSV parts without the header line."""
    d = len(features)
    k = min(spec.svd_k, d, read.moments.n, model.components.shape[0])
    enhanced = spec.mode in ("enhanced", "full")
    if open_sink is None:
        output.mkdir(exist_ok=True)
    writers = RowWriters(
        output,
        table,
        features,
        spec.output_format,
        svd_k=k if enhanced else 0,
        queue_chunks=FULL_MODE_QUEUE_CHUNKS if spec.mode == "full" else 1,
        open_sink=open_sink,
        header=header,
    )
    stack.push(lambda failed, *_: writers.close(abort=failed is not None))  # a failed run aborts its sinks
    energy = EnergyTally()
    quadrant_stats = QuadrantStats(d) if spec.mode == "full" else None
    sample = _Sample(stride=max(1, math.ceil(read.moments.n / PLOT_SAMPLE_ROWS)), seen=valid_before)
    task = bar.add("Projecting", total=read.n_input, unit="rows")

    def project(item: tuple[int, pa.RecordBatch, FeatureBlock | None]) -> _Chunk:
        return _project_chunk(
            item, features, model, writers, k if enhanced else 0, quadrant_stats is not None
        )

    chunks = _numbered(_second_pass(table, read.spill, read.chunk_rows), first_row)
    with single_threaded_blas():
        for chunk in ordered_map(project, prefetched(chunks), workers(), name="q4-project"):
            writers.write_prepared(chunk.prepared)
            energy.merge(chunk.energy)
            if quadrant_stats is not None and chunk.quadrant_stats is not None:
                quadrant_stats.merge(chunk.quadrant_stats)
            sample.take(chunk.s, chunk.labels, chunk.svd)
            task.advance(chunk.rows)
    task.done()
    return _Projected(writers, Tallies(energy, quadrant_stats, sample, k, enhanced))


def _numbered(
    chunks: Iterator[tuple[pa.RecordBatch, FeatureBlock | None]], first_row: int = 0
) -> Iterator[tuple[int, pa.RecordBatch, FeatureBlock | None]]:
    """Each chunk with the input row number of its first row (the first chunk's: ``first_row``)."""
    row = first_row
    for batch, block in chunks:
        yield row, batch, block
        row += batch.num_rows


def _project_chunk(
    item: tuple[int, pa.RecordBatch, FeatureBlock | None],
    features: list[str],
    model: Q4Model,
    writers: RowWriters,
    k: int,
    full: bool,
) -> _Chunk:
    """Score one chunk, prepare its rows for the output files and compute its partials (a worker's job)."""
    first_row, batch, block = item
    if block is None:
        block = feature_block(batch, features)
    x = block.values if block.all_valid else block.values[block.valid]
    z = model.std.apply(x)
    s = scores(z, model.projectors)
    labels = quadrant_labels(s)
    svd = _svd_scores(z, model.components[:k]) if k else None
    energy = EnergyTally()
    energy.update(z, s, labels)
    stats: QuadrantStats | None = None
    if full:
        stats = QuadrantStats(x.shape[1])
        stats.update(x, z, labels)
    prepared = writers.prepare(batch, block, first_row, s, labels, svd)
    return _Chunk(batch.num_rows, prepared, energy, stats, s, labels, svd)


def _write_documents(
    run_dir: Path,
    spec: JobSpec,
    model: Q4Model,
    source: str,
    input_doc: dict[str, Any],
    read: _Read,
    projected: Tallies,
    features: list[str],
    passthrough: list[str],
    warnings: list[dict[str, str]],
) -> tuple[dict[str, int], dict[str, Any], dict[str, Any]]:
    """Write er.json, Q_study.json and (enhanced, full) the model; returns the row counts, er and study."""
    n_input, moments = read.n_input, read.moments
    er = projected.energy.to_dict()
    rows = {
        "input": n_input,
        "valid": moments.n,
        "rejected": n_input - moments.n,
        "keep": er["keep"]["rows"],
        "discard": er["discard"]["rows"],
    }
    study = _study_doc(spec, model, source, input_doc, rows, features, passthrough, warnings)
    if projected.enhanced:
        study["svd"] = svd_section(model.eigenvalues, model.n_samples_fit, projected.k)
    if projected.quadrant_stats is not None:
        study["study"] = study_section(
            projected.quadrant_stats, model.std, model.eigenvalues, model.projectors
        )
    output = run_dir / "output"
    output.mkdir(exist_ok=True)  # row outputs streamed to sinks leave it uncreated
    _write_json(output / "er.json", er)
    _write_json(output / "Q_study.json", study)
    if projected.enhanced:
        (run_dir / "model").mkdir(exist_ok=True)
        _write_json(run_dir / "model" / "q4_model.json", model.to_dict(version=__version__))
    return rows, er, study


def _input_warnings(table: InputTable) -> list[dict[str, str]]:
    """Warnings about the input known before any data row is read: a CSV whose column names are
    all numbers (a file without a header row, likely)."""
    warnings: list[dict[str, str]] = []
    if table.format == "csv":
        header = numeric_header_warning(table.columns, table.names[0].replace("\\", "/").rsplit("/", 1)[-1])
        if header is not None:
            warnings.append(header)
    return warnings


def _features(table: InputTable, spec: JobSpec, model: Q4Model | None) -> tuple[list[str], list[str]]:
    if model is None:
        return select_features(table.columns, table.numeric, spec.features)
    absent = [f for f in model.features if f not in table.columns]
    not_numeric = [f for f in model.features if f in table.columns and f not in table.numeric]
    if absent or not_numeric:
        problem = absent or not_numeric
        raise ModelError(
            "model_mismatch",
            f"The model's feature column(s) {name_list(problem)} are "
            f"{'missing from' if absent else 'not numeric in'} the input; apply the model only to tables "
            "with all its features.",
            {"absent": absent, "not_numeric": not_numeric, "model_features": list(model.features)},
        )
    if spec.features is not None and tuple(spec.features) != model.features:
        raise InputError(
            "features_with_model",
            "Features were named together with a model that has other features; drop --features "
            "when applying a model.",
        )
    chosen = list(model.features)
    return chosen, [c for c in table.columns if c not in set(chosen)]


def _check_width(d: int, mode: str) -> None:
    limit = MAX_FEATURES[mode]
    if d > limit:
        raise InputError(
            "too_many_features",
            f"The job has {d:,} feature columns, more than the {limit:,} Q4 handles in {mode} mode (memory "
            f"grows as d\u00b2 and time as d\u00b3); name at most {limit:,} columns as features.",
            {"features": d, "limit": limit},
        )


def _check_csv_writable(table: InputTable, passthrough: list[str]) -> None:
    """Parquet columns CSV cannot carry as text (nested, interval, raw bytes) need Parquet outputs."""
    for name in passthrough:
        t = table.schema.field(name).type
        binary = pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)
        try:
            pa.array([], t).cast(pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            binary = True
        if binary:
            raise InputError(
                "unsupported_column_type",
                f"The column {name!r} has type {t}, which cannot be written to CSV unchanged; "
                "use the parquet output format (--output-format parquet) for this table.",
                {"column": name, "type": str(t)},
            )


def _check_rows(n_input: int, n_valid: int, table: InputTable) -> None:
    if n_input == 0:
        raise InputError(
            "too_few_rows",
            f"The input {table.sources[0].name} has a header but no data rows; give at least 2 rows.",
        )
    if n_valid == 0:
        raise InputError(
            "too_few_rows",
            f"None of the {n_input} rows is valid (every row has a missing, non-numeric or non-finite "
            "feature value); fix the values or choose other features.",
            {"rows": n_input},
        )
    if n_valid < 2:
        raise InputError(
            "too_few_rows",
            f"Only {n_valid} of the {n_input} rows is valid; Q4 needs at least 2 valid rows.",
            {"rows": n_input, "valid": n_valid},
        )


def _second_pass(
    table: InputTable, spill: Spill | None, chunk_rows: int
) -> Iterator[tuple[pa.RecordBatch, FeatureBlock | None]]:
    """Pass 2's chunks: from the spill file with their feature values (CSV), or read again (Parquet: the
    worker converts the features)."""
    if spill is not None:
        yield from spill.chunks()
    else:
        for _, batch in iter_batches(table, chunk_rows):
            yield batch, None


def _study_doc(
    spec: JobSpec,
    model: Q4Model,
    source: str,
    input_doc: dict[str, Any],
    rows: dict[str, int],
    features: list[str],
    passthrough: list[str],
    warnings: list[dict[str, str]],
) -> dict[str, Any]:
    lam = model.eigenvalues
    total = float(lam.sum())
    ratio = lam / total if total > 0 else np.full_like(lam, np.nan)
    return {
        "schema": STUDY_SCHEMA,
        "run_id": spec.run_id,
        "mode": spec.mode,
        "input": input_doc,
        "rows": rows,
        "features": features,
        "passthrough_columns": passthrough,
        "constant_columns": [f for f, c in zip(features, model.constant, strict=True) if c],
        "mean": _floats(model.mean),
        "scale": _floats(model.scale),
        "eigenvalues": _floats(lam),
        "explained_variance_ratio": _floats(ratio),
        "projectors": [_floats(p) for p in model.projectors],
        "warnings": warnings,
        "model": {"source": source},
    }


def _svd_scores(z: NDArray[np.float64], components: NDArray[np.float64]) -> NDArray[np.float64]:
    """``Z V_k`` as a column-major ``(m, k)`` array (each column contiguous for the writer)."""
    out = np.empty((z.shape[0], components.shape[0]), dtype=np.float64, order="F")
    for i, v in enumerate(components):
        np.dot(z, v, out=out[:, i])
    return out


def _floats(values: NDArray[np.float64]) -> list[float | None]:
    return [json_number(v) for v in np.asarray(values, dtype=np.float64).tolist()]


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _data_correlation(moments: Moments, std: Standardization) -> NDArray[np.float64]:
    """``ZᵀZ/n`` of this data under a (possibly foreign) standardization."""
    delta = (moments.shift - std.shift) + (moments.offset - std.offset)
    gram = moments.comoment / moments.n + np.outer(delta, delta)
    c = gram / np.outer(std.scale, std.scale)
    c[std.constant, :] = 0.0
    c[:, std.constant] = 0.0
    return np.asarray(0.5 * (c + c.T))


def _render_viz(
    viz_dir: Path,
    er: dict[str, Any],
    study: dict[str, Any],
    sample: _Sample,
    model: Q4Model,
    moments: Moments,
    k: int,
) -> Path:
    from q4.report import render_report
    from q4.viz import render_plots

    viz_dir.mkdir(exist_ok=True)
    s = np.concatenate(sample.scores) if sample.scores else np.zeros((0, 2))
    labels = np.concatenate(sample.labels) if sample.labels else np.zeros(0, dtype=np.int8)
    svd = np.concatenate(sample.svd) if sample.svd and k >= 2 else None
    plots = render_plots(
        viz_dir,
        er=er,
        study=study,
        scores=s,
        quadrants=labels,
        svd_scores=svd,
        correlation=_data_correlation(moments, model.std),
    )
    return render_report(viz_dir / "report.html", er=er, study=study, plots=plots)


def _output_files(run_dir: Path) -> Iterator[Path]:
    for name in OUTPUT_DIRS:
        folder = run_dir / name
        if folder.is_dir():
            yield from sorted(p for p in folder.rglob("*") if p.is_file())


def _fingerprint(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _changed(run_id: str, run_dir: Path, what: str) -> RunStateError:
    return RunStateError(
        "run_changed",
        f"{what} while run {run_id} was being finished, so another program is writing into {run_dir}; "
        "nothing was committed: stop the other writer and run again with another --run-id.",
        {"run_dir": str(run_dir)},
    )


def _artifacts(
    run_dir: Path,
    run_id: str,
    fingerprints: dict[str, tuple[int, int, int]],
    written: Mapping[str, Sink] | None = None,
) -> Iterator[Artifact]:
    """Every file under ``run_dir``'s output directories, hashed; a file in ``written`` (by key) was hashed
    as it was written (:class:`q4.outputs.HashedFile`) and is checked, by one stat, to be the file it
    closed (the same inode, size and mtime)."""
    written = written or {}
    unseen = set(written)
    for path in _output_files(run_dir):
        key = path.relative_to(run_dir).as_posix()
        if key in written:
            unseen.discard(key)
            counted: Any = written[key]
            now = _fingerprint(path.stat())
            if not isinstance(counted.sha256, str) or now != counted.fingerprint or now[1] != counted.bytes:
                raise _changed(run_id, run_dir, f"The file {key} changed")
            fingerprints[key] = now
            yield Artifact(key=key, bytes=now[1], sha256=counted.sha256, content_type=content_type(path))
            continue
        with path.open("rb") as f:
            before = _fingerprint(os.fstat(f.fileno()))
            digest = hashlib.file_digest(f, "sha256").hexdigest()
            after = _fingerprint(os.fstat(f.fileno()))
            hashed = f.tell()
        if after != before or after[1] != hashed:
            raise _changed(run_id, run_dir, f"The file {key} changed")
        fingerprints[key] = after
        yield Artifact(key=key, bytes=after[1], sha256=digest, content_type=content_type(path))
    if unseen:
        raise _changed(run_id, run_dir, f"The file {sorted(unseen)[0]} disappeared")


def _recording(sinks: OpenSink | None, opened: dict[str, Sink]) -> OpenSink | None:
    """The row writers' sink opener (file names under ``output/``), noting each sink by its key."""
    if sinks is None:
        return None

    def open_sink(name: str, content_type: str) -> Sink:
        key = f"output/{name}"
        opened[key] = sinks(key, content_type)
        return opened[key]

    return open_sink


def _streamed_artifacts(opened: Mapping[str, Sink]) -> Iterator[Artifact]:
    """The artifacts written to sinks, as the sinks counted them (``bytes`` and ``sha256`` once closed)."""
    for key, sink in opened.items():
        counted: Any = sink  # an S3Writer (q4.s3io): it counts its bytes and sha256 as they go
        if not isinstance(counted.sha256, str):
            raise TypeError(f"the sink of {key} did not report its sha256 (closed?)")
        yield Artifact(key, int(counted.bytes), counted.sha256, content_type(Path(key)))


def _listed(artifacts: list[Artifact]) -> tuple[Artifact, ...]:
    """Artifacts in the manifest's order: by top directory (OUTPUT_DIRS), then by path."""
    return tuple(sorted(artifacts, key=lambda a: (OUTPUT_DIRS.index(a.key.split("/")[0]), Path(a.key))))


def verify_unchanged(result: RunResult) -> None:
    """Check that ``result.run_dir`` holds exactly the artifacts listed, as they were hashed.

    Cheap (one ``stat`` per file, no re-reading): the same inode, size and mtime as when the sha256
    was computed. Called just before committing, so a MANIFEST.json never lists bytes that are not on
    disk. Raises :class:`RunStateError` (``run_changed``) otherwise. Streamed artifacts (``result.streamed``)
    are not on disk: their sinks counted their bytes.
    """
    listed = {a.key for a in result.artifacts if a.key not in result.streamed}
    for path in _output_files(result.run_dir):
        key = path.relative_to(result.run_dir).as_posix()
        if key not in listed:
            raise _changed(result.run_id, result.run_dir, f"The file {key} appeared")
        try:
            now = _fingerprint(path.stat())
        except FileNotFoundError:
            now = None
        if now != result.fingerprints.get(key):
            raise _changed(result.run_id, result.run_dir, f"The file {key} changed")
        listed.discard(key)
    if listed:
        raise _changed(result.run_id, result.run_dir, f"The file {sorted(listed)[0]} disappeared")
