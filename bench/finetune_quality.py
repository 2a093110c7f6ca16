"""What the shipped fine-tunes learned and what they cost the old words: the identity probe's accuracy on real renders,
then for the textual-inversion embedding and the LoRA (merged at scale 1): how often samples of the new word show the
new object, in the places of the training pictures and in places they never showed it (composition), and the judge's
per-attribute adherence on the old vocabulary's 80 prompts before and after (forgetting), with standard errors.

    python bench/finetune_quality.py                                # data/turtle_embedding + data/turtle_lora
    python bench/finetune_quality.py --lora runs/r8.safetensors --embedding none
"""

from __future__ import annotations

import argparse
import time

import torch

from sdlesson import finetune as F
from sdlesson import pretrained as pre
from sdlesson.evaluate import prompt_adherence, prompt_set
from sdlesson.generate import TextToImage


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lora", default="data/turtle_lora.safetensors")
    parser.add_argument("--embedding", default="data/turtle_embedding.safetensors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    judge = pre.load_pretrained("scene_judge")
    probe = F.identity_probe(judge)
    print("identity probe on fresh renders:", {k: round(v, 3) for k, v in F.identity_accuracy(probe).items()})
    seen = F.concept_scenes(12, seed=0)[1]  # the training captions (finetune's defaults: 12 pictures, seed 0)
    prompts, unseen = F.concept_prompts(seen=seen)
    old = prompt_set("train")
    base = TextToImage.from_pretrained()
    before = prompt_adherence(base, old, guidance_scale=3.0, seed=args.seed, judge=judge)
    for name, path in (("textual inversion", args.embedding), ("LoRA", args.lora)):
        if path == "none":
            continue
        model = TextToImage.from_pretrained()
        if name == "LoRA":
            F.load_lora_word(model, path, scale=1.0, merge=True)
        else:
            F.load_word(model.clip, path)
        report = F.concept_report(model, probe, prompts, seed=args.seed)
        print(f"\n{name} ({path}): {len(prompts)} prompts of the new word, {int(unseen.sum())} in places the "
              "training pictures never showed it")
        for key in ("identity", "background", "position", "size"):
            cells = [F.share(report[key][m]) for m in (~unseen, unseen, torch.ones_like(unseen))]
            print(f"  {key:10s} " + "  ".join(f"{lab} {p:.1%} ± {se:.1%}" for lab, (p, se) in
                                              zip(("seen", "unseen", "all"), cells)))
        after = prompt_adherence(model, old, guidance_scale=3.0, seed=args.seed, judge=judge)
        print(f"  old vocabulary ({len(old)} prompts, same seeds): same judged answers? "
              f"{bool(torch.equal(after, before))}")
        for attr, row in F.forgetting(before, after).items():
            (b, bse), (a, ase), (d, dse) = row["before"], row["after"], row["change"]
            print(f"  {attr:10s} before {b:.1%} ± {bse:.1%}  after {a:.1%} ± {ase:.1%}  change {d:+.1%} ± {dse:.1%}")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
