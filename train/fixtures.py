"""Test and benchmark fixtures: a tiny random Llama and a synthetic evolve-style parquet folder.

Used by tests/test_train*.py and benchmarks/bench_train*.py; nothing is downloaded (the
tokenizer is the bundled small model's, so the tiny model speaks the same vocabulary).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ("data model train ray cluster token sequence answer question explain write list compare "
         "python table reason step first second because therefore example code function value result "
         "simple complex describe analyze summary history science music water energy market").split()


def make_tiny_model(folder: str | Path, layers: int = 2, hidden: int = 64, seed: int = 0,
                    tokenizer_path: str | None = None) -> str:
    """A random LlamaConfig model (2 layers, 64 dims) + the small model's tokenizer (or the one at
    `tokenizer_path`: a machine without the model package), saved to `folder`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from common.models import SMALL_MODEL_ALIAS, resolve_model

    folder = Path(folder)
    if (folder / "config.json").exists():
        return str(folder)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or resolve_model(SMALL_MODEL_ALIAS))
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows with the evolve job's training columns and a long-tailed length mix like evolved data.

    Responses repeat a per-row pattern, so a model can learn them (loss goes down quickly).
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        instruction = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 60))).capitalize() + "?"
        extra = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) if i % 5 == 0 else ""
        n_words = min(int(rng.lognormvariate(4.0, 0.9)), 600)
        pattern = [rng.choice(WORDS) for _ in range(3)]
        response = " ".join(pattern[j % 3] for j in range(max(n_words, 1))).capitalize() + "."
        user = instruction + ("\n\n" + extra if extra else "")
        rows.append({"id": f"row-{i:05d}", "root_id": f"seed-{i // 4:05d}", "round": i % 4, "op": "deepening",
                     "instruction": instruction, "input": extra, "response": response,
                     "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": response}]})
    return rows


def write_evolved_parquet(folder: str | Path, rows: list[dict], files: int = 2) -> str:
    """Write rows as `files` parquet files in `folder` (the evolve job's training/parquet layout)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    per = (len(rows) + files - 1) // files
    for f in range(files):
        chunk = rows[f * per: (f + 1) * per]
        if chunk:
            pq.write_table(pa.Table.from_pylist(chunk), folder / f"part-{f:03d}.parquet")
    return str(folder)


def make_llama_sp_tokenizer(folder: str | Path) -> str:
    """A LLaMA-style SentencePiece tokenizer (BPE, byte fallback, split digits, BOS <s>=1, EOS
    </s>=2) trained here on a few sentences, saved the way LLaMA's hub tokenizer.json is: a
    normalizer that prepends "▁" to every encoded text and turns spaces into "▁"."""
    import io

    import sentencepiece as spm
    from tokenizers import decoders, normalizers, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = Path(folder)
    if (folder / "tokenizer.json").exists():
        return str(folder)
    text = [" ".join(WORDS), "Add 2 and 3. The answer is 5.", "### Response: USER: ASSISTANT: Hello there!"] * 20
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_writer=model, vocab_size=400, model_type="bpe", byte_fallback=True,
        split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, minloglevel=2)
    sp = folder / "sentencepiece"
    sp.mkdir(parents=True, exist_ok=True)
    (sp / "tokenizer.model").write_bytes(model.getvalue())
    (sp / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>",
                                                          "eos_token": "</s>", "unk_token": "<unk>"}))
    backend = AutoTokenizer.from_pretrained(sp).backend_tokenizer  # converted from SentencePiece
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", 1)])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)
    return str(folder)
