"""`model.path` naming a GGUF file: converted once to an HF folder under `paths.models_dir`, keyed by its sha256.

The GGUF files are written here with the `gguf` package: a tiny random Qwen2 (hidden 32, 2 layers) with a
byte-level BPE vocabulary (256 byte tokens, a few merges, Qwen's special tokens) and Qwen2.5's chat template.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from eatlab.errors import ConfigError
from eatlab.llm import gguf as gguf_mod
from eatlab.llm.factory import backend_identity, model_source
from eatlab.llm.tiny import QWEN25_CHAT_TEMPLATE

pytest.importorskip("gguf")

HIDDEN, LAYERS, FFN, HEADS, KV_HEADS = 32, 2, 64, 4, 2
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "o n", "e r", "Ġ s"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def write_tiny_gguf(path: Path, seed: int, tied: bool = False) -> Path:
    """A tiny random Qwen2 chat model as a GGUF file (float32 tensors); `tied`: no output.weight."""
    import gguf
    import numpy as np
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    spelling = bytes_to_unicode()
    tokens = [spelling[b] for b in range(256)] + [m.replace(" ", "") for m in MERGES] + SPECIALS
    types = [gguf.TokenType.NORMAL] * (len(tokens) - len(SPECIALS)) + [gguf.TokenType.CONTROL] * len(SPECIALS)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_name("tiny-qwen2-gguf")
    w.add_block_count(LAYERS)
    w.add_context_length(4096)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(tokens.index("<|endoftext|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(QWEN25_CHAT_TEMPLATE)
    rng = np.random.default_rng(seed)

    def tensor(name: str, *shape: int, ones: bool = False) -> None:
        values = np.ones(shape) if ones else rng.standard_normal(shape) * 0.2
        w.add_tensor(name, values.astype(np.float32))

    kv = KV_HEADS * HIDDEN // HEADS
    tensor("token_embd.weight", len(tokens), HIDDEN)
    for i in range(LAYERS):
        tensor(f"blk.{i}.attn_norm.weight", HIDDEN, ones=True)
        tensor(f"blk.{i}.attn_q.weight", HIDDEN, HIDDEN)
        tensor(f"blk.{i}.attn_q.bias", HIDDEN)
        tensor(f"blk.{i}.attn_k.weight", kv, HIDDEN)
        tensor(f"blk.{i}.attn_k.bias", kv)
        tensor(f"blk.{i}.attn_v.weight", kv, HIDDEN)
        tensor(f"blk.{i}.attn_v.bias", kv)
        tensor(f"blk.{i}.attn_output.weight", HIDDEN, HIDDEN)
        tensor(f"blk.{i}.ffn_norm.weight", HIDDEN, ones=True)
        tensor(f"blk.{i}.ffn_gate.weight", FFN, HIDDEN)
        tensor(f"blk.{i}.ffn_up.weight", FFN, HIDDEN)
        tensor(f"blk.{i}.ffn_down.weight", HIDDEN, FFN)
    tensor("output_norm.weight", HIDDEN, ones=True)
    if not tied:
        tensor("output.weight", len(tokens), HIDDEN)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory) -> dict[str, Path]:
    """Two different tiny GGUF files, each alone in its folder: `untied` (with output.weight) and `tied`."""
    root = tmp_path_factory.mktemp("gguf")
    return {
        "untied": write_tiny_gguf(root / "untied" / "tiny.gguf", seed=0),
        "tied": write_tiny_gguf(root / "tied" / "tiny-tied.gguf", seed=1, tied=True),
    }


@pytest.fixture(autouse=True)
def _fresh_memos():
    """Each test starts like a new process (nothing remembered in memory)."""
    gguf_mod._SHA.clear()
    gguf_mod._DONE.clear()
    yield
    gguf_mod._SHA.clear()
    gguf_mod._DONE.clear()


def cfg_for(path, models_dir, model_id: str = "test/tiny-gguf", **model):
    return OmegaConf.create(
        {
            "model": {
                "id": model_id,
                "path": str(path),
                "revision": None,
                "smoke": False,
                "hash_weights": True,
                **model,
            },
            "paths": {"models_dir": str(models_dir)},
            "backend": {"_target_": "eatlab.llm.hf.HFBackend"},
        }
    )


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_gguf_file_is_converted_once_and_reused(ggufs, tmp_path, caplog, monkeypatch):
    gguf = ggufs["untied"]
    models = tmp_path / "models"
    sha = sha256_of(gguf)
    with caplog.at_level(logging.INFO, logger="eatlab.llm.gguf"):
        source, local = model_source(cfg_for(gguf, models))
    folder = Path(source)
    assert local and folder == models / f"gguf-{sha[:16]}"
    names = {p.name for p in folder.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "gguf_source.json",
    } <= names
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    src = json.loads((folder / "gguf_source.json").read_text())
    assert src["sha256"] == sha and src["size"] == gguf.stat().st_size and Path(src["gguf"]) == gguf.resolve()
    assert src["transformers"]
    assert [p.name for p in models.iterdir() if ".build." in p.name] == []  # no half-built folder left
    mask = os.umask(0o022)
    os.umask(mask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~mask  # not mkdtemp's owner-only mode
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask
    assert f"converting tiny.gguf to HF folder {folder} (once)" in caplog.text
    mtime = (folder / "model.safetensors").stat().st_mtime_ns

    # a later run (nothing in memory): the folder is reused, the file not even hashed again
    gguf_mod._SHA.clear()
    gguf_mod._DONE.clear()
    caplog.clear()
    monkeypatch.setattr(gguf_mod, "_convert", lambda *a: pytest.fail("converted twice"))
    monkeypatch.setattr(gguf_mod, "_hash_file", lambda *a: pytest.fail("hashed again"))
    with caplog.at_level(logging.INFO, logger="eatlab.llm.gguf"):
        assert model_source(cfg_for(gguf, models)) == (source, True)
        assert model_source(cfg_for(gguf, models)) == (source, True)  # same process: silent
    assert caplog.text.count(f"reusing HF folder {folder} converted from tiny.gguf") == 1
    assert "converting" not in caplog.text
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime


def test_an_incomplete_folder_is_never_trusted(ggufs, tmp_path):
    gguf = ggufs["untied"]
    models = tmp_path / "models"
    half = models / f"gguf-{sha256_of(gguf)[:16]}"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")  # as if copied by hand, without gguf_source.json
    (models / f".{half.name}.build.dead").mkdir()  # left by a killed conversion
    source, _ = model_source(cfg_for(gguf, models))
    assert (
        Path(source) == half
        and (half / "gguf_source.json").is_file()
        and (half / "model.safetensors").is_file()
    )
    assert sorted(p.name for p in models.iterdir() if p.is_dir()) == [half.name]


@pytest.mark.parametrize("which", ["untied", "tied"])
def test_converted_folder_gives_the_gguf_models_logits(ggufs, tmp_path, which):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = ggufs[which]
    folder, _ = model_source(cfg_for(gguf, tmp_path / "models"))
    tok = AutoTokenizer.from_pretrained(folder)
    direct_tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    chat = [{"role": "user", "content": "the cat sat on a mat. 猫が座った"}]
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text == direct_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == direct_tok(text, add_special_tokens=False)["input_ids"]
    assert tok.eos_token == "<|im_end|>" and tok.convert_ids_to_tokens(ids[0]) == "<|im_start|>"
    converted = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    assert converted.config.tie_word_embeddings == (which == "tied")
    x = torch.tensor([ids])
    with torch.no_grad():
        a, b = converted(x).logits, direct(x).logits
    assert a.shape == (1, len(ids), 256 + len(MERGES) + len(SPECIALS))
    assert torch.allclose(a, b, atol=1e-5) and a.abs().max() > 0.1


def test_a_folder_holding_one_gguf_is_the_same_model(ggufs, tmp_path):
    models = tmp_path / "models"
    gguf = ggufs["tied"]
    assert model_source(cfg_for(gguf.parent, models)) == model_source(cfg_for(gguf, models))
    assert Path(model_source(cfg_for(gguf.parent, models))[0]).name == f"gguf-{sha256_of(gguf)[:16]}"


def test_bad_gguf_paths_are_one_line_errors(ggufs, tmp_path):
    models = tmp_path / "models"
    two = tmp_path / "two"
    two.mkdir()
    shutil.copy(ggufs["untied"], two / "a.gguf")
    shutil.copy(ggufs["tied"], two / "b.gguf")
    with pytest.raises(
        ConfigError, match=r"^model\.path=.*two: holds 2 GGUF files \(a\.gguf, b\.gguf\)"
    ) as e:
        model_source(cfg_for(two, models))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^model\.path=.*missing\.gguf: no such GGUF file$"):
        model_source(cfg_for(tmp_path / "missing.gguf", models))
    with pytest.raises(ConfigError, match=r"^model\.path=.*not smoke\.gguf: no such GGUF file$"):
        model_source(cfg_for(tmp_path / "not smoke.gguf", models, smoke=True))  # any group: these weights
    # an HF folder that also holds a GGUF is an HF folder
    (two / "config.json").write_text("{}")
    assert model_source(cfg_for(two, models)) == (str(two), True)
    assert not models.exists()  # nothing converted by any of these


@pytest.mark.parametrize("cut", [10, 30, 500, 2000])
def test_a_gguf_cut_inside_its_header_is_a_one_line_error(ggufs, tmp_path, cut):
    """An interrupted download: the gguf reader's struct.error becomes one line naming the file (was a traceback)."""
    models = tmp_path / "models"
    cut_file = tmp_path / "cut.gguf"
    cut_file.write_bytes(ggufs["untied"].read_bytes()[:cut])
    with pytest.raises(ConfigError) as e:
        model_source(cfg_for(cut_file, models))
    assert str(e.value) == (
        f"model.path={cut_file}: the GGUF file is cut short inside its header ({cut} bytes): "
        "an interrupted download or copy? fetch it again"
    )
    assert [p.name for p in models.iterdir() if p.is_dir()] == []  # no folder, not even a half one


def test_without_the_gguf_package_the_error_says_how_to_install_it(ggufs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` raises ImportError
    models = tmp_path / "models"
    with pytest.raises(ConfigError, match=r"^model\.path=.*tiny\.gguf: .*pip install gguf"):
        model_source(cfg_for(ggufs["untied"], models))
    assert [p.name for p in models.iterdir() if p.is_dir()] == []  # no folder, not even a half one


def test_model_key_is_the_gguf_files_sha256(ggufs, tmp_path):
    from eatlab.cli.finetune import base_model
    from eatlab.llm.identity import make_model_key

    models = tmp_path / "models"
    a, b = ggufs["untied"], ggufs["tied"]
    key_a = backend_identity(cfg_for(a, models))
    assert key_a == ("hf", f"test/tiny-gguf@gguf:{sha256_of(a)[:16]}")
    assert backend_identity(cfg_for(a, models)) == key_a  # stable
    key_b = backend_identity(cfg_for(b, models))[1]
    assert key_b == f"test/tiny-gguf@gguf:{sha256_of(b)[:16]}" and key_b != key_a[1]
    # a copy of the same file elsewhere, converted into another models dir: the same key
    copy = tmp_path / "elsewhere" / "renamed.gguf"
    copy.parent.mkdir()
    shutil.copy(a, copy)
    assert backend_identity(cfg_for(copy, tmp_path / "models2")) == key_a
    # the converted folder named directly keeps the key; hash_weights=false keeps the id alone
    folder = model_source(cfg_for(a, models))[0]
    assert backend_identity(cfg_for(folder, models))[1] == key_a[1]
    assert backend_identity(cfg_for(a, models, hash_weights=False))[1] == "test/tiny-gguf"
    # fine-tuning starts from the converted folder under the same key
    assert base_model(cfg_for(a, models)) == (folder, key_a[1], False)
    # an ordinary folder keeps its `@local:` fingerprint key
    plain = tmp_path / "plain"
    shutil.copytree(folder, plain, ignore=shutil.ignore_patterns("gguf_source.json"))
    assert make_model_key("m", local_path=plain).startswith("m@local:")


@pytest.mark.slow
def test_eatlab_runs_on_a_gguf_file(ggufs, compose, tmp_path):
    from eatlab.cli.run import run_eat

    gguf = ggufs["untied"]
    cfg = compose(
        [
            "model.smoke=false",
            "model.id=test/tiny-gguf",
            f"model.path={gguf}",
            f"paths.models_dir={tmp_path / 'models'}",
            "extractor=spacy",
            "data.limit=2",
        ]
    )
    m1 = run_eat(cfg, tmp_path / "run1")
    assert m1["n_sentences"] == 2 and m1["llm_calls"] > 0
    prov = json.loads((tmp_path / "run1" / "provenance.json").read_text())
    assert prov["model_key"] == f"test/tiny-gguf@gguf:{sha256_of(gguf)[:16]}"
    assert (tmp_path / "models" / f"gguf-{sha256_of(gguf)[:16]}" / "gguf_source.json").is_file()
    m2 = run_eat(cfg, tmp_path / "run2")  # the same again: every answer from the cache
    assert m2["llm_calls"] == 0 and m2["llm_cache_hits"] == m1["llm_calls"] + m1["llm_cache_hits"]
