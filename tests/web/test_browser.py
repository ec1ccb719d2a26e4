"""``bsmamba2 serve`` in a real browser: headless Chromium (Debian's ``chromium``, driven by
Playwright without a browser download) picks the small test model among two, uploads a
generated song and a broken file, separates a preview of the song with it, plays and
downloads the stems and the zip, cancels a second job; the files must have the preview's
length and the input's rate and pass the null test. A screenshot goes to the test's folder,
and to ``$BSMAMBA2_SCREENSHOT`` when set (how docs/serve.png is made)."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from bsmamba2 import BSMamba2, Separator, save_model
from bsmamba2.web.jobs import JobQueue
from bsmamba2.web.models import ModelChoice, ModelShelf, model_choices
from tests.helpers.configs import MICRO
from tests.helpers.web import serving, tones

CHROMIUM = os.environ.get("BSMAMBA2_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [  # no sandbox as root; nothing reaches out of this machine
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]


def _browser_or_skip():
    """Playwright's sync API, or a skip saying what is missing (a failure on CI, which has both)."""
    missing = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("the playwright package (pip install playwright)")
    if not Path(CHROMIUM).is_file():
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium; tools/setup.sh does)")
    if missing:
        reason = "no browser test without " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return sync_playwright


def load(choice: ModelChoice) -> dict[bool, Separator]:
    """A model and its TTA twin sharing it, as serve loads them."""
    separator = Separator(choice.weights, device="cpu", progress=False, compile=False)
    twin = Separator(separator.model, device="cpu", progress=False, compile=False, tta=True)
    separator.name = twin.name = choice.name
    return {False: separator, True: twin}


@pytest.fixture
def site(tmp_path, data_dir):
    """Two models to pick from: a two-stem micro model (the default, never loaded here) and
    the tiny official checkpoint."""
    config = MICRO.replace(n_stems=2, targets=("drums", "bass"))
    micro = save_model(BSMamba2(config), tmp_path / "micro-drums.safetensors")
    choices = model_choices([str(micro), str(data_dir / "tiny.ckpt")])
    jobs = JobQueue(ModelShelf(choices, load, torch.device("cpu")), root=tmp_path / "server")
    with serving(jobs) as url:
        yield url, jobs


def test_separate_play_and_download_in_chromium(site, tmp_path):
    sync_playwright = _browser_or_skip()
    url, jobs = site
    rate, audio = 44100, tones(2, 3.0, 44100, seed=11)
    song = tmp_path / "my song.wav"
    sf.write(song, audio.T, rate, subtype="FLOAT")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF" + np.random.default_rng(2).bytes(3000))
    downloads = tmp_path / "downloads"
    problems, foreign, failed = [], [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(accept_downloads=True, viewport={"width": 1100, "height": 760})
        page.on("console", lambda m: m.type == "error" and "Failed to load resource" not in m.text and problems.append(m.text))
        page.on("response", lambda r: r.status >= 400 and failed.append(f"{r.request.method} {r.status} {r.url}"))
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("request", lambda r: r.url.startswith(url) or r.url.startswith("data:") or foreign.append(r.url))
        page.goto(url)
        page.wait_for_selector("#model:has-text('model micro-drums on cpu')")
        assert page.inner_text("#stems").split() == ["Stems", "drums", "bass"]  # the default model's stems
        offered = [o.strip() for o in page.eval_on_selector_all("#model-choice option", "os => os.map(o => o.text)")]
        kilobytes = -(-jobs.models.choice("micro-drums").size // 1024)
        assert offered == [f"micro-drums — mamba2, {kilobytes} KB, cached", "tiny — mamba2, 13 MB, cached"]
        page.select_option("#model-choice", "tiny")
        page.wait_for_selector("#model:has-text('model tiny on cpu')")
        assert page.inner_text("#stems").split() == ["Stems", "vocals", "accompaniment"]
        page.set_input_files("#files", [str(song), str(broken)])
        page.fill("#start", "0:01")  # a preview: 1.5 s from 1 s on
        page.fill("#duration", "1.5")
        page.click("#separate")
        page.wait_for_selector(".stem audio[data-stem=accompaniment]", timeout=300_000)  # a busy CI
        refused = page.inner_text(".file:has-text('broken.wav') .line.error")
        assert refused.startswith("broken.wav: not a readable audio file (") and "\n" not in refused
        assert page.inner_text(".job .status") == "done"
        assert page.inner_text(".job .title") == "2 file(s), model tiny"
        page.wait_for_selector("#model-choice option:has-text('tiny — mamba2, 13 MB, loaded')", state="attached")
        assert "1.5 s of audio in" in page.inner_text(".file:has-text('my song.wav') .line")

        played = page.evaluate(
            """async () => {
                const audio = document.querySelector("audio[data-stem=vocals]");
                await audio.play();
                await new Promise((resolve) => setTimeout(resolve, 700));
                audio.pause();
                return audio.currentTime;
            }"""
        )
        assert played > 0.2  # the browser decoded and played the stem
        drawn = page.evaluate(
            """() => [...document.querySelectorAll(".stem canvas")].map((canvas) => {
                const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
                let ink = 0;
                for (let i = 3; i < pixels.length; i += 4) ink += pixels[i] > 0;
                return ink / (canvas.width * canvas.height);
            })"""
        )
        assert len(drawn) == 2 and all(0.03 < share < 0.95 for share in drawn)  # bars, not a 1-pixel line

        files = {}
        for stem in ("vocals", "accompaniment"):
            with page.expect_download() as info:
                page.click(f".stem:has(audio[data-stem={stem}]) a")
            assert info.value.suggested_filename == f"my song_{stem}.wav"
            files[stem] = downloads / info.value.suggested_filename
            info.value.save_as(files[stem])
        page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
        if os.environ.get("BSMAMBA2_SCREENSHOT"):
            page.screenshot(path=os.environ["BSMAMBA2_SCREENSHOT"], full_page=True)

        assert problems == []  # no script errors
        assert len(failed) == 1 and failed[0].startswith("PUT 400 ") and failed[0].endswith("name=broken.wav")
        with page.expect_download() as info:
            page.click("text=Download all (zip)")
        info.value.save_as(downloads / "stems.zip")
        page.wait_for_selector("text=The server has deleted this job's files.")

        page.set_input_files("#files", str(song))  # a second job, cancelled at once
        page.click("#separate")
        page.click(".job:first-child button:has-text('Cancel')")
        page.wait_for_selector(".job:first-child .status:has-text('cancelled')")
        browser.close()
    assert foreign == []  # nothing fetched from elsewhere: works offline
    # Both jobs are forgotten at once; the zip download removed the first one's folder, the
    # cancelled one's goes when the block it is on is done (close waits for that).
    assert jobs.jobs == {} and len(list(jobs.root.iterdir())) <= 1
    assert [m["loaded"] for m in jobs.models.describe()] == [False, True]  # only the model picked loaded
    jobs.close()
    assert not jobs.root.exists()

    vocals, vocals_rate = sf.read(files["vocals"], dtype="float32", always_2d=True)
    accompaniment, accompaniment_rate = sf.read(files["accompaniment"], dtype="float32", always_2d=True)
    part = audio[:, rate : rate + round(1.5 * rate)].T  # the preview's part of the song
    assert vocals_rate == accompaniment_rate == rate
    assert vocals.shape == accompaniment.shape == part.shape
    assert np.abs(vocals).max() > 1e-3 and np.abs(vocals - part).max() > 1e-3  # a real separation
    np.testing.assert_allclose(vocals + accompaniment, part, atol=1e-6)  # the null test
    with zipfile.ZipFile(downloads / "stems.zip") as archive:
        assert sorted(archive.namelist()) == ["my song/accompaniment.wav", "my song/vocals.wav"]
        assert archive.read("my song/vocals.wav") == files["vocals"].read_bytes()
    assert (tmp_path / "serve.png").read_bytes()[:4] == b"\x89PNG"
