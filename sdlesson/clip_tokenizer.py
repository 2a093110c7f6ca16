"""CLIP's tokenizer: byte-level byte-pair encoding (BPE), as Stable Diffusion v1 reads a prompt.

    "A photo of a cat!"  ─ clean up ─ "a photo of a cat!"
                         ─ split    ─ ["a", "photo", "of", "a", "cat", "!"]           (words, numbers, punctuation)
                         ─ bytes    ─ each UTF-8 byte as one printable character      (so any text has a spelling)
                         ─ BPE      ─ ["a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>", "!</w>"]
                         ─ ids      ─ [49406, 320, 1125, 539, 320, 2368, 0, 49407, 49407, …]   (77 in all)

BPE starts from single characters and applies learned merges, most frequent pair first, until no merge applies:
common words become one token, rare words several ("stablediffusion" -> "stab", "led", "iffusion</w>"). "</w>" marks
the end of a word. The vocabulary is 49,408 tokens: 256 byte characters, the same with "</w>", 48,894 merges,
and <|startoftext|> / <|endoftext|>. A prompt becomes <|startoftext|>, its tokens, <|endoftext|>, then padding
(with <|endoftext|>, as SD's tokenizer pads) to 77; a longer prompt is cut to 77 and a warning says what was lost.

Clean-up as transformers' CLIPTokenizer does it: Unicode NFC, every run of whitespace -> one space, lower case.
(OpenAI's original also runs ftfy.fix_text and html.unescape, which change only mojibake and HTML entities such as
"&amp;".) The vocabulary comes from a downloaded snapshot's tokenizer/ folder (vocab.json + merges.txt), or, with no
download at all, from the merges file that ships inside the `clip-anytorch` wheel (a dependency of the course).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import unicodedata
import warnings
from pathlib import Path

import regex
import torch

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# Words (letters), single digits, runs of other symbols; English contractions split off ("cat's" -> "cat", "'s").
PIECES = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"""
                       r"""[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
SPECIALS = regex.compile(r"(<\|startoftext\|>|<\|endoftext\|>)")  # typed exactly, they stay special tokens


@functools.lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """Each of the 256 byte values -> a printable character (printable bytes map to themselves), so BPE works on
    text."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = dict(zip(printable, map(chr, printable))), 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars  # printable bytes first, then the rest: this order fixes the first 256 ids


def bundled_merges_file() -> Path:
    """CLIP's merges, bpe_simple_vocab_16e6.txt.gz, inside the installed clip-anytorch wheel (found, not imported)."""
    spec = importlib.util.find_spec("clip")  # locates the package without running its __init__ (which imports torch)
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz" if spec else None
    if path is None or not path.is_file():
        raise FileNotFoundError("CLIP's merges file bpe_simple_vocab_16e6.txt.gz was not found: it ships with the "
                                "`clip-anytorch` package (pip install clip-anytorch), or pass a tokenizer/ folder")
    return path


class CLIPTokenizer:
    """Prompts -> token ids (B, 77) and their mask, as Stable Diffusion v1's text encoder reads them."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], *, max_length: int = 77):
        self.encoder = vocab  # token -> id
        self.decoder = {i: t for t, i in vocab.items()}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}  # lower rank = merged earlier
        self.byte_chars = bytes_to_unicode()
        self.max_length = max_length
        self.bos_id, self.eos_id = vocab[BOS], vocab[EOS]
        self.pad_id = self.eos_id  # SD's tokenizer pads with <|endoftext|>
        self.bpe = functools.lru_cache(maxsize=65536)(self._bpe)
        self.added: list[str] = []  # whole tokens added after the vocabulary (textual inversion's new words)
        self.added_pattern: regex.Pattern | None = None

    @classmethod
    def from_files(cls, vocab_json, merges_txt, *, max_length: int = 77) -> "CLIPTokenizer":
        """From a Hugging Face snapshot's tokenizer/ folder: vocab.json and merges.txt."""
        vocab = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
        lines = Path(merges_txt).read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        return cls(vocab, merges, max_length=max_length)

    @classmethod
    def bundled(cls) -> "CLIPTokenizer":
        """CLIP's own vocabulary, built from the merges file in the clip-anytorch wheel, as OpenAI's code builds it."""
        lines = gzip.open(bundled_merges_file(), "rt", encoding="utf-8").read().split("\n")
        merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]  # 48,894 merges after a header line
        chars = list(bytes_to_unicode().values())
        tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [BOS, EOS]
        return cls({t: i for i, t in enumerate(tokens)}, merges)

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def add_tokens(self, tokens: list[str]) -> list[int]:
        """New whole tokens after the vocabulary, with the ids transformers' CLIPTokenizer.add_tokens gives them.

        As there, a new token is found anywhere in the cleaned (lower-cased) prompt, longest first, before BPE
        splits the rest: "a <cat-toy>_1x" -> "a</w>", "<cat-toy>_1", "x</w>". Tokens already known are skipped.
        A token "t" followed by added "t_1", "t_2", … stands for all of them (a multi-vector embedding), as
        diffusers' pipelines expand it."""
        if isinstance(tokens, str) or not all(isinstance(t, str) and t.strip() == t and t for t in tokens):
            raise ValueError(f"tokens must be a list of non-empty strings without surrounding spaces, got {tokens!r}")
        ids = []
        for token in dict.fromkeys(tokens):
            if self.clean(token) != token:
                raise ValueError(f"added token {token!r} must be written as prompts are read: {self.clean(token)!r}")
            if token not in self.encoder:
                self.encoder[token] = len(self.encoder)
                self.decoder[self.encoder[token]] = token
                self.added.append(token)
            ids.append(self.encoder[token])
        longest = sorted(self.added, key=len, reverse=True)  # leftmost, then longest match, as a trie finds it
        self.added_pattern = regex.compile("(" + "|".join(map(regex.escape, longest)) + ")") if longest else None
        return ids

    def _expand(self, token: str) -> list[str]:
        """t -> [t, t_1, t_2, …] while those are added tokens (a multi-vector textual-inversion embedding)."""
        tokens = [token]
        while f"{token}_{len(tokens)}" in self.encoder and f"{token}_{len(tokens)}" in self.added:
            tokens.append(f"{token}_{len(tokens)}")
        return tokens

    def _bpe(self, word: str) -> tuple[str, ...]:
        """One word (as byte characters) -> its BPE tokens: merge the lowest-ranked adjacent pair until none is left."""
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = [(self.ranks.get(p, float("inf")), i) for i, p in enumerate(zip(parts, parts[1:]))]
            rank, i = min(pairs)
            if rank == float("inf"):
                break
            first, second = parts[i], parts[i + 1]
            merged, j = [], 0  # merge every occurrence of (first, second), left to right
            while j < len(parts):
                if j < len(parts) - 1 and parts[j] == first and parts[j + 1] == second:
                    merged.append(first + second)
                    j += 2
                else:
                    merged.append(parts[j])
                    j += 1
            parts = merged
        return tuple(parts)

    @staticmethod
    def clean(text: str) -> str:
        # lower case one character at a time, as transformers does (Python's str.lower turns a final Σ into ς)
        return "".join(c.lower() for c in regex.sub(r"\s+", " ", unicodedata.normalize("NFC", text)))

    def tokenize(self, text: str) -> list[str]:
        """The BPE tokens of one prompt, e.g. ['a</w>', 'photo</w>', 'of</w>', 'a</w>', 'cat</w>']."""
        if not isinstance(text, str):
            raise TypeError(f"a prompt must be a string, got {type(text).__name__}")
        tokens = []
        for part in SPECIALS.split(text):  # special tokens typed exactly are kept as such, as transformers does
            if part in (BOS, EOS):
                tokens.append(part)
                continue
            for chunk in (self.added_pattern.split(self.clean(part)) if self.added_pattern else [self.clean(part)]):
                if chunk in self.added:  # an added token: whole, before any BPE
                    tokens.extend(self._expand(chunk))
                    continue
                for piece in PIECES.findall(chunk):
                    # a special token that only lower-casing made ("<|ENDOFTEXT|>") is text: "<|", the name, "|>"
                    for sub in ([piece[:2], piece[2:-2], piece[-2:]] if piece in (BOS, EOS) else [piece]):
                        tokens.extend(self.bpe("".join(self.byte_chars[b] for b in sub.encode("utf-8"))))
        return tokens

    def encode(self, text: str) -> list[int]:
        """Token ids of one prompt, without <|startoftext|>, <|endoftext|> or padding."""
        return [self.encoder.get(t, self.eos_id) for t in self.tokenize(text)]

    def __call__(self, prompts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt(s) -> ids (B, max_length) long: <|startoftext|> tokens <|endoftext|>, padded with <|endoftext|>;
        and mask (B, max_length) bool, True up to the first <|endoftext|> (transformers' attention_mask) — the
        course's tokenizer's contract. SD's UNet reads all 77 embeddings, padding included; the mask says which
        are the prompt's."""
        prompts = [prompts] if isinstance(prompts, str) else prompts
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise TypeError(f"prompts must be a string or a non-empty list of strings, got {prompts!r}")
        ids = torch.full((len(prompts), self.max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        room = self.max_length - 2
        for row, prompt in enumerate(prompts):
            tokens = self.encode(prompt)
            if len(tokens) > room:  # cut, as SD does — but never silently: the end of the prompt is not read
                dropped = self.decode(tokens[room:])
                warnings.warn(f"prompt {prompt[:40]!r}… has {len(tokens)} tokens; the text encoder reads {room}, "
                              f"so {len(tokens) - room} are dropped: {dropped!r}", stacklevel=2)
            tokens = [self.bos_id] + tokens[:room] + [self.eos_id]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = True
        return ids, mask

    def decode(self, ids) -> str:
        """Ids -> text (special tokens dropped); "</w>" becomes a space."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        tokens = [self.decoder[i] for i in ids if i not in (self.bos_id, self.eos_id)]
        tokens = ["".join(self.byte_chars[b] for b in t.encode("utf-8")) + "</w>" if t in self.added else t
                  for t in tokens]  # an added token reads as a word of its own
        byte_of = {c: b for b, c in self.byte_chars.items()}
        words = ("".join(tokens)).split("</w>")  # "</w>" ends a word: a space between words
        return " ".join(bytes(byte_of[c] for c in w).decode("utf-8", errors="replace") for w in words).strip()

    def save(self, folder) -> None:
        """Write vocab.json and merges.txt, the format of a Hugging Face snapshot's tokenizer/ folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        vocab = {t: i for t, i in self.encoder.items() if t not in self.added}
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        if self.added:  # where transformers keeps them, so that its tokenizer reads the same ids
            added = {t: self.encoder[t] for t in self.added}
            (folder / "added_tokens.json").write_text(json.dumps(added, ensure_ascii=False), encoding="utf-8")
        merges = sorted(self.ranks, key=self.ranks.get)
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                           encoding="utf-8")
