"""Package discovery for the ``verticals`` distribution (metadata lives in pyproject.toml).

The top-level folders ``core/``, ``domains/`` and ``fused_kernels/`` are the import packages ``verticals.core``,
``verticals.domains`` and ``verticals.kernels`` (the kernels' folder is not called ``kernels/``: run from the
repository root, a top-level ``kernels`` folder would shadow Hugging Face's ``kernels`` package, which transformers
imports); every folder below them with an ``__init__.py`` is found
here, so a new domain (``domains/<name>/``) needs no edit of this file or of pyproject.toml.
"""

from setuptools import find_packages, setup

ROOTS = {"verticals.core": "core", "verticals.domains": "domains", "verticals.kernels": "fused_kernels"}

packages = [
    f"{package}.{sub}" if sub else package
    for package, folder in ROOTS.items()
    for sub in ["", *find_packages(where=folder)]
]

if __name__ == "__main__":  # as setuptools' build backend runs it; tests read `packages` without building
    setup(packages=packages, package_dir=ROOTS)
