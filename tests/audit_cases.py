"""Data sets holding one case of each kind of bad data the audit must report, built from the shipped wavs.

`bad_manifest(tmp)` writes a canonical manifest folder; `EXPECTED` says, per sample id, which
check must report it, at which level and in which field.  `bom_reference_folder(tmp)` writes a
reference metadata folder whose first transcript file starts with a UTF-8 byte-order mark;
`oversized_tokenizer_model(tmp, assets)` copies the tiny checkpoint and adds tokens to its tokenizer
without resizing the embeddings.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

from higgs_common import DEFAULT_MANIFEST

GOOD = 10   # shipped records kept as they are: the chars/s distribution needs a population

# sample id -> (check, level, field)
EXPECTED: dict[str, tuple[str, str, str]] = {
    "scaled": ("audio.range", "error", "audio"),
    "spike": ("audio.range", "error", "audio"),
    "clipped": ("audio.clipped", "warning", "audio"),
    "noise": ("audio.no_speech_pattern", "warning", "audio"),
    "too_fast": ("text.chars_per_second", "warning", "text"),
    "carriage_return": ("text.whitespace", "warning", "text"),
    "zero_width": ("text.control", "error", "ref_text"),
    "dup_b": ("record.conflicting_transcripts", "error", "text"),
    "cafe": ("file.encoding", "error", "text"),
}


def _shipped() -> list[dict]:
    return [json.loads(line) for line in DEFAULT_MANIFEST.read_text(encoding="utf-8").splitlines() if line.strip()]


def bad_manifest(tmp: Path) -> Path:
    """A manifest folder with GOOD shipped records and one record per case of `EXPECTED`; returns the folder."""
    out = Path(tmp) / "bad"
    wavs = out / "wavs"
    wavs.mkdir(parents=True)
    shipped = _shipped()
    src = DEFAULT_MANIFEST.parent
    for rec in shipped:
        for key in ("audio", "ref_audio"):
            if not (out / rec[key]).exists():
                shutil.copyfile(src / rec[key], out / rec[key])
    lines = [json.dumps(r, ensure_ascii=False).encode("utf-8") for r in shipped[:GOOD]]
    base = shipped[GOOD:]

    def add(i: int, sid: str, wav: np.ndarray | None = None, subtype: str = "FLOAT", **changes: str) -> None:
        rec = dict(base[i], id=sid, **changes)
        if wav is not None:
            sf.write(out / f"wavs/{sid}.wav", wav, 24000, subtype=subtype)
            rec["audio"] = f"wavs/{sid}.wav"
        lines.append(json.dumps(rec, ensure_ascii=False).encode("utf-8"))

    def clip(i: int) -> np.ndarray:
        return sf.read(src / base[i]["audio"], dtype="float32")[0]

    add(0, "scaled", clip(0) * 8.0)
    spike = clip(1)
    spike[len(spike) // 2] = 40.0
    add(1, "spike", spike)
    add(2, "clipped", np.clip(clip(2) * 6.0, -1.0, 1.0), subtype="PCM_16")
    add(3, "noise", np.random.default_rng(0).normal(0.0, 0.15, 3 * 24000).astype(np.float32))
    add(4, "too_fast", text=" ".join([base[4]["text"]] * 5))
    add(5, "carriage_return", text=base[5]["text"] + "\r")
    add(6, "zero_width", ref_text=base[6]["ref_text"].replace(" ", "\u200b", 1))
    add(7, "dup_a")
    add(7, "dup_b", text="A different sentence for the very same clip.")
    cp1252 = dict(base[8], id="cafe", text="The caf\u00e9 serves cr\u00e8me br\u00fbl\u00e9e.")
    lines.append(json.dumps(cp1252, ensure_ascii=False).encode("cp1252"))   # line 20
    assert len(lines) == 20
    (out / "manifest.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return out


def warnings_only_manifest(tmp: Path) -> Path:
    """A manifest folder whose only finding is a warning (a trailing CR in one transcript)."""
    out = Path(tmp) / "warn"
    out.mkdir(parents=True)
    shipped = _shipped()
    shipped[0]["text"] += "\r"
    for r in shipped:
        r["audio"] = str((DEFAULT_MANIFEST.parent / r["audio"]).resolve())
        r["ref_audio"] = str((DEFAULT_MANIFEST.parent / r["ref_audio"]).resolve())
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in shipped), encoding="utf-8")
    return out


def bom_reference_folder(tmp: Path) -> tuple[Path, str]:
    """A reference metadata folder of the shipped data whose first transcript file starts with a BOM;
    returns (folder, that sample's id)."""
    from higgs_common.converters import write_reference_folder
    from higgs_common.manifest import load_manifest

    folder = write_reference_folder(load_manifest(DEFAULT_MANIFEST)[:GOOD], Path(tmp) / "ref_folder")
    first = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))["samples"][0]
    txt = folder / first["transcript_file"]
    txt.write_bytes(b"\xef\xbb\xbf" + txt.read_bytes())
    return folder, first["id"]


def oversized_tokenizer_model(tmp: Path, model: Path, extra: int = 8) -> Path:
    """A copy of checkpoint `model` whose tokenizer has `extra` added tokens beyond its embedding rows."""
    from transformers import AutoTokenizer

    out = Path(tmp) / "model_added_tokens"
    shutil.copytree(model, out)
    tok = AutoTokenizer.from_pretrained(str(out))
    tok.add_tokens([f"<new_token_{i}>" for i in range(extra)])
    tok.save_pretrained(str(out))
    return out
