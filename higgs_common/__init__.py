"""Neutral code both pipelines and the harness use: offline assets, sample data, the stage contract.

Nothing in here imports `reference_impl`, `custom_impl` or `harness`.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
DEFAULT_MANIFEST = DATA_DIR / "manifest.jsonl"
