"""Greedy answers of a Hugging Face model for a tokenised batch: the one helper behind QLoRA validation, the Flan-T5
extractor's validation and the Flan-T5 extractor itself (the pipeline's LLM backends decode in eatlab/llm)."""

from __future__ import annotations


def greedy_texts(
    model,
    tokenizer,
    input_ids,
    attention_mask,
    *,
    max_new_tokens: int,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    num_beams: int = 1,
) -> list[str]:
    """The decoded answers, cut at the first end token. Decoder-only models get left-padded prompts and answer
    after them; encoder-decoder models (T5) answer from scratch. The model runs in eval mode without gradients
    (dropout off) and with the KV cache on; its training mode and cache setting are restored afterwards."""
    import torch
    from transformers import GenerationConfig

    eos = eos_token_id if eos_token_id is not None else tokenizer.eos_token_id
    eos_ids = set(eos) if isinstance(eos, list | tuple) else {eos}
    pad = pad_token_id if pad_token_id is not None else tokenizer.pad_token_id
    config = GenerationConfig(
        max_new_tokens=int(max_new_tokens),
        do_sample=False,
        num_beams=int(num_beams),
        eos_token_id=eos,
        pad_token_id=pad,
        decoder_start_token_id=getattr(model.config, "decoder_start_token_id", None),
    )
    was_training, use_cache = model.training, getattr(model.config, "use_cache", None)
    model.eval()
    model.config.use_cache = True
    try:
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    finally:
        model.config.use_cache = use_cache
        if was_training:
            model.train()
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    if not seq2seq:
        out = out[:, input_ids.shape[1] :]
    texts = []
    for row in out.tolist():
        if seq2seq and row and row[0] == config.decoder_start_token_id:
            row = row[1:]
        stop = next((k for k, t in enumerate(row) if t in eos_ids), len(row))
        texts.append(tokenizer.decode(row[:stop], skip_special_tokens=True))
    return texts
