"""Released checkpoints: the paper authors' SFT model and RL experts as a Hub snapshot lays them out (sharded
safetensors with model.safetensors.index.json, bf16 in config.json, a generation_config.json with several eos
ids), merged with merge.py and analysed with analyze.py. The snapshot folders are built here from the tiny
model; README.md "Released checkpoints" gives the commands for the real ones."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import analyze
import merge
import model as M

EOS_IDS = [2, 0]   # <|im_end|> and <|endoftext|>, as Qwen3's generation_config lists both


def hub_snapshot(folder, state: dict, shards: int = 3) -> None:
    """Write `state` as a Hub snapshot does: bf16 shards model-0000k-of-0000n.safetensors, their index, config.json
    with dtype bfloat16, generation_config.json with several eos ids, and the tokenizer files."""
    os.makedirs(folder)
    names = sorted(state)
    weight_map, total = {}, 0
    for k in range(shards):
        part = names[k::shards]
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {n: state[n].to(torch.bfloat16).contiguous() for n in part}   # storage cast only, no bf16 math
        save_file(tensors, os.path.join(folder, file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
        total += sum(t.numel() * 2 for t in tensors.values())
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    config = M.tiny_config().to_dict()
    config.update(architectures=["Qwen3ForCausalLM"], dtype="bfloat16", torch_dtype="bfloat16")
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": EOS_IDS, "pad_token_id": 0, "do_sample": True, "temperature": 0.6,
                   "top_p": 0.95}, f)
    M.load_tokenizer("tiny").save_pretrained(folder)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """sft/ and two experts (sft plus a seeded perturbation), each a bf16 sharded snapshot."""
    root = tmp_path_factory.mktemp("released")
    sft = {k: v.clone() for k, v in M.load_model("tiny").state_dict().items()}
    sft.pop("lm_head.weight", None)   # tied to the embeddings, as the tiny config says; a snapshot stores it once
    hub_snapshot(root / "sft", sft)
    gen = torch.Generator().manual_seed(0)
    for name in ("math", "code"):
        hub_snapshot(root / name, {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in sft.items()})
    return root


def read_fp32(folder) -> dict:
    index = json.load(open(os.path.join(folder, "model.safetensors.index.json")))
    out = {}
    for file in sorted(set(index["weight_map"].values())):
        out.update({k: v.float() for k, v in load_file(os.path.join(folder, file)).items()})
    return out


def test_snapshot_loads_in_fp32_on_cpu_and_stops_on_every_eos(released):
    net = M.load_model(str(released / "sft"))
    assert next(net.parameters()).dtype == torch.float32   # bf16 in config.json, fp32 on the CPU
    want = read_fp32(released / "sft")
    got = net.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    tok = M.load_tokenizer(str(released / "sft"))
    assert M.stop_token_ids(tok, net.generation_config) == sorted(EOS_IDS)


def test_merge_released_experts_then_analyse_them(released, tmp_path):
    out = tmp_path / "merge-average"
    merge.main(merge.cli(["--method", "average", "--base", str(released / "sft"), "--models",
                          f"{released / 'math'},{released / 'code'}", "--out", str(out)]))
    merged = M.load_model(str(out)).state_dict()
    a, b = read_fp32(released / "math"), read_fp32(released / "code")
    for k in a:   # average: the mean of the two experts in fp32, written in the base's dtype (bf16) as merge.py does
        torch.testing.assert_close(merged[k], (a[k] + b[k]) / 2, rtol=2 ** -8, atol=1e-6)   # within bf16 rounding
    on_disk = load_file(out / "model.safetensors")
    assert {t.dtype for t in on_disk.values()} == {torch.bfloat16}
    gen = json.load(open(out / "generation_config.json"))
    assert gen["eos_token_id"] == EOS_IDS   # copied from the base, so the merged model stops where it should

    ties = tmp_path / "merge-ties"
    merge.main(merge.cli(["--method", "ties", "--base", str(released / "sft"), "--models",
                          f"{released / 'math'},{released / 'code'}", "--out", str(ties)]))
    analyze.run_eval(analyze.EvalConfig(
        models=[f"sft={released / 'sft'}", f"merge-ties={ties}"],
        benchmarks=["embedded"], domains=["math", "science"], n_problems=2, k=1, max_new_tokens=8,
        device="cpu", out=str(tmp_path / "analysis")))
    lines = [json.loads(x) for x in open(tmp_path / "analysis" / "eval_per_problem.jsonl")]
    assert {(x["model"], x["benchmark"]) for x in lines} == {(m, f"embedded/{d}") for m in ("sft", "merge-ties")
                                                          for d in ("math", "science")}
    w = analyze.run_weights(analyze.WeightsConfig(models=[f"math={released / 'math'}", f"merge-ties={ties}"],
                                                  base=str(released / "sft"), proj_seeds=[], device="cpu",
                                                  out=str(tmp_path / "analysis")))
    assert (tmp_path / "analysis" / "weights.json").exists() and w
