"""``bsmamba2 serve`` over HTTP without a browser: the API a page uses, its CSRF and Host
checks, downloads with ranges, the zip that removes its job; the command's own errors."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.parse
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from bsmamba2 import BSMamba2, Separator, save_model
from bsmamba2.cli import serve
from bsmamba2.cli.main import main
from bsmamba2.errors import BSMamba2Error
from bsmamba2.web.jobs import JobQueue, Limits
from bsmamba2.web.models import ModelChoice, ModelShelf
from tests.helpers.configs import MICRO
from tests.helpers.models import MaskModel
from tests.helpers.web import CSRF, request, serving, tones, wait_for

RATE = 44100


@pytest.fixture
def site(tmp_path):
    separator = Separator(MaskModel(gain=0.25), device="cpu", segment=0.5, progress=False)
    jobs = JobQueue(separator, Limits(max_bytes=2**20), root=tmp_path)
    with serving(jobs) as url:
        yield url, jobs
    assert not jobs.root.exists()  # the server's end deleted everything


def wav_bytes(seconds: float, seed: int) -> tuple[bytes, np.ndarray]:
    audio = tones(2, seconds, RATE, seed)
    buffer = io.BytesIO()
    sf.write(buffer, audio.T, RATE, subtype="FLOAT", format="WAV")
    return buffer.getvalue(), audio


def api(method: str, url: str, body=None, headers=None) -> tuple[int, dict]:
    status, _, data = request(method, url, body, {**CSRF, **(headers or {})})
    return status, json.loads(data) if data else {}


def test_a_page_session_over_http(site):
    url, jobs = site
    status, info = api("GET", f"{url}/api/info")
    assert status == 200 and info["stems"] == ["vocals", "accompaniment"] and info["limits"]["max_bytes"] == 2**20
    assert (info["bit_depth_formats"], info["bitrate_formats"]) == (["wav", "flac"], ["mp3", "opus"])
    assert (info["tta"], info["tta_choice"], info["picture"]) == (False, False, True)
    status, page = request("GET", url)[::2]
    assert status == 200 and b'<script src="/static/app.js">' in page
    assert request("GET", f"{url}/static/app.js")[0] == 200
    status, job = api("POST", f"{url}/api/jobs", {"stems": ["vocals"], "format": "flac", "bit_depth": "24"})
    assert status == 201 and job["status"] == "uploading"
    jobs_url = f"{url}/api/jobs/{job['id']}"
    data, audio = wav_bytes(0.8, 4)
    name = urllib.parse.quote("../Mein Lied.wav")
    status, entry = api("PUT", f"{jobs_url}/files?name={name}", data)
    assert status == 201 and (entry["name"], entry["total"]) == ("Mein Lied.wav", 0.8)
    status, state = api("POST", f"{jobs_url}/start")
    assert status == 200 and state["status"] in ("queued", "running", "done")
    state = wait_for(lambda: (s := api("GET", jobs_url)[1])["status"] == "done" and s, 60, "the job")
    (file,) = state["files"]
    assert (file["status"], file["stems"], file["done"]) == ("done", ["vocals"], 0.8)

    stem_url = f"{jobs_url}/files/0/stems/vocals"
    status, headers, body = request("GET", f"{stem_url}?download=1")
    assert status == 200 and headers["content-type"] == "audio/flac"
    assert headers["content-disposition"] == "attachment; filename*=utf-8''Mein%20Lied_vocals.flac"
    vocals, rate = sf.read(io.BytesIO(body), dtype="float32", always_2d=True)
    assert rate == RATE and vocals.shape == audio.T.shape
    np.testing.assert_allclose(vocals, 0.25 * audio.T, atol=2**-22)  # 24-bit
    status, headers, part = request("GET", stem_url, headers={"Range": "bytes=10-99"})  # the player seeks
    assert status == 206 and part == body[10:100]
    status, peaks = api("GET", f"{jobs_url}/files/0/peaks")
    assert status == 200 and list(peaks) == ["vocals"] and max(peaks["vocals"]) == pytest.approx(np.abs(vocals).max(), abs=1e-4)
    assert api("GET", f"{jobs_url}/files/0/stems/accompaniment") == (404, {"error": "no such stem for this file"})
    assert api("GET", f"{jobs_url}/files/0/picture")[0] == 404

    status, headers, body = request("GET", f"{jobs_url}/zip")
    assert status == 200 and headers["content-disposition"] == "attachment; filename*=utf-8''Mein%20Lied_stems.zip"
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.namelist() == ["Mein Lied/vocals.flac"]
    wait_for(lambda: api("GET", jobs_url)[0] == 404, 10, "the downloaded job to go")
    wait_for(lambda: not any(jobs.root.iterdir()), 10, "its folder to go")


def test_lossy_stems_are_served_as_what_they_are(site):
    url, _ = site
    _, job = api("POST", f"{url}/api/jobs", {"stems": ["vocals"], "format": "mp3", "bitrate": 128})
    jobs_url = f"{url}/api/jobs/{job['id']}"
    api("PUT", f"{jobs_url}/files?name=a.flac", wav_bytes(0.5, 2)[0])
    api("POST", f"{jobs_url}/start")
    wait_for(lambda: api("GET", jobs_url)[1]["status"] == "done", 60, "the job")
    status, headers, body = request("GET", f"{jobs_url}/files/0/stems/vocals")
    assert status == 200 and headers["content-type"] == "audio/mpeg" and body.startswith((b"ID3", b"\xff\xfb"))
    assert headers["content-disposition"] == "inline; filename=\"a_vocals.mp3\""


def test_refusals_are_one_json_line(site):
    url, _ = site
    assert api("POST", f"{url}/api/jobs", {"format": "aac"}) == (400, {"error": "unknown format 'aac' (choose from wav, flac, mp3, ogg, opus)"})
    assert api("POST", f"{url}/api/jobs", b"[1, 2]")[1] == {"error": "expected a JSON object of options"}
    assert api("GET", f"{url}/api/jobs/nope") [0] == 404
    _, job = api("POST", f"{url}/api/jobs", {})
    jobs_url = f"{url}/api/jobs/{job['id']}"
    assert api("POST", f"{jobs_url}/start") == (400, {"error": "no audio files in this job"})
    big, _ = wav_bytes(6.5, 1)  # 2.3 MB
    status, body = api("PUT", f"{jobs_url}/files?name=big.wav", big)
    assert (status, body) == (413, {"error": "big.wav: larger than the server's limit of 1 MB (--max-upload-mb)"})
    status, body = api("PUT", f"{jobs_url}/files?name=x.wav", b"RIFF nonsense")
    assert status == 400 and body["error"].startswith("x.wav: not a readable audio file")
    assert api("DELETE", jobs_url)[0] == 204 and api("GET", jobs_url)[0] == 404


def test_changes_need_the_csrf_header_and_this_origin(site):
    url, _ = site
    status, _, body = request("POST", f"{url}/api/jobs", {})  # what a cross-site form could send
    assert status == 403 and json.loads(body) == {"error": "forbidden: missing the x-bsmamba2 header"}
    evil = {**CSRF, "Origin": "http://evil.example"}
    status, _, body = request("POST", f"{url}/api/jobs", {}, evil)
    assert status == 403 and "origin http://evil.example is not this server" in json.loads(body)["error"]
    same = {**CSRF, "Origin": url}
    assert request("POST", f"{url}/api/jobs", {}, same)[0] == 201
    assert request("GET", f"{url}/api/info", headers={"Host": "rebound.example:80"})[0] == 400  # DNS rebinding


def test_serve_errors_are_one_line(monkeypatch, capsys, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    args = ["serve", "--checkpoint", "tests/data/tiny.ckpt", "--device", "cpu"]
    assert main([*args, "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err == f"bsmamba2: error: cannot listen on 127.0.0.1:{port}: Address already in use; choose another --port\n"
    taken.close()
    assert main([*args, "--max-minutes", "0"]) == 1
    assert capsys.readouterr().err == "bsmamba2: error: --max-minutes must be positive, got 0.0\n"

    def refuse(host, port):
        raise BSMamba2Error("stopped before listening")

    monkeypatch.setattr(serve, "bind", refuse)
    assert main([*args, "--host", "0.0.0.0"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("bsmamba2 serve: warning: listening on 0.0.0.0: anyone who can reach this machine")
    assert lines[1:] == ["bsmamba2: error: stopped before listening"]
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else find_spec(name, *a))
    assert main(args) == 1
    assert capsys.readouterr().err == (
        "bsmamba2: error: bsmamba2 serve needs uvicorn, which is not installed: pip install 'bsmamba2[web]'\n"
    )


@pytest.mark.parametrize(
    ("host", "local"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("127.3.4.5", True), ("0.0.0.0", False), ("192.168.1.9", False), ("myhost", False)],
)
def test_which_hosts_are_this_machine_only(host, local):
    assert serve.is_loopback(host) == local


def test_the_command_serves_and_ctrl_c_deletes_everything(tmp_path):
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "bsmamba2", "serve", "--checkpoint", str(root / "tests/data/tiny.ckpt")]
    command += ["--device", "cpu", "--port", "0", "--workdir", str(tmp_path), "--compile", "no"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        url = re.match(r"bsmamba2 serve: (http://127\.0\.0\.1:\d+)/ \(model tiny on cpu, 1 job\(s\) at a time\)", line)
        assert url, line + server.stderr.read() if server.poll() is not None else line
        status, info = api("GET", f"{url[1]}/api/info")
        assert status == 200 and info["model"] == "tiny"
        assert api("POST", f"{url[1]}/api/jobs", {})[0] == 201
        assert len(list(tmp_path.glob("bsmamba2-serve-*/*"))) == 1  # the job's folder
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=60)
    assert server.returncode == 0, err
    assert list(tmp_path.iterdir()) == []


def test_the_page_offers_each_model_and_refuses_an_unknown_one(tmp_path):
    def load(choice):
        gain = {"quiet": 0.25, "loud": 0.5}[choice.name]
        return {False: Separator(MaskModel(gain=gain), device="cpu", segment=0.5, progress=False)}

    choices = [ModelChoice(name, f"{name}.ckpt", "mamba2", ("vocals", "accompaniment"), 1000) for name in ("quiet", "loud")]
    jobs = JobQueue(ModelShelf(choices, load, torch.device("cpu"), tta_choice=False), root=tmp_path)
    with serving(jobs) as url:
        status, info = api("GET", f"{url}/api/info")
        assert status == 200 and info["model"] == "quiet" and info["stems"] == ["vocals", "accompaniment"]
        assert info["models"] == [
            {"name": name, "mixer": "mamba2", "size": 1000, "cached": True, "loaded": False,
             "stems": ["vocals", "accompaniment"]} for name in ("quiet", "loud")
        ]
        assert api("POST", f"{url}/api/jobs", {"model": "nope"}) == (
            400, {"error": "unknown model 'nope' (this server offers: quiet, loud)"}
        )
        status, job = api("POST", f"{url}/api/jobs", {"model": "loud"})
        assert status == 201 and job["model"] == "loud"
        jobs_url = f"{url}/api/jobs/{job['id']}"
        data, audio = wav_bytes(0.5, 3)
        assert api("PUT", f"{jobs_url}/files?name=a.wav", data)[0] == 201
        api("POST", f"{jobs_url}/start")
        wait_for(lambda: api("GET", jobs_url)[1]["status"] == "done", 60, "the job")
        vocals = sf.read(io.BytesIO(request("GET", f"{jobs_url}/files/0/stems/vocals")[2]), dtype="float32")[0]
        np.testing.assert_allclose(vocals, 0.5 * audio.T, atol=1e-5)  # the loud model's mask
        assert [m["loaded"] for m in api("GET", f"{url}/api/info")[1]["models"]] == [False, True]


def test_the_command_serves_several_models_and_loads_each_when_asked(tmp_path):
    root = Path(__file__).resolve().parents[2]
    micro = save_model(BSMamba2(MICRO), tmp_path / "micro.safetensors")
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "bsmamba2", "serve", "--checkpoint", str(root / "tests/data/tiny.ckpt")]
    command += ["--checkpoint", str(micro), "--max-models", "1", "--device", "cpu", "--port", "0"]
    command += ["--workdir", str(tmp_path / "work"), "--compile", "no"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        url = re.match(r"bsmamba2 serve: (http://127\.0\.0\.1:\d+)/ \(models tiny, micro on cpu, 1 job", line)
        assert url, line + server.stderr.read() if server.poll() is not None else line
        models = api("GET", f"{url[1]}/api/info")[1]["models"]
        assert [(m["name"], m["mixer"], m["loaded"]) for m in models] == [("tiny", "mamba2", True), ("micro", "mamba2", False)]
        assert models[1]["size"] == micro.stat().st_size and models[1]["stems"] == ["vocals", "accompaniment"]
        _, job = api("POST", f"{url[1]}/api/jobs", {"model": "micro"})
        jobs_url = f"{url[1]}/api/jobs/{job['id']}"
        api("PUT", f"{jobs_url}/files?name=a.wav", wav_bytes(0.5, 5)[0])
        api("POST", f"{jobs_url}/start")
        state = wait_for(lambda: (s := api("GET", jobs_url)[1])["status"] == "done" and s, 120, "the job")
        assert state["model"] == "micro" and state["files"][0]["status"] == "done"
        models = api("GET", f"{url[1]}/api/info")[1]["models"]
        assert [m["loaded"] for m in models] == [False, True]  # --max-models 1: tiny made room
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=60)
    assert server.returncode == 0, err
