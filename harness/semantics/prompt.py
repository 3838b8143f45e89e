"""The text side of a sample: what each pipeline's declared conventions say its prompt must be,
and layout-free views (turns, transcripts, supervised text) that two layouts can be compared in.

Rendering follows upstream `boson_multimodal.dataset.chatml_dataset.prepare_chatml_sample`, the
function both in-repo pipelines (and every boson-based pipeline) call: the harness builds the
ChatML messages that a `Conventions` declaration describes for one canonical record and lets
upstream tokenise them, so "declared" and "actual" token ids are comparable element by element.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from boson_multimodal.data_types import AudioContent, ChatMLSample, Message, TextContent
from boson_multimodal.dataset.chatml_dataset import prepare_chatml_sample

from higgs_common.conventions import Conventions

IGNORE = -100
TEXT_KEYS: tuple[str, ...] = ("target", "voice_prompt", "prompt", "other_assistant")


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
    """Token ids -> text exactly (no clean-up of spaces before punctuation, specials kept)."""
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


class RenderError(ValueError):
    """Upstream `prepare_chatml_sample` rejected the declared messages (it returns Nones)."""


@dataclass(frozen=True)
class Rendering:
    """Token ids of one sample as a declaration says they must be.

    input_ids, label_ids: (L,) int64; label_ids is -100 outside trained assistant turns (upstream
    labels are NOT shifted: label_ids[t] == input_ids[t] where supervised).  audio_roles: for
    every audio placeholder in prompt order, "reference" or "target".
    """

    input_ids: torch.Tensor
    label_ids: torch.Tensor
    audio_roles: tuple[str, ...]


def declared_messages(record: Any, conv: Conventions) -> tuple[list[Message], int | None, tuple[str, ...]]:
    """ChatML messages, start_index and audio roles for `record` under `conv` (module docstring)."""
    plain = conv.normalize_transcript(record.text)
    text = conv.transcript_template.format(text=plain)
    ref_text = conv.reference_transcript_template.format(text=conv.normalize_reference_transcript(record.ref_text))
    system = conv.system_message(record)
    ref_audio = AudioContent(audio_url=str(record.ref_audio))
    target_audio: Any = AudioContent(audio_url=str(record.audio))
    if conv.target_turn_text != "none":      # trained text next to the target audio in its assistant turn
        said = TextContent(conv.target_turn_template.format(text=plain))
        target_audio = [said, target_audio] if conv.target_turn_text == "before_audio" else [target_audio, said]
    if conv.voice_prompt == "assistant_turn":
        msgs = [Message("system", system), Message("user", ref_text), Message("assistant", ref_audio),
                Message("user", text), Message("assistant", target_audio)]
        return msgs, (None if conv.trains_voice_prompt else 3), ("reference", "target")
    if conv.voice_prompt == "audio_in_slot":
        msgs = [Message("system", system),
                Message("user", [TextContent(ref_text), ref_audio, TextContent(text)]),
                Message("assistant", target_audio)]
        return msgs, None, ("reference", "target")
    if conv.voice_prompt == "system_message":
        msgs = [Message("system", [TextContent(system), TextContent(ref_text), ref_audio]),
                Message("user", text), Message("assistant", target_audio)]
        return msgs, None, ("reference", "target")
    msgs = [Message("system", system), Message("user", text), Message("assistant", target_audio)]
    return msgs, None, ("target",)


def render_declared(record: Any, conv: Conventions, tokenizer: Any) -> Rendering:
    """What `conv` says the dataset stage must produce for `record` (token ids and audio order).

    Raises RenderError when upstream rejects the messages.
    """
    msgs, start_index, roles = declared_messages(record, conv)
    inputs, labels, audios, _speaker = prepare_chatml_sample(ChatMLSample(messages=msgs, start_index=start_index),
                                                             tokenizer)
    if inputs is None or labels is None or audios is None:
        raise RenderError(f"prepare_chatml_sample rejected the declared messages of sample {record.id!r}")
    return Rendering(torch.tensor(inputs, dtype=torch.long), torch.tensor(labels, dtype=torch.long), roles)


# ----------------------------------------------------------------------------------- turns


@dataclass(frozen=True)
class SpecialIds:
    """Token ids the prompt structure is read from (from the tokenizer and the model config)."""

    start_header: int
    end_header: int
    eot: int
    eom: int
    audio_in: int
    audio_out: int
    audio_bos: int
    audio_out_bos: int
    audio_eos: int
    begin_of_text: int
    pad: int | None

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, model_config: Any) -> "SpecialIds":
        tid = tokenizer.convert_tokens_to_ids
        return cls(start_header=tid("<|start_header_id|>"), end_header=tid("<|end_header_id|>"),
                   eot=tid("<|eot_id|>"), eom=tid("<|eom_id|>"),
                   audio_in=int(model_config.audio_in_token_idx), audio_out=int(model_config.audio_out_token_idx),
                   audio_bos=tid("<|audio_bos|>"), audio_out_bos=tid("<|audio_out_bos|>"),
                   audio_eos=tid("<|audio_eos|>"), begin_of_text=tid("<|begin_of_text|>"),
                   pad=getattr(model_config, "pad_token_id", None))

    def names(self) -> dict[int, str]:
        """id -> token name, for decoding positions into token kinds."""
        out = {self.start_header: "<|start_header_id|>", self.end_header: "<|end_header_id|>",
               self.eot: "<|eot_id|>", self.eom: "<|eom_id|>", self.audio_in: "<|AUDIO|>",
               self.audio_out: "<|AUDIO_OUT|>", self.audio_bos: "<|audio_bos|>",
               self.audio_out_bos: "<|audio_out_bos|>", self.audio_eos: "<|audio_eos|>",
               self.begin_of_text: "<|begin_of_text|>"}
        if self.pad is not None:
            out.setdefault(int(self.pad), "pad")
        return out


@dataclass(frozen=True)
class Turn:
    """One ChatML turn: [start, end) token positions, role, and the audio indices it holds."""

    index: int
    role: str
    start: int
    end: int
    audios: tuple[int, ...]


def parse_turns(input_ids: Sequence[int], ids: SpecialIds, tokenizer: Any) -> list[Turn]:
    """Split a prompt (L,) into turns at `<|start_header_id|>`; positions before the first header
    (`<|begin_of_text|>`) belong to turn 0.  Audio k is the k-th `<|AUDIO|>`/`<|AUDIO_OUT|>`."""
    toks = [int(t) for t in input_ids]
    heads = [i for i, t in enumerate(toks) if t == ids.start_header]
    if not heads:
        return [Turn(0, "?", 0, len(toks), tuple(range(sum(t in (ids.audio_in, ids.audio_out) for t in toks))))]
    bounds = heads + [len(toks)]
    turns, audio = [], 0
    for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
        start = 0 if k == 0 else a
        try:
            close = toks.index(ids.end_header, a, b)
            role = decode(tokenizer, toks[a + 1:close]).strip()
        except ValueError:
            role = "?"
        n = sum(1 for t in toks[start:b] if t in (ids.audio_in, ids.audio_out))
        turns.append(Turn(k, role, start, b, tuple(range(audio, audio + n))))
        audio += n
    return turns


def turn_key(turn: Turn, *, target_audio: int | None, reference_audio: int | None) -> str:
    """Semantic name of a turn: 'target' / 'voice_prompt' (assistant turns holding that audio),
    'other_assistant', or 'prompt' (system and user turns)."""
    if turn.role != "assistant":
        return "prompt"
    if target_audio is not None and target_audio in turn.audios:
        return "target"
    if reference_audio is not None and reference_audio in turn.audios:
        return "voice_prompt"
    return "other_assistant"


def supervised_text(input_ids: torch.Tensor, label_ids: torch.Tensor, *, ids: SpecialIds, tokenizer: Any,
                    target_audio: int | None, reference_audio: int | None) -> dict[str, str]:
    """Per semantic turn key, the text the labels supervise, decoded.

    input_ids, label_ids: (L,).  A supervised position whose label is not its own input token
    (upstream labels are unshifted) is written ``[label 'x' at input 'y']``, so shifted labels
    show even when the supervised token sequence is the same.  Keys: `TEXT_KEYS`; "" = none.
    """
    toks = [int(t) for t in input_ids.tolist()]
    labs = [int(t) for t in label_ids.tolist()]
    parts: dict[str, list[str]] = {k: [] for k in TEXT_KEYS}
    for turn in parse_turns(toks, ids, tokenizer):
        key = turn_key(turn, target_audio=target_audio, reference_audio=reference_audio)
        run: list[int] = []
        for p in range(turn.start, min(turn.end, len(labs))):
            lab = labs[p]
            if lab == IGNORE:
                continue
            if lab == toks[p]:
                run.append(lab)
                continue
            if run:
                parts[key].append(decode(tokenizer, run))
                run = []
            parts[key].append(f"[label {decode(tokenizer, [lab])!r} at input {decode(tokenizer, [toks[p]])!r}]")
        if run:
            parts[key].append(decode(tokenizer, run))
    return {k: "".join(v) for k, v in parts.items()}


def prompt_transcripts(input_ids: torch.Tensor, *, ids: SpecialIds, tokenizer: Any, voice_prompt: str,
                       reference_audio: int | None, system_text: str | None = None) -> dict[str, str | None]:
    """The target and reference transcripts as the model reads them (decoded tokens), located by
    the declared voice-prompt placement rather than guessed from the text.

    * assistant_turn: target = the last user turn; reference = the last user turn before the
      voice prompt's assistant turn.
    * audio_in_slot: in the user turn holding the voice prompt, the text before the
      `<|audio_bos|><|AUDIO|><|audio_eos|>` slot is the reference, the text after it the target.
    * system_message: the system text before the slot, minus `system_text` (the declared system
      message) when it starts with it, is the reference; target = the last user turn.
    * none: target = the last user turn; no reference.
    A turn's content is its tokens after `<|end_header_id|>` and the "\n\n" that upstream puts
    there, without the closing `<|eot_id|>`/`<|eom_id|>`.
    """
    toks = [int(t) for t in input_ids.tolist()]
    turns = parse_turns(toks, ids, tokenizer)
    newline = tokenizer.encode("\n\n", add_special_tokens=False)

    def body(turn: Turn) -> list[int]:
        seg = toks[turn.start:turn.end]
        if ids.end_header in seg:
            seg = seg[seg.index(ids.end_header) + 1:]
        if seg[:len(newline)] == newline:
            seg = seg[len(newline):]
        while seg and seg[-1] in (ids.eot, ids.eom):
            seg = seg[:-1]
        return seg

    users = [t for t in turns if t.role == "user"]
    target = decode(tokenizer, body(users[-1])) if users else None
    reference: str | None = None
    slot = [ids.audio_bos, ids.audio_in, ids.audio_eos]
    holder = next((t for t in turns if reference_audio is not None and reference_audio in t.audios), None)
    if voice_prompt == "assistant_turn" and holder is not None:
        before = [t for t in users if t.index < holder.index]
        reference = decode(tokenizer, body(before[-1])) if before else None
    elif voice_prompt in ("audio_in_slot", "system_message") and holder is not None:
        seg = body(holder)
        cut = _find(seg, slot)
        if cut is not None:
            reference = decode(tokenizer, seg[:cut])
            if voice_prompt == "audio_in_slot":
                target = decode(tokenizer, seg[cut + len(slot):])
            elif system_text and reference.startswith(system_text):
                reference = reference[len(system_text):]
    return {"target_transcript": target, "reference_transcript": reference}


def untemplate(text: str | None, template: str) -> str | None:
    """The `{text}` part of `text` rendered from `template` (prefix and suffix removed); `text`
    unchanged when it does not have the template's prefix and suffix (then it diverges)."""
    if text is None or template == "{text}":
        return text
    prefix, _, suffix = template.partition("{text}")
    if text.startswith(prefix) and text.endswith(suffix) and len(text) >= len(prefix) + len(suffix):
        return text[len(prefix):len(text) - len(suffix)]
    return text


def _find(seq: list[int], pattern: list[int]) -> int | None:
    n = len(pattern)
    for i in range(len(seq) - n + 1):
        if seq[i:i + n] == pattern:
            return i
    return None
