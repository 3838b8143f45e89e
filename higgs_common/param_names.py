"""Canonical parameter names and LoRA target matching, shared by every tool that lines up two models.

Two pipelines that train the same checkpoint name its parameters differently: DDP adds
``module.``, ``torch.compile`` adds ``_orig_mod.``, peft adds ``base_model.model.`` and splits a
wrapped linear into ``<name>.base_layer.weight`` plus ``<name>.lora_A.<adapter>.weight``, and a
pipeline's own wrapper adds an attribute (``model.``).  `canonical_name` removes the first three
kinds and peft's per-adapter key; `common_prefix_alignment` finds the wrapper attribute by
comparing two name sets.  `lora_target_matches` says whether a peft ``target_modules`` entry wraps
a module, the way peft itself decides (``peft.tuners.tuners_utils.check_target_module_exists``:
exact name, or the name ends with ``"." + target``; a regex when the whole list is one string).
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

# Prefixes added by wrappers that do not change what a parameter is (outermost first, repeated).
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.", "base_model.model.")
# peft's adapter key: inside a module (`lora_A.<key>.weight`: a component follows) or, for the
# embedding LoRA parameters, last (`lora_embedding_A.<key>`).  So `lora_A.weight` has no key left
# and `canonical_name` is idempotent.
_ADAPTER_KEY = re.compile(r"\.(lora_[AB]|lora_magnitude_vector)\.[^.]+(?=\.)|\.(lora_embedding_[AB])\.[^.]+$")


def canonical_name(name: str, adapter_name: str | None = None) -> str:
    """``module._orig_mod.base_model.model.x.q_proj.lora_A.default.weight`` -> ``x.q_proj.lora_A.weight``.

    Removes wrapper prefixes (DDP, torch.compile, peft; also inside the name, where a compiled
    sub-module sits), peft's ``.base_layer`` and the adapter key after ``lora_A``/``lora_B``
    (any key, or only `adapter_name` when given).  Idempotent.
    """
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    name = name.replace("._orig_mod.", ".").replace(".base_layer.", ".")
    if adapter_name is None:
        name = _ADAPTER_KEY.sub(lambda m: "." + (m.group(1) or m.group(2)), name)
    else:
        name = re.sub(rf"\.(lora_[AB]|lora_embedding_[AB]|lora_magnitude_vector)\.{re.escape(adapter_name)}(?=\.|$)",
                      lambda m: "." + m.group(1), name)
    return name


def common_prefix_alignment(a: Iterable[str], b: Iterable[str]) -> tuple[str, str]:
    """The leading components to drop from names of `a` and of `b` so that the most names agree.

    Returns ``(prefix_a, prefix_b)`` (each ``""`` or ending in ``"."``), e.g. ``("model.", "")``
    when one pipeline wraps the model in an object holding it as ``.model``.  Tries every leading
    dotted prefix (up to three components) that all names of a side share.
    """
    a, b = [canonical_name(n) for n in a], [canonical_name(n) for n in b]

    def shared_prefixes(names: Sequence[str]) -> list[str]:
        out = [""]
        if not names:
            return out
        parts = names[0].split(".")
        for k in range(1, min(4, len(parts))):
            p = ".".join(parts[:k]) + "."
            if all(n.startswith(p) for n in names):
                out.append(p)
        return out

    best, best_hits = ("", ""), -1
    for pa in shared_prefixes(a):
        sa = {n[len(pa):] for n in a}
        for pb in shared_prefixes(b):
            hits = len(sa & {n[len(pb):] for n in b})
            if hits > best_hits:
                best, best_hits = (pa, pb), hits
    return best


def lora_target_matches(module_name: str, targets: str | Sequence[str]) -> bool:
    """Whether peft would wrap the module called `module_name` for ``target_modules=targets``.

    A string is a regex matched against the whole name (``re.fullmatch``); a list matches a module
    whose name equals an entry or ends with ``"." + entry`` (so ``self_attn.q_proj`` matches
    ``model.layers.0.self_attn.q_proj``).  Follows peft 0.17 ``check_target_module_exists``.
    """
    module_name = canonical_name(module_name)
    if isinstance(targets, str):
        return re.fullmatch(targets, module_name) is not None
    return any(module_name == t or module_name.endswith("." + t) for t in targets)
