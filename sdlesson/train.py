"""The one training loop every lesson uses (the diffusion loss it is most often given lives in schedule.py).

    trainer = Trainer(model, DiffusionLoss(schedule), images, TrainConfig(steps=2000),
                      checkpoint_path="unet.safetensors")
    trainer.fit()          # resumes from checkpoint_path if it exists, saves there every checkpoint_every steps
    sample_with(trainer.ema_model)

Exact resume: every random draw of step k (the batch, the timesteps, the noise, dropout) comes from a generator
seeded by (seed, k), and the checkpoint holds the weights, the EMA, the optimizer state and the loss history, so a
run stopped and resumed ends where an uninterrupted one does.

Several processes (`torchrun --nproc_per_node=N -m sdlesson train NAME`): when a torch.distributed process group is
up, the Trainer wraps the model in DistributedDataParallel. Every process draws the whole global batch's indices
(and a DiffusionLoss its timesteps and noise) from the (seed, k) generator and keeps its own slice, so the global
batch, the averaged gradient, the EMA and the loss history (averaged over processes) are one process's, up to
the order of float sums. Only rank 0 shows progress and writes checkpoints. Without a process group none of
this runs.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from .checks import check_number
from .devices import PRECISIONS, autocast_dtype, pick_device  # noqa: F401  (pick_device: re-exported)
from .progress import Progress
# The loss lives beside the schedule it is built on; importable from here, where the lessons first meet it.
from .schedule import DiffusionLoss, NoiseSchedule, condition_kwargs  # noqa: F401


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100  # linear learning-rate warm-up, then:
    lr_schedule: str = "constant"  # constant, or cosine: lr decays to lr/10 at `steps` along half a cosine
    ema_decay: float = 0.999  # EMA of the weights, the ones we sample with
    grad_clip: float = 1.0  # max global gradient norm
    precision: str = "auto"  # auto: what is fast here (bf16 only where native: devices.py); or fp32|bf16|fp16
    seed: int = 0
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end), when a path is given

    def __post_init__(self):
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        check_number("lr", self.lr, low=0, low_open=True)
        check_number("weight_decay", self.weight_decay, low=0)
        check_number("ema_decay", self.ema_decay, low=0, high=1, high_open=True)
        check_number("grad_clip", self.grad_clip, low=0, low_open=True)
        if self.warmup_steps < 0 or self.checkpoint_every < 1:
            raise ValueError(f"warmup_steps must be >= 0 and checkpoint_every >= 1, got {self.warmup_steps} and "
                             f"{self.checkpoint_every}")


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate at a step: linear warm-up, then constant or a half-cosine down to lr / 10."""
    warmup = min(1.0, (step + 1) / max(1, config.warmup_steps))
    if config.lr_schedule == "constant" or step < config.warmup_steps:
        return config.lr * warmup
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))  # lr → lr/10


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator for one training step: its draws depend only on (seed, step)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def process_group() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless a torch.distributed process group is up (torchrun, then init)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Trainer:
    """AdamW, EMA, gradient clipping, mixed precision, progress, the loss history, atomic checkpoints;
    DDP under torchrun."""

    def __init__(self, model, loss_fn, data, config: TrainConfig | None = None, *, device=None,
                 checkpoint_path=None, progress: bool = True):
        self.config = config or TrainConfig()
        self.device = pick_device(device)
        self.model = model.to(self.device)
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.loss_fn = loss_fn
        data = (data,) if isinstance(data, torch.Tensor) else tuple(data)
        if not data or any(len(d) != len(data[0]) for d in data):
            raise ValueError("data must be a tensor, or a tuple of tensors with the same first dimension")
        if len(data[0]) == 0:
            raise ValueError("data is empty: the Trainer needs at least one example to draw batches from")
        self.data = tuple(d.to(self.device) for d in data)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.config.lr,
                                           weight_decay=self.config.weight_decay)
        self.amp_dtype = autocast_dtype(self.config.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        # Dropout draws from the global RNG: seed it per step (inside fork_rng) so those draws are reproducible too.
        self.has_dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in self.model.modules())
        self.rank, self.world_size = process_group()
        self.forward_model = self.model  # what the loss calls: the model itself, or its DDP wrapper
        if self.world_size > 1:
            if self.config.batch_size % self.world_size:
                raise ValueError(f"batch_size {self.config.batch_size} must divide evenly among "
                                 f"{self.world_size} processes")
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(self.model, device_ids=ids)
        share = self.config.batch_size // self.world_size
        self.shard = slice(self.rank * share, (self.rank + 1) * share)  # this process's examples of each batch
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.progress = progress and self.rank == 0
        self.step = 0
        self.history: list[float] = []  # the loss at every step (averaged over processes)
        self.seconds = 0.0  # training wall time, summed over resumed runs
        if self.checkpoint_path and self.checkpoint_path.exists():
            self.load(self.checkpoint_path)

    def batch(self, generator: torch.Generator) -> tuple:
        # The whole global batch's indices, then this process's slice (all of them in a single process).
        idx = torch.randint(0, len(self.data[0]), (self.config.batch_size,), generator=generator)[self.shard]
        idx = idx.to(self.device)
        return tuple(d[idx] for d in self.data)

    def compute_loss(self, generator: torch.Generator) -> torch.Tensor:
        batch = self.batch(generator)
        if self.world_size == 1:
            return self.loss_fn(self.forward_model, batch, generator)
        if "shard" in inspect.signature(self.loss_fn).parameters:  # it draws the global batch's noise, keeps its slice
            return self.loss_fn(self.forward_model, batch, generator, shard=(self.shard.start, self.config.batch_size))
        # A loss that cannot take a shard gets a generator of its own per process: valid, but not the 1-process draws.
        seeds = torch.randint(0, 2**62, (self.world_size,), generator=generator)
        return self.loss_fn(self.forward_model, batch, torch.Generator().manual_seed(int(seeds[self.rank])))

    def train_step(self) -> float:
        cfg, model = self.config, self.model
        g = step_generator(cfg.seed, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, self.step)
        model.train()
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            if self.has_dropout:
                with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                    torch.manual_seed(cfg.seed * 1_000_003 + self.step + 7919 * self.rank)
                    loss = self.compute_loss(g)
            else:
                loss = self.compute_loss(g)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # under DDP, backward also averages the gradients over processes
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.update_ema()
        self.step += 1
        if self.world_size > 1:  # the history holds the global batch's loss: the mean over processes
            loss = loss.detach().clone()
            dist.all_reduce(loss)
            loss /= self.world_size
        return loss.item()

    @torch.no_grad()
    def update_ema(self):
        # θ_ema ← d·θ_ema + (1 - d)·θ, with d warming up from 0.1 so early weights are not averaged in for long.
        d = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        ema = list(self.ema_model.parameters()) + list(self.ema_model.buffers())
        cur = list(self.model.parameters()) + list(self.model.buffers())
        torch._foreach_lerp_([e for e in ema if e.is_floating_point()],
                             [c for c in cur if c.is_floating_point()], 1 - d)

    def fit(self, steps: int | None = None, *, max_seconds: float | None = None) -> list[float]:
        """Train until `steps` (default: config.steps) steps are done in all, or `max_seconds` of wall time are
        spent in this call (a time-boxed run, e.g. to compare two models on the same budget); returns the loss
        history. A time-boxed run that stops early saves a checkpoint where it stopped, when it has a path."""
        steps = self.config.steps if steps is None else steps
        if max_seconds is not None:
            check_number("max_seconds", max_seconds, low=0, low_open=True)
        bar = Progress(steps, self.step, enabled=self.progress)
        start = began = time.perf_counter()
        while self.step < steps:
            if max_seconds is not None and self._time_is_up(began, max_seconds):
                if self.checkpoint_path and self.rank == 0 and self.step % self.config.checkpoint_every:
                    self.seconds += time.perf_counter() - start
                    start = time.perf_counter()
                    self.save(self.checkpoint_path)
                break
            self.history.append(self.train_step())
            bar.update(self.step, self.history)
            if self.checkpoint_path and (self.step % self.config.checkpoint_every == 0 or self.step == steps):
                self.seconds += time.perf_counter() - start
                start = time.perf_counter()
                if self.rank == 0:
                    self.save(self.checkpoint_path)
        self.seconds += time.perf_counter() - start
        bar.close(self.step, self.history, self.seconds)
        return self.history

    def _time_is_up(self, began: float, max_seconds: float) -> bool:
        up = time.perf_counter() - began >= max_seconds
        if self.world_size > 1:  # every process stops at the same step, or DDP's next all-reduce waits forever
            flag = torch.tensor(float(up), device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            up = bool(flag.item())
        return up

    # --- checkpoints: weights, EMA and optimizer in tensors; step, history and configs in metadata ---------------

    def save(self, path, **meta) -> Path:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors |= {f"ema.{k}": v for k, v in self.ema_model.state_dict().items()}
        opt = self.optimizer.state_dict()
        for i, state in opt["state"].items():
            tensors |= {f"optim.{i}.{k}": torch.as_tensor(v) for k, v in state.items()}
        tensors["history.loss"] = torch.tensor(self.history, dtype=torch.float64)
        return ckpt.save_checkpoint(
            path, tensors, kind=ckpt.kind_of(self.model), config=self.model.config.to_dict(),
            train_config=asdict(self.config), step=self.step, seconds=self.seconds,
            param_groups=opt["param_groups"], grad_scale=self.scaler.get_scale() if self.scaler.is_enabled() else None,
            grad_scaler=self.scaler.state_dict() or None,  # fp16: the loss scale and its growth count; else {}
            device=str(self.device), **meta,
        )

    def load(self, path):
        """Resume from a training checkpoint written by `save`."""
        meta = ckpt.read_metadata(path)
        free = {"steps": 0, "checkpoint_every": 0}  # settings a resumed run may change
        saved = meta.get("train_config")
        if saved is None:
            raise ValueError(f"{path} holds weights only, not a training state to resume from")
        try:  # a file from before a field was added holds no value for it: the field's default is what it ran with
            saved = json.loads(json.dumps(asdict(TrainConfig(**saved))))
        except TypeError as e:
            raise ValueError(f"{path} holds a TrainConfig this version cannot read ({e})") from None
        if json.loads(json.dumps(asdict(self.config))) | free != saved | free:
            raise ValueError(f"{path} was trained with a different TrainConfig {saved}; "
                             "resume with the same settings (only steps and checkpoint_every may change)")
        ckpt.load_weights(self.model, path, weights="model")
        ckpt.load_weights(self.ema_model, path, weights="ema")
        tensors = ckpt.load_tensors(path)
        state: dict[int, dict] = {}
        for key, v in ckpt.split_prefix(tensors, "optim").items():
            i, name = key.split(".", 1)
            state.setdefault(int(i), {})[name] = v.to(self.device) if name != "step" else v
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        if meta.get("grad_scale") and self.scaler.is_enabled():  # fp16: go on with the saved loss scale
            # load_state_dict, not update(scale): update needs a scale set up by a step, and a fresh scaler has none
            saved_scaler = meta.get("grad_scaler") or {"scale": meta["grad_scale"]}  # a file from before grad_scaler
            self.scaler.load_state_dict(self.scaler.state_dict() | saved_scaler)
        self.step, self.seconds = meta["step"], meta.get("seconds", 0.0)
        self.history = tensors["history.loss"].tolist()
