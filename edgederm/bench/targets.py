"""Bench targets: where a configuration runs — ``local``, ``ssh://user@host[:port]``, ``adb[:serial]``.

A target turns artifacts into jobs (artifact x runtime x threads x batch [x delegate]), skipping
with a reason what it cannot run, and runs one job at a time, returning the raw measurement:

* ``local``: every job in a fresh ``python -m edgederm.bench.measure`` process (cold start, own
  peak RSS) through ``edgederm.runtime.load`` — ONNX Runtime, OpenVINO, LiteRT, PyTorch eager
  (checkpoints), TensorRT engines where TensorRT is installed.
* ``ssh://``: the system ``ssh``/``scp`` in BatchMode copy ``runner.py`` and the artifact to the
  host, run the runner there (``--remote-python``, default ``python3``) — or ``trtexec`` through
  the runner for engines / ONNX when the host has it — and fetch its JSON back with ``scp``.
* ``adb``: push the ``.tflite`` and LiteRT's ``benchmark_model`` binary (path given by the user),
  run it with the threads and delegate asked for (XNNPACK, GPU, NNAPI, or the plain CPU kernels),
  and parse its output.

``DeviceDropError`` means the device went away (ssh exit 255, adb no longer lists the device):
the harness stops with one line and keeps what it already stored. ``JobError`` means one
configuration failed (a model the runtime rejects): it is recorded and the run goes on.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from ..errors import EdgedermError
from ..formats.table import FORMATS, artifact_suffixes, format_for, is_artifact
from .measure import RESULT_MARKER, LocalJob
from .runner import cpu_from_parts, peak_gflops

log = logging.getLogger(__name__)

RUNNER_PATH = Path(__file__).with_name("runner.py")


class JobError(EdgedermError):
    """One configuration failed; the run continues."""


class DeviceDropError(EdgedermError):
    """The device is unreachable (connection refused, device offline); the run stops."""

    exit_code = 3


# -- artifacts -------------------------------------------------------------------------------------
@dataclass
class Artifact:
    """A model file to benchmark, with what its card says about it."""

    path: Path
    backend: str  # edgederm.runtime backend name
    card: Any | None
    info: dict[str, Any]
    accuracy: dict[str, Any] | None
    companions: list[Path] = field(default_factory=list)  # files that travel with it (.bin of an IR)
    flops: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return str(self.info.get("label") or self.path.name)


def backend_name_for(path: Path) -> str:
    return format_for(path).name


def runtime_name(backend: str) -> str:
    """What a backend's runtime is called in results (the formats table's ``label``)."""
    fmt = FORMATS.get(backend)
    return fmt.label if fmt is not None else backend


def card_accuracy(card: Any) -> dict[str, Any] | None:
    """BACC for the Pareto plot: the export gate's (validation, this artifact), else the card's
    validation metrics, else the reference checkpoint's validation BACC (artifact not gated)."""
    if card is None:
        return None
    m = card.metrics or {}

    def entry(e: Any) -> dict[str, Any] | None:
        return {"bacc": e.get("value"), "lo": e.get("lo"), "hi": e.get("hi")} if isinstance(e, dict) and e.get("value") is not None else None

    gate = m.get("gate")
    if isinstance(gate, dict) and entry(gate.get("bacc")):
        return {**entry(gate["bacc"]), "source": f"export gate ({gate.get('split', 'val')}, n={gate.get('n')})",  # type: ignore[dict-item]
                "gate_passed": gate.get("passed")}
    for split in ("val", "test"):
        e = m.get(split)
        if isinstance(e, dict) and entry(e.get("bacc")):
            return {**entry(e["bacc"]), "source": f"card metrics: {split} (n={e.get('n')})"}  # type: ignore[dict-item]
    ref = (m.get("reference") or {}).get("val")
    if isinstance(ref, dict) and entry(ref.get("bacc")):
        return {**entry(ref["bacc"]), "source": f"reference checkpoint's val BACC (artifact not gated, n={ref.get('n')})"}  # type: ignore[dict-item]
    return None


def load_artifact(path: str | Path, *, count_flops: bool = True) -> Artifact:
    """Describe an artifact: format, precision, size (with companions), hash, card, BACC, FLOPs."""
    from ..card import load_card, read_sidecar
    from ..fsutil import sha256_file

    p = Path(path)
    if not p.is_file():
        raise EdgedermError(f"artifact not found: {p}")
    backend = backend_name_for(p)
    companions = format_for(p).companion_files(p)
    card = None
    try:
        card = load_card(p)
    except Exception as e:  # the reader's runtime is absent here, or the file is not what its suffix says
        log.info("%s: no embedded card read (%s: %s)", p.name, type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else "")
        try:
            card = read_sidecar(p)  # the export always writes one; an adb/ssh host may run what cannot be opened here
        except EdgedermError:
            card = None
    art = card.artifact if card is not None else {}
    size = p.stat().st_size + sum(c.stat().st_size for c in companions)
    info = {
        "path": str(p.resolve()),
        "file": p.name,
        "label": _label(p, card),
        "format": art.get("format") or runtime_name(backend),
        "precision": art.get("precision") or ("fp32" if backend == "torch" else None),
        "recipe": art.get("recipe"),
        "export_target": art.get("target"),
        "size_bytes": size,
        "sha256": sha256_file(p),
        "card_name": getattr(card, "name", None),
        "members": len(card.model.get("members") or [1]) if card is not None else None,
    }
    a = Artifact(path=p, backend=backend, card=card, info=info, accuracy=card_accuracy(card), companions=companions)
    if count_flops:
        from .measure import count_flops as _count

        a.flops = _count(p, card)
    return a


def _label(p: Path, card: Any) -> str:
    """A short, unique-enough name: the export target (its folder) or the file, with precision."""
    art = (card.artifact or {}) if card is not None else {}
    if art.get("target"):
        return str(art["target"])
    if backend_name_for(p) == "torch":
        members = len(card.model.get("members") or [1]) if card is not None else 1
        return f"{p.parent.name}/{p.name} (PyTorch{' ensemble' if members > 1 else ''})"
    return f"{p.parent.name}/{p.name}"


def expand_artifacts(paths: list[str | Path]) -> list[Path]:
    """Files as given; a folder contributes the artifacts under it (export folders: one per
    target, rejected ones and temporary folders skipped)."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if is_artifact(f)
                           and not any(part.startswith(".") for part in f.relative_to(p).parts)
                           and not any(is_artifact(p / q) for q in f.relative_to(p).parents if q.name)  # inside a folder artifact
                           and f.name not in ("last.pt",))
            if not found:
                raise EdgedermError(f"{p}: no artifacts ({', '.join(artifact_suffixes())}) in this folder")
            out += found
        elif p.exists():
            out.append(p)
        else:
            raise EdgedermError(f"artifact not found: {p}")
    seen: set[Path] = set()
    uniq = []
    for f in out:
        r = f.resolve()
        if r not in seen:
            seen.add(r)
            uniq.append(f)
    return uniq


# -- jobs ------------------------------------------------------------------------------------------
@dataclass
class Settings:
    """What to measure for every artifact."""

    threads: list[int | None] = field(default_factory=lambda: [None])  # None: the target's default
    batches: list[int] = field(default_factory=lambda: [1])
    warmup: int = 10
    runs: int = 50
    min_time_s: float = 0.0
    max_time_s: float | None = None
    e2e_runs: int = 20
    image: str | None = None
    fma_units: int = 2
    timeout_s: float | None = None  # per configuration

    def __post_init__(self) -> None:
        if any(t is not None and t < 1 for t in self.threads):
            raise EdgedermError("--threads must be >= 1")
        if any(b < 1 for b in self.batches):
            raise EdgedermError("--batch must be >= 1")
        if self.runs < 1 or self.warmup < 0 or self.min_time_s < 0:
            raise EdgedermError("--runs must be >= 1, --warmup >= 0 and --min-time >= 0")


@dataclass
class Job:
    artifact: Artifact
    runtime: str
    threads: int | None
    batch: int
    delegate: str | None = None
    skip: str | None = None

    @property
    def label(self) -> str:
        d = f" [{self.delegate}]" if self.delegate else ""
        t = f"{self.threads}T" if self.threads else "default threads"
        return f"{self.artifact.label} · {self.runtime}{d} · {t} · b{self.batch}"


class Target:
    """Base class; subclasses implement ``plan`` and ``run`` (and ``setup``/``teardown``)."""

    kind = "?"
    name = "?"

    def setup(self) -> None:
        pass

    def teardown(self) -> None:
        pass

    def plan(self, artifacts: list[Artifact], settings: Settings) -> list[Job]:
        raise NotImplementedError

    def run(self, job: Job, settings: Settings) -> dict[str, Any]:
        raise NotImplementedError


TARGETS: dict[str, Callable[..., Target]] = {}


def register_target(kind: str) -> Callable[[Callable[..., Target]], Callable[..., Target]]:
    def deco(factory: Callable[..., Target]) -> Callable[..., Target]:
        if kind in TARGETS:
            raise ValueError(f"bench target {kind!r} is already registered")
        TARGETS[kind] = factory
        return factory

    return deco


def make_target(spec: str, **options: Any) -> Target:
    """``local``, ``ssh://user@host[:port]`` or ``adb[:serial]`` → a Target; ``options`` that are
    None are ignored, others must be taken by that kind of target."""
    spec = spec.strip()
    kind = "ssh" if spec.startswith("ssh://") else ("adb" if spec == "adb" or spec.startswith("adb:") else spec)
    if kind not in TARGETS:
        raise EdgedermError(f"unknown bench target {spec!r}: use local, ssh://user@host[:port] or adb[:serial]")
    opts = {k: v for k, v in options.items() if v is not None and v != () and v != []}
    factory = TARGETS[kind]
    import inspect

    accepted = set(inspect.signature(factory).parameters) - {"spec"}
    extra = sorted(set(opts) - accepted)
    if extra:
        raise EdgedermError(f"option(s) {', '.join('--' + e.replace('_', '-') for e in extra)} do not apply to {kind} targets")
    return factory(spec, **opts)


def _last_line(text: str, limit: int | None = 400) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1][:limit] if lines else "no output"


# -- local -----------------------------------------------------------------------------------------
@register_target("local")
class LocalTarget(Target):
    kind = "local"

    def __init__(self, spec: str = "local") -> None:
        self.name = "local"

    def plan(self, artifacts: list[Artifact], settings: Settings) -> list[Job]:
        from ..runtime.registry import BACKENDS

        jobs: list[Job] = []
        cores = os.cpu_count() or 1
        for a in artifacts:
            runtime = runtime_name(a.backend)
            be = BACKENDS.get(a.backend)
            reason = None
            if be is None:
                reason = "TensorRT is not installed here (pip install 'edgederm[tensorrt]' on a machine with an NVIDIA GPU)"
            elif not be.available():
                reason = f"'{be.module}' is not installed: pip install 'edgederm[{be.extra or be.name}]'"
            elif a.backend == "tensorrt" and not _cuda_available():
                reason = "TensorRT engines need an NVIDIA GPU; none is visible here"
            for t in settings.threads:
                for b in settings.batches:
                    jobs.append(Job(a, runtime, t or cores, b, skip=reason))
        return jobs

    def run(self, job: Job, settings: Settings) -> dict[str, Any]:
        lj = LocalJob(artifact=str(job.artifact.path), backend=job.artifact.backend, threads=job.threads, batch=job.batch,
                      warmup=settings.warmup, runs=settings.runs, min_time_s=settings.min_time_s,
                      max_time_s=settings.max_time_s, e2e_runs=settings.e2e_runs, image=settings.image,
                      fma_units=settings.fma_units)
        argv = [sys.executable, "-m", "edgederm.bench.measure", "--job", lj.to_json()]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=settings.timeout_s)
        except subprocess.TimeoutExpired:
            raise JobError(f"{job.label}: no result within {settings.timeout_s:g} s") from None
        if proc.returncode != 0:
            raise JobError(f"{job.label}: {_last_line(proc.stderr)}")
        line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith(RESULT_MARKER)), None)
        if line is None:
            raise JobError(f"{job.label}: the measuring process printed no result")
        raw = json.loads(line[len(RESULT_MARKER):])
        raw["exec_command"] = shlex.join(argv)
        return raw


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


# -- ssh -------------------------------------------------------------------------------------------
def parse_ssh_spec(spec: str) -> tuple[str | None, str, int | None]:
    """``ssh://user@host[:port]`` -> (user, host, port), refusing what ssh could read as an option.

    The destination is passed to ssh/scp after ``--``, but a host or user beginning with ``-``
    (``ssh://-oProxyCommand=...``) or holding whitespace/control characters is refused here as
    well: it is never a real host name, and other tools the user may paste it into have no ``--``.
    """
    # Checked on the raw text: urlsplit silently drops tabs and newlines.
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in spec):
        raise EdgedermError(f"bad ssh target {spec!r}: whitespace or control characters in it")
    u = urlsplit(spec)
    if u.scheme != "ssh" or not u.hostname:
        raise EdgedermError(f"bad ssh target {spec!r}: use ssh://user@host[:port]")
    try:
        port = u.port
    except ValueError:
        raise EdgedermError(f"bad port in ssh target {spec!r}") from None
    if u.username == "":
        raise EdgedermError(f"bad ssh target {spec!r}: empty user name (leave out the '@' for ssh's default user)")
    for what, value in (("user", u.username), ("host", u.hostname)):
        if value is not None and value.startswith("-"):
            raise EdgedermError(f"bad ssh target {spec!r}: the {what} must not begin with '-' (ssh would read it as an option)")
    return u.username, u.hostname, port


@register_target("ssh")
class SshTarget(Target):
    """A Linux host over the system ssh/scp (key auth, BatchMode: never prompts)."""

    kind = "ssh"

    def __init__(
        self,
        spec: str,
        *,
        remote_python: str = "python3",
        identity: str | None = None,
        ssh_options: list[str] | tuple[str, ...] = (),
        remote_dir: str | None = None,
        keep_remote: bool = False,
        trtexec: bool | None = None,
        connect_timeout: int = 10,
    ) -> None:
        self.user, self.host, self.port = parse_ssh_spec(spec)
        self.dest = f"{self.user}@{self.host}" if self.user else self.host
        # scp's user@host:path needs an IPv6 address in brackets (ssh's destination must not have them).
        scp_host = f"[{self.host}]" if ":" in self.host else self.host
        self.scp_dest = f"{self.user}@{scp_host}" if self.user else scp_host
        self.name = f"ssh://{self.dest}" + (f":{self.port}" if self.port else "")
        for tool in ("ssh", "scp"):
            if shutil.which(tool) is None:
                raise EdgedermError(f"'{tool}' is not on PATH: install the OpenSSH client")
        self.remote_python = remote_python
        self.identity = identity
        self.ssh_options = list(ssh_options)
        self.remote_dir = remote_dir or f"/tmp/edgederm-bench-{secrets.token_hex(4)}"
        self.keep_remote = keep_remote
        self.trtexec = trtexec
        self.connect_timeout = int(connect_timeout)
        self.probe: dict[str, Any] = {}
        self._created = False
        self._uploaded: dict[Path, str] = {}
        self._local_tmp: Path | None = None  # where fetched results land (made on first use)

    # plumbing
    def _opts(self) -> list[str]:
        o = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}"]
        if self.identity:
            o += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        for opt in self.ssh_options:
            o += ["-o", opt]
        return o

    def ssh_argv(self, remote_cmd: str) -> list[str]:
        # "--": whatever the destination holds, ssh reads it as the destination, never as an option.
        return ["ssh", *self._opts(), *(["-p", str(self.port)] if self.port else []), "--", self.dest, remote_cmd]

    def _ssh(self, remote_cmd: str, timeout: float | None = None, what: str = "command") -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run(self.ssh_argv(remote_cmd), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeviceDropError(f"{self.name}: no answer within {timeout:g} s ({what})") from None
        if proc.returncode == 255:  # ssh's own failure: connection refused/reset, auth, host key
            raise DeviceDropError(f"{self.name}: ssh failed ({_last_line(proc.stderr)})")
        return proc

    def _scp(self, sources: list[str], dest: str, what: str) -> None:
        argv = ["scp", "-q", *self._opts(), *(["-P", str(self.port)] if self.port else []), "--", *sources, dest]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            self._check_alive()
            raise JobError(f"{self.name}: copying {what} failed ({_last_line(proc.stderr)})")

    def _check_alive(self) -> None:
        self._ssh("true", timeout=self.connect_timeout + 5, what="connectivity check")

    # protocol
    def setup(self) -> None:
        rd = shlex.quote(self.remote_dir)
        proc = self._ssh(f"mkdir -p {rd}", timeout=60, what="mkdir")
        if proc.returncode != 0:
            raise EdgedermError(f"{self.name}: cannot create {self.remote_dir} ({_last_line(proc.stderr)})")
        self._created = True
        self._scp([str(RUNNER_PATH)], f"{self.scp_dest}:{self.remote_dir}/runner.py", "the runner")
        proc = self._ssh(f"{shlex.quote(self.remote_python)} {rd}/runner.py --probe", timeout=120, what="probe")
        if proc.returncode != 0:
            raise EdgedermError(f"{self.name}: the runner cannot start with {self.remote_python!r} there "
                                f"({_last_line(proc.stderr)}); it needs Python >= 3.8 and NumPy (set --remote-python)")
        try:
            self.probe = json.loads(_last_line(proc.stdout, None))
        except json.JSONDecodeError:
            raise EdgedermError(f"{self.name}: the runner's probe printed no JSON ({_last_line(proc.stdout)})") from None

    def teardown(self) -> None:
        if self._local_tmp is not None:
            shutil.rmtree(self._local_tmp, ignore_errors=True)
            self._local_tmp = None
        if self.keep_remote or not self._created:
            return
        try:
            self._ssh(f"rm -rf {shlex.quote(self.remote_dir)}", timeout=self.connect_timeout + 5, what="cleanup")
        except EdgedermError:
            pass

    def _runtime_for(self, a: Artifact) -> tuple[str | None, str | None]:
        avail = set(self.probe.get("available") or [])
        fmt = FORMATS[a.backend]
        if fmt.name == "torch":
            return None, "PyTorch checkpoints are measured on the local target (the remote runner imports no torch)"
        rt = fmt.runner
        if fmt.name == "onnx":
            use_trt = self.trtexec if self.trtexec is not None else "trtexec" in avail
            rt = "trtexec" if use_trt else rt
        if rt is None:
            return None, f"no remote runtime for {fmt.name} artifacts ({a.path.suffix})"
        if rt not in avail:
            what = "trtexec is not on the host's PATH" if rt == "trtexec" else f"{rt} is not importable by {self.remote_python} there"
            return rt, what
        return rt, None

    def plan(self, artifacts: list[Artifact], settings: Settings) -> list[Job]:
        jobs = []
        for a in artifacts:
            rt, reason = self._runtime_for(a)
            for t in settings.threads:
                for b in settings.batches:
                    jobs.append(Job(a, rt or "-", t, b, skip=reason))
        return jobs

    def _upload(self, a: Artifact) -> str:
        if a.path in self._uploaded:
            return self._uploaded[a.path]
        sub = f"{self.remote_dir}/a{len(self._uploaded)}"
        proc = self._ssh(f"mkdir -p {shlex.quote(sub)}", timeout=60, what="mkdir")
        if proc.returncode != 0:
            raise JobError(f"{self.name}: cannot create {sub} ({_last_line(proc.stderr)})")
        # Absolute local paths: scp would read a relative "a:b/model.onnx" as host "a".
        self._scp([os.path.abspath(a.path), *map(os.path.abspath, a.companions)], f"{self.scp_dest}:{sub}/", a.path.name)
        self._uploaded[a.path] = f"{sub}/{a.path.name}"
        return self._uploaded[a.path]

    def run(self, job: Job, settings: Settings) -> dict[str, Any]:
        rpath = self._upload(job.artifact)
        out = f"{self.remote_dir}/result.json"
        cmd = [self.remote_python, f"{self.remote_dir}/runner.py", "--model", rpath, "--runtime", job.runtime,
               "--batch", str(job.batch), "--warmup", str(settings.warmup), "--runs", str(settings.runs),
               "--min-time", f"{settings.min_time_s:g}", "--fma-units", str(settings.fma_units), "--out", out]
        if job.threads:
            cmd += ["--threads", str(job.threads)]
        if settings.max_time_s:
            cmd += ["--max-time", f"{settings.max_time_s:g}"]
        if job.runtime == "trtexec" and job.artifact.backend == "onnx":
            shapes = _trt_shapes(job.artifact, job.batch)
            if shapes:
                cmd += ["--trt-shapes", shapes]
        remote_cmd = shlex.join(cmd)
        proc = self._ssh(remote_cmd, timeout=settings.timeout_s, what=job.label)
        if proc.returncode != 0:
            self._check_alive()
            raise JobError(f"{self.name}: {job.label}: {_last_line(proc.stderr)}")
        if self._local_tmp is None:
            self._local_tmp = Path(tempfile.mkdtemp(prefix="edgederm-bench-ssh-"))
        local = self._local_tmp / "result.json"
        self._scp([f"{self.scp_dest}:{out}"], str(local), "the result")
        raw = json.loads(local.read_text(encoding="utf-8"))
        raw["exec_command"] = remote_cmd
        raw["transport_command"] = shlex.join(self.ssh_argv(remote_cmd))
        return raw


def _trt_shapes(a: Artifact, batch: int) -> str | None:
    """``name:BxCxHxW`` for trtexec from the ONNX input (dynamic batch set to ``batch``)."""
    try:
        import onnx

        inp = onnx.load(str(a.path), load_external_data=False).graph.input[0]
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in inp.type.tensor_type.shape.dim]
    except Exception:  # onnx absent or unreadable here: trtexec uses the graph's own shapes
        return None
    if not dims or any(d < 1 for d in dims[1:]):
        return None
    return f"{inp.name}:{'x'.join(str(d) for d in [batch, *dims[1:]])}"


# -- adb -------------------------------------------------------------------------------------------
DELEGATES = ("xnnpack", "cpu", "gpu", "nnapi")


@register_target("adb")
class AdbTarget(Target):
    """An Android device over adb, measured by LiteRT's ``benchmark_model`` binary."""

    kind = "adb"

    def __init__(
        self,
        spec: str = "adb",
        *,
        benchmark_model: str | None = None,
        delegates: list[str] | tuple[str, ...] = ("xnnpack",),
        adb: str = "adb",
        remote_dir: str = "/data/local/tmp/edgederm",
        keep_remote: bool = False,
        extra_args: list[str] | tuple[str, ...] = (),
    ) -> None:
        _, _, serial = spec.partition(":")
        self.serial = serial or None
        self.name = f"adb:{self.serial}" if self.serial else "adb"
        if not benchmark_model:
            raise EdgedermError("adb targets need --benchmark-model PATH: LiteRT's benchmark_model binary built for the device "
                                "(e.g. android_aarch64_benchmark_model)")
        self.binary = Path(benchmark_model)
        if not self.binary.is_file():
            raise EdgedermError(f"benchmark_model binary not found: {self.binary}")
        bad = [d for d in delegates if d not in DELEGATES]
        if bad:
            raise EdgedermError(f"unknown delegate {bad[0]!r}: choose from {', '.join(DELEGATES)}")
        self.delegates = list(dict.fromkeys(delegates))
        self.adb = shutil.which(adb) or adb
        if shutil.which(self.adb) is None and not Path(self.adb).is_file():
            raise EdgedermError(f"'{adb}' is not on PATH: install Android platform-tools (Debian: apt-get install adb)")
        self.remote_dir = remote_dir.rstrip("/")
        self.keep_remote = keep_remote
        self.extra_args = list(extra_args)
        self.device: dict[str, Any] = {}
        self._pushed: dict[Path, str] = {}

    def adb_argv(self, *args: str) -> list[str]:
        return [self.adb, *(["-s", self.serial] if self.serial else []), *args]

    def _adb(self, *args: str, timeout: float | None = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run(self.adb_argv(*args), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeviceDropError(f"{self.name}: adb {args[0]} did not return within {timeout:g} s") from None
        if check and proc.returncode != 0:
            self._check_alive(proc)
            raise JobError(f"{self.name}: adb {' '.join(args[:2])} failed ({_last_line(proc.stderr or proc.stdout)})")
        return proc

    def _check_alive(self, failed: subprocess.CompletedProcess[str] | None = None) -> None:
        try:
            st = subprocess.run(self.adb_argv("get-state"), capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            st = None
        if st is None or st.returncode != 0 or st.stdout.strip() != "device":
            why = _last_line((failed.stderr or failed.stdout) if failed is not None else (st.stderr if st else "timeout"))
            raise DeviceDropError(f"{self.name}: device not available ({why})")

    def _shell(self, cmd: str, timeout: float | None = 120) -> str:
        return self._adb("shell", cmd, timeout=timeout).stdout

    def setup(self) -> None:
        self._check_alive()
        props = {}
        for key in ("ro.product.manufacturer", "ro.product.model", "ro.soc.model", "ro.board.platform", "ro.build.version.release",
                    "ro.build.version.sdk", "ro.product.cpu.abi"):
            props[key] = self._adb("shell", "getprop", key, check=False).stdout.strip() or None
        cpuinfo = self._adb("shell", "cat", "/proc/cpuinfo", check=False).stdout
        arch = self._adb("shell", "uname", "-m", check=False).stdout.strip() or "aarch64"
        ncpu = self._adb("shell", "nproc", check=False).stdout.strip()
        freqs = self._adb("shell", "cat /sys/devices/system/cpu/cpu*/cpufreq/cpuinfo_max_freq", check=False).stdout.split()
        gov = self._adb("shell", "cat", "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", check=False)
        cpu = cpu_from_parts(cpuinfo, arch=arch, usable_cpus=int(ncpu) if ncpu.isdigit() else None,
                             logical_cpus=int(ncpu) if ncpu.isdigit() else None,
                             max_khz=[int(f) for f in freqs if f.isdigit()],
                             governor=gov.stdout.strip() if gov.returncode == 0 else None)
        if props.get("ro.soc.model") or props.get("ro.board.platform"):
            cpu["model"] = f"{props.get('ro.soc.model') or props.get('ro.board.platform')} ({cpu['model']})"
        self.device = {"android": props, "cpu": cpu}
        self._adb("shell", "mkdir", "-p", self.remote_dir)
        self.remote_binary = f"{self.remote_dir}/benchmark_model"
        self._adb("push", str(self.binary), self.remote_binary, timeout=600)
        self._adb("shell", "chmod", "755", self.remote_binary)

    def teardown(self) -> None:
        if self.keep_remote or not self.device:
            return
        try:
            self._adb("shell", "rm", "-rf", self.remote_dir, timeout=30, check=False)
        except EdgedermError:
            pass

    def plan(self, artifacts: list[Artifact], settings: Settings) -> list[Job]:
        jobs = []
        for a in artifacts:
            reason = None if a.backend == "tflite" else "adb targets run .tflite models (LiteRT benchmark_model)"
            for d in self.delegates:
                for t in settings.threads:
                    for b in settings.batches:
                        jobs.append(Job(a, "litert-benchmark_model", t, b, delegate=d, skip=reason))
        return jobs

    def _push(self, a: Artifact) -> str:
        if a.path not in self._pushed:
            remote = f"{self.remote_dir}/{a.info['sha256'][:8]}-{a.path.name}"
            self._adb("push", str(a.path), remote, timeout=600)
            self._pushed[a.path] = remote
        return self._pushed[a.path]

    def command(self, job: Job, settings: Settings, remote_model: str) -> list[str]:
        args = [self.remote_binary, f"--graph={remote_model}", f"--warmup_runs={settings.warmup}",
                f"--num_runs={settings.runs}", f"--min_secs={settings.min_time_s:g}"]
        if settings.max_time_s:
            args.append(f"--max_secs={settings.max_time_s:g}")
        if job.threads:
            args.append(f"--num_threads={job.threads}")
        # benchmark_model applies XNNPACK by default; =false selects the plain TFLite CPU kernels.
        args.append(f"--use_xnnpack={'false' if job.delegate in ('cpu', 'gpu', 'nnapi') else 'true'}")
        if job.delegate == "gpu":
            args.append("--use_gpu=true")
        elif job.delegate == "nnapi":
            args.append("--use_nnapi=true")
        layer = _tflite_input(job.artifact.path)
        if layer is not None and layer[1][0] != job.batch:
            name, shape = layer
            args += [f"--input_layer={name}", f"--input_layer_shape={','.join(str(d) for d in [job.batch, *shape[1:]])}"]
        elif layer is None and job.batch != 1:
            raise JobError(f"{job.label}: batch {job.batch} needs the model's input name (install ai-edge-litert here)")
        return args + self.extra_args

    def run(self, job: Job, settings: Settings) -> dict[str, Any]:
        remote_model = self._push(job.artifact)
        args = self.command(job, settings, remote_model)
        shell_cmd = shlex.join(args)
        proc = self._adb("shell", shell_cmd, timeout=settings.timeout_s, check=False)
        text = proc.stdout + "\n" + proc.stderr
        parsed = parse_benchmark_model(text)
        if proc.returncode != 0 or "latency_ms" not in parsed:
            self._check_alive(proc)
            err = next((ln.strip() for ln in text.splitlines() if "ERROR" in ln), _last_line(text))
            raise JobError(f"{self.name}: {job.label}: benchmark_model failed ({err})")
        lat = parsed["latency_ms"]
        cpu = self.device.get("cpu", {})
        env = {"cpu": cpu, "peak": peak_gflops(cpu, job.threads, settings.fma_units), "android": self.device.get("android"),
               "os": f"Android {(self.device.get('android') or {}).get('ro.build.version.release')}",
               "versions": {"benchmark_model": self.binary.name}}
        return {
            "tool": "benchmark_model",
            "load_ms": parsed.get("init_ms"),
            "first_inference_ms": parsed.get("first_inference_ms"),
            "warmup_avg_ms": parsed.get("warmup_avg_ms"),
            "latency_ms": lat,
            "throughput_ips": job.batch * 1000.0 / lat["mean"] if lat.get("mean") else None,
            "peak_rss_bytes": None,
            "memory_footprint_mb": parsed.get("memory_mb"),
            "delegation": parsed.get("delegation"),
            "benchmark_model": {"binary": str(self.binary), "binary_sha256": _sha(self.binary), "delegate": job.delegate,
                                "threads": job.threads, "summary_line": parsed.get("summary_line")},
            "env": env,
            "exec_command": shell_cmd,
            "transport_command": shlex.join(self.adb_argv("shell", shell_cmd)),
        }


def _sha(p: Path) -> str:
    from ..fsutil import sha256_file

    return sha256_file(p)


def _tflite_input(path: Path) -> tuple[str, list[int]] | None:
    try:
        Interpreter = importlib.import_module("ai_edge_litert.interpreter").Interpreter
    except ImportError:
        return None
    d = Interpreter(model_path=str(path)).get_input_details()[0]
    return str(d["name"]), [int(x) for x in d["shape"]]


# benchmark_model's output (tensorflow/lite/tools/benchmark/benchmark_model.cc): each run phase ends
# with a Stat line "count=N first=F curr=C min=A max=B avg=M std=S [p5=.. median=.. p95=..]" (µs;
# the percentiles appear in newer builds), and the end of the run prints
# "Inference timings in us: Init: I, First inference: F, Warmup (avg): W, Inference (avg): A".
_STAT = re.compile(r"count=(\d+)(?: first=([\d.e+]+))? curr=([\d.e+]+)(?: min=([\d.e+]+) max=([\d.e+]+) avg=([\d.e+]+) std=([\d.e+]+))?"
                   r"(?: p5=([\d.e+]+) median=([\d.e+]+) p95=([\d.e+]+))?")
_TIMINGS = re.compile(r"Inference timings in us: Init: ([\d.e+]+), First inference: ([\d.e+]+), "
                      r"Warmup \(avg\): ([\d.e+]+), Inference \(avg\): ([\d.e+]+)")
_MEM = re.compile(r"Memory footprint delta from the start of the tool \(MB\): init=([\d.e+]+) overall=([\d.e+]+)"
                  r"|Peak memory footprint \(MB\): init=([\d.e+]+) overall=([\d.e+]+)")
_PEAK = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring: ([\d.e+]+)")
_DELEG = re.compile(r"Replacing (\d+) out of (\d+) node\(s\) with delegate \((\w+)\)")


def parse_benchmark_model(text: str) -> dict[str, Any]:
    """Timings (ms), the regular run's latency statistics, memory and delegation from its log."""
    out: dict[str, Any] = {}
    stats = [m for m in _STAT.finditer(text) if m.group(4) is not None]
    m = _TIMINGS.search(text)
    if m:
        init, first, warm, avg = (float(g) / 1e3 for g in m.groups())
        out.update(init_ms=init, first_inference_ms=first, warmup_avg_ms=warm, summary_line=m.group(0))
    if stats:
        s = stats[-1]  # the regular (non-warm-up) run is the last full Stat line
        lat: dict[str, Any] = {"n": int(s.group(1)), "min": float(s.group(4)) / 1e3, "max": float(s.group(5)) / 1e3,
                               "mean": float(s.group(6)) / 1e3, "std": float(s.group(7)) / 1e3}
        if s.group(9) is not None:
            lat.update(p5=float(s.group(8)) / 1e3, p50=float(s.group(9)) / 1e3, p95=float(s.group(10)) / 1e3)
        out["latency_ms"] = lat
    elif m:
        out["latency_ms"] = {"mean": float(m.group(4)) / 1e3}
    mm = _MEM.search(text)
    if mm:
        g = [x for x in mm.groups() if x is not None]
        out["memory_mb"] = {"init": float(g[0]), "overall": float(g[1])}
    pk = _PEAK.search(text)
    if pk:
        out.setdefault("memory_mb", {})["peak"] = float(pk.group(1))
    d = _DELEG.search(text)
    if d:
        out["delegation"] = {"nodes_delegated": int(d.group(1)), "nodes_total": int(d.group(2)), "delegate": d.group(3)}
    elif "will not be executed by the delegate" in text:
        out["delegation"] = {"nodes_delegated": 0, "note": "the delegate declined the graph: CPU fallback"}
    return out
