"""transformers backend: batched, left-padded generation with the tokenizer's chat template."""
from __future__ import annotations

from generation.base import Generation, SamplingParams
from generation.config import GenerationConfig

PLAIN_TEMPLATE = "{prompt}\n\n### Response:"


class HFGenerator:
    def __init__(self, cfg: GenerationConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from common.models import resolve_model

        self.cfg = cfg
        self.torch = torch
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        torch.manual_seed(cfg.seed)
        path = resolve_model(cfg.model)
        self.model_name = cfg.model
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        self.tokenizer.truncation_side = "left"  # keep the end of the prompt: the assistant header
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        self.device = "cuda" if use_cuda else "cpu"
        dtype = "auto" if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos if eos is not None else self.tokenizer.eos_token_id])
        self.use_chat = cfg.prompt_format == "chat" and bool(self.tokenizer.chat_template)

    def _render(self, prompt: str) -> str:
        if self.cfg.prompt_format == "raw":
            return prompt
        if self.use_chat:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                      tokenize=False, add_generation_prompt=True)
        return PLAIN_TEMPLATE.format(prompt=prompt)

    def count_tokens(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def generate(self, prompts: list[str], sampling: SamplingParams) -> list[Generation]:
        if not prompts:
            return []
        # Sort by length so each padded batch wastes little; answers go back in input order.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        size = self.cfg.batch_size
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            for i, gen in zip(chunk, self._generate_batch([prompts[i] for i in chunk], sampling)):
                results[i] = gen
        return results  # type: ignore[return-value]

    def _generate_batch(self, prompts: list[str], sampling: SamplingParams) -> list[Generation]:
        torch = self.torch
        enc = self.tokenizer([self._render(p) for p in prompts], return_tensors="pt", padding=True,
                             truncation=True, max_length=self.cfg.max_prompt_tokens, add_special_tokens=False)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        greedy = sampling.temperature == 0
        with torch.inference_mode():
            out = self.model.generate(
                **enc, do_sample=not greedy, max_new_tokens=sampling.max_tokens,
                temperature=None if greedy else sampling.temperature, top_p=None if greedy else sampling.top_p,
                top_k=None, pad_token_id=self.tokenizer.pad_token_id)
        new_tokens = out[:, enc["input_ids"].shape[1]:].tolist()
        prompt_lengths = enc["attention_mask"].sum(dim=1).tolist()
        return [self._to_generation(ids, n_prompt) for ids, n_prompt in zip(new_tokens, prompt_lengths)]

    def _to_generation(self, ids: list[int], prompt_tokens: int) -> Generation:
        end = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
        kept = ids if end is None else ids[:end]
        text = self.tokenizer.decode(kept, skip_special_tokens=True).strip()
        return Generation(text=text, prompt_tokens=int(prompt_tokens), completion_tokens=len(kept),
                          finished=end is not None)

