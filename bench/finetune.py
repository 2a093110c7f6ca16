"""What teaching the course's model a new word costs on this machine: CPU seconds, trained numbers, file size, and the
training loss on the new pictures (fixed draws of t and ε) before and after, for textual inversion and LoRA.

    python bench/finetune.py                       # 12 pictures, 300 steps each, 1 thread
    python bench/finetune.py --steps 100 --pictures 8 --threads 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from sdlesson import finetune as F
from sdlesson import lora as L
from sdlesson.generate import TextToImage
from sdlesson.textual_inversion import save_embedding


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--pictures", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, captions = F.concept_scenes(args.pictures, seed=args.seed)
    latents = F.encode_concept(images)
    print(f"{args.pictures} pictures of '{F.NEW_WORD}', {args.steps} steps, batch 8, {args.threads} thread(s)")
    for method in ("textual_inversion", "lora"):
        model = TextToImage.from_pretrained()
        F.add_word(model.clip, F.NEW_WORD)
        before = F.concept_loss(model, latents, captions)
        start = time.process_time()
        history = F.finetune(model, latents, captions, method=method, steps=args.steps, rank=args.rank,
                             seed=args.seed)
        seconds = time.process_time() - start
        after = F.concept_loss(model, latents, captions)
        with tempfile.TemporaryDirectory() as tmp:
            if method == "lora":
                size = L.save_lora(model.unet, Path(tmp) / "a.safetensors").stat().st_size
            else:
                row = model.clip.text.token_embedding.weight[history["word_id"]]
                size = save_embedding(Path(tmp) / "a.safetensors", F.NEW_WORD, row[None]).stat().st_size
        print(f"{method:18s} {history['parameters']:>7,} numbers  {size / 1024:7.1f} KB  {seconds:6.1f} CPU s  "
              f"loss {before:.4f} -> {after:.4f}")


if __name__ == "__main__":
    main()
