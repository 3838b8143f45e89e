"""Fresh mutants (a second review, written after the first two sets were all caught): realistic
speech-LLM fine-tuning bugs NOT in tests/mutation/mutants_helper.py or mutants_core.py.  Before the
fixes they prompted, 12 of 20 were caught at their stage and 6 of those explained.

Same dict format as `tests.mutation.mutants_helper.MUTANTS`: id, file, find (occurs exactly once),
replace, stage (where the mutated code runs), mechanism, keywords (lowercase words a right
explanation contains), note; optionally args.  Run with `python -m tests.mutation.run`.
"""

from __future__ import annotations

MUTANTS: list[dict] = [
    # ------------------------------------------------------------------ dataset
    dict(
        id="custom-dataset-ref-target-codes-swapped",
        file="custom_impl/dataset.py",
        find="    codes_by_index = {ref_index: ref_codes, target_index: target_codes}",
        replace="    codes_by_index = {ref_index: target_codes, target_index: ref_codes}",
        stage="dataset",
        mechanism="reference and target codes swapped: the <|AUDIO|> voice-prompt slot gets the target clip and "
                  "the <|AUDIO_OUT|> label slot gets the reference clip (the model learns to say the ref "
                  "transcript's audio after the target transcript)",
        keywords=("swap",),
        note="Dict built from two similarly named variables; the reference-is-not-label guard still passes "
             "(the two clips differ), nothing crashes.",
    ),
    dict(
        id="reference-dataset-transcript-truncated",
        file="reference_impl/dataset.py",
        find="        normalised = normalize_transcript(text)",
        replace="        normalised = normalize_transcript(text)[:40]   # cap the text length (max_text_chars)",
        stage="dataset",
        mechanism="target transcript truncated to 40 characters after normalisation: the audio speaks words the "
                  "text no longer contains",
        keywords=("truncat",),
        note="A text-length cap copied from an ASR/TTS recipe; with real data it cuts long utterances. Here every "
             "transcript longer than 40 chars loses its tail (and its final period).",
    ),
    dict(
        id="reference-dataset-scene-prompt-newlines-dropped",
        file="reference_impl/dataset.py",
        find='    return f"{head}\\n\\n<|scene_desc_start|>\\n{scene_prompt}\\n<|scene_desc_end|>"',
        replace='    return f"{head}\\n\\n<|scene_desc_start|>{scene_prompt}<|scene_desc_end|>"',
        stage="dataset",
        mechanism="scene description written without the newlines inside the <|scene_desc_start|>/<|scene_desc_end|> "
                  "tags: the system prompt no longer has the format the checkpoint was trained and is prompted with",
        keywords=("scene",),
        note="Hand-written f-string of the prompt template. The reference's declared system message "
             "(reference_impl.stages._zero_shot_system_message) calls this same function, so declaration and "
             "implementation move together.",
    ),
    # ------------------------------------------------------------------ collator
    dict(
        id="custom-collator-audio-token-ids-swapped",
        file="custom_impl/collator.py",
        find="        audio_in_token_id=model_config.audio_in_token_idx,\n"
             "        audio_out_token_id=model_config.audio_out_token_idx,\n",
        replace="        audio_in_token_id=model_config.audio_out_token_idx,\n"
                "        audio_out_token_id=model_config.audio_in_token_idx,\n",
        stage="collator",
        mechanism="<|AUDIO|> and <|AUDIO_OUT|> token ids swapped in the collator: the voice prompt becomes the "
                  "audio-out (label) stream and the target becomes an audio-in context",
        keywords=("audio_out", "audio_in"),
        note="Two adjacent, near-identical special-token fields; both ids exist, so the collator runs.",
    ),
    dict(
        id="custom-collator-sorted-by-length",
        file="custom_impl/collator.py",
        find="    samples = [copy.deepcopy(it.sample) for it in items]",
        replace="    samples = [copy.deepcopy(it.sample) for it in sorted(items, key=lambda it: -len(it.sample.input_ids))]"
                "  # longest first",
        stage="collator",
        mechanism="samples re-ordered by length inside the collator: batch row i is no longer items[i] (sample ids, "
                  "logging and the guards name the wrong samples)",
        keywords=("order",),
        note="Length-sorting inside a batch (a half-done length grouping). The loss is permutation invariant, "
             "but every per-sample bookkeeping (sample_ids, per-sample logs) is now misaligned with the batch.",
    ),
    dict(
        id="reference-collator-audio-out-label-unmasked",
        file="reference_impl/collator.py",
        find="    mask_audio_out_token_label=True,\n)",
        replace="    mask_audio_out_token_label=False,\n)",
        stage="collator",
        mechanism="<|AUDIO_OUT|> text label no longer masked in the reference collator, against its declared "
                  "mask_audio_out_token_label=True",
        keywords=("audio_out", "mask"),
        note="Copying the custom pipeline's 'fix' into the reference without updating its conventions.",
    ),
    # ------------------------------------------------------------------ forward
    dict(
        id="custom-forward-audio-in-dropped",
        file="custom_impl/model.py",
        find='    "audio_in_ids", "audio_in_ids_start", "audio_out_ids", "audio_out_ids_start",',
        replace='    "audio_out_ids", "audio_out_ids_start",   # audio-in is Whisper-only, and Whisper is off',
        stage="forward",
        mechanism="audio_in_ids / audio_in_ids_start not passed to the model: the voice-prompt codes never reach "
                  "it (the <|AUDIO|> placeholder is embedded as a plain token)",
        keywords=("audio_in",),
        note="Whitelisting model inputs and believing audio-in is only for Whisper features; with "
             "return_audio_in_tokens=True the voice prompt travels exactly there.",
    ),
    dict(
        id="custom-forward-seed-ignored",
        file="custom_impl/model.py",
        find="    torch.manual_seed(train.seed)\n    config = copy.deepcopy(ctx.model_config)",
        replace="    config = copy.deepcopy(ctx.model_config)",
        stage="forward",
        mechanism="build_model no longer seeds the RNG with train.seed: the LoRA A initialisation depends on "
                  "whatever ran before (runs are not reproducible, the seed setting is ignored)",
        keywords=("seed",),
        note="Seeding moved 'to the CLI' and lost on the way; probes whether anything checks the declared seed.",
    ),
    # ------------------------------------------------------------------ loss
    dict(
        id="custom-loss-text-label-smoothing",
        file="custom_impl/loss.py",
        find='    ce = F.cross_entropy(src[mask].float(), tgt[mask], reduction="none")',
        replace='    ce = F.cross_entropy(src[mask].float(), tgt[mask], reduction="none", label_smoothing=0.1)',
        stage="loss",
        mechanism="label smoothing 0.1 added to the text cross-entropy (stage-contract loss path)",
        keywords=("smoothing",),
        note="A regulariser copied from an LLM recipe; the declared loss is plain CE.",
    ),
    dict(
        id="custom-loss-text-weight-halved",
        file="custom_impl/loss.py",
        find="    text = terms.text_sum / max(text_total, 1)",
        replace="    text = 0.5 * terms.text_sum / max(text_total, 1)   # text_loss_weight: audio matters more for TTS",
        stage="loss",
        mechanism="text term weighted 0.5 against the audio term (undeclared text/audio loss weights)",
        keywords=("text", "0.5"),
        note="Loss weighting between modalities is a common knob; here it is hard-coded and undeclared. In _means, "
             "so both the stage loss and the training objective get it.",
    ),
    dict(
        id="reference-loss-audio-flattened-ce",
        file="reference_impl/loss.py",
        find="    audio_loss = torch.stack(present).mean() if present else zero()",
        replace="    # one cross-entropy over every (frame, codebook) label\n"
                "    if present:\n"
                "        _lg = audio_logits[:-1].reshape(-1, audio_logits.shape[-1])\n"
                "        _lb = label_audio_ids[:, 1:].T.reshape(-1).to(_lg.device)\n"
                "        audio_loss = F.cross_entropy(_lg, _lb, ignore_index=IGNORE_INDEX)\n"
                "    else:\n"
                "        audio_loss = zero()",
        stage="loss",
        mechanism="audio loss as one token-mean CE over frames x codebooks instead of the declared mean of "
                  "per-codebook means (codebooks weighted by their label counts)",
        keywords=("codebook",),
        note="Flattening (N, C, K) logits into one CE is the usual shortcut; identical only when every codebook "
             "has the same number of labels (not under the delay pattern).",
    ),
    # ------------------------------------------------------------------ backward
    dict(
        id="custom-backward-zero-grad-per-micro-batch",
        file="custom_impl/distributed.py",
        find="        sync = syncs_on(i, n, faults) or not isinstance(model, DDP)",
        replace="        model.zero_grad(set_to_none=True)   # fresh gradients for this micro-batch\n"
                "        sync = syncs_on(i, n, faults) or not isinstance(model, DDP)",
        stage="backward",
        mechanism="zero_grad inside the gradient-accumulation loop: only the last micro-batch's gradient survives",
        keywords=("accumulat",),
        note="The classic accumulation bug (zero_grad per micro-batch instead of per optimizer step).",
    ),
    dict(
        id="custom-backward-fast-head-label-smoothing",
        file="custom_impl/fast_head.py",
        find='    return F.cross_entropy(logits.float(), targets, reduction="none")',
        replace='    return F.cross_entropy(logits.float(), targets, reduction="none", label_smoothing=0.1)',
        stage="backward",
        mechanism="label smoothing 0.1 in the training path's gathered text head only (custom_impl.fast_head, "
                  "used by distributed.accumulate, i.e. by the training loop and ddp_run); the stage-contract "
                  "loss stays plain CE",
        keywords=("smoothing",),
        note="The fast path is a second CE implementation that only the training loop runs; a change there "
             "trains a different objective than the one the loss stage checks.",
    ),
    # ------------------------------------------------------------------ step
    dict(
        id="custom-step-adam-eps-hardcoded",
        file="custom_impl/stages.py",
        find="eps=train.adam_eps, weight_decay=train.weight_decay)",
        replace="eps=1e-6, weight_decay=train.weight_decay)",
        stage="step",
        mechanism="AdamW eps hard-coded to 1e-6 instead of the configured adam_eps",
        keywords=("eps",),
        note="eps=1e-6 is common advice for bf16 training; hard-coding it ignores the recipe.",
    ),
    dict(
        id="reference-step-weight-decay-on-rmsnorm",
        file="reference_impl/trainer.py",
        find="    names = get_parameter_names(model, ALL_LAYERNORM_LAYERS)",
        replace="    names = get_parameter_names(model, [torch.nn.LayerNorm])",
        stage="step",
        mechanism="no-decay rule lists only nn.LayerNorm, so the model's LlamaRMSNorm weights get weight decay",
        keywords=("weight decay", "norm"),
        note="The HF no-decay list written by hand misses the model's own RMSNorm class. Only the full fine-tune "
             "(the reference's DEFAULT_TRAIN, use_lora=False) has trainable norms.",
    ),
    dict(
        id="reference-step-clip-threshold-hardcoded",
        file="reference_impl/stages.py",
        find="    max_norm = train.max_grad_norm",
        replace="    max_norm = 1.0   # HF default",
        stage="step",
        mechanism="gradient clipping threshold hard-coded to 1.0 instead of train.max_grad_norm",
        keywords=("clip",),
        note="Clipping at a different max norm than configured.",
    ),
    dict(
        id="reference-step-schedule-hardcoded-linear",
        file="reference_impl/trainer.py",
        find="    scheduler = get_scheduler(args.lr_scheduler_type, optimizer=optimizer,",
        replace='    scheduler = get_scheduler("linear", optimizer=optimizer,',
        stage="step",
        mechanism="LR schedule type hard-coded to linear, ignoring lr_scheduler_type",
        keywords=("schedule",),
        note="The HF default written in; invisible with the reference's own default (linear).",
    ),
    dict(
        id="custom-step-train-loop-clip-hardcoded",
        file="custom_impl/stages.py",
        find="    max_norm = train.max_grad_norm if train.max_grad_norm and train.max_grad_norm > 0 else float(\"inf\")",
        replace="    max_norm = 5.0   # clip threshold",
        stage="step",
        mechanism="the training loop clips at 5.0 instead of train.max_grad_norm",
        keywords=("clip",),
        note="Written first against the training CLI's own copy of the update (custom_impl/train.py), which the "
             "harness never ran (missed); since then the CLI, ddp_run and the stage contract share "
             "custom_impl.stages.optimizer_update, so the mutant now sits in the one copy.",
    ),
    # ------------------------------------------------------------------ config
    dict(
        id="custom-config-lora-target-typo",
        file="custom_impl/model.py",
        find='LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj",',
        replace='LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj",',
        stage="config",
        mechanism="LoRA target 'out_proj' (Whisper/BART naming) instead of 'o_proj': the attention output "
                  "projections of the custom recipe get no adapter (peft silently skips a name that matches nothing)",
        keywords=("target",),
        note="Target-module names copied from another architecture; peft only errors when NO name matches.",
    ),
    dict(
        id="reference-config-lora-dropout-dropped",
        file="reference_impl/trainer.py",
        find="        lora_dropout=train.lora_dropout,\n        target_modules=list(train.lora_target_modules),",
        replace="        target_modules=list(train.lora_target_modules),",
        stage="config",
        mechanism="lora_dropout not passed to LoraConfig: peft's default 0.0 is used instead of the configured 0.1",
        keywords=("dropout",),
        note="An argument lost when editing the LoraConfig call. Under the harness's common configuration "
             "(dropout 0) the forward is unchanged; only the declared recipe shows it.",
    ),
]
