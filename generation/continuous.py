"""Continuous batching for the hf backend: rows join and leave a running batch between decode steps.

Why: a static batch (one `generate()` call) decodes until its longest row ends, and the chains'
next requests wait for it; stopping it early (batch refill) sends the unfinished rows back to be
prefilled again. Here the batch's KV cache is kept across steps: a finished row leaves it, a new
request is prefilled on its own (with others of like length) and joins it, left-padded to the
batch's length. Every prompt is prefilled once and no row decodes past its end, as vLLM schedules
(without paged memory: padding is trimmed when the rows that needed it leave). The cache lives in
buffers with spare row slots and columns (`SlotLayer`): a decode step, a joining row and a leaving
one write only their own part of it, where transformers' DynamicLayer copies all of it each time.

Runs on the hf backend's worker thread only; the event loop hands it requests and takes results
between steps (generation/hf.py). Needs a model whose cache is transformers' DynamicCache of plain
DynamicLayers (the LLaMA family); others batch statically (`generation.batching: static`).
"""
from __future__ import annotations

import functools
import random
from collections import OrderedDict
from dataclasses import dataclass, field

from generation.sampling import sample_tokens
from generation.types import SamplingParams

PREFILL_PADDING = 1.25  # a prefill group's padded tokens over its real ones, at most
SPARE_COLUMNS = 16  # spare columns left of the batch's cache when its buffers are made (the right: _spare)
PREFIX_BLOCK = 16  # tokens per block of a cached prompt prefix: a prompt reuses the whole blocks it shares


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


@dataclass
class Prefix:
    """A prompt's first tokens (whole blocks) and their KV per layer, (1, kv_heads, tokens, dim) each."""
    tokens: list[int]
    layers: list[tuple]


class PrefixCache:
    """The KV of prompt prefixes prefilled before, so that a prompt beginning like an earlier one (the
    six evolution templates share long openings; every chat prompt shares its header) prefills only the
    rest, as vLLM's prefix caching does. Keyed like vLLM's: by blocks of PREFIX_BLOCK tokens, each
    block's key the hash of the key before it and its own tokens, so a key names a whole prefix. One
    entry per prompt stored (its whole blocks but the last token: the one prefilled to sample from);
    the least recently used go once more than `max_tokens` are held. A hit is checked token for token."""

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self.entries: OrderedDict[int, Prefix] = OrderedDict()  # by the key of an entry's last block
        self.blocks: dict[int, tuple[int, int]] = {}  # block key -> (entry key, the prefix's tokens to it)
        self.tokens = 0  # held in entries
        self.prompt_tokens = self.reused_tokens = 0  # looked up, and found cached: the hit rate

    @staticmethod
    def block_keys(prompt: list[int]) -> list[int]:
        """One key per whole block of the prompt but its last token (which is always prefilled)."""
        keys, key = [], 0
        for end in range(PREFIX_BLOCK, len(prompt), PREFIX_BLOCK):
            key = hash((key, tuple(prompt[end - PREFIX_BLOCK:end])))
            keys.append(key)
        return keys

    def lookup(self, prompt: list[int]) -> tuple[Prefix, int] | None:
        """The entry holding the longest cached prefix of `prompt`, and that prefix's length."""
        found = None
        for key in self.block_keys(prompt):
            if key not in self.blocks:
                break
            found = self.blocks[key]
        self.prompt_tokens += len(prompt)
        if found is None:
            return None
        entry_key, length = found
        entry = self.entries[entry_key]
        if entry.tokens[:length] != prompt[:length]:  # two prefixes of one hash: never reuse the wrong one
            return None
        self.entries.move_to_end(entry_key)
        self.reused_tokens += length
        return entry, length

    def store(self, prompt: list[int], layers) -> None:
        """Keeps `prompt`'s whole blocks; `layers(length)` gives their KV per layer (called only when kept)."""
        keys = self.block_keys(prompt)
        length = len(keys) * PREFIX_BLOCK
        if not keys or keys[-1] in self.entries or length > self.max_tokens:
            return
        self.entries[keys[-1]] = Prefix(prompt[:length], layers(length))
        for i, key in enumerate(keys):
            self.blocks[key] = (keys[-1], (i + 1) * PREFIX_BLOCK)
        self.tokens += length
        while self.tokens > self.max_tokens:
            old_key, old = self.entries.popitem(last=False)
            self.tokens -= len(old.tokens)
            for key in self.block_keys(old.tokens + [0]):  # the blocks that still name this entry go with it
                if self.blocks.get(key, (None,))[0] == old_key:
                    del self.blocks[key]


@functools.cache
def _slot_layer_class():
    """`SlotLayer`, made on first use (transformers is imported lazily; its DynamicLayer is the base)."""
    from transformers.cache_utils import DynamicLayer

    class SlotLayer(DynamicLayer):
        """One layer's KV cache in buffers of (row slots, kv_heads, columns, dim) with room to spare; the
        running batch's rows attend over every column, the mask hiding the unused ones, so that `keys`
        and `values` (the first `rows` slots) stay contiguous: torch's bf16 CPU matmul copies a view
        that leaves out columns first (4x the time of a contiguous one, measured). A decode step writes
        its new column in place at `write_at`; the RunningBatch owns the geometry."""

        def __init__(self, keys, values):
            super().__init__()
            self.key_slots, self.value_slots = keys, values
            self.dtype, self.device = keys.dtype, keys.device
            self.is_initialized = True
            self.write_at = 0

        def bind(self, rows: int, write_at: int) -> None:
            self.keys, self.values, self.write_at = self.key_slots[:rows], self.value_slots[:rows], write_at

        def update(self, key_states, value_states, *args, **kwargs):
            self.keys[:, :, self.write_at:self.write_at + 1] = key_states
            self.values[:, :, self.write_at:self.write_at + 1] = value_states
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.key_slots.shape[2] - 1  # the step's own column is one of the buffer's

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.key_slots.shape[2], 0

    return SlotLayer


class RunningBatch:
    """The rows decoding together and their KV cache: `admit` prefills new rows into it, `step`
    decodes one token for every row; both return the rows that finished.

    The cache: per layer, buffers of row slots x columns (`SlotLayer`). Row i of the batch is slot i;
    columns `start`..`end` are the batch's, each row's tokens right-aligned to `end` (left padding
    masked); the columns around them are spare. A step writes column `end`; a joining row is written
    into the next free slot; a leaving row's slot is taken by the last row. Only running out of
    columns or slots, or spare columns outgrowing the batch's (every row attends over them, masked),
    copies the whole cache into new buffers (`_move`): DynamicLayer copied it at every step and join."""

    def __init__(self, model, eos_ids: set[int], pad_id: int, device: str, max_rows: int | None = None,
                 prefix_cache_tokens: int = 0):
        import torch
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        if any(type(layer) is not DynamicLayer for layer in DynamicCache(config=model.config).layers):
            raise ValueError(f"generation.batching=continuous needs a model whose cache is made of plain DynamicLayers "
                             f"(the LLaMA family); {type(model).__name__}'s is not: set generation.batching=static")
        self.torch, self.model, self.device, self.pad_id = torch, model, device, pad_id
        self.eos_ids = set(eos_ids)
        self.max_rows = max_rows  # the most rows the caller admits: the buffers' slots grow (doubling) to no more
        self.prefixes = PrefixCache(prefix_cache_tokens) if prefix_cache_tokens else None
        self.rows: list[Live] = []
        self.cache = None  # DynamicCache of SlotLayers
        self.start = self.end = 0  # the batch's columns in the buffers
        self.mask = None  # (rows, buffer columns): 1 where a row has a token in the cache, else 0
        self.next_tokens = None  # (rows,): each row's last sampled token, not yet in the cache
        self.copies = 0  # times the whole cache was copied into new buffers (`_move`)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def width(self) -> int:
        """The batch's columns: its longest row's tokens."""
        return self.end - self.start

    def admit(self, rows: list[Live]) -> list[Done]:
        """Prefills the new rows (in groups of like length, each row only what follows its longest
        cached prefix) and samples their first token; those not done at it join the batch."""
        found = [self.prefixes.lookup(row.prompt) if self.prefixes else None for row in rows]
        done: list[Done] = []
        for group in prefill_groups([len(row.prompt) - (hit[1] if hit else 0) for row, hit in zip(rows, found)]):
            done += self._prefill([rows[i] for i in group], [found[i] for i in group])
        return done

    def step(self) -> list[Done]:
        """One decode step for every row; drops the rows that ended."""
        positions = self._begin_step()
        with self.torch.inference_mode():
            logits = self.model(input_ids=self.next_tokens[:, None], attention_mask=self.mask, position_ids=positions,
                                past_key_values=self.cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        return self._end_step(logits)

    def fail_all(self) -> list[object]:
        """The handles of every row, and an empty batch: the engine failed under them."""
        handles = [row.handle for row in self.rows]
        self.rows, self.cache, self.mask, self.next_tokens = [], None, None, None
        self.start = self.end = 0
        return handles

    def drop(self, handles: set) -> None:
        """Drops rows nobody waits for any more (a cancelled request)."""
        keep = [i for i, row in enumerate(self.rows) if row.handle not in handles]
        if len(keep) < len(self.rows):
            self._keep(keep)

    # --- internals -------------------------------------------------------------------------------

    def _begin_step(self):
        """Readies this step's column (`end`) in the cache and the mask; each row's position."""
        if self.end == self.mask.shape[1]:
            self._move(self._slots(), self.width)
        self._bind()
        self.mask[:, self.end] = 1
        return self.mask.sum(dim=1, keepdim=True) - 1

    def _end_step(self, logits) -> list[Done]:
        """The step's logits, one row each: every row takes its token; those that ended leave."""
        self.end += 1
        return self._advance(self._sample(logits, self.rows))

    def _prefill(self, rows: list[Live], found: list[tuple[Prefix, int] | None]) -> list[Done]:
        """One forward over the rows' prompts: for each, what follows its cached prefix (`found`: the
        entry and the prefix's length, or None), left-padded; the prefixes' KV, left-padded too, in the
        cache before them. A row's columns: padding, its prefix, padding, the rest of its prompt."""
        from transformers import DynamicCache

        torch = self.torch
        cached = [hit[1] if hit else 0 for hit in found]
        rest = [row.prompt[n:] for row, n in zip(rows, cached)]
        width, before = max(len(tokens) for tokens in rest), max(cached)
        ids = torch.tensor([[self.pad_id] * (width - len(tokens)) + tokens for tokens in rest], device=self.device)
        mask = torch.tensor([[0] * (before - n) + [1] * n + [0] * (width - len(tokens)) + [1] * len(tokens)
                             for n, tokens in zip(cached, rest)], device=self.device)
        cache = DynamicCache(config=self.model.config)
        if before:
            held = next(hit[0] for hit in found if hit).layers  # per layer (keys, values), (1, kv_heads, tokens, dim)
            for index in range(len(held)):
                keys = held[index][0].new_zeros(len(rows), held[index][0].shape[1], before, held[index][0].shape[3])
                values = torch.zeros_like(keys)
                for i, (hit, n) in enumerate(zip(found, cached)):
                    if hit:
                        keys[i, :, before - n:] = hit[0].layers[index][0][0, :, :n]
                        values[i, :, before - n:] = hit[0].layers[index][1][0, :, :n]
                cache.update(keys, values, index)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, before:]
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        if self.prefixes:
            for i, row in enumerate(rows):  # the row's own columns, in order: its prefix, then the rest
                columns = torch.nonzero(mask[i]).flatten()
                self.prefixes.store(row.prompt, lambda length: [
                    (layer.keys[i:i + 1, :, columns[:length]], layer.values[i:i + 1, :, columns[:length]])
                    for layer in cache.layers])
        tokens = self._sample(logits, rows)
        self._join(rows, cache, mask)
        return self._advance(tokens, first=len(self.rows) - len(rows))

    def _join(self, rows: list[Live], cache, mask) -> None:
        """Writes prefilled rows and their cache into the next free slots, right-aligned to `end`; a
        prompt longer than the batch widens it into the spare columns on its left."""
        torch, count, joined = self.torch, len(self.rows), mask.shape[1]
        if self.cache is None:
            self.cache = self._allocate(cache.layers[0].keys, len(rows), SPARE_COLUMNS + joined + _spare(joined))
            self.start = self.end = SPARE_COLUMNS + joined
            self.mask, self.next_tokens = mask.new_zeros(0, self.cache.layers[0].key_slots.shape[2]), mask.new_zeros(0)
        needed = count + len(rows)
        if needed > self._slots() or self.end - joined < 0:
            grown = max(needed, min(2 * self._slots(), self.max_rows or 2 * self._slots()))
            self._move(grown if needed > self._slots() else self._slots(), max(self.width, joined))
        self.start = min(self.start, self.end - joined)
        for mine, new in zip(self.cache.layers, cache.layers):
            mine.key_slots[count:needed, :, self.end - joined:self.end] = new.keys
            mine.value_slots[count:needed, :, self.end - joined:self.end] = new.values
        placed = mask.new_zeros(len(rows), self.mask.shape[1])
        placed[:, self.end - joined:self.end] = mask
        self.mask = torch.cat([self.mask, placed])
        self.next_tokens = torch.cat([self.next_tokens, self.next_tokens.new_zeros(len(rows))])
        self.rows += rows
        self._bind()

    def _sample(self, logits, rows: list[Live]):
        """One token per row: argmax where greedy, else temperature + top-p with the row's own uniform."""
        torch = self.torch
        tokens = logits.float().argmax(dim=-1)  # torch's bf16 argmax is 2x slower than converting first (CPU)
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
        """Only these rows stay: a kept row past the kept count moves into a freed slot (its cache
        copied, not the batch's); the leading columns that are padding for all of them become spare."""
        torch = self.torch
        if not keep:
            self.fail_all()
            return
        kept = set(keep)
        movers = [i for i in keep if i >= len(keep)]
        order = [i if i in kept else movers.pop() for i in range(len(keep))]
        moved = [(to, i) for to, i in enumerate(order) if to != i]
        if moved:
            to = torch.tensor([t for t, _ in moved], device=self.device)
            source = torch.tensor([i for _, i in moved], device=self.device)
            for layer in self.cache.layers:
                for slots in (layer.key_slots, layer.value_slots):
                    slots[to, :, self.start:self.end] = slots[source, :, self.start:self.end]
        index = torch.tensor(order, device=self.device)
        self.rows = [self.rows[i] for i in order]
        self.mask, self.next_tokens = self.mask[index], self.next_tokens[index]
        self.start += int(self.mask[:, self.start:self.end].any(dim=0).int().argmax())  # first column a row uses
        if self.mask.shape[1] - self.width > 3 * _spare(self.width):  # rows attend over too many spare columns
            self._move(self._slots(), self.width)
        self._bind()

    def _bind(self) -> None:
        """Each layer's view: the batch's slots, and the column the next step writes."""
        for layer in self.cache.layers:
            layer.bind(len(self.rows), self.end)

    def _slots(self) -> int:
        return self.cache.layers[0].key_slots.shape[0]

    def _allocate(self, like, slots: int, columns: int):
        """A DynamicCache of SlotLayers with buffers of `slots` x `columns`, shaped like `like` otherwise.
        Zeros: a masked column must hold finite numbers (its probability is 0, times its value)."""
        from transformers import DynamicCache

        torch, shape = self.torch, (slots, like.shape[1], columns, like.shape[3])
        cache = DynamicCache(config=self.model.config)
        cache.layers = [_slot_layer_class()(torch.zeros(shape, dtype=like.dtype, device=like.device),
                                            torch.zeros(shape, dtype=like.dtype, device=like.device))
                        for _ in cache.layers]
        return cache

    def _move(self, slots: int, width: int) -> None:
        """New buffers of `slots` slots with room for `width` columns and spare ones on each side, the
        batch copied in, right-aligned to the same place: the one copy of the whole cache."""
        count, old, left = len(self.rows), self.cache, SPARE_COLUMNS + width - self.width
        self.cache = self._allocate(old.layers[0].key_slots, slots, SPARE_COLUMNS + width + _spare(width))
        for mine, theirs in zip(self.cache.layers, old.layers):
            mine.key_slots[:count, :, left:left + self.width] = theirs.key_slots[:count, :, self.start:self.end]
            mine.value_slots[:count, :, left:left + self.width] = theirs.value_slots[:count, :, self.start:self.end]
        mask = self.mask.new_zeros(count, self.cache.layers[0].key_slots.shape[2])
        mask[:, left:left + self.width] = self.mask[:, self.start:self.end]
        self.mask, self.start, self.end = mask, left, left + self.width
        self.copies += 1


# What a second tier costs a step, in row-columns of attention (one row attending over one column): a
# step over two tiers took ~5 ms more than over one (its small calls per layer), and a row-column ~3.8 us
# (SmolLM2-135M, bf16, one thread: bench_hf_cache_tiers.py --engine)
TIER_OPENING = 1500


def choose_tier(tiers: list[tuple[int, int]], length: int, opening: int = TIER_OPENING) -> int:
    """The tier, of (rows, width) each, that a row of `length` cached tokens joins: the one whose rows x
    width (what a decode step's attention reads) grows least; an empty tier costs `opening` more. Ties:
    the first."""
    def growth(rows: int, width: int) -> int:
        return length + opening if not rows else (rows + 1) * max(width, length) - rows * width

    return min(range(len(tiers)), key=lambda i: growth(*tiers[i]))


class TieredBatch:
    """A running batch whose rows sit in up to `tiers` RunningBatches of their own widths, decoded in one
    forward pass: a row attends over its tier's columns, not over the longest row's of the whole batch.

    Why: every row of a RunningBatch attends over the batch's width, its longest row's tokens, and on
    CPU a decode step's attention is bound by reading that KV cache. A few seeds with a long input (a
    table, a paragraph) make rewrite prompts several times longer than the rest; with one of them in
    the batch, the short rows read its width too (30 rows, 29 of 120-300 tokens and one of 730: two tiers'
    step 0.82-0.85x one cache's, bench_hf_cache_tiers.py --engine). Here such a row goes to a tier of its own (`choose_tier`),
    and a step with rows in several tiers hands the attention each tier's cache (`Tiered`). Needs the
    grouped decode attention (generation/attention.py); with any other, one tier."""

    def __init__(self, model, eos_ids: set[int], pad_id: int, device: str, max_rows: int | None = None,
                 prefix_cache_tokens: int = 0, tiers: int = 1):
        self.tiers = [RunningBatch(model, eos_ids, pad_id, device, max_rows) for _ in range(max(tiers, 1))]
        self.prefixes = PrefixCache(prefix_cache_tokens) if prefix_cache_tokens else None
        for tier in self.tiers:
            tier.prefixes = self.prefixes  # one cache of prompt prefixes, whichever tier a row joins
        self.model, self.torch = model, self.tiers[0].torch
        self.joint_steps = 0  # decode steps over rows in more than one tier

    def __len__(self) -> int:
        return sum(len(tier) for tier in self.tiers)

    @property
    def rows(self) -> list[Live]:
        return [row for tier in self.tiers for row in tier.rows]

    @property
    def empty(self) -> bool:
        """No row and no cache left in any tier."""
        return all(tier.cache is None and not len(tier) for tier in self.tiers)

    def admit(self, rows: list[Live]) -> list[Done]:
        shapes = [(len(tier), tier.width) for tier in self.tiers]  # an empty tier's width is 0
        joining: list[list[Live]] = [[] for _ in self.tiers]
        for row in rows:
            i = choose_tier(shapes, len(row.prompt))
            joining[i].append(row)
            shapes[i] = (shapes[i][0] + 1, max(shapes[i][1], len(row.prompt)))
        return [done for tier, group in zip(self.tiers, joining) if group for done in tier.admit(group)]

    def step(self) -> list[Done]:
        """One decode step for every row of every tier, in one forward pass."""
        active = [tier for tier in self.tiers if len(tier)]
        if len(active) == 1:
            return active[0].step()
        torch = self.torch
        positions = torch.cat([tier._begin_step() for tier in active])
        counts = [len(tier) for tier in active]
        placeholder = positions.new_ones(sum(counts), 1, 1, 1, dtype=torch.bool)  # 4D: transformers builds no mask
        with torch.inference_mode():
            logits = self.model(input_ids=torch.cat([tier.next_tokens for tier in active])[:, None],
                                attention_mask=placeholder, position_ids=positions,
                                past_key_values=_TierCache(active), use_cache=True, logits_to_keep=1).logits[:, -1]
        self.joint_steps += 1
        done, first = [], 0
        for tier, count in zip(active, counts):
            done += tier._end_step(logits[first:first + count])
            first += count
        return done

    def fail_all(self) -> list[object]:
        return [handle for tier in self.tiers for handle in tier.fail_all()]

    def drop(self, handles: set) -> None:
        for tier in self.tiers:
            tier.drop(handles)


class _TierCache:
    """The cache of a step over several tiers: each layer's new keys and values are written into their
    tiers' buffers, and the attention gets each tier's cache and mask (`Tiered`)."""

    def __init__(self, tiers: list[RunningBatch]):
        self.tiers = tiers
        self.masks = [tier.mask[:, None, None, :].bool() for tier in tiers]

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        from generation.attention import Tiered

        keys, values, first = [], [], 0
        for tier in self.tiers:
            count = len(tier)
            k, v = tier.cache.layers[layer_idx].update(key_states[first:first + count],
                                                       value_states[first:first + count])
            keys.append(k)
            values.append(v)
            first += count
        return Tiered(keys, self.masks), Tiered(values, self.masks)


def _spare(width: int) -> int:
    """Spare columns right of a batch `width` columns wide when its buffers are made, for the steps to
    come: a step that finds none left copies the cache, and until then every row attends over them
    (masked). Few on the left: a prompt longer than the batch is rarer than a step."""
    return SPARE_COLUMNS + width // 8
