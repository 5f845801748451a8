"""Continuous batching for the hf backend: rows join and leave a running batch between decode steps.

Why: a static batch (one `generate()` call) decodes until its longest row ends, and the chains'
next requests wait for it; stopping it early (batch refill) sends the unfinished rows back to be
prefilled again. Here the batch's KV cache is kept across steps: a finished row is dropped from it,
a new request is prefilled on its own (with others of like length) and its cache is joined to the
batch's, left-padded to the batch's length. Every prompt is prefilled once and no row decodes past
its end, as vLLM schedules (without paged memory: padding is trimmed when the rows that needed it leave).

Runs on the hf backend's worker thread only; the event loop hands it requests and takes results
between steps (generation/hf.py). Needs a model whose cache is transformers' DynamicCache of plain
DynamicLayers (the LLaMA family); others batch statically (`generation.batching: static`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from generation.sampling import sample_tokens
from generation.types import SamplingParams

PREFILL_PADDING = 1.25  # a prefill group's padded tokens over its real ones, at most


@dataclass
class Live:
    """One request in the running batch: what it asked, what it generated, its own random stream."""
    handle: object  # the caller's (its future): returned with the result, never touched here
    prompt: list[int]
    sampling: SamplingParams
    rng: random.Random
    generated: list[int] = field(default_factory=list)

    @property
    def limit(self) -> int:
        return self.sampling.max_tokens


@dataclass
class Done:
    """A finished row: its handle, its tokens (without the EOS) and whether it ended at its EOS."""
    handle: object
    tokens: list[int]
    prompt_tokens: int
    finished: bool


def prefill_groups(lengths: list[int], padding: float = PREFILL_PADDING) -> list[list[int]]:
    """Indices of new rows in groups prefilled together: sorted by length, a group grows while its
    padded size stays within `padding` x its real tokens (short answer prompts padded to a long
    rewrite prompt's length would cost more prefill than they decode)."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        group = groups[-1] if groups else None
        if group is not None and (len(group) + 1) * lengths[i] <= padding * (sum(lengths[j] for j in group) + lengths[i]):
            group.append(i)
        else:
            groups.append([i])
    return groups


def row_rng(sampling: SamplingParams) -> random.Random:
    """A request's own random stream: with a sampling seed the same draws whatever it is batched with
    (a redone chain asks with the same seeds), else one from torch's global generator."""
    import torch

    seed = sampling.seed if sampling.seed is not None else int(torch.randint(0, 2 ** 62, (1,)))
    return random.Random(seed)


class RunningBatch:
    """The rows decoding together and their KV cache: `admit` prefills new rows into it, `step`
    decodes one token for every row; both return the rows that finished."""

    def __init__(self, model, eos_ids: set[int], pad_id: int, device: str):
        import torch
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        if any(type(layer) is not DynamicLayer for layer in DynamicCache(config=model.config).layers):
            raise ValueError(f"generation.batching=continuous needs a model whose cache is made of plain DynamicLayers "
                             f"(the LLaMA family); {type(model).__name__}'s is not: set generation.batching=static")
        self.torch, self.model, self.device, self.pad_id = torch, model, device, pad_id
        self.eos_ids = set(eos_ids)
        self.rows: list[Live] = []
        self.cache = None  # DynamicCache over the rows, (rows, kv_heads, width, dim) per layer
        self.mask = None  # (rows, width): 1 where a row has a token in the cache, 0 for its left padding
        self.next_tokens = None  # (rows,): each row's last sampled token, not yet in the cache

    def __len__(self) -> int:
        return len(self.rows)

    def admit(self, rows: list[Live]) -> list[Done]:
        """Prefills the new rows (in groups of like length) and samples their first token; those not
        done at it join the batch."""
        done: list[Done] = []
        for group in prefill_groups([len(row.prompt) for row in rows]):
            done += self._prefill([rows[i] for i in group])
        return done

    def step(self) -> list[Done]:
        """One decode step for every row; drops the rows that ended."""
        torch = self.torch
        mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        positions = mask.sum(dim=1, keepdim=True) - 1
        with torch.inference_mode():
            logits = self.model(input_ids=self.next_tokens[:, None], attention_mask=mask, position_ids=positions,
                                past_key_values=self.cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        self.mask = mask
        tokens = self._sample(logits, self.rows)
        return self._advance(tokens)

    def fail_all(self) -> list[object]:
        """The handles of every row, and an empty batch: the engine failed under them."""
        handles = [row.handle for row in self.rows]
        self.rows, self.cache, self.mask, self.next_tokens = [], None, None, None
        return handles

    def drop(self, handles: set) -> None:
        """Drops rows nobody waits for any more (a cancelled request)."""
        keep = [i for i, row in enumerate(self.rows) if row.handle not in handles]
        if len(keep) < len(self.rows):
            self._keep(keep)

    # --- internals -------------------------------------------------------------------------------

    def _prefill(self, rows: list[Live]) -> list[Done]:
        from transformers import DynamicCache

        torch = self.torch
        width = max(len(row.prompt) for row in rows)
        ids = torch.tensor([[self.pad_id] * (width - len(row.prompt)) + row.prompt for row in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(row.prompt)) + [1] * len(row.prompt) for row in rows], device=self.device)
        cache = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                                past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        tokens = self._sample(logits, rows)
        self._join(rows, cache, mask)
        return self._advance(tokens, first=len(self.rows) - len(rows))

    def _join(self, rows: list[Live], cache, mask) -> None:
        """Appends prefilled rows and their cache to the batch, left-padding the shorter side."""
        torch = self.torch
        if not self.rows:
            self.rows, self.cache, self.mask = list(rows), cache, mask
            self.next_tokens = torch.zeros(len(rows), dtype=torch.long, device=self.device)
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for mine, new in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, width), _left_pad(new.keys, width)])
            mine.values = torch.cat([_left_pad(mine.values, width), _left_pad(new.values, width)])
        self.mask = torch.cat([_left_pad(self.mask, width), _left_pad(mask, width)])
        self.next_tokens = torch.cat([self.next_tokens, self.next_tokens.new_zeros(len(rows))])
        self.rows += rows

    def _sample(self, logits, rows: list[Live]):
        """One token per row: argmax where greedy, else temperature + top-p with the row's own uniform."""
        torch = self.torch
        tokens = logits.argmax(dim=-1)
        kinds: dict[tuple, list[int]] = {}
        for i, row in enumerate(rows):
            if row.sampling.temperature > 0:
                kinds.setdefault((row.sampling.temperature, row.sampling.top_p), []).append(i)
        for (temperature, top_p), index in kinds.items():
            uniforms = torch.tensor([rows[i].rng.random() for i in index], device=logits.device)
            at = torch.tensor(index, device=logits.device)
            tokens[at] = sample_tokens(logits[at], temperature, top_p, uniforms=uniforms)
        return tokens

    def _advance(self, tokens, first: int = 0) -> list[Done]:
        """Rows first.. of the batch take their sampled token; those at their EOS or limit leave."""
        done, keep = [], list(range(first))
        for offset, token in enumerate(tokens.tolist()):
            i = first + offset
            row = self.rows[i]
            if token in self.eos_ids:
                done.append(Done(row.handle, row.generated, len(row.prompt), True))
                continue
            row.generated.append(token)
            if len(row.generated) >= row.limit:
                done.append(Done(row.handle, row.generated, len(row.prompt), False))
                continue
            keep.append(i)
        self.next_tokens[first:] = tokens
        if len(keep) < len(self.rows):
            self._keep(keep)
        return done

    def _keep(self, keep: list[int]) -> None:
        """Only these rows stay; the cache's leading columns that are padding for all of them go."""
        torch = self.torch
        if not keep:
            self.fail_all()
            return
        index = torch.tensor(keep, device=self.device)
        self.rows = [self.rows[i] for i in keep]
        self.mask, self.next_tokens = self.mask[index], self.next_tokens[index]
        start = int(self.mask.any(dim=0).int().argmax())  # the first column some row still uses
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, start:], layer.values[index, :, start:]


def _left_pad(tensor, width: int):
    """Zeros on the left of the sequence axis (a mask's last, a cache's third) up to `width`."""
    import torch.nn.functional as F

    missing = width - tensor.shape[-1 if tensor.dim() == 2 else -2]
    if missing == 0:
        return tensor
    return F.pad(tensor, (missing, 0)) if tensor.dim() == 2 else F.pad(tensor, (0, 0, missing, 0))
