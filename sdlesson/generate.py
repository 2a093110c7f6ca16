"""Text to image: Stable Diffusion's inference, step by step — for the course's models and for SD v1.5 itself.

    pipe = TextToImage.from_pretrained()                         # the course's own models, 64×64 emoji scenes
    pipe = TextToImage.from_pretrained("compositional")          # ... or the compositional world (lesson 06)
    images = pipe("a large cat face in the center on a blue background", num_images=4, seed=0)  # uint8 (4, 3, 64, 64)
    sd = TextToImage.from_stable_diffusion("path/to/sd-v1-5")    # SD v1.5's weights, 512×512
    images = sd("a photograph of an astronaut riding a horse", num_images=1)

What happens inside, in the lecture's five steps (numbered as lesson 05 numbers them) after the one text adds:
    0. the prompt becomes token embeddings (the text encoder) — and so does the negative prompt, or the empty one;
    1. a random latent is drawn, (N, 4, h, w): 4×8×8 for the course's scenes, 4×64×64 for SD at 512×512;
    2. the noise predictor estimates its noise with and without the prompt (one batch of 2N), and guidance
       extrapolates: ε̂ = ε̂_uncond + s · (ε̂_cond − ε̂_uncond);
    3. the sampler subtracts it; 4. steps 2-3 repeat for every timestep;
    5. the VAE's decoder turns the final latent (divided by the latent scale) into the image.

The same loop starts from an image (the lecture's forward diffusion, then reverse diffusion from there):
    images = pipe(prompt, init_image=scene, strength=0.6)            # img2img (SDEdit)
    images = pipe(prompt, init_image=scene, mask=mask)                # inpainting: mask white = repaint
    1a. the init image is encoded: a draw from the VAE's posterior (σ ≈ 0.003 of |μ| ≈ 4 for the course's VAE),
        times the latent scale — z0;
    1b. strength picks where the chain starts, as diffusers: of num_steps steps the last int(num_steps · strength)
        run, from x = √ᾱ_t z0 + √(1-ᾱ_t) ε at the first of them (img2img at strength 1 still starts there:
        √ᾱ_999 ≈ 0.07 of the image survives; inpainting at strength 1 starts from pure noise, as diffusers' does);
    3a. inpainting: after every step the kept region (mask 0 on the latent grid: nearest neighbour, as diffusers)
        is replaced by z0 noised to the level x has reached, with the same ε; after the last, by z0 itself.
The generator is drawn in diffusers' order — posterior sample, ε, then any step noise — so a seed gives diffusers'
StableDiffusionImg2ImgPipeline's and (DDIM) StableDiffusionInpaintPipeline's images (tests/test_img2img.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import pretrained as pre
from .checks import (check_device, check_float_tensor, check_images, check_int, check_mask, check_number, check_seed,
                     describe)
from .data import from_float, to_float
from .samplers import Sampler, make_sampler, timestep_batch
from .schedule import NoiseSchedule
from .text import CLIP, unconditional
from .text_unet import TextUNet

# The defaults, here and nowhere else (the command line, the reports and the explorers read them from here):
DEFAULT_STEPS = 25  # the course's models: what the model card's adherence figures and timings use
# Each world's text side, noise predictor and decoder (shipped checkpoints), for TextToImage.from_pretrained. A
# noise predictor trained together with its own text encoder (text_unet.TextUNet) brings that encoder instead.
WORLDS = {"scenes": ("scene_clip", "scene_text_unet", "scene_vae_decoder"),
          "compositional": ("comp_clip", "comp_text_unet", "comp_vae")}
DEFAULT_GUIDANCE = 3.0  # the course's models: what the model card's adherence figures use
SD_GUIDANCE, SD_STEPS = 7.5, 50  # Stable Diffusion's defaults
# SD's sampling as released: timesteps 981, 961, …, 1 at 50 steps ("leading" spacing, offset 1); DDIM's last step
# lands on ᾱ_0 rather than 1 (diffusers' set_alpha_to_one=False); latents are not clamped.
SD_SAMPLERS = {"ddim": dict(spacing="leading", steps_offset=1, set_alpha_to_one=False),
               "ddpm": dict(spacing="leading", steps_offset=1)}


def pipeline_sampler(name: str, schedule: NoiseSchedule, options: dict | None = None, *, karras: bool = False):
    """make_sampler(name) with a model's own options for it (SD's spacing) and latents never clamped."""
    if not isinstance(name, str):
        raise TypeError(f"sampler must be a name or a Sampler, got {describe(name)}")
    kwargs = dict((options or {}).get(name, {}), clip_sample=None)
    return make_sampler(name, schedule, **kwargs, **({"karras": True} if karras else {}))


def check_init_image(init_image, mask, strength, *, batch: int, factor: int):
    """img2img's and inpainting's inputs, checked together: (image in [-1, 1] or None, mask 0/1 or None, strength).

    strength defaults to 1 for text to image and inpainting and to 0.8 for img2img (diffusers' defaults)."""
    if init_image is None:
        for name, value in (("mask", mask), ("strength", strength)):
            if value is not None:
                raise ValueError(f"{name} applies to img2img and inpainting: pass init_image= too")
        return None, None, 1.0
    image = check_images("init_image", init_image)
    if image.shape[0] not in (1, batch):
        raise ValueError(f"init_image must hold 1 image or one per output image ({batch}), got {describe(init_image)}")
    if image.shape[2] % factor or image.shape[3] % factor:
        raise ValueError(f"init_image's height and width must be multiples of {factor} (the VAE's factor), "
                         f"got {tuple(image.shape[2:])}")
    if mask is not None:
        mask = check_mask("mask", mask, size=tuple(image.shape[2:]))
        if mask.shape[0] not in (1, batch):
            raise ValueError(f"mask must hold 1 mask or one per output image ({batch}), got {describe(mask)}")
    default = 0.8 if mask is None else 1.0
    strength = default if strength is None else check_number("strength", strength, low=0, low_open=True, high=1)
    return image, mask, strength


def check_image_size(image: torch.Tensor, height, width) -> dict:
    """With an init image the output has its size: height and width, if given, must agree."""
    size = dict(height=image.shape[2], width=image.shape[3])
    for name, value in (("height", height), ("width", width)):
        if value is not None and value != size[name]:
            raise ValueError(f"{name} = {value} differs from the init image's {size[name]}: the output has the init "
                             "image's size (leave height and width out, or resize the image)")
    return size


class TextSide:
    """A tokenizer and a text encoder used together: prompts -> (token embeddings (N, L, width), mask (N, L) or None).

    Both tokenizers keep one contract, prompts -> (ids (N, L), mask (N, L)). What differs is what the model was trained
    to read (masked=): the course's UNet reads only the unmasked tokens, and its empty prompt is what training made of
    a dropped caption, <bos> alone (text.unconditional); SD's UNet reads all 77 (no mask), and its empty prompt is
    encoded like any other ("" -> <|startoftext|> <|endoftext|> …): SD was trained with captions dropped that way.
    """

    def __init__(self, tokenizer, text_encoder, *, masked: bool, clip: CLIP | None = None):
        self._tokenizer, self.text_encoder, self.masked, self.clip = tokenizer, text_encoder.eval(), masked, clip

    @classmethod
    def from_clip(cls, clip: CLIP) -> "TextSide":
        """The course's text side: word tokenizer + its small CLIP's text tower (L = 16, width 64), masked."""
        return cls(None, clip.text, masked=True, clip=clip.eval())

    @classmethod
    def from_text_unet(cls, model: TextUNet) -> "TextSide":
        """A TextUNet's own text encoder (trained with its UNet) and its word tokenizer, masked as in training."""
        return cls(model.config.text.tokenizer(), model.text, masked=True)

    @property
    def tokenizer(self):
        return self._tokenizer or self.clip.config.tokenizer()  # the CLIP's, read from its config when it is used

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids, mask = self.tokenizer(prompts)  # (N, L), (N, L)
        device = next(self.text_encoder.parameters()).device
        context = self.text_encoder(ids.to(device))  # (N, L, width): CLIP ViT-L/14's last hidden states for SD
        if not self.masked:
            return context, None
        empty = torch.tensor([not p.strip() for p in prompts], device=device)[:, None]
        return context, torch.where(empty, unconditional(context, mask.to(device))[1], mask.to(device))


def SceneText(clip: CLIP) -> TextSide:
    """The course's text side (the name the pipeline used before the two text sides became one)."""
    return TextSide.from_clip(clip)


def CLIPText(tokenizer, text_encoder) -> TextSide:
    """Stable Diffusion's text side: CLIP's BPE tokenizer (77 tokens) + CLIP ViT-L/14's text tower, unmasked."""
    return TextSide(tokenizer, text_encoder, masked=False)


class TextToImage:
    """A text side (tokenizer + text encoder), a text-conditioned latent UNet and a VAE, used together."""

    def __init__(self, text, unet, vae, *, latent_scale: float, schedule: str = pre.SCENE_SCHEDULE,
                 samplers: dict | None = None, num_steps: int = DEFAULT_STEPS,
                 guidance_scale: float = DEFAULT_GUIDANCE):
        if isinstance(unet, TextUNet):  # a UNet trained with its own text encoder: that encoder is the text side
            if text is not None:
                raise ValueError("a TextUNet brings its own text encoder: pass text=None")
            text, unet = TextSide.from_text_unet(unet), unet.unet
        self.text = TextSide.from_clip(text) if isinstance(text, CLIP) else text  # the course's CLIP, or a text side
        self.unet, self.vae = unet.eval(), vae.eval()
        self.latent_scale = check_number("latent_scale", latent_scale, low=0, low_open=True)
        self.schedule = NoiseSchedule(schedule)
        self.samplers = samplers or {}  # sampler name -> its options (SD's spacing, say)
        self.defaults = dict(num_steps=num_steps, guidance_scale=guidance_scale)

    @classmethod
    def from_pretrained(cls, world: str = "scenes", *, unet: str | None = None, device="cpu") -> "TextToImage":
        """The course's shipped text-to-image models for a world, 64×64 images:

        "scenes": the emoji scenes (lessons 04–05, 08–09), one object whose caption fixes the picture. The decoder
        is the fine-tuned one (lesson 04: same encoder and latents, higher SSIM on new scenes, see the model card).
        "compositional": 1–4 coloured objects whose captions leave things out (lesson 06), where guidance matters.
        unet= names another shipped noise predictor of the world (lesson 06 compares comp_text_unet, which reads
        the frozen comp_clip, with comp_text_unet_joint, comp_text_unet_recaptioned and comp_text_unet_relations,
        each trained together with its own text encoder).
        """
        if world not in WORLDS:
            raise ValueError(f"unknown world {world!r}; expected one of {', '.join(map(repr, WORLDS))}")
        device = check_device(device)
        text_name, unet_name, vae_name = WORLDS[world]
        noise_predictor = pre.load_pretrained(unet or unet_name, device=device)
        own_text = isinstance(noise_predictor, TextUNet)  # it brings the text encoder it was trained with
        if not own_text and getattr(noise_predictor.config, "context_dim", None) is None:
            raise ValueError(f"{unet} is not a text-conditioned noise predictor (no cross-attention)")
        text = None if own_text else pre.load_pretrained(text_name, device=device)
        vae = pre.load_pretrained(vae_name, device=device)
        return cls(text, noise_predictor, vae, latent_scale=pre.latent_scale_of(vae_name))

    @classmethod
    def from_stable_diffusion(cls, weights, *, device="cpu", dtype: torch.dtype | None = None) -> "TextToImage":
        """SD v1.x from a local path (a diffusers folder or the original single file) or a loaded StableDiffusion.

        dtype: fp16 on CUDA by default (half the memory, tensor cores), fp32 elsewhere."""
        from .stable_diffusion import SD_SCHEDULE, StableDiffusion, load_stable_diffusion

        device = check_device(device)
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        sd = (weights if isinstance(weights, StableDiffusion)
              else load_stable_diffusion(weights, device=device, dtype=dtype))
        return cls(CLIPText(sd.tokenizer, sd.text_encoder), sd.unet, sd.vae, latent_scale=sd.latent_scale,
                   schedule=SD_SCHEDULE, samplers=SD_SAMPLERS, num_steps=SD_STEPS, guidance_scale=SD_GUIDANCE)

    @property
    def clip(self) -> CLIP | None:
        """The course's CLIP (its text tower encodes prompts); None for Stable Diffusion, whose pipeline holds only
        CLIP's text tower (pipe.text.text_encoder), no image tower."""
        return getattr(self.text, "clip", None)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def image_size(self) -> int:
        """The side of the images the UNet was trained on: its latent side × the VAE's downsampling factor."""
        return self.unet.config.sample_size * self.vae.config.downsample_factor

    def make_sampler(self, name: str, *, karras: bool = False) -> Sampler:
        """A sampler by name, configured as this model samples (SD's: leading spacing, offset 1, ᾱ_0 at the end)."""
        return pipeline_sampler(name, self.schedule, self.samplers, karras=karras)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], *, negative_prompt: str | None = None, num_images: int = 4,
                 num_steps: int | None = None, guidance_scale: float | None = None, seed: int | None = 0,
                 sampler: str | Sampler = "ddim", height: int | None = None, width: int | None = None,
                 latents: torch.Tensor | None = None, init_image: torch.Tensor | None = None,
                 strength: float | None = None, mask: torch.Tensor | None = None, callback=None,
                 keep_every: int = 0, progress: bool = False, output_type: str = "uint8"):
        """Images uint8 (N, 3, H, W) (or float in [0, 1] with output_type="float"); with keep_every > 0 also the
        decoded intermediate images.

        prompt: one prompt for num_images images, or a list of prompts for one image each (num_images is then
        ignored); "" samples unconditionally. negative_prompt: what guidance steers away from, in place of "".
        num_steps and guidance_scale default to the model's (the course's: 25 and 3; SD's: 50 and 7.5).
        sampler: a name ("ddim", "ddpm", …) or a sampler object built on this model's schedule (pipe.make_sampler).
        height, width: multiples of the VAE's factor (default: the training size, or the init image's).
        latents: the noise ε (N, 4, h, w) the chain starts from (text to image) or adds to the init image.
        callback(i, t, x_t, x̂_0): called before each step with the scaled latents and their clean estimate.

        img2img (SDEdit): init_image (1 or N, 3, H, W), uint8 or float in [-1, 1], is encoded, noised to the level
        `strength` picks and denoised from there under the prompt; strength in (0, 1] (default 0.8): the share of
        the num_steps steps that run (diffusers' convention: the last int(num_steps · strength) of them).
        Inpainting: also a mask (1 or N, 1, H, W), white = repaint (bool, uint8 ≥ 128, or float ≥ 0.5 in [0, 1]);
        outside it the latents follow the init image's own noised path at every step (default strength 1).
        """
        prompts = [prompt] * check_int("num_images", num_images, low=1) if isinstance(prompt, str) else prompt
        if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise TypeError(f"negative_prompt must be a string or None, got {negative_prompt!r}")
        if output_type not in ("uint8", "float"):
            raise ValueError(f"output_type must be 'uint8' or 'float', got {output_type!r}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be a function (i, t, x_t, x0_hat), got {describe(callback)}")
        num_steps = self.defaults["num_steps"] if num_steps is None else num_steps
        guidance_scale = check_number("guidance_scale", self.defaults["guidance_scale"] if guidance_scale is None
                                      else guidance_scale, low=0)
        seed, n, f = check_seed(seed), len(prompts), self.vae.config.downsample_factor
        image, mask, strength = check_init_image(init_image, mask, strength, batch=n, factor=f)
        size = dict(height=height, width=width) if image is None else check_image_size(image, height, width)
        height, width = (check_int(k, v or self.image_size, low=f) for k, v in size.items())
        if height % f or width % f:
            raise ValueError(f"height and width must be multiples of {f} (the VAE's factor), got {height}×{width}")
        sampler = self._sampler(sampler)
        sampler.set_timesteps(num_steps)
        # img2img: run the last int(n · strength) of the n steps (diffusers' get_timesteps); text to image runs all
        init_timestep = min(int(num_steps * strength), num_steps)
        if init_timestep < 1:
            raise ValueError(f"strength {strength:g} × num_steps {num_steps} leaves no step to run "
                             f"(int({num_steps} · {strength:g}) = 0): raise strength or num_steps")
        # (Heun calls the model twice per level: its list starts level k at index k · order, diffusers' t_start · order)
        timesteps = sampler.timesteps[(num_steps - init_timestep) * sampler.order:]
        shape = (n, self.unet.config.in_channels, height // f, width // f)  # (N, 4, h, w)
        if latents is not None and tuple(check_float_tensor("latents", latents, dims=4).shape) != shape:
            raise ValueError(f"latents must have the shape {shape}, got {describe(latents)}")

        context, text_mask = self.encode(prompts)  # 0. the prompt's embeddings (N, L, width)
        neg_context, neg_mask = self.encode([negative_prompt or ""] * n)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None  # on the CPU: same on any device
        if image is not None:  # 1a. the init image's latents: a draw from the VAE's posterior, as diffusers
            z0 = self.encode_image(image, generator=generator).expand(shape)  # (N, 4, h, w)
        noise = latents if latents is not None else torch.randn(shape, generator=generator)  # ε, drawn after z0's
        noise = noise.to(self.device, torch.float32)
        if image is None or (mask is not None and strength == 1):
            x = noise  # 1. a random latent x_T ~ N(0, I) (inpainting at strength 1 too, as diffusers')
        else:
            x = sampler.add_noise(z0, noise, timesteps[0])  # 1b. SDEdit: x_t0 = √ᾱ z0 + √(1-ᾱ) ε, the forward process
        if mask is not None:  # the mask on the latent grid, as diffusers: binary, nearest neighbour
            mask = F.interpolate(mask.to(self.device), size=shape[2:], mode="nearest")  # (1 or N, 1, h, w)

        cond, uncond = self._kwargs(context, text_mask), self._kwargs(neg_context, neg_mask)
        both = {k: torch.cat([cond[k], uncond[k]]) for k in cond} if guidance_scale != 1 else None
        kept = []
        for i, t in enumerate(tqdm(timesteps, disable=not progress, desc="sampling", leave=False)):
            eps = self._predict_noise(x, t, cond, both, guidance_scale)  # 2. predict the noise ε̂, guided
            if callback is not None:
                callback(i, int(t), x, sampler.predict_x0(eps, t, x))
            x = sampler.step(eps, t, x, generator=generator)  # 3. subtract it: one step less noisy (4. repeat)
            if mask is not None:  # inpainting: outside the mask, the init latents noised to where x now is
                known = z0 if i == len(timesteps) - 1 else sampler.add_noise(z0, noise, timesteps[i + 1])
                x = (1 - mask) * known + mask * x
            if keep_every and (i % keep_every == 0 or i == len(timesteps) - 1):
                kept.append(x.cpu())
        if keep_every:
            return self.decode(x, output_type), [self.decode(k, output_type) for k in kept]
        return self.decode(x, output_type)  # 5. decode

    def _sampler(self, sampler) -> Sampler:
        if isinstance(sampler, str):
            return self.make_sampler(sampler)
        if not isinstance(sampler, Sampler):
            raise TypeError(f"sampler must be a name or a Sampler, got {describe(sampler)}")
        if not torch.equal(sampler.schedule.alphas_cumprod, self.schedule.alphas_cumprod):
            raise ValueError(f"the sampler's schedule is {sampler.schedule.name!r} but this model was trained with "
                             f"{self.schedule.name!r}: build it with pipe.make_sampler(name)")
        return sampler

    def _predict_noise(self, x, t, cond: dict, both: dict | None, guidance_scale: float) -> torch.Tensor:
        """ε̂ at x_t; with guidance one batch of 2N, [cond; uncond]: ε̂ = ε̂_u + s (ε̂_c − ε̂_u)."""
        dtype = next(self.unet.parameters()).dtype  # the UNet may run in fp16; the sampler's math stays fp32
        t_batch = timestep_batch(torch.as_tensor(t), len(x), self.device)  # fractional t passed exactly, as diffusers
        if both is None:
            return self.unet(x.to(dtype), t_batch, **cond).float()
        eps, eps_uncond = self.unet(torch.cat([x, x]).to(dtype), torch.cat([t_batch, t_batch]), **both).float().chunk(2)
        return eps_uncond + guidance_scale * (eps - eps_uncond)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, *, generator: torch.Generator | None = None,
                     sample: bool = True) -> torch.Tensor:
        """Images (B, 3, H, W), uint8 or float in [-1, 1] -> scaled latents (B, 4, H/f, W/f): a draw from the VAE's
        posterior (its mean with sample=False), times the latent scale — what the UNet works on."""
        vae_dtype = next(self.vae.parameters()).dtype
        posterior = self.vae.encode(to_float(images).to(self.device, vae_dtype))
        return (posterior.sample(generator) if sample else posterior.mode()) * self.latent_scale

    @staticmethod
    def _kwargs(context, mask) -> dict:
        return {"context": context} if mask is None else {"context": context, "context_mask": mask}

    def encode(self, prompts: list[str]):
        """Token embeddings (N, L, width) of prompts, and their mask (N, L) — None for SD, which reads all 77."""
        return self.text(list(prompts))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, output_type: str = "uint8") -> torch.Tensor:
        """5. Scaled latents (N, 4, h, w) -> images (N, 3, 8h, 8w): uint8, or float in [0, 1]."""
        vae_dtype = next(self.vae.parameters()).dtype
        images = torch.cat([self.vae.decode((z / self.latent_scale).to(self.device, vae_dtype)).float().cpu()
                            for z in latents.split(16)])  # a few at a time: SD's decoder is memory-hungry at 512²
        return (images / 2 + 0.5).clamp(0, 1) if output_type == "float" else from_float(images)  # [-1, 1] -> [0, 1]


@torch.no_grad()
def attention_per_word(pipe: TextToImage, prompt: str, *, t: int = 500, seed: int = 0,
                       levels: tuple[str, ...] = ("down.1", "up.1"), image: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the UNet reads each token of `prompt`: the image the pipeline makes for it, uint8 (3, H, W), and one map
    per token (L, h, w) — the cross-attention weights, averaged over heads and over the layers of `levels` (which must
    share one latent size: the course's scene UNet's 4×4 levels by default).

    The maps are read at noise level t from the image's own latents (the VAE posterior's mean, noised with the seed's
    ε), in one UNet call under the prompt: at each latent position the weights over the L tokens sum to 1.
    image: read the maps on this uint8 image (3, H, W) instead of making one (to compare levels and t on one image)."""
    from .unet import recording_attention

    image = pipe(prompt, num_images=1, seed=seed) if image is None else image[None]  # (1, 3, H, W) uint8
    context, mask = pipe.encode([prompt])
    z0 = pipe.encode_image(image, sample=False)  # (1, 4, h, w): the latents of the image itself
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed)).to(pipe.device)
    t_batch = torch.tensor([t], device=pipe.device)
    z_t = pipe.schedule.add_noise(z0, noise, t_batch)  # x_t = √ᾱ_t z0 + √(1-ᾱ_t) ε
    with recording_attention(pipe.unet, where=lambda name: name.startswith(tuple(levels))) as layers:
        if not layers:
            names = [n for n, _ in pipe.unet.named_modules() if n.endswith(("cross_attn", "attn2"))]
            raise ValueError(f"no cross-attention layer in the levels {levels}: the UNet's are {names}")
        pipe.unet(z_t.to(next(pipe.unet.parameters()).dtype), t_batch, **pipe._kwargs(context, mask))
        weights = [layer.weights[0].float().mean(0) for layer in layers.values()]  # each (positions, L), heads averaged
    sizes = {w.shape[0] for w in weights}
    if len(sizes) > 1:
        raise ValueError(f"the layers of {levels} see different latent sizes ({sorted(sizes)} positions): "
                         "average maps of one size, e.g. levels=('down.1', 'up.1') for the course's scene UNet")
    maps = torch.stack(weights).mean(0).T  # (L, positions): each position's weights over the tokens sum to 1
    h = round(z0.shape[2] * (maps.shape[1] / z0[0, 0].numel()) ** 0.5)  # the level's height: latents downsampled
    return image[0], maps.reshape(len(maps), h, -1).cpu()  # (L, h, w)
