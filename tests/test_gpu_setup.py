"""train.py's GPU-facing setup, checked on CPU (issue 22): the process-group timeout, frozen models sharded before
they are moved and loaded in bf16 for a GPU, and the resume step decided by rank 0 for every rank."""

import datetime
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

import model as modeling
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_process_group_timeout_is_the_config_field(monkeypatch):
    seen = []
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **kw: seen.append((a, kw)))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")   # leaves torch's thread count alone
    distributed, rank, world, _, device = train.init_distributed(train.Config(dist_timeout_min=90))
    assert (distributed, rank, world, device.type) == (True, 0, 1, "cpu")
    assert seen == [(("gloo",), {"timeout": datetime.timedelta(minutes=90)})]
    assert train.Config().dist_timeout_min * 60 > 600   # longer than torch's 10-minute default


@pytest.fixture
def one_process_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_frozen_models_are_sharded_before_they_are_moved(monkeypatch, one_process_group):
    calls, real_to = [], torch.nn.Module.to

    def to(self, *args, **kw):
        if isinstance(self, type(frozen_type[0])):
            calls.append(("to", all(isinstance(p, DTensor) for p in self.parameters())))
        return real_to(self, *args, **kw)

    def shard(m, device):
        calls.append(("shard", device))
        return train.shard(m, device)

    frozen_type = [modeling.load_model("tiny-init")]
    monkeypatch.setattr(torch.nn.Module, "to", to)
    net = modeling.load_frozen("tiny", torch.device("cpu"), shard)
    assert calls == [("shard", torch.device("cpu")), ("to", True)]   # moved once, and only as shards
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert all(p.dtype == torch.float32 for p in net.parameters())   # fp32 on a CPU


def test_frozen_models_load_in_bf16_for_a_gpu(monkeypatch):
    """The dtype asked of the loader for a CUDA device (the model itself is not built in bf16 here: no bf16 on
    CPU), and the move to the device after the shard."""
    asked, moved = [], []
    tiny = modeling.load_model("tiny-init")
    monkeypatch.setattr(modeling, "load_model", lambda path, dtype=torch.float32, **kw: asked.append(dtype) or tiny)
    monkeypatch.setattr(type(tiny), "to", lambda self, *a, **kw: moved.append(a) or self)
    net = modeling.load_frozen("tiny", torch.device("cuda:3"), lambda m, d: moved.append(("shard", d)) or m)
    assert asked == [torch.bfloat16]
    assert moved == [("shard", torch.device("cuda:3")), (torch.device("cuda:3"),)]
    assert net is tiny and not net.training


WORKER = """
import os, sys
sys.path.insert(0, {root!r})
import torch, torch.distributed as dist
import train
dist.init_process_group("gloo")
for run_dir in ("out/math", sys.argv[1]):   # relative: each rank's own folder; then one folder both share
    try:
        print("resume", train.resume_checkpoint(run_dir, torch.device("cpu")))
    except train.UserError as e:
        print("error", e)
dist.destroy_process_group()
"""


def _run_two_ranks(cwds: list[str], shared: str) -> list[list[str]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-c", WORKER.format(root=ROOT), shared], cwd=cwd, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"})
             for r, cwd in enumerate(cwds)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    return [o.strip().splitlines()[-2:] for o, _ in outs]


def _run_folder(cwd, *steps):
    """Checkpoints as an older train.py wrote them (no manifest): trainer_state.pt and whole safetensors weights,
    which model.resume_checkpoint accepts."""
    from safetensors.torch import save_file
    for n in steps:
        ckpt = os.path.join(cwd, "out", "math", "checkpoints", f"step_{n}")
        os.makedirs(ckpt)
        open(os.path.join(ckpt, "trainer_state.pt"), "w").close()
        save_file({"w": torch.zeros(2)}, os.path.join(ckpt, "model.safetensors"))


def test_rank_zero_decides_the_resume_step(tmp_path):
    """Two ranks whose working folders differ stand for two nodes with their own disks: rank 0 holds step 4 and
    rank 1 an older step 2. Without the broadcast rank 1 would resume from step 2; with it, both ranks stop with
    the shared-filesystem error. On one shared folder both resume from rank 0's step."""
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    _run_folder(node0, 2, 4)
    _run_folder(node1, 2)
    shared = str(node0 / "out" / "math")
    (local0, shared0), (local1, shared1) = _run_two_ranks([str(node0), str(node1)], shared)
    for line in (local0, local1):
        assert line.startswith("error --resume: 1 of 2 ranks cannot read out/math/checkpoints/step_4"), line
        assert "filesystem that every node shares" in line
    assert "(this rank among them)" in local1 and "(this rank among them)" not in local0
    assert shared0 == shared1 == f"resume {shared}/checkpoints/step_4"


@pytest.mark.parametrize("preset", ["paper", "paper-mixed", "paper-opd"])
def test_paper_presets_give_sglang_the_idle_memory_and_liger_one_chunk_per_micro_batch(preset):
    cfg = train.cli(["--preset", preset, "--domains", "math"])
    assert cfg.sglang_mem_fraction == 0.7 and cfg.liger_chunk_size == cfg.micro_batch == 64
    assert train.cli(["--domains", "math"]).liger_chunk_size == 1   # the CPU default is Liger's own


def test_liger_chunk_size_reaches_the_loss_and_leaves_it_unchanged(monkeypatch):
    chunked_loss = pytest.importorskip("liger_kernel.chunked_loss")
    seen, real = [], chunked_loss.LigerFusedLinearGRPOLoss

    def spy(*a, **kw):
        seen.append(kw["chunk_size"])
        return real(*a, **kw)

    monkeypatch.setattr(chunked_loss, "LigerFusedLinearGRPOLoss", spy)
    torch.manual_seed(0)
    B, T, H, V = 4, 6, 8, 11
    hidden, weight, targets = torch.randn(B, T, H), torch.randn(V, H) * 0.5, torch.randint(0, V, (B, T))
    mask, adv = torch.ones(B, T), torch.tensor([1.0, -0.5, 0.3, -1.2])
    out = []
    for k in (1, 4):
        c = train.Config(domains=("math",), liger_chunk_size=k, max_new_tokens=T, temperature=0.7)
        h = hidden.clone().requires_grad_(True)
        loss, _ = train.policy_loss_liger(h, weight, targets, mask, adv, None, c)
        loss.backward()
        out.append((loss.detach(), h.grad))
    assert seen == [1, 4]
    torch.testing.assert_close(out[0], out[1], atol=1e-5, rtol=1e-5)
