"""tools/setup.sh on a stock Debian/Ubuntu (issue 13 item 10): `python3` but no `python`, no
system-wide pip: it makes and fills a virtual environment. Run against stand-in programs that
log their arguments (no network, nothing installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

LOGGING = """#!/bin/sh
echo "$(basename "$0") $*" >> "$SETUP_LOG"
"""
PYTHON3 = LOGGING + """
case "$1 $2" in
  "-c import ensurepip, venv") exit "$VENV_MISSING" ;;
  "-m venv") dir=$(eval echo "\\${$#}"); mkdir -p "$dir/bin"; cp "$0.venv" "$dir/bin/python" ;;
esac
"""


def _machine(tmp_path: Path, ffmpeg: bool) -> tuple[Path, dict[str, str]]:
    """A copy of tools/setup.sh and a PATH of stand-ins: python3 (no python), apt-get, id as root."""
    repo, bin_dir = tmp_path / "repo", tmp_path / "bin"
    (repo / "tools").mkdir(parents=True)
    shutil.copy(ROOT / "tools" / "setup.sh", repo / "tools" / "setup.sh")
    bin_dir.mkdir()
    programs = {"python3": PYTHON3, "python3.venv": LOGGING, "apt-get": LOGGING, "id": "#!/bin/sh\necho 0\n"}
    if ffmpeg:
        programs.update(ffmpeg=LOGGING, ffprobe=LOGGING, chromium=LOGGING)
    for name, text in programs.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "dirname").symlink_to(shutil.which("dirname"))
    (bin_dir / "basename").symlink_to(shutil.which("basename"))
    (bin_dir / "mkdir").symlink_to(shutil.which("mkdir"))
    (bin_dir / "cp").symlink_to(shutil.which("cp"))
    env = {"PATH": str(bin_dir), "SETUP_LOG": str(tmp_path / "log"), "HOME": str(tmp_path)}
    return repo, env


def _setup(tmp_path: Path, ffmpeg: bool, venv_missing: bool) -> list[str]:
    repo, env = _machine(tmp_path, ffmpeg)
    run = subprocess.run(
        [shutil.which("bash"), str(repo / "tools" / "setup.sh")],
        env={**env, "VENV_MISSING": str(int(venv_missing))}, capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "installed into .venv" in run.stdout
    return (tmp_path / "log").read_text().splitlines()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_setup_makes_a_virtual_environment_without_a_python_binary(tmp_path):
    assert _setup(tmp_path, ffmpeg=True, venv_missing=False) == [
        "python3 -c import ensurepip, venv",
        "python3 -m venv --system-site-packages .venv",
        "python -m pip install -q torch==2.13.0",
        "python -m pip install -q -e .[all,dev]",
    ]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_setup_installs_venv_and_ffmpeg_where_debian_lacks_them(tmp_path):
    log = _setup(tmp_path, ffmpeg=False, venv_missing=True)
    assert log[:3] == [
        "python3 -c import ensurepip, venv",
        "apt-get update -qq",
        "apt-get install -y -qq ffmpeg libsndfile1 chromium python3-venv",
    ]
    assert log[3:] == [
        "python3 -m venv --system-site-packages .venv",
        "python -m pip install -q torch==2.13.0",
        "python -m pip install -q -e .[all,dev]",
    ]
