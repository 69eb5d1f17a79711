"""Experiment trackers: a run's config, scalars, completion tables and final numbers, sent to any of TensorBoard,
Weights & Biases, Trackio and MLflow (``report_to=[tensorboard,wandb]`` on any stage; empty: none).

Each tracker is an optional extra (``pip install 't1[wandb]'``, all four: ``'t1[trackers]'``), imported only
when asked for. A missing library, an unknown name or a backend that cannot start is one ``ConfigError`` line
before the run starts; a backend failing mid-run is warned about once on stderr (``t1: warning: wandb: ...``)
and switched off, and the run goes on. :class:`Trackers` is opened by the main process only.

What goes where (``out`` is the run directory):

* scalars (:meth:`Trackers.log`): every finite int/float/bool value of a row (bools as 0/1), keys as they
  are (``completions/mean_length``); strings, None, nan/inf and nested values are skipped.
* tables (:meth:`Trackers.table`): rows of dicts (prompt, response, reward...), columns in first-seen order.
* :meth:`Trackers.summary`: final numbers (nested mappings flattened with ``/``).

A run resumed from a checkpoint (``resume_step``) logs the steps between the checkpoint and the kill again; each
tracker shows them once: TensorBoard purges the old ones (``purge_step``), MLflow (no deleting) and Trackio skip
the steps their store holds (same values: resume is exact), W&B drops them by its own rule (steps only grow).

tensorboard
    ``torch.utils.tensorboard.SummaryWriter`` writing ``out/tensorboard/events.out.tfevents.*``: the config as
    the text ``config`` (YAML in a code block), scalars by tag, each table as a markdown text (cells cut to
    500 characters, 100 rows), the summary as scalars at the last logged step. No environment variables.
wandb
    ``wandb.init(reinit="create_new")``: a run object of its own, so two Trackers in one process do not
    clash. Files go to ``out/wandb/`` (``run-*`` online, ``offline-run-*`` with ``WANDB_MODE=offline``; sync
    those with ``wandb sync``). The run id is kept in ``out/.wandb_id``: a resumed run continues the same
    W&B run. Project: ``WANDB_PROJECT`` or ``t1``. wandb itself honours ``WANDB_MODE``, ``WANDB_ENTITY``,
    ``WANDB_API_KEY`` (never read or printed here), ``WANDB_BASE_URL``, ``WANDB_DATA_DIR``/``WANDB_CACHE_DIR``
    (artifact staging and cache, outside ``out``). Console capture is off and wandb's own output silenced.
    Tables are ``wandb.Table``; the summary goes to ``run.summary``.
trackio
    ``trackio.init`` in a context of its own (trackio keeps its current run in context variables and would
    finish the previous one; its ``Run`` object is held and used directly). Local store: the SQLite file
    ``$TRACKIO_DIR/<project>.db`` (default ``~/.cache/huggingface/trackio``; read once when trackio is first
    imported). Project: ``TRACKIO_PROJECT`` or ``t1``; trackio itself honours ``TRACKIO_SPACE_ID`` and
    ``TRACKIO_SERVER_URL`` (remote logging). A resumed run continues the latest trackio run of the same name.
    Trackio reserves some keys (``step``, ``time``...): a ``step`` value equal to the step is left out (it is
    trackio's own axis); trackio stores the others as ``__time`` etc., with a warning.
    Tables are ``trackio.Table``; the summary is logged as scalars at the last logged step.
mlflow
    ``MlflowClient`` only (no fluent API, so no global active run). Tracking URI: ``MLFLOW_TRACKING_URI``,
    else the file store ``out/mlruns`` (``file://`` URI; mlflow-skinny has no SQLAlchemy for ``sqlite:``, and
    mlflow 3 gates the file store behind ``MLFLOW_ALLOW_FILE_STORE``, which is set only while the store is
    opened: to browse it, ``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri out/mlruns``).
    Experiment: ``MLFLOW_EXPERIMENT_NAME`` or ``t1``; run name ``name``, tags ``group`` and ``job_type``. The
    config: params (flattened, dotted keys, values cut to mlflow's length limit, in batches) and the artifact
    ``config.yaml``; metrics in batches (names mlflow rejects are rewritten: other characters become ``_``);
    tables via ``log_table`` as ``<key>/step_NNNNN.json``; the summary as metrics at the last logged step.
    The run id is kept in ``out/.mlflow_run_id``: a resumed run reopens that run. Credentials
    (``MLFLOW_TRACKING_TOKEN``...) are mlflow's own business.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import inspect
import json
import math
import numbers
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml

from t1.config import ConfigError, option, to_dict
from t1.io import atomic_write_text

TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow")
ReportTo = tuple[Literal["tensorboard", "wandb", "trackio", "mlflow"], ...]
LIBRARY = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow"}
CELL_CHARS = 500  # a tensorboard table cell is cut to this many characters
TABLE_ROWS = 100  # rows of one tensorboard table


def report_to_option():
    """The ``report_to`` field of every stage config."""
    return option((), "experiment trackers to send the config, metrics and completion tables to: any of "
                      "tensorboard, wandb, trackio, mlflow (each an optional extra: pip install 't1[NAME]')")


@dataclass(frozen=True)
class Tracking:
    """The tracker fields every stage config has (its first fields): ``report_to`` and ``run_group``."""

    report_to: ReportTo = report_to_option()
    run_group: str = option("", "the trackers' run group (the demo puts its stages in one; empty: none)")


def open_trackers(cfg: Tracking, out: str | Path, job_type: str, resume: bool = False,
                  resume_step: int | None = None) -> Trackers:
    """:class:`Trackers` for a stage's config ``cfg`` (sent as the run's config) writing under ``out``; the run
    is named after ``out``; ``resume_step``: the checkpoint's step a resumed run goes on from. Call on the main
    process only."""
    return Trackers(cfg.report_to, Path(out), to_dict(cfg), name=str(out), group=cfg.run_group or None,
                    job_type=job_type, resume=resume, resume_step=resume_step)


# ------------------------------------------------------------------------------------------------ helpers


def scalars(row: dict) -> dict[str, int | float]:
    """The values a tracker can plot: finite ints, floats and bools (as 0/1); everything else is skipped."""
    out: dict[str, int | float] = {}
    for key, value in row.items():
        if isinstance(value, numbers.Real) and math.isfinite(value):
            out[str(key)] = int(value) if isinstance(value, numbers.Integral) else float(value)
    return out


def flatten(data: dict, sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (an empty mapping stays a value)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, sep, name))
        else:
            out[name] = value
    return out


def _plain(value: Any) -> Any:
    """A table cell every tracker takes: numbers, strings, None; anything else as JSON text."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return json.dumps(value, default=str)


def tabulate(rows: list[dict]) -> tuple[list[str], list[list[Any]]]:
    """Columns in first-seen order and one list of cells per row (a missing key is None)."""
    columns = list(dict.fromkeys(str(k) for row in rows for k in row))
    return columns, [[_plain(row.get(c)) for c in columns] for row in rows]


def markdown_table(columns: list[str], data: list[list[Any]], chars: int = CELL_CHARS,
                   max_rows: int = TABLE_ROWS) -> str:
    """A markdown table (tensorboard's text plugin renders it): cells cut to ``chars``, ``max_rows`` rows."""

    def cell(value: Any) -> str:
        text = "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
        text = text if len(text) <= chars else text[:chars] + " …"
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in data[:max_rows]]
    if len(data) > max_rows:
        lines.append(f"\n({len(data) - max_rows} more rows not shown)")
    return "\n".join(lines)


def config_text(config: dict) -> str:
    try:
        return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:
        return json.dumps(config, indent=2, default=str) + "\n"


def one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= limit else text[:limit] + "…"


def _warn(message: str) -> None:
    print(f"t1: warning: {message}", file=sys.stderr, flush=True)


def _run_id(path: Path, resume: bool, new: str) -> str:
    """The id stored in ``path`` when resuming (and one is there), else ``new``, stored for the next resume."""
    if resume and path.is_file():
        old = path.read_text().strip()
        if old:
            return old
    atomic_write_text(path, new + "\n")
    return new


# ----------------------------------------------------------------------------------------------- backends


class _Backend:
    name = ""

    def log(self, values: dict, step: int) -> None:
        raise NotImplementedError

    def table(self, key: str, columns: list[str], data: list[list[Any]], step: int) -> None:
        raise NotImplementedError

    def summary(self, values: dict, step: int) -> None:
        self.log(values, step)

    def close(self, failed: bool) -> None:
        raise NotImplementedError


class _TensorBoard(_Backend):
    name = "tensorboard"

    def __init__(self, out: Path, config: dict, resume: bool = False, resume_step: int | None = None, **_):
        from torch.utils.tensorboard import SummaryWriter

        earlier = resume and any((out / "tensorboard").glob("events.out.tfevents.*"))  # its config is there
        purge = resume_step + 1 if earlier and resume_step is not None else None  # readers drop events past it
        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=purge)
        if not earlier:
            self.writer.add_text("config", "```yaml\n" + config_text(config) + "```", 0)

    def log(self, values, step):
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def table(self, key, columns, data, step):
        self.writer.add_text(key, markdown_table(columns, data), step)

    def close(self, failed):
        self.writer.flush()
        self.writer.close()


class _Wandb(_Backend):
    name = "wandb"

    def __init__(self, out: Path, config: dict, name: str, group: str | None, job_type: str, resume: bool, **_):
        import wandb

        self.wandb = wandb
        run_id = _run_id(out / ".wandb_id", resume, uuid.uuid4().hex[:12])
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "t1", name=name, group=group, job_type=job_type or None,
            config=config, dir=str(out), id=run_id, resume="allow" if resume else None, reinit="create_new",
            settings=wandb.Settings(console="off", silent=True))

    def log(self, values, step):
        self.run.log(values, step=step)

    def table(self, key, columns, data, step):
        self.run.log({key: self.wandb.Table(columns=columns, data=data, allow_mixed_types=True)}, step=step)

    def summary(self, values, step):
        self.run.summary.update(values)

    def close(self, failed):
        self.run.finish(exit_code=1 if failed else 0)


class _Trackio(_Backend):
    name = "trackio"

    def __init__(self, out: Path, config: dict, name: str, group: str | None, job_type: str, resume: bool, **_):
        import trackio

        self.trackio = trackio
        kwargs = dict(project=os.environ.get("TRACKIO_PROJECT") or "t1", name=name, config=config,
                      resume="allow" if resume else "never")
        if "group" in inspect.signature(trackio.init).parameters:
            kwargs["group"] = group
        # a fresh context: trackio.init would otherwise finish whatever run this context last started
        self.run = contextvars.Context().run(trackio.init, **kwargs)
        self.held = getattr(self.run, "_next_step", 0) - 1 if resume else -1  # the last step its store holds

    def log(self, values, step):
        if step <= self.held:
            return
        if values.get("step") == step:  # trackio reserves "step" (its own axis): a copy of it is left out
            values = {k: v for k, v in values.items() if k != "step"}
        if values:
            self.run.log(values, step=step)

    def table(self, key, columns, data, step):
        if step > self.held:
            self.run.log({key: self.trackio.Table(columns=columns, data=data)}, step=step)

    def close(self, failed):
        self.run.finish()


def mlflow_key(key: str, limit: int = 250) -> str:
    """A metric or param name mlflow accepts: ``/ \\w . - : space`` kept, anything else ``_``, no empty,
    ``.`` or ``..`` path parts, at most ``limit`` characters."""
    text = "".join(c if c.isalnum() or c in "/_.- :" else "_" for c in key)
    parts = [p for p in text.split("/") if p not in ("", ".", "..")]
    return ("/".join(parts) or "_")[:limit].rstrip("/")


@contextlib.contextmanager
def _file_store_allowed(uri: str):
    """mlflow 3 refuses its file store unless ``MLFLOW_ALLOW_FILE_STORE`` is set: set it while opening one."""
    if urlparse(uri).scheme not in ("", "file") or "MLFLOW_ALLOW_FILE_STORE" in os.environ:
        yield
        return
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)


class _Mlflow(_Backend):
    name = "mlflow"

    def __init__(self, out: Path, config: dict, name: str, group: str | None, job_type: str, resume: bool, **_):
        from mlflow.tracking import MlflowClient

        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or (out / "mlruns").resolve().as_uri()
        with _file_store_allowed(self.uri):
            self.client = MlflowClient(tracking_uri=self.uri)
            experiment = self._experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or "t1")
        id_file = out / ".mlflow_run_id"
        self.run_id = self._reopen(id_file) if resume else None
        history = {k: self.client.get_metric_history(self.run_id, k)  # a reopened run's: not sent again
                   for k in (self.client.get_run(self.run_id).data.metrics if self.run_id else ())}
        self.held = {k: max(m.step for m in h) for k, h in history.items() if h}
        if self.run_id is None:
            tags = {k: v for k, v in (("group", group), ("job_type", job_type)) if v}
            self.run_id = self.client.create_run(experiment, run_name=name, tags=tags).info.run_id
            atomic_write_text(id_file, self.run_id + "\n")
        self._params(config)
        self.client.log_text(self.run_id, config_text(config), "config.yaml")

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # another process created it meanwhile
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _reopen(self, id_file: Path) -> str | None:
        run_id = id_file.read_text().strip() if id_file.is_file() else ""
        if not run_id:
            return None
        try:
            self.client.get_run(run_id)
        except Exception as e:
            _warn(f"mlflow: run {run_id} ({id_file}) cannot be reopened at {self.uri} ({one_line(e)}); "
                  "starting a new run")
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def _params(self, config: dict) -> None:
        from mlflow.entities import Param
        from mlflow.utils import validation

        limit = getattr(validation, "MAX_PARAM_VAL_LENGTH", 6000)
        batch = getattr(validation, "MAX_PARAMS_TAGS_PER_BATCH", 100)
        have = self.client.get_run(self.run_id).data.params  # a resumed run keeps the values it started with
        params = {}
        for key, value in flatten(config).items():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            params.setdefault(mlflow_key(key), text[:limit])
        todo = [Param(k, v) for k, v in params.items() if k not in have]
        for i in range(0, len(todo), batch):
            self.client.log_batch(self.run_id, params=todo[i:i + batch])

    def log(self, values, step):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(mlflow_key(k), float(v), now, step) for k, v in values.items()
                   if step > self.held.get(mlflow_key(k), -1)]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def table(self, key, columns, data, step):
        path = f"{mlflow_key(key)}/step_{step:05d}.json"
        if importlib.util.find_spec("pandas") is None:  # log_table needs pandas (not a mlflow-skinny dependency)
            self.client.log_dict(self.run_id, {"columns": columns, "data": data}, path)
        else:
            self.client.log_table(self.run_id, {c: [row[i] for row in data] for i, c in enumerate(columns)}, path)

    def close(self, failed):
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


BACKENDS = {"tensorboard": _TensorBoard, "wandb": _Wandb, "trackio": _Trackio, "mlflow": _Mlflow}


# ----------------------------------------------------------------------------------------------- Trackers


def check_report_to(report_to: Any) -> tuple[str, ...]:
    """The tracker names, in order, once each; an unknown name is a ConfigError."""
    names = (report_to,) if isinstance(report_to, str) else tuple(report_to or ())
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"report_to: unknown tracker {name!r}; use any of {', '.join(TRACKERS)}")
    return tuple(dict.fromkeys(names))


def require(tracker: str) -> None:
    """Import the tracker's library, or raise the one-line ConfigError that says how to install it."""
    try:
        importlib.import_module(LIBRARY[tracker])
    except ImportError:
        raise ConfigError(f"report_to: {tracker} needs its library: pip install 't1[{tracker}]'") from None
    except Exception as e:
        raise ConfigError(f"report_to: {tracker}: its library does not import ({one_line(e)})") from e


class Trackers:
    """Opened by the main process of a run; a no-op when report_to is empty.

    ``with Trackers(cfg.report_to, out, to_dict(cfg), name=out.name, job_type="rl", resume=resume) as t:``
    then ``t.log(row, step)``, ``t.table("completions", rows, step)``, ``t.summary(results)``. Leaving the
    ``with`` block on an exception marks the run failed where the tracker has such a state (wandb, mlflow)."""

    def __init__(self, report_to, out: Path, config: dict, name: str, group: str | None = None,
                 job_type: str = "", resume: bool = False, resume_step: int | None = None):
        names = check_report_to(report_to)
        self.out = Path(out)
        self.backends: list[_Backend] = []
        self.step = 0
        for tracker in names:
            require(tracker)
        if names:
            self.out.mkdir(parents=True, exist_ok=True)
        for tracker in names:
            try:
                self.backends.append(BACKENDS[tracker](self.out, dict(config), name=name, group=group,
                                                       job_type=job_type, resume=resume,
                                                       resume_step=resume_step))
            except Exception as e:
                self._finish(failed=True)
                if isinstance(e, ConfigError):
                    raise
                raise ConfigError(f"report_to: {tracker} could not start: {one_line(e)}") from e
            except BaseException:
                self._finish(failed=True)
                raise

    @property
    def active(self) -> tuple[str, ...]:
        """The trackers still receiving data."""
        return tuple(b.name for b in self.backends)

    def _each(self, method: str, *args) -> None:
        for backend in list(self.backends):
            try:
                getattr(backend, method)(*args)
            except Exception as e:
                self.backends.remove(backend)
                _warn(f"{backend.name}: {method} failed ({one_line(e)}); {backend.name} gets nothing more "
                      "from this run")
                with contextlib.suppress(Exception):
                    backend.close(failed=True)

    def log(self, row: dict, step: int) -> None:
        """Send the row's finite int/float/bool values as scalars at ``step``."""
        self.step = max(self.step, step)
        values = scalars(row)
        if values and self.backends:
            self._each("log", values, step)

    def table(self, key: str, rows: list[dict], step: int) -> None:
        """Send rows of dicts (e.g. ``completions``: prompt, response, reward...) as one table at ``step``."""
        self.step = max(self.step, step)
        if rows and self.backends:
            columns, data = tabulate(rows)
            self._each("table", key, columns, data, step)

    def summary(self, values: dict) -> None:
        """Final numbers (eval results; nested mappings flattened with ``/``)."""
        flat = scalars(flatten(values, "/"))
        if flat and self.backends:
            self._each("summary", flat, self.step)

    def _finish(self, failed: bool) -> None:
        backends, self.backends = self.backends, []
        for backend in backends:
            try:
                backend.close(failed)
            except Exception as e:
                _warn(f"{backend.name}: close failed ({one_line(e)})")

    def close(self) -> None:
        """Flush and finish every backend; safe to call twice."""
        self._finish(failed=False)

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._finish(failed=exc_type is not None)
