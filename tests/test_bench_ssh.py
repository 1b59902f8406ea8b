"""The ssh:// bench target end to end against a real OpenSSH server on 127.0.0.1.

The test starts Debian's ``sshd`` on a free port with its own configuration: a temporary host key,
key-only authentication with a temporary client key, no PAM, ``StrictModes no`` (the keys live in
a temporary folder). The target copies the runner and the model with ``scp``, runs the runner with
``--remote-python`` (this venv's Python: the "remote" host is this machine) and fetches the JSON
back. A second test stops the server after the first result: the run must end with one error line
and keep that result. The server is always stopped by its pid.

``.ci/run`` installs the server (``apt-get install -y openssh-server``); without it these tests skip.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch

from edgederm.bench import ResultsStore, Settings, run_bench
from edgederm.bench.targets import SshTarget, make_target
from edgederm.checkpoint import load_checkpoint
from edgederm.errors import EdgedermError
from edgederm.runtime.registry import BACKENDS

from helpers import tiny_checkpoint

SSHD = "/usr/sbin/sshd"
pytestmark = [
    pytest.mark.skipif(not Path(SSHD).exists(), reason="OpenSSH server not installed (apt-get install -y openssh-server)"),
    pytest.mark.skipif(shutil.which("ssh") is None or shutil.which("ssh-keygen") is None, reason="OpenSSH client not installed"),
    pytest.mark.skipif(not BACKENDS["onnx"].available(), reason="onnxruntime is not installed"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sshd:
    def __init__(self, root: Path) -> None:
        self.root = root
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
        shutil.copy(root / "client_key.pub", root / "authorized_keys")
        self.port = _free_port()
        cfg = root / "sshd_config"
        cfg.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {root / 'host_key'}",
            f"AuthorizedKeysFile {root / 'authorized_keys'}", "PubkeyAuthentication yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password", f"PidFile {root / 'sshd.pid'}",
            "StrictModes no", "UsePAM no", "Subsystem sftp internal-sftp", "LogLevel ERROR",
        ]) + "\n")
        if os.geteuid() == 0:  # sshd refuses to start as root without its privilege-separation folder
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.proc.stderr.read().decode(errors='replace')[-500:]}")  # type: ignore[union-attr]
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as c:
                    if c.recv(4).startswith(b"SSH-"):
                        break
            except OSError:
                time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError("sshd did not start listening")

    @property
    def url(self) -> str:
        return f"ssh://{getpass.getuser()}@127.0.0.1:{self.port}"

    def options(self) -> dict:
        return {"identity": str(self.root / "client_key"), "remote_python": sys.executable,
                "ssh_options": ["StrictHostKeyChecking=no", f"UserKnownHostsFile={self.root / 'known_hosts'}", "LogLevel=ERROR"]}

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture()
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    root = tmp_path / "sshd"
    root.mkdir()
    server = Sshd(root)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("ssh-models")
    ckpt = tiny_checkpoint(d / "model.pt", size=32)
    members, card = load_checkpoint(ckpt)
    out = {"torch": ckpt}
    for name in ("a", "b"):
        p = d / name / "model.onnx"
        p.parent.mkdir()
        torch.onnx.export(members[0].build(), torch.zeros(1, 3, 32, 32), str(p), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        c = card.copy()
        c.artifact = {"format": "onnx", "precision": "fp32", "target": f"onnx-{name}"}
        c.metrics = {"gate": {"passed": True, "split": "val", "n": 30, "bacc": {"value": 0.5, "lo": 0.4, "hi": 0.6}}}
        BACKENDS["onnx"].embed_card(p, c)
        out[name] = p
    if BACKENDS["openvino"].available():
        import openvino as ov

        xml = d / "ir" / "model.xml"
        xml.parent.mkdir()
        ov.save_model(ov.convert_model(str(out["a"])), str(xml), compress_to_fp16=False)
        out["openvino"] = xml
    return out


def test_ssh_target_end_to_end(sshd: Sshd, models: dict[str, Path], tmp_path: Path) -> None:
    target = make_target(sshd.url, **sshd.options())
    assert isinstance(target, SshTarget)
    remote_dir = target.remote_dir
    artifacts = [models["a"], models["torch"]] + ([models["openvino"]] if "openvino" in models else [])
    results = run_bench(artifacts, target, tmp_path / "out", Settings(threads=[1], batches=[1, 2], warmup=2, runs=8),
                        progress=False)
    by = {(r["artifact"]["file"], r["batch"]): r for r in results}
    onnx = by[("model.onnx", 1)]
    assert onnx["status"] == "ok", onnx.get("error")
    assert onnx["target"] == sshd.url and onnx["target_kind"] == "ssh"
    assert onnx["tool"] == "runner" and onnx["runtime"] == "onnxruntime"
    assert onnx["latency_ms"]["n"] == 8 and len(onnx["samples_ms"]) == 8 and onnx["load_ms"] > 0
    assert onnx["input_shape"] == [1, 3, 32, 32] and by[("model.onnx", 2)]["input_shape"] == [2, 3, 32, 32]
    # the exact command that ran on the host, and how it was reached
    assert onnx["exec_command"].startswith(f"{sys.executable} {remote_dir}/runner.py --model {remote_dir}/a0/model.onnx")
    assert "--threads 1" in onnx["exec_command"] and "BatchMode=yes" in onnx["transport_command"]
    assert f" -- {target.dest} " in onnx["transport_command"]  # the destination can never be read as an option
    assert onnx["env"]["cpu"]["logical_cpus"] == os.cpu_count() and onnx["env"]["versions"]["onnxruntime"]
    assert onnx["peak_rss_bytes"] > 0 and onnx["accuracy"]["bacc"] == 0.5 and onnx["flops"]["per_image"] > 1e6
    # PyTorch checkpoints are not run remotely: skipped with the reason
    pt = by[("model.pt", 1)]
    assert pt["status"] == "skipped" and "local target" in pt["error"]
    if "openvino" in models:
        assert by[("model.xml", 1)]["status"] == "ok" and by[("model.xml", 1)]["runtime"] == "openvino"
        assert "/a2/model.xml" in by[("model.xml", 1)]["exec_command"] or "/a1/model.xml" in by[("model.xml", 1)]["exec_command"]
    assert len(ResultsStore(tmp_path / "out").read()) == len(results)
    # the remote working folder is removed afterwards (the "remote" host is this machine)
    assert not Path(remote_dir).exists()


def test_device_drop_keeps_finished_results(sshd: Sshd, models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"

    def drop_after_first(result: dict) -> None:
        sshd.stop()  # the device goes away between two configurations

    target = make_target(sshd.url, **sshd.options())
    try:
        with pytest.raises(EdgedermError) as err:
            run_bench([models["a"], models["b"]], target, out, Settings(threads=[1], warmup=1, runs=4), progress=False,
                      on_result=drop_after_first)
    finally:  # the dropped "device" could not clean up; it is this machine
        shutil.rmtree(target.remote_dir, ignore_errors=True)
    msg = str(err.value)
    assert "\n" not in msg and sshd.url in msg and "1 result(s) of this run kept" in msg and str(out) in msg
    assert err.value.exit_code == 3
    kept = ResultsStore(out).read()
    assert len(kept) == 1 and kept[0]["status"] == "ok" and kept[0]["artifact"]["label"] == "onnx-a"


def test_unusable_remote_python_is_one_line(sshd: Sshd, models: dict[str, Path], tmp_path: Path) -> None:
    opts = {**sshd.options(), "remote_python": "/nonexistent/python3"}
    target = make_target(sshd.url, **opts)
    with pytest.raises(EdgedermError, match="remote-python") as err:
        run_bench([models["a"]], target, tmp_path / "out", Settings(runs=1), progress=False)
    assert "\n" not in str(err.value)
    assert not Path(target.remote_dir).exists()  # what was copied there is removed
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_unreachable_host_is_a_device_error(models: dict[str, Path], tmp_path: Path) -> None:
    url = f"ssh://nobody@127.0.0.1:{_free_port()}"  # nothing listens there
    with pytest.raises(EdgedermError, match="ssh failed") as err:
        run_bench([models["a"]], url, tmp_path / "out", Settings(runs=1), progress=False,
                  target_options={"ssh_options": ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null"]})
    assert "\n" not in str(err.value)


def test_option_like_host_never_reaches_ssh_as_an_option(sshd: Sshd, models: dict[str, Path], tmp_path: Path) -> None:
    """``ssh://-oProxyCommand=CMD`` would make ssh run CMD: refused when the target is parsed, and
    even a destination set by hand past that check reaches the real ssh only after ``--``."""
    marker = tmp_path / "proxy-command-ran"
    script = tmp_path / "proxy.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    for spec in (f"ssh://-oProxyCommand={script}", f"ssh://-oProxyCommand={script}@127.0.0.1:{sshd.port}"):
        with pytest.raises(EdgedermError, match="must not begin with '-'") as err:
            run_bench([models["a"]], spec, tmp_path / "out", Settings(runs=1), progress=False, target_options=sshd.options())
        assert "\n" not in str(err.value)
    target = make_target(sshd.url, **sshd.options())
    target._check_alive()  # the real server answers through the same argv
    target.dest = f"-oProxyCommand={script}"
    with pytest.raises(EdgedermError, match="ssh failed"):
        target._check_alive()  # ssh takes it as a host name it cannot resolve
    assert not marker.exists()
    assert not (tmp_path / "out" / "results.jsonl").exists()
