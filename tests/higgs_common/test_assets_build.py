"""The offline checkpoint builder: deterministic, atomic, loadable through the real loaders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from higgs_common import REPO_ROOT
from higgs_common.assets import build as build_mod
from higgs_common.assets.build import build_assets, full_parameter_count, main, parameter_count
from higgs_common.assets.codec import (
    AudioTokenizerLoadError,
    calibration_waveform,
    codec_fingerprint,
    load_audio_tokenizer,
)
from higgs_common.assets.model import FULL_PARAMETERS_APPROX
from higgs_common.assets.paths import (
    ASSETS_ENV,
    BUILD_VERSION,
    AssetPaths,
    default_assets_dir,
    ensure_default_assets,
)

WAVE = calibration_waveform(0.8, seed=11)   # fixed waveform, not the calibration one


@pytest.fixture(scope="module")
def twin_builds(tmp_path_factory) -> tuple[AssetPaths, AssetPaths]:
    root = tmp_path_factory.mktemp("twins")
    return build_assets(root / "a", seed=0), build_assets(root / "b", seed=0)


def test_layout_like_a_release(twin_builds):
    a, _ = twin_builds
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (a.model / name).is_file(), name
    for name in ("config.json", "model.pth", "semantic_model/config.json"):
        assert (a.audio_tokenizer / name).is_file(), name
    info = a.build_info()
    assert info["build_version"] == BUILD_VERSION and info["size"] == "tiny" and info["seed"] == 0
    assert info["codec_fingerprint"] == codec_fingerprint(a.audio_tokenizer)
    assert not [p for p in a.root.parent.iterdir() if ".tmp-" in p.name], "temp build folders left behind"


def test_same_seed_gives_byte_identical_weights(twin_builds):
    a, b = twin_builds
    assert (a.model / "model.safetensors").read_bytes() == (b.model / "model.safetensors").read_bytes()
    assert (a.model / "tokenizer.json").read_bytes() == (b.model / "tokenizer.json").read_bytes()
    assert (a.model / "config.json").read_bytes() == (b.model / "config.json").read_bytes()
    sa = torch.load(a.audio_tokenizer / "model.pth", weights_only=True)
    sb = torch.load(b.audio_tokenizer / "model.pth", weights_only=True)
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)
    assert codec_fingerprint(a.audio_tokenizer) == codec_fingerprint(b.audio_tokenizer)


def test_same_seed_gives_identical_codes(twin_builds):
    a, b = twin_builds
    ca = load_audio_tokenizer(a.audio_tokenizer).encode(WAVE, 24000)
    cb = load_audio_tokenizer(b.audio_tokenizer).encode(WAVE, 24000)
    assert ca.shape == (8, 20)                                # (num_codebooks, 0.8 s * 25 fps)
    torch.testing.assert_close(ca, cb, rtol=0, atol=0)
    assert int(ca.max()) < 1024 and int(ca.min()) >= 0
    assert len(torch.unique(ca)) > 4, "codes should vary over a non-stationary waveform"


def test_other_seed_gives_other_weights(twin_builds, tmp_path):
    a, _ = twin_builds
    c = build_assets(tmp_path / "c", seed=1)
    wa, wc = load_file(a.model / "model.safetensors"), load_file(c.model / "model.safetensors")
    assert wa.keys() == wc.keys()
    assert any(not torch.equal(wa[k], wc[k]) for k in wa if wa[k].std() > 0)
    assert codec_fingerprint(a.audio_tokenizer) != codec_fingerprint(c.audio_tokenizer)


def test_loads_through_the_public_loaders(twin_builds):
    from transformers import AutoTokenizer

    from boson_multimodal.model.higgs_audio import HiggsAudioConfig, HiggsAudioModel

    a, _ = twin_builds
    tok = AutoTokenizer.from_pretrained(str(a.model))
    cfg = HiggsAudioConfig.from_pretrained(str(a.model))
    model = HiggsAudioModel.from_pretrained(str(a.model))
    assert cfg.audio_in_token_idx == tok.convert_tokens_to_ids("<|AUDIO|>")
    assert cfg.audio_out_token_idx == tok.convert_tokens_to_ids("<|AUDIO_OUT|>")
    # the released discrete sizes: 8 codebooks x 1024 codes, stream BOS/EOS 1024/1025
    assert cfg.audio_num_codebooks == 8 and cfg.audio_codebook_size == 1024
    assert (cfg.audio_stream_bos_id, cfg.audio_stream_eos_id) == (1024, 1025)
    assert model.config.text_config.vocab_size == len(tok)
    reference = load_file(a.model / "model.safetensors")
    loaded = model.state_dict()
    for k, v in reference.items():
        torch.testing.assert_close(loaded[k], v, rtol=0, atol=0, msg=k)


def test_codec_loads_through_upstream_loader(twin_builds, monkeypatch):
    """load_audio_tokenizer really goes through upstream load_higgs_audio_tokenizer."""
    import boson_multimodal.audio_processing.higgs_audio_tokenizer as upstream

    from higgs_common.assets import codec as codec_mod

    a, _ = twin_builds
    calls = []
    real = upstream.load_higgs_audio_tokenizer

    def spy(path, device="cuda"):
        calls.append((path, device))
        return real(path, device=device)

    monkeypatch.setattr(codec_mod, "load_higgs_audio_tokenizer", spy)
    tok = load_audio_tokenizer(a.audio_tokenizer, device="cpu")
    assert calls == [(str(a.audio_tokenizer), "cpu")]
    assert type(tok).__name__ == "HiggsAudioTokenizer" and not tok.training
    assert all(bool(b.all()) for n, b in tok.named_buffers() if n.endswith(".inited"))


def test_checkpoint_without_marker_uses_upstream_hub_hubert(twin_builds, tmp_path, monkeypatch):
    """A real checkpoint (no semantic_model/ marker) loads unchanged: the hub HuBERT is asked for."""
    import shutil

    import boson_multimodal.audio_processing.higgs_audio_tokenizer as upstream
    from transformers import HubertConfig, HubertModel

    a, _ = twin_builds
    real_like = tmp_path / "codec"
    real_like.mkdir()
    for name in ("config.json", "model.pth"):
        shutil.copy(a.audio_tokenizer / name, real_like / name)
    asked = []
    hubert_cfg = HubertConfig.from_pretrained(a.audio_tokenizer / "semantic_model")

    class FakeHub:
        @staticmethod
        def from_pretrained(name, **kwargs):
            asked.append(name)
            return HubertModel(hubert_cfg)

    monkeypatch.setattr(upstream, "AutoModel", FakeHub)
    tok = load_audio_tokenizer(real_like)
    assert asked == ["bosonai/hubert_base"]
    torch.testing.assert_close(tok.encode(WAVE, 24000),
                               load_audio_tokenizer(a.audio_tokenizer).encode(WAVE, 24000), rtol=0, atol=0)


def test_missing_codec_weights_are_an_error(twin_builds, tmp_path):
    import shutil

    a, _ = twin_builds
    broken = tmp_path / "codec"
    shutil.copytree(a.audio_tokenizer, broken)
    state = torch.load(broken / "model.pth", weights_only=True)
    del state["fc_prior.weight"]
    torch.save(state, broken / "model.pth")
    with pytest.raises(AudioTokenizerLoadError, match="fc_prior.weight"):
        load_audio_tokenizer(broken)
    (broken / "model.pth").unlink()
    with pytest.raises(AudioTokenizerLoadError, match="model.pth"):
        load_audio_tokenizer(broken)


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    def crash(tmp, **kwargs):
        (tmp / "model").mkdir(parents=True)
        (tmp / "model" / "config.json").write_text("{}")
        raise KeyboardInterrupt("simulated crash mid-build")

    monkeypatch.setattr(build_mod, "_build_into", crash)
    with pytest.raises(KeyboardInterrupt):
        build_assets(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_rebuild_keeps_the_old_checkpoint(twin_builds, tmp_path, monkeypatch):
    import shutil

    a, _ = twin_builds
    out = tmp_path / "out"
    shutil.copytree(a.root, out)
    monkeypatch.setattr(build_mod, "_build_into", lambda tmp, **kw: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        build_assets(out)
    assert AssetPaths.at(out).is_complete("tiny", 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_ensure_default_assets_honours_env_and_builds_once(tmp_path, monkeypatch, twin_builds):
    import shutil

    a, _ = twin_builds
    target = tmp_path / "assets"
    monkeypatch.setenv(ASSETS_ENV, str(target))
    assert default_assets_dir() == target
    shutil.copytree(a.root, target)                      # a finished build is reused as is
    stamp = (target / "model" / "model.safetensors").stat().st_mtime_ns
    assert ensure_default_assets().root == target
    assert (target / "model" / "model.safetensors").stat().st_mtime_ns == stamp

    info = json.loads((target / "build_info.json").read_text())
    info["build_version"] = BUILD_VERSION - 1            # an older builder's output is rebuilt
    (target / "build_info.json").write_text(json.dumps(info))
    paths = ensure_default_assets()
    assert paths.is_complete("tiny", 0)
    assert (target / "model" / "model.safetensors").read_bytes() == (a.model / "model.safetensors").read_bytes()


def test_default_dir_without_env(monkeypatch):
    monkeypatch.delenv(ASSETS_ENV, raising=False)
    assert default_assets_dir("tiny", 3) == REPO_ROOT / ".cache" / "assets" / "tiny-seed3"


def test_full_size_parameter_count():
    n = full_parameter_count()
    assert abs(n - FULL_PARAMETERS_APPROX) / FULL_PARAMETERS_APPROX < 0.005, n
    assert n == 5_771_283_456


def test_cli_full_on_meta_prints_count_and_writes_nothing(tmp_path, capsys):
    assert main(["--size", "full", "--out", str(tmp_path / "full")]) == 0
    out = capsys.readouterr().out
    assert "5,771,283,456" in out and "5.77 B" in out
    assert not (tmp_path / "full").exists()


def test_cli_help():
    res = subprocess.run([sys.executable, "-m", "higgs_common.assets.build", "--help"],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert res.returncode == 0
    for flag in ("--out", "--size", "--seed", "--meta", "--materialize", "--encode-data", "--info"):
        assert flag in res.stdout


def test_cli_builds_and_reports(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--no-encode-data"]) == 0
    assert AssetPaths.at(out).is_complete("tiny", 0)
    assert "model_parameters" in capsys.readouterr().out
    assert main(["--out", str(out), "--info"]) == 0
    assert '"size": "tiny"' in capsys.readouterr().out


def test_cli_meta_for_tiny_counts_without_writing(tmp_path, capsys):
    assert main(["--meta", "--out", str(tmp_path / "m")]) == 0
    assert f"{parameter_count('tiny'):,}" in capsys.readouterr().out
    assert not (tmp_path / "m").exists()
