"""The dataset and collator stages: what each side builds from the same samples.

Dataset (each side reads the records written into its own native format):

* cross-side, layout-free (`harness.semantics`): target / reference-clip codes, whether the
  target IS the reference clip, transcripts as the model reads them, the text each turn supervises
  (target, voice prompt, prompt, other assistant turns), which audios are labels;
* per side, declared vs actual: token ids and labels against the prompt its `Conventions` render
  through upstream `prepare_chatml_sample`, codes against the code cache in the declared order,
  transcripts against its declared normalisation of the record.

Collator (both collators get the custom items): each side's batch against its declared delay
pattern, audio label layout and `<|AUDIO_OUT|>` masking, then the supervised audio codes (delay
reverted, label layout stripped) and every raw batch field against the transform the two
declarations imply.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from harness.engine.fields import FieldSpec
from harness.engine.tolerance import Tolerance
from harness.explain import context as X
from harness.report.model import StageResult
from harness.semantics import audio_layout as AL
from harness.semantics import projections as P
from harness.semantics import prompt as T

CODE_AXES = ("codebook", "frame")
EXACT = Tolerance(0.0, 0.0, "exact (integers, strings)")


# ------------------------------------------------------------------------------------------ dataset


def _codes(c: Any, record: Any, fld: str) -> torch.Tensor:
    path = record.audio if fld == "audio" else record.ref_audio
    return c.side["custom"].ctx.code_cache.codes(path, sample_id=record.id, field=fld).long()


def declared_view(c: Any, role: str, record: Any) -> dict[str, Any]:
    """What `role`'s declared conventions say its dataset must produce for `record`."""
    conv = c.conv[role]
    r = T.render_declared(record, conv, c.tokenizer)
    codes = {"target": _codes(c, record, "audio")}
    if "reference" in r.audio_roles:
        codes["reference"] = _codes(c, record, "ref_audio")
    parts = [codes[x] for x in r.audio_roles]
    lengths = [p.shape[1] for p in parts]
    target_idx = r.audio_roles.index("target")
    ref_idx = r.audio_roles.index("reference") if "reference" in r.audio_roles else None
    sup = T.supervised_text(r.input_ids, r.label_ids, ids=c.ids, tokenizer=c.tokenizer, target_audio=target_idx,
                            reference_audio=ref_idx)
    return {
        "input_ids": r.input_ids, "label_ids": r.label_ids,
        "audio_ids_concat": torch.cat(parts, dim=1),
        "audio_ids_start": torch.tensor([sum(lengths[:i]) for i in range(len(lengths))], dtype=torch.long),
        "reference_audio_codes": codes.get("reference"),
        "target_transcript": conv.normalize_transcript(record.text),
        "reference_transcript": conv.normalize_reference_transcript(record.ref_text) if ref_idx is not None else None,
        "reference_audio_is_label": conv.trains_voice_prompt,
        "audio_roles": (target_idx, ref_idx),
        **{f"supervised_text/{k}": v for k, v in sup.items()},
    }


def actual_view(c: Any, role: str, item: Any, record: Any) -> dict[str, Any]:
    """Layout-free view of one DatasetItem, read with `role`'s declared placement."""
    conv = c.conv[role]
    proj = P.dataset_projection(item)
    s = item.sample
    trans = T.prompt_transcripts(s.input_ids, ids=c.ids, tokenizer=c.tokenizer, voice_prompt=conv.voice_prompt,
                                 reference_audio=item.reference_audio_index,
                                 system_text=conv.system_message(record))
    # layout-free: the transcript without the side's declared instruction template around it
    trans = {"target_transcript": T.untemplate(trans["target_transcript"], conv.transcript_template),
             "reference_transcript": T.untemplate(trans["reference_transcript"], conv.reference_transcript_template)}
    sup = T.supervised_text(s.input_ids, s.label_ids, ids=c.ids, tokenizer=c.tokenizer,
                            target_audio=item.target_audio_index, reference_audio=item.reference_audio_index)
    return {**proj, **trans, **{f"supervised_text/{k}": v for k, v in sup.items()},
            "input_ids": s.input_ids, "label_ids": s.label_ids, "audio_ids_concat": s.audio_ids_concat,
            "audio_ids_start": s.audio_ids_start,
            "audio_roles": (item.target_audio_index, item.reference_audio_index)}


CROSS_DATASET = ("target_audio_codes", "reference_audio_codes", "target_is_reference_clip", "target_transcript",
                 "reference_transcript", "supervised_text/target", "supervised_text/voice_prompt",
                 "supervised_text/prompt", "supervised_text/other_assistant", "reference_audio_is_label",
                 "label_audio_count")
DECLARED_DATASET = ("target_transcript", "reference_transcript", "reference_audio_is_label", "audio_ids_concat",
                    "audio_ids_start", "label_ids", "input_ids")


def run_dataset(c: Any) -> StageResult:
    compute = 0.0
    all_items = {}
    for role, state in c.side.items():
        mod = c.mod(role)
        native = mod.write_native(c.dataset_records, c.work_dir / "native" / role)
        items, dt = c.timed(lambda: mod.dataset(native, state.ctx))
        all_items[role] = c.perturbed("dataset", role, items)
        state.items = all_items[role][: len(c.records)]      # later stages run on the first `records`
        compute += dt
    t0 = time.perf_counter()
    ref_items, cus_items = all_items["reference"], all_items["custom"]
    fields = [c.fields.compare("dataset", "sample_ids", [i.sample_id for i in ref_items],
                               [i.sample_id for i in cus_items], FieldSpec(tol=EXACT))]
    by_id = {r.id: r for r in c.dataset_records}
    rows = []
    for r_item, c_item in zip(ref_items, cus_items):
        record = by_id.get(c_item.sample_id) or by_id.get(r_item.sample_id)
        if record is None:
            continue
        views = {role: actual_view(c, role, it, record) for role, it in (("reference", r_item), ("custom", c_item))}
        declared = {role: declared_view(c, role, record) for role in ("reference", "custom")}
        rows.append((record, views, declared))
    for key in CROSS_DATASET:
        for record, views, declared in rows:
            info = {"record": record, "declared_custom": declared["custom"]}
            fields.append(c.fields.compare("dataset", key, views["reference"][key], views["custom"][key],
                                           _dataset_spec(c, key, record.id, info, declared["reference"])))
    for role in ("reference", "custom"):
        for key in DECLARED_DATASET:
            for record, views, declared in rows:
                spec = _dataset_spec(c, key, record.id, {}, declared[role])
                spec.check, spec.side = "declared", role
                fields.append(c.fields.compare("dataset", f"{key}@{role}", declared[role][key], views[role][key], spec))
    c.evidence["dataset"] = {record.id: (views["reference"], views["custom"]) for record, views, _ in rows}
    return StageResult("dataset", "ok", fields, compute, time.perf_counter() - t0)


def _dataset_spec(c: Any, key: str, sid: str, info: dict, declared: dict) -> FieldSpec:
    spec = FieldSpec(tol=EXACT, sample=sid, info=info)
    if key.endswith("codes") or key == "audio_ids_concat":
        spec.axes, spec.decode, spec.keep_mask = CODE_AXES, c.decoder.codes(sid), True
        spec.rel_ctx = X.audio_context(declared.get("audio_ids_start"), int(declared["audio_ids_concat"].shape[1]),
                                       bos=c.bos, eos=c.eos)
    elif key in ("input_ids", "label_ids"):
        spec.axes, spec.token = ("position",), c.decoder.token
        spec.decode = lambda idx, _sid=sid: f"sample {_sid}, position {idx[-1]}"
        spec.rel_ctx = X.text_context(declared["input_ids"], c.ids, c.tokenizer, audio_roles=[declared["audio_roles"]])
    elif key == "audio_ids_start":
        spec.axes = ("audio",)
    return spec


# ------------------------------------------------------------------------------------------ collator


def trained_audio_out(batch: Any, items: list, audio_out_token_id: int) -> torch.Tensor:
    """Bool mask over batch.input_ids: <|AUDIO_OUT|> tokens whose dataset label is the token itself
    (their turn is trained).  The k-th <|AUDIO_OUT|> of row b is matched to the k-th of items[b]."""
    ids = P.batch_field(batch, "input_ids")
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for b, item in enumerate(items[: ids.shape[0]]):
        src_ids, src_labels = item.sample.input_ids, item.sample.label_ids
        src_pos = (src_ids == audio_out_token_id).nonzero().reshape(-1).tolist()
        dst_pos = (ids[b] == audio_out_token_id).nonzero().reshape(-1).tolist()
        for sp, dp in zip(src_pos, dst_pos):
            mask[b, dp] = bool(src_labels[sp] == audio_out_token_id)
    return mask


def _masking_of(batch: Any, trained: torch.Tensor, token: int) -> bool | str | None:
    labels = P.batch_field(batch, "label_ids")
    if labels is None or not bool(trained.any()):
        return None
    vals = labels[trained.to(labels.device)]
    if bool((vals == P.IGNORE).all()):
        return True
    if bool((vals == token).all()):
        return False
    return "mixed"


def run_collator(c: Any) -> StageResult:
    compute = 0.0
    for role, state in c.side.items():
        items = c.input_for(role, "items")
        state.batch, dt = c.timed(lambda: c.mod(role).collate(items, state.ctx))
        state.batch = c.perturbed("collator", role, state.batch)
        compute += dt
    t0 = time.perf_counter()
    rb, cb = c.side["reference"].batch, c.side["custom"].batch
    items = {role: c.input_for(role, "items") for role in ("reference", "custom")}
    ids = [i.sample_id for i in items["custom"]]
    trained = {role: trained_audio_out(b, items[role], c.audio_out_token_id)
               for role, b in (("reference", rb), ("custom", cb))}
    fields = []
    # 1. each side against its own declaration
    for role, b in (("reference", rb), ("custom", cb)):
        conv = c.conv[role]
        actual_delay = AL.is_delayed(P.batch_field(b, "audio_out_ids"), P.batch_field(b, "audio_out_ids_start"), bos=c.bos)
        if actual_delay is None:
            actual_delay = AL.is_delayed(P.batch_field(b, "audio_in_ids"), P.batch_field(b, "audio_in_ids_start"), bos=c.bos)
        layout = AL.label_layout(P.batch_field(b, "label_audio_ids"), P.batch_field(b, "audio_out_ids_start"),
                                 delayed=c.delayed[role], bos=c.bos, eos=c.eos)
        masking = _masking_of(b, trained[role], c.audio_out_token_id)
        checks = (("delay_pattern", c.delayed[role], actual_delay),
                  ("audio_label_layout", conv.audio_label_layout, layout),
                  ("mask_audio_out_token_label", conv.mask_audio_out_token_label, masking))
        for name, want, got in checks:
            spec = FieldSpec(tol=EXACT, check="declared", side=role)
            d = c.fields.compare("collator", f"{name}@{role}", want, want if got is None else got, spec)
            if got is None:
                d.note = "undecidable from this batch (no segment / no trained <|AUDIO_OUT|>)"
            fields.append(d)
    # 2. the codes each side supervises, layout stripped
    sup = {role: P.supervised_audio_codes(P.batch_field(b, "label_audio_ids"), P.batch_field(b, "audio_out_ids_start"),
                                          delayed=c.delayed[role], bos=c.bos, eos=c.eos)
           for role, b in (("reference", rb), ("custom", cb))}
    fields.append(c.fields.compare("collator", "supervised_audio_codes", sup["reference"], sup["custom"],
                                   FieldSpec(tol=EXACT, axes=CODE_AXES, decode=c.decoder.codes("batch"), keep_mask=True,
                                             rel_ctx=X.audio_context(None, int(sup["reference"].shape[-1]),
                                                                     bos=c.bos, eos=c.eos))))
    # 3. raw fields against the declared transforms
    info = {"ref_audio_out_ids": P.batch_field(rb, "audio_out_ids"),
            "ref_audio_out_ids_start": P.batch_field(rb, "audio_out_ids_start"),
            "ref_audio_in_ids": P.batch_field(rb, "audio_in_ids"),
            "ref_audio_in_ids_start": P.batch_field(rb, "audio_in_ids_start"),
            "bos": c.bos, "eos": c.eos, "input_ids": P.batch_field(rb, "input_ids"),
            "audio_out_token_id": c.audio_out_token_id, "trained_audio_out": trained["reference"]}
    roles = [(it.target_audio_index, it.reference_audio_index) for it in items["custom"]]
    text_ctx = X.text_context(P.batch_field(cb, "input_ids"), c.ids, c.tokenizer, audio_roles=roles,
                              scale_sources=c.scale_sources())
    for key in ("input_ids", "attention_mask", "label_ids", "audio_in_ids", "audio_in_ids_start",
                "audio_out_ids", "audio_out_ids_start", "label_audio_ids"):
        spec = FieldSpec(tol=EXACT, info=info, decode=c.decoder.for_field(key, ids), keep_mask="audio" in key)
        if key in ("input_ids", "attention_mask", "label_ids"):
            spec.axes, spec.sample_of, spec.rel_ctx = ("sample", "position"), c.decoder.row_sample(ids), text_ctx
            spec.token = c.decoder.token if key != "attention_mask" else None
        elif key.endswith("_start"):
            spec.axes = ("segment",)
        else:
            kind = "audio_out" if "out" in key or key == "label_audio_ids" else "audio_in"
            starts = P.batch_field(cb, f"{kind}_ids_start")
            val = P.batch_field(cb, key)
            spec.axes = CODE_AXES
            spec.rel_ctx = X.audio_context(starts, int(val.shape[-1]) if val is not None and val.dim() == 2 else 0,
                                           bos=c.bos, eos=c.eos)
        fields.append(c.fields.compare("collator", key, P.batch_field(rb, key), P.batch_field(cb, key), spec))
    ev = {}
    for role, b in (("reference", rb), ("custom", cb)):
        lab = P.batch_field(b, "label_audio_ids")
        mask = P.batch_field(b, "attention_mask")
        padded_rows = mask is not None and bool((mask == 0).any())
        ev[role] = {"label_audio_all_ignored": lab is None or lab.numel() == 0 or bool((lab == P.IGNORE).all()),
                    "label_audio_has_bos": lab is not None and lab.numel() > 0 and bool((lab == c.bos).any()),
                    "pad_side": None if not padded_rows else ("left" if bool((mask[:, 0] == 0).any()) else "right")}
    c.evidence["collator"] = ev
    return StageResult("collator", "ok", fields, compute, time.perf_counter() - t0)
