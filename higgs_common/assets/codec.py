"""Random-init upstream `HiggsAudioTokenizer` (the audio codec), saved and loaded like the real one.

Two upstream traps shape this module:

* Hub HuBERT.  `HiggsAudioTokenizer.__init__` always calls
  ``AutoModel.from_pretrained("bosonai/hubert_base", trust_remote_code=True)``, which fails on an
  offline machine.  We build the semantic model locally (a randomly initialised
  `transformers.HubertModel`) and record its `HubertConfig` next to the codec in
  ``<codec>/semantic_model/config.json``.  How :func:`load_audio_tokenizer` decides: **that file
  is the marker**.  If it exists, the codec was built here, its HuBERT weights are inside
  ``model.pth`` (``semantic_model.*`` keys), so the hub call is answered with an empty local
  `HubertModel` of that config which ``load_state_dict`` then fills.  If it does not exist (a
  real downloaded checkpoint), upstream ``load_higgs_audio_tokenizer`` runs completely unchanged.
* K-means on first use.  The RVQ codebooks start as zeros with ``inited=False``; the first
  ``encode()`` (eval mode included) runs k-means on whatever it gets and rewrites them.  We seed
  and encode a fixed synthetic calibration waveform before saving, so every saved codec has
  ``inited=True`` everywhere and encodes deterministically.

Upstream loads with ``load_state_dict(strict=False)``, which would silently keep random weights
for any key missing from ``model.pth``; :func:`load_audio_tokenizer` checks the keys itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from transformers import HubertConfig, HubertModel

import boson_multimodal.audio_processing.higgs_audio_tokenizer as upstream_codec
from boson_multimodal.audio_processing.higgs_audio_tokenizer import (
    HiggsAudioTokenizer,
    load_higgs_audio_tokenizer,
)

from higgs_common.stages import HiggsDiffError

SEMANTIC_MARKER = Path("semantic_model") / "config.json"
CODEC_SAMPLE_RATE = 24000

# The released codec's config.json (24 kHz, hop 8*5*4*2*3 = 960 -> 25 frames/s, 8 x 1024).
FULL_CODEC_CONFIG: dict[str, Any] = dict(
    n_filters=32, D=256, codebook_dim=64, target_bandwidths=[0.5, 1, 1.5, 2, 4],
    ratios=[8, 5, 4, 2, 3], sample_rate=CODEC_SAMPLE_RATE, bins=1024, n_q=8,
    semantic_techer="hubert_base_general",
)
# Same sample rate, same hop (8*10*12 = 960 -> 25 frames/s) and same semantic stride, but fewer
# down-sampling stages (the acoustic encoder doubles its channels per stage); the DISCRETE sizes are
# the released ones, 8 codebooks x 1024 codes (stream BOS/EOS 1024/1025), so precision and indexing
# bugs that only show with codes >= 256 (a bfloat16 round trip is exact below 256) show here too.
TINY_CODEC_CONFIG: dict[str, Any] = dict(
    n_filters=32, D=64, codebook_dim=16, target_bandwidths=[0.5, 1, 1.5, 2, 4],
    ratios=[8, 10, 12], sample_rate=CODEC_SAMPLE_RATE, bins=1024, n_q=8,
    semantic_techer="hubert_base_general",
)
# hidden_size must stay 768: upstream hard-codes semantic_dim=768 for hubert_base_general.
# conv strides (5,2,2,2,2,2,2) keep HuBERT at 50 frames/s on 16 kHz like the real one.
TINY_HUBERT_CONFIG: dict[str, Any] = dict(
    hidden_size=768, num_hidden_layers=1, num_attention_heads=4, intermediate_size=256,
    conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=16,
)
FULL_HUBERT_CONFIG: dict[str, Any] = {}   # HubertConfig() defaults = HuBERT base

# (codec config, HuBERT config, calibration seconds): k-means initialises each codebook from the
# calibration frames, so it needs at least `bins` of them: 1024 codes / 25 frames/s = 41 s -> 48 s.
# "probe": the tiny codec with 4 x 32 codes, for the copy-probe demonstration only
# (higgs_common.assets.copy_probe): a hidden-64 model learns to copy 4 x 5 bits per frame from its
# prompt within a few hundred steps, not 8 x 10 bits.
PROBE_CODEC_CONFIG: dict[str, Any] = dict(TINY_CODEC_CONFIG, bins=32, n_q=4)
CODEC_SIZES = {"tiny": (TINY_CODEC_CONFIG, TINY_HUBERT_CONFIG, 48.0),
               "probe": (PROBE_CODEC_CONFIG, TINY_HUBERT_CONFIG, 4.0),
               "full": (FULL_CODEC_CONFIG, FULL_HUBERT_CONFIG, 60.0)}


class AudioTokenizerLoadError(HiggsDiffError, RuntimeError):
    """A codec folder that does not load into a complete `HiggsAudioTokenizer`."""


class _LocalHubertAutoModel:
    """Stands in for `transformers.AutoModel` inside the upstream codec module during one call."""

    def __init__(self, config: HubertConfig) -> None:
        self.config = config

    def from_pretrained(self, name: str, *args: Any, **kwargs: Any) -> HubertModel:
        del args, kwargs
        if "hubert" not in name:
            raise AudioTokenizerLoadError(f"unexpected semantic model {name!r} requested by HiggsAudioTokenizer")
        return HubertModel(self.config)


@contextlib.contextmanager
def _batched_kmeans(batch_size: int = 8192) -> Iterator[None]:
    """Run upstream's codebook k-means with large distance batches.

    Upstream `kmeans(..., batch_size=64)` computes point-to-centroid distances 64 points at a time;
    with 1024 centroids that is thousands of tiny `torch.cdist` calls (minutes on 2 CPU cores).  The
    batch size only splits the same argmin over rows, so the result is identical; `init_embed_`
    calls the module-level name, which this context swaps for the batched call.
    """
    import functools

    from boson_multimodal.audio_processing.quantization import core_vq_lsx_version as vq

    original = vq.kmeans
    vq.kmeans = functools.partial(original, batch_size=batch_size)
    try:
        yield
    finally:
        vq.kmeans = original


@contextlib.contextmanager
def _local_hubert(config: HubertConfig) -> Iterator[None]:
    original = upstream_codec.AutoModel
    upstream_codec.AutoModel = _LocalHubertAutoModel(config)
    try:
        yield
    finally:
        upstream_codec.AutoModel = original


def calibration_waveform(seconds: float, sr: int = CODEC_SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """A fixed, speech-like-ish signal (voiced harmonics + chirp + noise bursts), float32 (T,)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr), dtype=np.float64) / sr
    f0 = 120.0 + 40.0 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t) ** 2
    chirp = 0.3 * np.sin(2 * np.pi * (200.0 * t + 400.0 * t ** 2 / max(seconds, 1e-3)))
    noise = 0.2 * rng.standard_normal(t.shape) * (np.sin(2 * np.pi * 1.3 * t) > 0.6)
    wav = envelope * voiced * 0.3 + chirp + noise
    return (0.5 * wav / np.max(np.abs(wav))).astype(np.float32)


def build_audio_tokenizer(size: str, seed: int, *, device: str | torch.device = "cpu") -> HiggsAudioTokenizer:
    """A random-init upstream codec with a local random HuBERT; codebooks calibrated (see module doc).

    Weights are always drawn on the CPU; `device` only says where the calibration encode (and its
    k-means) runs: the full codec's 60 s calibration takes minutes on 2 CPU cores and seconds on a
    GPU.  k-means draws on a GPU come from its own generator, so a GPU-calibrated codec is
    deterministic per device but not equal to a CPU-calibrated one (its fingerprint differs).
    """
    if size not in CODEC_SIZES:
        raise ValueError(f"unknown codec size {size!r}; expected one of {sorted(CODEC_SIZES)}")
    codec_cfg, hubert_cfg, calib_seconds = CODEC_SIZES[size]
    device = str(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with _local_hubert(HubertConfig(**hubert_cfg)):
            tok = HiggsAudioTokenizer(**codec_cfg, device=device)
        tok.to(device)
        tok.eval()
        torch.manual_seed(seed + 1)   # k-means draws (randperm/randint) happen in this encode
        with _batched_kmeans():
            codes = tok.encode(calibration_waveform(calib_seconds, seed=seed), CODEC_SAMPLE_RATE)
    not_inited = [n for n, b in tok.named_buffers() if n.endswith(".inited") and not bool(b.all())]
    if not_inited:
        raise AudioTokenizerLoadError(f"codebooks still uninitialised after calibration: {not_inited}")
    assert codes.shape[0] == codec_cfg["n_q"], codes.shape  # (num_codebooks, T)
    tok.higgs_diff_config = dict(codec_cfg)   # what save_audio_tokenizer writes as config.json
    return tok


def save_audio_tokenizer(tok: HiggsAudioTokenizer, out_dir: Path) -> Path:
    """Write ``config.json`` + ``model.pth`` (+ the HuBERT marker config) into `out_dir`."""
    cfg = getattr(tok, "higgs_diff_config", None)
    if cfg is None:
        raise AudioTokenizerLoadError("save_audio_tokenizer needs a codec made by build_audio_tokenizer")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in tok.state_dict().items()}
    torch.save(state, out_dir / "model.pth")
    tok.semantic_model.config.save_pretrained(out_dir / SEMANTIC_MARKER.parent)
    return out_dir


def is_local_build(path: Path) -> bool:
    """True when `path` is a codec built by this module (the semantic-model marker exists)."""
    return (Path(path) / SEMANTIC_MARKER).is_file()


def load_audio_tokenizer(path: Path | str, device: str | torch.device = "cpu") -> HiggsAudioTokenizer:
    """Load through upstream `load_higgs_audio_tokenizer`; local HuBERT only for our own builds."""
    path = Path(path)
    for name in ("config.json", "model.pth"):
        if not (path / name).is_file():
            raise AudioTokenizerLoadError(f"audio tokenizer folder {str(path)!r} has no {name}")
    device = str(device)
    if is_local_build(path):
        hubert_cfg = HubertConfig.from_pretrained(path / SEMANTIC_MARKER.parent)
        with _local_hubert(hubert_cfg):
            tok = load_higgs_audio_tokenizer(str(path), device=device)
    else:
        tok = load_higgs_audio_tokenizer(str(path), device=device)
    try:
        stored = torch.load(path / "model.pth", map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:   # legacy (non-zip) torch.save format cannot be memory-mapped
        stored = torch.load(path / "model.pth", map_location="cpu", weights_only=True)
    missing = sorted(set(tok.state_dict()) - set(stored))
    if missing:
        raise AudioTokenizerLoadError(
            f"{str(path / 'model.pth')!r} lacks {len(missing)} weights (upstream strict=False would keep "
            f"them random): {missing[:5]}")
    not_inited = [n for n, b in tok.named_buffers() if n.endswith(".inited") and not bool(b.all())]
    if not_inited:
        raise AudioTokenizerLoadError(
            f"{str(path)!r}: codebooks not initialised ({not_inited[:3]}); the first encode would run k-means")
    return tok


_FINGERPRINTS: dict[tuple, str] = {}


def _fingerprint_files(path: Path) -> list[Path]:
    files = [path / "config.json", path / "model.pth"]
    if is_local_build(path):
        files.append(path / SEMANTIC_MARKER)
    return files


def codec_fingerprint(path: Path | str) -> str:
    """sha256 over config.json, model.pth (and the HuBERT marker config when present).

    Cached by (resolved path, each file's mtime_ns and size): hashing the full codec's weights
    takes seconds, and the code cache asks for it on every context build.
    """
    path = Path(path).resolve()
    files = _fingerprint_files(path)
    key = (str(path),) + tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    if key not in _FINGERPRINTS:
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + b"\0")
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        _FINGERPRINTS[key] = h.hexdigest()
    return _FINGERPRINTS[key]
