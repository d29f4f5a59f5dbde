"""Build step only (metadata lives in pyproject.toml): copy the project's data files into the package.

configs/*.yaml, prompts/*.json and third_party/manifest.yaml stay in the repository's top-level folders,
the one editable copy; a built wheel carries them as ``sam_histo/resources/<folder>/`` so an installed
``sam-histo`` finds them through importlib.resources from any working directory
(sam_histo/config/resources.py). Editable installs read the top-level folders and copy nothing.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
RESOURCES = {"configs": "*.yaml", "prompts": "*.json", "third_party": "manifest.yaml"}


class BuildWithResources(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for folder, pattern in RESOURCES.items():
            files = sorted((ROOT / folder).glob(pattern))
            if not files:
                raise SystemExit(f"setup.py: no {folder}/{pattern} to package (run the build from the project)")
            target = Path(self.build_lib) / "sam_histo" / "resources" / folder
            self.mkpath(str(target))
            for src in files:
                self.copy_file(str(src), str(target / src.name))


setup(cmdclass={"build_py": BuildWithResources})
