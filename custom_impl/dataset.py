"""The custom pipeline's dataset: ChatML JSON -> upstream `ChatMLDatasetSample`s.

Message layout of one zero-shot sample (facts §5):

    system    : text (scene prompt)
    user      : [text(reference transcript), audio(reference clip), text(target transcript)]
    assistant : [audio(target clip)]
    start_index = 0

The reference clip becomes an audio-IN slot (`<|AUDIO|>`) that the model sees only as codes (the
checkpoint skips the Whisper tower); the target clip becomes the one audio-OUT slot
(`<|AUDIO_OUT|>`) and is the only audio label.  The upstream custom pipeline got this wrong in
several silent ways, so this loader makes every role explicit and checks it:

* `prepare_chatml_sample` swallows every exception and returns four Nones -> SampleError here;
* a missing reference clip or transcript is an error (no default sentence is invented);
* every clip goes through `higgs_common.audio_io.load_audio` (missing, corrupt, truncated, empty,
  NaN, silent, longer than `ctx.options["max_audio_seconds"]` (default 30 s), shorter than the
  codec's minimum input (`ctx.code_cache.min_samples`) or below the speech floor
  (`ctx.options["speech_floor_dbfs"]`, default -60 dBFS; `allow_no_speech` only warns) is a
  SampleError; another rate or stereo is resampled / downmixed with a WARNING), even when its
  codes are cached;
* every text of every message is checked for the tokenizer's reserved special-token strings, and
  the reference and target transcripts must hold a letter or digit (`higgs_common.transcripts`;
  this pipeline feeds transcripts to the tokenizer as they are, so that is its normal form);
* after tokenisation the number of `<|AUDIO|>`/`<|AUDIO_OUT|>` placeholders must equal the number
  of audios (otherwise the upstream collator fails later with an IndexError naming nothing);
* the text tokenizer must have the Higgs special tokens (`check_special_tokens`);
* `load_dataset(..., skip_bad_samples=True, skip_log=...)` leaves bad samples out, logging each;
* a sample whose label audio IS its reference audio (same file, same bytes, or same codes) is an
  error, unless the fault `reference-audio-as-label` deliberately re-creates that bug.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import torch
from boson_multimodal.dataset.chatml_dataset import ChatMLDatasetSample, prepare_chatml_sample

from custom_impl.faults import is_on
from higgs_common.assets.text_tokenizer import check_special_tokens, special_token_ids
from higgs_common.audio_io import audio_check_kwargs, load_audio
from higgs_common.skipping import SkipLog, build_or_skip
from higgs_common.stages import DatasetItem, SampleError, StageContext
from higgs_common.transcripts import check_transcript, check_user_text

AUDIO_SAMPLE_RATE = 24000
MESSAGE_LAYOUT = (
    "system: text(scene)",
    "user: [text(ref transcript), audio(reference, <|AUDIO|>), text(target transcript)]",
    "assistant: [audio(target, <|AUDIO_OUT|>)]",
    "start_index: 0",
)


def load_chatml_json(path: Path) -> list[dict[str, Any]]:
    """Read the ChatML JSON list; anything but a list of objects is a SampleError."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SampleError(f"not valid JSON ({exc.msg} at line {exc.lineno})", path=path) from exc
    if not isinstance(data, list):
        raise SampleError(f"expected a JSON list of samples, got {type(data).__name__}", path=path)
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or not isinstance(entry.get("messages"), list):
            raise SampleError("sample is not an object with a 'messages' list",
                              sample_id=f"#{i}", field="messages", path=path)
    return data


def sample_id_of(entry: dict[str, Any], index: int) -> str:
    """Sample id from `misc.sample_id` / `misc.id` / top-level `id`, else the list position."""
    misc = entry.get("misc") or {}
    for value in (misc.get("sample_id"), misc.get("id"), entry.get("id")):
        if isinstance(value, str) and value:
            return value
    return f"#{index}"


def _resolve(url: str, base: Path) -> Path:
    p = Path(url)
    return p if p.is_absolute() else (base / p).resolve()


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Layout:
    """Where the reference and target live inside one sample's messages (validated)."""

    def __init__(self, entry: dict[str, Any], sid: str, path: Path) -> None:
        msgs = entry["messages"]
        start_index = entry.get("start_index")
        self.ref_url: str | None = None
        self.ref_text: str | None = None
        self.target_url: str | None = None
        self.target_text: str | None = None
        # audio order as prepare_chatml_sample will see it: ("reference"|"target", url)
        self.audio_roles: list[str] = []
        for turn, msg in enumerate(msgs):
            role = msg.get("role") if isinstance(msg, dict) else None
            content = msg.get("content") if isinstance(msg, dict) else None
            items = content if isinstance(content, list) else [content]
            for j, item in enumerate(items):
                if not (isinstance(item, dict) and item.get("type") == "audio"):
                    continue
                url = item.get("audio_url")
                where = f"messages[{turn}].content[{j}].audio_url"
                if not isinstance(url, str) or not url:
                    raise SampleError("audio item without an audio_url", sample_id=sid, field=where, path=path)
                if role in ("user", "system"):
                    if self.ref_url is not None:
                        raise SampleError("more than one input (reference) audio; zero-shot expects one",
                                          sample_id=sid, field=where, path=path)
                    self.ref_url, self.ref_field = url, where
                    before = [t for it in items[:j] if isinstance(it, dict) and it.get("type") == "text"
                              for t in [it.get("text")]]
                    after = [t for it in items[j + 1:] if isinstance(it, dict) and it.get("type") == "text"
                             for t in [it.get("text")]]
                    self.ref_text = before[0] if before else None
                    self.target_text = after[0] if after else None
                    self.audio_roles.append("reference")
                elif role == "assistant":
                    if start_index is not None and turn < start_index:
                        raise SampleError("assistant audio before start_index would not be a label",
                                          sample_id=sid, field=where, path=path)
                    if self.target_url is not None:
                        raise SampleError("more than one target audio", sample_id=sid, field=where, path=path)
                    self.target_url, self.target_field = url, where
                    self.audio_roles.append("target")
                else:
                    raise SampleError(f"audio in a {role!r} turn", sample_id=sid, field=where, path=path)
        if self.ref_url is None:
            raise SampleError("zero-shot sample has no reference audio in the user turn",
                              sample_id=sid, field="user.content[audio]", path=path)
        if not (isinstance(self.ref_text, str) and self.ref_text.strip()):
            raise SampleError("zero-shot sample has no reference transcript before the reference audio",
                              sample_id=sid, field="user.content[text:ref]", path=path)
        if not (isinstance(self.target_text, str) and self.target_text.strip()):
            raise SampleError("zero-shot sample has no target transcript after the reference audio",
                              sample_id=sid, field="user.content[text:target]", path=path)
        if self.target_url is None:
            raise SampleError("zero-shot sample has no target audio in an assistant turn",
                              sample_id=sid, field="assistant.content[audio]", path=path)


def check_reference_not_label(sid: str, ref_path: Path, target_path: Path, ref_codes: torch.Tensor,
                              target_codes: torch.Tensor, *, field: str, path: Path) -> None:
    """Raise SampleError if the label audio is the reference audio (fault a, caught).

    Compared three ways because each one alone misses a real case: the same path, a copy of the
    file under another name (same bytes), or the same codes (e.g. the loader encoded the wrong file).
    """
    same = ref_path == target_path
    if not same and ref_path.exists() and target_path.exists():
        same = _file_digest(ref_path) == _file_digest(target_path)
    if not same:
        same = ref_codes.shape == target_codes.shape and bool(torch.equal(ref_codes, target_codes))
    if same:
        raise SampleError(
            f"label (target) audio is the reference audio ({ref_path.name}); the model would learn "
            f"to copy its voice prompt", sample_id=sid, field=field, path=path)


def check_texts(entry: dict[str, Any], layout: _Layout, sid: str, path: Path, tokenizer: Any) -> None:
    """Reserved special tokens in any message text; empty reference / target transcripts.

    Field names: the two transcripts as `_Layout` names them, any other text as its JSON path.
    """
    check_transcript(layout.ref_text, tokenizer=tokenizer, sample_id=sid, field="user.content[text:ref]", path=path)
    check_transcript(layout.target_text, tokenizer=tokenizer, sample_id=sid, field="user.content[text:target]",
                     path=path)
    for turn, msg in enumerate(entry["messages"]):
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, str):
            check_user_text(content, tokenizer=tokenizer, sample_id=sid, field=f"messages[{turn}].content", path=path)
            continue
        for j, item in enumerate(content if isinstance(content, list) else [content]):
            if isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
                check_user_text(item["text"], tokenizer=tokenizer, sample_id=sid,
                                field=f"messages[{turn}].content[{j}].text", path=path)


def check_placeholders(input_tokens: Sequence[int], n_audio: int, tokenizer: Any, *, sid: str, path: Path) -> None:
    """One `<|AUDIO|>` / `<|AUDIO_OUT|>` placeholder per audio, or a SampleError (field `messages`)."""
    ids = special_token_ids(tokenizer)
    placeholders = {ids["<|AUDIO|>"], ids["<|AUDIO_OUT|>"]}
    found = sum(1 for t in input_tokens if t in placeholders)
    if found != n_audio:
        raise SampleError(f"the tokenised prompt has {found} audio placeholder(s) for {n_audio} audio(s); the "
                          f"collator would fail (IndexError in get_audio_codes)", sample_id=sid, field="messages",
                          path=path)


def build_item(entry: dict[str, Any], index: int, ctx: StageContext, path: Path) -> DatasetItem:
    """One ChatML entry -> DatasetItem with explicit reference / target indices."""
    path = Path(path)
    sid = sample_id_of(entry, index)
    layout = _Layout(entry, sid, path)
    check_texts(entry, layout, sid, path, ctx.text_tokenizer)
    base = path.parent
    ref_path = _resolve(layout.ref_url, base)
    target_path = _resolve(layout.target_url, base)
    checks = audio_check_kwargs(ctx.options, min_samples=ctx.code_cache.min_samples)
    for p, fld in ((ref_path, layout.ref_field), (target_path, layout.target_field)):
        if not p.is_file():
            raise SampleError(f"audio file not found: {p}", sample_id=sid, field=fld, path=path)
        # Validate (and log any resample/downmix) on every load, not only on a code-cache miss.
        load_audio(p, sample_id=sid, field=fld, target_sr=AUDIO_SAMPLE_RATE, **checks)

    # prepare_chatml_sample mutates dicts (NaN cleaning) -> hand it a copy with resolved urls.
    clean = json.loads(json.dumps(entry))
    for msg in clean["messages"]:
        content = msg.get("content")
        for item in content if isinstance(content, list) else [content]:
            if isinstance(item, dict) and item.get("type") == "audio":
                item["audio_url"] = str(_resolve(item["audio_url"], base))
    input_tokens, label_tokens, audio_contents, _speaker = prepare_chatml_sample(clean, ctx.text_tokenizer)
    if input_tokens is None or label_tokens is None or audio_contents is None:
        # Upstream catches every exception (dacite type errors, bad content) and returns Nones.
        raise SampleError("prepare_chatml_sample rejected the sample (returned None): malformed messages",
                          sample_id=sid, field="messages", path=path)
    if len(audio_contents) != len(layout.audio_roles):
        raise SampleError(f"prepare_chatml_sample found {len(audio_contents)} audios, layout has "
                          f"{len(layout.audio_roles)}", sample_id=sid, field="messages", path=path)
    check_placeholders(input_tokens, len(audio_contents), ctx.text_tokenizer, sid=sid, path=path)

    ref_index = layout.audio_roles.index("reference")
    target_index = layout.audio_roles.index("target")
    ref_codes = ctx.code_cache.codes(ref_path, sample_id=sid, field=layout.ref_field)  # (C, T_ref)
    if is_on(ctx.faults, "reference-audio-as-label"):
        # FAULT (a): the label slot is filled from the reference clip; the guard below did not
        # exist upstream, so it is skipped to reproduce the bug faithfully.
        target_codes = ctx.code_cache.codes(ref_path, sample_id=sid, field=layout.ref_field)
        label_source = ref_path
    else:
        target_codes = ctx.code_cache.codes(target_path, sample_id=sid, field=layout.target_field)
        check_reference_not_label(sid, ref_path, target_path, ref_codes, target_codes,
                                  field=layout.target_field, path=path)
        label_source = target_path

    codes_by_index = {ref_index: ref_codes, target_index: target_codes}
    codes = [codes_by_index[i].long() for i in range(len(layout.audio_roles))]  # each (C, T_i)
    starts = torch.tensor([0] + [c.shape[1] for c in codes[:-1]], dtype=torch.long).cumsum(0)
    n = len(codes)
    sample = ChatMLDatasetSample(
        input_ids=torch.tensor(input_tokens, dtype=torch.long),
        label_ids=torch.tensor(label_tokens, dtype=torch.long),
        audio_ids_concat=torch.cat(codes, dim=1),                  # (C, sum T_i), prompt order
        audio_ids_start=starts,                                    # (n_audio,)
        # Whisper is off (skip_audio_tower), so no waveforms travel: empty but well-formed.
        audio_waveforms_concat=torch.zeros(0, dtype=torch.float32),
        audio_waveforms_start=torch.zeros(0, dtype=torch.long),
        audio_sample_rate=torch.full((n,), float(AUDIO_SAMPLE_RATE)),
        audio_speaker_indices=torch.full((n,), -1, dtype=torch.long),
        audio_label_ids_concat=None,
    )
    return DatasetItem(
        sample_id=sid,
        sample=sample,
        target_audio_index=target_index,
        reference_audio_index=ref_index,
        label_audio_indices=(target_index,),
        extra={"reference_audio": str(ref_path), "target_audio": str(target_path),
               "label_audio_source": str(label_source), "source": str(path),
               "speaker": entry.get("speaker")},
    )


def load_dataset(path: Path, ctx: StageContext, *, skip_bad_samples: bool = False,
                 skip_log: SkipLog | None = None) -> list[DatasetItem]:
    """All samples of a ChatML JSON file, in order.

    A bad sample raises its SampleError; with `skip_bad_samples` it is left out and recorded in
    `skip_log` instead.  No sample left is itself an error.
    """
    path = Path(path)
    check_special_tokens(ctx.text_tokenizer, ctx.model_path)
    entries = load_chatml_json(path)
    items = build_or_skip(range(len(entries)), lambda i: build_item(entries[i], i, ctx, path),
                          skip=skip_bad_samples, skip_log=skip_log)
    if not items:
        raise SampleError(f"no usable samples ({len(entries)} in the file)", field="messages", path=path)
    return items


def shard(items: Sequence[DatasetItem], rank: int, world_size: int) -> list[DatasetItem]:
    """Contiguous shard (rank r gets items [r*n/w, (r+1)*n/w)), used by ddp_backward."""
    n = len(items)
    per = n // world_size
    return list(items[rank * per:(rank + 1) * per])
