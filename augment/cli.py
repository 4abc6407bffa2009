"""The ``augment`` command: parse flags, build a RunConfig, call the library, map errors to
exit codes. No logic lives here."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__
from .config import HELP, Engine, RunConfig, WeightsFlavour, build_config, load_yaml
from .engines.gatys import Init, Optimizer
from .engines.precision import Precision
from .engines.vgg import Pooling
from .errors import EXIT_OK, EXIT_SIGINT, EXIT_SOFTWARE, EXIT_SOME_FAILED, AugmentError, Stopped
from .lock import OutLock, lock_name
from .merge import merge as merge_parts
from .parallel import run as run_job
from .plan import Assignment
from .prepare import validate as validate_job
from .report import write_report
from .runner import RunSummary
from .weights import MODELS, OFFLINE_ENV, cached_weights, download_weights, hub_checkpoint_dir

app = typer.Typer(
    help="Style-based data augmentation: repaint a labeled image dataset with neural style transfer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
weights_app = typer.Typer(help="Where VGG19 and GoogLeNet weights are looked for; `download` fetches them.")
app.add_typer(weights_app, name="weights")
err_console = Console(stderr=True)
out_console = Console()
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
            err_console.print(f"[bold red]augment: error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(err.exit_code) from None
        except Stopped as err:
            err_console.print(f"augment: {err}; finished images kept")
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
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("augment: %(levelname)s: %(message)s"))
    handler.set_name("augment-console")
    handler.setLevel(logging.WARNING if quiet else getattr(logging, level.upper()))
    logger = logging.getLogger("augment")
    logger.handlers = [h for h in logger.handlers if h.get_name() != "augment-console"] + [handler]
    logger.setLevel(min(handler.level, logging.INFO))
    logger.propagate = False


def _lock_target(config_file: Path | None, out: str | None, shard: str | None) -> tuple[Path, str]:
    """OUT and the lock's name from the flags, or from the YAML file if it names them."""
    values: dict[str, Any] = {}
    if config_file:
        try:
            values = load_yaml(config_file)
        except AugmentError:
            values = {}  # reported properly once the config is built
    out = out or values.get("out") or RunConfig.out
    shard = shard or values.get("shard")
    return Path(out), lock_name(shard, int(os.environ.get("RANK", 0)))


def _run_with_progress(config: RunConfig) -> RunSummary:
    if config.quiet or not err_console.is_terminal:
        return run_job(config, lock=False)
    columns = (
        TextColumn("[bold]stylizing"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, console=err_console, transient=False) as bar:
        task_id = bar.add_task("run", total=None, rate="")

        def on_progress(done: int, total: int) -> None:
            speed = bar.tasks[0].speed
            bar.update(task_id, completed=done, total=total, rate=f"{speed * 60:.1f} img/min" if speed else "")

        return run_job(config, progress=on_progress, lock=False)


Opt = typer.Option


@app.command()
@_exit_codes
def run(
    manifest: Annotated[Path, typer.Argument(help=HELP["manifest"])],
    styles: Annotated[str | None, Opt("--styles", "-s", help=HELP["styles"])] = None,
    per_image: Annotated[int | None, Opt("--per-image", "-k", help=HELP["per_image"])] = None,
    out: Annotated[str | None, Opt("--out", "-o", help=HELP["out"])] = None,
    config: Annotated[
        Path | None, Opt("--config", "-c", help="YAML file with any of these options; flags override it.")
    ] = None,
    include_originals: Annotated[bool | None, Opt("--include-originals", help=HELP["include_originals"])] = None,
    splits: Annotated[str | None, Opt(help=HELP["splits"] + " Comma-separated.")] = None,
    balance: Annotated[bool | None, Opt("--balance", help=HELP["balance"])] = None,
    target_per_class: Annotated[int | None, Opt(help=HELP["target_per_class"])] = None,
    style_assignment: Annotated[Assignment | None, Opt(help=HELP["style_assignment"])] = None,
    alpha: Annotated[str | None, Opt(help=HELP["alpha"])] = None,
    blend: Annotated[str | None, Opt(help=HELP["blend"])] = None,
    preserve_color: Annotated[bool | None, Opt("--preserve-color", help=HELP["preserve_color"])] = None,
    style_scale: Annotated[float | None, Opt(help=HELP["style_scale"])] = None,
    size: Annotated[int | None, Opt(help=HELP["size"])] = None,
    iterations: Annotated[int | None, Opt(help=HELP["iterations"])] = None,
    content_weight: Annotated[float | None, Opt(help=HELP["content_weight"])] = None,
    style_weight: Annotated[str | None, Opt(help=HELP["style_weight"])] = None,
    tv_weight: Annotated[float | None, Opt(help=HELP["tv_weight"])] = None,
    tv_beta: Annotated[float | None, Opt(help=HELP["tv_beta"])] = None,
    content_layer: Annotated[str | None, Opt(help=HELP["content_layer"])] = None,
    style_layers: Annotated[str | None, Opt(help=HELP["style_layers"] + " Comma-separated.")] = None,
    style_layer_weights: Annotated[str | None, Opt(help=HELP["style_layer_weights"])] = None,
    normalize_gradients: Annotated[bool | None, Opt("--normalize-gradients", help=HELP["normalize_gradients"])] = None,
    pooling: Annotated[Pooling | None, Opt(help=HELP["pooling"])] = None,
    optimizer: Annotated[Optimizer | None, Opt(help=HELP["optimizer"])] = None,
    learning_rate: Annotated[float | None, Opt(help=HELP["learning_rate"])] = None,
    init: Annotated[Init | None, Opt(help=HELP["init"])] = None,
    seed: Annotated[int | None, Opt(help=HELP["seed"])] = None,
    tol: Annotated[float | None, Opt(help=HELP["tol"])] = None,
    scales: Annotated[str | None, Opt(help=HELP["scales"])] = None,
    batch_size: Annotated[int | None, Opt(help=HELP["batch_size"])] = None,
    precision: Annotated[Precision | None, Opt(help=HELP["precision"])] = None,
    engine: Annotated[Engine | None, Opt(help=HELP["engine"])] = None,
    dream_layers: Annotated[str | None, Opt(help=HELP["dream_layers"] + " Comma-separated.")] = None,
    octaves: Annotated[int | None, Opt(help=HELP["octaves"])] = None,
    octave_scale: Annotated[float | None, Opt(help=HELP["octave_scale"])] = None,
    dream_iterations: Annotated[int | None, Opt(help=HELP["dream_iterations"])] = None,
    dream_step: Annotated[float | None, Opt(help=HELP["dream_step"])] = None,
    jitter: Annotated[int | None, Opt(help=HELP["jitter"])] = None,
    dream_blend: Annotated[float | None, Opt(help=HELP["dream_blend"])] = None,
    guide: Annotated[bool | None, Opt("--guide", help=HELP["guide"])] = None,
    dream_weights: Annotated[str | None, Opt(help=HELP["dream_weights"])] = None,
    weights: Annotated[str | None, Opt(help=HELP["weights"])] = None,
    weights_flavour: Annotated[WeightsFlavour | None, Opt(help=HELP["weights_flavour"])] = None,
    download: Annotated[bool | None, Opt("--download/--no-download", help=HELP["download"])] = None,
    device: Annotated[str | None, Opt(help=HELP["device"])] = None,
    workers: Annotated[int | None, Opt(help=HELP["workers"])] = None,
    devices: Annotated[str | None, Opt(help=HELP["devices"])] = None,
    shard: Annotated[str | None, Opt(help=HELP["shard"])] = None,
    format: Annotated[str | None, Opt("--format", help=HELP["format"])] = None,
    webdataset: Annotated[bool | None, Opt("--webdataset", help=HELP["webdataset"])] = None,
    quality: Annotated[int | None, Opt(help=HELP["quality"])] = None,
    max_pixels: Annotated[int | None, Opt(help=HELP["max_pixels"])] = None,
    limit: Annotated[int | None, Opt(help=HELP["limit"])] = None,
    keep_stale: Annotated[bool | None, Opt("--keep-stale", help=HELP["keep_stale"])] = None,
    max_failures: Annotated[str | None, Opt(help=HELP["max_failures"])] = None,
    max_seconds: Annotated[float | None, Opt(help=HELP["max_seconds"])] = None,
    quiet: Annotated[bool | None, Opt("--quiet", "-q", help=HELP["quiet"])] = None,
    log_level: Annotated[str | None, Opt(help=HELP["log_level"])] = None,
    as_json: Annotated[bool, Opt("--json", help="Also print the run summary as JSON on stdout.")] = False,
) -> None:
    """Stylize every image of MANIFEST (a CSV or an ImageFolder directory) with styles from --styles."""
    flags = {k: v for k, v in locals().items() if k not in ("config", "as_json")}
    flags["manifest"] = str(manifest)
    # The lock comes first, before the other options are checked: a second run on a busy OUT
    # exits 75 at once, whatever else it says.
    with OutLock(*_lock_target(config, out, shard)):
        cfg = build_config(config, **flags)
        _setup_logging(cfg.log_level, cfg.quiet)
        summary = _run_with_progress(cfg)
    if as_json:
        out_console.print_json(json.dumps(summary.as_dict()))
    if not cfg.quiet:
        err_console.print(
            f"{summary.written} images written to {summary.out}, {summary.failed_rows} rows failed"
            f" (see {Path(summary.out) / 'failures.csv'}), {summary.seconds:.1f} s"
            if summary.failed_rows
            else f"{summary.written} images written to {summary.out} in {summary.seconds:.1f} s",
            highlight=False,
        )
    raise typer.Exit(summary.exit_code)


@app.command()
@_exit_codes
def validate(
    manifest: Annotated[Path, typer.Argument(help=HELP["manifest"])],
    styles: Annotated[str | None, Opt("--styles", "-s", help=HELP["styles"])] = None,
    per_image: Annotated[int | None, Opt("--per-image", "-k", help=HELP["per_image"])] = None,
    config: Annotated[Path | None, Opt("--config", "-c", help="YAML file with run options.")] = None,
    include_originals: Annotated[bool | None, Opt("--include-originals", help=HELP["include_originals"])] = None,
    splits: Annotated[str | None, Opt(help=HELP["splits"] + " Comma-separated.")] = None,
    balance: Annotated[bool | None, Opt("--balance", help=HELP["balance"])] = None,
    target_per_class: Annotated[int | None, Opt(help=HELP["target_per_class"])] = None,
    style_assignment: Annotated[Assignment | None, Opt(help=HELP["style_assignment"])] = None,
    size: Annotated[int | None, Opt(help=HELP["size"])] = None,
    format: Annotated[str | None, Opt("--format", help=HELP["format"])] = None,
    limit: Annotated[int | None, Opt(help=HELP["limit"])] = None,
    engine: Annotated[Engine | None, Opt(help=HELP["engine"])] = None,
    guide: Annotated[bool | None, Opt("--guide", help=HELP["guide"])] = None,
) -> None:
    """Check a job without running it: rows, styles, tasks per class and the disk it will need."""
    flags = {k: v for k, v in locals().items() if k != "config"}
    flags["manifest"] = str(manifest)
    cfg = build_config(config, **flags)
    report = validate_job(cfg)
    prepared = report.prepared
    table = Table("class", "images out", title=f"{len(prepared.tasks)} tasks")
    for label, count in report.class_counts.items():
        table.add_row(label, str(count))
    out_console.print(table)
    out_console.print(
        f"{len(prepared.rows)} usable rows, {len(prepared.failures)} failed, {len(prepared.styles)} styles; "
        f"about {report.estimated_bytes / 1e6:.1f} MB of output",
        highlight=False,
    )
    if prepared.plan and prepared.plan.left_out:
        out_console.print(
            f"{prepared.plan.left_out} rows of splits other than {','.join(cfg.splits)} left out "
            "(--include-originals copies them)",
            highlight=False,
        )
    for failure in prepared.failures[:20]:
        out_console.print(f"  {failure.reason}: {failure.message}", highlight=False, markup=False)
    if len(prepared.failures) > 20:
        out_console.print(f"  ... and {len(prepared.failures) - 20} more")
    raise typer.Exit(EXIT_SOME_FAILED if prepared.failures else EXIT_OK)


@app.command()
@_exit_codes
def merge(
    outs: Annotated[list[Path], typer.Argument(help="Output folders holding parts; the first receives the dataset.")],
) -> None:
    """Join the parts of a sharded job (one OUT or several) into manifest.csv, failures.csv, run.json."""
    _setup_logging("info", False)
    run_json = merge_parts(outs)
    counts = run_json["counts"]
    err_console.print(f"{counts['written']} images, {counts['failed_rows']} failed rows in {outs[0]}", highlight=False)
    raise typer.Exit(run_json["exit_code"])


@app.command()
@_exit_codes
def report(
    out: Annotated[Path, typer.Argument(help="An augment output folder.")],
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
    for model, (name, flag) in MODELS.items():
        path = cached_weights(model)
        state = f"cached ({path.stat().st_size / 1e6:.0f} MB)" if path.is_file() else "not cached"
        out_console.print(f"{name} (torchvision ImageNet, {flag}): {path} - {state}", highlight=False)
    out_console.print(f"hub cache folder: {hub_checkpoint_dir()} (set TORCH_HOME to move it)", highlight=False)
    out_console.print("order: --weights PATH, then the hub cache, then a download", highlight=False)
    out_console.print(f"downloads: {'off' if _offline() else 'on'} ({OFFLINE_ENV}=1 turns them off)", highlight=False)


def _offline() -> bool:
    import os

    return os.environ.get(OFFLINE_ENV, "") not in ("", "0")


@weights_app.command("download")
@_exit_codes
def weights_download() -> None:
    """Download torchvision's ImageNet VGG19 and GoogLeNet into the hub cache (hash checked)."""
    for model in MODELS:
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


def main() -> None:
    app()
