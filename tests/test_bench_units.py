"""The bench harness's parts: statistics, the timing loop, CPU description and peak FLOP/s, the
results store, tool-output parsers (trtexec, tegrastats), BACC from cards, the Pareto frontier,
target parsing and artifact discovery."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgederm.bench.env import isa_summary
from edgederm.bench.report import latest, pareto_points
from edgederm.bench.runner import (
    cpu_from_parts,
    fp32_flop_per_cycle,
    parse_cpuinfo,
    parse_tegrastats_line,
    parse_trtexec,
    peak_gflops,
    summarize,
    timed_runs,
)
from edgederm.bench.store import ResultsStore, is_bench_folder
from edgederm.bench.targets import LocalTarget, SshTarget, card_accuracy, expand_artifacts, make_target
from edgederm.errors import EdgedermError

from helpers import tiny_card

X86 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
cpu MHz\t\t: 2000.000
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 avx512f avx512bw avx512vl avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8 hypervisor

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
cpu MHz\t\t: 2000.000
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 avx512f avx512bw avx512vl avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8 hypervisor
"""

# A Jetson Orin Nano (6 x Cortex-A78AE); Arm kernels print Features, no model name and no MHz.
ARM = "".join(f"""processor\t: {i}
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm paca pacg
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd42
CPU revision\t: 1

""" for i in range(6))


def test_summarize_matches_numpy_linear_percentiles() -> None:
    rng = np.random.default_rng(1)
    x = list(rng.lognormal(1.0, 0.4, 257))
    s = summarize(x)
    for q in (50, 90, 99):
        assert s[f"p{q}"] == pytest.approx(float(np.percentile(x, q)))
    assert s["mean"] == pytest.approx(float(np.mean(x))) and s["std"] == pytest.approx(float(np.std(x)))
    assert (s["min"], s["max"], s["n"]) == (min(x), max(x), 257)
    assert summarize([3.0])["p99"] == 3.0
    with pytest.raises(ValueError):
        summarize([])


def test_timed_runs_counts_first_warmup_and_timed_calls() -> None:
    calls = []
    first, samples = timed_runs(lambda: calls.append(1), warmup=3, runs=7)
    assert len(samples) == 7 and len(calls) == 1 + 3 + 7 and first >= 0
    calls.clear()
    _, samples = timed_runs(lambda: calls.append(1), warmup=0, runs=2, min_time_s=0.03)  # by time: at least 30 ms of runs
    assert len(samples) >= 2 and len(calls) == 1 + len(samples)
    _, samples = timed_runs(lambda: None, warmup=0, runs=10**9, max_time_s=0.02)  # capped by --max-time
    assert 1 <= len(samples) < 10**9


def test_x86_cpu_description_and_peak() -> None:
    info = parse_cpuinfo(X86)
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+" and info["mhz_cpuinfo"] == 2000.0
    assert info["physical_cores_cpuinfo"] == 1 and info["logical_cpus_cpuinfo"] == 2 and info["hypervisor"]
    cpu = cpu_from_parts(X86, arch="x86_64", usable_cpus=2, logical_cpus=2)
    assert cpu["mhz"] == 2000.0 and "cpu MHz" in cpu["mhz_source"]
    assert {"avx512f", "avx512_vnni", "amx_int8", "fma", "avx2"} <= set(cpu["isa"])
    # cpufreq's maximum wins over the nominal cpuinfo clock
    assert cpu_from_parts(X86, arch="x86_64", usable_cpus=2, logical_cpus=2, max_khz=[3800000] * 2)["mhz"] == 3800.0
    per_cycle, why = fp32_flop_per_cycle(cpu["isa"], "x86_64")
    assert per_cycle == 64 and "16 FP32 lanes x 2 FLOP per FMA x 2 FMA units" in why
    assert fp32_flop_per_cycle(["avx", "avx2", "fma"], "x86_64")[0] == 32
    assert fp32_flop_per_cycle(["avx"], "x86_64")[0] == 16
    assert fp32_flop_per_cycle(["sse4_2"], "x86_64")[0] == 8
    assert fp32_flop_per_cycle(["avx512f", "fma"], "x86_64", fma_units=1)[0] == 32
    peak = peak_gflops(cpu, threads=4)
    # one physical core here (both logical CPUs share core id 0): threads beyond it add no FMA units
    assert peak["cores"] == 1 and peak["cores_used"] == 1 and peak["gflops"] == pytest.approx(2.0 * 64)
    assert peak["formula"] == "1 cores x 2000 MHz x 64 FLOP/cycle = 128.0 GFLOP/s"
    assert "AVX-512 (F, BW, VL, VNNI, BF16)" in isa_summary(cpu["isa"]) and "AMX (tiles, BF16, INT8)" in isa_summary(cpu["isa"])


def test_arm_cpu_description_and_peak() -> None:
    cpu = cpu_from_parts(ARM, arch="aarch64", usable_cpus=6, logical_cpus=6, max_khz=[1510400] * 6, governor="schedutil")
    assert cpu["model"] == "Arm implementer 0x41 part 0xd42"
    assert cpu["physical_cores"] is None and cpu["logical_cpus"] == 6 and "asimddp" in cpu["isa"]
    assert cpu["mhz"] == pytest.approx(1510.4) and cpu["governor"] == "schedutil"
    peak = peak_gflops(cpu, threads=None)
    assert peak["flop_per_cycle"] == 16 and peak["cores_used"] == 6
    assert peak["machine_gflops"] == pytest.approx(6 * 1.5104 * 16)
    assert isa_summary(cpu["isa"]) == "NEON (FP16, dot-product)"
    assert peak_gflops({**cpu, "mhz": None}, 1) is None  # no clock: no peak claimed


def test_store_appends_and_never_rewrites(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = ResultsStore(tmp_path / "b")
    assert store.read() == [] and not is_bench_folder(tmp_path / "b")
    store.append({"id": "a", "latency_ms": {"p50": np.float64(1.5)}})
    before = store.path.read_bytes()
    store.append({"id": "b"})
    after = store.path.read_bytes()
    assert after.startswith(before) and after.count(b"\n") == 2  # the first line is untouched
    assert [r["id"] for r in store.read()] == ["a", "b"] and store.read()[0]["latency_ms"]["p50"] == 1.5
    assert is_bench_folder(tmp_path / "b")
    with open(store.path, "ab") as f:  # a write cut short by a hard kill
        f.write(b'{"schema": "edgederm.bench.result", "id": "c", "lat')
    assert [r["id"] for r in store.read()] == ["a", "b"]
    assert "not a complete JSON document" in caplog.text
    store2 = ResultsStore(tmp_path / "c")
    store2.path.parent.mkdir()
    store2.path.write_text(json.dumps({"schema": "edgederm.bench.result", "schema_version": 99}) + "\n")
    with pytest.raises(EdgedermError, match="newer"):
        store2.read()
    with pytest.raises(ValueError):  # NaN is not JSON: refused before anything is written
        store.append({"id": "d", "x": float("nan")})


def test_parse_trtexec_performance_summary() -> None:
    # TensorRT 10 trtexec's summary block (sampleReporting.cpp format)
    text = """[04/11/2025-15:15:48] [I] TensorRT version: 10.3.0
[04/11/2025-15:15:52] [I] === Performance summary ===
[04/11/2025-15:15:52] [I] Throughput: 32.7494 qps
[04/11/2025-15:15:52] [I] Latency: min = 30.7003 ms, max = 31.6415 ms, mean = 30.8066 ms, median = 30.7695 ms, percentile(90%) = 30.8008 ms, percentile(95%) = 31.1944 ms, percentile(99%) = 31.5444 ms
[04/11/2025-15:15:52] [I] Enqueue Time: min = 0.00305176 ms, max = 0.0141602 ms, mean = 0.00393677 ms, median = 0.00360107 ms, percentile(90%) = 0.00494385 ms, percentile(95%) = 0.00585938 ms, percentile(99%) = 0.00842285 ms
[04/11/2025-15:15:52] [I] GPU Compute Time: min = 30.1056 ms, max = 31.0457 ms, mean = 30.2108 ms, median = 30.2017 ms, percentile(90%) = 30.25 ms, percentile(95%) = 30.6 ms, percentile(99%) = 30.9 ms
"""
    p = parse_trtexec(text)
    assert p["throughput_qps"] == pytest.approx(32.7494) and p["tensorrt_version"] == "10.3.0"
    assert p["latency_ms"] == pytest.approx({"min": 30.7003, "max": 31.6415, "mean": 30.8066, "p50": 30.7695,
                                             "p90": 30.8008, "p95": 31.1944, "p99": 31.5444})
    assert p["gpu_compute_ms"]["p50"] == pytest.approx(30.2017)


def test_parse_tegrastats_lines() -> None:
    orin = ("11-21-2023 16:20:34 RAM 3350/7620MB (lfb 3x4MB) SWAP 0/3810MB (cached 0MB) CPU [12%@1510,3%@1510,5%@1510,"
            "1%@1510,0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 45%@[624] cpu@49.5C soc2@47.8C "
            "VDD_IN 5118mW/5003mW VDD_CPU_GPU_CV 1036mW/950mW VDD_SOC 1594mW/1580mW")
    assert parse_tegrastats_line(orin) == {"VDD_IN": 5118, "VDD_CPU_GPU_CV": 1036, "VDD_SOC": 1594}
    nano = ("RAM 1528/3956MB (lfb 120x4MB) SWAP 0/1978MB (cached 0MB) CPU [3%@102,2%@102,0%@102,0%@102] EMC_FREQ 0%@1600 "
            "GR3D_FREQ 0%@76 APE 25 PLL@21C CPU@23.5C PMIC@100C GPU@22C POM_5V_IN 1979/1979 POM_5V_GPU 0/0 POM_5V_CPU 241/241")
    assert parse_tegrastats_line(nano) == {"POM_5V_IN": 1979, "POM_5V_GPU": 0, "POM_5V_CPU": 241}
    assert parse_tegrastats_line("RAM 1/2MB CPU [1%@100]") == {}


def test_card_accuracy_prefers_the_gate() -> None:
    c = tiny_card()
    assert card_accuracy(None) is None and card_accuracy(c) is None
    c.metrics = {"reference": {"val": {"n": 80, "bacc": {"value": 0.7, "lo": 0.6, "hi": 0.8}}}}
    assert card_accuracy(c)["bacc"] == 0.7 and "not gated" in card_accuracy(c)["source"]
    c.metrics["val"] = {"n": 80, "bacc": {"value": 0.68, "lo": 0.58, "hi": 0.78}}
    assert card_accuracy(c)["bacc"] == 0.68 and card_accuracy(c)["source"] == "card metrics: val (n=80)"
    c.metrics["gate"] = {"passed": False, "split": "val", "n": 80, "bacc": {"value": 0.66, "lo": 0.55, "hi": 0.77}}
    acc = card_accuracy(c)
    assert acc == {"bacc": 0.66, "lo": 0.55, "hi": 0.77, "source": "export gate (val, n=80)", "gate_passed": False}


def _res(label: str, p50: float, bacc: float | None, threads: int = 1, batch: int = 1, target: str = "local") -> dict:
    return {"status": "ok", "target": target, "runtime": "rt", "delegate": None, "threads": threads, "batch": batch,
            "artifact": {"sha256": label, "label": label}, "latency_ms": {"p50": p50},
            "accuracy": None if bacc is None else {"bacc": bacc, "lo": None, "hi": None, "source": "s"}}


def test_pareto_frontier_and_fastest_thread_count() -> None:
    results = [_res("fp32", 10.0, 0.80), _res("fp32", 6.0, 0.80, threads=2), _res("int8", 4.0, 0.78),
               _res("fp16", 8.0, 0.79), _res("slow-bad", 12.0, 0.70), _res("no-card", 1.0, None),
               _res("int8", 1.0, 0.78, batch=8)]  # batch 8 is not compared with batch 1
    pts = {p["label"]: p for p in pareto_points(results)}
    assert set(pts) == {"fp32", "int8", "fp16", "slow-bad"}
    assert pts["fp32"]["latency_ms"] == 6.0 and pts["fp32"]["threads"] == 2  # the artifact's fastest configuration
    assert pts["int8"]["latency_ms"] == 4.0
    assert {k for k, p in pts.items() if p["frontier"]} == {"int8", "fp32"}  # fp16 is slower AND less accurate than fp32


def test_latest_result_per_configuration() -> None:
    a1, b, a2 = _res("a", 5.0, 0.5), _res("b", 3.0, 0.5), _res("a", 4.0, 0.5)
    assert [r["latency_ms"]["p50"] for r in latest([a1, b, a2])] == [4.0, 3.0]


def test_make_target_parses_and_validates() -> None:
    assert isinstance(make_target("local"), LocalTarget)
    t = make_target("ssh://jetson@10.0.0.5:2222", remote_python="/usr/bin/python3.8")
    assert isinstance(t, SshTarget) and (t.user, t.host, t.port, t.name) == ("jetson", "10.0.0.5", 2222, "ssh://jetson@10.0.0.5:2222")
    assert t.ssh_argv("true")[:5] == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    assert make_target("ssh://orin").name == "ssh://orin"
    for bad, msg in (("bluetooth", "unknown bench target"), ("ssh://", "bad ssh target"), ("ssh://h:notaport", "bad port")):
        with pytest.raises(EdgedermError, match=msg):
            make_target(bad)
    with pytest.raises(EdgedermError, match="--remote-python do not apply to local"):
        make_target("local", remote_python="python3")
    make_target("local", remote_python=None, ssh_options=[])  # unset options are fine


@pytest.mark.parametrize("spec", ["ssh://-oProxyCommand=/tmp/x", "ssh://-oProxyCommand=/tmp/x@host", "ssh://u@-oProxyCommand=x:22",
                                  "ssh://a b@host", "ssh://user@ho\tst", "ssh://user@ho\nst", "ssh://us\x00er@host",
                                  "ssh://user@host\x7f", "ssh://@host"])
def test_ssh_target_refuses_option_like_or_odd_hosts(spec: str) -> None:
    with pytest.raises(EdgedermError, match="bad ssh target") as err:
        make_target(spec)
    assert "\n" not in str(err.value)  # one line: the spec is shown as a repr


def test_ssh_argv_ends_options_before_the_destination() -> None:
    t = make_target("ssh://jetson@10.0.0.5:2222")
    argv = t.ssh_argv("true")
    assert argv[-3:] == ["--", "jetson@10.0.0.5", "true"] and argv[argv.index("-p") + 1] == "2222"
    v6 = make_target("ssh://pi@[fe80::1]:22")
    assert v6.dest == "pi@fe80::1" and v6.scp_dest == "pi@[fe80::1]"


def test_expand_artifacts_skips_rejected_and_temporary(tmp_path: Path) -> None:
    exp = tmp_path / "export"
    for rel in ("onnx/model.onnx", "openvino/model.xml", "openvino/model.bin", "tflite/model.tflite",
                ".rejected/onnx-int8/model.onnx", ".onnx.tmp-123-ab/model.onnx", "onnx/model.onnx.card.json"):
        (exp / rel).parent.mkdir(parents=True, exist_ok=True)
        (exp / rel).write_bytes(b"x")
    (tmp_path / "model.pt").write_bytes(b"x")
    found = expand_artifacts([exp, tmp_path / "model.pt", exp / "onnx" / "model.onnx"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "export/onnx/model.onnx", "export/openvino/model.xml", "export/tflite/model.tflite", "model.pt"]
    with pytest.raises(EdgedermError, match="not found"):
        expand_artifacts([tmp_path / "nope.onnx"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgedermError, match="no artifacts"):
        expand_artifacts([tmp_path / "empty"])


def _script(path: Path, body: str) -> Path:
    import stat
    import sys

    path.write_text(f"#!{sys.executable}\n{body}", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_tegrastats_sampler_averages_the_rails(tmp_path: Path) -> None:
    import time

    from edgederm.bench.runner import Tegrastats

    exe = _script(tmp_path / "tegrastats", (
        "import sys, time\n"
        "assert sys.argv[1:] == ['--interval', '100'], sys.argv\n"
        "for mw in (5000, 5200, 5400):\n"
        "    print(f'RAM 3350/7620MB CPU [12%@1510] VDD_IN {mw}mW/{mw}mW VDD_SOC 1500mW/1500mW', flush=True)\n"
        "time.sleep(30)\n"))
    t = Tegrastats(str(exe))
    deadline = time.monotonic() + 10
    while len(t.samples) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    power = t.stop()  # terminates the sampler (it would otherwise run for 30 s)
    assert power == {"source": "tegrastats", "samples": 3, "rails_mw": {"VDD_IN": 5200.0, "VDD_SOC": 1500.0}, "total_mw": 5200.0}
    assert t.proc.poll() is not None


def test_runner_drives_trtexec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from edgederm.bench import runner

    args_file = tmp_path / "args.json"
    _script(tmp_path / "trtexec", (
        "import json, sys\n"
        f"json.dump(sys.argv[1:], open({str(args_file)!r}, 'w'))\n"
        "print('[I] TensorRT version: 10.3.0')\n"
        "print('[I] === Performance summary ===')\n"
        "print('[I] Throughput: 318.007 qps')\n"
        "print('[I] Latency: min = 3.12671 ms, max = 3.15479 ms, mean = 3.14068 ms, median = 3.14062 ms, '\n"
        "      'percentile(90%) = 3.14587 ms, percentile(95%) = 3.14771 ms, percentile(99%) = 3.15039 ms')\n"))
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    assert runner.main(["--model", str(model), "--runtime", "trtexec", "--batch", "4", "--runs", "200",
                        "--trt-shapes", "input:4x3x224x224", "--no-tegrastats"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["tool"] == "trtexec" and doc["latency_ms"]["p50"] == pytest.approx(3.14062)
    assert doc["latency_ms"]["p99"] == pytest.approx(3.15039) and doc["throughput_ips"] == pytest.approx(4 * 318.007)
    assert json.loads(args_file.read_text()) == [f"--onnx={model}", "--iterations=200", "--duration=0", "--warmUp=500",
                                                 "--percentile=90,99", "--useSpinWait", "--shapes=input:4x3x224x224"]
    assert doc["trtexec"]["command"].endswith("--shapes=input:4x3x224x224") and doc["env"]["cpu"]["arch"]


def test_engine_without_tensorrt_is_skipped_and_its_sidecar_card_is_read(tmp_path: Path) -> None:
    import importlib.util

    from edgederm.bench.targets import Settings, load_artifact

    engine = tmp_path / "tensorrt-fp16" / "model.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"serialized engine bytes")
    card = tiny_card()
    card.artifact = {"format": "tensorrt", "precision": "fp16", "target": "tensorrt-fp16"}
    card.metrics = {"gate": {"passed": True, "split": "val", "n": 10, "bacc": {"value": 0.5, "lo": 0.3, "hi": 0.7}}}
    card.write_sidecar(engine)
    art = load_artifact(engine)
    assert art.backend == "tensorrt" and art.info["label"] == "tensorrt-fp16" and art.accuracy["bacc"] == 0.5
    jobs = LocalTarget().plan([art], Settings(threads=[1, 2]))
    assert [j.threads for j in jobs] == [1, 2] and [j.runtime for j in jobs] == ["tensorrt", "tensorrt"]
    if importlib.util.find_spec("tensorrt") is None:
        assert all("tensorrt" in (j.skip or "") for j in jobs)


def test_report_from_remote_style_results(tmp_path: Path) -> None:
    """Results with percentiles only (benchmark_model), with samples (runner), a failure and a skip."""
    from edgederm.bench.report import write_report

    store = ResultsStore(tmp_path)
    env = {"cpu": {"model": "SM8150 (Arm)", "arch": "aarch64", "isa": ["asimd", "asimddp"], "mhz": 2841.6,
                   "mhz_source": "cpufreq cpuinfo_max_freq (fastest cluster)", "logical_cpus": 8, "usable_cpus": 8},
           "peak": {"isa_basis": "NEON", "cores": 8, "per_core_gflops": 45.5, "machine_gflops": 363.7, "gflops": 90.9},
           "android": {"ro.product.manufacturer": "Google", "ro.product.model": "Pixel 4", "ro.build.version.release": "13"}}
    base = {"run_id": "r1", "target": "adb:X", "target_kind": "adb", "runtime": "litert-benchmark_model", "threads": 2, "batch": 1,
            "artifact": {"sha256": "aa", "label": "tflite-int8", "precision": "int8", "size_bytes": 4_000_000},
            "accuracy": {"bacc": 0.7, "lo": 0.6, "hi": 0.8, "source": "export gate (val, n=50)", "gate_passed": True},
            "env": env, "command": "edgederm bench x --target adb:X", "exec_command": "/data/local/tmp/edgederm/benchmark_model --graph=..."}
    store.append({**base, "status": "ok", "delegate": "xnnpack", "tool": "benchmark_model",
                  "latency_ms": {"n": 50, "min": 9.0, "max": 30.0, "mean": 11.0, "std": 2.0, "p5": 9.5, "p50": 10.0, "p95": 14.0},
                  "load_ms": 119.5, "first_inference_ms": 87.1, "memory_footprint_mb": {"init": 5.0, "overall": 55.5}})
    store.append({**base, "status": "ok", "delegate": "gpu", "tool": "benchmark_model", "latency_ms": {"mean": 6.0}})
    store.append({**base, "status": "error", "delegate": "nnapi", "error": "adb:X: benchmark_model failed (ERROR: NNAPI delegate failed)"})
    store.append({**base, "status": "skipped", "delegate": "xnnpack", "artifact": {"sha256": "bb", "label": "onnx"},
                  "error": "adb targets run .tflite models (LiteRT benchmark_model)"})
    paths = write_report(tmp_path)
    md = paths["markdown"].read_text(encoding="utf-8")
    assert "| tflite-int8 | adb:X | litert-benchmark_model [xnnpack] | 2 | 1 | 10.00 | — | — | 11.00 ± 2.00 | 9.00 | 30.00 | 50 |" in md
    assert "| tflite-int8 | adb:X | litert-benchmark_model [gpu] | 2 | 1 | — | — | — | 6.00 |" in md  # a mean only
    assert "55.5 MB Δ (tool)" in md and "Google Pixel 4, Android 13" in md and "NEON (dot-product)" in md
    assert "**error** — adb:X: benchmark_model failed" in md and "**skipped**" in md
    assert (tmp_path / "plots" / "latency-adb_X.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "plots" / "pareto.png").exists()
