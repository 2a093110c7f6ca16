"""What a noise predictor costs: FLOPs, memory and time of one UNet in pixel space and in latent space.

Lesson 03 checks the lecture's "latent space is 48× smaller, so it's a lot faster" by measuring it:

    pixels  = torch.empty(1, 3, 512, 512, device="meta")      # 786,432 numbers
    latents = torch.empty(1, 4, 64, 64, device="meta")        #  16,384 numbers: 48× fewer
    t = torch.zeros(1, dtype=torch.long, device="meta")
    base = UNetConfig(block_channels=(64, 128, 128), attention_levels=(False, True, True))
    forward_flops(unet_for(3, 512, base=base, device="meta"), pixels, t)   # FLOPs of one denoising step
    activation_memory(unet_for(4, 64, base=base, device="meta"), latents, t)  # bytes kept for backward

Counting runs on the **meta device**: tensors with a shape and a dtype but no data, so every op is free and a
512×512 UNet is counted in a blink on any laptop. Timing (`time_forward`, `time_train_step`) needs a real device.

What is counted, and what is not:

- FLOPs come from `torch.utils.flop_counter.FlopCounterMode`, which counts matrix products and convolutions
  (a multiply and an add = 2 FLOPs); GroupNorm, SiLU, softmax and additions are not counted (they are a few
  FLOPs per number, far below a 3×3 convolution's 2·9·C_in per output number).
- Attention: FlopCounterMode counts `F.scaled_dot_product_attention` on CUDA (its fused kernels are
  registered) and on the meta device (there SDPA runs its math version: two counted `bmm`s, QKᵀ and AV).
  On a CPU, torch's flop counter does not know the fused CPU kernel (as of torch 2.14) and would count
  attention as 0; we register the same formula for it, 2·B·h·N·L·d for QKᵀ plus 2·B·h·N·L·d for AV.
- Activation memory is what autograd saves for backward, seen through `saved_tensors_hooks`. Attention can be
  done two ways: the math version stores the (N × L) attention weights of every head — it grows with the
  square of the positions —, the fused ("flash") kernels store only q, k, v, the output and one number per row.
  `attention_kernel="fused"` (the default) counts what today's CPU and CUDA kernels keep, on the meta device
  too; `"math"` counts the naive version, as Stable Diffusion v1 ran before memory-efficient attention.
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from .devices import pick_device
from .unet import UNet, UNetConfig

aten = torch.ops.aten

# ---------------------------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------------------------


def attention_flops(query_shape, key_shape, value_shape) -> int:
    """FLOPs of softmax(q kᵀ / √d) v for q (B, h, N, d), k (B, h, L, d), v (B, h, L, d_v): two batched matmuls.

    q kᵀ:    (N × d) @ (d × L) per head -> 2·N·L·d
    (…) v:   (N × L) @ (L × d_v)        -> 2·N·L·d_v        with self-attention L = N: it grows as N².
    """
    B, h, N, d = query_shape
    L, d_v = key_shape[-2], value_shape[-1]
    return 2 * B * h * N * L * d + 2 * B * h * N * L * d_v


def _attention_flop_formula(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return attention_flops(query_shape, key_shape, value_shape)


def _attention_backward_flop_formula(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                                     **kwargs) -> int:
    # The gradients of the two matmuls, two matmuls each: d(attn) = dO vᵀ, dv = attnᵀ dO, dq = d(scores) k,
    # dk = d(scores)ᵀ q -> 2× the forward, the same as autograd through the math version counts.
    return 2 * attention_flops(query_shape, key_shape, value_shape)


def _extra_flop_formulas() -> dict:
    """Formulas for the attention kernels torch's flop counter leaves out (CPU's and MPS's fused SDPA)."""
    from torch.utils.flop_counter import flop_registry

    forward = ["_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_attention_math_for_mps",
               "_scaled_dot_product_fused_attention_overrideable"]
    backward = ["_scaled_dot_product_flash_attention_for_cpu_backward",
                "_scaled_dot_product_fused_attention_overrideable_backward"]
    extra = {}
    for names, formula in ((forward, _attention_flop_formula), (backward, _attention_backward_flop_formula)):
        for name in names:
            op = getattr(aten, name, None)
            if op is not None and op not in flop_registry:  # a later torch may count it itself: then use its own
                extra[op] = formula
    return extra


# The kind of each counted op: convolutions, linear layers (the matmuls of nn.Linear, in the time MLP and in
# attention's q, k, v and output projections, which grow with N) and attention proper (QKᵀ and AV, ∝ N²).
_OP_KIND = {
    "convolution": "conv", "convolution_backward": "conv", "_convolution": "conv", "cudnn_convolution": "conv",
    "mm": "linear", "addmm": "linear", "_scaled_mm": "linear",
    "bmm": "attention", "baddbmm": "attention",
}
OP_KINDS = ("conv", "linear", "attention")


def _op_kind(op) -> str:
    name = str(op).removeprefix("aten.").split(".")[0]  # aten.convolution -> convolution
    if "attention" in name:
        return "attention"
    return _OP_KIND.get(name, "other")


def _flop_counts(fn: Callable[[], object]) -> dict[str, dict[str, int]]:
    """Run fn() under FlopCounterMode: {module path ("" for the model itself): {op kind: FLOPs}}.

    FlopCounterMode keys modules by their dotted path from the root module's class name ("UNet.down.0.res.1");
    we drop that first name, so the paths read as in `model.named_modules()`, with "Global" for everything.
    """
    with FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas()) as counter:
        fn()
    counts = {}
    for module, per_op in counter.get_flop_counts().items():
        path = "Global" if module == "Global" else module.partition(".")[2]
        kinds = counts.setdefault(path, {})
        for op, flops in per_op.items():
            kinds[_op_kind(op)] = kinds.get(_op_kind(op), 0) + flops
    return counts


def forward_flops(model: nn.Module, *inputs, **model_kwargs) -> int:
    """FLOPs of one forward pass model(*inputs, **model_kwargs), e.g. forward_flops(unet, x, t).

    Works on any device, the meta device included (model and inputs both there), where it costs nothing.
    """
    with torch.no_grad():
        return sum(_flop_counts(lambda: model(*inputs, **model_kwargs)).get("Global", {}).values())


def train_step_flops(model: nn.Module, *inputs, **model_kwargs) -> int:
    """FLOPs of forward + backward of a mean-squared-error loss: about 3× the forward (backward ≈ 2×).

    Backward computes two products per forward product (the gradient of the input and of the weight), except
    for the first layer's input, which needs no gradient. The optimizer step (a few FLOPs per parameter) is left
    out. Works on the meta device.
    """
    def step():
        out = model(*inputs, **model_kwargs)
        F.mse_loss(out, torch.zeros_like(out)).backward()

    total = sum(_flop_counts(step).get("Global", {}).values())
    if isinstance(model, nn.Module):
        model.zero_grad(set_to_none=True)
    return total


def _part_of(path: str, model: nn.Module) -> str | None:
    """The top-level part a module path belongs to: "conv_in", "down.0", "mid", …; None for the model itself.

    Children that are ModuleLists (the UNet's down and up levels) are split by index; the UNet's middle,
    mid_res1, mid_attn and mid_res2, is one part, "mid".
    """
    if not path:
        return None
    first, _, rest = path.partition(".")
    if first.startswith("mid_"):
        return "mid"
    if isinstance(getattr(model, first, None), nn.ModuleList) and rest:
        return f"{first}.{rest.partition('.')[0]}"
    return first


def _parts(model: nn.Module) -> list[str]:
    """The model's top-level parts in the order they are defined, which is the order the UNet runs them."""
    parts = []
    for name, child in model.named_children():
        names = [f"{name}.{i}" for i in range(len(child))] if isinstance(child, nn.ModuleList) else [name]
        parts += [_part_of(n, model) for n in names if _part_of(n, model) not in parts]
    return parts


def flops_breakdown(model: nn.Module, *inputs, **model_kwargs) -> dict[str, dict[str, int]]:
    """FLOPs of one forward pass by top-level part and op kind: {part: {"conv": …, "linear": …, "attention": …}}.

    For the UNet the parts are, in the order they run: time_mlp, conv_in, down.0 … (highest resolution first),
    mid, up.0 … (lowest resolution first), conv_out. Every FLOP falls in exactly one part (ops the model runs
    outside any child module would go to "other"); parts with no FLOPs (norm_out) are left out.
    """
    with torch.no_grad():
        counts = _flop_counts(lambda: model(*inputs, **model_kwargs))
    parts = {part: {kind: 0 for kind in OP_KINDS} for part in _parts(model)}
    for path, kinds in counts.items():
        part = None if path == "Global" else _part_of(path, model)
        ancestors = [path.rsplit(".", i)[0] for i in range(1, path.count(".") + 1)]
        if part is None or any(a in counts and _part_of(a, model) == part for a in ancestors):
            continue  # the model as a whole, or a module inside one already counted (its FLOPs are in its parent's)
        for kind, flops in kinds.items():
            parts[part][kind] = parts[part].get(kind, 0) + flops
    total = counts.get("Global", {})
    leftover = {k: total[k] - sum(p.get(k, 0) for p in parts.values()) for k in total}
    if any(leftover.values()):
        parts["other"] = leftover
    return {part: kinds for part, kinds in parts.items() if any(kinds.values())}


def flops_by_op(model: nn.Module, *inputs, **model_kwargs) -> dict[str, int]:
    """FLOPs of one forward pass by op kind: {"conv": …, "linear": …, "attention": …} (QKᵀ and AV)."""
    with torch.no_grad():
        total = _flop_counts(lambda: model(*inputs, **model_kwargs)).get("Global", {})
    return {kind: total.get(kind, 0) for kind in OP_KINDS} | {k: v for k, v in total.items() if k not in OP_KINDS}


BLOCK_KINDS = ("residual", "attention", "resample", "other")


def block_kind(name: str) -> str:
    """What a UNet parameter's (or module's) name says it belongs to: "residual", "attention", "resample" or
    "other" (time MLP, class embedding, conv_in, norm_out, conv_out): 'down.1.attn.0.to_q.weight' -> 'attention'."""
    first = name.split(".")[0]
    if ".attn." in name or first == "mid_attn":
        return "attention"
    if ".res." in name or first.startswith("mid_res"):
        return "residual"
    return "resample" if ".resample." in name else "other"


def unet_level(name: str, model: nn.Module) -> str:
    """The level a UNet parameter lives at, as flops_breakdown names the parts: "down.0" …, "mid", "up.0" …;
    the layers before the first level and after the last are "in/out"."""
    part = _part_of(name, model)
    return part if part == "mid" or part.startswith(("down.", "up.")) else "in/out"


def parameters_by_level_and_kind(model: nn.Module) -> dict[str, dict[str, int]]:
    """Parameter counts {level: {block kind: count}}, levels in the order the parameters are defined. Works on the
    meta device: numel() of a meta tensor is its shape's product, no data needed (SD's UNet costs nothing)."""
    table: dict[str, dict[str, int]] = {}
    for name, p in model.named_parameters():
        row = table.setdefault(unet_level(name, model), dict.fromkeys(BLOCK_KINDS, 0))
        row[block_kind(name)] += p.numel()
    return table


# ---------------------------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------------------------


class _FusedAttentionOnMeta(TorchFunctionMode):
    """On the meta device, SDPA always takes its math path (it saves the N×L attention weights); send it to the
    fused CPU kernel instead, which has a meta version and saves what fused kernels on real devices save."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and args and args[0].device.type == "meta":
            return _fused_sdpa(*args, **kwargs)
        return func(*args, **kwargs)


def _fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if attn_mask is not None and attn_mask.dtype == torch.bool:  # the kernel wants an additive mask: 0 or -inf
        attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device).masked_fill(
            ~attn_mask, float("-inf"))
    return aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]


def _attention_context(attention_kernel: str, device: torch.device):
    if attention_kernel == "math":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return sdpa_kernel(SDPBackend.MATH)
    if attention_kernel == "fused":
        return _FusedAttentionOnMeta() if device.type == "meta" else nullcontext()
    raise ValueError(f"attention_kernel must be 'fused' or 'math', got {attention_kernel!r}")


def activation_memory(model: nn.Module, *inputs, attention_kernel: str = "fused", **model_kwargs) -> int:
    """Bytes of the tensors autograd saves for backward in one training forward pass model(*inputs).

    These activations, kept from the forward pass until backward uses them, are what grows with the batch and
    the resolution; add `training_state_bytes(model)` for weights, gradients and optimizer state. A tensor is
    counted once however many ops save it: we count the storages behind the saved tensors (two views of one
    storage, or one storage saved twice, count once; a view keeps its whole storage alive, so the whole storage
    counts). Parameters are not counted. The input batch is, when the first layer saves it (a convolution
    keeps its input to compute its weight's gradient).

    The peak during a real step is somewhat higher (temporaries, and gradients during backward), but these
    saved tensors are the bulk. Works on the meta device (the storages there have a size but no address).
    attention_kernel: "fused" (today's kernels: O(N) per attention layer) or "math" (stores the N×L weights).
    """
    weights = [*model.parameters(), *model.buffers()] if isinstance(model, nn.Module) else []
    param_storages = {w.untyped_storage()._cdata for w in weights}
    saved: dict[int, int] = {}  # storage address (its C++ object) -> bytes
    keep_alive = []  # hold the storages, so no address is reused by a new one during the pass

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage._cdata not in param_storages:
            saved[storage._cdata] = storage.nbytes()
            keep_alive.append(storage)
        return tensor

    device = next((x.device for x in inputs if isinstance(x, torch.Tensor)), torch.device("cpu"))
    with torch.enable_grad(), _attention_context(attention_kernel, device), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(*inputs, **model_kwargs)
    del out
    keep_alive.clear()
    return sum(saved.values())


def training_state_bytes(model: nn.Module) -> int:
    """Bytes of what training with AdamW keeps besides activations: weights, gradients, exp_avg, exp_avg_sq.

    For fp32 weights: parameters × 4 bytes × 4. Parameters that don't train (requires_grad False) count once.
    """
    total = 0
    for p in model.parameters():
        copies = 4 if p.requires_grad else 1  # weight, grad, Adam's first and second moments
        total += p.numel() * p.element_size() * copies
    return total


def peak_memory(fn: Callable[[], object], *, device=None) -> int | None:
    """Run fn(); return the peak bytes allocated on CUDA while it ran, above what was allocated before it.

    device: the CUDA device to watch (default: the current one, if CUDA is available). On a CPU (or MPS) there is
    no allocator statistic to read: fn() still runs, and None comes back. Use `activation_memory` there, which
    counts the bulk of a training step's memory exactly, on any device.
    """
    device = pick_device(device)
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


# ---------------------------------------------------------------------------------------------------------------
# Time
# ---------------------------------------------------------------------------------------------------------------


def synchronize(device) -> None:
    """Wait for the device to finish queued work: GPUs run asynchronously, so a clock read without it lies."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _median_seconds(step: Callable[[], object], device, *, repeats: int, warmup: int) -> float:
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if torch.device(device).type == "meta":
        raise ValueError("the meta device has no data and takes no time: time on a real device (cpu, cuda, mps)")
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _device_of(inputs) -> torch.device:
    for x in inputs:
        if isinstance(x, torch.Tensor):
            return x.device
    raise ValueError("expected at least one tensor input, e.g. time_forward(model, x, t)")


def time_forward(model: nn.Module, *inputs, repeats: int = 3, warmup: int = 1, **model_kwargs) -> float:
    """Median seconds of one forward pass without gradients: one sampling step (the sampler's arithmetic aside)."""
    def step():
        with torch.no_grad():
            model(*inputs, **model_kwargs)

    return _median_seconds(step, _device_of(inputs), repeats=repeats, warmup=warmup)


def time_train_step(model: nn.Module, *inputs, repeats: int = 3, warmup: int = 1, **model_kwargs) -> float:
    """Median seconds of one training step: forward, MSE against a random target, backward, AdamW step.

    The steps update the model's weights (use a throwaway model); AdamW's state is allocated in the first step,
    which is one reason to keep warmup >= 1.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    target = None

    def step():
        nonlocal target
        out = model(*inputs, **model_kwargs)
        if target is None:
            target = torch.randn_like(out)
        loss = F.mse_loss(out, target)  # || ε − ε_θ(x_t, t) ||²
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return _median_seconds(step, _device_of(inputs), repeats=repeats, warmup=warmup)


def device_name(device) -> str:
    """A readable name for the device the numbers were measured on: the GPU's name, or the CPU's model."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu" and Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                threads = torch.get_num_threads()
                return f"{line.split(':', 1)[1].strip()}, {threads} thread{'s' if threads != 1 else ''}"
    return platform.processor() or platform.machine() or device.type


# ---------------------------------------------------------------------------------------------------------------
# The same UNet in pixel space and in latent space
# ---------------------------------------------------------------------------------------------------------------


def unet_for(channels: int, size: int, *, base: UNetConfig, device=None) -> UNet:
    """The UNet of config `base` for inputs of `channels` × size × size: only in/out channels and size change.

    device="meta" builds it without allocating or initialising weights, for counting.
    """
    config = dataclasses.replace(base, in_channels=channels, out_channels=channels, sample_size=size)
    with torch.device(device) if device is not None else nullcontext():
        return UNet(config)


def unet_inputs(channels: int, size: int, *, batch_size: int = 1, device=None, seed: int = 0):
    """(x, t): a batch of noisy inputs (B, channels, size, size) and timesteps (B,), on the device.

    Random numbers on a real device; on the meta device, shapes only.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "meta":
        return (torch.empty(batch_size, channels, size, size, device=device),
                torch.zeros(batch_size, dtype=torch.long, device=device))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, channels, size, size, generator=g)
    t = torch.randint(0, 1000, (batch_size,), generator=g)
    return x.to(device), t.to(device)


class SweepRow(NamedTuple):
    size: int  # height = width
    numbers: int  # channels × size × size: the numbers in one input
    flops: int  # one forward pass at batch 1
    attention_flops: int  # of which QKᵀ and AV, the part that grows with the square of the positions
    activation_bytes: int  # saved for backward in one training forward pass at batch 1


def resolution_sweep(base: UNetConfig, channels: int, sizes, *, device="meta", attention_kernel: str = "fused",
                     context_length: int = 77) -> list[SweepRow]:
    """FLOPs and activation memory of the UNet of config `base` at each side in `sizes`, batch 1.

    On the meta device (the default) the whole sweep, 512×512 included, costs a fraction of a second.
    A text-conditioned UNet (base.context_dim set, as SD's) reads `context_length` token embeddings of zeros.
    """
    rows = []
    for size in sizes:
        model = unet_for(channels, size, base=base, device=device)
        x, t = unet_inputs(channels, size, device=device)
        kw = {"context": torch.zeros(1, context_length, base.context_dim, device=device)} if base.context_dim else {}
        by_op = flops_by_op(model, x, t, **kw)
        rows.append(SweepRow(size, channels * size * size, sum(by_op.values()), by_op["attention"],
                             activation_memory(model, x, t, attention_kernel=attention_kernel, **kw)))
    return rows


def _latent_of(encoded) -> torch.Tensor:
    """A latent tensor from whatever encode() returned: a tensor, a Gaussian (its mode), or diffusers' output."""
    if isinstance(encoded, torch.Tensor):
        return encoded
    encoded = getattr(encoded, "latent_dist", encoded)  # diffusers' AutoencoderKL wraps its Gaussian
    for name in ("mode", "mean", "sample"):
        value = getattr(encoded, name, None)
        value = value() if callable(value) else value
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"encode() returned {type(encoded).__name__}: expected a tensor or a distribution with "
                    "mode(), mean or sample()")


def vae_flops(vae: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """FLOPs of the VAE's encode(x) and of decode(z) for its latent: {"encode": …, "decode": …}.

    vae: any module with encode(x) -> latent (or a Gaussian over latents) and decode(z) -> image. Both are paid
    once per image, the UNet once per sampling step (decode only, when sampling from noise).
    """
    with torch.no_grad():
        encode = _flop_counts(lambda: vae.encode(x)).get("Global", {})
        z = _latent_of(vae.encode(x))
        decode = _flop_counts(lambda: vae.decode(z)).get("Global", {})
    return {"encode": sum(encode.values()), "decode": sum(decode.values())}
