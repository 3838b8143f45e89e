"""Hand-written source-level mutants of the two pipelines (written without looking at the harness).

Each entry of `MUTANTS` is one realistic bug of the kind people write when fine-tuning a speech LLM:
`find` occurs exactly once in `file`; replacing it by `replace` gives a pipeline that still imports
and runs on the normal path but trains differently from what the pipeline declares
(`<pipeline>.stages.CONVENTIONS`, its `DEFAULT_TRAIN` recipe) or from what the upstream
boson_multimodal semantics require.

Fields: id (unique, kebab-case, prefix reference-/custom-), file (repo-relative), find, replace,
stage (where the mutated code runs: dataset | collator | forward | loss | backward | step | config),
mechanism (the bug in one line, as the fix would describe it), keywords (1-3 lowercase words a
correct explanation must contain), note (why it is realistic; where else it is visible).

`tests/mutation/check_mutants_helper.py` checks every entry (unique snippet, import still works).
"""

from __future__ import annotations

MUTANTS: list[dict] = [
    # ------------------------------------------------------------------ reference_impl: dataset
    dict(
        id="reference-dataset-labels-pre-shifted",
        file="reference_impl/dataset.py",
        find="""            label_ids=torch.tensor(label_tokens, dtype=torch.long),""",
        replace="""            label_ids=torch.tensor(label_tokens[1:] + [-100], dtype=torch.long),   # next-token targets""",
        stage="dataset",
        mechanism="text labels shifted by one in the dataset and shifted again in the loss (each position learns token t+2)",
        keywords=("shift", "label"),
        note="Classic double shift: people who know causal LMs need next-token targets shift label_ids when "
             "building samples, not knowing that prepare_chatml_sample labels are unshifted and the loss "
             "(reference_impl.loss.text_loss) already shifts. Also moves the <|AUDIO_OUT|> text label.",
    ),
    dict(
        id="reference-dataset-parenthetical-dropped",
        file="reference_impl/dataset.py",
        find="""        normalised = normalize_transcript(text)""",
        replace="""        text = re.sub(r"\\s*\\([^)]*\\)", "", text)   # drop (stage directions) before normalising
        normalised = normalize_transcript(text)""",
        stage="dataset",
        mechanism="parenthesised words removed from the target transcript although the audio speaks them "
                  "(the reference normalisation only drops the brackets)",
        keywords=("transcript",),
        note="Transcript clean-up that treats '(...)' as non-spoken annotation; data/manifest.jsonl has "
             "'Please leave the parcel (the small one) by the front door.', so text and audio no longer match. "
             "The declared normalize_transcript is untouched; only what the dataset tokenises changes.",
    ),
    dict(
        id="reference-dataset-ref-turn-target-transcript",
        file="reference_impl/dataset.py",
        find="""            msgs.append(Message(role="user", content=ref_transcript))""",
        replace="""            msgs.append(Message(role="user", content=transcript))""",
        stage="dataset",
        mechanism="zero-shot reference turn gets the target transcript instead of ref_transcript, so the voice "
                  "prompt audio is paired with the wrong text",
        keywords=("reference", "transcript"),
        note="Copy-paste slip between the two user turns of the zero-shot layout; nothing crashes because both "
             "variables are strings in scope.",
    ),
    # ------------------------------------------------------------------ reference_impl: collator
    dict(
        id="reference-collator-bos-id-from-eos",
        file="reference_impl/collator.py",
        find="""                   audio_stream_bos_id=model_config.audio_stream_bos_id,""",
        replace="""                   audio_stream_bos_id=model_config.audio_stream_eos_id,""",
        stage="collator",
        mechanism="audio stream BOS id taken from the EOS field: every audio-out segment starts with the EOS code "
                  "(as input and, since labels = audio_out_ids, as a target)",
        keywords=("bos", "eos"),
        note="Copy-paste between two adjacent, near-identical config fields (audio_stream_bos_id / "
             "audio_stream_eos_id); nothing crashes because both ids are valid codes. The model sees 'end of "
             "stream' where generation will feed 'start of stream'. effective_config's collator section shows it.",
    ),
    # ------------------------------------------------------------------ reference_impl: forward
    dict(
        id="reference-forward-labels-stripped",
        file="reference_impl/stages.py",
        find="""    kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
              for k, v in _batch_fields(batch).items() if v is not None}""",
        replace="""    # keep labels out of the model call: the loss is computed outside the model
    kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
              for k, v in _batch_fields(batch).items() if v is not None and not k.startswith("label")}""",
        stage="forward",
        mechanism="label_ids not passed to the model, so expanded_labels is None and the text loss silently "
                  "becomes a dropped 0.0 term",
        keywords=("label", "text"),
        note="People strip `labels*` from model inputs so HF models do not compute a loss twice; upstream "
             "HiggsAudioModel needs label_ids to build expanded_labels. The reference's `.item() > 0` rule "
             "then drops the text term without an error (audio labels still come from the batch).",
    ),
    # ------------------------------------------------------------------ reference_impl: loss
    dict(
        id="reference-loss-codebook-off-by-one",
        file="reference_impl/loss.py",
        find="""    for cb in range(num_codebooks):""",
        replace="""    for cb in range(num_codebooks - 1):""",
        stage="loss",
        mechanism="per-codebook loop stops one early: the last codebook gets no audio loss",
        keywords=("codebook",),
        note="Off-by-one in a loop next to shift arithmetic (N-1 positions); the last (finest) RVQ level is "
             "never trained and the audio mean is over 3 codebooks instead of 4.",
    ),
    dict(
        id="reference-loss-audio-shift-reversed",
        file="reference_impl/loss.py",
        find="""    shifted_logits = audio_logits[:-1, :, :].contiguous()   # (N-1, C, K)
    shifted_labels = label_audio_ids[:, 1:].contiguous().to(audio_logits.device)   # (C, N-1)""",
        replace="""    shifted_logits = audio_logits[1:, :, :].contiguous()   # (N-1, C, K)
    shifted_labels = label_audio_ids[:, :-1].contiguous().to(audio_logits.device)   # (C, N-1)""",
        stage="loss",
        mechanism="audio shift in the wrong direction: audio_logits[t+1] scored against label[t] (predicts the "
                  "previous frame)",
        keywords=("shift", "audio"),
        note="Off-by-one direction error when the logits and labels live in different layouts "
             "((N, C, K) vs (C, N)); the loss still looks plausible. per_position_ce keeps the correct "
             "shift, so the reported per-position CE no longer reduces to the audio term.",
    ),
    dict(
        id="reference-loss-text-sum-reduction",
        file="reference_impl/loss.py",
        find="""    return F.cross_entropy(flat_logits[valid], flat_labels[valid], reduction="mean"), n""",
        replace="""    return F.cross_entropy(flat_logits[valid], flat_labels[valid], reduction="sum"), n""",
        stage="loss",
        mechanism="text cross-entropy summed over tokens instead of averaged (scales with the number of "
                  "labelled text tokens)",
        keywords=("text", "sum"),
        note="reduction='sum' chosen to 'weight long samples properly' without dividing by the token count; "
             "the text term now dominates the audio term.",
    ),
    # ------------------------------------------------------------------ reference_impl: backward
    dict(
        id="reference-backward-freeze-audio-by-name",
        file="reference_impl/stages.py",
        find="""    if train.use_lora:
        model = tr.apply_lora(model, train)
    model.train()""",
        replace="""    if train.use_lora:
        model = tr.apply_lora(model, train)
    # the audio tower (Whisper) is not trained
    for name, param in model.named_parameters():
        if "audio" in name:
            param.requires_grad_(False)
    model.train()""",
        stage="backward",
        mechanism="freezing the audio tower by substring 'audio' also freezes the audio MLP, audio codebook "
                  "embeddings and audio head (and their LoRA adapters)",
        keywords=("audio", "frozen"),
        note="Name-based freezing is how people freeze an encoder; in HiggsAudioModel 'audio' also matches "
             "audio_mlp, audio_codebook_embeddings and audio_decoder_proj, so the very modules that should "
             "learn the voice get no gradient.",
    ),
    dict(
        id="reference-backward-audio-loss-from-item",
        file="reference_impl/loss.py",
        find="""    audio_loss = torch.stack(present).mean() if present else zero()""",
        replace="""    audio_loss = torch.tensor([x.item() for x in present], device=device).mean() if present else zero()""",
        stage="backward",
        mechanism="audio loss rebuilt from per-codebook .item() values: right value, no autograd graph, so the "
                  "audio term contributes no gradient",
        keywords=("audio", "gradient"),
        note="Typical when the per-codebook losses are first collected as floats for logging; the total still "
             "includes the value (loss curves look normal) but only the text term trains.",
    ),
    # ------------------------------------------------------------------ reference_impl: step
    dict(
        id="reference-step-zero-grad-before-step",
        file="reference_impl/stages.py",
        find="""    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}""",
        replace="""    optimizer.zero_grad(set_to_none=True)
    optimizer.step()
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}""",
        stage="step",
        mechanism="optimizer.zero_grad() called before optimizer.step(): the gradients are cleared and no "
                  "parameter is updated",
        keywords=("zero", "grad"),
        note="Reordering zero_grad/step when refactoring a training step; AdamW skips parameters whose grad "
             "is None, so the step silently does nothing (the scheduler still advances).",
    ),
    dict(
        id="reference-step-beta2-from-beta1",
        file="reference_impl/trainer.py",
        find="""        adam_beta2=train.adam_betas[1],""",
        replace="""        adam_beta2=train.adam_betas[0],""",
        stage="step",
        mechanism="AdamW beta2 set from betas[0] (copy-paste), so the second-moment average uses 0.9 instead of "
                  "the configured beta2",
        keywords=("beta",),
        note="Copy-paste index slip in the TrainingArguments mapping. Bias correction makes the first AdamW "
             "update equal up to rounding; updates differ from step 2 on. effective_config reports it too (it "
             "reads the same TrainingArguments).",
    ),
    # ------------------------------------------------------------------ custom_impl: dataset
    dict(
        id="custom-dataset-labels-include-prompt",
        file="custom_impl/dataset.py",
        find="""        label_ids=torch.tensor(label_tokens, dtype=torch.long),""",
        replace="""        label_ids=torch.tensor(input_tokens, dtype=torch.long),""",
        stage="dataset",
        mechanism="text labels copied from input_ids: the system prompt and the user turn (transcripts) are "
                  "trained, not only the assistant turn",
        keywords=("label", "prompt"),
        note="The generic causal-LM habit labels = input_ids; for a TTS chat sample it trains the model to "
             "generate the system prompt and the transcripts.",
    ),
    dict(
        id="custom-dataset-transcript-lowercased",
        file="custom_impl/dataset.py",
        find="""            if isinstance(item, dict) and item.get("type") == "audio":
                item["audio_url"] = str(_resolve(item["audio_url"], base))""",
        replace="""            if isinstance(item, dict) and item.get("type") == "audio":
                item["audio_url"] = str(_resolve(item["audio_url"], base))
            elif isinstance(item, dict) and item.get("type") == "text":
                item["text"] = item["text"].strip().lower()""",
        stage="dataset",
        mechanism="transcripts lower-cased (and stripped) before tokenisation although the pipeline declares raw "
                  "text",
        keywords=("lowercase", "transcript"),
        note="ASR-style text normalisation carried over to TTS; casing carries prosody cues and the "
             "checkpoint was trained on cased text.",
    ),
    dict(
        id="custom-dataset-codebooks-reversed",
        file="custom_impl/dataset.py",
        find="""    codes = [codes_by_index[i].long() for i in range(len(layout.audio_roles))]  # each (C, T_i)""",
        replace="""    codes = [codes_by_index[i].long().flip(0) for i in range(len(layout.audio_roles))]  # each (C, T_i)""",
        stage="dataset",
        mechanism="codebook order reversed when stacking the codec codes (finest RVQ level first)",
        keywords=("codebook", "order"),
        note="Codec wrappers disagree on the RVQ level order; every codebook embedding and head then sees "
             "another level's codes. The reference/target check runs on the unflipped codes, so it still passes.",
    ),
    # ------------------------------------------------------------------ custom_impl: collator
    dict(
        id="custom-collator-delay-pattern-wrong-key",
        file="custom_impl/collator.py",
        find="""        use_delay_pattern=bool(model_config.use_delay_pattern),""",
        replace="""        use_delay_pattern=bool(getattr(model_config, "delay_pattern", False)),""",
        stage="collator",
        mechanism="delay pattern read from a non-existent config key with a False default, so it is off although "
                  "the checkpoint uses it",
        keywords=("delay",),
        note="getattr with a default hides the typo; the model is trained on undelayed codes it never sees at "
             "inference. effective_config's collator section shows it as well.",
    ),
    dict(
        id="custom-collator-eos-masked-as-pad",
        file="custom_impl/collator.py",
        find="""    batch = make_collator(ctx.model_config)(samples)""",
        replace="""    batch = make_collator(ctx.model_config)(samples)
    # padding in the audio streams must not be trained
    audio_pad = ctx.model_config.audio_stream_eos_id
    if batch.label_audio_ids is not None:
        batch.label_audio_ids[batch.label_audio_ids == audio_pad] = -100""",
        stage="collator",
        mechanism="audio labels equal to the stream pad id are masked, but the pad id is the audio EOS id, so "
                  "the EOS frame is never trained",
        keywords=("eos",),
        note="The pad==eos trap: upstream pads delayed audio inputs with audio_stream_eos_id, so 'mask the pad "
             "labels' also removes every real EOS target; the model never learns to stop.",
    ),
    dict(
        id="custom-collator-audio-labels-from-inputs",
        file="custom_impl/collator.py",
        find="""    batch = make_collator(ctx.model_config)(samples)""",
        replace="""    batch = make_collator(ctx.model_config)(samples)
    batch.label_audio_ids = batch.audio_out_ids.clone()   # labels = the audio-out stream, shifted in the loss""",
        stage="collator",
        mechanism="label_audio_ids replaced by audio_out_ids: the stream BOS and the delay-pattern BOS/EOS "
                  "padding become audio targets",
        keywords=("label", "bos"),
        note="Copied from train-higgs-audio ('label_audio_ids = audio_out_ids') into a pipeline that declares "
             "upstream's [-100, codes, EOS] labels and uses the delay pattern, where audio_out_ids also holds "
             "the delay padding.",
    ),
    # ------------------------------------------------------------------ custom_impl: forward
    dict(
        id="custom-forward-base-weights-bf16",
        file="custom_impl/model.py",
        find="""                                                  torch_dtype=load_dtype(ctx.device, train), output_loading_info=True)""",
        replace="""                                                  torch_dtype=torch.bfloat16, output_loading_info=True)""",
        stage="forward",
        mechanism="checkpoint always loaded in bf16 (hard-coded torch_dtype), also on CPU / in fp32 runs, so the "
                  "forward pass runs in bf16 against the declared precision",
        keywords=("bf16", "dtype"),
        note="torch_dtype=torch.bfloat16 copied from a model card; model.higgs_weights_dtype still says fp32, "
             "so nothing downstream notices. Logits are rounded to bf16.",
    ),
    dict(
        id="custom-forward-lora-random-init",
        file="custom_impl/model.py",
        find="""                      target_modules=list(train.lora_target_modules), bias="none")""",
        replace="""                      target_modules=list(train.lora_target_modules), bias="none", init_lora_weights=False)""",
        stage="forward",
        mechanism="LoRA adapters initialised randomly (init_lora_weights=False, B != 0), so the wrapped model is "
                  "no longer the checkpoint at step 0",
        keywords=("lora", "init"),
        note="init_lora_weights=False is meant for debugging; seen in configs copied from tests. The first "
             "forward already differs from the base model.",
    ),
    # ------------------------------------------------------------------ custom_impl: loss
    dict(
        id="custom-loss-audio-sum-over-codebooks",
        file="custom_impl/loss.py",
        find="""    audio = per_cb[valid].mean() if bool(valid.any()) else per_cb.sum() * 0.0""",
        replace="""    audio = per_cb[valid].sum() if bool(valid.any()) else per_cb.sum() * 0.0""",
        stage="loss",
        mechanism="audio loss summed over codebooks instead of averaged",
        keywords=("codebook", "sum"),
        note="Multi-codebook heads are often summed in RVQ papers; here the declared reduction is the mean, and "
             "the sum weights audio num_codebooks times more than text. Used by breakdown and global_objective.",
    ),
    dict(
        id="custom-loss-audio-ignore-not-masked",
        file="custom_impl/loss.py",
        find="""                         reduction="none").reshape(tgt.shape) * mask""",
        replace="""                         reduction="none").reshape(tgt.shape)""",
        stage="loss",
        mechanism="-100 audio labels clamped to 0 but their cross-entropy not masked out, so ignored positions "
                  "(segment start, delay padding) are trained towards code 0",
        keywords=("mask", "ignore"),
        note="clamp_min(0) is there only to make F.cross_entropy accept -100; forgetting the mask afterwards is a "
             "common slip. Counts stay the same, so the mean is over the right count but the wrong sum.",
    ),
    # ------------------------------------------------------------------ custom_impl: backward
    dict(
        id="custom-backward-lora-targets-hardcoded",
        file="custom_impl/model.py",
        find="""                      target_modules=list(train.lora_target_modules), bias="none")""",
        replace="""                      target_modules=["q_proj", "v_proj"], bias="none")""",
        stage="backward",
        mechanism="LoRA target modules hard-coded to q_proj/v_proj, ignoring the configured targets (no adapters "
                  "on k/o, the MLPs or the audio MLP)",
        keywords=("lora", "target"),
        note="The PEFT README example; the audio MLP of the dual-FFN layers gets no adapter, so the audio path "
             "barely trains. effective_config's lora section reads the same config, so it shows there too.",
    ),
    dict(
        id="custom-backward-rslora-scaling",
        file="custom_impl/model.py",
        find="""    return LoraConfig(r=train.lora_r, lora_alpha=train.lora_alpha, lora_dropout=train.lora_dropout,""",
        replace="""    return LoraConfig(r=train.lora_r, lora_alpha=train.lora_alpha, lora_dropout=train.lora_dropout, use_rslora=True,""",
        stage="backward",
        mechanism="rsLoRA switched on: adapter scaling alpha/sqrt(r) instead of alpha/r (5.7x larger for r=32, "
                  "alpha=64)",
        keywords=("lora", "scaling"),
        note="A 'better LoRA' flag copied from a blog post; the declared alpha/r stay the same (effective_config "
             "still reports r 32 / alpha 64), only the effective scale of the adapter and its gradients change.",
    ),
    dict(
        id="custom-backward-base-unfrozen-with-lora",
        file="custom_impl/model.py",
        find="""        model = get_peft_model(model, lora_config(train))
    else:
        for p in model.parameters():
            p.requires_grad_(True)""",
        replace="""        model = get_peft_model(model, lora_config(train))
    for p in model.parameters():
        p.requires_grad_(True)""",
        stage="backward",
        mechanism="requires_grad loop meant for full fine-tuning runs after get_peft_model too, so every base "
                  "weight is trainable in a LoRA run",
        keywords=("frozen", "base"),
        note="Indentation/else slip; LoRA still 'works' but the base model trains at the LoRA learning rate and "
             "memory use explodes on the real checkpoint.",
    ),
    dict(
        id="custom-backward-audio-ce-detached",
        file="custom_impl/loss.py",
        find="""    return ce.sum(dim=0), mask.sum(dim=0), ce_map""",
        replace="""    return ce.detach().sum(dim=0), mask.sum(dim=0), ce_map""",
        stage="backward",
        mechanism="per-codebook audio CE sums detached: the audio loss value is right but it sends no gradient",
        keywords=("audio", "detach"),
        note="The detach belongs to the logging map (ce_map) two lines above and slipped into the returned sums; "
             "loss curves look fine, only the text term trains.",
    ),
    dict(
        id="custom-backward-grad-accum-not-normalised",
        file="custom_impl/distributed.py",
        find="""            objective = global_objective(terms, text_total, cb_totals if cb_totals.numel() else terms.audio_counts,
                                         world)""",
        replace="""            objective = global_objective(terms, terms.text_count, terms.audio_counts, world)""",
        stage="backward",
        mechanism="gradient accumulation: each micro-batch normalised by its own token counts and the micro-batch "
                  "losses summed, not divided by the accumulation steps (gradient x grad_accum, per-micro-batch "
                  "weighting)",
        keywords=("accumulation",),
        note="The 'forgot to divide by gradient_accumulation_steps' bug in the global-token-mean form: the "
             "pre-computed global denominators are ignored. Visible with grad_accum > 1 (also with one process).",
    ),
    dict(
        id="custom-backward-ddp-world-scale-dropped",
        file="custom_impl/loss.py",
        find="""    return (text + audio) * world_size""",
        replace="""    return text + audio""",
        stage="backward",
        mechanism="DDP normalisation: the global-token-mean objective is not multiplied by world_size, so DDP's "
                  "gradient averaging divides the gradient by the number of ranks",
        keywords=("world", "ddp"),
        note="Someone removes the factor 'because DDP already averages'. Only visible with world_size > 1 "
             "(custom_impl.stages.ddp_run with 2 ranks); the reported per-step loss shrinks by the same factor.",
    ),
    # ------------------------------------------------------------------ custom_impl: step
    dict(
        id="custom-step-clip-after-step",
        file="custom_impl/stages.py",
        find="""    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    optimizer.step()""",
        replace="""    optimizer.step()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))""",
        stage="step",
        mechanism="gradient clipping applied after optimizer.step(), so the update uses unclipped gradients",
        keywords=("clip",),
        note="Order slip when moving the clip into a helper. With AdamW the first update is nearly scale "
             "invariant (only eps sees the norm); later steps differ because the moment estimates mix "
             "differently scaled gradients.",
    ),
    dict(
        id="custom-step-schedule-args-swapped",
        file="custom_impl/stages.py",
        find="""        scheduler = get_cosine_schedule_with_warmup(optimizer, train.warmup_steps, train.max_steps)
    elif train.schedule == "linear":
        scheduler = get_linear_schedule_with_warmup(optimizer, train.warmup_steps, train.max_steps)""",
        replace="""        scheduler = get_cosine_schedule_with_warmup(optimizer, train.max_steps, train.warmup_steps)
    elif train.schedule == "linear":
        scheduler = get_linear_schedule_with_warmup(optimizer, train.max_steps, train.warmup_steps)""",
        stage="step",
        mechanism="warmup steps and total steps passed in swapped positional order to the LR schedule factory",
        keywords=("warmup", "schedule"),
        note="Positional arguments of get_*_schedule_with_warmup are (optimizer, num_warmup_steps, "
             "num_training_steps); swapping them gives a schedule that warms up over max_steps and then "
             "decays past its end (LR 0 at step 1 when warmup_steps is 0).",
    ),
    dict(
        id="custom-step-scheduler-before-optimizer",
        file="custom_impl/stages.py",
        find="""    optimizer.step()
    if scheduler is not None:
        scheduler.step()""",
        replace="""    if scheduler is not None:
        scheduler.step()
    optimizer.step()""",
        stage="step",
        mechanism="scheduler.step() called before optimizer.step(): every update uses the next step's learning "
                  "rate (the first one skips the step-0 LR)",
        keywords=("scheduler", "order"),
        note="The order PyTorch warns about since 1.1; in the training loop's micro-step code "
             "(custom_impl.stages._accumulation_run, what ddp_run executes), so it shows in ddp_run's step-1 "
             "parameters and per-step losses.",
    ),
]
