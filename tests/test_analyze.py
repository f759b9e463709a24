"""analyze.py's analyses (eval, weights, kl, consistency) and its command line, on constructed models and
results whose answers are known by hand. report.py: tests/test_report.py."""

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import analyze
import data
import model  # the project's model.py: tiny Qwen3 + tokenizer
import plots
from analyze import UserError

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------ pass@k

@pytest.mark.parametrize("n,c,k,expected", [
    (4, 1, 1, 1 / 4),
    (4, 1, 2, 1 - 3 / 6),      # 1 - C(3,2)/C(4,2)
    (5, 2, 3, 1 - 1 / 10),     # 1 - C(3,3)/C(5,3)
    (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
    (4, 0, 4, 0.0),
    (4, 2, 3, 1.0),            # only 2 wrong samples: any 3 include a correct one
    (1, 1, 1, 1.0),
])
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert analyze.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_enumeration_of_subsets():
    for n in range(1, 7):
        for c in range(n + 1):
            samples = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                assert analyze.pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(ValueError):
        analyze.pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        analyze.pass_at_k(3, 1, 4)


def test_summarize_eval_hand_computed():
    recs = [
        {"model": "m", "benchmark": "b", "id": "1", "domain": "math", "rewards": [1, 0, 0, 0]},
        {"model": "m", "benchmark": "b", "id": "2", "domain": "math", "rewards": [1, 1, 0, 0]},
        {"model": "m", "benchmark": "b", "id": "3", "domain": "if", "rewards": [0.5, 0.5, 0.5, 0.5]},
    ]
    table, by_domain = analyze.summarize_eval(recs)
    cell = table["m"]["b"]
    assert cell["avg@k"] == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert cell["pass@1"] == pytest.approx((0.25 + 0.5 + 0) / 3)   # 0.5 is a partial score, not a pass
    assert cell["pass@k"] == pytest.approx((1 + 1 + 0) / 3)
    assert (cell["k"], cell["n"]) == (4, 3)
    assert by_domain["m"] == pytest.approx({"math": 0.375, "if": 0.5})
    md, csv_text = analyze.eval_tables(table, ["m"])
    assert "| m | 0.417 | 0.417 |" in md and "b avg@4" in csv_text


# ------------------------------------------------------------------------------------------------ weights

Q = "model.layers.0.self_attn.q_proj.weight"
UP = "model.layers.1.mlp.up_proj.weight"


def base_tensors() -> dict:
    """A small state dict with every module type; values in +-[0.5, 1.5] so thresholds are clear-cut, on a grid
    of 1/64 so that adding the planted deltas is exact in fp32."""
    g = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (32, 16), "lm_head.weight": (32, 16), "model.norm.weight": (16,)}
    for layer in range(2):
        p = f"model.layers.{layer}."
        shapes |= {p + "self_attn.q_proj.weight": (16, 16), p + "self_attn.k_proj.weight": (8, 16),
                   p + "self_attn.v_proj.weight": (8, 16), p + "self_attn.o_proj.weight": (16, 16),
                   p + "self_attn.q_norm.weight": (8,), p + "input_layernorm.weight": (16,),
                   p + "mlp.gate_proj.weight": (24, 16), p + "mlp.up_proj.weight": (24, 16),
                   p + "mlp.down_proj.weight": (16, 24)}
    out = {}
    for name, shape in shapes.items():
        mag = 0.5 + torch.randint(0, 65, shape, generator=g) / 64
        out[name] = torch.where(torch.rand(shape, generator=g) < 0.5, -mag, mag)
    return out


def planted(base: dict, updates: dict) -> dict:
    """Copy of base with updates {name: {flat index: delta or ("tiny", None)}}; "tiny" multiplies by 1+1e-5:
    a change at the exact threshold but far under the relative one."""
    out = {k: v.clone() for k, v in base.items()}
    for name, upd in updates.items():
        flat = out[name].view(-1)
        for i, d in upd.items():
            flat[i] = flat[i] * (1 + 1e-5) if d == "tiny" else flat[i] + d
    return out


def save(tmp_path: Path, name: str, tensors: dict) -> str:
    d = tmp_path / name
    d.mkdir()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(d / "model.safetensors"))
    return str(d)


UPD_A = {Q: {0: 1.0, 1: 2.0, 2: -1.0, 3: 0.5, 10: "tiny", 11: "tiny"}, UP: {5: 1.0, 6: -1.0}}
UPD_B = {Q: {2: -2.0, 3: -1.0, 4: 3.0}, UP: {6: -1.0, 7: 1.0}}


@pytest.fixture(scope="module")
def planted_models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("weights")
    base = base_tensors()
    return {"base": save(tmp, "base", base), "a": save(tmp, "a", planted(base, UPD_A)),
            "b": save(tmp, "b", planted(base, UPD_B)), "same": save(tmp, "same", base), "tmp": tmp,
            "tensors": base}


def test_weights_identical_model_changes_nothing(planted_models):
    res = analyze.compare_weights(planted_models["base"], {"same": planted_models["same"]}, progress=False)
    for thr in ("exact", "rel"):
        assert all(v == 1.0 for v in res["sparsity"]["same"][thr].values())
        assert all(v == 1.0 for v in res["layers"]["same"][thr])
    assert res["pairs"] == []


def test_weights_planted_updates_exact_numbers(planted_models):
    pm = planted_models
    res = analyze.compare_weights(pm["base"], {"a": pm["a"], "b": pm["b"], "same": pm["same"]},
                                  proj_seeds=(0, 1), progress=False)
    n_q, n_up = 2 * 16 * 16, 2 * 24 * 16   # two layers of each type
    sp = res["sparsity"]
    assert sp["a"]["exact"]["q"] == 1 - 6 / n_q and sp["a"]["rel"]["q"] == 1 - 4 / n_q
    assert sp["b"]["exact"]["q"] == sp["b"]["rel"]["q"] == 1 - 3 / n_q
    assert sp["a"]["rel"]["up"] == 1 - 2 / n_up and sp["a"]["rel"]["k"] == 1.0
    assert sp["a"]["rel"]["attention"] == 1 - 4 / res["n_params"]["attention"]
    assert sp["a"]["exact"]["all"] == 1 - 8 / res["n_params"]["all"]
    # per layer: q (layer 0) and up (layer 1) each hold their own changes
    layer_n = [sum(v.numel() for k, v in pm["tensors"].items() if f"layers.{i}." in k) for i in range(2)]
    assert res["layers"]["a"]["rel"] == [1 - 4 / layer_n[0], 1 - 2 / layer_n[1]]
    assert res["layers"]["a"]["exact"] == [1 - 6 / layer_n[0], 1 - 2 / layer_n[1]]

    ab = next(p for p in res["pairs"] if (p["a"], p["b"]) == ("a", "b"))
    q, up, all_ = ab["rel"]["q"], ab["rel"]["up"], ab["rel"]["all"]
    # q: A = {0,1,2,3}, B = {2,3,4}; overlap {2,3} with deltas A (-1, 0.5), B (-2, -1)
    assert q["jaccard"] == 2 / 5 and q["a_in_b"] == 2 / 4 and q["b_in_a"] == 2 / 3
    assert q["sign_agree"] == 1 / 2
    assert q["cos"] == pytest.approx((2 - 0.5) / math.sqrt((1 + 0.25) * (4 + 1)), abs=1e-12)
    # the exact threshold adds A's two tiny changes, outside B
    assert ab["exact"]["q"]["jaccard"] == 2 / 7 and ab["exact"]["q"]["a_in_b"] == 2 / 6
    # random masks of the same densities in one tensor: dA dB / (dA + dB - dA dB)
    n0 = 16 * 16  # the q tensor of layer 0; layer 1's q tensor has no change and adds nothing
    dA, dB = 4 / n0, 3 / n0
    assert q["jaccard_rand"] == pytest.approx(dA * dB / (dA + dB - dA * dB), rel=1e-12)
    assert q["a_in_b_rand"] == pytest.approx(dB, rel=1e-12)
    # up: A = {5,6}, B = {6,7}; overlap {6} with deltas -1, -1
    assert up["jaccard"] == 1 / 3 and up["sign_agree"] == 1.0 and up["cos"] == pytest.approx(1.0)
    # all parameters pooled: overlap q{2,3} + up{6}
    assert all_["jaccard"] == 3 / 8 and all_["overlap"] == 3
    assert all_["sign_agree"] == 2 / 3
    assert all_["cos"] == pytest.approx((2 - 0.5 + 1) / math.sqrt((1.25 + 1) * (5 + 1)), abs=1e-12)
    n1 = 24 * 16
    e_inter = n0 * dA * dB + n1 * (2 / n1) * (2 / n1)
    e_union = n0 * (dA + dB - dA * dB) + n1 * (4 / n1 - 4 / n1 ** 2)
    assert all_["jaccard_rand"] == pytest.approx(e_inter / e_union, rel=1e-12)
    # cosine of the whole update vectors: |dA|^2 = 1+4+1+.25+1+1 (+ the tiny ones), |dB|^2 = 4+1+9+1+1
    assert all_["cos_full"] == pytest.approx(2.5 / math.sqrt(8.25 * 16), abs=1e-9)
    # a model with no update: no overlap, cosine undefined
    a_same = next(p for p in res["pairs"] if (p["a"], p["b"]) == ("a", "same"))
    assert a_same["rel"]["all"]["jaccard"] == 0 and a_same["rel"]["all"]["jaccard_rand"] == 0
    assert math.isnan(a_same["rel"]["all"]["cos"])


def test_weights_chunking_and_shards_do_not_change_exact_statistics(planted_models):
    pm = planted_models
    ref = analyze.compare_weights(pm["base"], {"a": pm["a"], "b": pm["b"]}, proj_seeds=(), progress=False)
    # chunks of 40 elements split every tensor into several row blocks
    small = analyze.compare_weights(pm["base"], {"a": pm["a"], "b": pm["b"]}, proj_seeds=(), chunk_elems=40,
                                    progress=False)
    # model b as two shards with an index, like save_pretrained(max_shard_size=...)
    tensors = planted(pm["tensors"], UPD_B)
    names = sorted(tensors)
    d = pm["tmp"] / "b_sharded"
    d.mkdir()
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for f, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(d / f))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}))
    sharded = analyze.compare_weights(pm["base"], {"a": pm["a"], "b": str(d)}, proj_seeds=(), progress=False)
    for other in (small, sharded):
        assert other["sparsity"] == ref["sparsity"] and other["layers"] == ref["layers"]
        for p, r in zip(other["pairs"], ref["pairs"]):
            for thr in ("exact", "rel"):
                for sc, st in r[thr].items():
                    for key, v in st.items():
                        assert p[thr][sc][key] == pytest.approx(v, rel=1e-12, nan_ok=True), (sc, key)


def test_tensor_chunks_bound_memory(tmp_path):
    d = save(tmp_path, "big", {"w": torch.zeros(1000, 30)})
    h = analyze.open_checkpoint(d)
    chunks = list(analyze.tensor_chunks([h], "w", (1000, 30), 3000))
    assert all(c[0].numel() <= 3000 for _, c in chunks) and sum(c[0].numel() for _, c in chunks) == 30000
    assert [off for off, _ in chunks][:2] == [0, 3000]


def test_weights_projection_cosine_close_to_exact(tmp_path):
    """Dense correlated updates on one 4096-element tensor: the 256-dim sketch cosine is an estimate of the
    exact cosine with std about (1 - cos^2)/sqrt(256) ~ 0.04 here (0.042 measured over 400 seeds); stated
    tolerance: every seed within 0.15 (3.6 std) of the exact value, the mean of 16 seeds within 0.05 (5 std)."""
    g = torch.Generator().manual_seed(1)
    w0 = 1 + torch.rand(64, 64, generator=g)
    x, y = torch.randn(64, 64, generator=g), torch.randn(64, 64, generator=g)
    base = save(tmp_path, "base", {UP: w0})
    a = save(tmp_path, "a", {UP: w0 + 0.1 * x})
    b = save(tmp_path, "b", {UP: w0 + 0.1 * (0.6 * x + 0.8 * y)})
    res = analyze.compare_weights(base, {"a": a, "b": b}, proj_seeds=tuple(range(16)), progress=False)
    st = res["pairs"][0]["rel"]["all"]
    exact = float((x * (0.6 * x + 0.8 * y)).sum() / (x.norm() * (0.6 * x + 0.8 * y).norm()))
    assert st["cos_full"] == pytest.approx(exact, abs=1e-5)   # fp32 storage of w0 + d rounds the deltas
    # the overlap drops positions whose update is under 1e-3 of the weight in either model
    wa, wb = (w0 + 0.1 * x).double(), (w0 + 0.1 * (0.6 * x + 0.8 * y)).double()
    da, db = wa - w0.double(), wb - w0.double()
    both = (da.abs() > 1e-3 * torch.maximum(wa.abs(), w0.abs())) & (db.abs() > 1e-3 * torch.maximum(wb.abs(), w0.abs()))
    assert st["overlap"] == int(both.sum()) < 64 * 64
    assert st["cos"] == pytest.approx(float((da * db)[both].sum() / (da[both].norm() * db[both].norm())), abs=1e-12)
    assert max(abs(c - st["cos"]) for c in st["cos_proj_seeds"]) < 0.15
    assert abs(st["cos_proj"] - st["cos"]) < 0.05
    assert st["cos_proj_std"] > 0   # different seeds are different projections
    again = analyze.compare_weights(base, {"a": a, "b": b}, proj_seeds=(3,), progress=False)
    assert again["pairs"][0]["rel"]["all"]["cos_proj_seeds"][0] == st["cos_proj_seeds"][3]


def test_sketch_rows_are_orthogonal():
    bucket, sign = analyze.sketch(0, "t", 0, 5000, 256, "cpu")
    P = torch.zeros(256, 5000, dtype=torch.float64)
    P[bucket, torch.arange(5000)] = sign
    gram = P @ P.T
    assert torch.equal(gram, torch.diag(torch.diag(gram)))   # disjoint supports: exactly orthogonal rows
    assert torch.diag(gram).sum() == 5000


def test_weights_mismatched_models_fail_clearly(planted_models, tmp_path):
    pm = planted_models
    tensors = dict(pm["tensors"])
    del tensors[Q]
    with pytest.raises(UserError, match="missing .*q_proj"):
        analyze.compare_weights(pm["base"], {"x": save(tmp_path, "missing", tensors)}, progress=False)
    tensors = dict(pm["tensors"]) | {"extra.weight": torch.zeros(2)}
    with pytest.raises(UserError, match="extra .*extra.weight"):
        analyze.compare_weights(pm["base"], {"x": save(tmp_path, "extra", tensors)}, progress=False)
    tensors = dict(pm["tensors"]) | {UP: torch.zeros(24, 8)}
    with pytest.raises(UserError, match=r"up_proj.weight has shape \[24, 8\].*\[24, 16\]"):
        analyze.compare_weights(pm["base"], {"x": save(tmp_path, "shape", tensors)}, progress=False)
    with pytest.raises(UserError, match="no .safetensors"):
        analyze.compare_weights(str(tmp_path / "nowhere"), {"x": pm["a"]}, progress=False)


def test_module_types_of_a_qwen3_checkpoint():
    names = {"model.embed_tokens.weight": "embed", "lm_head.weight": "lm_head", "model.norm.weight": "norm",
             "model.layers.3.self_attn.k_norm.weight": "norm", "model.layers.3.self_attn.v_proj.weight": "v",
             "model.layers.3.post_attention_layernorm.weight": "norm", "model.layers.3.mlp.down_proj.weight": "down",
             "model.layers.3.self_attn.o_proj.bias": "o"}
    assert {n: analyze.module_type(n) for n in names} == names
    assert analyze.layer_index("model.layers.12.mlp.up_proj.weight") == 12
    assert analyze.layer_index("model.norm.weight") is None


def test_weights_plots_and_json(planted_models, tmp_path):
    pm = planted_models
    res = analyze.compare_weights(pm["base"], {"a": pm["a"], "b": pm["b"], "same": pm["same"]},
                                  proj_seeds=(0, 1, 2), progress=False)
    paths = plots.plot_weights(res, tmp_path)
    assert [p.name for p in paths] == ["weights_sparsity.png", "weights_layers.png", "weights_overlap.png",
                                       "weights_cosine.png"]
    for p in paths:
        assert p.stat().st_size > 10_000 and json.loads(p.with_suffix(".json").read_text())
    overlap = json.loads((tmp_path / "weights_overlap.json").read_text())
    assert overlap["jaccard"][0][1] == res["pairs"][0]["rel"]["all"]["jaccard"]
    assert overlap["a_in_b"][1][0] == res["pairs"][0]["rel"]["all"]["b_in_a"]   # row b, column a: |A&B|/|B|
    assert "| a | " in analyze.weights_markdown(res)


# ------------------------------------------------------------------------------------------------ consistency

def recs(model: str, accs: list[float], domains=("math", "math", "code", "code")) -> list[dict]:
    """Per-problem records whose mean rewards are `accs` (4 samples each)."""
    out = []
    for i, (acc, d) in enumerate(zip(accs, domains)):
        c = round(acc * 4)
        out.append({"model": model, "benchmark": "b", "id": str(i), "domain": d,
                    "rewards": [1.0] * c + [0.0] * (4 - c)})
    return out


def test_consistency_known_answers():
    records = (recs("base", [0, 0.25, 0, 0.5]) + recs("e_math", [1, 0.25, 0, 0]) +
               recs("e_code", [0, 0.75, 0, 0.5]) +
               recs("union", [1, 0.75, 0, 0.5]) +        # exactly the union of the experts' gains
               recs("ortho", [0, 0, 1, 0.25]) +          # gains only where no expert gains
               recs("partial", [1, 0.25, 0, 0]))         # only the math expert's gain
    res = analyze.consistency(records, "base", ["e_math", "e_code"], ["union", "ortho", "partial"],
                              n_boot=200, seed=0)
    # gains: e_math [1, 0, 0, 0], e_code [0, .5, 0, 0] -> union [1, .5, 0, 0]
    assert res["cos"]["union"]["all"]["cos"] == pytest.approx(1.0)
    union = res["cos"]["union"]["all"]
    # a resample holds only problems 2 and 3, where nobody gains, with chance 1/16 > 2.5%: cosine 0 there
    assert union["lo"] == 0.0 and union["hi"] == pytest.approx(1.0)
    assert res["cos"]["ortho"]["all"]["cos"] == 0.0
    assert res["cos"]["partial"]["all"]["cos"] == pytest.approx(1 / math.sqrt(1.25))
    lo, hi = res["cos"]["partial"]["all"]["lo"], res["cos"]["partial"]["all"]["hi"]
    assert lo <= 1 / math.sqrt(1.25) <= hi
    # one benchmark "b" holding both domains: "b" is "all" again, so the scopes are all and each domain
    assert res["n_problems"] == {"all": 4, "domain math": 2, "domain code": 2}
    assert res["cos"]["partial"]["domain math"]["cos"] == pytest.approx(1 / math.sqrt(1.25))
    # code problems 2, 3: every expert's gain is 0 there, so the cosine is 0 (the paper), not undefined
    assert res["cos"]["union"]["domain code"] == {"cos": 0.0, "lo": 0.0, "hi": 0.0, "gain": 0.0, "union_gain": 0.0}
    assert res["cos"]["ortho"]["domain code"]["cos"] == 0.0   # ortho gains [1, 0] there, the union none
    again = analyze.consistency(records, "base", ["e_math", "e_code"], ["partial"], n_boot=200, seed=0)
    # seeded bootstrap: the same intervals again
    assert analyze.clean_json(again["cos"]) == {"partial": analyze.clean_json(res["cos"]["partial"])}


def test_consistency_per_benchmark_when_benchmarks_share_a_domain():
    """Two code benchmarks (embedded/code, humaneval) and one math benchmark, two problems each. Per problem
    (accuracies): base 0; e_math gains on math only, e_code on both code benchmarks; the model m below."""
    def rows(model, accs):   # accs: {benchmark: (acc problem 0, acc problem 1)}
        return [{"model": model, "benchmark": b, "id": f"{b}-{i}", "domain": "math" if b == "embedded/math" else "code",
                 "rewards": [a]} for b, pair in accs.items() for i, a in enumerate(pair)]
    zero = {"embedded/math": (0, 0), "embedded/code": (0, 0), "humaneval": (0, 0)}
    records = (rows("base", zero) + rows("e_math", {**zero, "embedded/math": (1, 0.5)}) +
               rows("e_code", {**zero, "embedded/code": (0.5, 0), "humaneval": (0, 1)}) +
               rows("m", {"embedded/math": (0.5, 0.5), "embedded/code": (0, 0.5), "humaneval": (0, 1)}))
    res = analyze.consistency(records, "base", ["e_math", "e_code"], ["m"], n_boot=50, seed=0)
    assert res["n_problems"] == {"all": 6, "embedded/math": 2, "embedded/code": 2, "humaneval": 2,
                                 "domain code": 4}
    cos = {s: v["cos"] for s, v in res["cos"]["m"].items()}
    # union gains: math (1, .5), embedded/code (.5, 0), humaneval (0, 1); m's gains: (.5, .5), (0, .5), (0, 1)
    assert cos["embedded/math"] == pytest.approx((0.5 + 0.25) / (math.sqrt(0.5) * math.sqrt(1.25)))
    assert cos["embedded/code"] == 0.0        # m gains only where the code expert does not
    assert cos["humaneval"] == pytest.approx(1.0)
    assert cos["domain code"] == pytest.approx(1 / (math.sqrt(1.25) * math.sqrt(1.25)))
    assert cos["all"] == pytest.approx(1.75 / (math.sqrt(1.75) * math.sqrt(2.5)))


def test_consistency_bootstrap_interval_matches_reference():
    rng = np.random.default_rng(5)
    a, b = rng.random(50), rng.random(50)
    lo, hi = analyze.bootstrap_cosine(a, b, n_boot=500, seed=3)
    idx = np.random.default_rng(3).integers(0, 50, size=(500, 50))
    ref = [a[i] @ b[i] / (np.linalg.norm(a[i]) * np.linalg.norm(b[i])) for i in idx]
    assert (lo, hi) == pytest.approx(tuple(np.percentile(ref, [2.5, 97.5])))
    # zero vectors: cosine 0 in every resample, not NaN
    assert analyze.bootstrap_cosine(np.zeros(5), b[:5], n_boot=20, seed=0) == (0.0, 0.0)
    assert analyze.cosine(np.zeros(3), np.zeros(3)) == 0.0


def test_consistency_errors_and_files(tmp_path):
    records = recs("base", [0, 0, 0, 0]) + recs("e", [1, 0, 0, 0]) + recs("m", [1, 1, 0, 0])
    with pytest.raises(UserError, match=r"no per-problem results for models \['missing'\]"):
        analyze.consistency(records, "base", ["e"], ["missing"])
    path = tmp_path / "pp.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    res = analyze.run_consistency(analyze.ConsistencyConfig(experts=["e"], models=["m"], results=str(path),
                                                            out=str(tmp_path), n_boot=50))
    assert res["cos"]["m"]["all"]["cos"] == pytest.approx(1 / math.sqrt(2))
    assert (tmp_path / "consistency.json").exists() and (tmp_path / "consistency_bars.json").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(records[0]) + "\n" + json.dumps({"model": "x", "id": "1"}) + "\n")
    with pytest.raises(UserError, match="bad.jsonl: line 2: missing field 'benchmark'"):
        analyze.read_per_problem(bad)


# ------------------------------------------------------------------------------------------------ kl

@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """Three tiny models with different random inits, saved as HF folders (seed 0 is the base)."""
    tmp = tmp_path_factory.mktemp("tiny")
    tok = model.load_tokenizer("tiny")
    dirs = {}
    for name, seed in (("s0", 0), ("s1", 1), ("s2", 2)):
        model.save_pretrained(model.load_model("tiny-init", seed=seed), tok, str(tmp / name))
        dirs[name] = str(tmp / name)
    return dirs


def sample_trajs(policy, n=3):
    tok = model.load_tokenizer("tiny")
    prompts = [[{"role": "user", "content": f"What is {i} + {i}?" + " Think." * i}] for i in range(n)]
    out = model.generate(policy, tok, prompts, n=2, max_new_tokens=12, temperature=1.0, seed=0)
    return [(s["prompt_ids"], s["completion_ids"]) for s in out], tok.pad_token_id


def reference_kl(p_model, q_model, trajs):
    """One unpadded sequence at a time, softmax and KL in float64 numpy."""
    tot_pq = tot_qp = n = 0
    for p, c in trajs:
        ids = torch.tensor([list(p) + list(c)])
        with torch.no_grad():
            lp = p_model(input_ids=ids).logits[0].double().numpy()
            lq = q_model(input_ids=ids).logits[0].double().numpy()
        for t in range(len(p) - 1, len(p) + len(c) - 1):
            P = np.exp(lp[t] - lp[t].max()); P /= P.sum()
            Q = np.exp(lq[t] - lq[t].max()); Q /= Q.sum()
            tot_pq += (P * (np.log(P) - np.log(Q))).sum()
            tot_qp += (Q * (np.log(Q) - np.log(P))).sum()
            n += 1
    return tot_pq / n, tot_qp / n, n


def test_kl_identical_models_is_zero():
    p, q = model.load_model("tiny-init", seed=0), model.load_model("tiny-init", seed=0)
    trajs, pad = sample_trajs(p)
    kl = analyze.teacher_forced_kl(p, q, trajs, pad_id=pad, batch_size=4)
    assert kl["kl_pq"] == pytest.approx(0, abs=1e-7) and kl["kl_qp"] == pytest.approx(0, abs=1e-7)
    assert kl["n_tokens"] == sum(len(c) for _, c in trajs)


def test_kl_matches_unbatched_reference():
    p, q = model.load_model("tiny-init", seed=0), model.load_model("tiny-init", seed=1)
    trajs, pad = sample_trajs(p)
    assert len({len(a) + len(b) for a, b in trajs}) > 1   # padding is exercised
    kl = analyze.teacher_forced_kl(p, q, trajs, pad_id=pad, batch_size=4, time_chunk=5)
    ref_pq, ref_qp, n = reference_kl(p, q, trajs)
    assert kl["n_tokens"] == n
    assert kl["kl_pq"] == pytest.approx(ref_pq, rel=1e-4) and kl["kl_qp"] == pytest.approx(ref_qp, rel=1e-4)
    assert kl["kl_pq"] > 0 and kl["kl_pq"] != pytest.approx(kl["kl_qp"])   # KL is not symmetric


def test_kl_with_the_expert_cached_gives_the_same_numbers():
    p, q, r = (model.load_model("tiny-init", seed=s) for s in (0, 1, 2))
    trajs, pad = sample_trajs(p)
    cache = {}
    first = analyze.teacher_forced_kl(p, q, trajs, pad_id=pad, batch_size=4, time_chunk=5, p_cache=cache)
    assert first == pytest.approx(analyze.teacher_forced_kl(p, q, trajs, pad_id=pad, batch_size=4, time_chunk=5))
    assert cache and all(v.shape[-1] == 1024 for v in cache.values())
    calls = []
    hook = p.register_forward_hook(lambda *args: calls.append(1))
    second = analyze.teacher_forced_kl(p, r, trajs, pad_id=pad, batch_size=4, time_chunk=5, p_cache=cache)
    assert calls == []   # p's log-probabilities all came from the cache
    hook.remove()
    assert second == pytest.approx(analyze.teacher_forced_kl(p, r, trajs, pad_id=pad, batch_size=4, time_chunk=5))


def test_pack_masks_exactly_the_completion_predictions():
    ids, attn, mask = analyze.pack([([5, 6, 7], [8, 9]), ([5], [8, 9, 10])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8, 9], [5, 8, 9, 10, 0]]
    assert attn.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # position t predicts token t+1: row 0 predicts 8, 9 from positions 2, 3; row 1 predicts 8, 9, 10 from 0, 1, 2
    assert mask.tolist() == [[False, False, True, True, False], [True, True, True, False, False]]


def test_kl_cross_matrix_has_every_cell(tiny_dirs, tmp_path):
    """Paper Figure 4 on a tiny run: every expert samples every domain's prompts, so every (domain A, expert B)
    cell exists for every model; one cell is checked against an independent computation (the expert's
    trajectories sampled again, KL by the unbatched float64 reference above). Math and if: short prompts."""
    d = tiny_dirs
    evaluation = {"models": {"m": d["s0"], "c": d["s1"], "merged": d["s2"]},
                  "by_domain": {"m": {"math": 0.5, "if": 0.1}, "c": {"math": 0.2, "if": 0.4},
                                "merged": {"math": 0.45, "if": 0.3}}}
    analyze.write_json(tmp_path / "eval.json", evaluation)
    cfg = analyze.KLConfig(experts=[f"math={d['s0']}", f"if={d['s1']}"], multitask=d["s0"],
                           merged=[f"merged={d['s2']}"], n_problems=3, k=2, max_new_tokens=8, out=str(tmp_path),
                           device="cpu")
    res = analyze.run_kl(cfg)
    assert res["domains"] == ["math", "if"] and res["models"] == ["math", "if", "multitask", "merged"]
    fwd, rev = np.array(res["kl_fwd"], dtype=float), np.array(res["kl_rev"], dtype=float)   # (A, B, M)
    assert fwd.shape == rev.shape == (2, 2, 4) and np.isfinite(fwd).all() and np.isfinite(rev).all()
    assert (np.array(res["n_tokens"]) > 0).all()
    for b in range(2):   # an expert against itself, on every domain's trajectories
        assert fwd[:, b, b] == pytest.approx([0, 0], abs=1e-7)
    assert fwd[:, 0, 2] == pytest.approx([0, 0], abs=1e-7)   # the "multitask" model is the math expert itself
    assert (fwd[:, 0, [1, 3]] > 0).all() and (fwd[:, 1, [0, 2, 3]] > 0).all() and (rev[:, 1, [0, 3]] > 0).all()
    # cell (A = math data, B = if expert, M = merged), computed again independently
    if_expert, merged = model.load_model(d["s1"]), model.load_model(d["s2"])
    rows = data.embedded("math", "eval", n=3, seed=0)
    samples = model.generate(if_expert, model.load_tokenizer(d["s1"]), [r["prompt"] for r in rows], n=2,
                             max_new_tokens=8, temperature=1.0, top_p=1.0, seed=0)
    ref_pq, ref_qp, n = reference_kl(if_expert, merged, [(s["prompt_ids"], s["completion_ids"]) for s in samples
                                                           if s["completion_ids"]])
    assert res["n_tokens"][0][1] == n
    assert fwd[0, 1, 3] == pytest.approx(ref_pq, rel=1e-4) and rev[0, 1, 3] == pytest.approx(ref_qp, rel=1e-4)
    # ΔPerf: accuracy on domain A minus that of A's expert, models matched to eval.json by path
    assert np.allclose(res["perf_change"], [[0, 0.2 - 0.5, 0, 0.45 - 0.5], [0.1 - 0.4, 0, 0.1 - 0.4, 0.3 - 0.4]])
    plotted = json.loads((tmp_path / "kl_heatmap.json").read_text())
    assert plotted["kl_fwd"] == analyze.clean_json([res["kl_fwd"][a][a] for a in range(2)])
    figure4 = json.loads((tmp_path / "kl_cross.json").read_text())
    assert figure4["models"] == ["multitask", "merged"]
    assert figure4["kl_fwd"]["merged"][1][0] == pytest.approx(fwd[0, 1, 3])   # row: if expert; column: math data
    assert figure4["perf_change"]["merged"] == [[pytest.approx(-0.05), pytest.approx(-0.1)]]
    for png in ("kl_heatmap.png", "kl_cross.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    md = analyze.kl_markdown(res)
    assert f"| expert if | {analyze.sig(fwd[0, 1, 2])} | {analyze.sig(fwd[1, 1, 2])} |" in md
    assert "| ΔPerf | +0.000 | -0.300 |" in md   # Figure 4 of "multitask" (the math expert): 0.5-0.5, 0.1-0.4


def test_kl_no_cross_samples_each_expert_on_its_own_domain(tiny_dirs, tmp_path):
    d = tiny_dirs
    cfg = analyze.KLConfig(experts=[f"math={d['s0']}", f"if={d['s1']}"], merged=[f"merged={d['s2']}"],
                           cross=False, n_problems=2, k=1, max_new_tokens=4, out=str(tmp_path), device="cpu")
    res = analyze.run_kl(cfg)
    fwd = res["kl_fwd"]
    assert fwd[0][1] == [None] * 3 and fwd[1][0] == [None] * 3 and None not in fwd[0][0] + fwd[1][1]
    assert res["n_tokens"][0][1] is None and res["perf_change"] is None
    assert "not computed (kl ran with --no-cross)" in analyze.kl_markdown(res)


# ------------------------------------------------------------------------------------------------ eval

def test_benchmarks_embedded_and_humaneval():
    benches = analyze.load_benchmarks(["embedded", "humaneval"], ["math", "code"], 3, 0)
    assert list(benches) == ["embedded/math", "embedded/code", "humaneval"]
    assert benches["embedded/math"] == data.embedded("math", "eval", n=3, seed=0)
    assert benches["humaneval"] == data.humaneval_rows()[:3]
    assert [r["id"] for r in benches["humaneval"]] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert len(analyze.load_benchmarks(["humaneval"], ["code"], None, 0)["humaneval"]) == 164
    assert analyze.load_benchmarks(["humaneval"], ["math", "if"], None, 0) == {}   # no code among the domains


def test_eval_constructed_completions(tmp_path, monkeypatch):
    """generate replaced by a fake whose first sample of each problem is the right answer and the other
    three are wrong: the real math verifier must give avg@4 = 1/4, pass@1 = 1/4, pass@4 = 1."""
    rows = data.embedded("math", "eval", n=3, seed=0)
    answer_of = {json.dumps(r["prompt"]): r["answer"] for r in rows}

    def fake_generate(policy, tokenizer, prompts, *, n=1, **kw):
        out = []
        for p in prompts:
            for j in range(n):
                text = f"<think>so</think>\\boxed{{{answer_of[json.dumps(p)]}}}" if j == 0 else "<think>hm</think>no idea"
                out.append({"prompt_ids": [1], "completion_ids": [5, 2], "text": text, "truncated": False})
        return out

    monkeypatch.setattr(model, "generate", fake_generate)
    monkeypatch.setattr(model, "fast_generate", fake_generate)   # the tiny model's sampler (model.generate_for)
    cfg = analyze.EvalConfig(models=["m=tiny"], domains=["math"], n_problems=3, k=4, out=str(tmp_path),
                             device="cpu", workers=1, seed=7)   # --seed samples; the problems stay those of seed 0
    res = analyze.run_eval(cfg)
    cell = res["table"]["m"]["embedded/math"]
    assert (cell["avg@k"], cell["pass@1"], cell["pass@k"], cell["n"], cell["k"]) == (0.25, 0.25, 1.0, 3, 4)
    lines = [json.loads(x) for x in (tmp_path / "eval_per_problem.jsonl").read_text().splitlines()]
    assert [x["rewards"] for x in lines] == [[1.0, 0.0, 0.0, 0.0]] * 3
    assert [x["id"] for x in lines] == [r["id"] for r in rows] and lines[0]["model"] == "m"
    assert "| m | 0.250 | 0.250 |" in (tmp_path / "eval.md").read_text()
    csv_lines = (tmp_path / "eval.csv").read_text().splitlines()
    assert csv_lines == ["model,embedded/math avg@4,embedded/math pass@4,mean avg@4", "m,0.2500,1.0000,0.2500"]


def test_eval_records_carry_the_rows_item_kind(monkeypatch):
    """A row's "kind" (the small world's item kinds) goes into its per-problem record; a row without one gives
    a record without one."""
    rows = [{**r, "kind": "shared"} for r in data.embedded("math", "eval", n=2, seed=0)]
    rows[1].pop("kind")
    fake = lambda policy, tokenizer, prompts, *, n=1, **kw: [   # noqa: E731
        {"prompt_ids": [1], "completion_ids": [5], "text": "<think>a</think>b", "truncated": False}
        for _ in prompts for _ in range(n)]
    monkeypatch.setattr(model, "generate_for", lambda policy: fake)   # whichever sampler would serve the model
    out = analyze.evaluate_rows(None, None, rows, k=2, max_new_tokens=4, temperature=1.0, top_p=1.0, batch_size=2,
                                seed=0, think=True, workers=1)
    assert out[0]["kind"] == "shared" and "kind" not in out[1]
    assert [r["id"] for r in out] == [r["id"] for r in rows] and out[0]["rewards"] == [0.0, 0.0]


def test_eval_tiny_model_end_to_end(tmp_path):
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps(r) + "\n" for r in data.embedded("science", "eval", n=2, seed=1)))
    cfg = analyze.EvalConfig(models=["base=tiny"], benchmarks=["embedded", f"sci={bench}"], n_problems=2, k=2,
                             max_new_tokens=8, out=str(tmp_path), device="cpu", workers=2)
    res = analyze.run_eval(cfg)
    assert sorted(res["table"]["base"]) == ["embedded/code", "embedded/if", "embedded/math", "embedded/science",
                                            "sci"]
    lines = [json.loads(x) for x in (tmp_path / "eval_per_problem.jsonl").read_text().splitlines()]
    assert len(lines) == 5 * 2
    for x in lines:
        assert len(x["rewards"]) == 2 and all(0 <= r <= 1 for r in x["rewards"])
        assert all(1 <= n <= 8 for n in x["lengths"]) and 0 <= x["truncated"] <= 2
    for name in ("eval.json", "eval.md", "eval.csv", "eval_bars.png", "eval_bars.json"):
        assert (tmp_path / name).exists()
    with pytest.raises(UserError, match="benchmark 'x': data file 'nowhere.jsonl' does not exist"):
        analyze.load_benchmarks(["x=nowhere.jsonl"], ["math"], None, 0)


# ------------------------------------------------------------------------------------------------ command line

def run_cli(*args: str, cwd: Path = ROOT, importtime: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *(["-X", "importtime"] if importtime else []), str(ROOT / "analyze.py"),
                           *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_cli_help_comes_before_torch_and_matplotlib():
    """--help parses the command line before the heavy imports (torch + transformers take seconds)."""
    for args in (["--help"], ["report", "--help"], ["verify", "--help"], ["kl", "--help"]):
        out = run_cli(*args, importtime=True)
        assert out.returncode == 0, out.stderr
        imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()
                    if line.startswith("import time:")}
        assert not {"torch", "transformers", "matplotlib", "model", "plots", "report"} & imported, args
    assert all(sub in out.stdout for sub in ("--experts", "--cross", "--no-cross"))
    out = run_cli("--help")
    for sub in ("eval", "weights", "kl", "consistency", "verify", "report"):
        assert sub in out.stdout


def test_cli_user_errors_are_one_line_and_write_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "out").mkdir()
    cases = [
        (["eval", "--models", f"m={empty}"], f"model 'm': {empty} is not a model folder, it has no config.json"),
        (["eval", "--models", "./no/such/model"], "model 'model': no such folder ./no/such/model"),
        (["eval", "--models", "out/math"], "no such folder out/math"),   # ./out exists: local, not a hub id
        (["eval", "--domains", "chess"], "unknown domains ['chess']"),
        (["eval", "--benchmarks", "nowhere.jsonl"], "benchmark 'nowhere': data file 'nowhere.jsonl' does not exist"),
        (["eval", "--benchmarks", "humaneval", "--domains", "math"], "give no problems of --domains math"),
        (["weights", "--models", f"m={empty}"], "is not a model folder, it has no config.json and no weights"),
        (["kl", "--experts", "chess=x"], "experts must be named by domain"),
        (["consistency", "--experts", "e", "--models", "m"], "no per-problem results out/analysis/eval_per_problem"),
        (["report", "--runs", "none"], "--runs none: no such folder"),
        (["report", "--runs", str(empty)], "no training run (a subfolder with run.json) or merge"),
        (["report"], "--runs out: no training run"),
    ]
    for args, message in cases:
        out = run_cli(*args, cwd=tmp_path)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 1 and len(lines) == 1 and message in lines[0], (args, out.stderr)
        assert lines[0].startswith(f"analyze.py {args[0]}: error: ")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["empty", "out"]   # nothing written anywhere


def test_local_looking_paths_never_go_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    for spec in ("./m", "/no/such/m2rl/model", "~/no-such-m2rl-model", "out/math", "../m"):
        assert analyze.looks_local(spec), spec
        with pytest.raises(UserError, match="no such folder"):
            analyze.check_model("m", spec)
    for spec in ("Qwen/Qwen3-4B-Base", "tiny", "smollm2-135m"):   # a hub id or preset, for model.py
        assert not analyze.looks_local(spec) and analyze.check_model("m", spec) == spec
    # a hub id missing from the HF cache (tests run offline) fails in one line too
    with pytest.raises(UserError, match="model 'q': cannot load 'no-org/no-model'"):
        analyze.load_named("q", "no-org/no-model", "cpu")


def test_cli_lists_take_commas_and_spaces():
    import tyro
    cfg = tyro.cli(analyze.EvalConfig, args=["--models", "a=x,b=y", "c=z", "--domains", "math,code"])
    assert cfg.models == ["a=x", "b=y", "c=z"] and cfg.domains == ["math", "code"]
    assert analyze.parse_named(cfg.models + ["out/runs/mixed/"]) == {"a": "x", "b": "y", "c": "z",
                                                                     "mixed": "out/runs/mixed/"}
    with pytest.raises(UserError, match="given twice"):
        analyze.parse_named(["a=x", "a=y"])
    with pytest.raises(UserError, match="unknown domains"):
        analyze.EvalConfig(domains=["chess"])


def test_eval_loads_ifbench_from_a_local_file_and_scores_it_with_the_paper_grader():
    """IFBench's file shape (key, prompt, instruction_id_list, kwargs with nulls) becomes if rows, which
    AllenAI's checkers score: tests/fixtures/ifbench.jsonl, verdicts worked out by hand."""
    path = Path(__file__).parent / "fixtures" / "ifbench.jsonl"
    rows = analyze.load_benchmarks([f"ifbench={path}"], ["if"], None, 0)["ifbench"]
    assert [r["id"] for r in rows] == ["b1", "b2"] and rows[0]["kwargs"] == [{}, {"N": 2}]
    completions = ["<think>two pets</think>cats:3,dogs:4", "<think>a colour</think>light blue"]
    results = analyze.verifiers.verify_batch(completions, rows, grader="paper")
    assert [(r["reward"], r["passed"], r["error"]) for r in results] == [(1.0, 2, None), (0.0, 0, None)]
