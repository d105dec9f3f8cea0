"""DDP through torchrun on CPU (gloo): two ranks on different batches end with the same
weights (gradients are averaged), and only rank 0 writes the checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.synth.writer import SynthJob, synthesize

SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
from model.body import load_body_model
from model.config import BackboneConfig, RegressorConfig
from training.config import LoopConfig, OptimConfig, PretrainConfig
from training.distributed import init_distributed, shutdown
from training.pretrain import PretrainTask
from training.trainer import config_dict, train
from training.datasets import HMRDataset

data, out = sys.argv[1], sys.argv[2]
config = PretrainConfig(
    data=(data,), out_dir=out,
    regressor=RegressorConfig(BackboneConfig("resnet18", 0.25), hidden=64, crop_hw=(128, 96)),
    optim=OptimConfig(lr=1e-3, warmup_steps=0),
    loop=LoopConfig(steps=3, batch_size=2, workers=0, device="cpu", log_every=1,
                    checkpoint_every=2, progress=False),
)
ctx = init_distributed("cpu")
task = PretrainTask(config, load_body_model().to(ctx.device))
train(task, HMRDataset(data), config.loop, config.optim, out, ctx, config_dict(config))
sums = {k: float(v.double().sum()) for k, v in task.f_w.state_dict().items()}
with open(f"{out}/rank{ctx.rank}.json", "w") as fh:
    json.dump({"world": ctx.world_size, "sums": sums}, fh)
shutdown(ctx)
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "train"
    synthesize(SynthJob("train", 4, out, seed=21, workers=0, long_side=160), progress=False)
    return out


def test_two_gloo_ranks_agree_and_rank0_writes_the_checkpoint(data: Path, tmp_path: Path) -> None:
    script = tmp_path / "ddp_pretrain.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", str(script), str(data), str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    for key, value in ranks[0]["sums"].items():
        assert ranks[1]["sums"][key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
    assert (out / "final.pt").is_file() and (out / "last.pt").is_file()
    assert (out / "last.state.pt").is_file() and (out / "log.jsonl").is_file()
