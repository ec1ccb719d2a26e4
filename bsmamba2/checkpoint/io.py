"""Read every BSMamba2 checkpoint layout in the wild; write our own.

Layouts read:
- the official Lightning ``.ckpt``: ``state_dict`` with ``model.``-prefixed weights (plus
  STFT window buffers), EMA weights as a tuple in ``optimizer_states[0]["ema"]``;
- plain state dicts (``.pt``/``.pth``/``.ckpt``), with or without the ``model.`` prefix;
- ``.safetensors``, and our own format: safetensors whose metadata holds the config.

Pickled files go through :mod:`bsmamba2.checkpoint.safe_pickle`, so loading never runs
code. Every failure is a :class:`CheckpointError` with a one-line message.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from bsmamba2.checkpoint.registry import resolve
from bsmamba2.checkpoint.safe_pickle import torch_load
from bsmamba2.errors import BSMamba2Error
from bsmamba2.fileio import atomic_path
from bsmamba2.model.bsmamba2 import BSMamba2
from bsmamba2.model.config import BSMamba2Config
from bsmamba2.model.mixers import SHARED_OPTIONS, infer_mixer

FORMAT_NAME = "bsmamba2"
FORMAT_VERSION = "1"
_PREFIX = "model."
_MIXER = "layers.0.0.forward_blocks.0.mixer."
_MIXER_RX = re.compile(r"(layers\.\d+\.\d+\.(?:forward|backward)_blocks\.\d+\.mixer\.)")


class CheckpointError(BSMamba2Error, ValueError):
    """A checkpoint that cannot be used; the message is one line and names the file."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _is_safetensors(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < header_len <= path.stat().st_size - 8


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({_one_line(exc)})") from None


def _tensor_mapping(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, Mapping) and obj and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        return dict(obj)
    return None


def _model_weights(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the Lightning ``model.`` prefix; other top-level entries (STFT windows) are not ours."""
    if any(k.startswith(_PREFIX) for k in raw):
        return {k[len(_PREFIX) :]: v for k, v in raw.items() if k.startswith(_PREFIX)}
    return raw


def _ema_weights(path: Path, obj: Any, raw: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    try:
        ema = obj["optimizer_states"][0]["ema"]
    except (KeyError, IndexError, TypeError):
        raise CheckpointError(
            f"{path}: ema=True, but there are no EMA weights (optimizer_states[0]['ema']) in it"
        ) from None
    if not isinstance(ema, (tuple, list)) or not all(isinstance(t, torch.Tensor) for t in ema):
        raise CheckpointError(f"{path}: the EMA entry is not a sequence of tensors")
    return list(ema)


def read_weights(
    path: str | os.PathLike, ema: bool = False
) -> tuple[dict[str, torch.Tensor], BSMamba2Config | None, list[torch.Tensor] | None]:
    """The model's state dict from any supported layout, its stored config (ours only), and
    the EMA tensors (a list in parameter order) when ``ema`` is set.
    """
    weights, config, ema_tensors, _ = _read(Path(path), ema)
    return weights, config, ema_tensors


def _omegaconf_value(node: Any, *keys: str) -> Any:
    """The value at ``keys`` of an OmegaConf config as the safe unpickler leaves it (inert
    stand-ins whose state holds ``_content`` dicts and ``_val`` leaves), or of a plain dict;
    None where the path does not exist."""
    for key in keys:
        state = getattr(node, "state", None)
        content = state.get("_content") if isinstance(state, dict) else node
        if not isinstance(content, Mapping) or key not in content:
            return None
        node = content[key]
    state = getattr(node, "state", None)
    return state.get("_val") if isinstance(state, dict) else node


def _read(path: Path, ema: bool):
    """:func:`read_weights`, plus the mixer an official checkpoint's hyper-parameters name
    (``model.module_type``), or None."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); download it again")
    if _is_safetensors(path):
        weights, meta = _read_safetensors(path)
        if ema:
            raise CheckpointError(f"{path}: ema=True, but safetensors files hold one set of weights")
        config = None
        if meta.get("format") == FORMAT_NAME:
            config = BSMamba2Config.from_dict(json.loads(meta["config"]))
        return _model_weights(weights), config, None, None
    try:
        obj = torch_load(str(path))
    except Exception as exc:  # torch raises many types for damaged files
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint, truncated or corrupt ({_one_line(exc)})"
        ) from None
    raw = _tensor_mapping(obj)
    if raw is None and isinstance(obj, Mapping):
        raw = _tensor_mapping(obj.get("state_dict")) or _tensor_mapping(obj.get("model"))
    if raw is None:
        raise CheckpointError(f"{path}: unknown checkpoint layout (no state dict of tensors found)")
    hparams = obj.get("hyper_parameters") if isinstance(obj, Mapping) else None
    module_type = _omegaconf_value(hparams, "model", "module_type")
    return (_model_weights(raw), None, (_ema_weights(path, obj, raw) if ema else None),
            module_type if isinstance(module_type, str) else None)


def _count(weights: Mapping[str, torch.Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in weights if (m := rx.fullmatch(k))})


def _check_one_mixer(weights: Mapping[str, torch.Tensor], mixer: str, dim: int, ngroups: int,
                     module_type: str | None) -> None:
    """Every mixer of the state dict is the first one's kind, and an official checkpoint's
    ``module_type`` names that kind."""
    prefixes = sorted({m.group(1) for k in weights if (m := _MIXER_RX.match(k))})
    for prefix in prefixes:
        state = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        try:
            other = infer_mixer(state, dim, ngroups)[0]
        except ValueError:
            other = None
        if other != mixer:
            raise CheckpointError(f"mixed mixer layouts: {prefix[:-1]} is not a {mixer!r} mixer "
                                  "like the first")
    if module_type is not None and module_type != mixer:
        raise CheckpointError(f"hyper_parameters say module_type {module_type!r}, but the weights are a "
                              f"{mixer!r} model")


def infer_config(weights: Mapping[str, torch.Tensor], ngroups: int = 1,
                 module_type: str | None = None) -> BSMamba2Config:
    """The architecture from tensor shapes (ngroups cannot be seen in them: default 1); the
    mixer's part is its own inference function (:func:`bsmamba2.model.mixers.infer_mixer`),
    the same for every mixer. ``module_type`` (an official checkpoint's), when given, must
    name that mixer."""
    try:
        dim = weights["final_norm.gamma"].shape[0]
        depth = _count(weights, r"layers\.(\d+)\.0\.linear\.bias")
        n_stems = _count(weights, r"mask_estimators\.(\d+)\.to_freqs\.0\.0\.0\.weight")
        n_bands = _count(weights, r"band_split\.to_features\.(\d+)\.0\.gamma")
        widths = [weights[f"band_split.to_features.{k}.0.gamma"].shape[0] for k in range(n_bands)]
        hidden = weights["mask_estimators.0.to_freqs.0.0.0.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"not a BSMamba2 state dict: missing key {exc.args[0]!r}") from None
    bins_total = BSMamba2Config.n_fft // 2 + 1
    channels = next(
        (c for c in (2, 1) if all(w % (2 * c) == 0 for w in widths) and sum(widths) == 2 * c * bins_total),
        0,
    )
    if not channels:
        raise CheckpointError(
            f"unknown BSMamba2 layout: {len(widths)} bands of {sum(widths)} features "
            f"match no {bins_total}-bin STFT"
        )
    try:
        mixer, options = infer_mixer({k[len(_MIXER):]: v for k, v in weights.items() if k.startswith(_MIXER)},
                                     dim, ngroups)
        _check_one_mixer(weights, mixer, dim, ngroups, module_type)
        return BSMamba2Config(
            dim=dim,
            depth=depth,
            mixer=mixer,
            **{k: v for k, v in options.items() if k in SHARED_OPTIONS},
            mixer_options={k: v for k, v in options.items() if k not in SHARED_OPTIONS},
            mask_mlp_expansion=hidden // dim,
            n_stems=n_stems,
            stereo=channels == 2,
            bands=tuple(w // (2 * channels) for w in widths),
        )
    except ValueError as exc:
        raise CheckpointError(f"unknown BSMamba2 layout: {exc}") from None


def check_compatible(model: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """One-line errors naming the first missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in weights:
            raise CheckpointError(f"missing key {key!r} (unknown checkpoint layout)")
        if weights[key].shape != tensor.shape:
            raise CheckpointError(
                f"shape mismatch for {key!r}: checkpoint {list(weights[key].shape)}, "
                f"model {list(tensor.shape)}"
            )
    extra = [k for k in weights if k not in expected]
    if extra:
        raise CheckpointError(f"unexpected key {extra[0]!r} (unknown checkpoint layout)")


def check_finite(weights: Mapping[str, torch.Tensor]) -> None:
    """A one-line error naming the first tensor with NaN or infinite values: damaged bytes
    inside a tensor load without complaint and would make every output NaN."""
    for key, tensor in weights.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise CheckpointError(
                    f"{bad} NaN or infinite values in {key!r}: the file is damaged (download it again)"
                )


def checkpoint_config(path: str | os.PathLike) -> BSMamba2Config:
    """The architecture of the checkpoint file ``path``, without building the model: our
    format's stored config, else inferred from the tensor shapes (which reads the file).

    Raises:
        CheckpointError: one line naming the file, as :func:`load_model`.
    """
    path = Path(path)
    weights, stored, _, module_type = _read(path, False)
    try:
        return stored or infer_config(weights, module_type=module_type)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def load_model(
    name_or_path: str | os.PathLike,
    ema: bool = False,
    device: str | torch.device = "cpu",
    config: BSMamba2Config | None = None,
) -> BSMamba2:
    """A BSMamba2 in eval mode with the weights of any supported checkpoint.

    Args:
        name_or_path: a checkpoint in any layout of the module docstring (official Lightning
            ``.ckpt``, plain state dict, ``.safetensors``, our format), or the name of a known
            checkpoint (``"bs_mamba2_vocals"``, :data:`bsmamba2.checkpoint.registry.KNOWN`),
            downloaded into the cache on first use.
        ema: take the EMA weights of an official Lightning checkpoint instead of the raw ones.
        device: where the model goes (``"cpu"``, ``"cuda"``, a ``torch.device``).
        config: the architecture; by default our format's stored config, else inferred from
            the tensor shapes (``ngroups`` cannot be seen in them: 1).

    Raises:
        CheckpointError: one line naming the file and the first problem (missing, empty,
            truncated, foreign, mis-shaped or non-finite weights, no EMA weights for ``ema``).
    """
    path = resolve(name_or_path)
    weights, stored, ema_tensors, module_type = _read(Path(path), ema)
    try:
        model = BSMamba2(config or stored or infer_config(weights, module_type=module_type))
        check_compatible(model, weights)
        if ema_tensors is not None:
            params = [name for name, _ in model.named_parameters()]
            if len(ema_tensors) != len(params):
                raise CheckpointError(f"{len(ema_tensors)} EMA tensors for {len(params)} model parameters")
            weights = {**weights, **dict(zip(params, ema_tensors, strict=True))}
            check_compatible(model, weights)
        check_finite(weights)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    model.load_state_dict(weights, strict=True)
    return model.to(device).eval()


def save_model(model: BSMamba2, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Write our format (safetensors + config in the metadata), atomically."""
    path = Path(path)
    meta = {
        **(metadata or {}),
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(model.config.to_dict()),
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=meta)
    return path
