"""The model picker's models without HTTP: what each entry says before loading, lazy loading,
sharing, at most N loaded (the least recently used goes), the flags' rules."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from bsmamba2 import BSMamba2, Separator, save_model
from bsmamba2.checkpoint.io import CheckpointError
from bsmamba2.checkpoint.registry import KNOWN
from bsmamba2.errors import BSMamba2Error
from bsmamba2.web.errors import JobError
from bsmamba2.web.models import ModelChoice, ModelShelf, model_choices
from tests.helpers.configs import MICRO
from tests.helpers.models import MaskModel

CPU = torch.device("cpu")


def shelf_of(names: list[str], max_loaded: int) -> tuple[ModelShelf, list[str]]:
    """A shelf whose loads are recorded; each model a mask of its own gain."""
    loads = []

    def load(choice: ModelChoice):
        loads.append(choice.name)
        return {False: Separator(MaskModel(gain=len(loads)), device="cpu", segment=0.5, progress=False)}

    choices = [ModelChoice(name, name, "mamba2", ("vocals", "accompaniment")) for name in names]
    return ModelShelf(choices, load, CPU, max_loaded=max_loaded, tta_choice=False), loads


def test_models_load_on_first_use_once_and_the_least_recently_used_goes():
    shelf, loads = shelf_of(["a", "b", "c"], max_loaded=2)
    assert loads == [] and shelf.default == "a"  # nothing loads before a job asks
    first = shelf.separator("a")
    assert shelf.separator("a") is first and loads == ["a"]  # loaded once, shared
    gone = weakref.ref(shelf.separator("b").model)
    shelf.separator("a")  # a is now the most recently used
    shelf.separator("c")  # one more than max_loaded: b goes, not a
    assert loads == ["a", "b", "c"] and shelf.loads == 3
    assert [m["loaded"] for m in shelf.describe()] == [True, False, True]
    gc.collect()
    assert gone() is None  # dropped for real: the shelf held the only reference
    assert shelf.separator("a") is first and loads == ["a", "b", "c"]
    shelf.separator("b")  # loads again, c goes
    assert loads == ["a", "b", "c", "b"] and [m["loaded"] for m in shelf.describe()] == [True, True, False]


def test_unknown_models_and_tta_are_one_line_refusals():
    shelf, _ = shelf_of(["quiet", "loud"], max_loaded=1)
    with pytest.raises(JobError, match=r"^unknown model 'nope' \(this server offers: quiet, loud\)$") as e:
        shelf.separator("nope")
    assert e.value.status == 400
    with pytest.raises(JobError, match=r"^this server runs with TTA off only$"):
        shelf.separator("quiet", tta=True)
    with pytest.raises(BSMamba2Error, match="--max-models must be at least 1, got 0"):
        ModelShelf(list(shelf.choices.values()), lambda c: {}, CPU, max_loaded=0)


def test_a_failed_load_is_not_remembered():
    calls = []

    def load(choice):
        calls.append(choice.name)
        if len(calls) == 1:
            raise CheckpointError("broken.ckpt: truncated")
        return {False: Separator(MaskModel(), device="cpu", progress=False)}

    shelf = ModelShelf([ModelChoice("broken", "broken.ckpt", "mamba2", ("vocals",))], load, CPU, tta_choice=False)
    with pytest.raises(CheckpointError, match="truncated"):
        shelf.separator("broken")
    assert not shelf.is_loaded("broken")
    shelf.separator("broken")  # tried again (the file may have been fixed)
    assert calls == ["broken", "broken"]


def test_choices_from_the_flags_say_what_each_model_is(tmp_path, monkeypatch):
    torch.manual_seed(0)
    two = save_model(BSMamba2(MICRO.replace(n_stems=2, targets=("drums", "bass"))), tmp_path / "two.safetensors")
    mamba1 = save_model(BSMamba2(MICRO.replace(mixer="mamba", d_state=4)), tmp_path / "m1.safetensors")
    monkeypatch.setenv("BSMAMBA2_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BSMAMBA2_CHECKPOINT", raising=False)
    known = KNOWN["bs_mamba2_vocals"]
    choices = model_choices([str(two), str(mamba1)], [known.name])
    assert [(c.name, c.mixer, c.outputs, c.size, c.cached) for c in choices] == [
        ("two", "mamba2", ("drums", "bass"), two.stat().st_size, True),
        ("m1", "mamba", ("vocals", "accompaniment"), mamba1.stat().st_size, True),
        (known.name, "mamba2", ("vocals", "accompaniment"), known.size, False),  # not downloaded yet
    ]
    known.path.parent.mkdir(parents=True)
    with known.path.open("wb") as handle:  # a sparse stand-in of the right size
        handle.truncate(known.size)
    assert model_choices([known.name])[0].cached
    assert [c.name for c in model_choices()] == list(KNOWN)  # no flags: every known checkpoint
    monkeypatch.setenv("BSMAMBA2_CHECKPOINT", str(two))
    assert [c.name for c in model_choices()] == ["two", *KNOWN]  # and $BSMAMBA2_CHECKPOINT first
    (tmp_path / "other").mkdir()
    twin = save_model(BSMamba2(MICRO), tmp_path / "other" / "two.safetensors")
    with pytest.raises(BSMamba2Error, match=r"two models named 'two' \(.*two.safetensors and .*other/two"):
        model_choices([str(two), str(twin)])
    (tmp_path / "broken.ckpt").write_bytes(b"\x80\x02 not a checkpoint")
    with pytest.raises(CheckpointError, match=r"broken.ckpt: not a readable PyTorch checkpoint") as e:
        model_choices([str(tmp_path / "broken.ckpt")])  # at start, not when a job asks
    assert "\n" not in str(e.value)


def test_a_shelf_of_one_loaded_model_keeps_it():
    separator = Separator(MaskModel(), device="cpu", progress=False)
    twin = Separator(separator.model, device="cpu", progress=False, tta=True)
    shelf = ModelShelf.of(separator, twin)
    assert shelf.loads == 0 and shelf.tta_choice and shelf.describe() == [
        {"name": "bsmamba2", "mixer": "mamba2", "size": None, "cached": True, "loaded": True,
         "stems": ["vocals", "accompaniment"]}
    ]
    assert shelf.separator("bsmamba2") is separator and shelf.separator("bsmamba2", tta=True) is twin
    assert not ModelShelf.of(separator).tta_choice


def test_a_url_checkpoint_is_fetched_at_start_and_named_after_its_file(server, tmp_path, monkeypatch):
    monkeypatch.setenv("BSMAMBA2_CACHE", str(tmp_path / "cache"))
    saved = save_model(BSMamba2(MICRO.replace(mixer="mamba", d_state=4)), tmp_path / "x.safetensors")
    server.files["/people/mine.safetensors"] = saved.read_bytes()
    url = server.url.replace("/weights.ckpt", "/people/mine.safetensors")
    (choice,) = model_choices([url])
    assert (choice.name, choice.weights, choice.mixer, choice.size, choice.cached) == (
        "mine", url, "mamba", saved.stat().st_size, True
    )
    asked = len(server.requests)
    assert model_choices([url])[0].name == "mine" and len(server.requests) == asked  # from the cache
