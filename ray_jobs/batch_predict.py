"""Batch inference on Ray Data: read rows, check each one, score the valid ones, write Parquet.

Input: Parquet (a file or a folder of files, local or ``s3://``) whose columns are the feature
columns of the dataset version the model was trained on, encoded as data prep encodes them (a
dataset version's ``test.parquet`` is such a file); or, for the CNN, an MNIST IDX3 image file
(optionally gzipped), normalized here exactly as data prep normalized the training images.

Scoring runs in Ray Data tasks (``map_batches`` with ``batch_scorer.score``), at most
``concurrency`` at once; each worker process loads the model version once and keeps it for the
tasks that follow (an actor pool did the same, but started its own processes: 1-2 s more per run
here, where a task runs in a worker Ray already has). The input is cut into chunks of about
``chunk_rows`` rows, whole model batches worth at most ``CHUNK_BYTES`` of features and at most a
worker's share of the input; a task gets one chunk, a Ray Data block, whole, and calls the model
``batch_size`` rows at a time. Ray Data's cost per batch is paid per chunk (for the diamonds
regressor, whose forward pass costs a fraction of a microsecond a row, batches of 512 handed over
one by one had made that cost most of the run's time). A Parquet input is read in about a block per
chunk: Ray Data's default of some 200 blocks cost a round trip to the driver each, more than
reading the rows. Every row is checked first; a row with a null, NaN or infinite value, a value
beyond float32's range, a string that is not a number or an image of the wrong length is rejected
with its reason instead of scored. Nothing is dropped silently: rows in = rows scored + rows
rejected, checked against the input's own row count.

Output, one folder: ``predictions.parquet`` (``row``, the row's 0-based position in the input; the
prediction; ``model_name``, ``model_version``) and ``rejected.parquet`` (``row``, ``reason``). Both
are written into a staging folder beside the destination and published only once every row was
handled: a local destination appears with one rename. S3 has no rename: there the two files are
moved under the destination prefix only after both were written (for a moment a reader may see
one without the other). A run that fails publishes nothing.

Ray Data keeps the input's order here, so the driver numbers the rows as the scored batches stream
back to it, and writes the two files itself (one stream of Parquet, no small files).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import time
import uuid
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from ray_jobs import storage
from ray_jobs.batch_scorer import numeric_type, score, text_type
from ray_jobs.ray_data_limits import fall_back_to_cluster_resources
from ray_jobs.scoring import Scoring
from ray_jobs.settings import Settings
from ray_jobs.storage import parquet_read

PREDICTIONS, REJECTED = "predictions.parquet", "rejected.parquet"
REJECTED_SCHEMA = pa.schema([("row", pa.int64()), ("reason", pa.string())])
IDX3_UBYTE = 0x00000803  # IDX magic: 0x08 = unsigned bytes, 0x03 = three dimensions (images, rows, columns)
IDX_HEADER = 16  # the magic and three big-endian uint32 sizes
READ_CPUS = 0.25  # per Ray Data read task, as for training's reads
FIRST_REJECTIONS = 5
ROW_GROUP_ROWS = 65536  # rows per Parquet row group written (most chunks are smaller)
# Float32 features per chunk at most (a scoring call gets a read block of about a chunk), in whole
# model batches: Ray Data's cost per batch (slicing, handing over, a task) and the row checks' fixed
# cost are paid once per chunk rather than once per model batch (``chunk_rows``). 32 MiB: 322,560
# diamonds rows at 512 rows a call, 10,240 MNIST images. The regressor on 2 cores here: 539,400 rows
# in 0.33-0.37 s with 8 MiB chunks, 0.31 s with 32 MiB; 5,394,000 rows in 2.7-2.9 s and 2.2-2.4 s.
CHUNK_BYTES = 32 * 2**20


class BadInputError(ValueError):
    """The input broke a rule that stops the whole run; worded like data prep's ``DataValidationError``."""

    def __init__(self, file: str, field: str, rule: str, detail: str = "") -> None:
        message = f"{file}: field '{field}' breaks rule '{rule}'"
        super().__init__(f"{message}: {detail}" if detail else message)


# --- input ------------------------------------------------------------------------------------------


def input_format(location: str) -> str:
    """``parquet`` (a folder, a ``.parquet`` name or Parquet's magic bytes) or ``idx`` (anything else)."""
    filesystem, path = storage.resolve(location)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{location}: no such file or folder")
    if info.type == pafs.FileType.Directory or path.endswith(".parquet"):
        return "parquet"
    with filesystem.open_input_stream(path) as stream:
        return "parquet" if stream.read(4) == b"PAR1" else "idx"


def read_idx_images(location: str) -> np.ndarray:
    """An IDX3 file of unsigned-byte images (optionally gzipped) as a (n, rows, columns) uint8 array."""
    raw = storage.read_bytes(location)
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise BadInputError(location, "file", "readable gzip", str(exc)) from None
    if len(raw) < IDX_HEADER:
        raise BadInputError(location, "header", f"an IDX header of {IDX_HEADER} bytes", f"the file has {len(raw)}")
    magic, count, rows, columns = (int(v) for v in np.frombuffer(raw, ">u4", 4))
    if magic != IDX3_UBYTE:
        hint = " (an IDX1 label file)" if magic == 0x00000801 else ""
        raise BadInputError(
            location, "magic", "IDX3 unsigned-byte images (0x00000803) or Parquet", f"found 0x{magic:08x}{hint}"
        )
    expected = IDX_HEADER + count * rows * columns
    if len(raw) != expected:
        raise BadInputError(
            location,
            "size",
            "16 header bytes + images x rows x columns pixels",
            f"{'truncated' if len(raw) < expected else 'trailing bytes'}: the header announces {count} images "
            f"of {rows}x{columns} = {expected} bytes, the file has {len(raw)}",
        )
    return np.frombuffer(raw, np.uint8, count * rows * columns, IDX_HEADER).reshape(count, rows, columns)


def normalize_images(images: np.ndarray, manifest: dict[str, Any]) -> np.ndarray:
    """uint8 images as the model saw its training images, flat float32: pixel / 256 (the bundled
    pickle's pixels), then standardized with the training split's mean and std, as in
    ``flows/datasets/mnist.py`` ``transform()``."""
    stats = manifest["normalization"]
    pixels = images.reshape(len(images), -1).astype(np.float32) / 256
    return ((pixels - stats["mean"]) / stats["std"]).astype(np.float32)


def chunk_rows(batch_size: int, scoring: Scoring, rows: int, workers: int) -> int:
    """Rows per scoring call: whole model batches of ``batch_size``, at most ``CHUNK_BYTES`` of
    features, and no more than a scoring worker's share of ``rows``, so that every worker gets one."""
    row_bytes = 4 * int(np.prod(scoring.feature_shape))
    most = CHUNK_BYTES // (row_bytes * batch_size)
    share = -(-rows // (workers * batch_size))
    return batch_size * max(1, min(most, share))


def idx_table(location: str, scoring: Scoring) -> pa.Table:
    """An IDX image file as a table of normalized image rows."""
    if scoring.tensor_column is None:
        raise BadInputError(location, "format", "IDX images for an image model", f"{scoring.model_name} takes rows")
    images = read_idx_images(location)
    side = scoring.feature_shape[-2:]
    if images.shape[1:] != side:
        raise BadInputError(
            location, "dimensions", f"{side[0]}x{side[1]} images", f"found {images.shape[1]}x{images.shape[2]}"
        )
    pixels = normalize_images(images, scoring.manifest)
    return pa.table({scoring.tensor_column: pa.FixedSizeListArray.from_arrays(pixels.reshape(-1), pixels.shape[1])})


def idx_dataset(table: pa.Table, chunk: int) -> ray.data.Dataset:
    """The image rows as a dataset of a block per ``chunk`` rows."""
    return ray.data.from_arrow([table.slice(start, chunk) for start in range(0, max(len(table), 1), chunk)])


def parquet_files(location: str, scoring: Scoring) -> pads.FileSystemDataset:
    """A Parquet file or folder whose schema holds every feature column, of a usable type."""
    filesystem, path = storage.resolve(location)
    files = pads.dataset(path, filesystem=filesystem, format="parquet")
    check_schema(files.schema, location, scoring)
    return files


def parquet_dataset(
    files: pads.FileSystemDataset, scoring: Scoring, rows: int, chunk: int, reads_at_once: int | None = None
) -> ray.data.Dataset:
    """The files' feature columns as a dataset of about a block per ``chunk`` of their ``rows``,
    each handed on as soon as it is read, by at most ``reads_at_once`` read tasks at a time
    (``read_tasks_at_once``; ``None``: as many as Ray Data's budget allows).

    By default Ray Data cuts a read into ~200 blocks for parallelism (a file of 539,400 diamonds
    rows: 57 blocks), and each block costs a round trip between the read task and the driver's
    executor (~5 ms here), more than reading the rows (0.03 s in all). Asked for more blocks than
    there are files, it reads 128 MiB before it hands on anything and cuts that into blocks then:
    5,394,000 diamonds rows (one file) waited 0.25 s and more for their first. So the read asks for
    no more tasks than files and for blocks of a chunk's bytes, which it hands on as it reads them.
    No repartition either: a repartition step waited for a CPU the scoring held. The files are read
    in pyarrow's order, sorted: a row's position is its position in that sequence.
    """
    columns = scoring.manifest["feature_columns"]
    tasks = max(1, min(len(files.files), -(-rows // chunk)))
    # pyarrow decodes a chunk's rows at a time (fewer where a row group is smaller), and Ray Data
    # hands a block on once it holds more than the target: a byte under a chunk's, so each chunk
    # goes as soon as it is whole (at the target itself it would wait for the next rows).
    with parquet_read(block_bytes=chunk * row_bytes(files.schema, scoring) - 1):
        return ray.data.read_parquet(
            files.files,
            filesystem=files.filesystem,
            columns=columns,
            num_cpus=READ_CPUS,
            override_num_blocks=tasks,
            batch_size=chunk,
            # A cap only where it caps something: one read task runs as it did without one.
            concurrency=reads_at_once if reads_at_once is not None and tasks > reads_at_once else None,
        )


def row_bytes(schema: pa.Schema, scoring: Scoring) -> int:
    """A row's feature columns in memory as Arrow holds them once read (strings: a guess of 16 bytes)."""
    total = 0
    for name in scoring.manifest["feature_columns"]:
        kind = schema.field(name).type
        if pa.types.is_fixed_size_list(kind):
            total += _width(kind.value_type) * kind.list_size
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind):  # values and an offset
            offset = 8 if pa.types.is_large_list(kind) else 4
            total += _width(kind.value_type) * int(np.prod(scoring.feature_shape)) + offset
        else:
            total += _width(kind)
    return max(1, total)


def _width(kind: pa.DataType) -> int:
    try:
        return max(1, kind.bit_width // 8)
    except ValueError:  # not fixed-width: strings
        return 16


def check_schema(schema: pa.Schema, location: str, scoring: Scoring) -> None:
    """Every feature column present, of a type whose values can become float32 (strings: row by row)."""
    for name in scoring.manifest["feature_columns"]:
        if name not in schema.names:
            raise BadInputError(location, name, "column present", f"the input's columns: {schema.names}")
        kind = schema.field(name).type
        if name == scoring.tensor_column:
            lists = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
            ok, rule = lists and numeric_type(kind.value_type), f"a list of {np.prod(scoring.feature_shape)} numbers"
        else:
            ok, rule = numeric_type(kind) or text_type(kind), "numbers (or strings of numbers) castable to float32"
        if not ok:
            raise BadInputError(location, name, rule, f"type {kind}")


def read_tasks_at_once(settings: Settings) -> int | None:
    """How many of a multi-file input's read tasks run at once: on a local Ray one per whole CPU it
    keeps for reading (``settings.data_cpus``), on a cluster as many as Ray Data's budget allows.

    A read task is a worker process of its own beside the scoring tasks' processes. Locally Ray keeps
    about one idle worker process per CPU and stops the rest after a second, so every run with two
    reads at once started a new process (imports: about a second of CPU here) while two reads and
    two scoring tasks shared two cores; and the rows are handed on in the files' order, so a second
    file read early only waits. 5,394,000 diamonds rows in 2 or 4 files: median 3.65-4.43 s with
    the reads at once, 2.28-2.45 s one at a time, as one file (2.50 s).
    """
    from ray_jobs.train import on_cluster  # here, not at the top: imports PyTorch

    return None if on_cluster(settings) else max(1, int(settings.data_cpus))


def scoring_workers(concurrency: int | None, settings: Settings) -> tuple[int, float, int]:
    """Scoring tasks at once (default: one per CPU), the CPUs each requests and the threads each runs.

    On a fixed-size (local) Ray the scoring leaves ``settings.data_cpus`` free: Ray Data lists and
    reads the input in tasks of its own (listing asks for a whole CPU), and scoring holding every
    CPU would starve them. The request is for Ray's scheduler; the cores are all the scoring's once
    the input is read, so each task runs cores / concurrency threads. On a cluster each asks for
    one CPU and runs one thread.
    """
    from ray_jobs.train import on_cluster  # here, not at the top: imports PyTorch

    cpus = ray.cluster_resources().get("CPU", 1)
    workers = concurrency or max(1, int(cpus))
    if workers < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    if on_cluster(settings):
        return workers, 1.0, 1
    if cpus <= settings.data_cpus:
        raise ValueError(
            f"the local Ray has {cpus:g} CPUs and keeps {settings.data_cpus:g} (SKYTRAIN_DATA_CPUS) for reading "
            "the input: none is left for scoring; lower SKYTRAIN_DATA_CPUS or use a bigger Ray"
        )
    return workers, min(1.0, (cpus - settings.data_cpus) / workers), max(1, int(cpus) // workers)


# --- output -------------------------------------------------------------------------------------


class StagedOutput:
    """The output folder: its files written under a staging folder beside it, published only whole.

    Refuses a destination that already holds anything: predictions never overwrite anything.
    """

    def __init__(self, location: str, schemas: dict[str, pa.Schema]) -> None:
        self.location, self.schemas = storage.normalize(location), schemas
        self.filesystem, self.final = storage.resolve(location)
        if "/" not in self.final:
            raise ValueError(f"{self.location}: output_path must be a folder inside the bucket, not the bucket")
        if self.filesystem.get_file_info(self.final).type == pafs.FileType.File:
            raise FileExistsError(f"{self.location}: is a file; output_path names a folder")
        if self.filesystem.get_file_info(pafs.FileSelector(self.final, allow_not_found=True)):
            raise FileExistsError(f"{self.location}: not empty; predictions overwrite nothing: choose another output")
        parent, name = self.final.rsplit("/", 1)
        self.staging = f"{parent}/.{name}-staging-{uuid.uuid4().hex[:12]}"
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.pending: dict[str, list[pa.Table]] = {name: [] for name in schemas}

    def path(self, name: str) -> str:
        return f"{self.location}/{name}"

    def __enter__(self) -> StagedOutput:
        self.filesystem.create_dir(self.staging)
        for name, schema in self.schemas.items():
            # Dictionary pages for the text (model name and version, reasons), not for predictions:
            # trying them on float columns tripled the driver's cost of writing a chunk.
            text = [field.name for field in schema if pa.types.is_string(field.type)]
            self.writers[name] = pq.ParquetWriter(
                f"{self.staging}/{name}", schema, filesystem=self.filesystem, use_dictionary=text
            )
        return self

    def write(self, name: str, table: pa.Table) -> None:
        """Append rows; they reach the file in row groups of ``ROW_GROUP_ROWS``, not one per batch."""
        if table.num_rows:
            self.pending[name].append(table)
            if sum(t.num_rows for t in self.pending[name]) >= ROW_GROUP_ROWS:
                self._flush(name)

    def _flush(self, name: str) -> None:
        if self.pending[name]:
            self.writers[name].write_table(pa.concat_tables(self.pending[name]))
            self.pending[name] = []

    def __exit__(self, error_type, *_) -> None:
        try:
            if error_type is None:
                for name in self.writers:
                    self._flush(name)
            for writer in self.writers.values():
                writer.close()
            if error_type is None:
                self._publish()
        finally:
            with contextlib.suppress(OSError):
                self.filesystem.delete_dir(self.staging)

    def _publish(self) -> None:
        if isinstance(self.filesystem, pafs.LocalFileSystem):
            self.filesystem.move(self.staging, self.final)  # one rename (onto the empty folder, if any)
            return
        for name in self.schemas:  # S3: no rename; the files go under the destination only now
            self.filesystem.move(f"{self.staging}/{name}", f"{self.final}/{name}")


# --- the run ------------------------------------------------------------------------------------


def predict(
    input_path: str,
    output_path: str,
    scoring: Scoring,
    *,
    batch_size: int = 512,
    concurrency: int | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Score every valid row of ``input_path`` with the model version; write ``output_path``; a summary.

    Raises ``BadInputError`` (nothing written) for an input the model cannot read at all: a missing
    or mistyped column, a bad IDX file, or no valid row.
    """
    settings = settings or Settings()
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    started = time.perf_counter()
    output = StagedOutput(output_path, {PREDICTIONS: scoring.predictions_schema(), REJECTED: REJECTED_SCHEMA})
    kind = input_format(input_path)
    workers, worker_cpus, threads = scoring_workers(concurrency, settings)
    if kind == "idx":
        images = idx_table(input_path, scoring)
        rows_in = images.num_rows
        chunk = chunk_rows(batch_size, scoring, rows_in, workers)
        dataset = idx_dataset(images, chunk)
    else:
        files = parquet_files(input_path, scoring)
        rows_in = files.count_rows()
        chunk = chunk_rows(batch_size, scoring, rows_in, workers)
        dataset = parquet_dataset(files, scoring, rows_in, chunk, read_tasks_at_once(settings))
    fall_back_to_cluster_resources()  # else Ray Data runs a task at a time for the first second
    context = dataset.context  # this dataset's own copy of Ray Data's settings
    context.execution_options.preserve_order = True  # the rows' positions are counted on the way back
    if logging.getLevelName(settings.ray_log_level) > logging.INFO:
        context.enable_progress_bars = False
        context.print_on_execution_start = False
    # ONNX: the export is fetched here once and handed to the tasks (Ray Data puts it in the object
    # store once), which then need onnxruntime and nothing heavier than it: a worker importing
    # MLflow and PyTorch to load it took 3 s more.
    onnx_model = scoring.onnx_export() if scoring.runtime == "onnx" else None
    # A call per block: with ``batch_size=chunk`` Ray Data bundled a block smaller than the chunk (a
    # read cut into n blocks gives rows / n each, a few rows under it) with the next one, so half as
    # many tasks ran: one for two workers on a small input, half the cores idle on a cluster.
    scored = dataset.map_batches(
        score,
        fn_kwargs={"scoring": scoring, "threads": threads, "onnx_model": onnx_model, "model_batch": batch_size},
        batch_size=None,
        batch_format="pyarrow",
        compute=ray.data.TaskPoolStrategy(size=workers),
        num_cpus=worker_cpus,
    )
    rows, rejected, first, reasons, arrivals = 0, 0, [], Counter(), []
    model = {"model_name": scoring.model_name, "model_version": scoring.model_version}
    with output:
        for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None):
            arrivals.append((time.perf_counter(), batch.num_rows))
            batch = batch.append_column("row", pa.array(np.arange(rows, rows + batch.num_rows)))
            rows += batch.num_rows
            bad = batch.column("reason").is_valid()
            if (count := pc.sum(bad).as_py() or 0) > 0:
                refused = batch.filter(bad).select(["row", "reason"])
                output.write(REJECTED, refused)
                rejected += count
                reasons.update(refused.column("reason").to_pylist())
                first += refused.slice(0, FIRST_REJECTIONS - len(first)).to_pylist()
            good = batch.filter(pc.invert(bad)) if count else batch
            for name, value in model.items():
                good = good.append_column(name, pa.repeat(pa.scalar(value, pa.string()), good.num_rows))
            output.write(PREDICTIONS, good.select(output.schemas[PREDICTIONS].names))
        if rows != rows_in:
            raise RuntimeError(f"{input_path}: {rows_in} rows in the input but {rows} came back from scoring")
        if rows == rejected:
            detail = f"all {rows} rejected, e.g. row {first[0]['row']}: {first[0]['reason']}" if rows else "no rows"
            raise BadInputError(input_path, "rows", "at least one valid row to score", detail)
    seconds = time.perf_counter() - started
    # After the first batch is back (reading started, model loaded): the pipeline's pace.
    steady = arrivals[-1][0] - arrivals[0][0]
    return {
        "input": storage.normalize(input_path),
        "input_format": kind,
        "output": output.location,
        "predictions_path": output.path(PREDICTIONS),
        "rejected_path": output.path(REJECTED),
        "model_uri": scoring.model_uri,
        "model_version": scoring.model_version,
        "runtime": scoring.runtime,
        "rows_in": rows,
        "rows_scored": rows - rejected,
        "rows_rejected": rejected,
        "first_rejections": first,
        "rejection_reasons": dict(reasons.most_common()),
        "workers": workers,
        "batch_size": batch_size,
        "chunk_rows": chunk,
        "chunks": len(arrivals),
        "seconds": seconds,
        "rows_per_second": rows / seconds,
        "first_batch_seconds": arrivals[0][0] - started,
        "steady_rows_per_second": (rows - arrivals[0][1]) / steady if steady > 0 else None,
    }
