"""``edgederm export`` and ``edgederm gate`` (added to the main typer app by ``register``).

Exit codes (both commands): 0 everything requested passed (targets this machine cannot build
are skipped under ``--target all``), 1 an artifact failed the accuracy gate (or a precheck
failed), 2 bad input (unknown target or option, missing extra or hardware, missing data, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from ..errors import EdgedermError


def _parse_opts(items: Optional[List[str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise EdgedermError(f"--opt takes key=value or target.key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _tolerances(bacc: float, mel: float, per_class: Optional[List[str]], min_agreement: Optional[float], **kw: Any) -> Any:
    from .gate import Tolerances

    default, per = Tolerances.parse_class(per_class)
    if min_agreement is not None:
        kw["min_agreement"] = min_agreement
    return Tolerances(bacc_pp=bacc, mel_sens_pp=mel, class_pp=5.0 if default is None else default,
                      per_class_pp=per, **{k: v for k, v in kw.items() if v is not None})


def _command() -> None:
    from ..provenance import record_command

    record_command()


TOL_BACC = typer.Option(1.0, "--tolerance-bacc", help="Largest BACC drop allowed (percentage points).")
TOL_MEL = typer.Option(2.0, "--tolerance-mel-sens", help="Largest melanoma-sensitivity drop allowed (pp).")
TOL_CLASS = typer.Option(None, "--tolerance-class", help="Largest recall drop of any class (pp, default 5), or CLASS=PP; repeatable.")
MIN_AGREE = typer.Option(None, "--min-agreement", help="Top-1 agreement of the decisions with the reference required (0-1, default 0.97).")
MEL_FLIPS = typer.Option(None, "--mel-flips", help="Melanomas the artifact may lose whatever the class size (default 1).")
CLASS_FLIPS = typer.Option(None, "--class-flips", help="Images of any other class it may lose whatever the class size (default 1).")
MIN_IMAGES = typer.Option(None, "--min-images", help="Refuse to certify on fewer evaluation images (default 50).")
MIN_SUPPORT = typer.Option(None, "--min-class-support", help="Refuse to certify when a class has fewer images (default 3).")
FIDELITY = typer.Option(None, "--fidelity-data", help="Folder(s) of unlabelled images not used for training, repeatable: label-free fidelity rules.")
MIN_FIDELITY = typer.Option(None, "--min-fidelity-images", help="Refuse a fidelity pool with fewer images (default 100).")
FID_AGREE = typer.Option(None, "--fidelity-agreement", help="Agreement with the reference required on the pool (default 0.98).")
FID_MEL = typer.Option(None, "--fidelity-mel-kept", help="Share of the reference's melanoma calls to keep on the pool (default 0.98).")


def register(app: typer.Typer) -> None:
    """Add the ``export`` and ``gate`` commands to ``app``."""

    @app.command("export")
    def export_cmd(
        run: Optional[Path] = typer.Argument(None, help="Run folder (its model.pt, or its distilled student) or a single-model checkpoint."),
        target: Optional[List[str]] = typer.Option(None, "--target", "-t", help="Target name(s), repeatable or comma-separated, or 'all'."),
        recipe: str = typer.Option("default", help="default, or auto: try quantization recipes fastest → safest, keep the first that passes."),
        opt: Optional[List[str]] = typer.Option(None, "--opt", help="Target option key=value (or target.key=value), repeatable; see --list."),
        out: Optional[Path] = typer.Option(None, help="Output folder (default RUN/export)."),
        data: Optional[Path] = typer.Option(None, "--data", "-d", help="Data root, if not where the card says."),
        fmt: Optional[str] = typer.Option(None, "--format", help="Data layout (default: the run's)."),
        split_file: Optional[Path] = typer.Option(None, "--split-file", help="Split CSV (default: the run's)."),
        gate: bool = typer.Option(True, "--gate/--no-gate", help="Gate every artifact against the FP32 checkpoint on validation."),
        precheck: bool = typer.Option(False, "--precheck", help="TensorRT FP16 without a GPU: check the FP16 numerics on CPU (ONNX Runtime)."),
        tolerance_bacc: float = TOL_BACC,
        tolerance_mel_sens: float = TOL_MEL,
        tolerance_class: Optional[List[str]] = TOL_CLASS,
        min_agreement: Optional[float] = MIN_AGREE,
        mel_flips: Optional[int] = MEL_FLIPS,
        class_flips: Optional[int] = CLASS_FLIPS,
        min_images: Optional[int] = MIN_IMAGES,
        min_class_support: Optional[int] = MIN_SUPPORT,
        fidelity_data: Optional[List[Path]] = FIDELITY,
        min_fidelity_images: Optional[int] = MIN_FIDELITY,
        fidelity_agreement: Optional[float] = FID_AGREE,
        fidelity_mel_kept: Optional[float] = FID_MEL,
        n_boot: int = typer.Option(1000, help="Bootstrap resamples (lesions) for the CIs."),
        tta: bool = typer.Option(True, "--tta/--no-tta", help="Gate with the card's TTA views."),
        threads: Optional[int] = typer.Option(None, help="Inference threads for the gate."),
        list_targets: bool = typer.Option(False, "--list", help="Print the export targets (with this machine's availability) and exit."),
    ) -> None:
        """Export a run to deployable artifacts (ONNX, OpenVINO, TFLite, TensorRT), each gated for accuracy."""
        from .registry import TARGETS, targets_table

        if list_targets:
            typer.echo(targets_table(availability=True))
            return
        if run is None:
            raise EdgedermError("missing RUN (a run folder or a single-model checkpoint)")
        if not target:
            raise EdgedermError(f"choose --target: all, {', '.join(TARGETS)}")
        _command()
        from .run import export_run

        results = export_run(
            run, target, out_dir=out, recipe=recipe, options=_parse_opts(opt), gate=gate,
            tolerances=_tolerances(tolerance_bacc, tolerance_mel_sens, tolerance_class, min_agreement, mel_flips=mel_flips,
                                   class_flips=class_flips, min_images=min_images, min_class_support=min_class_support,
                                   min_fidelity_images=min_fidelity_images, fidelity_agreement=fidelity_agreement,
                                   fidelity_mel_kept=fidelity_mel_kept),
            precheck=precheck, data=data, data_format=fmt, split_file=split_file, n_boot=n_boot,
            tta=None if tta else False, threads=threads, fidelity_data=fidelity_data or None,
        )
        summary = Path(results[0]["export_dir"]) / "gate.md" if results and results[0].get("export_dir") else None
        if summary is not None and summary.exists():
            typer.echo(summary.read_text(encoding="utf-8"))
        for r in results:
            where = f"  {r['path']}" if r.get("path") else ""
            typer.echo(f"{r['target']}: {r['verdict']}{where}")
            if r["status"] in ("fail", "precheck-fail", "error", "skipped") and r.get("reason"):
                typer.echo(f"  {r['reason']}", err=r["status"] != "skipped")
        statuses = {r["status"] for r in results}
        if "error" in statuses:
            raise typer.Exit(2)
        if statuses & {"fail", "precheck-fail"}:
            raise typer.Exit(1)

    @app.command("gate")
    def gate_cmd(
        artifact: Path = typer.Argument(..., help="The artifact (or checkpoint) to check."),
        baseline: Path = typer.Option(..., "--baseline", "-b", help="Baseline artifact/checkpoint (both are run), or a baseline .card.json (its recorded metrics)."),
        data: Optional[Path] = typer.Option(None, "--data", "-d", help="Data root (default: where the card says)."),
        fmt: Optional[str] = typer.Option(None, "--format", help="Data layout (default: auto-detect)."),
        split_file: Optional[Path] = typer.Option(None, "--split-file", help="Split CSV (default: the card's)."),
        split: str = typer.Option("val", help="Split to evaluate: val, test, or all (the whole data set)."),
        tolerance_bacc: float = TOL_BACC,
        tolerance_mel_sens: float = TOL_MEL,
        tolerance_class: Optional[List[str]] = TOL_CLASS,
        min_agreement: Optional[float] = MIN_AGREE,
        mel_flips: Optional[int] = MEL_FLIPS,
        class_flips: Optional[int] = CLASS_FLIPS,
        min_images: Optional[int] = MIN_IMAGES,
        min_class_support: Optional[int] = MIN_SUPPORT,
        fidelity_data: Optional[List[Path]] = FIDELITY,
        min_fidelity_images: Optional[int] = MIN_FIDELITY,
        fidelity_agreement: Optional[float] = FID_AGREE,
        fidelity_mel_kept: Optional[float] = FID_MEL,
        n_boot: int = typer.Option(1000, help="Bootstrap resamples (lesions) for the CIs."),
        tta: bool = typer.Option(True, "--tta/--no-tta", help="Use the cards' TTA views."),
        threads: Optional[int] = typer.Option(None),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for gate.json and gate.md (default: the artifact's)."),
        as_json: bool = typer.Option(False, "--json", help="Print gate.json instead of the table."),
    ) -> None:
        """Accuracy-regression gate: ARTIFACT vs a baseline on one evaluation set, each under its card's decision rule.
        Exit 0 pass, 1 fail, 2 bad input or too little data to certify."""
        from .gate import run_gate

        _command()
        result = run_gate(
            artifact, baseline, data=data, fmt=fmt, split_file=split_file, split=split,
            tolerances=_tolerances(tolerance_bacc, tolerance_mel_sens, tolerance_class, min_agreement, mel_flips=mel_flips,
                                   class_flips=class_flips, min_images=min_images, min_class_support=min_class_support,
                                   min_fidelity_images=min_fidelity_images, fidelity_agreement=fidelity_agreement,
                                   fidelity_mel_kept=fidelity_mel_kept),
            n_boot=n_boot, tta=None if tta else False, threads=threads, out_dir=out, fidelity_data=fidelity_data or None,
        )
        typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.markdown(artifact.name))
        if not result.passed:
            raise typer.Exit(1)
