"""CLIP's BPE tokenizer against transformers' CLIPTokenizer (the oracle) built from the same vocabulary."""

from __future__ import annotations

import random
import warnings

import pytest
import torch

from sdlesson.clip_tokenizer import CLIPTokenizer

BASE = [
    "a photo of a cat", "A Photo Of A CAT", "an astronaut riding a horse on the moon, trending on artstation",
    "a small dog face in the top left on a green background", "", "   ", "cat", "cats' toys", "the cat's hat isn't red",
    "we're, they've, I'm, you'll, he'd", "1234567890", "3.14159 is pi; 2+2=4", "$100 & 50% off!!!", "c'est déjà vu",
    "naïve café résumé", "Ünïcödé ÀÉÎÕÜ", "cafe\u0301 (e + combining acute, NFD)", "café (NFC)", "東京の夜景、ネオン",
    "一只可爱的猫", "서울의 밤", "مرحبا بالعالم", "שלום עולם", "Привет, мир", "γειά σου κόσμε", "🐱🐶🚀 emoji only",
    "a cat 🐱 and a dog 🐶", "👨‍👩‍👧 family (ZWJ)", "tabs\tand\nnewlines\r\nmixed", "non\u00a0breaking\u2003spaces",
    "multiple     spaces    inside", "  leading and trailing  ", "UPPER lower MiXeD", "hyphen-ated and under_scored",
    "stablediffusion", "supercalifragilisticexpialidocious", "https://example.com/a?b=c", "<|startoftext|> typed",
    "ends with <|endoftext|>", "quotes \"double\" and 'single'", "back\\slash and /slash", "~tilde ^caret `tick`",
    "(parentheses) [brackets] {braces}", "ellipsis… and — dashes –", "ﬁ ligature and ² superscript", "ß strasse",
    "İstanbul dotted I", "ΟΔΟΣ Σ final sigma", "!!<|endoftext|>x", "<|ENDOFTEXT|> in capitals", "<|ENDOFTEXT|>!!",
    "x" * 300, "word " * 100, ", ".join(["highly detailed"] * 30),
]


def prompts() -> list[str]:
    """The hand-written prompts above, and seeded random ones mixing words, symbols, digits and scripts."""
    rng = random.Random(0)
    pool = ("cat dog photo astronaut oil painting portrait of a the in on at 4k 8k hdr ultra-detailed Greg Rutkowski "
            "café naïve 東京 猫 🐱 🚀 !!! ... , ; : ' 's 't 42 7 ½ € $ % & — «» ¿¡ Ωmega ÀÉÎ \t \n").split(" ")
    out = list(BASE)
    while len(out) < 220:
        out.append(" ".join(rng.choice(pool) for _ in range(rng.randint(1, 40))))
    return out


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from transformers import CLIPTokenizer as Oracle

    ours = CLIPTokenizer.bundled()
    folder = tmp_path_factory.mktemp("tokenizer")
    ours.save(folder)
    return ours, Oracle.from_pretrained(str(folder)), folder


def test_ids_equal_transformers_on_220_prompts(tokenizers):
    ours, oracle, _ = tokenizers
    texts = prompts()
    assert len(texts) >= 200
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the long prompts warn: tested below
        mine, mask = ours(texts)
    encoded = oracle(texts, padding="max_length", truncation=True, max_length=77)
    theirs = torch.tensor(encoded.input_ids)
    mismatched = [t for t, a, b in zip(texts, mine, theirs) if not torch.equal(a, b)]
    assert not mismatched, f"{len(mismatched)} prompts differ, e.g. {mismatched[:3]}"
    assert torch.equal(mask, torch.tensor(encoded.attention_mask).bool())  # the mask: the tokenizers' one contract


def test_known_ids_of_sd_vocabulary():
    """The bundled vocabulary is SD v1's: "a photo of a cat" is 49406 320 1125 539 320 2368 49407, then padding."""
    ids, mask = CLIPTokenizer.bundled()("a photo of a cat")
    assert ids.shape == mask.shape == (1, 77) and mask.sum() == 7  # <|startoftext|>, 5 words, <|endoftext|>
    assert ids[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 49407]


def test_from_files_equals_bundled(tokenizers):
    ours, _, folder = tokenizers
    again = CLIPTokenizer.from_files(folder / "vocab.json", folder / "merges.txt")
    texts = prompts()[:60]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(again(texts)[0], ours(texts)[0])
    assert again.vocab_size == ours.vocab_size == 49408


def test_decode_equals_transformers_and_recovers_cleaned_words(tokenizers):
    """Spaces included: one space per "</w>", as transformers' decode writes them (without its punctuation clean-up)."""
    ours, oracle, _ = tokenizers
    for text in ["a photo of a cat", "naïve café, 東京!", "🐱 and 🐶", *prompts()[:40]]:
        ids = ours.encode(text)
        assert ours.decode(ids) == oracle.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert ours.decode(ours.encode("A photo  of a CAT")) == "a photo of a cat"
    assert ours.decode(ours.encode("naïve café, 東京!")) == "naïve café , 東京 !"


def test_truncation_warns_and_keeps_the_end_token(tokenizers):
    ours, _, _ = tokenizers
    with pytest.warns(UserWarning, match="tokens are dropped|are dropped"):
        ids, _ = ours("cat " * 100)
    assert ids[0, -1].item() == ours.eos_id and ids[0, 0].item() == ours.bos_id


@pytest.mark.parametrize("bad", [3, None, [], ["ok", 5]])
def test_bad_prompts_are_refused(tokenizers, bad):
    ours, _, _ = tokenizers
    with pytest.raises(TypeError, match="string"):
        ours(bad)
