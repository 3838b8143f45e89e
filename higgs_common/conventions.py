"""What a pipeline declares about itself: the conventions the harness compares it under.

Two correct Higgs Audio pipelines can still differ on purpose: where the voice prompt goes, which
turns are trained, whether the collator applies the delay pattern, how audio labels start, how the
loss is reduced.  Each adapter (`<pipeline>.stages`, see `higgs_common.stages`) exports one
`Conventions` object, `CONVENTIONS`, that says which choice it made.  The harness then

* derives every expected difference between two pipelines from their two declarations (a
  difference between declarations is expected, with a reason generated from them), and
* checks each pipeline against its own declaration (a pipeline that declares the delay pattern on
  and collates without it diverges, with that as the cause).

Vocabulary (each value names an upstream behaviour, so a user can look it up):

voice_prompt
    ``"assistant_turn"``: the reference clip is an earlier assistant turn, i.e. an
    ``<|AUDIO_OUT|>`` span preceded by a user turn with its transcript (train-higgs-audio's
    zero-shot layout).  ``"audio_in_slot"``: the clip is an ``<|AUDIO|>`` slot inside the user
    turn, between the reference transcript and the target transcript.  ``"system_message"``:
    the clip is an ``<|AUDIO|>`` slot at the end of the system message, after the reference
    transcript.  ``"none"``: no voice prompt (single-speaker training).
trained_turns
    Which assistant turns carry labels: ``{"target"}`` or ``{"target", "voice_prompt"}``
    (upstream `prepare_chatml_sample` labels assistant turns at or after ``start_index``).
delay_pattern
    Whether the collator applies the delay pattern (boson_multimodal `build_delay_pattern_mask`)
    to audio codes; ``"model_config"`` means "as the checkpoint's ``use_delay_pattern`` says".
audio_label_layout
    Per audio-out segment, ``label_audio_ids`` is ``[BOS, codes, EOS]`` (``"bos_first"``,
    train-higgs-audio's ``label_audio_ids = audio_out_ids``) or ``[-100, codes, EOS]``
    (``"ignore_first"``, upstream `HiggsAudioSampleCollator`).
mask_audio_out_token_label
    The upstream collator argument of that name: True masks the ``<|AUDIO_OUT|>`` token's text
    label with -100.
normalize_transcript / normalize_reference_transcript
    The function the pipeline applies to the target / reference transcript before tokenising
    (identity for raw text).  The harness applies it to the canonical record and compares.
system_message
    The system turn's text for a canonical record (scene prompt, instruction).
loss
    See `LossConventions`.
transcript_template / reference_transcript_template
    The instruction text around the (normalised) transcript in the prompt, as a format string with
    one ``{text}`` (e.g. ``"Please read aloud: {text}"``); ``"{text}"`` for the bare transcript.
target_turn_text
    Text in the target's assistant turn next to the audio (trained with it): ``"none"``,
    ``"before_audio"`` or ``"after_audio"``; the text is ``target_turn_template`` (``{text}`` =
    the normalised transcript).
FromConfig
    Any field above may be ``FromConfig("section.setting")``: a value the pipeline decides at run
    time, read from its `effective_config` of this run (`Conventions.resolved`).
config_notes
    {effective_config key: (value, why)}: this pipeline's value of a setting no other convention
    determines, and why (e.g. ``"collator.class"``, ``"distributed.find_unused_parameters"``).  A
    configuration difference at a noted key is expected while every noting side really has the
    noted value, with the note as its reason; any other undeclared difference diverges.  A value
    that depends on the device type is a `PerDevice` (e.g. autocast only on CUDA).

All fields are plain data or pure functions of their arguments, so two adapters' declarations can
be compared and printed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Union

VOICE_PROMPT_PLACEMENTS: tuple[str, ...] = ("assistant_turn", "audio_in_slot", "system_message", "none")
TRAINABLE_TURNS: tuple[str, ...] = ("target", "voice_prompt")
AUDIO_LABEL_LAYOUTS: tuple[str, ...] = ("bos_first", "ignore_first")
TARGET_TURN_TEXT: tuple[str, ...] = ("none", "before_audio", "after_audio")
TEXT_REDUCTIONS: tuple[str, ...] = ("token_mean",)
AUDIO_REDUCTIONS: tuple[str, ...] = ("codebook_mean", "token_mean")
TOTALS: tuple[str, ...] = ("sum", "sum_positive", "mean")
AUDIO_SHIFT_SCOPES: tuple[str, ...] = ("segment", "stream")
AUDIO_SHIFTS: tuple[str, ...] = ("next_frame", "none")
ACCUMULATIONS: tuple[str, ...] = ("global_token_mean", "micro_batch_mean")
DELAY_FROM_MODEL_CONFIG = "model_config"


# Declarations a pipeline may truthfully make that no training recipe should: effective-config key ->
# (that value, the sound one, what the first does to training).  The config stage reports a side that
# declares one as a divergence.
DEFECTIVE_DECLARATIONS: dict[str, tuple[Any, Any, str]] = {
    "loss.audio_shift": ("none", "next_frame",
                         "audio logits are scored against the codes the model was fed at the same position (no "
                         "next-frame shift): a copy task; the audio loss falls fast and the model learns nothing "
                         "about the next frame"),
}


class ConventionsError(ValueError):
    """A `Conventions` declaration that is not one of the vocabulary's values, or contradicts itself."""


def identity(text: str) -> str:
    """Raw transcript: what the pipeline tokenises is exactly the record's text."""
    return text


@dataclass(frozen=True)
class FromConfig:
    """A convention the pipeline decides at run time: the value of `key` ("section.setting") in its
    effective_config of this run.  Raises ConventionsError (naming the key) when it is absent."""

    key: str

    def read(self, effective: Mapping[str, Any]) -> Any:
        section, _, name = self.key.partition(".")
        try:
            return effective[section][name]
        except (KeyError, TypeError):
            raise ConventionsError(f"FromConfig({self.key!r}): the effective configuration has no {self.key!r}") \
                from None


def _check(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if isinstance(value, FromConfig):
        return
    if value not in allowed:
        raise ConventionsError(f"{name}={value!r}: expected one of {allowed}")


@dataclass(frozen=True)
class LossConventions:
    """How the loss is computed and reduced (the harness recomputes it from these to check).

    text_reduction
        ``"token_mean"``: mean next-token cross-entropy over supervised text tokens of
        `expanded_labels` (``logits[:, t]`` scores ``labels[:, t + 1]``).
    audio_reduction
        ``"codebook_mean"``: per codebook, the mean CE over that codebook's supervised frames, then
        the mean over codebooks that have any; ``"token_mean"``: one mean over every supervised
        (frame, codebook) pair.
    total
        ``"sum"``: text + audio; ``"sum_positive"``: each term added only when it is > 0
        (train-higgs-audio's ``if loss.item() > 0``); ``"mean"``: the mean of the terms present, i.e.
        (text + audio) / the number of terms with a supervised token (a hand-written
        ``total_loss / num_losses``).
    audio_shift
        ``"next_frame"``: ``audio_logits[t]`` scores the NEXT frame's codes (upstream's next-token
        objective); ``"none"``: ``audio_logits[t]`` scores ``label_audio_ids[:, t]``, the codes fed at
        that same position (a copy task: see `DEFECTIVE_DECLARATIONS`).
    audio_shift_scope
        ``"segment"``: ``audio_logits[t]`` scores ``label_audio_ids[:, t + 1]`` only inside one
        audio-out segment; ``"stream"``: across the whole concatenated stream of the batch
        (segment and sample boundaries included).
    accumulation
        How gradient accumulation and DDP normalise: ``"global_token_mean"`` (denominators are the
        supervised-token counts of the whole global batch, so k micro-batches of b equal one batch
        of k*b) or ``"micro_batch_mean"`` (each micro-batch's own mean, averaged).
    """

    text_reduction: str = "token_mean"
    audio_reduction: str = "codebook_mean"
    total: str = "sum"
    audio_shift_scope: str = "segment"
    accumulation: str = "global_token_mean"
    audio_shift: str = "next_frame"

    def __post_init__(self) -> None:
        _check("loss.text_reduction", self.text_reduction, TEXT_REDUCTIONS)
        _check("loss.audio_reduction", self.audio_reduction, AUDIO_REDUCTIONS)
        _check("loss.total", self.total, TOTALS)
        _check("loss.audio_shift_scope", self.audio_shift_scope, AUDIO_SHIFT_SCOPES)
        _check("loss.accumulation", self.accumulation, ACCUMULATIONS)
        _check("loss.audio_shift", self.audio_shift, AUDIO_SHIFTS)

    def to_json(self) -> dict[str, str]:
        return {"text_reduction": self.text_reduction, "audio_reduction": self.audio_reduction,
                "total": self.total, "audio_shift_scope": self.audio_shift_scope,
                "accumulation": self.accumulation, "audio_shift": self.audio_shift}

    @property
    def audio_offset(self) -> int:
        """Frames between the logits row and the label column it scores (1: next frame, 0: none)."""
        return 1 if self.audio_shift == "next_frame" else 0


@dataclass(frozen=True)
class Conventions:
    """One pipeline's declared conventions (module docstring explains every field)."""

    voice_prompt: str
    trained_turns: frozenset[str]
    delay_pattern: Union[bool, str]
    audio_label_layout: str
    mask_audio_out_token_label: bool
    system_message: Callable[[Any], str]
    normalize_transcript: Callable[[str], str] = identity
    normalize_reference_transcript: Callable[[str], str] = identity
    loss: LossConventions = field(default_factory=LossConventions)
    config_notes: Mapping[str, tuple[Any, str]] = field(default_factory=dict)
    transcript_template: str = "{text}"
    reference_transcript_template: str = "{text}"
    target_turn_text: str = "none"
    target_turn_template: str = "{text}"

    def resolved(self, effective: Mapping[str, Any]) -> "Conventions":
        """This declaration with every `FromConfig` field read from `effective` (validated again)."""
        import dataclasses

        changes = {f.name: getattr(self, f.name).read(effective) for f in dataclasses.fields(self)
                   if isinstance(getattr(self, f.name), FromConfig)}
        return dataclasses.replace(self, **changes) if changes else self

    def __post_init__(self) -> None:
        _check("target_turn_text", self.target_turn_text, TARGET_TURN_TEXT)
        for name in ("transcript_template", "reference_transcript_template", "target_turn_template"):
            value = getattr(self, name)
            if not isinstance(value, FromConfig) and (not isinstance(value, str) or value.count("{text}") != 1):
                raise ConventionsError(f"{name}={value!r}: expected a string with exactly one {{text}}")
        _check("voice_prompt", self.voice_prompt, VOICE_PROMPT_PLACEMENTS)
        object.__setattr__(self, "config_notes", dict(self.config_notes))
        object.__setattr__(self, "trained_turns", frozenset(self.trained_turns))
        for turn in self.trained_turns:
            _check("trained_turns[]", turn, TRAINABLE_TURNS)
        if "target" not in self.trained_turns:
            raise ConventionsError("trained_turns must contain 'target' (a TTS pipeline trains its target audio)")
        if "voice_prompt" in self.trained_turns and self.voice_prompt not in ("assistant_turn",) \
                and not isinstance(self.voice_prompt, FromConfig):
            raise ConventionsError(f"trained_turns contains 'voice_prompt' but voice_prompt={self.voice_prompt!r}: "
                                   "only an assistant turn can carry labels")
        if not (isinstance(self.delay_pattern, (bool, FromConfig)) or self.delay_pattern == DELAY_FROM_MODEL_CONFIG):
            raise ConventionsError(f"delay_pattern={self.delay_pattern!r}: expected True, False or "
                                   f"{DELAY_FROM_MODEL_CONFIG!r}")
        _check("audio_label_layout", self.audio_label_layout, AUDIO_LABEL_LAYOUTS)
        if not isinstance(self.mask_audio_out_token_label, (bool, FromConfig)):
            raise ConventionsError("mask_audio_out_token_label must be a bool")
        for name in ("system_message", "normalize_transcript", "normalize_reference_transcript"):
            if not callable(getattr(self, name)):
                raise ConventionsError(f"{name} must be callable")

    def delay_pattern_for(self, model_config: Any) -> bool:
        """The delay-pattern setting this pipeline uses with a checkpoint of `model_config`."""
        if self.delay_pattern == DELAY_FROM_MODEL_CONFIG:
            return bool(getattr(model_config, "use_delay_pattern", False))
        return bool(self.delay_pattern)

    @property
    def trains_voice_prompt(self) -> bool:
        return "voice_prompt" in self.trained_turns

    def to_json(self, model_config: Any = None) -> dict[str, Any]:
        """Printable form: functions by their qualified names."""
        delay = self.delay_pattern if model_config is None else self.delay_pattern_for(model_config)
        return {"voice_prompt": self.voice_prompt, "trained_turns": sorted(self.trained_turns),
                "delay_pattern": delay, "audio_label_layout": self.audio_label_layout,
                "mask_audio_out_token_label": self.mask_audio_out_token_label,
                "system_message": function_name(self.system_message),
                "normalize_transcript": function_name(self.normalize_transcript),
                "normalize_reference_transcript": function_name(self.normalize_reference_transcript),
                "loss": self.loss.to_json(),
                "transcript_template": _plain(self.transcript_template),
                "reference_transcript_template": _plain(self.reference_transcript_template),
                "target_turn_text": _plain(self.target_turn_text),
                "target_turn_template": _plain(self.target_turn_template),
                "config_notes": {k: {"value": v.to_json() if isinstance(v, PerDevice) else v, "why": why}
                                 for k, (v, why) in self.config_notes.items()}}


@dataclass(frozen=True)
class PerDevice:
    """A `config_notes` value that depends on the device type the pipeline runs on.

    ``PerDevice(cpu="none", cuda="bf16")``: the harness compares the effective configuration with
    ``on(device.type)`` (any device type other than ``"cuda"`` reads ``cpu``).
    """

    cpu: Any
    cuda: Any

    def on(self, device_type: str) -> Any:
        return self.cuda if device_type == "cuda" else self.cpu

    def to_json(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "cuda": self.cuda}


def _plain(value: Any) -> Any:
    return {"from_config": value.key} if isinstance(value, FromConfig) else value


def function_name(fn: Callable[..., Any]) -> str:
    """`module.qualname` of a function (for reports and generated reasons)."""
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
