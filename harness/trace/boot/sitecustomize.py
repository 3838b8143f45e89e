"""Loaded at interpreter start by `higgs-diff trace` (this folder is put first on PYTHONPATH).

Waits for the traced program to import torch, then loads the recorder from its file (so the
project's packages stay off the traced program's import path) and installs its hooks; processes
that never import torch (pip, shells) pay nothing.  Then runs any other ``sitecustomize`` the
interpreter would have loaded.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))


def _install_recorder() -> None:
    spec = importlib.util.spec_from_file_location("_higgs_trace_recorder",
                                                  os.path.join(os.path.dirname(_here), "recorder.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["_higgs_trace_recorder"] = mod
    try:
        spec.loader.exec_module(mod)
        mod.install()
    except Exception as exc:   # the traced program must run even if the recorder cannot
        sys.stderr.write(f"[higgs-trace] recorder NOT installed ({type(exc).__name__}: {exc}); "
                         "this run is not traced\n")


class _AfterTorch(importlib.abc.MetaPathFinder):
    """Wraps torch's loader so the recorder installs right after ``import torch`` completes."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        orig = spec.loader.exec_module

        def exec_module(module):
            orig(module)
            _install_recorder()
        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("HIGGS_TRACE_DIR"):
    if "torch" in sys.modules:
        _install_recorder()
    else:
        sys.meta_path.insert(0, _AfterTorch())

# Chain to the sitecustomize this one shadows (e.g. a distribution's own), if any.
_rest = [p for p in sys.path if os.path.abspath(p or ".") != _here]
_other = importlib.machinery.PathFinder.find_spec("sitecustomize", _rest)
if _other is not None and _other.origin and os.path.dirname(os.path.abspath(_other.origin)) != _here:
    _m = importlib.util.module_from_spec(_other)
    _other.loader.exec_module(_m)
