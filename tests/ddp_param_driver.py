"""Run under `accelerate launch` by tests/test_slurm.py: train(cfg) with a probe around each epoch.

    accelerate launch ... tests/ddp_param_driver.py OUT_DIR CONFIG [k=v ...]

Every rank writes ``OUT_DIR/rank<R>_epoch<E>.json`` = {"phase": i, "before": {name: sha1}, "after": {...}}:
the sha1 of each parameter of the unwrapped model before and after the epoch's optimizer steps, so the
test can check that ranks hold identical weights after an unfreeze boundary and that the boundary really
unfroze (and trained) the Hiera stages. The probe wraps ``loop.run_epoch``; nothing else changes.
"""
import hashlib
import json
import sys
from pathlib import Path


def param_hashes(model) -> dict:
    return {name: hashlib.sha1(p.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
            for name, p in model.named_parameters()}


def main(argv: list) -> int:
    out, config, overrides = Path(argv[0]), argv[1], argv[2:]
    from sam_histo.config import load_config
    from sam_histo.training import loop

    original = loop.run_epoch

    def probed(run, epoch):
        before = param_hashes(run.model)
        status = original(run, epoch)
        record = {"phase": run.phase, "status": status, "before": before, "after": param_hashes(run.model)}
        path = out / f"rank{run.accelerator.process_index}_epoch{epoch}.json"
        path.write_text(json.dumps(record))
        return status

    loop.run_epoch = probed
    out.mkdir(parents=True, exist_ok=True)
    result = loop.train(load_config(config, overrides))
    return 0 if result["status"] == "finished" else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
