"""Turn a mismatch index into what it means: token strings, codebook/frame, sample id."""

from __future__ import annotations

from typing import Any, Callable, Sequence

Index = tuple[int, ...]


class Decoder:
    """Factories of `decode(index) -> str` / `sample_of(index) -> str` callbacks for diff_tensors."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def token(self, token_id: int) -> str:
        if token_id < 0:
            return f"{token_id} (ignored)"
        try:
            return repr(self.tokenizer.convert_ids_to_tokens(int(token_id)))
        except (IndexError, OverflowError, TypeError, ValueError):
            return f"{token_id} (outside the tokenizer)"

    def codes(self, sample: str) -> Callable[[Index], str]:
        """(num_codebooks, T) code grids."""
        def decode(idx: Index) -> str:
            if len(idx) == 2:
                return f"{sample}: codebook {idx[0]}, frame {idx[1]}"
            return f"{sample}: {list(idx)}"
        return decode

    def frames(self) -> Callable[[Index], str]:
        """(N_frames, num_codebooks) per-position tensors."""
        def decode(idx: Index) -> str:
            return f"audio-out frame {idx[0]}, codebook {idx[1]}" if len(idx) == 2 else str(list(idx))
        return decode

    def row_sample(self, sample_ids: Sequence[str]) -> Callable[[Index], str | None]:
        def sample_of(idx: Index) -> str | None:
            return sample_ids[idx[0]] if idx and idx[0] < len(sample_ids) else None
        return sample_of

    def for_field(self, field: str, sample_ids: Sequence[str]) -> Callable[[Index], str] | None:
        """Pick a decoder from the field's name and shape convention."""
        if field in ("input_ids", "label_ids", "expanded_input_ids", "expanded_labels"):
            def decode(idx: Index, *, _field: str = field) -> str:
                row = sample_ids[idx[0]] if len(idx) == 2 and idx[0] < len(sample_ids) else "?"
                pos = idx[-1]
                return f"sample {row}, position {pos}"
            return decode
        if field == "logits":
            def decode_logits(idx: Index) -> str:
                row = sample_ids[idx[0]] if idx[0] < len(sample_ids) else "?"
                return f"sample {row}, position {idx[1]}, vocab entry {self.token(idx[2])}"
            return decode_logits
        if field == "audio_logits":
            return lambda idx: f"audio-out frame {idx[0]}, codebook {idx[1]}, code {idx[2]}"
        if field in ("audio_ids_concat", "audio_in_ids", "audio_out_ids", "label_audio_ids"):
            return self.codes(sample_ids[0] if len(sample_ids) == 1 else "batch")
        return None
