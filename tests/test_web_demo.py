"""The browser demo (``edgederm serve-demo``) against the Python runtime, in headless Chromium.

One node run (tests/web/run_demo.mjs, playwright-core driving Debian's /usr/bin/chromium) loads
the page from a real ``serve-demo`` server on 127.0.0.1 and checks, on real images:

- preprocessing: the page's Pillow-exact resize/crop/normalise equals ``PreprocessSpec.apply``
  (all four specs of tests/golden/preprocess.json, plus the golden values themselves) when it is
  fed the pixels Python decoded (served as PNG: JPEG decoders may differ);
- probabilities: on those pixels, the browser (onnxruntime-web, WASM) matches
  ``edgederm.runtime.load(artifact).predict`` within PROB_ATOL with the same decisions under a
  priority_thresholds rule and four TTA views; on the original JPEGs, decoded by Chromium, it
  matches Python's full-resolution decode within JPEG_PROB_ATOL;
- the decision rule on many probability vectors, the file-input path of the UI, and a screenshot.

Without chromium/node/the npm packages the test skips with the install commands, unless
EDGEDERM_REQUIRE_DEMOS=1 (CI), where it fails.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from edgederm.card import load_card
from edgederm.checkpoint import load_checkpoint
from edgederm.data.images import load_image
from edgederm.decision import decide
from edgederm.demo.serve import NPM_INSTALL, demo_card, find_ort_dist, make_server, start_in_thread
from edgederm.errors import EdgedermError
from edgederm.preprocess import PreprocessSpec, decode_size
from edgederm.runtime import load
from edgederm.card import embed_card

from helpers import HAM7, rgb_images, tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "preprocess.json"
SCRIPT = REPO / "tests" / "web" / "run_demo.mjs"
CHROMIUM = Path(os.environ.get("EDGEDERM_CHROMIUM", "/usr/bin/chromium"))
IMAGES = {  # the golden images: small real dermoscopy JPEGs from three data sets
    "ham": "ham10000/HAM10000_images_part_1/ISIC_0024327.jpg",
    "isic": "isic2019/ISIC_2019_Training_Input/ISIC_0000045_downsampled.jpg",
    "ph2": "ph2/PH2 Dataset images/IMD002/IMD002_Dermoscopic_Image/IMD002.jpg",
}
# Same pixels in, same preprocessing (bit-exact, checked below): what is left is onnxruntime-web's
# WASM kernels against native onnxruntime (float32, other summation order/FMA). Measured ~1e-9 here
# (~1e-7 on the quickstart EfficientNet-Lite0); 1e-4 leaves room for other CPUs and still catches any preprocessing slip (one
# grey level anywhere moves these probabilities by more).
PROB_ATOL = 1e-4
# Chromium's JPEG decoder against Pillow's: both are libjpeg-turbo and gave identical pixels here
# (Chromium 156, Pillow 13), but another build may pick another IDCT or chroma upsampling (a grey
# level or two on some pixels), so these bounds are looser than the PNG path's.
JPEG_PROB_ATOL = 1e-2
JPEG_MEAN_ABS_GREY = 1.0  # mean |difference| of the model input, in grey levels
SPEC = PreprocessSpec(input_size=(56, 56), interpolation="bicubic", crop_pct=0.9)
VIEWS = ["identity", "hflip", "rot90", "zoom90"]


def _missing(what: str) -> None:
    msg = (f"web demo test needs {what}: apt-get install -y chromium nodejs npm && {NPM_INSTALL}"
           " (or set EDGEDERM_NODE_MODULES)")
    if os.environ.get("EDGEDERM_REQUIRE_DEMOS") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def ort_dist() -> Path:
    if not CHROMIUM.is_file():
        _missing(f"Chromium at {CHROMIUM}")
    if shutil.which("node") is None:
        _missing("node")
    try:
        # $EDGEDERM_NODE_MODULES, else the repository's build/web-demo (wherever pytest runs from).
        dist = find_ort_dist(os.environ.get("EDGEDERM_NODE_MODULES") or REPO / "build" / "web-demo")
    except EdgedermError:
        _missing("onnxruntime-web from npm")
    if not (dist.parents[1] / "playwright-core" / "package.json").is_file():
        _missing("playwright-core from npm")
    return dist


def _export(ckpt: Path, out: Path) -> Path:
    """Export with torch.onnx (as tests/test_runtime.py) and embed the card."""
    members, card = load_checkpoint(ckpt)
    model = members[0].build()
    torch.onnx.export(model, torch.zeros(1, 3, *SPEC.input_size), str(out), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    card.preprocessing = SPEC
    card.tta = {"views": VIEWS}
    card.describe_artifact(out, fmt="onnx", precision="fp32")
    embed_card(out, card)
    return out


def _png(img: Image.Image, path: Path) -> Path:
    img.save(path, format="PNG")
    return path


def _tensor(entry: dict, dtype: str = "float32") -> np.ndarray:
    """A tensor the page sent back (preprocessUrl's, or classifyUrl's identity-view input)."""
    if "tensor_b64" in entry:
        return np.frombuffer(base64.b64decode(entry["tensor_b64"]), dtype=dtype).reshape(entry["preprocessed_sample"]["shape"])
    return np.frombuffer(base64.b64decode(entry["b64"]), dtype=dtype).reshape(entry["shape"])


def _synthetic() -> np.ndarray:
    """tests/golden/make_golden.py's synthetic test card (kept in step with it by the golden check)."""
    h, w = 200, 300
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // (w - 1)).astype(np.uint8), (yy * 255 // (h - 1)).astype(np.uint8),
                    (((xx // 10 + yy // 10) % 2) * 200 + 30).astype(np.uint8)], -1)
    img[(xx - 160) ** 2 + (yy - 90) ** 2 < 60**2] = (90, 40, 20)
    return img


def test_web_demo_matches_python_runtime(tmp_path: Path, data_root: Path, ort_dist: Path) -> None:
    t_start = time.perf_counter()
    art = _export(tiny_checkpoint(tmp_path / "m.pt"), tmp_path / "m.onnx")
    paths = {k: data_root / rel for k, rel in IMAGES.items()}
    for p in paths.values():
        if not p.is_file():
            pytest.skip(f"{p} is absent")
    pred = load(art, threads=1)
    p_runtime = pred.predict_proba([paths[k] for k in IMAGES])

    # A priority_thresholds rule that fires on some images and not on others: the MEL threshold
    # sits between the smallest and the middle MEL probability (AKIEC's never fires).
    mel = np.sort(p_runtime[:, 0])
    card = load_card(art)
    card.decision = {"rule": "priority_thresholds", "priority": ["MEL", "AKIEC"],
                     "thresholds": {"MEL": float((mel[0] + mel[1]) / 2), "AKIEC": 0.99}}
    embed_card(art, card)
    pred = load(art, threads=1)
    d_runtime = pred.decide(p_runtime)
    assert (d_runtime != p_runtime.argmax(1)).any(), "the threshold should change a decision"

    # What the runtime decodes (reduced scale per the spec's decode_size), as lossless PNG for the page.
    draft = decode_size(SPEC)
    routes, classify = {}, []
    for k, p in paths.items():
        routes[f"/__test__/{k}.png"] = str(_png(load_image(p, decode_size=draft), tmp_path / f"{k}.png"))
        routes[f"/__test__/{k}.jpg"] = str(p)
        classify += [{"id": f"{k}.png", "url": f"/__test__/{k}.png"}, {"id": f"{k}.jpg", "url": f"/__test__/{k}.jpg"}]
    # Golden preprocessing: full-resolution decodes (as make_golden.py) and the synthetic card.
    golden = json.loads(GOLDEN.read_text())
    full = {k: load_image(p) for k, p in paths.items()}
    full["synthetic"] = Image.fromarray(_synthetic())
    preprocess = []
    for k, img in full.items():
        routes[f"/__test__/full-{k}.png"] = str(_png(img, tmp_path / f"full-{k}.png"))
        preprocess += [{"id": f"{k}/{s}", "url": f"/__test__/full-{k}.png", "spec": spec}
                       for s, spec in golden["specs"].items()]
    # Shapes and filters the golden specs miss: a tall image (Pillow >= 13 resamples it vertically
    # first), upscaling, nearest, lanczos, pad.
    odd = {"tall": rgb_images(1, (37, 151), seed=1)[0], "wide": rgb_images(1, (151, 37), seed=2)[0]}
    odd_specs = {"tall/stretch-bicubic": PreprocessSpec(input_size=(24, 30), resize="stretch", interpolation="bicubic"),
                 "tall/shorter-nearest": PreprocessSpec(input_size=(40, 40), interpolation="nearest", crop_pct=0.8, layout="NHWC"),
                 "wide/pad-lanczos": PreprocessSpec(input_size=(32, 48), resize="pad", interpolation="lanczos", channel_order="BGR",
                                                    pad_value=(10, 20, 30))}
    for k, img in odd.items():
        routes[f"/__test__/{k}.png"] = str(_png(img, tmp_path / f"{k}.png"))
    preprocess += [{"id": k, "url": f"/__test__/{k.split('/')[0]}.png", "spec": sp.to_dict()} for k, sp in odd_specs.items()]
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(7, 0.5), 300)
    rules = [{"rule": "argmax"},
             {"rule": "priority_thresholds", "priority": ["MEL", "AKIEC"], "thresholds": {"MEL": 0.3, "AKIEC": 0.25}},
             {"rule": "priority_thresholds", "thresholds": {"BCC": 0.2, "MEL": 0.35}},
             {"rule": "priority_thresholds", "priority": [], "thresholds": {"MEL": 0.1}}]

    server = make_server(art, port=0, ort_dir=ort_dist)
    start_in_thread(server)
    try:
        plan = {"url": server.url, "node_modules": str(ort_dist.parents[1]), "chromium": str(CHROMIUM),
                "routes": routes, "classify": classify, "preprocess": preprocess,
                "decide": [{"probs": probs.tolist(), "classes": HAM7, "decision": r} for r in rules],
                "upload": routes["/__test__/ph2.png"], "screenshot": str(tmp_path / "demo.png"),
                "out": str(tmp_path / "results.json")}
        (tmp_path / "plan.json").write_text(json.dumps(plan))
        t_node = time.perf_counter()
        run = subprocess.run(["node", str(SCRIPT), str(tmp_path / "plan.json")], capture_output=True, text=True, timeout=120)
        t_node = time.perf_counter() - t_node
    finally:
        server.shutdown()
        server.server_close()
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert not res["page_errors"] and not res["console_errors"], (res["page_errors"], res["console_errors"])

    # 1. The decision rule, vector by vector.
    for rule, got in zip(rules, res["decide"]):
        assert got == decide(probs, HAM7, rule).tolist(), rule

    # 2. Preprocessing: bit-exact against PreprocessSpec, and the pinned golden values.
    by_image = {e["image"] if e["image"] == "synthetic" else next(k for k, rel in IMAGES.items() if rel == e["image"]): e
                for e in golden["images"]}
    for k, img in full.items():
        for s, spec_d in golden["specs"].items():
            spec = PreprocessSpec.from_dict(spec_d)
            entry = res["preprocess"][f"{k}/{s}"]
            js = _tensor(entry, dtype=spec.dtype)
            np.testing.assert_array_equal(js, spec.apply(img), err_msg=f"{k} {s}")
            g = by_image[k]["outputs"][s]
            hwc = np.moveaxis(js, 0, -1) if spec.layout == "NCHW" else js
            np.testing.assert_allclose(hwc[np.ix_(g["rows"], g["cols"])], g["values"], atol=1e-6, err_msg=f"golden {k} {s}")

    for k, sp in odd_specs.items():
        np.testing.assert_array_equal(_tensor(res["preprocess"][k]), sp.apply(odd[k.split("/")[0]]), err_msg=k)

    # 3. Real images, Python's decoded pixels: same model input, same probabilities and decisions.
    for i, k in enumerate(IMAGES):
        r = res["classify"][f"{k}.png"]
        x = SPEC.apply(load_image(paths[k], decode_size=draft))
        np.testing.assert_array_equal(_tensor(r), x, err_msg=k)
        assert r["views"] == VIEWS
        np.testing.assert_allclose(r["probs"], p_runtime[i], atol=PROB_ATOL, rtol=0, err_msg=k)
        assert r["decision"]["index"] == d_runtime[i], k
    fired = [res["classify"][f"{k}.png"]["decision"]["by"] for k in IMAGES]
    assert "threshold" in fired and "argmax" in fired, fired  # both branches of the rule ran

    # 4. The original JPEGs, decoded by Chromium, against Python's full-resolution decode.
    p_full = pred.predict_proba([full[k] for k in IMAGES])
    worst = {"png": max(np.abs(np.subtract(res["classify"][f"{k}.png"]["probs"], p_runtime[i])).max() for i, k in enumerate(IMAGES)),
             "jpeg": max(np.abs(np.subtract(res["classify"][f"{k}.jpg"]["probs"], p_full[i])).max() for i, k in enumerate(IMAGES))}
    for i, k in enumerate(IMAGES):
        r = res["classify"][f"{k}.jpg"]
        assert r["decoded_size"] == list(full[k].size)
        grey = np.abs(_tensor(r) - SPEC.apply(full[k])) * np.asarray(SPEC.std, np.float32)[:, None, None] * 255
        assert grey.mean() <= JPEG_MEAN_ABS_GREY, (k, grey.mean())
        worst[f"grey {k}"] = float(grey.mean())
        np.testing.assert_allclose(r["probs"], p_full[i], atol=JPEG_PROB_ATOL, rtol=0, err_msg=k)

    # 5. The UI path (file input) and its screenshot.
    assert res["ui_decision"] == HAM7[d_runtime[2]]
    shot = Image.open(tmp_path / "demo.png")
    assert shot.format == "PNG" and shot.width >= 1000
    assert np.asarray(shot.convert("L")).std() > 10  # not blank
    greys = [round(v, 3) for k, v in worst.items() if k.startswith("grey")]
    print(f"web demo: max |dp| {worst['png']:.1e} (Python's pixels), {worst['jpeg']:.1e} (Chromium's JPEG decode), "
          f"JPEG mean grey diff {greys}; "
          f"total {time.perf_counter() - t_start:.1f} s, node+chromium {t_node:.1f} s, page load {res['load_ms']} ms, "
          f"Chromium {res['browser']}")


def test_serve_demo_routes(tmp_path: Path, ort_dist: Path) -> None:
    art = _export(tiny_checkpoint(tmp_path / "m.pt"), tmp_path / "m.onnx")
    server = make_server(art, port=0, ort_dir=ort_dist)
    start_in_thread(server)
    try:
        def get(path: str) -> tuple[str, bytes]:
            with urllib.request.urlopen(server.url.rstrip("/") + path, timeout=10) as r:
                return r.headers["Content-Type"], r.read()

        ctype, body = get("/card.json")
        assert ctype == "application/json" and json.loads(body) == load_card(art).to_dict()
        assert get("/model.onnx")[1] == art.read_bytes()
        assert get("/ort/ort-wasm-simd-threaded.wasm")[0] == "application/wasm"
        assert get("/ort/ort-wasm-simd-threaded.mjs")[0].startswith("text/javascript")
        assert get("/")[0].startswith("text/html")
        for bad in ("/../serve.py", "/ort/../package.json", "/serve.py"):
            with pytest.raises(urllib.error.HTTPError, match="404"):
                get(bad)
    finally:
        server.shutdown()
        server.server_close()



def test_serve_demo_errors_are_one_line(tmp_path: Path) -> None:
    """No browser needed: a missing onnxruntime-web names the npm command; non-ONNX is refused."""
    from edgederm.demo.cli import register

    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps typer from flattening the app
    result = CliRunner().invoke(app, ["serve-demo", str(ckpt), "--ort-dir", str(tmp_path)])
    assert isinstance(result.exception, EdgedermError)
    assert NPM_INSTALL in str(result.exception) and "\n" not in str(result.exception)
    with pytest.raises(EdgedermError, match="runs ONNX artifacts"):
        demo_card(ckpt)


# -- serve-demo hardening: real sockets on 127.0.0.1, no browser needed ------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real ONNX artifact and a stand-in onnxruntime-web folder (the server only serves its bytes;
    the wasm file is 16 MiB so a response is still being written when a client drops)."""
    d = tmp_path_factory.mktemp("serve")
    art = _export(tiny_checkpoint(d / "m.pt"), d / "m.onnx")
    dist = d / "dist"
    dist.mkdir()
    (dist / "ort.wasm.min.js").write_text("// stand-in\n")
    (dist / "ort-wasm-simd-threaded.mjs").write_text("// stand-in\n")
    (dist / "ort-wasm-simd-threaded.wasm").write_bytes(os.urandom(16 << 20))
    return art, dist


def _get(port: int, path: str, host: str | None) -> tuple[int, bytes]:
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.putrequest("GET", path, skip_host=True)
        if host is not None:
            c.putheader("Host", host)
        c.endheaders()
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def test_serve_demo_answers_only_loopback_and_allowed_host_names(served: tuple[Path, Path]) -> None:
    art, dist = served
    server = make_server(art, port=0, ort_dir=dist, allow_hosts=["Demo.Example"])
    start_in_thread(server)
    port = server.server_address[1]
    try:
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST", "demo.example:8000"):
            status, body = _get(port, "/card.json", host)
            assert status == 200 and json.loads(body)["classes"], host
        # DNS rebinding: the attacker's name (resolving to 127.0.0.1) arrives in the Host header.
        for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "127.0.0.1.nip.io", "", None):
            status, body = _get(port, "/card.json", host)
            assert status == 421 and b"classes" not in body, host
        assert _get(port, "/model.onnx", "rebind.example")[0] == 421
    finally:
        server.shutdown()
        server.server_close()


def test_serve_demo_closes_half_open_connections_and_caps_them(served: tuple[Path, Path]) -> None:
    import socket

    art, dist = served
    server = make_server(art, port=0, ort_dir=dist, timeout=0.5)
    start_in_thread(server)
    port = server.server_address[1]
    try:
        for sent in (b"", b"GET /card.json HTTP/1.1\r\nHost: localhost\r\n"):  # idle; headers never finished
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(sent)
                t0 = time.monotonic()
                assert s.recv(1024) == b""  # the server closed it
                assert 0.3 < time.monotonic() - t0 < 5
    finally:
        server.shutdown()
        server.server_close()

    server = make_server(art, port=0, ort_dir=dist, timeout=30, max_connections=2)
    start_in_thread(server)
    port = server.server_address[1]
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
    try:
        time.sleep(0.2)  # both accepted and holding a thread
        t0 = time.monotonic()
        status, body = _get(port, "/card.json", "localhost")
        assert status == 503 and body == b"busy\n" and time.monotonic() - t0 < 2
        for s in held:
            s.close()
        deadline = time.monotonic() + 5
        while _get(port, "/card.json", "localhost")[0] != 200:  # their threads end, the slots free up
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        for s in held:
            s.close()
        server.shutdown()
        server.server_close()


def test_serve_demo_client_disconnects_are_quiet(served: tuple[Path, Path], tmp_path: Path) -> None:
    """The real CLI in a subprocess; clients that reset the connection mid-download leave a debug
    line (-v), never a traceback; Ctrl-C stops it with exit 0."""
    import signal
    import socket
    import struct
    import sys

    art, dist = served
    proc = subprocess.Popen([sys.executable, "-m", "edgederm", "-v", "serve-demo", str(art), "--port", "0", "--ort-dir", str(dist),
                             "--timeout", "5"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # Ctrl-C must arrive
    try:
        lines: list[str] = []
        while not any("web demo for" in ln for ln in lines):
            line = proc.stderr.readline()  # type: ignore[union-attr]
            assert line, "serve-demo exited: " + "".join(lines)[-2000:]
            lines.append(line)
        port = int(lines[-1].rsplit(":", 1)[1].split("/")[0])
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET /ort/ort-wasm-simd-threaded.wasm HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert s.recv(64).startswith(b"HTTP/1.1 200")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
            s.close()
        status, body = _get(port, "/demo.json", "localhost")  # still serving
        assert status == 200 and json.loads(body)["artifact"] == art.name
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    log = "".join(lines) + err
    assert proc.returncode == 0 and err.rstrip().endswith("stopped") and "interrupted" not in err, err[-2000:]  # Ctrl-C is its stop
    assert "client disconnected" in log, log[-3000:]  # the path was taken ...
    assert "Traceback" not in log and "BrokenPipe" not in log.replace("(BrokenPipeError)", ""), log[-3000:]  # ... quietly
