"""The self-contained benchmark runner: one model file in, one JSON document out.

This file is copied on its own to remote hosts (``ssh://`` targets) and run there with the host's
Python, so it imports only the standard library, NumPy and the one runtime it is asked to use
(ONNX Runtime, OpenVINO, LiteRT / tflite-runtime), or it drives ``trtexec``. It never imports
edgederm; the local harness imports the shared pieces (statistics, timing loop, CPU description,
peak FLOP/s) from here so that both sides measure the same way.

    python3 runner.py --model model.onnx --runtime onnxruntime --threads 4 --batch 1 \
        --warmup 10 --runs 50 [--min-time 2] [--out result.json]
    python3 runner.py --model model.engine --runtime trtexec      # TensorRT's own timer
    python3 runner.py --probe                                     # host description only

Timing: the first inference after loading is timed on its own (``first_inference_ms``), then
``--warmup`` untimed runs, then runs are timed one by one (``time.perf_counter_ns`` around the
runtime's synchronous call; Python's garbage collector paused) until at least ``--runs`` runs and
at least ``--min-time`` seconds have been done. The model's input is random data of the model's
own input shape (batch dimension set to ``--batch``); latency does not depend on pixel values for
these networks.

On Jetsons, ``tegrastats`` (when on PATH) is sampled during the timed runs and the mean of each
power rail is recorded.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, Callable

RUNNER_VERSION = 1
RUNTIMES = ("onnxruntime", "openvino", "litert", "trtexec")
_DIST_NAMES = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "openvino": ("openvino",),
    "litert": ("ai-edge-litert", "tflite-runtime"),
    "torch": ("torch",),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"),
    "numpy": ("numpy",),
}


# -- statistics ------------------------------------------------------------------------------------
def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (NumPy's default ``linear`` method)."""
    n = len(sorted_values)
    if n == 1:
        return sorted_values[0]
    pos = (n - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples_ms: list[float]) -> dict[str, float]:
    """n, p50/p90/p99, mean, std (population), min, max of latencies in milliseconds."""
    if not samples_ms:
        raise ValueError("no samples")
    s = sorted(float(x) for x in samples_ms)
    n = len(s)
    mean = sum(s) / n
    std = (sum((x - mean) ** 2 for x in s) / n) ** 0.5
    return {
        "n": n,
        "p50": _percentile(s, 50),
        "p90": _percentile(s, 90),
        "p99": _percentile(s, 99),
        "mean": mean,
        "std": std,
        "min": s[0],
        "max": s[-1],
    }


def timed_runs(
    fn: Callable[[], Any],
    *,
    warmup: int,
    runs: int,
    min_time_s: float = 0.0,
    max_time_s: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[float, list[float]]:
    """(first-call ms, per-run ms samples): first call, ``warmup`` untimed calls, then timed calls
    until at least ``runs`` calls and ``min_time_s`` seconds (stopping after ``max_time_s``)."""
    t0 = time.perf_counter_ns()
    fn()
    first_ms = (time.perf_counter_ns() - t0) / 1e6
    for _ in range(max(0, warmup)):
        fn()
    samples: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside one timed call would be a harness artefact, not the model
    try:
        start = time.perf_counter()
        while True:
            elapsed = time.perf_counter() - start
            if len(samples) >= runs and elapsed >= min_time_s:
                break
            if max_time_s is not None and elapsed >= max_time_s and samples:
                break
            t0 = time.perf_counter_ns()
            fn()
            samples.append((time.perf_counter_ns() - t0) / 1e6)
            if progress is not None:
                progress(len(samples))
    finally:
        if gc_was_enabled:
            gc.enable()
    return first_ms, samples


# -- process memory -------------------------------------------------------------------------------
def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process (VmHWM; ru_maxrss where /proc is absent)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss) if sys.platform == "darwin" else int(rss) * 1024
    except (ImportError, OSError):
        return None


def current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# -- the machine ----------------------------------------------------------------------------------
_X86_ISA = ("sse4_2", "avx", "f16c", "fma", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
            "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
_ARM_ISA = ("asimd", "asimdhp", "fphp", "asimddp", "i8mm", "bf16", "sve", "sve2", "sme")


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """CPU model, flags and nominal clock from /proc/cpuinfo text (x86 ``flags``, Arm ``Features``)."""
    model = None
    flags: list[str] = []
    mhz: list[float] = []
    physical: set[tuple[str, str]] = set()
    phys_id = "0"
    logical = 0
    implementer = part = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key == "processor":
            logical += 1
        elif key in ("model name", "hardware", "cpu model") and not model:
            model = value
        elif key in ("flags", "features") and not flags:
            flags = value.split()
        elif key == "cpu mhz":
            try:
                mhz.append(float(value))
            except ValueError:
                pass
        elif key == "physical id":
            phys_id = value
        elif key == "core id":
            physical.add((phys_id, value))
        elif key == "cpu implementer" and implementer is None:
            implementer = value
        elif key == "cpu part" and part is None:
            part = value
    if model is None and implementer is not None:
        model = f"Arm implementer {implementer} part {part}"
    return {
        "model": model,
        "flags": flags,
        "mhz_cpuinfo": max(mhz) if mhz else None,
        "logical_cpus_cpuinfo": logical or None,
        "physical_cores_cpuinfo": len(physical) or None,
        "hypervisor": "hypervisor" in flags,
    }


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def cpu_from_parts(
    cpuinfo_text: str,
    *,
    arch: str,
    usable_cpus: int | None,
    logical_cpus: int | None,
    max_khz: list[int] | None = None,
    governor: str | None = None,
) -> dict[str, Any]:
    """The CPU description from raw pieces (this host's files, or a device's read over adb)."""
    info = parse_cpuinfo(cpuinfo_text)
    flags = info.pop("flags")
    isa = [f for f in (_X86_ISA + _ARM_ISA) if f in flags]
    if max_khz:
        # big.LITTLE parts have several clusters: the fastest cluster's clock bounds the peak.
        mhz, source = max(max_khz) / 1000.0, "cpufreq cpuinfo_max_freq" + (" (fastest cluster)" if len(set(max_khz)) > 1 else "")
    elif info["mhz_cpuinfo"]:
        mhz, source = info["mhz_cpuinfo"], "/proc/cpuinfo 'cpu MHz' (nominal; a VM reports the host's base clock)"
    else:
        mhz, source = None, "unknown"
    return {
        "model": info["model"] or arch,
        "arch": arch,
        "logical_cpus": logical_cpus or info["logical_cpus_cpuinfo"],
        "usable_cpus": usable_cpus or logical_cpus or info["logical_cpus_cpuinfo"],
        "physical_cores": info["physical_cores_cpuinfo"],
        "isa": isa,
        "hypervisor": info["hypervisor"],
        "mhz": mhz,
        "mhz_source": source,
        "governor": governor,
    }


def cpu_description(sys_root: str = "/sys/devices/system/cpu") -> dict[str, Any]:
    """What this host's CPU is: model, cores, ISA flags (summarised), clock and its source, governor."""
    try:
        usable = len(os.sched_getaffinity(0))  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    khz = []
    for i in range(os.cpu_count() or 1):
        v = _read(f"{sys_root}/cpu{i}/cpufreq/cpuinfo_max_freq")
        if v and v.isdigit():
            khz.append(int(v))
    cpu = cpu_from_parts(_read("/proc/cpuinfo") or "", arch=platform.machine().lower(), usable_cpus=usable,
                         logical_cpus=os.cpu_count(), max_khz=khz, governor=_read(f"{sys_root}/cpu0/cpufreq/scaling_governor"))
    if cpu["model"] == cpu["arch"] and platform.processor():
        cpu["model"] = platform.processor()
    return cpu


def fp32_flop_per_cycle(isa: list[str], arch: str, fma_units: int = 2) -> tuple[int, str]:
    """Peak FP32 FLOP per cycle per core, and the explanation. An FMA counts as 2 FLOP (a multiply
    and an add), the same convention as model FLOPs = 2 x MACs. The number of FMA units per core is
    not visible in cpuinfo: ``fma_units`` (default 2, as on server Xeons/EPYCs; 1 on some parts)."""
    s = set(isa)
    if arch in ("x86_64", "amd64", "i686", "i386"):
        if "avx512f" in s:
            lanes, name = 16, "AVX-512"
        elif "avx2" in s or "avx" in s:
            lanes, name = 8, "AVX2" if "avx2" in s else "AVX"
        else:
            lanes, name = 4, "SSE"
        if "fma" in s or "avx512f" in s:
            v = lanes * 2 * fma_units
            return v, f"{name}: {lanes} FP32 lanes x 2 FLOP per FMA x {fma_units} FMA units = {v} FLOP/cycle"
        v = lanes * 2
        return v, f"{name} without FMA: {lanes} lanes x (1 add + 1 multiply) = {v} FLOP/cycle"
    if arch in ("aarch64", "arm64") or "asimd" in s:
        v = 4 * 2 * fma_units
        return v, f"NEON (128-bit): 4 FP32 lanes x 2 FLOP per FMA x {fma_units} FMA pipes = {v} FLOP/cycle (SVE assumed 128-bit)"
    return 2, f"{arch}: unknown vector ISA, scalar FMA assumed (2 FLOP/cycle)"


def peak_gflops(cpu: dict[str, Any], threads: int | None, fma_units: int = 2) -> dict[str, Any] | None:
    """Peak FP32 GFLOP/s of the cores a run can use, from cores x clock x FLOP/cycle (shown)."""
    mhz = cpu.get("mhz")
    if not mhz:
        return None
    per_cycle, why = fp32_flop_per_cycle(list(cpu.get("isa") or []), str(cpu.get("arch", "")), fma_units)
    cores = int(cpu.get("physical_cores") or cpu.get("usable_cpus") or cpu.get("logical_cpus") or 1)
    used = min(int(threads), cores) if threads and threads > 0 else cores
    per_core = mhz * 1e-3 * per_cycle
    return {
        "flop_per_cycle": per_cycle,
        "isa_basis": why,
        "mhz": mhz,
        "mhz_source": cpu.get("mhz_source"),
        "cores": cores,
        "cores_used": used,
        "per_core_gflops": per_core,
        "machine_gflops": per_core * cores,
        "gflops": per_core * used,
        "formula": f"{used} cores x {mhz:.0f} MHz x {per_cycle} FLOP/cycle = {per_core * used:.1f} GFLOP/s",
    }


def runtime_versions() -> dict[str, str]:
    from importlib import metadata

    out: dict[str, str] = {}
    for key, dists in _DIST_NAMES.items():
        for dist in dists:
            try:
                out[key] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    trtexec = shutil.which("trtexec") or next((p for p in ("/usr/src/tensorrt/bin/trtexec",) if os.path.exists(p)), None)
    if trtexec:
        out["trtexec"] = trtexec
    return out


def host_description(threads: int | None = None, fma_units: int = 2) -> dict[str, Any]:
    cpu = cpu_description()
    return {
        "cpu": cpu,
        "peak": peak_gflops(cpu, threads, fma_units),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": runtime_versions(),
        "mem_total_bytes": _mem_total(),
        "tegrastats": shutil.which("tegrastats"),
        "runner_version": RUNNER_VERSION,
    }


def _mem_total() -> int | None:
    text = _read("/proc/meminfo") or ""
    m = re.search(r"^MemTotal:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


# -- tegrastats (Jetson power rails) ---------------------------------------------------------------
_RAIL_MW = re.compile(r"\b([A-Z][A-Z0-9_]+) (\d+)mW/(\d+)mW")  # JetPack 5/6: VDD_IN 5118mW/5118mW
_RAIL_OLD = re.compile(r"\b((?:POM|VDD)_[A-Z0-9_]+) (\d+)/(\d+)")  # JetPack 4: POM_5V_IN 3147/3147


def parse_tegrastats_line(line: str) -> dict[str, int]:
    """Instantaneous power per rail (mW) from one tegrastats line."""
    rails = {m.group(1): int(m.group(2)) for m in _RAIL_MW.finditer(line)}
    if not rails:
        rails = {m.group(1): int(m.group(2)) for m in _RAIL_OLD.finditer(line)}
    return rails


class Tegrastats:
    """Samples ``tegrastats --interval N`` in the background while the timed runs go on."""

    def __init__(self, exe: str, interval_ms: int = 100) -> None:
        self.samples: list[dict[str, int]] = []
        self.proc = subprocess.Popen([exe, "--interval", str(interval_ms)], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            rails = parse_tegrastats_line(line)
            if rails:
                self.samples.append(rails)

    def stop(self) -> dict[str, Any]:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._thread.join(timeout=2)
        names = sorted({k for s in self.samples for k in s})
        mean = {k: sum(s.get(k, 0) for s in self.samples) / len(self.samples) for k in names} if self.samples else {}
        total = next((mean[k] for k in ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0") if k in mean), None)  # the board's input rail
        return {"source": "tegrastats", "samples": len(self.samples), "rails_mw": mean, "total_mw": total}


# -- runtimes --------------------------------------------------------------------------------------
class Session:
    """A loaded model with one synchronous ``run()`` on a fixed random input."""

    def __init__(self, run: Callable[[], Any], input_shape: list[int], input_dtype: str, load_ms: float, import_ms: float) -> None:
        self.run = run
        self.input_shape = input_shape
        self.input_dtype = input_dtype
        self.load_ms = load_ms
        self.import_ms = import_ms


def _random_input(shape: list[int], dtype: Any) -> Any:
    import numpy as np

    rng = np.random.default_rng(0)
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dt)
    return rng.standard_normal(shape).astype(dt)


def _shape(dims: list[Any], batch: int, what: str) -> list[int]:
    out = []
    for i, d in enumerate(dims):
        if i == 0:
            out.append(batch)
        elif isinstance(d, int) and d > 0:
            out.append(d)
        else:
            raise SystemExit(f"runner: {what}: input dimension {i} is dynamic ({d!r}); only the batch may be")
    return out


def open_session(path: str, runtime: str, threads: int | None, batch: int) -> Session:
    """Load ``path`` with ``runtime`` (timed: import, then load/compile)."""
    import numpy as np

    if runtime == "onnxruntime":
        t0 = time.perf_counter()
        ort = importlib.import_module("onnxruntime")
        t1 = time.perf_counter()
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        t2 = time.perf_counter()
        inp = sess.get_inputs()[0]
        dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
                 "tensor(int8)": np.int8}.get(inp.type, np.float32)
        shape = _shape(list(inp.shape), batch, path)
        feed = {inp.name: _random_input(shape, dtype)}
        return Session(lambda: sess.run(None, feed), shape, np.dtype(dtype).name, (t2 - t1) * 1e3, (t1 - t0) * 1e3)
    if runtime == "openvino":
        t0 = time.perf_counter()
        ov = importlib.import_module("openvino")
        t1 = time.perf_counter()
        core = ov.Core()
        model = core.read_model(path)
        pshape = model.input(0).get_partial_shape()
        if pshape[0].is_dynamic or pshape[0].get_length() != batch:
            dims = [batch] + [d.get_length() if d.is_static else -1 for d in list(pshape)[1:]]
            model.reshape({model.input(0).get_any_name(): dims})
        # Same configuration as edgederm's OpenVINO backend: FP32 stays FP32 on BF16-capable CPUs.
        config: dict[str, Any] = {"EXECUTION_MODE_HINT": "ACCURACY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        compiled = core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()
        t2 = time.perf_counter()
        inp = compiled.input(0)
        shape = [int(d) for d in inp.get_shape()]
        x = _random_input(shape, inp.get_element_type().to_dtype())
        return Session(lambda: request.infer({0: x}), shape, str(np.dtype(x.dtype)), (t2 - t1) * 1e3, (t1 - t0) * 1e3)
    if runtime == "litert":
        t0 = time.perf_counter()
        try:
            Interpreter = importlib.import_module("ai_edge_litert.interpreter").Interpreter
        except ImportError:
            Interpreter = importlib.import_module("tflite_runtime.interpreter").Interpreter
        t1 = time.perf_counter()
        it = Interpreter(model_path=path, num_threads=int(threads) if threads else None)
        detail = it.get_input_details()[0]
        shape = [int(d) for d in detail["shape"]]
        if shape[0] != batch:
            it.resize_tensor_input(detail["index"], [batch, *shape[1:]])
            shape[0] = batch
        it.allocate_tensors()
        t2 = time.perf_counter()
        x = _random_input(shape, detail["dtype"])
        idx = detail["index"]

        def run() -> None:
            it.set_tensor(idx, x)
            it.invoke()

        return Session(run, shape, str(np.dtype(detail["dtype"])), (t2 - t1) * 1e3, (t1 - t0) * 1e3)
    raise SystemExit(f"runner: unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")


# -- trtexec ---------------------------------------------------------------------------------------
_TRT_LAT = re.compile(r"\bLatency: (min = .*)$", re.M)
_TRT_KV = re.compile(r"(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\)) = ([\d.eE+-]+) ms")


def parse_trtexec(text: str) -> dict[str, Any]:
    """Throughput and the host-latency summary of trtexec's "=== Performance summary ===" block."""
    out: dict[str, Any] = {}
    m = re.search(r"\bThroughput: ([\d.eE+-]+) qps", text)
    if m:
        out["throughput_qps"] = float(m.group(1))
    m = _TRT_LAT.search(text)
    if m:
        lat: dict[str, float] = {}
        for kv in _TRT_KV.finditer(m.group(1)):
            key = kv.group(1)
            if key.startswith("percentile"):
                key = f"p{float(kv.group(2)):g}"
            lat["p50" if key == "median" else key] = float(kv.group(3))
        out["latency_ms"] = lat
    m = re.search(r"GPU Compute Time: (min = .*)$", text, re.M)
    if m:
        out["gpu_compute_ms"] = {("p50" if k.group(1) == "median" else k.group(1)): float(k.group(3))
                                 for k in _TRT_KV.finditer(m.group(1)) if not k.group(1).startswith("percentile")}
    m = re.search(r"TensorRT version: (\S+)", text)
    if m:
        out["tensorrt_version"] = m.group(1)
    return out


def run_trtexec(path: str, warmup_ms: int, runs: int, min_time_s: float, shapes: str | None) -> dict[str, Any]:
    """TensorRT's own timer. ``shapes`` (``name:1x3x224x224``) fixes a dynamic batch of an ONNX graph."""
    exe = shutil.which("trtexec") or "/usr/src/tensorrt/bin/trtexec"
    if not os.path.exists(exe):
        raise SystemExit("runner: trtexec not found on this host")
    engine = path.endswith((".engine", ".plan"))
    args = [exe, f"--loadEngine={path}" if engine else f"--onnx={path}",
            f"--iterations={max(1, runs)}", f"--duration={max(0, int(round(min_time_s)))}",
            f"--warmUp={max(0, warmup_ms)}", "--percentile=90,99", "--useSpinWait"]
    if shapes:
        args.append(f"--shapes={shapes}")
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"runner: trtexec failed ({proc.returncode}): {tail[0]}")
    res = parse_trtexec(proc.stdout + proc.stderr)
    res["command"] = " ".join(args)
    res["wall_s"] = wall
    return res


# -- main ------------------------------------------------------------------------------------------
def measure(args: argparse.Namespace) -> dict[str, Any]:
    rss0 = current_rss_bytes()
    result: dict[str, Any] = {"runner_version": RUNNER_VERSION, "model": os.path.basename(args.model),
                              "runtime": args.runtime, "threads": args.threads, "batch": args.batch,
                              "protocol": {"warmup": args.warmup, "runs": args.runs, "min_time_s": args.min_time}}
    exe = None if args.no_tegrastats else shutil.which("tegrastats")
    tegra = None
    try:
        if args.runtime == "trtexec":
            tegra = Tegrastats(exe) if exe else None
            res = run_trtexec(args.model, args.trt_warmup_ms, args.runs, args.min_time, args.trt_shapes)
            result.update(tool="trtexec", latency_ms=res.get("latency_ms"), trtexec=res,
                          throughput_ips=res.get("throughput_qps", 0) * args.batch or None)
        else:
            sess = open_session(args.model, args.runtime, args.threads, args.batch)
            tegra = Tegrastats(exe) if exe else None  # power while inferring, not while loading
            first_ms, samples = timed_runs(sess.run, warmup=args.warmup, runs=args.runs, min_time_s=args.min_time,
                                           max_time_s=args.max_time)
            stats = summarize(samples)
            result.update(tool="runner", import_ms=sess.import_ms, load_ms=sess.load_ms, first_inference_ms=first_ms,
                          latency_ms=stats, samples_ms=[round(s, 4) for s in samples[:5000]],
                          throughput_ips=args.batch * 1000.0 / stats["mean"], input_shape=sess.input_shape,
                          input_dtype=sess.input_dtype)
    finally:
        if tegra is not None:
            result["power"] = tegra.stop()
    result["peak_rss_bytes"] = peak_rss_bytes()
    result["rss_before_load_bytes"] = rss0
    result["env"] = host_description(args.threads, args.fma_units)
    result["command"] = " ".join([os.path.basename(sys.executable)] + sys.argv)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="edgederm's self-contained benchmark runner (prints one JSON)")
    p.add_argument("--model")
    p.add_argument("--runtime", choices=RUNTIMES)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--min-time", type=float, default=0.0)
    p.add_argument("--max-time", type=float, default=None)
    p.add_argument("--fma-units", type=int, default=2)
    p.add_argument("--no-tegrastats", action="store_true")
    p.add_argument("--trt-shapes", default=None, help="trtexec --shapes for an ONNX graph with a dynamic batch")
    p.add_argument("--trt-warmup-ms", type=int, default=500, help="trtexec --warmUp (milliseconds)")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--probe", action="store_true", help="describe the host and its runtimes, run nothing")
    args = p.parse_args(argv)
    if args.probe:
        doc: dict[str, Any] = host_description(args.threads, args.fma_units)
        doc["available"] = [r for r, mod in (("onnxruntime", "onnxruntime"), ("openvino", "openvino"),
                                             ("litert", "ai_edge_litert"), ("litert", "tflite_runtime"))
                            if importlib.util.find_spec(mod) is not None]
        if doc["versions"].get("trtexec"):
            doc["available"].append("trtexec")
    else:
        if not args.model or not args.runtime:
            p.error("--model and --runtime are required (or --probe)")
        doc = measure(args)
    text = json.dumps(doc)
    if args.out:
        with open(args.out + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(args.out + ".tmp", args.out)
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
