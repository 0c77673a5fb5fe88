"""The real CLIP BPE tokenizer, built offline from the vocabulary that ships in ``openai-clip``.

The ``openai-clip`` package carries ``bpe_simple_vocab_16e6.txt.gz`` (found with
``importlib.util.find_spec("clip")``; the package itself is never imported). Tiny test models
and the toy model use this tokenizer, so their prompts are tokenized exactly like real SD
prompts, with no hub access.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

from mudi.errors import MudiError

CLIP_VOCAB_SIZE = 49408
CLIP_MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def _clip_bpe_path() -> Path:
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise MudiError(
            "The CLIP BPE vocabulary was not found: the 'openai-clip' package is not installed. "
            "Install it (pip install openai-clip) to build tiny models."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise MudiError(f"{path} is missing: reinstall the 'openai-clip' package.")
    return path


@functools.lru_cache(maxsize=1)
def _clip_vocab_and_merges_cached() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    vocab, merges = _read_clip_vocab_and_merges()
    return tuple(vocab.items()), tuple(merges)


def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The real CLIP vocabulary (49408 tokens) and its 48894 merges (fresh copies)."""
    vocab, merges = _clip_vocab_and_merges_cached()
    return dict(vocab), list(merges)


def _read_clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    lines = gzip.open(_clip_bpe_path()).read().decode("utf-8").split("\n")
    # Line 0 is a version header; CLIP keeps 49152 - 256 - 2 merges.
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return vocab, [(a, b) for a, b in merges]


def clip_tokenizer(model_max_length: int = CLIP_MAX_LENGTH):
    """A real CLIP tokenizer (the 49408-token BPE vocabulary), built offline.

    Uses the vocabulary file shipped inside the ``openai-clip`` package, so no download is
    needed. ``model_max_length`` is 77 for Stable Diffusion / CLIP and 16 for OWLv2.
    """
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges()
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    if not (CLIP_VOCAB_SIZE - 8 <= len(tok) <= CLIP_VOCAB_SIZE + 8):
        raise MudiError(f"CLIP tokenizer built with {len(tok)} tokens, expected ~{CLIP_VOCAB_SIZE}.")
    return tok


# ---------------------------------------------------------------------------------------------
# config helpers
