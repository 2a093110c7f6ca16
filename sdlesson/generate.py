"""Text to image: Stable Diffusion's inference, step by step — for the course's models and for SD v1.5 alike.

    pipe = TextToImage.from_pretrained()
    images = pipe("a large cat face in the center on a blue background", num_images=4, seed=0)  # uint8 (4, 3, 64, 64)

    sd = TextToImage.from_stable_diffusion("path/to/stable-diffusion-v1-5", device="cuda")  # fp16 on a GPU
    image = sd("a photograph of an astronaut riding a horse", seed=0)                         # uint8 (1, 3, 512, 512)

What happens inside, in the lecture's order:
    1. the prompt becomes token embeddings (the text conditioner) — and so does the negative prompt, or the empty one;
    2. a random latent is drawn, (N, 4, H/8, W/8);
    3. the noise predictor estimates its noise twice, with and without the prompt, and guidance extrapolates:
       ε̂ = ε̂_uncond + s · (ε̂_cond − ε̂_uncond);
    4. the sampler subtracts it, and 3-4 repeat for every timestep;
    5. the VAE's decoder turns the final latent (divided by the latent scale) into the image.

The two model families run the same five steps through the same code; what differs is configuration: the text
conditioner (the course's small CLIP and its word tokenizer, or CLIP ViT-L/14's text tower and its BPE tokenizer),
the networks, the latent scale, and the sampling defaults in a `PipelineConfig` (COURSE or STABLE_DIFFUSION).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from . import pretrained as pre
from .samplers import make_sampler, sample
from .schedule import NoiseSchedule
from .text import encode_prompts, unconditional

DEFAULT_GUIDANCE = 3.0  # what the model card's adherence figures use; Stable Diffusion's default is 7.5


@dataclass(frozen=True)
class PipelineConfig:
    """What differs between the course's pipeline and SD's, besides the networks: how to sample and the defaults."""

    schedule: str = pre.SCENE_SCHEDULE  # β schedule the UNet was trained with (both: scaled_linear, 0.00085 → 0.012)
    timestep_spacing: str = "linspace"  # the course: T-1 … 0 evenly; SD: "leading", k·⌊T/n⌋ + 1
    steps_offset: int = 0  # SD: 1 (981 … 1 at 50 steps)
    final_alpha_one: bool = True  # ᾱ after the last step: 1 (the course), ᾱ_0 for SD (set_alpha_to_one=False)
    size: int | None = None  # image side in pixels; None: the UNet's training size × the VAE's factor (64 here)
    num_steps: int = 25  # sampling steps by default
    guidance_scale: float = DEFAULT_GUIDANCE  # s in ε̂_u + s (ε̂_c − ε̂_u)
    num_images: int = 4  # images per prompt by default
    batch_guidance: bool | None = None  # one forward on [cond; uncond]; None: on a GPU yes, on a CPU two passes


COURSE = PipelineConfig()
STABLE_DIFFUSION = PipelineConfig(timestep_spacing="leading", steps_offset=1, final_alpha_one=False, size=512,
                                  num_steps=50, guidance_scale=7.5, num_images=1)  # as SD v1.5 was released


class CourseText:
    """The course's text conditioner: its word tokenizer and small CLIP text tower, with a padding mask.

    The empty prompt is what training made of a dropped caption: <bos> alone (the mask hides the rest).
    """

    def __init__(self, clip):
        self.clip = clip.eval()

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> token embeddings (N, 16, 64) and mask (N, 16)."""
        context, mask = encode_prompts(self.clip, prompts)
        empty = torch.tensor([not p.strip() for p in prompts], device=mask.device)
        mask[empty] = unconditional(context[empty], mask[empty])[1]
        return context, mask


class CLIPText:
    """Stable Diffusion's text conditioner: CLIP's BPE tokenizer (77 ids) and CLIP ViT-L/14's text tower.

    No mask: SD attends to all 77 positions, padding included, and its empty prompt is the encoding of "" itself.
    """

    def __init__(self, tokenizer, text_encoder):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder.eval()

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, None]:
        """Prompts -> last hidden states (N, 77, 768), and no mask."""
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(self.tokenizer(prompts).to(device)), None


class TextToImage:
    """A text conditioner, a text-conditioned latent UNet and a VAE, used together.

    `text` is a conditioner (prompts -> (context, mask or None)); a course CLIP model is wrapped in CourseText.
    """

    def __init__(self, text, unet, vae, *, latent_scale: float, schedule: str | None = None,
                 config: PipelineConfig = COURSE):
        self.text = text if callable(text) and not isinstance(text, torch.nn.Module) else CourseText(text)
        self.unet, self.vae = unet.eval(), vae.eval()
        self.latent_scale = latent_scale
        self.config = config if schedule is None else replace(config, schedule=schedule)
        self.schedule = NoiseSchedule(self.config.schedule)

    @classmethod
    def from_pretrained(cls, *, device="cpu") -> "TextToImage":
        """The course's shipped scene models (64×64 images from 8×8 latents)."""
        return cls(pre.load_pretrained("scene_clip", device=device), pre.load_pretrained("scene_text_unet", device=device),
                   pre.load_pretrained("scene_vae", device=device), latent_scale=pre.scene_latent_scale())

    @classmethod
    def from_stable_diffusion(cls, source, *, device="cpu", dtype: torch.dtype | None = None) -> "TextToImage":
        """SD v1.5 from a diffusers folder or single checkpoint file (see load_stable_diffusion), or a StableDiffusion.

        dtype: None means fp16 on a GPU, fp32 on a CPU (fp16 matmuls on a CPU are slow or unsupported).
        """
        from .stable_diffusion import StableDiffusion, load_stable_diffusion

        dtype = dtype or (torch.float16 if torch.device(device).type == "cuda" else torch.float32)
        if isinstance(source, StableDiffusion):
            sd = source
            for net in (sd.text_encoder, sd.unet, sd.vae):
                net.to(device=device, dtype=dtype)
        else:
            sd = load_stable_diffusion(source, device=device, dtype=dtype)
        return cls(CLIPText(sd.tokenizer, sd.text_encoder), sd.unet, sd.vae, latent_scale=sd.latent_scale,
                   config=STABLE_DIFFUSION)

    @property
    def clip(self):
        """The course's CLIP model (course pipelines only)."""
        return self.text.clip

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE's factor × the UNet's downsampling (SD: 8 × 8 = 64)."""
        return self.vae.config.downsample_factor * 2 ** (len(self.unet.config.block_channels) - 1)

    @property
    def default_size(self) -> int:
        return self.config.size or self.unet.config.sample_size * self.vae.config.downsample_factor

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], *, negative_prompt: str | None = None, num_images: int | None = None,
                 num_steps: int | None = None, guidance_scale: float | None = None, seed: int | None = 0,
                 sampler: str = "ddim", height: int | None = None, width: int | None = None,
                 latents: torch.Tensor | None = None, output: str = "uint8", keep_every: int = 0,
                 progress: bool = False):
        """Images (N, 3, H, W): uint8, or float in [0, 1] with output="float"; with keep_every > 0 also the decoded
        intermediate images. Unset options take the pipeline's defaults (self.config: the course's or SD's).

        prompt: one prompt for num_images images, or a list of prompts for one image each (num_images is then
        ignored); "" samples unconditionally. negative_prompt: what guidance steers away from, in place of "".
        latents: the starting noise x_T, (N, 4, H/8, W/8), instead of drawing it from `seed`.
        """
        cfg = self.config
        num_steps = cfg.num_steps if num_steps is None else num_steps
        guidance_scale = cfg.guidance_scale if guidance_scale is None else guidance_scale
        count = cfg.num_images if num_images is None else num_images
        prompts = [prompt] * self._check_count(count) if isinstance(prompt, str) else prompt
        if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if output not in ("uint8", "float"):
            raise ValueError(f"output must be 'uint8' or 'float', got {output!r}")
        h, w = (self._check_side(name, v if v is not None else self.default_size)
                for name, v in (("height", height), ("width", width)))
        f = self.vae.config.downsample_factor
        shape = (len(prompts), self.unet.config.in_channels, h // f, w // f)  # (N, 4, H/8, W/8)
        sampler = make_sampler(sampler, self.schedule, clip_sample=None, timestep_spacing=cfg.timestep_spacing,
                               steps_offset=cfg.steps_offset, final_alpha_one=cfg.final_alpha_one)
        cond = self._unet_kwargs(*self.text(list(prompts)))  # 1. (N, L, D) and its mask (or none)
        uncond = self._unet_kwargs(*self.text([negative_prompt or ""] * len(prompts)))
        batch = cfg.batch_guidance if cfg.batch_guidance is not None else self.device.type == "cuda"
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        out = sample(  # 2-4: random latent, then predict the noise, guide, step, repeat
            self.unet, sampler, shape, num_steps=num_steps, generator=generator, cond=cond, uncond=uncond,
            guidance_scale=guidance_scale, batch_guidance=batch, latents=latents, keep_every=keep_every,
            progress=progress, device=self.device)
        if keep_every:
            z, kept = out
            return self.decode(z, output=output), [self.decode(k, output=output) for k in kept]
        return self.decode(out, output=output)

    @staticmethod
    def _unet_kwargs(context: torch.Tensor, mask: torch.Tensor | None) -> dict:
        return {"context": context} if mask is None else {"context": context, "context_mask": mask}

    @staticmethod
    def _check_count(num_images) -> int:
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be an int >= 1, got {num_images!r}")
        return num_images

    def _check_side(self, name: str, value) -> int:
        m = self.size_multiple
        if not isinstance(value, int) or value < m or value % m:
            raise ValueError(f"{name} must be a positive multiple of {m} (the VAE's and UNet's downsampling), "
                             f"got {value!r}")
        return value

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token embeddings (N, L, D) and mask (N, L) of prompts (SD: no mask). For the course's models "" is <bos>
        alone, what training made of a dropped caption; for SD it is the encoding of "" itself."""
        return self.text(list(prompts))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, *, output: str = "uint8", batch_size: int = 16) -> torch.Tensor:
        """5. Scaled latents (N, 4, h, w) -> images (N, 3, 8h, 8w) on the CPU: uint8 0 … 255, or float 0 … 1."""
        p = next(self.vae.parameters())
        x = torch.cat([self.vae.decode((latents[i:i + batch_size].to(p.device) / self.latent_scale).to(p.dtype))
                       .float().clamp(-1, 1).cpu() for i in range(0, len(latents), batch_size)])  # -1 … 1
        if output == "float":
            return (x + 1) / 2  # -1 … 1 -> 0 … 1, as diffusers' output_type="np"
        return ((x + 1) * 127.5).round().to(torch.uint8)  # -1 … 1 -> 0 … 255
