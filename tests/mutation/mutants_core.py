"""Mutants written by the harness's authors, for kinds the helper-written set does not cover.

Same format as `mutants_helper.MUTANTS` (see tests/mutation/catalog.py).  Each is a bug people
write when fine-tuning speech LLMs; `stage` is where the mutated code runs.
"""

MUTANTS: list[dict] = [
    dict(id="custom-forward-dropout-ignores-config", file="custom_impl/model.py",
         find="        out = target(**model_inputs(batch))\n",
         replace="        out = target(**model_inputs(batch))\n"
                 "        if target.training:   # regularise the heads (hard-coded, ignores the LoRA dropout setting)\n"
                 "            out.logits = torch.nn.functional.dropout(out.logits, p=0.1, training=True)\n",
         stage="forward", mechanism="dropout applied in training mode regardless of the configured dropout",
         keywords=("dropout",), note="a hard-coded regulariser; eval() hides it, so only train-mode comparison sees it"),
    dict(id="custom-backward-reentrant-checkpoint-layer0", file="custom_impl/model.py",
         find="    model.higgs_missing_keys = missing\n",
         replace="    model.higgs_missing_keys = missing\n"
                 "    import torch.utils.checkpoint as _ckpt   # save memory on the first decoder layer\n"
                 "    _layer = [m for n, m in model.named_modules() if n.endswith('layers.0')][0]\n"
                 "    _fwd = _layer.forward\n"
                 "    _layer.forward = lambda *a, **k: (_ckpt.checkpoint(lambda *aa: _fwd(*aa, **k), *a, use_reentrant=True)\n"
                 "                                     if _layer.training else _fwd(*a, **k))\n",
         stage="backward", mechanism="re-entrant activation checkpointing cuts the layer's LoRA adapters off from "
                                     "their gradient (no input requires grad)",
         keywords=("gradient", "checkpoint"), note="training-only code; the seed report's kind of silent failure"),
    dict(id="custom-loss-text-no-shift", file="custom_impl/loss.py",
         find="    t_sum, n_text, t_map = text_terms(outputs.logits, outputs.expanded_labels, shift=shift)",
         replace="    t_sum, n_text, t_map = text_terms(outputs.logits, outputs.expanded_labels, shift=False)",
         stage="loss", mechanism="text CE scored without the next-token shift", keywords=("text", "shift"),
         note="only the text loss; the audio loss keeps its shift"),
    dict(id="custom-step-weight-decay-hardcoded", file="custom_impl/stages.py",
         find="eps=train.adam_eps, weight_decay=train.weight_decay)",
         replace="eps=train.adam_eps, weight_decay=1e-5)",
         stage="step", mechanism="weight decay hard-coded instead of the configured value",
         keywords=("weight decay",), note="a tiny decay hides under an absolute parameter tolerance"),
    dict(id="custom-backward-loss-halved", file="custom_impl/stages.py",
         find="    loss.total.backward()\n    return grads_of(model)",
         replace="    (loss.total / 2).backward()   # average of the two terms\n    return grads_of(model)",
         stage="backward", mechanism="the back-propagated loss is halved (gradients 0.5x the logged loss's)",
         keywords=("0.5",), note="AdamW's first step barely depends on the gradient's scale"),
    dict(id="reference-loss-audio-sum-over-codebooks", file="reference_impl/loss.py",
         find="    audio_loss = torch.stack(present).mean() if present else zero()",
         replace="    audio_loss = torch.stack(present).sum() if present else zero()",
         stage="loss", mechanism="the reference's audio loss sums codebooks instead of averaging them",
         keywords=("codebook", "sum"), note="the reference's own reduced loss, never checked before"),
    dict(id="custom-dataset-final-period-dropped", file="custom_impl/dataset.py",
         find='    clean = json.loads(json.dumps(entry))\n',
         replace='    clean = json.loads(json.dumps(entry))\n'
                 '    for _m in clean["messages"]:   # strip trailing punctuation the TTS should not read out\n'
                 '        for _it in (_m["content"] if isinstance(_m["content"], list) else []):\n'
                 '            if isinstance(_it, dict) and _it.get("type") == "text":\n'
                 '                _it["text"] = _it["text"].rstrip(".")\n',
         stage="dataset", mechanism="transcripts lose their final period before tokenising",
         keywords=("transcript",), note="the reference's normalisation adds periods, so comparing in its form hid it"),
    dict(id="reference-dataset-voice-prompt-not-trained", file="reference_impl/dataset.py",
         find="        chatml = ChatMLSample(messages=layout.messages)\n",
         replace="        chatml = ChatMLSample(messages=layout.messages, start_index=len(layout.messages) - 1)\n",
         stage="dataset", mechanism="start_index set to the last turn: the voice-prompt turn is no longer trained, "
                                    "against the pipeline's declared trained turns",
         keywords=("trained",), note="a 'fix' applied to the reference without updating what it declares"),
    dict(id="custom-collator-pad-left", file="custom_impl/collator.py",
         find="        pad_left=False,\n", replace="        pad_left=True,\n",
         stage="collator", mechanism="batches padded on the left", keywords=("pad",),
         note="left padding is common for generation and is copied into training code"),
    dict(id="custom-dataset-codes-through-bf16", file="custom_impl/dataset.py",
         find="    codes = [codes_by_index[i].long() for i in range(len(layout.audio_roles))]  # each (C, T_i)",
         replace="    codes = [codes_by_index[i].to(torch.bfloat16).long() for i in range(len(layout.audio_roles))]  # each (C, T_i)",
         stage="dataset", mechanism="codes cast through bfloat16 (codes >= 256 are rounded)",
         keywords=("bfloat16",), note="codes cast to the model dtype; exact for codes below 256 only"),
    dict(id="custom-loss-eos-not-supervised", file="custom_impl/loss.py",
         find="    mask = tgt != IGNORE_INDEX                                     # (n, C)",
         replace="    mask = (tgt != IGNORE_INDEX) & (tgt < audio_logits.shape[-1] - 1)   # (n, C) skip stream EOS",
         stage="loss", mechanism="the stream EOS is not supervised by the audio loss", keywords=("eos",),
         note="people exclude 'special' codes from the loss and the model never learns to stop"),
    dict(id="custom-forward-lora-dropout-hardcoded", file="custom_impl/model.py",
         find="    return LoraConfig(r=train.lora_r, lora_alpha=train.lora_alpha, lora_dropout=train.lora_dropout,",
         replace="    return LoraConfig(r=train.lora_r, lora_alpha=train.lora_alpha, lora_dropout=0.1,",
         stage="forward", mechanism="LoRA dropout hard-coded (ignores the configured dropout): the forward pass in "
                                    "training mode is random", keywords=("dropout",),
         note="shows only in train() mode"),
    dict(id="custom-backward-token-counts-not-all-reduced", file="custom_impl/distributed.py",
         find="    if world > 1:\n        comm = totals.to(ctx.device) if ctx.device.type == \"cuda\" else totals\n"
              "        dist.all_reduce(comm, op=dist.ReduceOp.SUM)\n        totals = comm.cpu()\n",
         replace="", stage="backward", mechanism="supervised-token counts not all-reduced: each rank normalises by its "
                                                  "own counts", keywords=("rank", "normalis"), args=("--ddp-world-size", "2"),
         note="ranks stay in sync with each other, so only a comparison with one process shows it"),
    dict(id="custom-loss-codebook-labels-flipped", file="custom_impl/loss.py",
         find="    tgt = labels[:, cols].T                                        # (n, C)",
         replace="    tgt = labels.flip(0)[:, cols].T                                # (n, C)",
         stage="loss", mechanism="audio labels scored against the wrong codebook (codebook order reversed in the loss)",
         keywords=("codebook",), note="(C, N) vs (N, C) layouts invite this"),
    dict(id="custom-step-warmup-off-by-one", file="custom_impl/stages.py",
         find="        scheduler = get_cosine_schedule_with_warmup(optimizer, train.warmup_steps, train.max_steps)",
         replace="        scheduler = get_cosine_schedule_with_warmup(optimizer, train.warmup_steps + 1, train.max_steps)",
         stage="step", mechanism="cosine warmup one step longer than configured", keywords=("schedule",),
         note="an off-by-one in the schedule is invisible in any loss curve"),
    dict(id="custom-step-clip-norm-type", file="custom_impl/stages.py",
         find="    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))\n",
         replace="    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=1.0))\n",
         stage="step", mechanism="gradients clipped by their L1 norm instead of the L2 norm", keywords=("clip",),
         note="a copied clipping call with another norm"),
    dict(id="reference-collator-eos-label-masked", file="reference_impl/collator.py",
         find='        fields["label_audio_ids"] = batch.audio_out_ids\n',
         replace='        fields["label_audio_ids"] = batch.audio_out_ids.masked_fill(\n'
                 '            batch.audio_out_ids == self.params["audio_stream_eos_id"], -100)\n',
         stage="collator", mechanism="the stream EOS labels are masked to -100", keywords=("eos",),
         note="masking 'padding' ids that are really the EOS"),
]
