"""The reports `python -m sdlesson evaluate NAME` prints and data/MODEL_CARD.md quotes: one evaluate_NAME function
per shipped model, each checking its options before any work, then loading the model, measuring it with the
instruments of evaluate.py and returning {what was measured: the figure}.
"""

from __future__ import annotations

import time

import torch

from . import compositional as cw
from . import geneval as ge
from . import pretrained as pre
from . import recipes
from .checkpoint import read_metadata
from .checks import check_int, check_number
from .classifier import extract_features, predict
from .data import SILHOUETTE_CLASSES, load_photo, load_silhouettes, to_float
from .evaluate import (ATTRIBUTES, CONFIDENT, copies_of_training, judge_scenes, prompt_adherence, prompt_set,
                       sample_in_batches, scene_quality, silhouette_fd_floor, training_scenes)
from .generate import DEFAULT_GUIDANCE, TextToImage
from .latents import decode_latents, encode_images, encode_scenes, reconstruct
from .metrics import class_histogram, edge_error, frechet_distance, nearest_psnr, psnr, ssim
from .samplers import make_sampler
from .scenes import BACKGROUNDS, OBJECTS, POSITIONS, SIZES, Scene, make_scenes
from .schedule import NoiseSchedule


def check_options(*, num_samples=None, num_steps=None, sampler=None, guidance_scale=None) -> None:
    """The evaluate options that are given, checked at once: a mistake costs no time (None: not given)."""
    if num_samples is not None:
        check_int("num_samples", num_samples, low=1)
    if num_steps is not None:
        check_int("num_steps", num_steps, low=1, high=1000)  # the shipped UNets' schedules have T = 1000
    if sampler is not None:
        make_sampler(sampler, NoiseSchedule("linear"))  # ValueError naming the samplers there are
    if guidance_scale is not None:
        check_number("guidance_scale", guidance_scale, low=0)


@torch.no_grad()
def evaluate_silhouette_unet(*, device="cpu", num_samples: int = 1000, num_steps: int = 100,
                             sampler: str = "ddim", seed: int = 0) -> dict:
    check_options(num_samples=num_samples, num_steps=num_steps, sampler=sampler)
    unet = pre.load_pretrained("silhouette_unet", device=device)
    classifier = pre.load_pretrained("silhouette_classifier", device=device)
    sampler_obj = make_sampler(sampler, NoiseSchedule(recipes.SILHOUETTE_SCHEDULE))
    start = time.perf_counter()
    samples = sample_in_batches(unet, sampler_obj, num_samples, (1, 28, 28), num_steps=num_steps, seed=seed)
    seconds = time.perf_counter() - start
    test, _ = load_silhouettes("test")
    n = min(num_samples, len(test))
    reference = test[torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n]]  # all classes
    fd = frechet_distance(extract_features(classifier, samples[:n]), extract_features(classifier, reference))
    floor = silhouette_fd_floor(classifier, n, seed=seed)
    counts = class_histogram(predict(classifier, samples), len(SILHOUETTE_CLASSES))
    return {
        "samples": f"{num_samples} with {sampler.upper()}, {num_steps} steps, seed {seed}",
        "sampling time": f"{seconds:.1f} s on {device}",
        "Fréchet distance (gen/test)": round(fd, 3),
        "real-vs-real floor (train/test)": round(floor, 3),
        "ratio to floor": round(fd / floor, 2),
        "class histogram": dict(zip(SILHOUETTE_CLASSES, counts.tolist())),
    }


@torch.no_grad()
def evaluate_silhouette_classifier(*, device="cpu") -> dict:
    classifier = pre.load_pretrained("silhouette_classifier", device=device)
    test, labels = load_silhouettes("test")
    accuracy = (predict(classifier, test).argmax(-1) == labels).float().mean().item()
    return {"test accuracy": f"{accuracy:.2%} on {len(test)} held-out silhouettes"}


@torch.no_grad()
def evaluate_scene_vae(*, device="cpu", num: int = 1000) -> dict:
    """PSNR of reconstructions (posterior mode, decoded) on new draws of scenes, split into what the VAE trained on
    (pixel-identical copies of training scenes), what it did not (seen pairs at a placement never in training, and
    the held-out pairs), and on the cat photo."""
    vae = pre.load_pretrained("scene_vae", device=device)
    seen = make_scenes(num, seed=recipes.SCENE_TEST_SEED)[0]
    copies = copies_of_training(seen)
    groups = {"copies of training scenes (memory)": seen[copies],
              "seen pairs, placement never in training (new)": seen[~copies],
              "held-out object-background pairs (new)":
                  make_scenes(num, seed=recipes.SCENE_TEST_SEED, split="heldout")[0]}
    report = {}
    for label, images in groups.items():
        scores = psnr(reconstruct(vae, images), to_float(images))
        report[f"PSNR, {label}"] = f"{scores.mean().item():.2f} dB ({len(images)} scenes)"
    cat = load_photo("chelsea", size=64).to(device)
    cat_psnr = psnr(vae.decode(vae.encode(cat).mode()).clamp(-1, 1), cat).item()
    report["PSNR, chelsea the cat (64×64)"] = f"{cat_psnr:.2f} dB"
    report["latent scale (1 / std)"] = round(read_metadata(pre.checkpoint_path("scene_vae"))["latent_scale"], 4)
    return report


@torch.no_grad()
def evaluate_scene_vae_decoder(*, device="cpu", num: int = 1000) -> dict:
    """The fine-tuned decoder against the first and against its control (the same steps without the edge term), on
    the same new scenes: PSNR, the error in neighbour differences (the term the fine-tuning loss adds) and SSIM (which
    the loss never saw, so it is the fair judge of the gain).
    'train' pairs are mostly copies of training scenes (see copies_of_training); 'heldout' pairs are new."""
    vaes = {name: pre.load_pretrained(name, device=device)
            for name in ("scene_vae", "scene_vae_decoder", "scene_vae_decoder_mse")}  # the last: its control
    report = {}
    for split in ("train", "heldout"):
        x = to_float(make_scenes(num, seed=recipes.SCENE_TEST_SEED, split=split)[0])
        for name, vae in vaes.items():
            recon = reconstruct(vae, x)
            report[f"{name}, {split} pairs"] = (f"PSNR {psnr(recon, x).mean().item():.2f} dB, edge error "
                                                f"{edge_error(recon, x):.4f}, SSIM {ssim(recon, x).mean().item():.4f}")
    return report


@torch.no_grad()
def evaluate_scene_judge(*, device="cpu", num: int = 2000) -> dict:
    """Accuracy of each head on freshly drawn scenes of both splits (a seed the judge never trained on)."""
    judge = pre.load_pretrained("scene_judge", device=device)
    report = {}
    for split in ("train", "heldout"):
        images, _, labels = make_scenes(num, seed=recipes.SCENE_JUDGE_TEST_SEED, split=split)
        correct = judge_scenes(judge, images)[0] == labels
        accs = ", ".join(f"{h} {correct[:, k].float().mean().item():.2%}" for k, h in enumerate(ATTRIBUTES))
        all_four = correct.all(1).float().mean().item()
        report[f"accuracy, {split} pairs"] = f"{accs}; all four {all_four:.2%} ({num} scenes)"
    return report


@torch.no_grad()
def evaluate_scene_latent_unet(*, device="cpu", num_samples: int = 1000, num_steps: int = 50,
                               sampler: str = "ddim", seed: int = 0) -> dict:
    """Unconditional latent samples, decoded, judged: clean-scene share and Fréchet distance in judge features."""
    check_options(num_samples=num_samples, num_steps=num_steps, sampler=sampler)
    unet = pre.load_pretrained("scene_latent_unet", device=device)
    vae = pre.load_pretrained("scene_vae", device=device)
    judge = pre.load_pretrained("scene_judge", device=device)
    start = time.perf_counter()
    sampler_obj = make_sampler(sampler, NoiseSchedule(recipes.SCENE_SCHEDULE), clip_sample=None)
    latents = sample_in_batches(unet, sampler_obj, num_samples, (4, 8, 8), num_steps=num_steps, seed=seed)
    samples = decode_latents(vae, latents, pre.scene_latent_scale())
    seconds = time.perf_counter() - start
    reference = make_scenes(num_samples, seed=recipes.SCENE_TEST_SEED)[0]  # new draws of the training pairs
    training = training_scenes()
    q = scene_quality(judge, samples, reference, training)
    # Copying or generalising? The Fréchet distance cannot tell: a model that replayed its training scenes would score
    # the floor. A decoded sample can come no closer to a training scene than the VAE's own round trip of one does.
    distinct = torch.unique(training, dim=0)
    sample_nn = nearest_psnr(samples, distinct).median().item()
    round_trip_nn = nearest_psnr(decode_latents(vae, encode_images(vae, reference[:200])), distinct).median().item()
    return {"samples": f"{num_samples} with {sampler.upper()}, {num_steps} steps, seed {seed}",
            "sampling + decoding time": f"{seconds:.1f} s on {device}",
            f"clean scenes (judge confidence >= {CONFIDENT} on all four heads)": f"{q['clean']:.1%}",
            "Fréchet distance in judge features (samples/new draws)": round(q["fd"], 2),
            "real-vs-real floor (training/new draws; "
            f"{copies_of_training(reference, training).float().mean().item():.0%} of new draws are training copies)":
                round(q["floor"], 2),
            "ratio to floor": round(q["fd"] / q["floor"], 2),
            "nearest training scene, median PSNR: samples": f"{sample_nn:.1f} dB",
            "nearest training scene, median PSNR: VAE round trips of new draws (a copy's ceiling)":
                f"{round_trip_nn:.1f} dB"}


@torch.no_grad()
def evaluate_scene_text_unet(*, device="cpu", guidance_scale: float | None = None,
                             num_steps: int | None = None) -> dict:
    """Prompt adherence on the fixed prompt sets, seen and held-out object-background pairs, as the judge sees it.
    guidance_scale and num_steps default to the pipeline's (generate.py holds them)."""
    check_options(num_steps=num_steps, guidance_scale=guidance_scale)
    pipe = TextToImage.from_pretrained(device=device)
    guidance_scale = DEFAULT_GUIDANCE if guidance_scale is None else guidance_scale
    num_steps = pipe.defaults["num_steps"] if num_steps is None else num_steps
    report = {"sampling": f"DDIM, {num_steps} steps, guidance scale {guidance_scale}, one image per prompt"}
    for split, label in (("train", "seen pairs"), ("heldout", "held-out pairs")):
        correct = prompt_adherence(pipe, prompt_set(split), guidance_scale=guidance_scale, num_steps=num_steps)
        per = ", ".join(f"{h} {correct[:, k].float().mean().item():.0%}" for k, h in enumerate(ATTRIBUTES))
        report[f"adherence, {label}"] = (f"{correct.float().mean().item():.1%} of attributes ({per}); all four "
                                         f"{correct.all(1).float().mean().item():.0%} of {len(correct)} prompts")
    return report


@torch.no_grad()
def evaluate_scene_clip(*, device="cpu", num: int = 1000) -> dict:
    """Retrieval: for new scenes, is the most similar of all 480 possible captions the scene's own?"""
    clip = pre.load_pretrained("scene_clip", device=device)
    vae = pre.load_pretrained("scene_vae", device=device)
    captions = [Scene(o, b, p, s).caption for o in OBJECTS for b in BACKGROUNDS for p in POSITIONS for s in SIZES]
    ids, mask = clip.config.tokenizer()(captions)
    text = clip.encode_text(ids.to(device), mask.to(device))
    report = {}
    for split in ("train", "heldout"):
        latents, true, _ = encode_scenes(vae, num, seed=recipes.SCENE_TEST_SEED, split=split,
                                         scale=pre.scene_latent_scale())
        best = (clip.encode_image(latents.to(device)) @ text.T).argmax(1).cpu()
        accuracy = sum(captions[i] == c for i, c in zip(best.tolist(), true)) / num
        report[f"caption retrieval, {split} pairs"] = f"{accuracy:.1%} of {num} new scenes (top-1 of 480 captions)"
    return report


# --- the compositional world (lesson 06) -----------------------------------------------------------------------------

GUIDANCE_SWEEP = (0.0, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5)  # s = 0 unconditional, 1 the conditional model, > 1 guidance


@torch.no_grad()
def evaluate_comp_vae(*, device="cpu", num: int = 1000) -> dict:
    """Round trips of new compositional scenes, seen and held-out compositions: PSNR, and what the GenEval reader
    still reads in them (so the VAE is not what a text model's score is limited by)."""
    vae = pre.load_pretrained("comp_vae", device=device)
    report = {}
    for split in cw.SPLITS:
        images, _, scenes = cw.make_scenes(num, seed=recipes.COMP_TEST_SEED, split=split)
        trips = decode_latents(vae, encode_images(vae, images))
        read = ge.reader_accuracy(trips, scenes)
        report[f"PSNR, {split} compositions"] = f"{psnr(to_float(trips), to_float(images)).mean().item():.2f} dB"
        report[f"reader on round trips, {split}"] = ", ".join(f"{k} {v:.1%}" for k, v in read.items())
        report[f"reader on the renders, {split}"] = ", ".join(
            f"{k} {v:.1%}" for k, v in ge.reader_accuracy(images, scenes).items())
    return report


@torch.no_grad()
def evaluate_comp_clip(*, device="cpu", num: int = 1000) -> dict:
    """Retrieval: for new scenes, is the most similar of the scenes' complete captions the scene's own? And word
    order: does CLIP prefer a scene's caption to its twin with the relation reversed or the colours swapped?"""
    clip = pre.load_pretrained("comp_clip", device=device)
    vae = pre.load_pretrained("comp_vae", device=device)
    report = {}
    for split in cw.SPLITS:
        images, _, scenes = cw.make_scenes(num, seed=recipes.COMP_TEST_SEED, split=split)
        captions = sorted({s.caption for s in scenes})
        ids, mask = clip.config.tokenizer()(captions)
        text = clip.encode_text(ids.to(device), mask.to(device))
        latents = encode_images(vae, images) * pre.latent_scale_of("comp_vae")
        best = (clip.encode_image(latents.to(device)) @ text.T).argmax(1).cpu()
        hits = sum(captions[i] == s.caption for i, s in zip(best.tolist(), scenes))
        report[f"caption retrieval, {split}"] = (f"{hits / num:.1%} of {num} new scenes (top-1 of their "
                                                 f"{len(captions)} complete captions; chance {1 / len(captions):.1%})")
        if split == "train":  # word order: the true caption against its twin (geneval.swap_pairs), chance 50%
            swap = ge.swap_test(clip, latents, scenes)
            report["true caption over its twin, train"] = ", ".join(
                f"{name} {p:.1%} ± {se:.1%} ({n})" for name, (p, se, n) in
                (("relation reversed", swap["relation"]), ("colours swapped", swap["colour"]),
                 ("control: other kinds", swap["kinds"])))
    return report


@torch.no_grad()
def evaluate_comp_text_unet(*, device="cpu", guidance_scale: float | None = None, num_steps: int | None = None,
                            unet: str = "comp_text_unet") -> dict:
    """GenEval in the compositional world: per category, seen and held-out compositions, 4 images a prompt, at each
    guidance scale of GUIDANCE_SWEEP (or the one given); the diversity of 16 pictures of each open prompt ("a car")
    at each scale; and memorisation (pictures that copy a training scene), against a control of fresh renders."""
    check_options(num_steps=num_steps, guidance_scale=guidance_scale)
    pipe = TextToImage.from_pretrained("compositional", unet=unet, device=device)
    scales = GUIDANCE_SWEEP if guidance_scale is None else (guidance_scale,)
    num_steps = pipe.defaults["num_steps"] if num_steps is None else num_steps
    report = {"sampling": f"DDIM, {num_steps} steps; the same start noise at every scale"}
    pictures = {}
    for split in cw.SPLITS:
        prompts = ge.make_prompts(split)
        tables = {}
        for s in scales:
            pictures[split, s] = ge.generate_for(pipe, prompts, 4, guidance_scale=s, num_steps=num_steps)
            tables[f"s = {s:g}"] = ge.geneval(prompts, pictures[split, s])
        report[f"GenEval, {split} compositions ({len(prompts)} prompts × 4), % ± SE"] = "\n" + ge.format_table(tables)
    open_ = ge.open_prompts()
    for s in scales:
        spread = ge.mean_diversity(open_, ge.generate_for(pipe, open_, 16, guidance_scale=s, num_steps=num_steps))
        report[f"diversity of {len(open_)} open prompts × 16, s = {s:g}"] = ", ".join(
            f"{k} {m:.2f} ± {e:.2f}" for k, (m, e) in spread.items())
    s = DEFAULT_GUIDANCE if DEFAULT_GUIDANCE in scales else scales[-1]
    samples = pictures["train", s].flatten(0, 1)
    vae = pipe.vae
    training = cw.make_scenes(recipes.comp_train_count(), seed=recipes.COMP_TRAIN_SEED)[0]
    renders = cw.make_scenes(len(samples), seed=recipes.COMP_TEST_SEED)[0]
    fresh = decode_latents(vae, encode_images(vae, renders))
    # A decoded copy of a training scene lies about as close to it as a VAE round trip lies to its original: the
    # round trips' median PSNR, less 2 dB, is where "a copy" starts.
    threshold = float(psnr(to_float(fresh), to_float(renders)).median()) - 2
    report[f"copies of a training scene (nearest ≥ {threshold:.1f} dB), s = {s:g}"] = (
        f"samples {ge.copy_share(samples, training, threshold_db=threshold):.1%} of {len(samples)}; VAE round trips "
        f"of fresh renders (copies only by chance) {ge.copy_share(fresh, training, threshold_db=threshold):.1%}")
    return report


def evaluate_comp_text_unet_joint(**options) -> dict:
    """The same GenEval for the text UNet trained further together with its text encoder."""
    return evaluate_comp_text_unet(**options, unet="comp_text_unet_joint")


def evaluate_comp_text_unet_recaptioned(**options) -> dict:
    """... and for its twin trained on a recaptioner's descriptive captions too."""
    return evaluate_comp_text_unet(**options, unet="comp_text_unet_recaptioned")


def evaluate_comp_text_unet_relations(**options) -> dict:
    """... and for the third twin, which reads relation captions more than twice as often."""
    return evaluate_comp_text_unet(**options, unet="comp_text_unet_relations")
