"""Checks at the public boundary: a wrong input fails at once, with a message that names the argument, what was
expected and what came — never deep inside torch, and never as silent garbage (a NaN guidance scale gives black
images; a 0-255 float image gives a meaningless latent).

Each check runs once, where a value enters the library (a constructor, a pipeline call), never inside a sampling
or training step: the checks read only Python numbers and tensor metadata (shape, dtype, device), which costs no
GPU synchronisation. The one exception, `check_pixel_range`, reads values and is only called outside loops.
"""

from __future__ import annotations

import math
import numbers

import torch

from .data import to_float


def describe(value) -> str:
    """A short description of what came: a tensor's shape and dtype, else the value itself."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)) and len(value) >= 8:
        return f"a {type(value).__name__} of {len(value)}"
    return repr(value)


def check_number(name: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number within [low, high] (an end excluded where *_open): returned as a float.

    bool is refused (True is an int in Python, but guidance_scale=True is a mistake), so are NaN and ±inf.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {describe(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        raise ValueError(f"{name} must be {' and '.join(filter(None, (lo, hi)))}, got {value:g}")
    return value


def check_int(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """An int within [low, high] (bool and floats refused: 2.5 steps is a mistake, not 2)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {describe(value)}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"from {low} to {high}" if low is not None and high is not None else (
            f">= {low}" if low is not None else f"<= {high}")
        raise ValueError(f"{name} must be an int {bounds}, got {value}")
    return value


def check_seed(seed) -> int | None:
    """None (a new random draw each call) or an int >= 0."""
    return None if seed is None else check_int("seed", seed, low=0)


def check_float_tensor(name: str, x, *, dims: int | None = None) -> torch.Tensor:
    """A floating-point tensor (optionally of `dims` dimensions): integer images must be converted first."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if dims is not None and x.dim() != dims:
        raise ValueError(f"{name} must have {dims} dimensions, got {describe(x)}")
    if not x.is_floating_point():
        hint = " (uint8 images: sdlesson.data.to_float maps 0…255 to [-1, 1])" if x.dtype == torch.uint8 else ""
        raise TypeError(f"{name} must be a floating-point tensor, got {describe(x)}{hint}")
    return x


def check_pixel_range(name: str, x: torch.Tensor, *, slack: float = 0.5) -> torch.Tensor:
    """Float pixels are expected in [-1, 1]; values far outside (0…255, say) are refused, not silently misread.

    Reads the tensor's values (a device sync): call it once at a boundary, never inside a loop.
    """
    if x.numel():
        lo, hi = torch.aminmax(x.detach())
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{name} contains NaN or infinite values")
        if lo < -1 - slack or hi > 1 + slack:
            raise ValueError(f"{name} must hold pixels in [-1, 1], got values from {lo:g} to {hi:g}"
                             + (" (0…255 images: pass them as uint8, or use sdlesson.data.to_float)" if hi > 2 else ""))
    return x


def check_same_batch(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{name_a} and {name_b} must have the same batch size, got {a.shape[0]} and {b.shape[0]} "
                         f"({describe(a)} and {describe(b)})")


def check_device(device) -> torch.device:
    """A device torch knows ("cpu", "cuda", "cuda:1", "mps"), that is available here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be one of 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but CUDA is not available on this machine; use 'cpu'")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} was asked for, but MPS is not available on this machine; use 'cpu'")
    return dev


def check_unet_inputs(cfg, x, t, *, class_labels=None, context=None, context_mask=None) -> torch.Tensor:
    """A UNet's inputs against its config (a UNetConfig): images (B, in_channels, H, W) with H and W divisible by
    2^(levels-1), one timestep per image (a scalar is broadcast), and the conditioning the model was built for.
    Returns t as a (B,) tensor on x's device."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected images of shape (B, {cfg.in_channels}, H, W), got {shape}")
    if not x.is_floating_point():
        raise TypeError(f"expected floating-point images, got dtype {x.dtype} (uint8 images: "
                        "sdlesson.data.to_float maps 0…255 to [-1, 1])")
    if x.shape[1] != cfg.in_channels:
        raise ValueError(
            f"this UNet takes {cfg.in_channels}-channel input, got {x.shape[1]} channels (shape {tuple(x.shape)})"
        )
    factor = 2 ** (len(cfg.block_channels) - 1)
    if x.shape[2] % factor or x.shape[3] % factor:
        raise ValueError(f"height and width must be multiples of {factor}, got {tuple(x.shape[2:])}")
    t = torch.as_tensor(t, device=x.device)
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"expected one timestep per image, shape ({x.shape[0]},), got {tuple(t.shape)}")
    if class_labels is not None and not cfg.num_classes:
        raise ValueError("this UNet has no class conditioning (num_classes is None) but class_labels were given")
    if context is not None and cfg.context_dim is None:
        raise ValueError("this UNet has no cross-attention (context_dim is None) but a context was given")
    if context is None and cfg.context_dim is not None:
        raise ValueError(f"this UNet is text-conditioned (context_dim={cfg.context_dim}): pass context=(B, L, "
                         f"{cfg.context_dim}) token embeddings; for an unconditional prediction, pass the empty "
                         "prompt's embeddings, as classifier-free guidance does")
    if context is not None and (context.dim() != 3 or context.shape[-1] != cfg.context_dim):
        raise ValueError(f"context must be (B, L, {cfg.context_dim}), got {tuple(context.shape)}")
    if context is not None and context.shape[0] != x.shape[0]:
        raise ValueError(f"context must have one row per image: batch {x.shape[0]}, got context of shape "
                         f"{tuple(context.shape)}")
    if context_mask is not None and (context is None or tuple(context_mask.shape) != tuple(context.shape[:2])
                                     or context_mask.dtype != torch.bool):
        raise ValueError(f"context_mask must be a bool tensor of shape (B, L) = "
                         f"{tuple(context.shape[:2]) if context is not None else '(B, L) of a context'}, "
                         f"got {context_mask.dtype} {tuple(context_mask.shape)}")
    return t


def check_images(name: str, x, *, channels: int = 3) -> torch.Tensor:
    """Images (B, C, H, W): uint8 (0 … 255) or float in [-1, 1]; returned as float in [-1, 1] (reads values)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of images (B, {channels}, H, W), got {type(x).__name__}"
                        + (" (a PIL image: torch.from_numpy(np.array(im)).permute(2, 0, 1)[None])"
                           if type(x).__module__.startswith("PIL") else ""))
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must be images of shape (B, {channels}, H, W), got {describe(x)}"
                         + (" (one image: add the batch dimension, x[None])" if x.dim() == 3 else ""))
    if x.dtype == torch.uint8:
        return to_float(x)  # 0 … 255 -> [-1, 1]
    check_float_tensor(name, x)
    return check_pixel_range(name, x)


def check_mask(name: str, mask, *, size: tuple[int, int]) -> torch.Tensor:
    """A mask (B, 1, H, W) of the image's size: bool, uint8 (0 … 255) or float in [0, 1]. Returned as float 0 or 1,
    binarised at half the range as diffusers' mask processor does (≥ 0.5 -> 1): 1 = repaint, 0 = keep."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (B, 1, H, W), got {type(mask).__name__}")
    if mask.dim() != 4 or mask.shape[1] != 1 or tuple(mask.shape[2:]) != tuple(size):
        raise ValueError(f"{name} must have the shape (B, 1, {size[0]}, {size[1]}) (one channel, the image's size), "
                         f"got {describe(mask)}")
    if mask.dtype == torch.bool:
        return mask.float()
    if mask.dtype == torch.uint8:
        return (mask >= 128).float()  # m / 255 ≥ 0.5
    check_float_tensor(name, mask)
    if mask.numel():
        lo, hi = (float(v) for v in torch.aminmax(mask))
        if not (0 <= lo and hi <= 1):  # (NaN fails both)
            raise ValueError(f"{name} must hold values in [0, 1] (1 = repaint), got values from {lo:g} to {hi:g}")
    return (mask >= 0.5).float()
