"""The hf backend's sampler (generation/sampling.py) draws from the distribution transformers'
temperature + TopPLogitsWarper + multinomial draw from, without sorting the vocabulary."""
import pytest
import torch

from generation.sampling import nucleus_sampler, sample_tokens

DRAWS = 40_000


def transformers_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.softmax(scores, dim=-1)


def frequencies(logits_row: torch.Tensor, temperature: float, top_p: float, candidates: int) -> torch.Tensor:
    torch.manual_seed(0)
    tokens = sample_tokens(logits_row.expand(DRAWS, -1), temperature, top_p, candidates)
    return torch.bincount(tokens, minlength=logits_row.shape[-1]).float() / DRAWS


@pytest.mark.parametrize("temperature,top_p,candidates", [
    (1.0, 0.95, 8),   # a sharp row's nucleus fits the 8 candidates; the flat row's does not (sorted in full)
    (0.7, 0.8, 8),
    (1.0, 1.0, 8),    # no nucleus: the whole vocabulary
    (1.0, 0.95, 64),  # candidates beyond the vocabulary
])
def test_draws_follow_the_nucleus_distribution_transformers_samples(temperature, top_p, candidates):
    torch.manual_seed(1)
    sharp = torch.randn(50) * 4
    flat = torch.randn(50) * 0.3
    for row in (sharp, flat):
        expected = transformers_probs(row[None], temperature, top_p)[0]
        seen = frequencies(row, temperature, top_p, candidates)
        assert seen[expected == 0].sum() == 0  # nothing outside the nucleus, ever
        assert (seen[expected > 0.01] > 0).all()
        torch.testing.assert_close(seen, expected, atol=0.012, rtol=0)
    # the flat row's nucleus really is wider than the candidates (the full-sort path was taken)
    assert top_p == 1.0 or (transformers_probs(flat[None], temperature, top_p)[0] > 0).sum() > 8


def test_rows_of_one_batch_keep_their_own_distributions():
    """A batch mixing rows whose nucleus fits the candidates with rows that do not: each row's tokens
    come from its own nucleus (the wide rows are drawn apart and written back in place)."""
    torch.manual_seed(2)
    rows = torch.stack([torch.randn(40) * 5, torch.randn(40) * 0.2, torch.randn(40) * 5, torch.randn(40) * 0.2])
    torch.manual_seed(0)
    tokens = sample_tokens(rows.repeat(DRAWS // 4, 1), 1.0, 0.9, candidates=4).view(-1, 4)
    for i in range(4):
        expected = transformers_probs(rows[i:i + 1], 1.0, 0.9)[0]
        seen = torch.bincount(tokens[:, i], minlength=40).float() / len(tokens)
        assert seen[expected == 0].sum() == 0
        torch.testing.assert_close(seen, expected, atol=0.03, rtol=0)


def test_the_same_seed_draws_the_same_tokens_and_the_processor_leaves_one_finite_score():
    logits = torch.randn(6, 300)
    torch.manual_seed(5)
    first = sample_tokens(logits, 1.0, 0.95)
    torch.manual_seed(5)
    assert torch.equal(first, sample_tokens(logits, 1.0, 0.95))
    torch.manual_seed(5)
    scores = nucleus_sampler(1.0, 0.95)(None, logits.clone())
    assert torch.equal(scores.argmax(dim=-1), first)
    assert (torch.isfinite(scores).sum(dim=-1) == 1).all()


def nucleus_size(row: torch.Tensor, top_p: float) -> int:
    return int((transformers_probs(row[None], 1.0, top_p)[0] > 0).sum())


def test_a_nucleus_wider_than_the_candidates_is_looked_for_among_wider_candidates_before_a_full_sort():
    """Three rows, three paths: a nucleus within the 10 candidates, one within 10 x 8 = 80 (a second
    topk), and one wider still (the sorted vocabulary); each row's draws follow its own nucleus."""
    torch.manual_seed(3)
    sharp, medium, flat = torch.randn(300) * 6, torch.randn(300) * 2.5, torch.randn(300) * 0.3
    assert nucleus_size(sharp, 0.9) <= 10 < nucleus_size(medium, 0.9) <= 80 < nucleus_size(flat, 0.9)
    rows = torch.stack([sharp, medium, flat])
    torch.manual_seed(0)
    tokens = sample_tokens(rows.repeat(DRAWS // 3, 1), 1.0, 0.9, candidates=10, wider=8).view(-1, 3)
    for i in range(3):
        expected = transformers_probs(rows[i:i + 1], 1.0, 0.9)[0]
        seen = torch.bincount(tokens[:, i], minlength=300).float() / len(tokens)
        assert seen[expected == 0].sum() == 0  # nothing outside the nucleus, ever
        torch.testing.assert_close(seen, expected, atol=0.03, rtol=0)
    # the same uniforms draw the same tokens whatever the tiers: a row's tier only narrows where it looks
    uniforms = torch.rand(3)
    assert torch.equal(sample_tokens(rows, 1.0, 0.9, candidates=10, wider=8, uniforms=uniforms),
                       sample_tokens(rows, 1.0, 0.9, candidates=300, uniforms=uniforms))
