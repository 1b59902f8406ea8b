"""The ``edgederm`` command line (typer).

Every user-caused error is an ``EdgedermError``: ``main`` prints it as one line and exits with
its code (2 for bad input, 1 for a failed check) instead of a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from .errors import EdgedermError
from .provenance import record_command

log = logging.getLogger("edgederm")

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Dermoscopy classifiers on edge devices: train, export, gate, bench.")
data_app = typer.Typer(no_args_is_help=True, help="Read, inspect and split data sets.")
card_app = typer.Typer(no_args_is_help=True, help="Show and validate artifact cards.")
app.add_typer(data_app, name="data")
app.add_typer(card_app, name="card")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname).1s %(name)s: %(message)s" if verbose else "%(message)s",
    )
    for noisy in ("PIL", "matplotlib", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        # Libraries that log INFO straight to the root logger (ONNX Runtime's quantizer prints a
        # line per rescaled weight: hundreds per export) are shown only with -v.
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda r: r.name != "root" or r.levelno >= logging.WARNING)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    max_pixels: Optional[int] = typer.Option(
        None, "--max-pixels", min=1, metavar="N",
        help="Refuse images with more than N pixels, from their header (default 50,000,000 or $EDGEDERM_MAX_PIXELS).",
    ),
) -> None:
    _setup_logging(verbose)
    if max_pixels is not None:
        # Through the environment (edgederm.data.images.MAX_PIXELS_ENV), so DataLoader workers
        # and the bench's measuring subprocess decode under the same limit.
        os.environ["EDGEDERM_MAX_PIXELS"] = str(max_pixels)


def _parse_opts(opts: Optional[List[str]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in opts or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EdgedermError(f"--opt takes key=value, got {item!r}")
        out[key] = value.split(",") if key == "classes" else value
    return out


def _read(path: Path, fmt: str, taxonomy: Optional[str], opts: Optional[List[str]] = None, strict: bool = False):  # noqa: ANN202
    from .data.readers import read_dataset

    # The reader logs one line with the image count and how many items it skipped.
    return read_dataset(path, fmt, taxonomy=taxonomy, strict=strict, **_parse_opts(opts))


# -- data -----------------------------------------------------------------------------------------
FORMAT_OPT = typer.Option("auto", "--format", "-f", help="Data set layout (see `edgederm data formats`).")
TAX_OPT = typer.Option(None, "--taxonomy", "-t", help="Map labels into this taxonomy (ham7, isic2019_8, binary, ...).")
OPTS_OPT = typer.Option(None, "--opt", help="Reader option key=value, repeatable (e.g. split=test for the ISIC 2019 test set).")
STRICT_OPT = typer.Option(False, "--strict", help="Fail on missing image files instead of skipping them.")


@data_app.command("formats")
def data_formats() -> None:
    """List the data-set layouts edgederm reads."""
    from .data.readers import list_readers

    for name, doc in list_readers():
        typer.echo(f"{name:12s} {doc}")


@data_app.command("inspect")
def data_inspect(
    path: Path,
    fmt: str = FORMAT_OPT,
    taxonomy: Optional[str] = TAX_OPT,
    opt: Optional[List[str]] = OPTS_OPT,
    strict: bool = STRICT_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Class counts, lesion counts and image-size statistics of a data set."""
    from .data.inspect import format_inspection, inspect_dataset

    index = _read(path, fmt, taxonomy, opt, strict)
    result = inspect_dataset(index)
    typer.echo(json.dumps(result, indent=2, default=str) if as_json else format_inspection(result))


@data_app.command("split")
def data_split(
    path: Path,
    out: Path = typer.Option(..., "--out", "-o", help="Split CSV to write."),
    fmt: str = FORMAT_OPT,
    taxonomy: Optional[str] = TAX_OPT,
    opt: Optional[List[str]] = OPTS_OPT,
    strict: bool = STRICT_OPT,
    val: float = typer.Option(0.15, help="Validation fraction."),
    test: float = typer.Option(0.15, help="Test fraction."),
    kfold: int = typer.Option(0, help="Write K lesion-grouped folds instead (test part held out)."),
    seed: int = typer.Option(42),
) -> None:
    """Write a lesion-grouped, stratified train/val/test (or k-fold) split CSV."""
    from collections import Counter

    from .data.leakage import check_leakage
    from .data.splits import make_kfold, make_splits, write_split_csv

    index = _read(path, fmt, taxonomy, opt, strict)
    if kfold:
        assignment = make_kfold(index, k=kfold, seed=seed, test=test)
    else:
        assignment = make_splits(index, val=val, test=test, seed=seed)
    write_split_csv(out, index, assignment, seed=seed)
    counts = Counter(str(v) for v in assignment.values())
    typer.echo(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if not kfold:
        typer.echo(check_leakage(index, assignment, near_duplicates=False).format())


@data_app.command("check-leakage")
def data_check_leakage(
    path: Path,
    split: Path = typer.Option(..., "--split", "-s", help="Split CSV (from `edgederm data split`)."),
    fmt: str = FORMAT_OPT,
    taxonomy: Optional[str] = TAX_OPT,
    opt: Optional[List[str]] = OPTS_OPT,
    strict: bool = STRICT_OPT,
    near_duplicates: Optional[bool] = typer.Option(None, "--near-duplicates/--no-near-duplicates", help="Perceptual-hash search (default: when lesion ids are missing)."),
    max_distance: int = typer.Option(4, help="Hamming distance of 64-bit pHashes counted as a near duplicate."),
) -> None:
    """Report lesions (or patients) and near-duplicate images that cross splits; exit 1 if any."""
    from .data.leakage import check_leakage
    from .data.splits import read_split_csv

    index = _read(path, fmt, taxonomy, opt, strict)
    assignment = read_split_csv(split, index)
    report = check_leakage(index, assignment, near_duplicates="auto" if near_duplicates is None else near_duplicates, max_distance=max_distance)
    typer.echo(report.format())
    if not report.ok:
        raise typer.Exit(1)


@data_app.command("synth")
def data_synth(
    out: Path,
    lesions: int = typer.Option(700, help="Number of synthetic lesions."),
    size: int = typer.Option(128, help="Image side in pixels."),
    seed: int = typer.Option(0),
    overwrite: bool = typer.Option(False),
) -> None:
    """Write the embedded synthetic dermoscopy data set (HAM10000 layout)."""
    from .data.synthetic import generate

    generate(out, n_lesions=lesions, size=size, seed=seed, overwrite=overwrite)
    typer.echo(f"wrote {out}")


# -- models, training ---------------------------------------------------------------------------
@app.command("models")
def models_cmd() -> None:
    """List the registered model architectures."""
    from .models import get_model_spec, list_models

    for name in list_models():
        s = get_model_spec(name)
        typer.echo(f"{name:24s} {s.input_size:4d}px  cam={s.target_layer:16s} {s.description}")


@app.command("train")
def train_cmd(
    recipe: Path,
    resume: bool = typer.Option(False, help="Continue an interrupted run from its last epoch."),
    out: Optional[str] = typer.Option(None, help="Override the recipe's output folder."),
    name: Optional[str] = typer.Option(None, help="Override the run name."),
    data: Optional[str] = typer.Option(None, help="Override the recipe's data path."),
    seeds: Optional[str] = typer.Option(None, help="Comma-separated seeds (e.g. 42,7,123): one run each + mean ± sd."),
) -> None:
    """Train a recipe (YAML) into a run folder with checkpoint, card and metrics."""
    from .train import load_recipe, train

    cfg = load_recipe(recipe, out=out, name=name, data=data)
    if seeds:
        import dataclasses

        try:
            cfg = dataclasses.replace(cfg, seeds=[int(s) for s in seeds.split(",") if s.strip()])
        except ValueError:
            raise EdgedermError(f"--seeds takes integers separated by commas, got {seeds!r}") from None
    record_command()
    run_dir = train(cfg, resume=resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun only rank 0 scores the ensemble and reports
    if (run_dir / "variants.md").exists():
        typer.echo(f"\nvariants: {run_dir}/*  (test split, 95% CIs; paired bootstrap vs the first)")
        typer.echo((run_dir / "variants.md").read_text())
        return
    if (run_dir / "seeds.md").exists():
        typer.echo(f"\nruns: {run_dir}/seed-*  (mean ± sd over seeds, test split)")
        typer.echo((run_dir / "seeds.md").read_text())
        return
    metrics = json.loads((run_dir / "metrics.json").read_text())
    from .metrics import format_metrics_table

    typer.echo(f"\nrun: {run_dir}  ({metrics['train_seconds']:.0f} s)")
    typer.echo(f"test split, n={metrics['test']['n']}, lesion-level bootstrap 95% CIs:")
    typer.echo(format_metrics_table(metrics["test"]["ci"]))
    if "clinical" in metrics:
        from .thresholds import format_clinical_table

        typer.echo("clinical operating points on the test split (multi-class decision rule, thresholds from validation):")
        typer.echo(format_clinical_table(metrics["clinical"]["test"]))


@app.command("run")
def run_cmd(
    recipe: Path,
    out: Optional[str] = typer.Option(None, help="Override the recipe's output folder."),
    name: Optional[str] = typer.Option(None, help="Override the run name."),
    data: Optional[str] = typer.Option(None, help="Override the recipe's data path."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for every stage (default: the recipe's / all cores)."),
    until: Optional[str] = typer.Option(None, help="Stop after this stage: train, distill, export, evaluate, bench, report."),
    force: bool = typer.Option(False, "--force", help="Retrain when the recipe or data changed (the old run is moved aside, not deleted)."),
) -> None:
    """The main job: train → distil → export every target → gate → evaluate → bench → one report.

    Re-running skips the stages whose inputs (content hashes) have not changed.
    """
    from .pipeline import run_pipeline

    record_command()
    md = run_pipeline(recipe, data=data, out=out, name=name, force=force, threads=threads, until=until)
    if not md.exists():
        typer.echo(f"stopped after --until {until}")
        return
    from .pipeline_report import ci_text

    doc = json.loads((md.parent / "results.json").read_text(encoding="utf-8"))
    typer.echo(f"\n{doc['split']} split, n={doc['n']}, 95% lesion-level bootstrap CIs; latency batch 1:")
    for r in doc["rows"]:
        t, b = r["test"], r["bench"] or {}
        p50 = f"{b['p50_ms']:.2f} ms" if b.get("p50_ms") is not None else "—"
        typer.echo(f"  {r['label']:22s} {str(r['gate']):10s} BACC {ci_text(t.get('bacc')):24s} "
                   f"MEL sens {ci_text(t.get('mel_sensitivity')):24s} p50 {p50}")
    last = json.loads((md.parent.parent / "pipeline.json").read_text(encoding="utf-8"))["last_run"]
    for s in last["stages"]:  # this run's stages (the report may be an up-to-date one from before)
        typer.echo(f"  stage {s['name']:9s} {s['status']:8s} {s['seconds']:7.0f} s  {s['note']}")
    typer.echo(f"report: {md}  and {md.with_suffix('.html')}")


@app.command("calibrate")
def calibrate_cmd(
    run: Path,
    thresholds: Optional[Path] = typer.Option(None, help="YAML with threshold targets/fallbacks (default: the run's recipe)."),
) -> None:
    """Re-fit a finished run's clinical thresholds on its validation predictions (no retraining); re-score test."""
    import yaml

    from .thresholds import format_clinical_table
    from .train.run import recalibrate

    th = None
    if thresholds is not None:
        if not thresholds.exists():
            raise EdgedermError(f"thresholds file not found: {thresholds}")
        th = yaml.safe_load(thresholds.read_text())
        th = th.get("thresholds", th) if isinstance(th, dict) else th
    metrics = recalibrate(run, th)
    typer.echo("clinical operating points on the test split (multi-class decision rule, thresholds from validation):")
    typer.echo(format_clinical_table(metrics["clinical"]["test"]))


@app.command("report")
def report_cmd(run: Path) -> None:
    """report.md + plots for a training run (confusion, ROC, curves, thresholds, Grad-CAM) or a bench folder (latency, Pareto)."""
    from .bench import is_bench_folder, write_report

    if is_bench_folder(run):
        for kind, path in write_report(run).items():
            typer.echo(f"{kind}: {path}")
        return
    from .report import write_run_report

    typer.echo(str(write_run_report(run)))


@app.command("explain")
def explain_cmd(
    checkpoint: Path,
    data: Path = typer.Option(..., help="Images to explain (any supported layout; PH2 masks give the CAM-in-lesion score)."),
    fmt: str = typer.Option("auto", "--format", help="Data layout (see `edgederm data formats`)."),
    out: Path = typer.Option(Path("."), help="Folder for gradcam.png and cam_in_mask.json."),
    n_images: int = typer.Option(8, help="Images in the overlay grid."),
    taxonomy: Optional[str] = typer.Option(None, help="Map the data's labels to this taxonomy."),
) -> None:
    """Grad-CAM of every member (the registry's target layer) as a PNG grid, + CAM energy inside lesion masks."""
    from .explain import explain_run

    res = explain_run(checkpoint, data, fmt, out, n_images, taxonomy=taxonomy)
    typer.echo(json.dumps(res, indent=2, default=str))


@app.command("segment")
def segment_cmd(
    recipe: Path,
    data: Optional[str] = typer.Option(None, help="Override the recipe's data path (PH2 layout with masks)."),
    out: Optional[str] = typer.Option(None, help="Override the recipe's output folder."),
    name: Optional[str] = typer.Option(None, help="Override the run name."),
) -> None:
    """Train a lesion segmenter (Attention U-Net on PH2 masks); prints test Dice/IoU with CIs."""
    from .seg.train import main as seg_main

    argv = [str(recipe)]
    for flag, val in (("--data", data), ("--out", out), ("--name", name)):
        if val is not None:
            argv += [flag, val]
    rc = seg_main(argv)
    if rc:
        raise typer.Exit(rc)


# -- runtime --------------------------------------------------------------------------------------
@app.command("predict")
def predict_cmd(
    artifact: Path,
    images: List[str] = typer.Argument(..., help="Image files, folders (searched recursively) or quoted glob patterns."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="text, jsonl, csv, isic (ISIC 2018 submission CSV) or json. Default: from --out's suffix (.jsonl .csv .json), else text."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the results here (default: stdout)."),
    resume: bool = typer.Option(False, "--resume", help="Continue --out: skip the images already in it and append."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per model call."),
    workers: int = typer.Option(2, "--workers", help="Decode threads (0: decode in the main thread)."),
    tta: bool = typer.Option(True, "--tta/--no-tta", help="Use the card's TTA views."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Inference threads (default: the runtime's)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar on stderr (default: on a terminal, for more than a handful of images)."),
    check_inputs: bool = typer.Option(True, "--check-inputs/--no-check-inputs", help="Warn about inputs that do not look like colour dermoscopy."),
    as_json: bool = typer.Option(False, "--json", help="Same as --format json."),
) -> None:
    """Classify images with any artifact: probabilities and the card's decision, streamed per batch."""
    from .predict import PredictInterrupted, run_predict
    from .runtime import load

    if as_json:
        if fmt not in (None, "json"):
            raise EdgedermError(f"--json and --format {fmt} disagree: give one")
        fmt = "json"
    if fmt is None:
        fmt = {".jsonl": "jsonl", ".csv": "csv", ".json": "json"}.get(out.suffix.lower() if out else "", "text")
    predictor = load(artifact, threads=threads)
    try:
        s = run_predict(predictor, images, fmt=fmt, out=out, resume=resume, batch_size=batch_size, workers=workers,
                        tta=None if tta else False, progress=progress, check_inputs=check_inputs)
    except PredictInterrupted as e:
        where = f" in {out}; --resume finishes it" if out else ""
        typer.echo(f"interrupted: {e.summary.previous + e.summary.written} of {e.summary.total} results{where}", err=True)
        from . import interrupt

        interrupt.reported()
        raise typer.Exit(130)
    if out is not None:
        typer.echo(f"wrote {s.written} results to {out}" + (f" ({s.previous} from before)" if s.previous else "")
                   + f" in {s.seconds:.1f} s ({s.rate:.1f} img/s)", err=True)
    if s.warned:
        typer.echo(f"{s.warned} image(s) with input warnings (see above)", err=True)
    if s.skipped:
        more = f" (and {len(s.skipped) - 1} more)" if len(s.skipped) > 1 else ""
        typer.echo(f"skipped {len(s.skipped)} unreadable image(s): {s.skipped[0]}{more}", err=True)
        raise typer.Exit(1)


@app.command("evaluate")
def evaluate_cmd(
    artifact: Path,
    data: Path = typer.Option(..., "--data", "-d", help="Data set folder."),
    fmt: str = FORMAT_OPT,
    taxonomy: Optional[str] = typer.Option(None, "--taxonomy", "-t", help="Default: the card's taxonomy."),
    opt: Optional[List[str]] = OPTS_OPT,
    split_file: Optional[Path] = typer.Option(None, "--split-file", help="Evaluate one split of this split CSV."),
    split: str = typer.Option("test", help="Which split of --split-file."),
    tta: bool = typer.Option(True, "--tta/--no-tta"),
    n_boot: int = typer.Option(1000, help="Bootstrap resamples of lesions for the CIs."),
    threads: Optional[int] = typer.Option(None),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the metrics JSON here."),
    workers: int = typer.Option(2, "--workers", help="Decode threads (0: decode in the main thread)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar on stderr (default: on a terminal)."),
) -> None:
    """Evaluate an artifact on a data set: metrics with lesion-level bootstrap CIs."""
    from .data.splits import apply_split, read_split_csv
    from .evaluate import evaluate
    from .fsutil import write_json_atomic
    from .metrics import format_metrics_table
    from .runtime import load

    predictor = load(artifact, threads=threads)
    index = _read(data, fmt, taxonomy or predictor.card.taxonomy or None, opt)
    if split_file is not None:
        parts = apply_split(index, read_split_csv(split_file, index))
        if split not in parts:
            raise EdgedermError(f"{split_file} has no split {split!r} (has {sorted(parts)})")
        index = parts[split]
    result = evaluate(predictor, index, tta=None if tta else False, n_boot=n_boot, workers=workers, progress=progress)
    summary = result.summary()
    if out:
        write_json_atomic(out, summary)
    typer.echo(f"{artifact.name} on {index.name} (n={summary['n']}, views={len(result.views)}):")
    typer.echo(format_metrics_table(result.ci or {k: {"value": v} for k, v in result.report.items() if isinstance(v, float)}))
    if result.skipped:
        typer.echo(f"skipped {len(result.skipped)} unreadable image(s)", err=True)
        raise typer.Exit(1)


@card_app.command("show")
def card_show(path: Path) -> None:
    """Print the card of an artifact (embedded, else sidecar) or of a .card.json file."""
    from .card import load_card

    typer.echo(load_card(path).to_json())


@card_app.command("validate")
def card_validate(path: Path) -> None:
    """Validate a card: schema, cross-field consistency, and for an artifact its SHA-256 and the
    agreement of the embedded card with the sidecar. Lists every problem; exit 2 if any."""
    from .card import validate_path
    from .errors import CardError

    card, problems = validate_path(path)
    for problem in problems:
        typer.echo(f"{path}: {problem}", err=True)
    if problems or card is None:
        raise CardError(f"{path}: invalid card ({len(problems)} problem{'s' if len(problems) != 1 else ''})")
    typer.echo(f"ok: {card.name} (schema v{card.schema_version}, {len(card.classes)} classes)")


def _register_stages() -> None:
    # The later stages keep their commands next to their code; each registers itself here.
    from .bench.cli import register as register_bench
    from .demo.cli import register as register_demo
    from .export.cli import register as register_export
    from .train.distill import register as register_distill

    register_distill(app)
    register_export(app)
    register_bench(app)
    register_demo(app)


_register_stages()


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(ClickException, UsageError, Abort) classes of both typer's vendored click and click.

    typer >= 0.29 parses with its own copy (``typer._click``), older typer with click itself;
    either may be what raised, and either module may be absent.
    """
    click_exc: list[type] = []
    usage: list[type] = []
    abort: list[type] = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            mod = __import__(module, fromlist=["ClickException"])
        except ImportError:
            continue
        click_exc.append(mod.ClickException)
        usage.append(mod.UsageError)
        if hasattr(mod, "Abort"):
            abort.append(mod.Abort)
    try:  # typer's vendored click raises typer.exceptions.Abort
        from typer.exceptions import Abort as TyperAbort

        abort.append(TyperAbort)
    except ImportError:
        pass
    return tuple(click_exc), tuple(usage), tuple(abort)


def _usage_error(e: Exception, usage: tuple[type, ...]) -> str:
    """``error: <message>`` on one line, with where to look for help on a usage error."""
    msg = " ".join(e.format_message().split())  # type: ignore[attr-defined]
    ctx = getattr(e, "ctx", None)
    if isinstance(e, usage) and ctx is not None:
        msg += f" (see {ctx.command_path} --help)"
    return f"error: {msg}"


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: one-line errors, no tracebacks for user errors; SIGINT/SIGTERM stop
    any stage cleanly with one line and exit 130/143 (``edgederm.interrupt``)."""
    from . import interrupt

    with interrupt.handling():
        _main(argv, interrupt)


def _main(argv: Optional[list[str]], interrupt: Any) -> None:
    click_exc, usage, abort = _click_exceptions()
    try:
        # Non-standalone click returns the code of a typer.Exit instead of raising it.
        # prog_name: usage lines and hints say `edgederm` also under `python -m edgederm`.
        rc = app(args=argv, prog_name="edgederm", standalone_mode=False)
        stopped = interrupt.received()
        if stopped is not None or rc == 130:  # typer turns a KeyboardInterrupt into exit code 130
            raise stopped or interrupt.Interrupted(signal.SIGINT)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except EdgedermError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt as e:
        stopped = interrupt.received() or (e if isinstance(e, interrupt.Interrupted) else interrupt.Interrupted(signal.SIGINT))
        if not interrupt.was_reported():
            typer.echo(stopped.message, err=True)
        sys.exit(stopped.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # click usage errors arrive here in non-standalone mode
        if type(e).__name__ == "NoArgsIsHelpError":
            # `edgederm` or `edgederm card` alone: the help is the answer (typer's rich formatter
            # has already printed it; plain click leaves it in the message). Exit 2 as click does.
            text = e.format_message()  # type: ignore[attr-defined]
            if text.strip():
                typer.echo(text, err=True)
            sys.exit(2)
        if isinstance(e, click_exc):
            typer.echo(_usage_error(e, usage), err=True)
            sys.exit(getattr(e, "exit_code", 2))
        if isinstance(e, abort):
            typer.echo("aborted", err=True)
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
