"""A small, deterministic byte-level BPE text tokenizer shaped like the released Llama-3 one.

Why build one: the machine has no model hub, yet every pipeline stage needs a text tokenizer that
knows Higgs Audio's special tokens.  What matters for the harness is not the vocabulary quality
but that (1) every special token the upstream code writes into prompts is ONE token id, (2) any
byte string round-trips (all 256 bytes are in the alphabet), and (3) the tokenizer is identical
on every machine, so it is trained on a fixed built-in corpus only (never on data/, which may or
may not exist).

Silent trap guarded by :func:`check_special_tokens`: `prepare_chatml_sample` encodes prompt
prefixes such as ``"<|audio_bos|><|AUDIO|><|audio_eos|>"`` with ``tokenizer.encode``; a tokenizer
that lacks one of these tokens raises nothing and simply splits it into byte pieces, after which
the collator finds no ``<|AUDIO|>`` placeholder and the audio never reaches the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from higgs_common.stages import HiggsDiffError

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"

# Every special token that upstream boson_multimodal (prepare_chatml_sample, constants, the model
# config defaults) or the two pipelines' prompt builders write as literal text.  Order fixes ids.
HIGGS_SPECIAL_TOKENS: tuple[str, ...] = (
    BOS_TOKEN,
    EOS_TOKEN,
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|recipient|>",
    "<|audio_bos|>",
    "<|AUDIO|>",
    "<|audio_eos|>",
    "<|audio_out_bos|>",
    "<|AUDIO_OUT|>",
    "<|scene_desc_start|>",
    "<|scene_desc_end|>",
    # Named in upstream's delay-pattern docs / Llama-3 reserved slots; kept so that text which
    # mentions them tokenizes as the real tokenizer would (one id), not as bytes.
    "<|audio_stream_bos|>",
    "<|audio_stream_eos|>",
)

# Fixed corpus: English sentences of the kind the TTS prompts contain (system scene text, chat
# headers, transcripts).  Never read from disk, so the tokenizer cannot drift with data/.
BUILTIN_CORPUS: tuple[str, ...] = (
    "Generate audio following instruction.",
    "Audio is recorded from a quiet room.",
    "Audio is recorded from a busy street with cars passing by.",
    "This is a voice sample for cloning.",
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "A journey of a thousand miles begins with a single step.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack for her brother Bob.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "The weather today is sunny with a high of twenty five degrees Celsius.",
    "It was the best of times, it was the worst of times.",
    "Speech synthesis converts written text into natural sounding audio.",
    "The model listens to a short reference clip and speaks in the same voice.",
    "Training loss should go down steadily when the labels are correct.",
    "Every audio token is predicted from the tokens that came before it.",
    "Hello, how are you doing this morning? I am doing well, thank you.",
    "The meeting starts at nine o'clock, so please do not be late.",
    "Numbers such as 1, 2, 3, 10, 42, 100 and 2025 appear in text too.",
    "He said: \"Let's go!\" and everyone laughed.",
    "The library closes early on Sundays and holidays.",
    "Rain is expected later this evening across the northern region.",
    "Open the window, the room is getting warm.",
    "My favourite colour is green, and my sister prefers purple.",
    "The train to the city leaves from platform four in ten minutes.",
    "Learning a new language takes patience and daily practice.",
    "Can you hear the birds singing outside the kitchen window?",
    "The scientist explained the results in simple words.",
    "After dinner we walked along the river and watched the sunset.",
    "Please speak clearly and slowly so that everyone can understand.",
    "system user assistant",
    "Thank you for listening, and have a wonderful day.",
)


class MissingSpecialTokenError(HiggsDiffError, ValueError):
    """A text tokenizer lacks a special token (or splits it into several ids).

    Raised instead of letting `prepare_chatml_sample` silently split the token into bytes.
    """

    def __init__(self, source: str, token: str, ids: list[int]) -> None:
        self.source = source
        self.token = token
        self.ids = ids
        super().__init__(
            f"text tokenizer {source!r} does not have {token!r} as a single token "
            f"(encodes to {len(ids)} ids: {ids[:8]}); prepare_chatml_sample would silently split it into bytes"
        )


def build_text_tokenizer(corpus: Iterable[str] = BUILTIN_CORPUS, vocab_size: int = 512,
                         seed: int = 0) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `corpus` and wrap it like the Llama-3 tokenizer.

    `vocab_size` counts the special tokens too (the BPE gets the rest, if the corpus has enough
    merges).  `seed` is accepted for API symmetry: the `tokenizers` BPE trainer is deterministic
    for a fixed corpus, so nothing random happens here.
    """
    del seed  # deterministic already; kept so every builder has the same signature shape
    corpus = list(corpus)
    bpe_vocab = vocab_size - len(HIGGS_SPECIAL_TOKENS)
    if bpe_vocab < 256:
        raise ValueError(f"vocab_size={vocab_size} leaves {bpe_vocab} < 256 ids for the byte alphabet")

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is ever <unk>
        special_tokens=[],
    )
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    # Specials go AFTER the BPE ids, as in Llama-3 (128000+), not at ids 0..N.
    tok.add_special_tokens(list(HIGGS_SPECIAL_TOKENS))
    bos_id = tok.token_to_id(BOS_TOKEN)
    # Like Llama-3: encode(..., add_special_tokens=True) prepends <|begin_of_text|>.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
    )
    check_special_tokens(fast, "<built in memory>")
    return fast


def check_special_tokens(tokenizer, source: str | Path) -> None:
    """Raise :class:`MissingSpecialTokenError` unless every Higgs special token is one id.

    `source` names where the tokenizer came from (its folder), so the error says which
    checkpoint is broken.
    """
    for token in HIGGS_SPECIAL_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1 or tokenizer.convert_ids_to_tokens(ids[0]) != token:
            raise MissingSpecialTokenError(str(source), token, list(ids))


def special_token_ids(tokenizer) -> dict[str, int]:
    """Map each Higgs special token to its id (after :func:`check_special_tokens`)."""
    return {t: tokenizer.convert_tokens_to_ids(t) for t in HIGGS_SPECIAL_TOKENS}
