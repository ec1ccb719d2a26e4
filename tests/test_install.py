"""Install by use: the core dependencies alone separate, a feature whose extra is missing says
which extra to install, and the package builds as a wheel and an sdist with PyPI's metadata.

The core-only install is made of this machine's installed files: a folder with links to
exactly the distributions that pyproject.toml's ``dependencies`` pull in (transitively, as pip
would install them), put on the path of ``python -S`` (no site-packages). What is not linked
cannot be imported, as after a plain ``pip install bsmamba2``, without installing torch again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bsmamba2.errors import EXTRAS

tomllib = pytest.importorskip("tomllib")  # Python 3.11 and later
ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRA_MODULES = sorted({module for modules in EXTRAS.values() for module in modules})


def _core_distributions() -> set[str]:
    """Every distribution ``pip install bsmamba2`` installs here (markers evaluated, no extras)."""
    todo = [(Requirement(r), "") for r in PROJECT["dependencies"]]
    seen: set[str] = set()
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        wanted = [(name, e) for e in ("", *sorted(requirement.extras))]
        if all(w in seen for w in wanted):
            continue
        seen.update(wanted)
        for dependency in metadata.distribution(name).requires or []:
            todo += [(Requirement(dependency), e) for e in ("", *sorted(requirement.extras))]
    return {name for name, _ in seen}


def _core_site(folder: Path) -> Path:
    """Links to the files of the core distributions only (their packages, modules, libraries
    and metadata), as one site-packages folder."""
    folder.mkdir()
    for name in _core_distributions():
        dist = metadata.distribution(name)
        for top in {Path(f).parts[0] for f in dist.files or []}:
            source = Path(dist.locate_file(top))
            if top in ("..", "__pycache__") or top.endswith(".pth") or not source.exists():
                continue
            if not (folder / top).exists():
                (folder / top).symlink_to(source)
    return folder


def _python(site: Path | None, script: str) -> subprocess.CompletedProcess:
    """``script`` in a fresh interpreter: with ``site``, that folder and this checkout only."""
    path = f"{site}:{ROOT}" if site else str(ROOT)
    command = [sys.executable, *(["-S"] if site else []), "-c", script]
    return subprocess.run(command, capture_output=True, text=True, env={"PYTHONPATH": path, "HOME": "/tmp"})


SEPARATE = """
import json, sys
from bsmamba2.cli.main import main
code = main(["separate", {wav!r}, "--checkpoint", {ckpt!r}, "-o", {out!r}, "--segment", "0.5", "-q"])
loaded = sorted({{m.partition(".")[0] for m in sys.modules}} & set({extras!r}))
print(json.dumps({{"code": code, "loaded": loaded}}))
"""


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    path = tmp_path_factory.mktemp("song") / "song.wav"
    sf.write(path, (np.random.randn(44100, 2) * 0.1).astype(np.float32), 44100, subtype="FLOAT")
    return path


@pytest.fixture(scope="module")
def core_site(tmp_path_factory):
    return _core_site(tmp_path_factory.mktemp("core") / "site-packages")


def test_core_dependencies_alone_separate(core_site, song, data_dir, tmp_path):
    assert not any((core_site / m).exists() for m in EXTRA_MODULES)  # the extras are really absent
    script = SEPARATE.format(wav=str(song), ckpt=str(data_dir / "tiny.ckpt"), out=str(tmp_path), extras=[])
    result = _python(core_site, script)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["code"] == 0
    vocals, rate = sf.read(tmp_path / "song" / "vocals.wav")
    assert rate == 44100 and vocals.shape == (44100, 2)


MISSING = [
    (["train", "--config", "x.yaml"], "train"),
    (["prepare", "--demo", "{tmp}/demo"], "train"),
    (["evaluate", "--references", "{tmp}", "--estimates", "{tmp}"], "eval"),
    (["separate", "{song}", "--checkpoint", "{ckpt}", "-o", "{tmp}", "--plot"], "plot"),
    (["separate", "--download-only", "--checkpoint", "hf://owner/repo/w.ckpt"], "hub"),
]


def test_a_missing_extra_is_one_line_naming_it(core_site, song, data_dir, tmp_path):
    runs = [[a.format(tmp=tmp_path, song=song, ckpt=data_dir / "tiny.ckpt") for a in args] for args, _ in MISSING]
    script = (
        "import contextlib, io, json; from bsmamba2.cli.main import main\n"
        "report = []\n"
        f"for args in {runs!r}:\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        report.append([main(args), err.getvalue()])\n"
        "print(json.dumps(report))"
    )
    result = _python(core_site, script)
    assert result.returncode == 0, result.stderr
    for (code, err), (_, extra) in zip(json.loads(result.stdout.splitlines()[-1]), MISSING, strict=True):
        assert code == 1 and err.count("\n") == 1 and f"pip install 'bsmamba2[{extra}]'" in err, err


def test_separating_imports_no_extra_in_the_full_install(song, data_dir, tmp_path):
    """Installed or not, what separation does not need is not loaded (start-up time, memory)."""
    script = SEPARATE.format(
        wav=str(song), ckpt=str(data_dir / "tiny.ckpt"), out=str(tmp_path), extras=EXTRA_MODULES
    )
    result = _python(None, script)
    report = json.loads(result.stdout.splitlines()[-1])
    assert report == {"code": 0, "loaded": []}, result.stderr


def test_extras_match_pyproject():
    """bsmamba2.errors.EXTRAS (what the error messages check) lists pyproject.toml's extras."""
    declared = PROJECT["optional-dependencies"]
    (everything,) = (Requirement(r) for r in declared["all"])
    assert everything.name == "bsmamba2" and everything.extras == set(EXTRAS)
    for extra, modules in EXTRAS.items():
        names = {canonicalize_name(Requirement(r).name) for r in declared[extra]}
        assert names == {canonicalize_name(m) for m in modules}, extra


@pytest.mark.skipif(shutil.which("git") is None, reason="lists the checkout's files with git")
def test_wheel_and_sdist_build_with_pypi_metadata(tmp_path):
    pytest.importorskip("build")
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    source = tmp_path / "src"  # a copy: building writes build/ and *.egg-info into the source
    for name in files:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(source)],
        check=True,
        capture_output=True,
    )
    wheel = next((tmp_path / "dist").glob("bsmamba2-*.whl"))
    assert next((tmp_path / "dist").glob("bsmamba2-*.tar.gz"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        text = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    fields = [line.split(": ", 1) for line in text.split("\n\n", 1)[0].splitlines() if ": " in line]
    assert ["License-Expression", "MIT"] in fields and ["Description-Content-Type", "text/markdown"] in fields
    assert {v for k, v in fields if k == "Provides-Extra"} >= {"train", "eval", "plot", "web", "all"}
    core = {Requirement(v).name for k, v in fields if k == "Requires-Dist" and "extra ==" not in v}
    assert core == {"torch", "triton", "numpy", "pyyaml", "safetensors", "soundfile", "soxr", "tqdm"}
    assert any(n.endswith("licenses/LICENSE") for n in names) and "bsmamba2/web/static/index.html" in names
    assert "bsmamba2/ops/cpu/selective.c" in names  # built on first use
