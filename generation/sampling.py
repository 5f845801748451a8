"""Temperature + nucleus (top-p) sampling for the hf backend, without sorting the vocabulary.

Why: transformers samples top-p by sorting every row's whole vocabulary (TopPLogitsWarper) and then
draws with `torch.multinomial`, which fills an exponential variate per vocabulary entry. For
SmolLM2's 49,152 tokens at batch 16 in bf16 on this CPU those two took 27 of a 72 ms decode step
(profiled). The nucleus is nearly always among the few hundred most likely tokens: `topk` finds
them (1 ms), the normaliser over the whole vocabulary is one `logsumexp`, and one uniform per row
picks the token by inverse CDF. A row whose nucleus is larger looks at `WIDER` times as many
candidates, and only one larger still is sorted in full (a sort of the vocabulary costs ~7x a
`topk` of 4,096 here; at T=1, 41% of SmolLM2's rows on the rewrite prompts have a nucleus over 256
tokens and 0.6% over 4,096, benchmarks/bench_hf_sampling.py; profiled, the full sorts were a tenth
of the evolve chains' time). So the result is exactly the distribution TopPLogitsWarper +
multinomial sample from.
"""
from __future__ import annotations

CANDIDATES = 256  # most likely tokens looked at first
WIDER = 16  # a row whose nucleus is larger looks at this many times as many, then at the whole vocabulary, sorted


def sample_tokens(logits, temperature: float, top_p: float, candidates: int = CANDIDATES, uniforms=None,
                  wider: int = WIDER):
    """One token id per row of `logits` (rows, vocab), from softmax(logits / temperature) kept to the
    row's nucleus: the most likely tokens, each kept while the tokens ranked before it hold less
    than `top_p` of the probability (the first is always kept), as transformers keeps them. Draws
    one uniform per row: `uniforms` (rows,) where given, else from torch's global generator. Rows are
    looked at through `candidates`, then `candidates` x `wider`, ... most likely tokens, until their
    nucleus fits (the whole vocabulary, sorted, at the end)."""
    import torch

    logits = logits.float() / temperature
    rows, vocab = logits.shape
    if uniforms is None:
        uniforms = torch.rand(rows, device=logits.device)
    if top_p >= 1.0:
        return _draw(torch.softmax(logits, dim=-1), torch.arange(vocab, device=logits.device).expand(rows, vocab), 1.0,
                     uniforms)
    log_total = torch.logsumexp(logits, dim=-1, keepdim=True)
    tokens = torch.empty(rows, dtype=torch.long, device=logits.device)
    todo, width = torch.arange(rows, device=logits.device), min(candidates, vocab)
    while len(todo):
        part, whole = (logits if len(todo) == rows else logits[todo]), width >= vocab
        # most likely first: the whole vocabulary sorted, or the `width` likeliest
        values, ids = part.sort(dim=-1, descending=True) if whole else part.topk(width, dim=-1)
        probs = (values - log_total[todo]).exp()
        fits = torch.ones_like(todo, dtype=torch.bool) if whole else probs.sum(dim=-1) >= top_p
        if fits.any():
            tokens[todo[fits]] = _draw(probs[fits], ids[fits], top_p, uniforms[todo[fits]])
        todo, width = todo[~fits], min(width * wider, vocab)
    return tokens


def _draw(probs, ids, top_p: float, uniforms):
    """probs: each row's probabilities, most likely first (ids: their token ids); one token per row
    from those ranked inside the nucleus, by inverse CDF at the row's uniform."""
    import torch

    if top_p < 1.0:
        probs = probs.masked_fill(probs.cumsum(dim=-1) - probs >= top_p, 0.0)
    cdf = probs.cumsum(dim=-1)
    targets = uniforms[:, None].to(cdf.dtype) * cdf[:, -1:]
    picked = torch.searchsorted(cdf, targets).clamp(max=probs.shape[-1] - 1)
    return ids.gather(-1, picked).squeeze(-1)


def nucleus_sampler(temperature: float, top_p: float):
    """A transformers LogitsProcessor that samples the next token itself and leaves only that token
    finite: run with `do_sample=False`, generate()'s argmax then takes it."""
    from transformers import LogitsProcessor

    class NucleusSampler(LogitsProcessor):
        def __call__(self, input_ids, scores):
            import torch

            tokens = sample_tokens(scores, temperature, top_p)
            return torch.full_like(scores, float("-inf")).scatter_(1, tokens[:, None], 0.0)

    return NucleusSampler()
