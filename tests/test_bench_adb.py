"""The adb[:serial] bench target against a fake ``adb`` executable on PATH.

No phone is attached here, so the test writes a small ``adb`` program that behaves like one
device: it records every invocation, keeps pushed files in a folder that stands for the device's
storage, answers ``getprop`` / ``/proc/cpuinfo`` / cpufreq like an 8-core Arm phone, and when
``benchmark_model`` is run it checks that the binary was pushed and made executable and that the
model is there, then replays a ``benchmark_model`` log. The log's format is the one LiteRT's
tool prints (``tensorflow/lite/tools/benchmark/benchmark_model.cc``: ``BenchmarkModel::Run`` ends
each phase with a ``count=... first=... curr=... min=... max=... avg=... std=... p5=... median=...
p95=...`` Stat line, ``BenchmarkLoggingListener::OnBenchmarkEnd`` prints "Inference timings in us:
Init: ..., First inference: ..., Warmup (avg): ..., Inference (avg): ..." and the memory line);
the numbers are those of a public log of ``android_aarch64_benchmark_model`` running a float32
model with the XNNPACK delegate on a phone (found with the code search: the run of
"tiny_muaalem_float32.tflite" with ``--num_runs=1000 --warmup_runs=5``). ``FAKE_ADB_DROP_AFTER=N``
takes the device offline after N benchmark runs (``adb: device offline``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import sys
from pathlib import Path

import pytest
import torch

from edgederm.bench import ResultsStore, Settings, run_bench
from edgederm.bench.targets import AdbTarget, make_target, parse_benchmark_model
from edgederm.checkpoint import load_checkpoint
from edgederm.errors import EdgedermError
from edgederm.runtime.registry import BACKENDS

from helpers import tiny_checkpoint

SERIAL = "R5CT1234ABC"

FAKE_ADB = r'''#!__PYTHON__
import json, os, shlex, shutil, sys
from pathlib import Path

root = Path(os.environ["FAKE_ADB_DEVICE"])
log = Path(os.environ["FAKE_ADB_LOG"])
args = sys.argv[1:]
serial = None
if args[:1] == ["-s"]:
    serial, args = args[1], args[2:]
with log.open("a") as f:
    f.write(json.dumps({"serial": serial, "args": args}) + "\n")
offline = root / ".offline"
if serial not in (None, os.environ.get("FAKE_ADB_SERIAL")):
    sys.stderr.write(f"adb: device '{serial}' not found\n"); sys.exit(1)
if offline.exists():
    sys.stderr.write("adb: device offline\n"); sys.exit(1)

def dev(p):  # a device path inside the fake device's storage
    return root / p.lstrip("/")

cmd = args[0]
if cmd == "get-state":
    print("device"); sys.exit(0)
if cmd == "push":
    src, dst = Path(args[1]), dev(args[2])
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)
    print(f"{src}: 1 file pushed, 0 skipped. 41.3 MB/s ({src.stat().st_size} bytes in 0.002s)"); sys.exit(0)
if cmd != "shell":
    sys.stderr.write(f"fake adb: unsupported command {cmd}\n"); sys.exit(1)
line = " ".join(args[1:])
argv = shlex.split(line)
PROPS = {"ro.product.manufacturer": "Google", "ro.product.model": "Pixel 4", "ro.soc.model": "SM8150",
         "ro.board.platform": "msmnile", "ro.build.version.release": "13", "ro.build.version.sdk": "33",
         "ro.product.cpu.abi": "arm64-v8a"}
CPU = ("processor\t: {i}\nBogoMIPS\t: 38.40\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp "
       "cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x51\nCPU architecture: 8\nCPU variant\t: 0xd\n"
       "CPU part\t: {part}\nCPU revision\t: 14\n\n")
if argv[0] == "getprop":
    print(PROPS.get(argv[1], "")); sys.exit(0)
if argv[:2] == ["cat", "/proc/cpuinfo"]:
    sys.stdout.write("".join(CPU.format(i=i, part="0x805" if i < 4 else "0x804") for i in range(8))); sys.exit(0)
if argv[:2] == ["uname", "-m"]:
    print("aarch64"); sys.exit(0)
if argv[0] == "nproc":
    print(8); sys.exit(0)
if argv[0] == "cat" and "cpuinfo_max_freq" in line:
    print("\n".join(["1785600"] * 4 + ["2419200"] * 3 + ["2841600"])); sys.exit(0)
if argv[0] == "cat" and "scaling_governor" in line:
    print("schedutil"); sys.exit(0)
if argv[0] == "mkdir":
    dev(argv[-1]).mkdir(parents=True, exist_ok=True); sys.exit(0)
if argv[0] == "chmod":
    p = dev(argv[2]); p.chmod(int(argv[1], 8)); sys.exit(0)
if argv[0] == "rm":
    shutil.rmtree(dev(argv[-1]), ignore_errors=True); sys.exit(0)
if argv[0].endswith("/benchmark_model"):
    binary = dev(argv[0])
    if not binary.exists() or not os.access(binary, os.X_OK):
        sys.stderr.write(f"/system/bin/sh: {argv[0]}: can't execute: Permission denied\n"); sys.exit(126)
    flags = dict(a[2:].split("=", 1) for a in argv[1:] if a.startswith("--") and "=" in a)
    runs_file = root / ".runs"
    n = int(runs_file.read_text()) if runs_file.exists() else 0
    runs_file.write_text(str(n + 1))
    if n >= int(os.environ.get("FAKE_ADB_DROP_AFTER", "1000000")):
        offline.touch()
        sys.stderr.write("adb: device offline\n"); sys.exit(1)
    graph = flags.get("graph", "")
    if not dev(graph).exists():
        print(f"INFO: STARTING!\nERROR: Could not open '{graph}'.\nERROR: Benchmarking failed."); sys.exit(1)
    threads = flags.get("num_threads", "-1")
    gpu = flags.get("use_gpu") == "true"
    xnn = flags.get("use_xnnpack", "true") == "true"
    print("INFO: STARTING!")
    print("INFO: Log parameter values verbosely: [0]")
    print(f"INFO: Min num runs: [{flags.get('num_runs', 50)}]")
    print(f"INFO: Min warmup runs: [{flags.get('warmup_runs', 1)}]")
    print(f"INFO: Num threads: [{threads}]")
    print(f"INFO: Graph: [{graph}]")
    print("INFO: Signature to run: []")
    print(f"INFO: Use gpu: [{1 if gpu else 0}]" if gpu else f"INFO: Use xnnpack: [{1 if xnn else 0}]")
    print(f"INFO: Loaded model {graph}")
    print("INFO: Initialized TensorFlow Lite runtime.")
    if gpu:
        print("INFO: Created TensorFlow Lite delegate for GPU.")
        print("INFO: Replacing 12 out of 12 node(s) with delegate (TfLiteGpuDelegateV2) node, yielding 1 partitions for the whole graph.")
    elif xnn:
        print("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.")
        print("VERBOSE: Replacing 2168 out of 2168 node(s) with delegate (TfLiteXNNPackDelegate) node, yielding 1 partitions for subgraph 0.")
    print("INFO: The input model file size (MB): 24.6229")
    print("INFO: Initialized session in 119.515ms.")
    print("INFO: Running benchmark for at least 5 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.")
    print("INFO: count=9 first=87112 curr=51629 min=51629 max=87112 avg=58147.4 std=11478 p5=51629 median=51962 p95=87112")
    print("")
    print("INFO: Running benchmark for at least 1000 iterations and at least 1 seconds but terminate if exceeding 150 seconds.")
    print("INFO: count=1000 first=52162 curr=49785 min=49088 max=686105 avg=63743.2 std=60716 p5=49620 median=51891 p95=68628")
    print("")
    print("INFO: Inference timings in us: Init: 119515, First inference: 87112, Warmup (avg): 58147.4, Inference (avg): 63743.2")
    print("INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual "
          "memory footprint of the model at runtime. Take the information at your discretion.")
    print("INFO: Memory footprint delta from the start of the tool (MB): init=55.4961 overall=55.4961")
    sys.exit(0)
sys.stderr.write(f"fake adb: unsupported shell command {line}\n"); sys.exit(1)
'''


@pytest.fixture()
def fake_adb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "adb"
    exe.write_text(FAKE_ADB.replace("__PYTHON__", sys.executable), encoding="utf-8")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    device, log = tmp_path / "device", tmp_path / "adb-calls.jsonl"
    device.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_ADB_DEVICE", str(device))
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    monkeypatch.setenv("FAKE_ADB_SERIAL", SERIAL)
    binary = tmp_path / "android_aarch64_benchmark_model"
    binary.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 57 + b"fake aarch64 benchmark_model")
    return {"exe": exe, "device": device, "log": log, "binary": binary}


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture(scope="module")
def tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("litert_torch") is None or not BACKENDS["tflite"].available():
        pytest.skip("a real .tflite needs litert-torch and ai-edge-litert: pip install 'edgederm[tflite]'")
    import litert_torch

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("adb-model")
    members, card = load_checkpoint(tiny_checkpoint(d / "m.pt", size=32))
    path = d / "tflite-fp32" / "model.tflite"
    path.parent.mkdir()
    litert_torch.convert(members[0].build(), (torch.zeros(1, 3, 32, 32),)).export(str(path))
    c = card.copy()
    c.artifact = {"format": "tflite", "precision": "fp32", "target": "tflite-fp32"}
    c.metrics = {"gate": {"passed": True, "split": "val", "n": 25, "bacc": {"value": 0.48, "lo": 0.3, "hi": 0.66}}}
    BACKENDS["tflite"].embed_card(path, c)
    return path


def test_adb_target_pushes_runs_and_parses(fake_adb, tflite: Path, tmp_path: Path) -> None:
    target = make_target(f"adb:{SERIAL}", benchmark_model=str(fake_adb["binary"]), delegates=["xnnpack", "gpu"])
    assert isinstance(target, AdbTarget)
    ir = tmp_path / "ir" / "model.xml"  # not a .tflite: skipped with the reason, never pushed
    ir.parent.mkdir()
    ir.write_text("<net/>")
    results = run_bench([tflite, ir], target, tmp_path / "out", Settings(threads=[2], warmup=5, runs=1000, min_time_s=1),
                        progress=False)
    skipped = [r for r in results if r["status"] == "skipped"]
    assert len(skipped) == 2 and all(r["artifact"]["file"] == "model.xml" and ".tflite" in r["error"] for r in skipped)
    results = [r for r in results if r["status"] != "skipped"]
    assert [(r["delegate"], r["status"]) for r in results] == [("xnnpack", "ok"), ("gpu", "ok")]
    r = results[0]
    assert r["target"] == f"adb:{SERIAL}" and r["tool"] == "benchmark_model" and r["threads"] == 2
    lat = r["latency_ms"]  # from the regular run's Stat line (µs → ms), not the warm-up's
    assert lat == pytest.approx({"n": 1000, "min": 49.088, "max": 686.105, "mean": 63.7432, "std": 60.716, "p5": 49.62,
                                 "p50": 51.891, "p95": 68.628})
    assert r["load_ms"] == pytest.approx(119.515) and r["first_inference_ms"] == pytest.approx(87.112)
    assert r["warmup_avg_ms"] == pytest.approx(58.1474) and r["memory_footprint_mb"]["overall"] == pytest.approx(55.4961)
    assert r["throughput_ips"] == pytest.approx(1000 / 63.7432)
    assert r["delegation"] == {"nodes_delegated": 2168, "nodes_total": 2168, "delegate": "TfLiteXNNPackDelegate"}
    assert results[1]["delegation"]["delegate"] == "TfLiteGpuDelegateV2"
    # how it ran: binary, delegate, threads, and the exact command on the device
    bm = r["benchmark_model"]
    assert bm["binary"] == str(fake_adb["binary"]) and bm["delegate"] == "xnnpack" and bm["threads"] == 2
    cmd = r["exec_command"]
    assert cmd.startswith("/data/local/tmp/edgederm/benchmark_model --graph=/data/local/tmp/edgederm/")
    assert "--num_threads=2" in cmd and "--use_xnnpack=true" in cmd and "--num_runs=1000" in cmd and "--min_secs=1" in cmd
    gpu_cmd = results[1]["exec_command"]
    assert "--use_gpu=true" in gpu_cmd and "--use_xnnpack=false" in gpu_cmd
    # the device described from what adb reads there
    cpu = r["env"]["cpu"]
    assert cpu["arch"] == "aarch64" and cpu["logical_cpus"] == 8 and "asimddp" in cpu["isa"] and cpu["mhz"] == 2841.6
    assert cpu["governor"] == "schedutil" and "SM8150" in cpu["model"]
    assert r["env"]["android"]["ro.product.model"] == "Pixel 4"
    assert r["env"]["peak"]["cores_used"] == 2 and r["env"]["peak"]["flop_per_cycle"] == 16
    assert r["accuracy"]["bacc"] == 0.48
    # pushes: the binary and the model once each (two delegates, one push), then chmod 755
    log = calls(fake_adb["log"])
    assert all(c["serial"] == SERIAL for c in log)
    pushes = [c["args"] for c in log if c["args"][0] == "push"]
    assert pushes[0] == ["push", str(fake_adb["binary"]), "/data/local/tmp/edgederm/benchmark_model"]
    assert len(pushes) == 2 and pushes[1][1] == str(tflite) and pushes[1][2].endswith("-model.tflite")
    assert ["shell", "chmod", "755", "/data/local/tmp/edgederm/benchmark_model"] in [c["args"] for c in log]
    runs = [c for c in log if c["args"][0] == "shell" and "benchmark_model --graph" in c["args"][1]]
    assert len(runs) == 2
    # cleaned up afterwards
    assert not (fake_adb["device"] / "data/local/tmp/edgederm").exists()
    assert len(ResultsStore(tmp_path / "out").read()) == 4


def test_device_drop_mid_run_keeps_the_finished_result(fake_adb, tflite: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_ADB_DROP_AFTER", "1")
    out = tmp_path / "out"
    with pytest.raises(EdgedermError) as err:
        run_bench([tflite], f"adb:{SERIAL}", out, Settings(threads=[1, 4], runs=50), progress=False,
                  target_options={"benchmark_model": str(fake_adb["binary"])})
    msg = str(err.value)
    assert "\n" not in msg and "device not available" in msg and "device offline" in msg and "1 result(s) of this run kept" in msg
    assert err.value.exit_code == 3
    kept = ResultsStore(out).read()
    assert [(r["status"], r["threads"]) for r in kept] == [("ok", 1)]


def test_wrong_serial_and_missing_binary_are_one_line(fake_adb, tflite: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgedermError, match="not found") as err:
        run_bench([tflite], "adb:OTHER", tmp_path / "o", Settings(runs=1), progress=False,
                  target_options={"benchmark_model": str(fake_adb["binary"])})
    assert "\n" not in str(err.value)
    with pytest.raises(EdgedermError, match="--benchmark-model"):
        make_target("adb")
    with pytest.raises(EdgedermError, match="binary not found"):
        make_target("adb", benchmark_model=str(tmp_path / "nope"))
    with pytest.raises(EdgedermError, match="unknown delegate"):
        make_target("adb", benchmark_model=str(fake_adb["binary"]), delegates=["hexagon"])
    with pytest.raises(EdgedermError, match="do not apply to adb"):
        make_target("adb", benchmark_model=str(fake_adb["binary"]), remote_python="python3")


def test_parse_older_benchmark_model_output_without_percentiles() -> None:
    # TensorFlow 2.8-era output (no p5/median/p95 on the Stat line; scientific notation for large values)
    text = """Initialized session in 17.187ms.
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=1 curr=3512391

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=50 first=2990275 curr=2913402 min=2727568 max=3189954 avg=2.95034e+06 std=109798

Inference timings in us: Init: 17187, First inference: 3512391, Warmup (avg): 3.51239e+06, Inference (avg): 2.95034e+06
Memory footprint delta from the start of the tool (MB): init=4.21094 overall=46.0859
"""
    p = parse_benchmark_model(text)
    assert p["latency_ms"] == pytest.approx({"n": 50, "min": 2727.568, "max": 3189.954, "mean": 2950.34, "std": 109.798})
    assert p["init_ms"] == pytest.approx(17.187) and p["first_inference_ms"] == pytest.approx(3512.391)
    assert p["memory_mb"] == {"init": 4.21094, "overall": 46.0859}
    assert parse_benchmark_model("ERROR: Failed to allocate tensors!\nERROR: Benchmarking failed.") == {}
