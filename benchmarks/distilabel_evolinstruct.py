"""distilabel's EvolInstruct on a local model with TransformersLLM: the other side of bench_vs_distilabel.py.

Runs inside its own venv (distilabel 1.5.3; see bench_vs_distilabel.py), imports nothing of evolray.

    python distilabel_evolinstruct.py MODEL_DIR SEEDS_JSONL ROUNDS MAX_NEW_TOKENS DTYPE THREADS

The EvolInstruct step on its own (no Pipeline: no process spawning or caching, the step's own
generation loop only), num_evolutions = ROUNDS, every evolution stored and answered (as the evolve
job answers every candidate), each request capped at MAX_NEW_TOKENS. Prints one JSON line: requests,
generated tokens (the outputs re-tokenised), how many reached the token cap, seconds for the model load and for the step.

The model folder was saved by transformers 5, whose tokenizer_config names a class transformers 4.48
does not have and keeps the chat template in its own file: the same files are linked into a temporary
folder with a tokenizer_config that 4.48 reads (the same tokenizer.json, the same chat template).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path


def readable_by_transformers_4(model: str, folder: str) -> str:
    for name in os.listdir(model):
        if name not in ("tokenizer_config.json", "chat_template.jinja"):
            os.symlink(os.path.join(model, name), os.path.join(folder, name))
    config = json.loads(Path(model, "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    template = Path(model, "chat_template.jinja")
    if template.exists():
        config["chat_template"] = template.read_text()
    Path(folder, "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def main() -> None:
    model, seeds, rounds, max_new_tokens, dtype, threads = sys.argv[1:7]
    model = readable_by_transformers_4(model, tempfile.mkdtemp())
    import torch

    torch.set_num_threads(int(threads))
    from distilabel.models import TransformersLLM
    from distilabel.steps.tasks import EvolInstruct
    from transformers import AutoTokenizer

    instructions = [json.loads(line)["instruction"] for line in Path(seeds).read_text().splitlines() if line.strip()]
    start = time.perf_counter()
    llm = TransformersLLM(model=model, device="cpu", torch_dtype=dtype,
                          generation_kwargs={"max_new_tokens": int(max_new_tokens), "temperature": 1.0,
                                             "top_p": 0.95, "do_sample": True})
    step = EvolInstruct(llm=llm, num_evolutions=int(rounds), store_evolutions=True, generate_answers=True,
                        input_batch_size=len(instructions))
    step.load()
    loaded = time.perf_counter()
    rows = next(step.process([{"instruction": text} for text in instructions]))
    done = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model)
    texts = [text for row in rows for key in ("evolved_instructions", "answers") for text in (row.get(key) or [])
             if isinstance(text, str)]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    generated = sum(lengths)
    print(json.dumps({"seeds": len(instructions), "requests": len(texts), "generated_tokens": generated,
                      "at_token_cap": sum(n >= int(max_new_tokens) - 1 for n in lengths),
                      "load_seconds": loaded - start, "step_seconds": done - loaded}))


if __name__ == "__main__":
    main()
