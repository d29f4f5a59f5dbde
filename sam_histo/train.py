"""Entry for `accelerate launch sam_histo/train.py --config CFG [k=v ...]`.

Run as a script, Python puts this folder first on sys.path, where names like `training` would shadow
installed packages (sam2 installs a top-level `training`); drop it before importing anything else.
"""
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _here]

from sam_histo.cli import apply_threads  # noqa: E402  (before torch is imported: OMP_NUM_THREADS)

if __name__ == "__main__":
    argv, _ = apply_threads(sys.argv[1:])
    from sam_histo.training.loop import main

    raise SystemExit(main(argv))

if __name__ == "sam_histo.train":
    # Imported as a module, this file would replace the API function sam_histo.train (a package attribute of
    # the same name) with itself: keep the name callable as that function.
    import types

    class _CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            from sam_histo.api import train

            return train(*args, **kwargs)

    sys.modules[__name__].__class__ = _CallableModule
