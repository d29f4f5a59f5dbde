"""Two CPU processes (gloo) give exactly the single-process metrics on a split of odd size.

Both reduction paths are exercised in the same two processes: accelerate's prepared dataloader (which pads
the last batch with repeated samples, ``even_batches``) with ``Evaluator.reduce(accelerator)``, and a plain
``DistributedSampler`` (which pads by repeating indices) with ``Evaluator.reduce()`` over torch.distributed.
"""
import json
import os
import socket

import numpy as np
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from sam_histo.data.types import ClassSpec
from sam_histo.scoring.evaluator import Evaluator

CLASSES = ClassSpec(("outside_roi", "tumor", "stroma", "vessel"), ignore_index=0)
N = 7  # odd: not divisible by 2 processes, nor by the batch size


def _sample(i):
    rng = np.random.default_rng(100 + i)
    target = rng.integers(0, 4, (12, 12))
    pred = np.where(rng.random((12, 12)) < 0.6, target, rng.integers(0, 4, (12, 12)))
    logits = rng.normal(size=(4, 12, 12))
    probs = (np.exp(logits) / np.exp(logits).sum(0)).astype(np.float32)
    return {"index": i, "pred": torch.from_numpy(pred), "target": torch.from_numpy(target),
            "probs": torch.from_numpy(probs)}


class _Split(Dataset):
    def __len__(self):
        return N

    def __getitem__(self, i):
        return _sample(i)


def _add_batch(ev, batch):
    for j in range(len(batch["index"])):
        ev.add(batch["pred"][j], batch["target"][j], batch["probs"][j], meta={"index": int(batch["index"][j])})


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), ACCELERATE_USE_CPU="true")
    torch.set_num_threads(1)
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    assert acc.num_processes == world
    ev = Evaluator(CLASSES)
    for batch in acc.prepare(DataLoader(_Split(), batch_size=2)):
        _add_batch(ev, batch)
    n_local = len(ev._records)
    via_accelerate = ev.reduce(acc).result(split="val")
    ev2 = Evaluator(CLASSES)
    sampler = DistributedSampler(_Split(), num_replicas=world, rank=rank, shuffle=False)
    for batch in DataLoader(_Split(), batch_size=3, sampler=sampler):
        _add_batch(ev2, batch)
    via_torch = ev2.reduce().result(split="val")
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"n_local": n_local, "accelerate": via_accelerate, "torch": via_torch}, f)
    acc.wait_for_everyone()
    torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_with_an_odd_split(tmp_path):
    single = Evaluator(CLASSES)
    for i in range(N):
        _add_batch(single, {k: [v] for k, v in _sample(i).items()})
    expected = single.result(split="val")
    assert expected["duplicates_dropped"] == 0
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert sum(r["n_local"] for r in ranks) == N + 1  # the padding duplicate really was there
    expected = json.loads(json.dumps(expected))  # same JSON round trip as the workers' files
    for r in ranks:
        for path in ("accelerate", "torch"):
            got = r[path]
            assert got.pop("duplicates_dropped") == 1, path
            assert got == {k: v for k, v in expected.items() if k != "duplicates_dropped"}, path
