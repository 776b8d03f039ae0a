"""tokenshift: token-level analysis of how RL fine-tuning shifts a language model.

Reproduces "Sparse but Critical: A Token-Level Analysis of Distributional Shifts in RLVR
Fine-Tuning of LLMs" (Meng et al., ICLR 2026). The Snakemake workflow at the repository root
calls this library one stage at a time; everything here runs without Snakemake. From a notebook:
``tokenshift.compare`` (two checkpoints on a few texts) and ``tokenshift.load_results`` (a study's
tables), in ``tokenshift.api``.
"""

import hashlib
import os
import sys
from importlib.machinery import ExtensionFileLoader, PathFinder, SourceFileLoader, SourcelessFileLoader

__version__ = "0.1.0"
__all__ = ["compare", "load_results"]


class _SourceLoader(SourceFileLoader):
    """Python's loader of a module's source, whose cached bytecode (``__pycache__``) is taken only where it was
    compiled from the source as it is now. Python checks a .pyc by the source's size and mtime: a same-size edit
    whose mtime was set back (``touch -r``, ``cp -p``, ``rsync -a``) ran the old bytecode, while the code hash,
    taken from the source, said the new code ran (the twentieth hostile pass). Here the "mtime" a .pyc records
    and is checked against is 32 bits of the source's sha256; a .pyc written by Python's own loader is compiled
    again once."""

    def path_stats(self, path: str) -> dict:
        source = self.get_data(path)
        return {"mtime": int.from_bytes(hashlib.sha256(source).digest()[:4], "big"), "size": len(source)}

    def get_data(self, path: str) -> bytes:
        data = super().get_data(path)
        if path.endswith(".pyc") and data[4:5] and data[4] & 1:
            # a hash-based .pyc (PEP 552), which Python runs without a look at the source where its check bit is
            # off (`compileall --invalidation-mode unchecked-hash`, the twenty-first pass): compiled again instead
            raise OSError(f"{path}: hash-based bytecode, not taken")
        return data


class _Finder:
    """Finds the package's modules as Python does, to be loaded by ``_SourceLoader``. The package is Python source,
    whose code is what the code hash reads: a compiled module Python would take before the source (an extension
    module beside ``grading.py``, a ``grading.pyc`` where the source was removed) is refused."""

    @staticmethod
    def find_spec(name: str, path=None, target=None):
        if not name.startswith(f"{__name__}."):
            return None
        spec = PathFinder.find_spec(name, path, target)
        if spec is not None and type(spec.loader) is SourceFileLoader:
            spec.loader = _SourceLoader(spec.loader.name, spec.loader.path)
        elif isinstance(spec and spec.loader, (ExtensionFileLoader, SourcelessFileLoader)):
            raise ImportError(
                f"{spec.origin}: a compiled module in tokenshift, which is Python source: the code that would run is "
                "not the code its results record; remove it (or reinstall tokenshift)",
                name=name,
                path=spec.origin,
            )
        return spec


if not os.path.isdir(os.path.dirname(__file__)):  # a zip on sys.path: the code hash found no file (the 21st pass)
    raise ImportError(
        f"{os.path.dirname(__file__)}: tokenshift imported from an archive; it reads its own files (its code, whose "
        "hash its results record, its schema and templates): install it as files (pip install)",
        name=__name__,
    )
if not any(
    (getattr(f, "__module__", None), getattr(f, "__qualname__", None)) == (__name__, "_Finder") for f in sys.meta_path
):
    sys.meta_path.insert(0, _Finder)


def __getattr__(name: str):
    # imported on first use: the workflow imports this package while it plans, without torch or polars
    if name in __all__:
        from tokenshift import api

        return getattr(api, name)
    raise AttributeError(f"module 'tokenshift' has no attribute {name!r}")
