"""Entry for `accelerate launch sam_histo/train.py --config CFG [k=v ...]`.

Run as a script, Python puts this folder first on sys.path, where names like `training` would shadow
installed packages (sam2 installs a top-level `training`); drop it before importing anything else.
"""
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _here]

from sam_histo.training.loop import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
