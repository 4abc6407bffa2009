"""The ``augment`` command: parse flags, build a RunConfig, call the library, map errors to
exit codes. No logic lives here."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import os
import sys
import traceback
import typing
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from . import __version__
from .config import FIELD_NAMES, HELP, PANEL_OF, RunConfig, _default_text, build_config, load_yaml
from .engines.vgg import Flavour
from .errors import EXIT_OK, EXIT_SIGINT, EXIT_SOFTWARE, EXIT_SOME_FAILED, AugmentError, Stopped
from .io.lock import OutLock, lock_name
from .io.weights import MODELS, OFFLINE_ENV, cached_weights, download_weights, hub_checkpoint_dir
from .outputs.merge import merge as merge_parts
from .outputs.report import write_report
from .pipeline.job import run as run_job
from .pipeline.prepare import human_bytes
from .pipeline.prepare import validate as validate_job
from .pipeline.summary import RunSummary

app = typer.Typer(
    help="Style-based data augmentation: repaint a labeled image dataset with neural style transfer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
weights_app = typer.Typer(help="Where VGG19 and GoogLeNet weights are looked for; `download` fetches them.")
app.add_typer(weights_app, name="weights")


def _to_devnull(stream: Any) -> None:
    """Point a stream whose reader went away at /dev/null, so later writes and the flush at
    exit do not fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no file descriptor (a test's capture)
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


class _Console(Console):
    """Rich's console, except that a reader gone (``2>&1 | head -1``) ends the messages, not
    the run: rich exits 1 there, and the exit code must say how the run went."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        _to_devnull(self.file)


class _ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Plain log lines on stderr; a closed stderr silences them instead of failing each one."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        if isinstance(sys.exc_info()[1], OSError):
            _to_devnull(self.stream)
            return
        super().handleError(record)


err_console = _Console(stderr=True)
out_console = _Console()
F = TypeVar("F", bound=Callable[..., Any])


def _exit_codes(func: F) -> F:
    """AugmentError -> one line and its exit code; any other exception is a bug: traceback, 70."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort):  # both are RuntimeErrors: never swallow them below
            raise
        except AugmentError as err:
            # The message is text, not markup: a path like a[1].png or "augment[ray]" stays whole.
            err_console.print(f"[bold red]augment: error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(err.exit_code) from None
        except Stopped as err:
            err_console.print(f"augment: {err}; finished images kept", highlight=False, markup=False)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("augment: interrupted")
            raise typer.Exit(EXIT_SIGINT) from None
        except Exception:
            err_console.print(traceback.format_exc(), highlight=False, markup=False)
            err_console.print("augment: internal error (a bug; please report it with the traceback above)")
            raise typer.Exit(EXIT_SOFTWARE) from None

    return wrapper  # type: ignore[return-value]


def _setup_logging(level: str, quiet: bool) -> None:
    """Console messages on stderr at the chosen level (plain lines when stderr is not a
    terminal, so pipelines get unwrapped text); the logger itself passes INFO through so
    that OUT/run.log always gets the full record."""
    handler: logging.Handler
    if err_console.is_terminal:
        handler = RichHandler(console=err_console, show_path=False, show_time=False, markup=False)
    else:
        handler = _ConsoleHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("augment: %(levelname)s: %(message)s"))
    handler.set_name("augment-console")
    handler.setLevel(logging.WARNING if quiet else getattr(logging, level.upper()))
    logger = logging.getLogger("augment")
    logger.handlers = [h for h in logger.handlers if h.get_name() != "augment-console"] + [handler]
    logger.setLevel(min(handler.level, logging.INFO))
    logger.propagate = False


def _lock_target(config_file: Path | None, out: str | None, shard: str | None, ray: str | None) -> tuple[Path, str]:
    """OUT and the lock's name from the flags, or from the YAML file if it names them."""
    values: dict[str, Any] = {}
    if config_file:
        try:
            values = load_yaml(config_file)
        except AugmentError:
            values = {}  # reported properly once the config is built
    out = out or values.get("out") or RunConfig.out
    shard, ray = shard or values.get("shard"), ray or values.get("ray")
    return Path(out), lock_name(shard, int(os.environ.get("RANK", 0)), ray=bool(ray))


def _print_json(data: dict[str, Any]) -> None:
    """One line of JSON on stdout: Airflow's BashOperator pushes the last line to XCom, and
    `jq` or a pipeline step reads it whole. A closed or full stdout (``>&-``, ``>/dev/full``) or
    a reader gone (``| head -0``) is said on stderr; the exit code stays the run's."""
    try:
        if sys.stdout is None:  # fd 1 was closed when Python started
            raise OSError("stdout is closed")
        sys.stdout.write(json.dumps(data, default=str) + "\n")
        sys.stdout.flush()
    except (OSError, ValueError) as err:
        _to_devnull(sys.stdout)  # no second error at exit's flush
        err_console.print(f"augment: cannot write the JSON summary to stdout ({err})", highlight=False)


def _failed_summary(out: Path, err: BaseException) -> dict[str, Any]:
    """The --json object of a run that ended early: its exit code and why, and what OUT/run.json
    recorded of it (counts) when the run got that far."""
    code = err.exit_code if isinstance(err, (AugmentError, Stopped)) else EXIT_SIGINT
    summary: dict[str, Any] = {"out": str(out), "exit_code": code, "error": str(err) or type(err).__name__}
    try:
        run_json = json.loads((out / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return summary
    if run_json.get("exit_code") == code:  # this run's record, not an older run's
        summary.update(status=run_json.get("status"), **run_json.get("counts", {}))
    return summary


def _run_with_progress(config: RunConfig) -> RunSummary:
    if config.quiet or not err_console.is_terminal:
        return run_job(config, lock=False)
    # The bar moves every iteration (a running image counts by its share of iterations done),
    # so the rate and the ETA come from the first iterations, not from the first finished batch.
    columns = (
        TextColumn("[bold]stylizing"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, console=err_console, transient=False) as bar:
        task_id = bar.add_task("run", total=None, rate="")

        def on_progress(done: float, total: int) -> None:
            speed = bar.tasks[0].speed
            bar.update(task_id, completed=done, total=total, rate=f"{speed * 60:.1f}/min" if speed else "")

        return run_job(config, progress=on_progress, lock=False)


Opt = typer.Option
# validate takes the options that decide what a job plans, not how it runs.
# run and validate take the same options, so a pipeline validates with the command line it runs.
JOB_OPTIONS = tuple(name for name in FIELD_NAMES if name != "manifest")


def _cli_type(hint: Any) -> Any:
    """How a RunConfig field is typed on the command line: numbers, text and enums as they
    are; lists and ranges as text that RunConfig parses ("0.5,1", "1e3:1e4")."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if len(args) == 1 else hint
    if base in (bool, int, float, str) or (isinstance(base, type) and issubclass(base, Enum)):
        return base
    return str


# What --help shows after an option that takes a value; by type where not named here.
METAVARS = {
    "styles": "PATH", "out": "PATH", "weights": "PATH", "dream_weights": "PATH",
    "alpha": "X|LO:HI", "blend": "X|LO:HI", "style_weight": "X|LO:HI",
    "style_layers": "LAYERS", "dream_layers": "LAYERS", "content_layer": "LAYER", "splits": "NAMES",
    "scales": "X,Y,..", "style_layer_weights": "X,Y,..", "format": "FORMAT", "device": "DEVICE",
    "devices": "DEVICES", "shard": "I/N", "ray": "ADDRESS", "max_failures": "N|FRAC", "log_level": "LEVEL",
}  # fmt: skip
TYPE_METAVARS = {int: "N", float: "X", str: "TEXT"}


def _metavar(name: str, cli_type: Any) -> str | None:
    if name in METAVARS:
        return METAVARS[name]
    if isinstance(cli_type, type) and issubclass(cli_type, Enum):  # each help text names the choices
        choices = "|".join(str(member.value) for member in cli_type)
        return choices if len(choices) <= 12 else "MODE"  # long ones would squeeze the help column
    return TYPE_METAVARS.get(cli_type)


def _config_option(f: dataclasses.Field[Any], hint: Any) -> inspect.Parameter:
    """One RunConfig field as a typer option: its help, panel and short flag from the field's
    metadata. Every option defaults to None, meaning "not given" (YAML or the default applies),
    so the default --help shows is the field's."""
    cli_type = _cli_type(hint)
    flag = "--" + f.name.replace("_", "-")
    if cli_type is bool:
        flag = f"{flag}/--no-{flag[2:]}" if f.default is True else flag
    names = [flag, *([f.metadata["short"]] if "short" in f.metadata else [])]
    # The default goes into the help text (escaped from rich's markup): typer's own display of
    # a default it does not hold would put it in parentheses.
    shown = "" if f.default is None or cli_type is bool else f" \\[default: {_default_text(f.default)}]"
    option = Opt(
        *names, help=f.metadata["help"] + shown, rich_help_panel=PANEL_OF[f.name], show_default=False,
        metavar="" if cli_type is bool else _metavar(f.name, cli_type),
    )  # fmt: skip
    annotation = Annotated[cli_type | None, option]  # type: ignore[valid-type]
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def _with_config_options(names: tuple[str, ...]) -> Callable[[F], F]:
    """Give a command one option per named RunConfig field, after its own parameters; the
    command receives them as keyword arguments (None where not given)."""
    hints = typing.get_type_hints(RunConfig)
    options = [_config_option(f, hints[f.name]) for f in dataclasses.fields(RunConfig) if f.name in names]

    def decorate(func: F) -> F:
        own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.kind is not p.VAR_KEYWORD]
        keyword = [p.replace(kind=p.KEYWORD_ONLY) for p in own if p.kind is p.KEYWORD_ONLY]
        positional = [p for p in own if p.kind is not p.KEYWORD_ONLY]
        func.__signature__ = inspect.Signature([*positional, *options, *keyword])  # type: ignore[attr-defined]
        return func

    return decorate


ManifestArg = Annotated[Path, typer.Argument(help=HELP["manifest"], metavar="MANIFEST", show_default=False)]
ConfigOpt = Annotated[
    Path | None, Opt("--config", "-c", metavar="PATH", help="YAML file with any of these options; flags override it.")
]
RunJsonOpt = Annotated[bool, Opt("--json", metavar="", help="Also print the run summary as JSON on stdout.")]
ValidateJsonOpt = Annotated[bool, Opt("--json", metavar="", help="Print the findings as one line of JSON.")]


def _job_command(func: F) -> F:
    """A command over a whole job (run, validate): MANIFEST, --config and every job option."""
    return app.command()(_exit_codes(_with_config_options(JOB_OPTIONS)(func)))  # type: ignore[return-value]


@_job_command
def run(manifest: ManifestArg, config: ConfigOpt = None, *, as_json: RunJsonOpt = False, **flags: Any) -> None:
    """Stylize every image of MANIFEST (a CSV or an ImageFolder directory) with styles from --styles."""
    flags["manifest"] = str(manifest)
    out, shard = flags.get("out"), flags.get("shard")
    target = _lock_target(config, out, shard, flags.get("ray"))
    try:
        # The lock comes first, before the other options are checked: a second run on a busy
        # OUT exits 75 at once, whatever else it says.
        with OutLock(*target):
            cfg = build_config(config, **flags)
            _setup_logging(cfg.log_level, cfg.quiet)
            summary = _run_with_progress(cfg)
    except (AugmentError, Stopped, KeyboardInterrupt) as err:
        if as_json:  # pipelines read stdout on every exit, not only on success
            _print_json(_failed_summary(target[0], err))
        raise
    if as_json:
        _print_json(summary.as_dict())
    if not cfg.quiet:
        err_console.print(_summary_line(summary), highlight=False, soft_wrap=True)
    if summary.incomplete:  # said even with -q: the exit code alone does not say what is missing
        err_console.print(f"augment: not done: {summary.incomplete}", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(summary.exit_code)


def _summary_line(summary: RunSummary) -> str:
    """What the run did, each kind counted apart: "3 images written, 15 up to date, 1 stale
    removed, 2 rows failed (see ...): 18 images in aug/ (4.2 s)"."""
    parts = [f"{summary.written} images written"]
    parts += [f"{summary.skipped} up to date"] if summary.skipped else []
    parts += [f"{summary.removed} stale removed"] if summary.removed else []
    if summary.failed_rows:
        parts.append(f"{summary.failed_rows} rows failed (see {Path(summary.out) / 'failures.csv'})")
    return f"{', '.join(parts)}: {summary.images} images in {summary.out} ({summary.seconds:.1f} s)"


@_job_command
def validate(
    manifest: ManifestArg, config: ConfigOpt = None, *, as_json: ValidateJsonOpt = False, **flags: Any
) -> None:
    """Check a job without running it: what run would refuse (options, OUT, weights), rows,
    styles, tasks per class and the disk it will need."""
    flags["manifest"] = str(manifest)
    try:
        cfg = build_config(config, **flags)
        report = validate_job(cfg)
    except AugmentError as err:
        if as_json:
            _print_json({"exit_code": err.exit_code, "error": str(err)})
        raise
    prepared = report.prepared
    code = EXIT_SOME_FAILED if prepared.failures else EXIT_OK
    if as_json:
        _print_json({
            "exit_code": code, "tasks": report.tasks, "usable_rows": len(prepared.rows),
            "failed_rows": len(prepared.failures), "styles": len(prepared.styles),
            "classes": report.class_counts, "estimated_bytes": report.estimated_bytes, "free_bytes": report.free_bytes,
            "warnings": report.warnings, "weights": report.weights,
            "left_out": prepared.plan.left_out if prepared.plan else 0,
            "failures": [{"row": f.row, "reason": f.reason, "message": f.message} for f in prepared.failures],
        })  # fmt: skip
        raise typer.Exit(code)
    lines = _validation_lines(cfg, report)
    if out_console.is_terminal:
        table = Table("class", "images out", title=f"{report.tasks} tasks")
        for label, count in report.class_counts.items():
            table.add_row(label, str(count))
        out_console.print(table)
    else:  # piped: plain lines, never wrapped at 80 columns
        lines = [f"{report.tasks} tasks", *(f"  {k}: {v} images out" for k, v in report.class_counts.items()),
                 *lines]  # fmt: skip
    for line in lines:
        out_console.print(line, highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(code)


def _validation_lines(cfg: RunConfig, report: Any) -> list[str]:
    prepared = report.prepared
    lines = [
        f"{len(prepared.rows)} usable rows, {len(prepared.failures)} failed, {len(prepared.styles)} styles; "
        f"about {human_bytes(report.estimated_bytes)} of output in {cfg.out}",
        *(f"weights {line}" for line in report.weights),
        *(f"warning: {line}" for line in report.warnings),
    ]
    if prepared.plan and prepared.plan.left_out:
        lines.append(f"{prepared.plan.left_out} rows of splits other than {','.join(cfg.splits)} left out "
                     "(--include-originals copies them)")  # fmt: skip
    lines += [f"  {failure.reason}: {failure.message}" for failure in prepared.failures[:20]]
    if len(prepared.failures) > 20:
        lines.append(f"  ... and {len(prepared.failures) - 20} more (--json lists them all)")
    return lines


@app.command()
@_exit_codes
def merge(
    outs: Annotated[
        list[Path],
        typer.Argument(metavar="OUT...", help="Output folders holding parts; the first receives the dataset."),
    ],
) -> None:
    """Join the parts of a sharded job (one OUT or several) into manifest.csv, failures.csv, run.json."""
    _setup_logging("info", False)
    run_json = merge_parts(outs)
    counts = run_json["counts"]
    err_console.print(f"{counts['written']} images, {counts['failed_rows']} failed rows in {outs[0]}", highlight=False)
    if run_json["status"] == "incomplete":
        reason = run_json["exit_reason"]
        err_console.print(f"augment: not done: {reason}", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(run_json["exit_code"])


@app.command()
@_exit_codes
def report(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="An augment output folder.")],
    sample: Annotated[int, Opt(help="Sources shown in the contact sheet.")] = 12,
    seed: Annotated[int, Opt(help="Which sources the contact sheet shows.")] = 0,
) -> None:
    """Write OUT/report.html: counts per class and style, a contact sheet, failures, timings."""
    path = write_report(out, sample=sample, seed=seed)
    err_console.print(f"report written to {path}", highlight=False)


@weights_app.callback(invoke_without_command=True)
@_exit_codes
def weights_info(ctx: typer.Context) -> None:
    """Show where weights are looked for and what is cached."""
    if ctx.invoked_subcommand:
        return
    for model, known in MODELS.items():
        path = cached_weights(model)
        state = f"cached ({path.stat().st_size / 1e6:.0f} MB)" if path.is_file() else "not cached"
        out_console.print(f"{known.name} ({known.flag} PATH instead): {path} - {state}", highlight=False)
    out_console.print(f"hub cache folder: {hub_checkpoint_dir()} (set TORCH_HOME to move it)", highlight=False)
    out_console.print("order: --weights PATH, then the hub cache, then a download", highlight=False)
    out_console.print(f"downloads: {'off' if _offline() else 'on'} ({OFFLINE_ENV}=1 turns them off)", highlight=False)


def _offline() -> bool:
    import os

    return os.environ.get(OFFLINE_ENV, "") not in ("", "0")


@weights_app.command("download")
@_exit_codes
def weights_download(
    flavour: Annotated[
        Flavour,
        Opt(
            help="torchvision: its ImageNet VGG19 and GoogLeNet; caffe: the original Caffe VGG19, converted "
            "(used by --weights-flavour caffe)."
        ),
    ] = Flavour.TORCHVISION,
) -> None:
    """Download ImageNet weights into the hub cache (hash checked)."""
    for model in ("vgg19_caffe",) if flavour is Flavour.CAFFE else ("vgg19", "googlenet"):
        path = cached_weights(model)
        if path.is_file():
            out_console.print(f"already cached: {path}", highlight=False)
        else:
            out_console.print(f"saved {download_weights(model, progress=True)}", highlight=False)


def version_callback(value: bool) -> None:
    if value:
        out_console.print(f"augment {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, Opt("--version", callback=version_callback, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """augment: more, and more varied, training images by neural style transfer."""


# click's base error: typer 0.29 vendors click, earlier versions use click itself.
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main() -> None:
    if "--json" not in sys.argv[1:]:
        app()
        return
    # --json promises a JSON object on stdout on every exit, and click reports a bad option
    # (--size abc, an unknown flag) before any command runs: catch it here.
    try:
        code = app(standalone_mode=False)
    except _CLICK_ERROR as err:
        err.show()
        _print_json({"exit_code": err.exit_code, "error": " ".join(err.format_message().split())})
        sys.exit(err.exit_code)
    except typer.Abort:
        sys.exit(EXIT_SIGINT)
    sys.exit(code if isinstance(code, int) else EXIT_OK)
