"""model.fast_generate against HF generate (model.generate) on the shipped tiny model: greedy gives the same tokens,
sampling draws from the same per-position distributions (checked against HF's own logits and warpers), and the
sampler's draws follow those distributions (a chi-square test on a fixed generator). All deterministic."""

import math

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

import data
import model as modeling


@pytest.fixture(scope="module")
def tiny():
    # One thread: the tiny model's ops are too small to split, and on a loaded machine two threads wait on each
    # other at every op (measured 10x slower at load average 15); the thread count is restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield modeling.load_tokenizer("tiny"), modeling.load_model("tiny")
    torch.set_num_threads(threads)


def prompts_of_all_domains(k: int) -> list[list[dict]]:
    """k eval prompts per domain: different lengths, so the batch is left-padded."""
    return [r["prompt"] for d in data.DOMAINS for r in data.embedded(d, "eval", n=k)]


@pytest.mark.parametrize("max_new_tokens", [64, 6])   # 6: most completions are cut, so truncation is exercised
def test_greedy_equals_hf_generate(tiny, max_new_tokens):
    tok, net = tiny
    prompts = prompts_of_all_domains(2)
    hf = modeling.generate(net, tok, prompts, n=2, max_new_tokens=max_new_tokens, temperature=0, seed=0)
    fast = modeling.fast_generate(net, tok, prompts, n=2, max_new_tokens=max_new_tokens, temperature=0, seed=0)
    assert [s["prompt_ids"] for s in fast] == [s["prompt_ids"] for s in hf]
    assert [s["completion_ids"] for s in fast] == [s["completion_ids"] for s in hf]
    assert [s["truncated"] for s in fast] == [s["truncated"] for s in hf]
    assert [s["text"] for s in fast] == [s["text"] for s in hf]
    truncated = sum(s["truncated"] for s in fast)
    assert (0 < truncated < len(fast)) if max_new_tokens == 6 else truncated < len(fast)


def test_stops_lengths_and_seeds(tiny):
    tok, net = tiny
    stops = set(modeling.stop_token_ids(tok, net.generation_config))
    prompts = prompts_of_all_domains(2)
    state = torch.random.get_rng_state()
    out = modeling.fast_generate(net, tok, prompts, n=3, max_new_tokens=20, temperature=1.0, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)   # the seed's stream is its own
    assert out == modeling.fast_generate(net, tok, prompts, n=3, max_new_tokens=20, temperature=1.0, seed=3)
    assert out != modeling.fast_generate(net, tok, prompts, n=3, max_new_tokens=20, temperature=1.0, seed=4)
    for s in out:
        c = s["completion_ids"]
        assert 1 <= len(c) <= 20 and not stops & set(c[:-1])   # nothing after the first stop id
        assert s["truncated"] == (c[-1] not in stops) and (not s["truncated"] or len(c) == 20)
        assert s["text"] == tok.decode(c, skip_special_tokens=True)
    assert any(not s["truncated"] for s in out) and any(s["truncated"] for s in out)
    net.train()   # the model's mode is restored afterwards
    modeling.fast_generate(net, tok, prompts[:1], n=1, max_new_tokens=2, seed=0)
    assert net.training
    net.eval()


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_sampling_distributions_are_hf_logits(tiny, monkeypatch, temperature, top_p):
    """Every distribution fast_generate samples from equals the one HF's model gives for that sequence (one unpadded
    full forward of prompt + completion, whose causal logits at each position see only the tokens before it),
    under HF's temperature and top-p warpers."""
    tok, net = tiny
    calls = []
    sample = modeling.sample_next

    def recording(logits, t, p):
        calls.append(logits.clone())
        return sample(logits, t, p)

    monkeypatch.setattr(modeling, "sample_next", recording)
    prompts = prompts_of_all_domains(1)
    out = modeling.fast_generate(net, tok, prompts, n=2, max_new_tokens=24, temperature=temperature, top_p=top_p,
                                 seed=1)
    warp = [TemperatureLogitsWarper(temperature)] + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])
    refs = []   # per row: (len(completion), V) HF probabilities at each completion position
    for s in out:
        ids = torch.tensor([s["prompt_ids"] + s["completion_ids"]])
        with torch.no_grad():
            logits = net(input_ids=ids).logits[0, len(s["prompt_ids"]) - 1: ids.shape[1] - 1].float()
        for w in warp:
            logits = w(ids, logits)
        refs.append(logits.softmax(-1))
    checked = 0
    for t, logits in enumerate(calls):
        live = [i for i, s in enumerate(out) if len(s["completion_ids"]) > t]   # rows still in the batch, in order
        assert len(live) == logits.shape[0]
        ours = modeling.next_token_probs(logits, temperature, top_p)
        for j, i in enumerate(live):
            assert torch.allclose(ours[j], refs[i][t], atol=1e-5), (t, i)
            assert ours[j, out[i]["completion_ids"][t]] > 0   # the drawn token is inside the nucleus
            checked += 1
    assert checked == sum(len(s["completion_ids"]) for s in out)


def test_sampler_draws_follow_the_probabilities(tiny):
    """Chi-square of 5,000 draws of sample_next per row (fixed generator seed) against next_token_probs, at
    temperature 2 and top_p 0.95, on the tiny model's widest nucleus in each of 4 greedy completions (the SFT'd
    model is so sure of itself that at temperature 1 most nuclei hold 1-5 tokens). The threshold is generous (p-value 1e-6) and the seed fixed, so the test cannot fail by
    chance; a wrong sampler (e.g. one ignoring the temperature or the nucleus) fails it by far."""
    tok, net = tiny
    T, top_p, draws = 2.0, 0.95, 5_000
    picked = []
    for s in modeling.generate(net, tok, prompts_of_all_domains(1), n=1, max_new_tokens=48, temperature=0):
        ids = torch.tensor([s["prompt_ids"] + s["completion_ids"]])
        with torch.no_grad():
            logits = net(input_ids=ids).logits[0, len(s["prompt_ids"]) - 1: -1].float()   # completion positions
        picked.append(logits[int((modeling.next_token_probs(logits, T, top_p) > 0).sum(-1).argmax())])
    logits = torch.stack(picked)                                          # (4, V)
    torch.manual_seed(0)
    tokens = modeling.sample_next(logits.repeat(draws, 1), T, top_p).view(draws, -1)   # (draws, 4), one call
    probs = modeling.next_token_probs(logits, T, top_p)
    for row in range(logits.shape[0]):
        counts = torch.bincount(tokens[:, row], minlength=probs.shape[1]).double()
        expected = probs[row].double() * draws
        assert counts[expected == 0].sum() == 0   # nothing outside the nucleus
        big = expected >= 5
        obs = torch.cat([counts[big], counts[~big].sum()[None]])
        exp = torch.cat([expected[big], expected[~big].sum()[None]])
        keep = exp > 0
        chi2 = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
        dof = int(keep.sum()) - 1
        assert dof >= 3, dof   # enough categories for the test to mean something
        # Wilson-Hilferty: (chi2 / dof)^(1/3) is about normal, mean 1 - 2/(9 dof), sd sqrt(2/(9 dof)); z > 4.75
        # is a p-value below 1e-6
        z = ((chi2 / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
        assert z < 4.75, (row, chi2, dof)
    # and the same draws fail against the untempered distribution: the test can tell
    wrong = modeling.next_token_probs(logits, 1.0, 1.0)[0].double() * draws
    counts = torch.bincount(tokens[:, 0], minlength=probs.shape[1]).double()
    big = wrong >= 5
    assert float(((counts[big] - wrong[big]) ** 2 / wrong[big]).sum()) > 10 * int(big.sum())
