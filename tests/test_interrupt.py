"""Ctrl-C and SIGTERM at every stage: real ``edgederm`` subprocesses, real signals.

Each command runs in its own session with SIGINT set back to its default disposition (a test
runner started in the background by a non-interactive shell hands SIGINT down ignored, and then
the signal would never arrive). The test waits for the log line that opens the step it wants to
interrupt, sends the signal and checks: exit code 128 + signal, one line starting with
"interrupted", no traceback, no artifact and no temporary file left; training keeps a resumable
``last.pt``; ``edgederm run`` records the stage as interrupted in ``pipeline.json``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_gate import train_tiny_run

REPO = Path(__file__).resolve().parents[1]


def _start(args: list[str], *, sigint: object = signal.SIG_DFL, cwd: Path | None = None) -> subprocess.Popen[str]:
    def child_setup() -> None:
        signal.signal(signal.SIGINT, sigint)  # type: ignore[arg-type]

    return subprocess.Popen([sys.executable, "-m", "edgederm", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, preexec_fn=child_setup, cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})


def _wait_for(proc: subprocess.Popen[str], text: str, lines: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in ln for ln in lines):
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            pytest.fail(f"exited ({proc.wait()}) before {text!r}:\n" + "".join(lines)[-3000:])
        lines.append(line)
        assert time.monotonic() < deadline, f"no {text!r} within {timeout} s"


def _stop(proc: subprocess.Popen[str], sig: int, lines: list[str]) -> tuple[int, list[str]]:
    os.kill(proc.pid, sig)
    rest, _ = proc.communicate(timeout=120)
    after = [ln for ln in rest.splitlines() if ln.strip()]
    return proc.returncode, after


def _check_one_line(rc: int, after: list[str], lines: list[str], sig: int) -> None:
    log = "".join(lines) + "\n".join(after)
    assert rc == 128 + sig, log[-3000:]
    said = [ln for ln in after if ln.startswith("interrupted")]
    assert len(said) == 1 and after[-1] == said[0], after
    assert ("SIGTERM" in said[0]) == (sig == signal.SIGTERM)
    assert "Traceback" not in log and "KeyboardInterrupt" not in log


def _leftovers(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*")
            if ".tmp" in p.name or ".old-" in p.name or p.name.startswith(".model.unscored")]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return train_tiny_run(tmp_path_factory.mktemp("interrupt"))


def test_export_interrupted_during_its_gate_keeps_nothing(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    proc = _start(["export", str(tiny_run), "--target", "onnx", "--out", str(out), "--threads", "1"])
    lines: list[str] = []
    _wait_for(proc, "gate: scoring onnx", lines)  # built, card embedded, now being gated
    rc, after = _stop(proc, signal.SIGINT, lines)
    _check_one_line(rc, after, lines, signal.SIGINT)
    assert "onnx: pass" not in "\n".join(after)
    assert not (out / "onnx").exists() and not (out / ".rejected").exists()
    assert _leftovers(out) == [] and not (out / "summary.json").exists()


def _recipe(tmp_path: Path, epochs: int = 12) -> Path:
    from edgederm.data.synthetic import generate

    data = generate(tmp_path / "data", n_lesions=70, size=40, seed=3)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(json.dumps({  # JSON is YAML
        "name": "tiny", "data": str(data), "format": "ham10000", "out": str(tmp_path / "runs"), "n_boot": 20,
        "tta": ["identity"], "report": False, "patience": epochs, "threads": 1,
        "members": [{"model": "small_cnn", "input_size": 24, "epochs": epochs, "batch_size": 16, "lr": 0.003,
                     "kwargs": {"width": 4}}],
    }))
    return recipe


def test_training_stopped_by_sigterm_keeps_a_resumable_state(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    proc = _start(["train", str(recipe)])
    lines: list[str] = []
    _wait_for(proc, "epoch 2:", lines)  # epoch 1's state is on disk
    rc, after = _stop(proc, signal.SIGTERM, lines)
    _check_one_line(rc, after, lines, signal.SIGTERM)
    run = tmp_path / "runs" / "tiny"
    [last] = list((run / "members").rglob("last.pt"))
    done = torch.load(last, map_location="cpu", weights_only=True)["state"]["epoch"]  # plain values only
    assert 1 <= done < 12
    assert not (run / "model.pt").exists() and _leftovers(run) == []
    # --resume continues from that epoch and finishes the run
    again = subprocess.run([sys.executable, "-m", "edgederm", "train", str(recipe), "--resume"], capture_output=True,
                           text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed after epoch {done}" in again.stderr and f"epoch {done}:" not in again.stderr
    assert (run / "model.pt").exists() and _leftovers(run) == []


def test_pipeline_records_the_interrupted_stage(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    proc = _start(["run", str(recipe), "--until", "train"])
    lines: list[str] = []
    _wait_for(proc, "epoch 1:", lines)
    rc, after = _stop(proc, signal.SIGINT, lines)
    _check_one_line(rc, after, lines, signal.SIGINT)
    run = tmp_path / "runs" / "tiny"
    stage = json.loads((run / "pipeline.json").read_text())["stages"]["train"]
    assert stage["status"] == "interrupted" and stage["error"] == "interrupted by SIGINT"
    assert not (run / "model.pt").exists() and _leftovers(run) == []


def test_an_inherited_ignored_sigint_stays_ignored(tmp_path: Path) -> None:
    """`edgederm ... &` from a script: SIGINT arrives ignored and must stay so; SIGTERM still stops it."""
    code = ("import os, signal, time\n"
            "from edgederm import interrupt\n"
            "with interrupt.handling():\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    time.sleep(0.2)\n"
            "    print('still running', flush=True)\n"
            "    try:\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "        time.sleep(5)\n"
            "    except interrupt.Interrupted as e:\n"
            "        print('stopped', e.exit_code)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for disposition, expect in ((signal.SIG_IGN, "still running\nstopped 143\n"), (signal.SIG_DFL, "")):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                              preexec_fn=lambda d=disposition: signal.signal(signal.SIGINT, d))  # type: ignore[misc]
        assert proc.stdout == expect, (disposition, proc.stdout, proc.stderr[-2000:])
        if disposition == signal.SIG_DFL:  # handled: the Interrupted escapes the script
            assert proc.returncode == 1 and "Interrupted: SIGINT" in proc.stderr
