"""Text to image: Stable Diffusion's inference, step by step — for the course's models and for SD v1.5 itself.

    pipe = TextToImage.from_pretrained()                         # the course's own models, 64×64 scenes
    images = pipe("a large cat face in the center on a blue background", num_images=4, seed=0)  # uint8 (4, 3, 64, 64)
    sd = TextToImage.from_stable_diffusion("path/to/sd-v1-5")    # SD v1.5's weights, 512×512
    images = sd("a photograph of an astronaut riding a horse", num_images=1)

What happens inside, in the lecture's order — the same code for both, only the configuration differs:
    1. the prompt becomes token embeddings (the text encoder) — and so does the negative prompt, or the empty one;
    2. a random latent is drawn, (N, 4, h, w): 4×8×8 for the course's scenes, 4×64×64 for SD at 512×512;
    3. the noise predictor estimates its noise with and without the prompt (one batch of 2N), and guidance
       extrapolates: ε̂ = ε̂_uncond + s · (ε̂_cond − ε̂_uncond);
    4. the sampler subtracts it, and 3-4 repeat for every timestep;
    5. the VAE's decoder turns the final latent (divided by the latent scale) into the image.
"""

from __future__ import annotations

import torch

from . import pretrained as pre
from .checks import check_device, check_int, check_number, check_seed
from .samplers import make_sampler, sample
from .schedule import NoiseSchedule
from .text import CLIP, encode_prompts, unconditional

DEFAULT_GUIDANCE = 3.0  # the course's models: what the model card's adherence figures use
SD_GUIDANCE, SD_STEPS = 7.5, 50  # Stable Diffusion's defaults
# SD's sampling as released: timesteps 981, 961, …, 1 at 50 steps ("leading" spacing, offset 1); DDIM's last step
# lands on ᾱ_0 rather than 1 (diffusers' set_alpha_to_one=False); latents are not clamped.
SD_SAMPLERS = {"ddim": dict(spacing="leading", steps_offset=1, set_alpha_to_one=False),
               "ddpm": dict(spacing="leading", steps_offset=1)}


class SceneText:
    """The course's text side: word tokenizer + its small CLIP's text tower. The empty prompt is what training made
    of a dropped caption: <bos> alone (the mask hides the rest)."""

    def __init__(self, clip: CLIP):
        self.clip = clip.eval()

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        context, mask = encode_prompts(self.clip, prompts)  # (N, 16, 64), (N, 16)
        empty = torch.tensor([not p.strip() for p in prompts], device=mask.device)
        mask[empty] = unconditional(context[empty], mask[empty])[1]
        return context, mask


class CLIPText:
    """Stable Diffusion's text side: CLIP's BPE tokenizer (77 tokens) + CLIP ViT-L/14's text tower. The empty prompt
    is encoded like any other ("" -> <|startoftext|> <|endoftext|> …): SD was trained with captions dropped that way."""

    def __init__(self, tokenizer, text_encoder):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder.eval()

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, None]:
        ids = self.tokenizer(prompts).to(next(self.text_encoder.parameters()).device)  # (N, 77)
        return self.text_encoder(ids), None  # last hidden states (N, 77, 768); no mask: SD reads all 77


class TextToImage:
    """A text side (tokenizer + text encoder), a text-conditioned latent UNet and a VAE, used together."""

    def __init__(self, text, unet, vae, *, latent_scale: float, schedule: str = pre.SCENE_SCHEDULE,
                 samplers: dict | None = None, num_steps: int = 25, guidance_scale: float = DEFAULT_GUIDANCE):
        self.text = SceneText(text) if isinstance(text, CLIP) else text  # the course's CLIP, or a text side
        self.unet, self.vae = unet.eval(), vae.eval()
        self.latent_scale = check_number("latent_scale", latent_scale, low=0, low_open=True)
        self.schedule = NoiseSchedule(schedule)
        self.samplers = samplers or {}  # sampler name -> its options (SD's spacing, say)
        self.defaults = dict(num_steps=num_steps, guidance_scale=guidance_scale)

    @classmethod
    def from_pretrained(cls, *, device="cpu") -> "TextToImage":
        """The course's shipped scene models: 64×64 images of the emoji-scene world. The decoder is the fine-tuned
        one (lesson 04: same encoder and latents, higher SSIM on new scenes, see the model card)."""
        device = check_device(device)
        return cls(pre.load_pretrained("scene_clip", device=device), pre.load_pretrained("scene_text_unet", device=device),
                   pre.load_pretrained("scene_vae_decoder", device=device), latent_scale=pre.scene_latent_scale())

    @classmethod
    def from_stable_diffusion(cls, weights, *, device="cpu", dtype: torch.dtype | None = None) -> "TextToImage":
        """SD v1.x from a local path (a diffusers folder or the original single file) or a loaded StableDiffusion.

        dtype: fp16 on CUDA by default (half the memory, tensor cores), fp32 elsewhere."""
        from .stable_diffusion import SD_SCHEDULE, StableDiffusion, load_stable_diffusion

        device = check_device(device)
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        sd = weights if isinstance(weights, StableDiffusion) else load_stable_diffusion(weights, device=device, dtype=dtype)
        return cls(CLIPText(sd.tokenizer, sd.text_encoder), sd.unet, sd.vae, latent_scale=sd.latent_scale,
                   schedule=SD_SCHEDULE, samplers=SD_SAMPLERS, num_steps=SD_STEPS, guidance_scale=SD_GUIDANCE)

    @property
    def clip(self) -> CLIP:
        """The course's CLIP (its text tower encodes prompts); SD's text side has no image tower here."""
        return self.text.clip

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def image_size(self) -> int:
        """The side of the images the UNet was trained on: its latent side × the VAE's downsampling factor."""
        return self.unet.config.sample_size * self.vae.config.downsample_factor

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], *, negative_prompt: str | None = None, num_images: int = 4,
                 num_steps: int | None = None, guidance_scale: float | None = None, seed: int | None = 0,
                 sampler: str = "ddim", height: int | None = None, width: int | None = None,
                 latents: torch.Tensor | None = None, keep_every: int = 0, progress: bool = False,
                 output_type: str = "uint8"):
        """Images uint8 (N, 3, H, W) (or float in [0, 1] with output_type="float"); with keep_every > 0 also the
        decoded intermediate images.

        prompt: one prompt for num_images images, or a list of prompts for one image each (num_images is then
        ignored); "" samples unconditionally. negative_prompt: what guidance steers away from, in place of "".
        num_steps and guidance_scale default to the model's (the course's: 25 and 3; SD's: 50 and 7.5).
        height, width: multiples of the VAE's factor (default: the training size). latents: the starting noise.
        """
        prompts = [prompt] * check_int("num_images", num_images, low=1) if isinstance(prompt, str) else prompt
        if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise TypeError(f"negative_prompt must be a string or None, got {negative_prompt!r}")
        if output_type not in ("uint8", "float"):
            raise ValueError(f"output_type must be 'uint8' or 'float', got {output_type!r}")
        num_steps = self.defaults["num_steps"] if num_steps is None else num_steps
        guidance_scale = check_number("guidance_scale", self.defaults["guidance_scale"] if guidance_scale is None
                                      else guidance_scale, low=0)
        seed = check_seed(seed)
        f = self.vae.config.downsample_factor
        height, width = (check_int(name, v or self.image_size, low=f) for name, v in (("height", height), ("width", width)))
        if height % f or width % f:
            raise ValueError(f"height and width must be multiples of {f} (the VAE's factor), got {height}×{width}")
        sampler = make_sampler(sampler, self.schedule, clip_sample=None, **self.samplers.get(sampler, {}))
        context, mask = self.encode(prompts)  # 1. (N, L, width)
        neg_context, neg_mask = self.encode([negative_prompt or ""] * len(prompts))
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        shape = (len(prompts), self.unet.config.in_channels, height // f, width // f)  # (N, 4, h, w)
        out = sample(  # 2-4: random latent, then predict the noise, guide, step, repeat
            self.unet, sampler, shape, num_steps=num_steps, generator=generator, latents=latents,
            cond=self._kwargs(context, mask), uncond=self._kwargs(neg_context, neg_mask), guidance_scale=guidance_scale,
            keep_every=keep_every, progress=progress, device=self.device)
        if keep_every:
            z, kept = out
            return self.decode(z, output_type), [self.decode(k, output_type) for k in kept]
        return self.decode(out, output_type)

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
        images = (images / 2 + 0.5).clamp(0, 1)  # [-1, 1] -> [0, 1]
        return images if output_type == "float" else (images * 255).round().to(torch.uint8)
