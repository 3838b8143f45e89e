"""Offline checkpoint: a random-init Higgs Audio v2 model, text tokenizer and audio codec.

Built by ``python -m higgs_common.assets.build`` (or on first use by `ensure_default_assets`) and
laid out like the released checkpoint, so every loader runs its real code path.  Only the cheap
path helpers are imported here; the builders (`text_tokenizer`, `model`, `codec`) import
boson_multimodal and are loaded on demand.
"""

from higgs_common.assets.paths import AssetPaths, default_assets_dir, ensure_default_assets

__all__ = ["AssetPaths", "default_assets_dir", "ensure_default_assets"]
