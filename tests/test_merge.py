"""merge.py against independent plain-torch references of every method's formula, on tiny random HF models.

The references below work on whole-model state dicts loaded with safetensors.torch.load_file, not on merge.py's
streaming reader, and are written from the formulas in merge.py's docstrings.
"""

import glob
import hashlib
import json
import os
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import merge
from merge import Config, check_config, cli, main

N_EXPERTS = 3


def tiny_config(tie=True):
    from transformers import Qwen3Config

    return Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=tie,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0)


def save_tiny_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i + 4 for i in range(60)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(path)


def save_model(state, path, tie=True, **kw):
    from transformers import Qwen3ForCausalLM

    model = Qwen3ForCausalLM(tiny_config(tie))
    model.load_state_dict(state, strict=False)
    model.save_pretrained(path, **kw)


def load_sd(path):
    """All tensors of a checkpoint directory as fp32, read with safetensors' own loader."""
    sd = {}
    for f in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        sd.update(load_file(f))
    return {k: v.float() for k, v in sd.items()}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A base and N_EXPERTS experts = base + known random deltas; expert 0 and the base also saved sharded."""
    from transformers import Qwen3ForCausalLM

    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    base_model = Qwen3ForCausalLM(tiny_config())
    base_sd = {k: v.detach().clone() for k, v in base_model.state_dict().items()}
    base_model.save_pretrained(root / "base")
    base_model.save_pretrained(root / "base_sharded", max_shard_size="20KB")
    save_tiny_tokenizer(root / "base")
    experts = []
    for i in range(N_EXPERTS):
        g = torch.Generator().manual_seed(100 + i)
        # Different scales per tensor and model so magnitude rankings mix across tensors.
        sd = {k: v + (0.01 + 0.004 * i) * torch.randn(v.shape, generator=g) * (1 + (j % 3)) for j, (k, v) in
              enumerate(base_sd.items())}
        save_model(sd, root / f"e{i}")
        experts.append(str(root / f"e{i}"))
    save_model(load_sd(experts[0]), root / "e0_sharded", max_shard_size="20KB")
    return {"root": root, "base": str(root / "base"), "base_sharded": str(root / "base_sharded"),
            "experts": experts, "e0_sharded": str(root / "e0_sharded")}


def run(ckpts, tmp_path, **kw):
    kw.setdefault("base", ckpts["base"])
    kw.setdefault("models", ckpts["experts"])
    out = str(tmp_path / kw.pop("name", "out"))
    report = main(Config(out=out, **kw))
    return out, report


# ---------------------------------------------------------------------------------------------------------------------
# Independent references (whole model at once)


def deltas_of(base, experts):
    return [{k: e[k] - base[k] for k in base} for e in experts]


def seed_for(seed, i, name, salt):
    return int.from_bytes(hashlib.sha256(f"{salt}:{seed}:{i}:{name}".encode()).digest()[:8], "little") & (2**63 - 1)


def rand_for(shape, seed, i, name, salt):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed_for(seed, i, name, salt)))


def ties_combine_ref(ds, w, elect="weighted", disjoint="mean"):
    """Per tensor, zero-sum ties to + (mergekit's rule; SCE uses it). ds: list over models of sparsified deltas."""
    stack = torch.stack(ds)
    wv = torch.tensor(w).view(-1, *[1] * ds[0].dim())
    votes = stack * wv if elect == "weighted" else stack
    sign = torch.ones_like(ds[0])
    sign[votes.sum(0) < 0] = -1
    agree = (torch.sign(votes) == sign) & (votes != 0)
    num = (stack * wv * agree).sum(0)
    if disjoint == "sum":
        return num
    den = (wv * agree).sum(0)
    return num / torch.where(den == 0, torch.ones_like(den), den)


def flat(d):
    """One model's tensors as one vector, in sorted-name order (as MergeLM flattens a model)."""
    return torch.cat([d[k].flatten() for k in sorted(d)])


def unflat(v, like):
    out, offset = {}, 0
    for k in sorted(like):
        out[k] = v[offset:offset + like[k].numel()].view(like[k].shape)
        offset += like[k].numel()
    return out


def trim_model(d, top_k):
    """MergeLM's trim over the whole model: keep |x| >= the int(n * (1 - top_k))-th smallest |x|."""
    v = flat(d)
    m = int(v.numel() * (1 - top_k))
    if m == 0:
        return d
    kth = v.abs().kthvalue(m).values
    return unflat(torch.where(v.abs() >= kth, v, 0.0), d)


def trim_tensors(d, top_k):
    """mergekit's trim, per tensor: keep |x| >= the int(top_k * n)-th largest |x| of the tensor."""
    out = {}
    for k in d:
        a = d[k].flatten().abs()
        tau = a.sort(descending=True).values[max(1, int(top_k * a.numel())) - 1]
        out[k] = torch.where(d[k].abs() >= tau, d[k], 0.0)
    return out


def ties_model_ref(sparse, w, cfg):
    """Sign election and disjoint merge over whole flattened models (MergeLM's ties_merging after its trim).
    sparse: per model, the sparsified deltas. A zero vote sum takes sign(#+ - #-) over the whole model
    (sign_tie="majority", the default) or + ("plus")."""
    V = torch.stack([flat(t) for t in sparse])                        # (N, P)
    wv = torch.tensor(w, dtype=torch.float32).view(-1, 1)
    votes = V * wv if cfg.get("elect", "weighted") == "weighted" else V
    sign = torch.sign(votes.sum(0))
    tie = torch.sign(sign.sum()) if cfg.get("sign_tie", "majority") == "majority" else 1.0
    sign[sign == 0] = tie
    agree = (torch.sign(votes) == sign) & (votes != 0)
    merged = (V * wv * agree).sum(0)
    if cfg.get("disjoint", "mean") == "mean":
        den = (wv * agree).sum(0)
        merged = merged / torch.where(den == 0, torch.ones_like(den), den)
    return unflat(cfg.get("lam", 1.0) * merged, sparse[0])


def ref_average(base, experts, cfg):
    w = cfg.get("weights", [1.0] * len(experts))
    return {k: sum(wi * e[k] for wi, e in zip(w, experts)) / sum(w) for k in base}


def ref_task_arithmetic(base, experts, cfg):
    w, lam = cfg.get("weights", [1.0] * len(experts)), cfg.get("lam", 1.0)
    ds = deltas_of(base, experts)
    return {k: base[k] + lam * sum(wi * d[k] for wi, d in zip(w, ds)) for k in base}


def ref_ties(base, experts, cfg):
    w, top_k = cfg.get("weights", [1.0] * len(experts)), cfg.get("top_k", 0.2)
    trim = trim_model if cfg.get("trim_scope", "model") == "model" else trim_tensors
    upd = ties_model_ref([trim(d, top_k) for d in deltas_of(base, experts)], w, cfg)
    return {k: base[k] + upd[k] for k in base}


def dare_ref(d, i, name, cfg):
    p = cfg.get("p", 0.2)
    keep = rand_for(d.shape, cfg.get("seed", 0), i, name, "dare") >= p
    if cfg.get("rescale", "inverse") == "inverse":
        return d * keep / (1 - p)
    masked = d * keep
    return masked * (d.abs().sum() / masked.abs().sum())


def ref_dare(base, experts, cfg):
    w, lam = cfg.get("weights", [1.0] * len(experts)), cfg.get("lam", 1.0)
    ds = deltas_of(base, experts)
    return {k: base[k] + lam * sum(wi * dare_ref(d[k], i, k, cfg) for i, (wi, d) in enumerate(zip(w, ds)))
            for k in base}


def ref_dare_ties(base, experts, cfg):
    w = cfg.get("weights", [1.0] * len(experts))
    dropped = [{k: dare_ref(d[k], i, k, cfg) for k in d} for i, d in enumerate(deltas_of(base, experts))]
    upd = ties_model_ref(dropped, w, cfg)
    return {k: base[k] + upd[k] for k in base}


def ref_dare_ties_trim(base, experts, cfg):
    """The paper's TIES+DARE as MergeLM runs it: each expert's delta DARE-dropped and rescaled (here with the masks
    of the seeds merge.py documents), then all of TIES on the dropped deltas: trim, elect, disjoint mean."""
    w, top_k = cfg.get("weights", [1.0] * len(experts)), cfg.get("top_k", 0.2)
    trim = trim_model if cfg.get("trim_scope", "model") == "model" else trim_tensors
    dropped = [{k: dare_ref(d[k], i, k, cfg) for k in d} for i, d in enumerate(deltas_of(base, experts))]
    upd = ties_model_ref([trim(d, top_k) for d in dropped], w, cfg)
    return {k: base[k] + upd[k] for k in base}


def ref_sce(base, experts, cfg):
    ds = deltas_of(base, experts)
    out = {}
    for k in base:
        stack = torch.stack([d[k] for d in ds])
        if cfg.get("sce_select", 1.0) < 1:
            var = stack.var(0, unbiased=False)
            n = int(cfg["sce_select"] * int((var != 0).sum()))
            thr = var.flatten().sort(descending=True).values[n - 1]
            stack = stack * ((var >= thr) & (var > 0))
        energy = torch.stack([(s ** 2).mean() for s in stack])
        w = energy / energy.sum()
        out[k] = base[k] + cfg.get("lam", 1.0) * ties_combine_ref(list(stack), w.tolist(), "unweighted", "mean")
    return out


def ref_breadcrumbs(base, experts, cfg):
    w, lam = cfg.get("weights", [1.0] * len(experts)), cfg.get("lam", 1.0)
    dens, gamma = cfg.get("crumbs_density", 0.9), cfg.get("crumbs_gamma", 0.01)
    ds = deltas_of(base, experts)
    out = {}
    for k in base:
        total = torch.zeros_like(base[k])
        for wi, d in zip(w, ds):
            n = d[k].numel()
            n_keep, n_top = int(dens * n), int(gamma * n)
            n_bot = max(0, n - n_keep - n_top)
            order = d[k].flatten().abs().argsort()
            mask = torch.zeros(n, dtype=torch.bool)
            mask[order[n_bot:n_bot + n_keep]] = True
            total += wi * d[k] * mask.view(d[k].shape)
        out[k] = base[k] + lam * total
    return out


def ref_della(base, experts, cfg):
    w = cfg.get("weights", [1.0] * len(experts))
    dens, eps = cfg.get("della_density", 0.7), cfg.get("della_epsilon", 0.1)
    pruned = []
    for i, d in enumerate(deltas_of(base, experts)):
        p = {}
        for k in base:
            rows = d[k].reshape(-1, d[k].shape[-1])
            n = rows.shape[1]
            rank = rows.abs().argsort(dim=1).argsort(dim=1).float()
            q = dens - eps + 2 * eps * rank / (n - 1)
            u = rand_for(d[k].shape, cfg.get("seed", 0), i, k, "della").reshape(rows.shape)
            p[k] = (rows * (u < q) / q).reshape(d[k].shape)
        pruned.append(p)
    upd = ties_model_ref(pruned, w, cfg)
    return {k: base[k] + upd[k] for k in base}


def ref_model_stock(base, experts, cfg):
    ds = deltas_of(base, experts)
    out = {}
    for k in base:
        flat = [d[k].flatten() for d in ds]
        cos = [torch.dot(flat[i], flat[j]) / (flat[i].norm() * flat[j].norm())
               for i in range(len(flat)) for j in range(i + 1, len(flat))]
        c = sum(cos) / len(cos)
        n = len(flat)
        t = n * c / (1 + (n - 1) * c)
        out[k] = (1 - t) * base[k] + t * sum(e[k] for e in experts) / n
    return out


def ref_tsv(base, experts, cfg):
    """Orthogonalisation by the polar factor X (X^T X)^(-1/2) (eigh), not by an SVD as merge.py does."""
    def polar(x):
        evals, evecs = torch.linalg.eigh(x.T.double() @ x.double())
        return (x.double() @ evecs @ torch.diag(evals.rsqrt()) @ evecs.T).float()

    ds = deltas_of(base, experts)
    n_models = len(ds)
    out = {}
    for k in base:
        if base[k].dim() != 2:
            out[k] = base[k] + cfg.get("lam", 1.0) * sum(d[k] for d in ds) / n_models
            continue
        r = min(base[k].shape)
        kk = r // n_models
        svds = [torch.linalg.svd(d[k], full_matrices=False) for d in ds]
        U = torch.cat([u[:, :kk] for u, _, _ in svds], dim=1)
        S = torch.cat([s[:kk] for _, s, _ in svds])
        V = torch.cat([vh[:kk].T for _, _, vh in svds], dim=1)
        out[k] = base[k] + cfg.get("lam", 1.0) * polar(U) @ torch.diag(S) @ polar(V).T
    return out


CASES = {
    "average": ("average", ref_average, dict(weights=[1.0, 2.0, 3.0])),
    "task_arithmetic": ("task_arithmetic", ref_task_arithmetic, dict(weights=[0.5, 1.0, 2.0], lam=0.7)),
    "ties": ("ties", ref_ties, dict()),
    "ties_tensor": ("ties", ref_ties, dict(trim_scope="tensor", top_k=0.3, weights=[1.0, 2.0, 0.5], lam=1.5)),
    "ties_unweighted_sum": ("ties", ref_ties, dict(elect="unweighted", disjoint="sum", weights=[1.0, 3.0, 0.5])),
    "dare": ("dare", ref_dare, dict(p=0.3, seed=7, weights=[1.0, 2.0, 0.5], lam=0.8)),
    "dare_l1": ("dare", ref_dare, dict(rescale="l1", seed=1)),
    "dare_ties": ("dare_ties", ref_dare_ties, dict(p=0.2, weights=[1.0, 2.0, 0.5])),
    "dare_ties_trim": ("dare_ties_trim", ref_dare_ties_trim, dict()),
    "dare_ties_trim_tensor": ("dare_ties_trim", ref_dare_ties_trim,
                              dict(trim_scope="tensor", p=0.3, top_k=0.3, seed=4, weights=[1.0, 2.0, 0.5], lam=0.9)),
    "ties_plus_sum": ("ties", ref_ties, dict(sign_tie="plus", disjoint="sum", top_k=0.5)),
    "sce": ("sce", ref_sce, dict()),
    "sce_select": ("sce", ref_sce, dict(sce_select=0.5, lam=0.9)),
    "breadcrumbs": ("breadcrumbs", ref_breadcrumbs, dict(crumbs_density=0.7, crumbs_gamma=0.05, weights=[1, 2, 3.0])),
    "della": ("della", ref_della, dict(della_density=0.6, della_epsilon=0.2, seed=3, weights=[1.0, 0.5, 2.0])),
    "model_stock": ("model_stock", ref_model_stock, dict()),
    "tsv": ("tsv", ref_tsv, dict(lam=0.9)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_method_matches_reference(ckpts, tmp_path, case):
    method, ref, kw = CASES[case]
    out, report = run(ckpts, tmp_path, method=method, **kw)
    got = load_sd(out)
    base, experts = load_sd(ckpts["base"]), [load_sd(e) for e in ckpts["experts"]]
    want = ref(base, experts, kw)
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=2e-6, msg=f"{case}: tensor {k}")
    # The merge really moved the weights (no silent copy of the base).
    assert any(not torch.equal(got[k], base[k]) for k in base)
    assert report["method"] == method


def test_ties_threshold_is_mergelm_whole_model_kth_value(ckpts, tmp_path):
    """MergeLM: the int(0.8 n)-th smallest |delta| of the whole model (kthvalue), n counting every entry."""
    _, report = run(ckpts, tmp_path, method="ties", top_k=0.2)
    base = load_sd(ckpts["base"])
    for i, e in enumerate(ckpts["experts"]):
        d = load_sd(e)
        v = torch.cat([(d[k] - base[k]).flatten().abs() for k in base])
        assert report["ties_thresholds"][i] == v.kthvalue(int(v.numel() * 0.8)).values.item()


def write_designed(ckpts, root, deltas_per_model):
    """A base on a coarse grid (k/64) and experts = base + the given deltas, all exact in fp32."""
    names = load_sd(ckpts["base"])
    g = torch.Generator().manual_seed(9)
    base = {k: torch.randint(-64, 64, v.shape, generator=g).float() / 64 for k, v in names.items()}
    paths = []
    for i, make in enumerate([None, *deltas_per_model]):
        path = root / ("base" if make is None else f"m{i}")
        os.makedirs(path)
        sd = base if make is None else {k: base[k] + make(v.numel()).view(v.shape) for k, v in base.items()}
        save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
        shutil.copy(os.path.join(ckpts["base"], "config.json"), path / "config.json")
        paths.append(str(path))
    return base, paths


def by_position(n, values):
    """A flat tensor whose entry j is values[j % 4] (every tensor of the tiny model has a multiple of 4 entries)."""
    return torch.tensor(values, dtype=torch.float32).repeat(n // 4)


@pytest.mark.parametrize("method", ["ties", "dare_ties", "dare_ties_trim"])
def test_zero_sum_sign_ties_take_the_model_majority(ckpts, tmp_path, method):
    """Hand-computed, two experts, u = 2^-10, no trim and no drop (top_k 1, p 0), entry j of every tensor by j % 4:
        j%4   expert 0   expert 1   vote sum   elected
         0      +u         -u          0       tie
         1      -u         -u        -2u       -
         2     -2u         -u        -3u       -
         3      +u        +2u        +3u       +
    Twice as many - as +, so MergeLM gives the ties -: the merged delta is -u there (the mean of the agreeing -u);
    mergekit's rule (+) gives +u. Elsewhere -u, -1.5u, +1.5u either way."""
    assert all(v.numel() % 4 == 0 for v in load_sd(ckpts["base"]).values())
    u = 2.0 ** -10
    base, paths = write_designed(ckpts, tmp_path, [lambda n: by_position(n, [u, -u, -2 * u, u]),
                                                   lambda n: by_position(n, [-u, -u, -u, 2 * u])])
    common = dict(method=method, base=paths[0], models=paths[1:], top_k=1.0, p=0.0)
    for rule, tie_delta in (("majority", -u), ("plus", u)):
        out, report = run(ckpts, tmp_path, name=f"{method}-{rule}", sign_tie=rule, **common)
        got = load_sd(out)
        for k in base:
            want = by_position(base[k].numel(), [tie_delta, -u, -1.5 * u, 1.5 * u]).view(base[k].shape)
            assert torch.equal(got[k] - base[k], want), (rule, k)
        assert report["summary"]["sign_tie"] == 0.25
        if rule == "majority":
            n = sum(v.numel() for v in base.values())
            assert report["sign_majority"] == {"tie_sign": -1.0, "positions_elected_plus": n // 4,
                                               "positions_elected_minus": n // 2}


def test_zero_sum_sign_ties_without_a_majority_keep_the_base(ckpts, tmp_path):
    """As above, but + and - are elected equally often (j%4 = 1 and 2) and j%4 = 0 and 3 sum to 0: MergeLM's
    majority sign is then 0, no entry agrees with it, and the ties keep theta_0."""
    u = 2.0 ** -10
    base, paths = write_designed(ckpts, tmp_path, [lambda n: by_position(n, [u, -u, u, 2 * u]),
                                                   lambda n: by_position(n, [-u, -u, u, -2 * u])])
    out, report = run(ckpts, tmp_path, method="ties", base=paths[0], models=paths[1:], top_k=1.0)
    got = load_sd(out)
    for k in base:
        assert torch.equal(got[k] - base[k], by_position(base[k].numel(), [0.0, -u, u, 0.0]).view(base[k].shape))
    assert report["sign_majority"]["tie_sign"] == 0.0 and report["summary"]["sign_tie"] == 0.5


def test_dare_ties_trim_is_neither_dare_ties_nor_ties(ckpts, tmp_path):
    """The paper's TIES+DARE trims the DARE-dropped deltas: its thresholds are those of the dropped deltas (about
    1/(1-p) times larger than TIES's, for these Gaussian deltas), and it keeps about top_k of each model."""
    _, trim = run(ckpts, tmp_path, name="trim", method="dare_ties_trim")
    _, ties = run(ckpts, tmp_path, name="ties", method="ties")
    _, no_trim = run(ckpts, tmp_path, name="dare_ties", method="dare_ties")
    base = load_sd(ckpts["base"])
    for i, e in enumerate(ckpts["experts"]):
        d = load_sd(e)
        dropped = flat({k: dare_ref(d[k] - base[k], i, k, {}) for k in base}).abs()
        assert trim["ties_thresholds"][i] == dropped.kthvalue(int(dropped.numel() * 0.8)).values.item()
        assert trim["ties_thresholds"][i] > ties["ties_thresholds"][i]
    assert no_trim["ties_thresholds"] is None
    # kept after trim and election: at most top_k of each model, and much less than DARE-TIES keeps
    assert all(k <= 0.2 + 1e-6 for k in trim["summary"]["kept"])
    assert all(a < b / 2 for a, b in zip(trim["summary"]["kept"], no_trim["summary"]["kept"]))


def test_radix_kth_largest_matches_sort():
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(1000, generator=g) * 1e-4, torch.zeros(300), torch.randn(17, 3, generator=g),
              torch.tensor([5e-39, -5e-39, 3.0, -3.0, 3.0]),  # subnormals and exact ties
              torch.randn(500, generator=g).round(decimals=1)]  # many duplicates
    allv = torch.cat([c.flatten().abs() for c in chunks]).sort(descending=True).values
    for k in [1, 2, 3, 4, 5, 100, 777, 1500, 1800, allv.numel()]:
        assert merge.kth_largest_abs(lambda: iter(chunks), k) == allv[k - 1].item(), k


def test_dare_distribution_single_expert(ckpts, tmp_path):
    """One expert: the merged update is the DARE-dropped delta itself; about 1-p of entries survive, each exactly
    delta / (1-p); different tensors get different masks."""
    base, e0 = load_sd(ckpts["base"]), load_sd(ckpts["experts"][0])
    for p in (0.2, 0.6):
        out, _ = run(ckpts, tmp_path, name=f"dare{p}", method="dare", p=p, models=ckpts["experts"][:1], seed=11)
        got = load_sd(out)
        kept = total = 0
        for k in base:
            upd, d = got[k] - base[k], e0[k] - base[k]
            mask = upd != 0
            kept += int(mask.sum())
            total += mask.numel()
            torch.testing.assert_close(upd[mask], d[mask] / (1 - p), rtol=1e-4, atol=1e-7)
        sigma = (p * (1 - p) / total) ** 0.5
        assert abs(kept / total - (1 - p)) < 5 * sigma, (p, kept / total)
    # The seed changes the masks.
    out_a, _ = run(ckpts, tmp_path, name="seed_a", method="dare", seed=1)
    out_b, _ = run(ckpts, tmp_path, name="seed_b", method="dare", seed=2)
    a, b = load_sd(out_a), load_sd(out_b)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_output_does_not_depend_on_tensor_order_or_reader(ckpts, tmp_path):
    """The sharded base stores tensors in another order; DARE masks are seeded by name, so the weights match."""
    out_a, _ = run(ckpts, tmp_path, name="a", method="dare")
    out_b, _ = run(ckpts, tmp_path, name="b", method="dare", base=ckpts["base_sharded"], reader="mmap")
    a, b = load_sd(out_a), load_sd(out_b)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_sharded_input_gives_the_same_merge(ckpts, tmp_path):
    models = [ckpts["e0_sharded"], *ckpts["experts"][1:]]
    for method in ("ties", "della"):
        out_a, _ = run(ckpts, tmp_path, name=f"{method}_plain", method=method)
        out_b, _ = run(ckpts, tmp_path, name=f"{method}_sharded", method=method, models=models)
        with open(os.path.join(out_a, "model.safetensors"), "rb") as fa, \
                open(os.path.join(out_b, "model.safetensors"), "rb") as fb:
            assert fa.read() == fb.read()


def test_merged_model_loads_generates_and_keeps_tokenizer(ckpts, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = run(ckpts, tmp_path, method="ties", max_shard_gb=2e-5)  # 20 kB shards: several files and an index
    files = sorted(os.listdir(out))
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 1
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
    assert set(index["weight_map"]) == set(load_sd(ckpts["base"]))
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("w1 w2 w3", return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert gen.shape == (1, ids.shape[1] + 4)
    # The loaded weights are the merged ones, and lm_head stays tied to the merged embedding.
    merged = load_sd(out)
    for k, v in model.state_dict().items():
        if k in merged:
            assert torch.equal(v, merged[k]), k
    assert torch.equal(model.lm_head.weight, merged["model.embed_tokens.weight"])


def test_bf16_output_reports_and_warns_about_lost_update(ckpts, tmp_path, capsys):
    base = load_sd(ckpts["base"])
    g = torch.Generator().manual_seed(5)
    tiny = {k: v + 1e-5 * torch.randn(v.shape, generator=g) for k, v in base.items()}  # an RL-sized update
    save_model(tiny, tmp_path / "tiny_expert")
    out, report = run(ckpts, tmp_path, method="task_arithmetic", models=[str(tmp_path / "tiny_expert")],
                      dtype="bfloat16")
    got = load_file(os.path.join(out, "model.safetensors"))
    assert all(v.dtype == torch.bfloat16 for v in got.values())
    assert json.load(open(os.path.join(out, "config.json")))["dtype"] == "bfloat16"
    # Independent: relative L2 error of the bf16 update against the fp32 one.
    num = sum(float((tiny[k].bfloat16().float() - tiny[k]).square().sum()) for k in base)
    den = sum(float((tiny[k] - base[k]).square().sum()) for k in base)
    assert report["summary"]["update_rel_err_from_dtype"] == pytest.approx((num / den) ** 0.5, rel=1e-3)
    assert report["summary"]["update_rel_err_from_dtype"] > 0.5
    assert "warning" in capsys.readouterr().err
    _, report32 = run(ckpts, tmp_path, name="fp32", method="task_arithmetic", models=[str(tmp_path / "tiny_expert")])
    assert report32["summary"]["update_rel_err_from_dtype"] == 0.0


def test_report_contents(ckpts, tmp_path):
    out, _ = run(ckpts, tmp_path, method="dare_ties", seed=5)
    report = json.load(open(os.path.join(out, "merge_report.json")))
    assert report["seed"] == 5 and report["config"]["method"] == "dare_ties" and report["config"]["p"] == 0.2
    for path in [ckpts["base"], *ckpts["experts"]]:
        for f, digest in report["inputs"][path].items():
            assert digest == hashlib.sha256(open(os.path.join(path, f), "rb").read()).hexdigest()
    base = load_sd(ckpts["base"])
    assert set(report["tensors"]) == set(base)
    st = report["tensors"]["model.layers.0.mlp.up_proj.weight"]
    assert len(st["kept"]) == N_EXPERTS and all(0 < k < 0.8 for k in st["kept"])
    assert 0 < st["sign_conflict"] < 1 and st["numel"] == base["model.layers.0.mlp.up_proj.weight"].numel()
    assert all(0.4 < k < 0.8 for k in report["summary"]["kept"])


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: clear errors, nothing written


def variant(ckpts, tmp_path, name, edit=None, config_edit=None, tie=True):
    """A copy of expert 0 with its tensors or config edited."""
    path = tmp_path / name
    sd = load_sd(ckpts["experts"][0])
    if edit:
        sd = edit(sd)
    os.makedirs(path)
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = json.load(open(os.path.join(ckpts["experts"][0], "config.json")))
    config["tie_word_embeddings"] = tie
    if config_edit:
        config_edit(config)
    json.dump(config, open(path / "config.json", "w"))
    return str(path)


def assert_fails_cleanly(ckpts, tmp_path, exc, match, **kw):
    before = set(os.listdir(tmp_path))
    with pytest.raises(exc, match=match):
        run(ckpts, tmp_path, name="failed", **kw)
    assert set(os.listdir(tmp_path)) == before  # no output directory, no temp directory


def test_shape_mismatch_names_tensor_and_model(ckpts, tmp_path):
    name = "model.layers.1.mlp.up_proj.weight"
    bad = variant(ckpts, tmp_path, "bad_shape", edit=lambda sd: {**sd, name: sd[name][:-1]})
    assert_fails_cleanly(ckpts, tmp_path, merge.UserError, rf"tensor {name} has shape \[63, 32\] in model 1 \(.*bad_shape",
                         models=[ckpts["experts"][0], bad])


def test_name_mismatch_names_tensor(ckpts, tmp_path):
    old, new = "model.layers.0.self_attn.q_norm.weight", "model.layers.0.self_attn.qnorm.weight"
    bad = variant(ckpts, tmp_path, "bad_name", edit=lambda sd: {(new if k == old else k): v for k, v in sd.items()})
    assert_fails_cleanly(ckpts, tmp_path, merge.UserError, rf"tensor {old} of the base .* is missing from model 0",
                         models=[bad])


def test_tied_vs_untied_embeddings(ckpts, tmp_path):
    untied = variant(ckpts, tmp_path, "untied", tie=False,
                     edit=lambda sd: {**sd, "lm_head.weight": sd["model.embed_tokens.weight"].clone()})
    assert_fails_cleanly(ckpts, tmp_path, merge.UserError, "tied embeddings differ", models=[untied])


def test_architecture_mismatch(ckpts, tmp_path):
    bad = variant(ckpts, tmp_path, "llama", config_edit=lambda c: c.update(architectures=["LlamaForCausalLM"]))
    assert_fails_cleanly(ckpts, tmp_path, merge.UserError, "architectures", models=[ckpts["experts"][0], bad])


def test_missing_inputs(ckpts, tmp_path):
    assert_fails_cleanly(ckpts, tmp_path, merge.UserError, "nowhere.* does not exist",
                         models=[str(tmp_path / "nowhere")])
    os.makedirs(tmp_path / "no_weights")
    shutil.copy(os.path.join(ckpts["base"], "config.json"), tmp_path / "no_weights")
    assert_fails_cleanly(ckpts, tmp_path, merge.UserError, "no model.safetensors",
                         models=[str(tmp_path / "no_weights")])


def test_bad_settings(ckpts, tmp_path):
    for kw, match in [(dict(p=1.0), r"--p .* \[0, 1\)"), (dict(p=-0.1), r"--p"), (dict(method="slerp"), "--method"),
                      (dict(weights=[1.0]), "--weights has 1 values for 3"), (dict(top_k=0.0), "--top-k"),
                      (dict(method="sce", weights=[1.0, 1.0, 1.0]), "drop --weights"),
                      (dict(della_density=0.1, della_epsilon=0.2), "DELLA"),
                      (dict(method="ties", sign_tie="majorty"), "--sign-tie 'majorty'; choose one of majority, plus")]:
        assert_fails_cleanly(ckpts, tmp_path, merge.UserError, match, **kw)
    with pytest.raises(SystemExit):  # the CLI rejects unknown methods before anything runs
        cli(["--method", "slerp", "--base", "b", "--models", "m", "--out", "o"])


def test_existing_output_needs_overwrite(ckpts, tmp_path):
    os.makedirs(tmp_path / "out")
    open(tmp_path / "out" / "keep.txt", "w").write("x")
    with pytest.raises(merge.UserError, match="--overwrite"):
        run(ckpts, tmp_path, method="average")
    assert os.listdir(tmp_path / "out") == ["keep.txt"]
    out, _ = run(ckpts, tmp_path, method="average", overwrite=True)
    assert "keep.txt" not in os.listdir(out) and "model.safetensors" in os.listdir(out)


def test_crash_mid_write_leaves_no_output(ckpts, tmp_path, monkeypatch):
    calls = []
    real = merge.merge_tensor

    def flaky(*args, **kw):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("simulated crash")
        return real(*args, **kw)

    monkeypatch.setattr(merge, "merge_tensor", flaky)
    assert_fails_cleanly(ckpts, tmp_path, RuntimeError, "simulated crash", method="ties")


# ---------------------------------------------------------------------------------------------------------------------
# Config: CLI lists, YAML/JSON files


def test_cli_comma_lists():
    cfg = cli(["--base", "b", "--models", "x,y,z", "--weights", "1,2.5,3", "--out", "o", "--method", "dare"])
    assert cfg.models == ["x", "y", "z"] and cfg.weights == [1.0, 2.5, 3.0] and cfg.method == "dare"
    assert cli(["--base", "b", "--models", "x", "y", "--out", "o"]).models == ["x", "y"]


def test_config_file_equals_cli(ckpts, tmp_path):
    flags = ["--method", "ties", "--base", ckpts["base"], "--models", ",".join(ckpts["experts"]),
             "--weights", "1,2,0.5", "--top-k", "0.3", "--trim-scope", "tensor", "--out", str(tmp_path / "cli")]
    from_flags = cli(flags)
    spec = {"method": "ties", "base": ckpts["base"], "top-k": 0.3, "trim_scope": "tensor",
            "models": [{"path": ckpts["experts"][0], "weight": 1}, {"path": ckpts["experts"][1], "weight": 2},
                       {"path": ckpts["experts"][2], "weight": 0.5}],
            "out": str(tmp_path / "cli")}
    yaml.safe_dump(spec, open(tmp_path / "merge.yaml", "w"))
    json.dump({**spec, "models": ckpts["experts"], "weights": [1, 2, 0.5]}, open(tmp_path / "merge.json", "w"))
    for path in (tmp_path / "merge.yaml", tmp_path / "merge.json"):
        from_file = cli(["--config", str(path)])
        assert {**vars(from_file), "config": ""} == vars(from_flags)
        assert check_config(from_file) == [1.0, 2.0, 0.5]
    assert cli(["--config", str(tmp_path / "merge.yaml"), "--top-k", "0.5"]).top_k == 0.5  # flags override
    # The same merge from the file and from the flags.
    main(from_flags)
    main(dataclasses_replace(cli(["--config", str(tmp_path / "merge.yaml")]), out=str(tmp_path / "yaml")))
    assert open(tmp_path / "cli" / "model.safetensors", "rb").read() == \
        open(tmp_path / "yaml" / "model.safetensors", "rb").read()


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def test_config_file_errors(tmp_path):
    yaml.safe_dump({"method": "ties", "topk": 0.3}, open(tmp_path / "a.yaml", "w"))
    with pytest.raises(ValueError, match=r"a.yaml: unknown key 'topk'"):
        cli(["--config", str(tmp_path / "a.yaml")])
    yaml.safe_dump({"p": "high"}, open(tmp_path / "b.yaml", "w"))
    with pytest.raises(ValueError, match=r"b.yaml: key 'p'"):
        cli(["--config", str(tmp_path / "b.yaml")])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        cli(["--config", str(tmp_path / "missing.yaml")])


def test_run_files_in_the_base_folder_are_not_copied(ckpts, tmp_path):
    """A train.py run folder as base: its run.json / metrics.jsonl must not make the merge look like a run."""
    import shutil
    base = tmp_path / "base_run"
    shutil.copytree(ckpts["base"], base)
    for name in ("run.json", "metrics.jsonl", "samples.jsonl"):
        (base / name).write_text("{}\n")
    out, report = run(ckpts, tmp_path, base=str(base), method="average")
    files = set(os.listdir(out))
    assert not files & {"run.json", "metrics.jsonl", "samples.jsonl"}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "merge_report.json"} <= files
    assert report["wall_s"] > 0
