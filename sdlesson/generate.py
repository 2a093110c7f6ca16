"""Text to image with the course's own models: Stable Diffusion's inference, step by step.

    pipe = TextToImage.from_pretrained()
    images = pipe("a large cat face in the center on a blue background", num_images=4, seed=0)  # uint8 (4, 3, 64, 64)

What happens inside, in the lecture's order:
    1. the prompt becomes token embeddings (the text encoder) — and so does the negative prompt, or the empty one;
    2. a random latent is drawn, (N, 4, 8, 8);
    3. the noise predictor estimates its noise twice, with and without the prompt, and guidance extrapolates:
       ε̂ = ε̂_uncond + s · (ε̂_cond − ε̂_uncond);
    4. the sampler subtracts it, and 3-4 repeat for every timestep;
    5. the VAE's decoder turns the final latent (divided by the latent scale) into the image.
"""

from __future__ import annotations

import torch

from . import pretrained as pre
from .checks import check_device, check_number, check_seed
from .latents import decode_latents
from .samplers import make_sampler, sample
from .schedule import NoiseSchedule
from .text import encode_prompts, unconditional

DEFAULT_GUIDANCE = 3.0  # what the model card's adherence figures use; Stable Diffusion's default is 7.5


class TextToImage:
    """The text encoder (CLIP's text tower), the text-conditioned latent UNet and the VAE, used together."""

    def __init__(self, clip, unet, vae, *, latent_scale: float, schedule: str = pre.SCENE_SCHEDULE):
        self.clip, self.unet, self.vae = clip.eval(), unet.eval(), vae.eval()
        self.latent_scale = latent_scale
        self.schedule = NoiseSchedule(schedule)

    @classmethod
    def from_pretrained(cls, *, device="cpu") -> "TextToImage":
        device = check_device(device)
        return cls(pre.load_pretrained("scene_clip", device=device), pre.load_pretrained("scene_text_unet", device=device),
                   pre.load_pretrained("scene_vae", device=device), latent_scale=pre.scene_latent_scale())

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], *, negative_prompt: str | None = None, num_images: int = 4,
                 num_steps: int = 25, guidance_scale: float = DEFAULT_GUIDANCE, seed: int | None = 0,
                 sampler: str = "ddim", keep_every: int = 0, progress: bool = False):
        """Images uint8 (num_images, 3, 64, 64); with keep_every > 0 also the decoded intermediate images.

        prompt: one prompt for num_images images, or a list of prompts for one image each (num_images is then
        ignored); "" samples unconditionally. negative_prompt: what guidance steers away from, in place of "".
        """
        prompts = [prompt] * self._check_count(num_images) if isinstance(prompt, str) else prompt
        if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
        guidance_scale = check_number("guidance_scale", guidance_scale, low=0)
        seed = check_seed(seed)
        context, mask = self.encode(prompts)  # 1. (N, 16, 64), (N, 16)
        neg_context, neg_mask = self.encode([negative_prompt or ""] * len(prompts))
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        size = self.unet.config.sample_size
        shape = (len(prompts), self.unet.config.in_channels, size, size)  # (N, 4, 8, 8)
        out = sample(  # 2-4: random latent, then predict the noise, guide, step, repeat
            self.unet, make_sampler(sampler, self.schedule, clip_sample=None), shape,
            num_steps=num_steps, generator=generator, cond={"context": context, "context_mask": mask},
            uncond={"context": neg_context, "context_mask": neg_mask}, guidance_scale=guidance_scale,
            keep_every=keep_every, progress=progress, device=self.device)
        if keep_every:
            latents, kept = out
            return self.decode(latents), [self.decode(z) for z in kept]
        return self.decode(out)

    @staticmethod
    def _check_count(num_images) -> int:
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be an int >= 1, got {num_images!r}")
        return num_images

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings (N, 16, 64) and mask (N, 16) of prompts. An empty prompt is what training made of a
        dropped caption (<bos> alone), so "" asks for an unconditional image."""
        context, mask = encode_prompts(self.clip, prompts)
        empty = torch.tensor([not p.strip() for p in prompts], device=mask.device)
        mask[empty] = unconditional(context[empty], mask[empty])[1]
        return context, mask

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """5. Scaled latents (N, 4, 8, 8) -> images uint8 (N, 3, 64, 64)."""
        return decode_latents(self.vae, latents, self.latent_scale)
