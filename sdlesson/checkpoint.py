"""Checkpoints: safetensors files (tensors only, so loading one runs no code) with the model's config beside the
weights.

A checkpoint is one file. Its metadata holds `kind` (which model class), `config` (the dataclass as JSON) and
anything else the writer adds as JSON (training state such as the step and loss history). Writes are atomic:
the file is written under a temporary name in the same folder, flushed to disk, then renamed over the target,
so a crash mid-write never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

FORMAT = "sdlesson-checkpoint-v1"


def save_checkpoint(path, tensors: dict[str, torch.Tensor], *, kind: str, config: dict, **meta) -> Path:
    """Write tensors and metadata to `path` atomically. Extra keyword arguments are stored as JSON."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write checkpoint {path}: folder {path.parent} does not exist")
    metadata = {"format": FORMAT, "kind": kind, "config": json.dumps(config)}
    metadata.update({k: json.dumps(v) for k, v in meta.items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; a checkpoint is an ordinary file
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_metadata(path) -> dict:
    """The checkpoint's metadata, decoded: {'kind': str, 'config': dict, ...}. Raises if not a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not an sdlesson checkpoint (not a safetensors file: {e})") from None
    if raw.get("format") != FORMAT:
        raise ValueError(f"{path} is not an sdlesson checkpoint (no '{FORMAT}' format tag in its metadata)")
    meta = {k: json.loads(v) for k, v in raw.items() if k not in ("format", "kind")}
    meta["kind"] = raw["kind"]
    return meta


def load_tensors(path) -> dict[str, torch.Tensor]:
    read_metadata(path)  # validates the file first
    return load_file(str(path))


def check_kind(meta: dict, expected: str, path) -> None:
    if meta["kind"] != expected:
        raise ValueError(f"{path} holds a {meta['kind']!r} checkpoint, expected a {expected!r} checkpoint")


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under `prefix.`, with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


# --- whole models -------------------------------------------------------------------------------------------------

def _registry() -> dict:
    """kind -> (config class, model class). Imported here, not at the top, so model files can import this module."""
    from .classifier import Classifier, ClassifierConfig
    from .text import CLIP, CLIPConfig
    from .text_unet import TextUNet, TextUNetConfig
    from .unet import UNet, UNetConfig
    from .vae import VAE, VAEConfig

    return {"unet": (UNetConfig, UNet), "classifier": (ClassifierConfig, Classifier), "vae": (VAEConfig, VAE),
            "clip": (CLIPConfig, CLIP), "text_unet": (TextUNetConfig, TextUNet)}


def kind_of(model: torch.nn.Module) -> str:
    for kind, (_, cls) in _registry().items():
        if type(model) is cls:
            return kind
    raise TypeError(f"cannot checkpoint a {type(model).__name__}: expected one of sdlesson's models")


def save_model(path, model: torch.nn.Module, *, dtype: torch.dtype | None = None, **meta) -> Path:
    """Save a model's weights and config; `meta` (JSON-able) is stored beside them, e.g. a model card entry.

    dtype=torch.float16 stores floating-point weights at half the size; loading casts them back to the model's dtype.
    """
    tensors = {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v
               for k, v in model.state_dict().items()}
    return save_checkpoint(path, tensors, kind=kind_of(model), config=model.config.to_dict(), **meta)


def load_model(path, *, kind: str | None = None, weights: str = "ema", device="cpu") -> torch.nn.Module:
    """Rebuild a model from a checkpoint. `weights="ema"` takes the EMA weights of a training checkpoint if it has
    them."""
    meta = read_metadata(path)
    if kind is not None:
        check_kind(meta, kind, path)
    registry = _registry()
    if meta["kind"] not in registry:
        raise ValueError(f"{path} holds a {meta['kind']!r} checkpoint, which is not a model sdlesson can build")
    config_cls, model_cls = registry[meta["kind"]]
    model = model_cls(config_cls(**meta["config"]))
    load_weights(model, path, weights=weights)
    return model.to(device).eval()


def load_weights(model: torch.nn.Module, path, *, weights: str = "ema") -> torch.nn.Module:
    """Load a checkpoint's weights into an existing model, after checking the kind and config match."""
    meta = read_metadata(path)
    check_kind(meta, kind_of(model), path)
    config_cls = _registry()[meta["kind"]][0]
    expected = json.loads(json.dumps(model.config.to_dict()))  # tuples -> lists, as stored
    saved = json.loads(json.dumps(config_cls(**meta["config"]).to_dict()))  # fields added since: their defaults
    if saved != expected:
        diff = {k: (expected.get(k), saved.get(k)) for k in set(expected) | set(saved)
                if expected.get(k) != saved.get(k)}
        raise ValueError(f"{path} was saved from a model with a different config; (model, checkpoint) differ in {diff}")
    tensors = load_tensors(path)
    # A training checkpoint holds model.*, ema.* and optim.*; a plain one holds the weights alone.
    if any(k.startswith("model.") for k in tensors):
        prefix = "ema" if weights == "ema" and any(k.startswith("ema.") for k in tensors) else "model"
        tensors = split_prefix(tensors, prefix)
    model.load_state_dict(tensors)
    return model
