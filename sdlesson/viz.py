"""Pictures and widgets: image grids, strips of the denoising process, and small interactive apps.

Every widget here is built by `interactive_image(render, **controls)`: the controls' values go to `render`, whose
image is shown. The callback is plain Python, so tests drive a widget headlessly by setting a control's value.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from .data import from_float, to_float, to_uint8
from .metrics import psnr
from .samplers import SAMPLERS, make_sampler, sample
from .scenes import parse_caption

# Imported inside the functions that use them, for what they cost: ipywidgets and IPython (the notebook widgets
# only; a script drawing a grid need not load them), cost.py (torch's FLOP counter) and generate.py (the pipeline).


def as_uint8_batch(images) -> np.ndarray:
    """A batch as uint8 (B, H, W, C) from a [-1, 1] float tensor (B, C, H, W), a uint8 tensor (B, C, H, W),
    or a uint8 array (B, H, W, C) or (B, H, W)."""
    if isinstance(images, torch.Tensor):
        images = images[None] if images.dim() == 3 else images
        return to_uint8(images) if images.is_floating_point() else images.movedim(1, -1).cpu().numpy()
    arr = np.asarray(images)
    return arr[..., None] if arr.ndim == 3 else arr


def image_grid(images, *, nrow: int = 8, pad: int = 1, pad_value: int = 128) -> np.ndarray:
    """Tile a batch (see as_uint8_batch) into one uint8 image (H, W) for grayscale or (H, W, 3), each image framed
    by `pad` pixels of mid grey: a frame that shows on white backgrounds and on black ones."""
    arr = as_uint8_batch(images)
    if arr.ndim != 4 or len(arr) == 0:
        raise ValueError(f"image_grid needs a non-empty batch of images (B, C, H, W), got shape {arr.shape}")
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow must be an int >= 1, got {nrow!r}")
    B, H, W, C = arr.shape
    ncol = min(nrow, B)
    rows = -(-B // ncol)
    grid = np.full((rows * (H + pad) + pad, ncol * (W + pad) + pad, C), pad_value, np.uint8)
    for i in range(B):
        r, c = divmod(i, ncol)
        grid[pad + r * (H + pad):pad + r * (H + pad) + H, pad + c * (W + pad):pad + c * (W + pad) + W] = arr[i]
    return grid[..., 0] if C == 1 else grid


def show_images(images, *, nrow: int = 8, title: str | None = None, scale: float = 1.0, ax=None):
    """Show a batch as a grid with matplotlib; returns the axes."""
    grid = image_grid(images, nrow=nrow)
    if ax is None:
        h, w = grid.shape[:2]
        _, ax = plt.subplots(figsize=(scale * w / 40, scale * h / 40))
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def show_strip(images, labels, *, title: str | None = None, scale: float = 1.6):
    """One row of images with a label under each, e.g. x_t at several t."""
    arr = as_uint8_batch(images)
    fig, axes = plt.subplots(1, len(arr), figsize=(scale * len(arr), scale * 1.25))
    for ax, img, label in zip(np.atleast_1d(axes), arr, labels):
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(label, fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def to_png(image, *, scale: int = 4) -> bytes:
    """PNG bytes of one image or a grid, enlarged `scale` times with nearest-neighbour so pixels stay crisp."""
    arr = image if isinstance(image, np.ndarray) and image.ndim in (2, 3) else image_grid(image)
    pil = Image.fromarray(arr)
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


class InteractiveImage:
    """Controls + an image: whenever a control changes, `render(**values)` runs and its image is shown.

    render returns an image (uint8 array or [-1, 1] tensor) or (image, caption). `.widget` is the ipywidgets box of
    controls; `.image`, `.png` and `.caption` hold what is shown now, so tests can check them without a browser.

    The picture and its caption are plain outputs (image/png, text/plain) that each change updates in place through
    an IPython display handle, not widgets: a notebook that was run, saved and opened again (when the widgets' models
    are gone) still shows the last picture, at its own size, on GitHub too.
    """

    max_width = 640  # px: the picture is shown at its own size up to this width, so controls + picture fit a laptop

    def __init__(self, render, *, scale: int = 4, **controls):
        import ipywidgets as widgets

        self.render_fn, self.scale, self.controls = render, scale, controls
        self.handles = []  # (picture, caption) display handles, one pair per time the app was displayed
        for control in controls.values():
            control.observe(lambda change: self.update(), names="value")
        self.widget = widgets.HBox(list(controls.values()), layout=widgets.Layout(flex_flow="row wrap"))
        self.update()

    def values(self) -> dict:
        return {name: control.value for name, control in self.controls.items()}

    def update(self) -> None:
        out = self.render_fn(**self.values())
        self.image, self.caption = out if isinstance(out, tuple) else (out, "")
        self.png = to_png(self.image, scale=self.scale)
        for picture, caption in self.handles:
            for handle, (data, metadata) in ((picture, self._picture()), (caption, self._caption())):
                handle.update(data, metadata=metadata, raw=True)

    def _picture(self) -> tuple[dict, dict]:
        """The picture as a (data, metadata) bundle: PNG at its own size, capped at max_width."""
        height, width = self.image.shape[:2]
        width, height = width * self.scale, height * self.scale
        shown = min(width, self.max_width)
        # text/plain is what a text-only reader sees in place of the picture; the caption follows as its own output
        return ({"image/png": base64.b64encode(self.png).decode(), "text/plain": f"<picture, {width}×{height} px>"},
                {"image/png": {"width": shown, "height": round(height * shown / width)}})

    def _caption(self) -> tuple[dict, dict]:
        return {"text/plain": self.caption}, {}

    def _repr_mimebundle_(self, **kwargs):
        # What a front end without display() support gets: the controls where widgets render, else the picture.
        bundle = self.widget._repr_mimebundle_(**kwargs) or {}
        data, _ = self._picture()
        return bundle | {"image/png": data["image/png"],
                         "text/plain": f"{self.caption}  ({', '.join(f'{k}={v}' for k, v in self.values().items())})"}

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)  # the controls: live widgets
        self.handles.append(tuple(display(data, metadata=metadata, raw=True, display_id=True)
                                  for data, metadata in (self._picture(), self._caption())))


def forward_diffusion_explorer(image: torch.Tensor, schedules: dict, *, seed: int = 0) -> InteractiveImage:
    """A slider over t and a choice of schedule, showing x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε for one fixed ε."""
    import ipywidgets as widgets

    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))
    T = next(iter(schedules.values())).num_timesteps

    def render(t, schedule):
        s = schedules[schedule]
        x_t = s.add_noise(image, noise, torch.tensor([t]))
        a_bar = s.alphas_cumprod[t].item()
        return image_grid(x_t), f"t = {t}   ᾱ_t = {a_bar:.4f}   SNR = {a_bar / (1 - a_bar):.3g}"

    return InteractiveImage(
        render,
        t=widgets.IntSlider(value=T // 4, min=0, max=T - 1, step=1, description="t", continuous_update=False),
        schedule=widgets.Dropdown(options=list(schedules), description="schedule"),
    )


def sampling_explorer(model, schedule, shape, *, steps=(1, 2, 5, 10, 20, 50, 100, 250), nrow: int = 8,
                      decode=None, clip_sample: float | None = 1.0) -> InteractiveImage:
    """Sliders over the number of sampling steps, the sampler and the seed; shows the samples and their time.

    For latents: decode turns the final latents into images (timed too), clip_sample=None leaves x̂_0 unclamped.
    """
    import ipywidgets as widgets

    def render(steps, sampler, seed):
        start = time.perf_counter()
        x = sample(model, make_sampler(sampler, schedule, clip_sample=clip_sample), shape, num_steps=steps,
                   generator=torch.Generator().manual_seed(seed), progress=False)
        x = decode(x) if decode is not None else x
        seconds = time.perf_counter() - start
        return image_grid(x, nrow=nrow), f"{sampler.upper()}, {steps} steps: {seconds:.2f} s for {shape[0]} images"

    return InteractiveImage(
        render,
        steps=widgets.SelectionSlider(options=list(steps), value=20 if 20 in steps else steps[0], description="steps"),
        sampler=widgets.ToggleButtons(options=list(SAMPLERS), value="ddim", description="sampler"),
        seed=widgets.IntText(value=0, description="seed", layout=widgets.Layout(width="150px")),
    )


def figure_to_array(fig) -> np.ndarray:
    """A matplotlib figure as a uint8 RGB array (and the figure closed), for widgets that show plots."""
    fig.canvas.draw()
    arr = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return arr


def cost_explorer(base) -> InteractiveImage:
    """Vary a UNet's width, attention levels and resolution; see its FLOPs on pixels vs on 8×-smaller latents."""
    import ipywidgets as widgets

    from . import cost

    kinds = ("conv", "linear", "attention")

    def render(width, side, attention):
        levels = tuple(i in attention for i in range(len(base.block_channels)))
        mults = [c / base.block_channels[0] for c in base.block_channels]
        config = dataclasses.replace(base, block_channels=tuple(int(width * m) for m in mults), attention_levels=levels)
        meta = torch.device("meta")
        counts = {}
        for space, (channels, size) in (("pixels", (3, side)), ("latents", (4, side // 8))):
            unet = cost.unet_for(channels, size, base=config, device=meta)
            counts[space] = cost.flops_by_op(unet, *cost.unet_inputs(channels, size, device=meta))
        # Separate bars on a log axis, one per kind of op and space: each bar's length is its own value (stacked
        # segments on a log axis would not be), and pixel vs latent reads as a distance: ×10 per decade.
        rows = [*kinds, "total"]
        values = {space: [counts[space][k] for k in kinds] + [sum(counts[space].values())] for space in counts}
        fig, ax = plt.subplots(figsize=(6.4, 3.0), dpi=80)
        y = np.arange(len(rows))
        positive = [v / 1e9 for vs in values.values() for v in vs if v > 0]
        low, high = min(positive) / 3, max(positive) * 6  # room on the right for the numbers
        for offset, (space, color) in zip((-0.2, 0.2), zip(counts, ("tab:red", "tab:blue"))):
            gflops = np.array(values[space], dtype=float) / 1e9
            shown = np.where(gflops > 0, gflops, np.nan)  # no attention at all: no bar (log(0) has no length)
            ax.barh(y + offset, shown, height=0.38, color=color, label=space)
            for yi, v in zip(y + offset, gflops):
                label = (f" {v:,.0f}" if v >= 100 else f" {v:.3g}") if v > 0 else " none"
                ax.text(v if v > 0 else low, yi, label, va="center", fontsize=7)
        ax.set_xscale("log")
        ax.set_xlim(low, high)
        ax.set_yticks(y, labels=rows)
        ax.invert_yaxis()
        ax.set_xlabel("GFLOPs per forward pass (batch 1, log scale)")
        # beside the bars, not on them
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        fig.tight_layout()
        total = {space: sum(counts[space].values()) for space in counts}
        caption = (f"pixels 3×{side}² vs latents 4×{side // 8}²: {total['pixels'] / 1e9:,.2f} vs "
                   f"{total['latents'] / 1e9:,.3f} GFLOPs, ratio {total['pixels'] / total['latents']:,.0f}× "
                   f"(numbers: 48×)")
        return figure_to_array(fig), caption

    levels = [f"level {i} ({c} ch)" for i, c in enumerate(base.block_channels)]
    return InteractiveImage(
        render, scale=1,
        width=widgets.SelectionSlider(options=[16, 32, 64, 128], value=base.block_channels[0], description="width"),
        side=widgets.SelectionSlider(options=[64, 128, 256, 512], value=64, description="image side"),
        attention=widgets.SelectMultiple(
            options=[(name, i) for i, name in enumerate(levels)],
            value=tuple(i for i, a in enumerate(base.attention_levels) if a), description="attention", rows=3),
    )


def vae_explorer(vaes: dict, images: torch.Tensor) -> InteractiveImage:
    """Pick a scene, a decoder and how much noise to add to its latent: original | reconstruction | error × 4.

    vaes: {name: VAE}; images: uint8 (N, 3, H, W). Noise is added to the latent in units of the latents' own spread.
    """
    import ipywidgets as widgets

    def render(index, decoder, noise):
        vae = vaes[decoder]
        x = to_float(images[index:index + 1])
        device = next(vae.parameters()).device
        with torch.no_grad():
            z = vae.encode(x.to(device)).mode()
            z = z + noise * z.std() * torch.randn(z.shape, generator=torch.Generator().manual_seed(index)).to(device)
            recon = vae.decode(z).clamp(-1, 1).cpu()
        error = ((recon - x).abs() * 4 - 1).clamp(-1, 1)  # |x − x̂|, brightened 4×
        caption = (f"original | reconstruction | error × 4 — scene {index}, {decoder}, latent noise {noise:.2f}·std: "
                   f"PSNR {psnr(recon, x).item():.1f} dB")
        return image_grid(torch.cat([x, recon, error]), nrow=3, pad=2), caption

    return InteractiveImage(
        render,
        index=widgets.IntSlider(value=0, min=0, max=len(images) - 1, description="scene"),
        decoder=widgets.ToggleButtons(options=list(vaes), description="decoder"),
        noise=widgets.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.05, description="latent noise"),
    )


def text_to_image_explorer(pipe, *, prompt: str = "a large cat face in the center on a blue background",
                           num_images: int = 4, judge=None, reader: bool = False,
                           negative_prompt: str | None = None,
                           guidance_scale: float | None = None, max_guidance: float = 10.0,
                           num_steps: int | None = None, max_steps: int = 100, scale: int = 4,
                           **options) -> InteractiveImage:
    """A prompt box, guidance, steps and seed over a TextToImage pipeline; with a judge (the emoji scenes' classifier)
    or reader=True (the compositional world's GenEval reader), how much of the prompt it finds in the images.

    negative_prompt: a string adds a box for it (SD's "blurry, low quality"); guidance_scale and num_steps start at
    the pipeline's defaults (the course's 3 and 25, SD's 7.5 and 50); options (height=, width=, sampler=) go to every
    call of the pipeline; scale: screen pixels per image pixel (1 for SD's 512×512 images)."""
    import ipywidgets as widgets

    from .generate import DEFAULT_GUIDANCE, DEFAULT_STEPS

    defaults = getattr(pipe, "defaults", {})  # a TextToImage's; the course's for any other callable
    guidance_scale = defaults.get("guidance_scale", DEFAULT_GUIDANCE) if guidance_scale is None else guidance_scale
    num_steps = defaults.get("num_steps", DEFAULT_STEPS) if num_steps is None else num_steps
    sampler = options.get("sampler", "ddim")
    sampler = sampler.upper() if isinstance(sampler, str) else type(sampler).__name__
    shown = {"image": np.full((64, 64, 3), 255, np.uint8)}  # the last good picture

    def render(prompt, guidance, steps, seed, negative=None):
        start = time.perf_counter()
        try:
            images = pipe(prompt, num_images=num_images, num_steps=steps, guidance_scale=guidance, seed=seed,
                          **({"negative_prompt": negative or None} if negative is not None else {}), **options)
        except ValueError as e:  # an unknown word: say so, keep the last picture
            return shown["image"], f"⚠ {e}"
        caption = (f"{num_images} images, {steps} {sampler} steps, guidance {guidance}: "
                   f"{time.perf_counter() - start:.1f} s")
        if judge is not None:
            from .evaluate import judge_scenes

            try:
                wanted = torch.tensor(parse_caption(prompt).labels)
                hits = (judge_scenes(judge, images)[0] == wanted).float().mean().item()
                caption += f"; the judge finds {hits:.0%} of the asked-for attributes"
            except ValueError:
                caption += "; (the judge scores full captions only)"
        if reader:
            from . import geneval

            try:
                asked = geneval.parse_prompt(prompt)
                held = sum(geneval.score(asked, r) for r in geneval.read_images(images))
                caption += f"; the reader finds the prompt in {held} of {num_images}"
            except ValueError:
                caption += "; (the reader scores prompts in the captions' grammar only)"
        shown["image"] = image_grid(images, nrow=num_images, pad=2 if num_images > 1 else 0)  # one image: as it is
        return shown["image"], caption

    text = dict(continuous_update=False, layout=widgets.Layout(width="520px"))
    negative = {} if negative_prompt is None else {"negative": widgets.Text(value=negative_prompt,
                                                                           description="negative", **text)}
    return InteractiveImage(
        render, scale=scale,
        prompt=widgets.Text(value=prompt, description="prompt", **text), **negative,
        guidance=widgets.FloatSlider(value=guidance_scale, min=0.0, max=max_guidance, step=0.5, description="guidance"),
        steps=widgets.IntSlider(value=num_steps, min=1, max=max_steps, description="steps"),
        seed=widgets.IntText(value=0, description="seed", layout=widgets.Layout(width="150px")),
    )


def lora_scale_explorer(pipe, *, prompt: str = "a large turtle in the center on a pink background",
                        num_images: int = 4, probe=None, max_scale: float = 1.5) -> InteractiveImage:
    """The scale s of the LoRA adapters in pipe's UNet (y = W x + s·(α/r)·B A x) as a slider, with the prompt and
    the seed; with an identity probe (finetune.identity_probe), how many images it sees the new object in."""
    import ipywidgets as widgets

    from .lora import lora_layers, set_lora_scale

    if not lora_layers(pipe.unet):
        raise ValueError("the pipeline's UNet has no LoRA adapters: load some first (finetune.load_lora_word)")
    shown = {"image": np.full((64, 64, 3), 255, np.uint8)}

    def render(prompt, lora_scale, seed):
        scale = lora_scale
        set_lora_scale(pipe.unet, scale)
        try:
            images = pipe(prompt, num_images=num_images, seed=seed)
        except ValueError as e:  # an unknown word: say so, keep the last picture
            return shown["image"], f"⚠ {e}"
        caption = f"LoRA scale {scale:.2f}, seed {seed}"
        if probe is not None:
            from .finetune import shows_new_object

            caption += f": the probe sees the new object in {int(shows_new_object(probe, images).sum())}/{num_images}"
        shown["image"] = image_grid(images, nrow=num_images, pad=2)
        return shown["image"], caption

    return InteractiveImage(
        render,
        prompt=widgets.Text(value=prompt, description="prompt", continuous_update=False,
                            layout=widgets.Layout(width="520px")),
        lora_scale=widgets.FloatSlider(value=1.0, min=0.0, max=max_scale, step=0.25, description="LoRA scale"),
        seed=widgets.IntText(value=0, description="seed", layout=widgets.Layout(width="150px")),
    )


def img2img_explorer(pipe, init_image: torch.Tensor, prompts: list[str], *,
                     strengths=(0.04, 0.08, 0.16, 0.32, 0.6, 1.0),
                     num_images: int = 4, num_steps: int = 25, seed: int = 0) -> InteractiveImage:
    """img2img's strength slider: the init image (1, 3, H, W) beside num_images images of the chosen prompt, noised
    to the level the strength picks and denoised from there (SDEdit). Each picture is made once, then remembered."""
    import ipywidgets as widgets

    cache = {}

    def render(prompt, strength):
        if (prompt, strength) not in cache:
            start = time.perf_counter()
            images = pipe(prompt, num_images=num_images, init_image=init_image, strength=strength,
                          num_steps=num_steps, seed=seed)
            steps = min(int(num_steps * strength), num_steps)
            init = from_float(to_float(init_image[:1]).cpu())  # (1, 3, H, W) uint8, shown first
            cache[prompt, strength] = (image_grid(torch.cat([init, images]),
                                                  nrow=num_images + 1, pad=2),
                                       f"strength {strength:g}: noised to step {steps} of {num_steps}, {steps} steps "
                                       f"back under '{prompt}' ({time.perf_counter() - start:.1f} s); left: the init")
        return cache[prompt, strength]

    return InteractiveImage(
        render,
        prompt=widgets.Dropdown(options=list(prompts), description="prompt", layout=widgets.Layout(width="520px")),
        strength=widgets.SelectionSlider(options=list(strengths), value=strengths[len(strengths) // 2],
                                         description="strength"),
    )
