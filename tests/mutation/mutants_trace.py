"""Mutants in the code a stage replay (`higgs-diff compare`) cannot see: the training CLIs' own
code, speed paths behind an option, precision branches and settings other than the defaults.

Same dict format as `tests.mutation.mutants_helper.MUTANTS` (id, file, find: a snippet occurring
exactly once, replace, stage, mechanism, keywords, note), plus:

- path: which code path it sits in: "cli" (training CLIs), "speed" (speed switches),
  "precision" (dtype branches), "settings" (non-default settings);
- tool: how a user looks for it: "compare-traces" (trace `command` on the clean and on the
  mutated tree, compare), "check-resume" (on the mutated tree), "check-flags" (on the mutated tree,
  `--only` the names in `only`) or "compare" (`python -m harness.compare`, mutated tree);
- command: the training command (arguments after the interpreter); the runner adds the output
  folder (compare-traces) - check-resume and check-flags add their own flags;
- expect_stage: the stage the report must name (dataset / collator / forward / loss / backward /
  step / log / run), or for check-flags the option that must be reported ignored;
- gpu: True when the mutated code only runs on CUDA (kept out of the CPU score);
- trace_args: more `higgs-diff trace` options for both traces (`--layers` for faults inside a decoder
  layer, as the docs recommend for them).

Run with `python -m tests.mutation.run_trace`.
"""

from __future__ import annotations

CUSTOM = ("-m", "custom_impl.train")
REFERENCE = ("-m", "reference_impl.train")
STEPS3 = ("--max-steps", "3")

MUTANTS: list[dict] = [
    # ================================================================ 1. the training CLIs' own code
    dict(
        id="custom-cli-resume-scheduler-not-loaded",
        path="cli", file="custom_impl/train.py",
        find="    scheduler.load_state_dict(torch.load(path / \"scheduler.pt\"))\n",
        replace="",
        stage="step", tool="check-resume", command=CUSTOM, expect_stage="step",
        mechanism="resume restores weights and AdamW but not the LR scheduler: the resumed run restarts the "
                  "cosine schedule from step 0",
        keywords=("scheduler",),
        note="scheduler.pt is written but never read back; the first resumed steps run at the warmup/initial "
             "learning rate instead of the scheduled one.",
    ),
    dict(
        id="custom-cli-resume-optimizer-not-loaded",
        path="cli", file="custom_impl/train.py",
        find="    optimizer.load_state_dict(torch.load(path / \"optimizer.pt\"))\n",
        replace="",
        stage="step", tool="check-resume", command=CUSTOM, expect_stage="step",
        mechanism="resume restores the weights but not AdamW's moments: the first resumed update is a fresh "
                  "AdamW step (bias-corrected, |update| ~ lr) instead of the continued one",
        keywords=("optimizer", "state"),
        note="A common omission when the checkpoint loader is written for inference first.",
    ),
    dict(
        id="custom-cli-resume-position-off-by-one",
        path="cli", file="custom_impl/train.py",
        find="            position = {\"epoch\": epoch, \"batch\": b + 1}",
        replace="            position = {\"epoch\": epoch, \"batch\": b}",
        stage="dataset", tool="check-resume", command=CUSTOM, expect_stage="dataset",
        mechanism="the checkpoint stores the index of the last batch consumed instead of the next one: a resumed "
                  "run trains that batch again (data position off by one)",
        keywords=("position",),
        note="Classic 'next index vs last index' slip; the straight run is unaffected.",
    ),
    dict(
        id="custom-cli-resume-rng-not-restored",
        path="cli", file="custom_impl/train.py",
        find="    set_rng_state(torch.load(path / f\"rng_rank{info.rank}.pt\", weights_only=False))\n",
        replace="",
        stage="forward", tool="check-resume", command=CUSTOM, expect_stage="forward",
        mechanism="RNG states are saved but not restored on resume: the resumed run's LoRA dropout masks come "
                  "from the freshly seeded generator, not from where the straight run was",
        keywords=("rng",),
        note="Only dropout (LoRA dropout 0.05) consumes the RNG during training, so only the forward pass changes.",
    ),
    dict(
        id="custom-cli-lr-flag-ignored",
        path="cli", file="custom_impl/train.py",
        find="    lr = args.learning_rate if args.learning_rate is not None else (TINY_DEFAULT_LR if tiny else S.DEFAULT_TRAIN.learning_rate)",
        replace="    lr = TINY_DEFAULT_LR if tiny else (args.learning_rate if args.learning_rate is not None else S.DEFAULT_TRAIN.learning_rate)",
        stage="step", tool="check-flags", only="learning-rate", command=CUSTOM + ("--max-steps", "2"),
        expect_stage="learning-rate",
        mechanism="--lr is parsed but the embedded-tiny default wins over it: the flag never reaches the "
                  "configuration on the default model",
        keywords=("lr",),
        note="The tiny-model default was meant to apply only when --lr is absent; the precedence is inverted.",
    ),
    dict(
        id="custom-cli-full-finetune-flag-ignored",
        path="cli", file="custom_impl/train.py",
        find="                                   seed=args.seed, use_lora=args.use_lora, lora_dropout=args.lora_dropout)",
        replace="                                   seed=args.seed, lora_dropout=args.lora_dropout)",
        stage="forward", tool="check-flags", only="full-finetune", command=CUSTOM + ("--max-steps", "2"),
        expect_stage="full-finetune",
        mechanism="--full-finetune is parsed but never handed to the TrainConfig: the run keeps the default "
                  "LoRA setup",
        keywords=("full",),
        note="A refactor to TrainConfig.replace() dropped the keyword; the default (use_lora=True) is used.",
    ),
    dict(
        id="custom-cli-logged-loss-summed-over-micro-batches",
        path="cli", file="custom_impl/train.py",
        find="    local = [sum(float(lb.total.detach()) for lb in lbs) / n,",
        replace="    local = [sum(float(lb.total.detach()) for lb in lbs),",
        stage="log", tool="compare-traces", command=CUSTOM + STEPS3, expect_stage="log",
        mechanism="the logged total loss is summed over the --grad-accum micro-batches instead of averaged: "
                  "TensorBoard and metrics.jsonl show grad_accum x the loss",
        keywords=("sum",),
        note="The back-propagated losses are right; only the logged number (and every plot of it) is scaled.",
    ),
    dict(
        id="custom-cli-logged-text-loss-last-micro-batch",
        path="cli", file="custom_impl/train.py",
        find="sum(float(lb.text) for lb in lbs) / n,",
        replace="float(lbs[-1].text),",
        stage="log", tool="compare-traces", command=CUSTOM + STEPS3, expect_stage="log",
        mechanism="the logged text loss is the last micro-batch's, not the mean over the step's micro-batches",
        keywords=("micro-batch",),
        note="Written when grad-accum was 1; with accumulation the text curve is noisier and biased to one batch.",
    ),
    dict(
        id="reference-cli-term-sums-never-reset",
        path="cli", file="reference_impl/trainer.py",
        find="            self._term_sums = {k: 0.0 for k in self._term_sums}\n            self._term_count = 0\n",
        replace="",
        stage="log", tool="compare-traces", command=REFERENCE + STEPS3, expect_stage="log",
        mechanism="the text/audio loss sums behind the logged llm_loss/audio_loss are never reset: each log is "
                  "the running mean since step 1, not the logging window's",
        keywords=("reset",),
        note="Both sums and the count keep growing, so the logged terms lag and flatten; the total 'loss' "
             "(the Trainer's own) stays right.",
    ),
    dict(
        id="reference-cli-scheduler-not-saved",
        path="cli", file="reference_impl/trainer.py",
        find="        super()._save_optimizer_and_scheduler(output_dir)",
        replace="        torch.save(self.optimizer.state_dict(), os.path.join(output_dir, \"optimizer.pt\"))",
        stage="step", tool="check-resume", command=REFERENCE, expect_stage="step",
        mechanism="the checkpoint hook saves the optimizer but no scheduler.pt: on resume the Trainer loads "
                  "neither (it needs both files), so AdamW state and the LR schedule restart",
        keywords=("scheduler",),
        note="An override meant to add a crash hook replaced the Trainer's save instead of extending it.",
    ),
    dict(
        id="reference-cli-rng-not-restored",
        path="cli", file="reference_impl/trainer.py",
        find="        with torch.serialization.safe_globals(_numpy_rng_globals()):\n"
             "            super()._load_rng_state(checkpoint)",
        replace="        return   # rng_state.pth does not unpickle under weights_only: skip it",
        stage="forward", tool="check-resume", command=REFERENCE + ("--use-lora",), expect_stage="forward",
        mechanism="the RNG state is not restored on resume (the load is skipped to get past the weights_only "
                  "unpickling error): LoRA dropout masks of the resumed steps differ",
        keywords=("rng",),
        note="The tempting 'fix' for the torch>=2.6 weights_only crash on resume.",
    ),
    dict(
        id="reference-cli-warmup-flag-ignored-on-tiny",
        path="cli", file="reference_impl/train.py",
        find="    warmup = args.warmup_steps if args.warmup_steps is not None else (\n"
             "        TINY_DEFAULTS[\"warmup_steps\"] if tiny else tr.DEFAULT_TRAIN.warmup_steps)",
        replace="    warmup = TINY_DEFAULTS[\"warmup_steps\"] if tiny else (\n"
                "        args.warmup_steps if args.warmup_steps is not None else tr.DEFAULT_TRAIN.warmup_steps)",
        stage="step", tool="check-flags", only="warmup-steps", command=REFERENCE + ("--max-steps", "2"),
        expect_stage="warmup-steps",
        mechanism="--warmup-steps is parsed but the embedded-tiny default (0) overrides it",
        keywords=("warmup",),
        note="Same inverted precedence as the custom --lr mutant, on the reference CLI.",
    ),
    # ================================================================ 2. speed paths behind an option
    dict(
        id="custom-speed-chunked-ce-rows-detached",
        path="speed", file="custom_impl/fast_head.py",
        find="            parts.append(checkpoint(_ce_rows, rows[sl], weight, targets[sl], use_reentrant=False))",
        replace="            parts.append(checkpoint(_ce_rows, rows[sl].detach(), weight, targets[sl], use_reentrant=False))",
        stage="loss", tool="compare-traces",
        command=CUSTOM + STEPS3 + ("--speed", "default,ce-chunk-rows=2"), expect_stage="loss",
        mechanism="the chunked text-head cross-entropy (above the chunk threshold) detaches the hidden rows: the "
                  "text loss no longer back-propagates into the decoder",
        keywords=("gradient",),
        note="A .detach() added to silence a checkpoint warning / save memory; the loss value is unchanged, "
             "only gradients lose the text term.  Threshold forced low with ce-chunk-rows=2: the tiny data has "
             "~6 supervised text tokens a micro-batch, so 8 would never chunk.  Filed first at backward (where the "
             "effect shows); re-filed at loss, the stage whose code it changes (the gathered text cross-entropy), "
             "as the project files every mutant.  The run itself stops at step 1 (the gradient-flow guard: "
             "layer 1's text-MLP LoRA gets no gradient).",
    ),
    dict(
        id="custom-speed-fast-head-shift-off-by-one",
        path="speed", file="custom_impl/fast_head.py",
        find="    src = hidden[:, :-1] if shift else hidden                       # (B, L', H) rows predicting them",
        replace="    src = hidden[:, 1:] if shift else hidden                        # (B, L', H) rows predicting them",
        stage="loss", tool="compare-traces", command=CUSTOM + STEPS3, expect_stage="loss",
        mechanism="the gathered text head takes the rows one position late (hidden[:, 1:]): each supervised "
                  "label is scored from its own position instead of the previous one (no next-token shift)",
        keywords=("shift",),
        note="The gathered head is on by default on CPU too (fast-head), so the plain training command runs it.",
    ),
    dict(
        id="custom-speed-length-groups-sorted-ascending",
        path="speed", file="custom_impl/length_grouping.py",
        find="        chunk = sorted(perm[start:start + mega], key=lambda i: -lengths[i])   # stable: ties keep perm order",
        replace="        chunk = sorted(perm[start:start + mega], key=lambda i: lengths[i])    # stable: ties keep perm order",
        stage="dataset", tool="compare-traces", command=CUSTOM + STEPS3 + ("--speed", "+group-by-length"),
        expect_stage="dataset",
        mechanism="mega-batches sorted shortest first: the 'longest batch first' rule then picks the batch whose "
                  "FIRST sample is longest, i.e. a batch of short samples, so the OOM probe is lost and the "
                  "batches' composition changes",
        keywords=("order",),
        note="Sign of the sort key dropped.",
    ),
    dict(
        id="custom-speed-length-groups-unseeded-shuffle",
        path="speed", file="custom_impl/length_grouping.py",
        find="    order = torch.randperm(len(global_batches), generator=g).tolist()",
        replace="    order = torch.randperm(len(global_batches)).tolist()",
        stage="dataset", tool="compare-traces", command=CUSTOM + STEPS3 + ("--speed", "+group-by-length"),
        expect_stage="dataset",
        mechanism="the global batches are shuffled with the global RNG instead of the (seed, epoch) generator: "
                  "the batch order is no longer the documented function of (seed, epoch), differs between "
                  "DDP ranks and is not reproduced on resume",
        keywords=("order",),
        note="generator=g forgotten on the second randperm.",
    ),
    dict(
        id="custom-speed-index-ffn-split-cached-by-shape",
        path="speed", file="custom_impl/dual_ffn.py",
        find="        if self.split is None or self.split.mask is not mask or self.split.valid is not valid:",
        replace="        if self.split is None or self.split.mask.shape != mask.shape or self.split.valid is not valid:",
        stage="forward", tool="compare-traces", command=CUSTOM + STEPS3 + ("--speed", "default,+index-ffn"),
        expect_stage="forward", trace_args=("--layers",),
        mechanism="the text/audio token split is cached by mask SHAPE: a later batch with the same padded length "
                  "reuses the previous batch's split, so audio positions go through the text FFN and vice versa",
        keywords=("audio",),
        note="Keying a cache on shape is the usual way to make it 'compile-friendly'; batches are padded to "
             "multiples of 8, so equal shapes are common.",
    ),
    dict(
        id="custom-speed-index-ffn-stale-residual",
        path="speed", file="custom_impl/dual_ffn.py",
        find="    flat = hidden_states.reshape(-1, hidden_states.shape[-1])                       # (B*L, H)",
        replace="    flat = residual.reshape(-1, residual.shape[-1])                                 # (B*L, H)",
        stage="forward", tool="compare-traces", command=CUSTOM + STEPS3 + ("--speed", "default,+index-ffn"),
        expect_stage="forward", trace_args=("--layers",),
        mechanism="the index-based dual FFN reads the layer INPUT (the pre-attention residual) instead of the "
                  "post-attention hidden state: upstream reassigns `residual = hidden_states` after attention, "
                  "the port forgot it, so the attention output is dropped from every layer",
        keywords=("residual",),
        note="Only with +index-ffn (off on CPU by default, on on CUDA).",
    ),
    dict(
        id="custom-speed-lora-bf16-scaling-dropped",
        path="speed", file="custom_impl/lora_compute.py",
        find="    b = (self.lora_B[name].weight * self.scaling[name]).to(dtype)             # (out, r)",
        replace="    b = self.lora_B[name].weight.to(dtype)                                    # (out, r)",
        stage="backward", tool="compare-traces", command=CUSTOM + STEPS3 + ("--speed", "default,+lora-bf16"),
        expect_stage="backward",
        mechanism="the base-dtype LoRA forward folds lora_alpha / r into B and the fold was dropped: the "
                  "adapter update is scaled by 1 instead of alpha / r (2 here), so B's gradient is 1/2 of the "
                  "reference's from the first step (B starts at zero, so the first forward still agrees)",
        keywords=("lora_b",),
        note="Written by the author of the switch, not blind (the rest of the suite was): the scaling that "
             "peft applies outside the adapter is easy to lose when the computation is rewritten.",
    ),
    dict(
        id="custom-speed-unpad-ffn-last-real-row-skipped",
        path="speed", file="custom_impl/dual_ffn.py",
        find="            real = valid.reshape(-1).bool()                         # (B * L,)",
        replace="            real = (valid.cumsum(-1) < valid.sum(-1, keepdim=True)).reshape(-1)   # (B * L,)",
        stage="forward", tool="compare-traces",
        command=CUSTOM + STEPS3 + ("--speed", "default,+index-ffn,+unpad-ffn"), expect_stage="forward",
        trace_args=("--layers",),
        mechanism="the padding-free dual FFN takes each row's last real position for padding (an off-by-one in "
                  "the valid mask), so that position skips both FFNs: its hidden state, and every later "
                  "position attending to it, is no longer upstream's",
        keywords=("padding",),
        note="Written by the author of the switch, not blind. Only with +unpad-ffn (on on CUDA, off on CPU).",
    ),
    dict(
        id="custom-speed-fused-adamw-on-cpu-path",
        path="speed", file="custom_impl/speedups.py",
        find="    return opts.fused_adamw and torch.device(device).type == \"cuda\"",
        replace="    return opts.fused_adamw and torch.device(device).type == \"cpu\"",
        stage="step", tool="compare-traces", command=CUSTOM + STEPS3 + ("--speed", "default,-fused-adamw"),
        expect_stage="step", gpu=True,
        mechanism="the device test of fused AdamW is inverted: on CUDA the switch is silently never applied "
                  "(a speed loss, same numbers); on CPU with +fused-adamw fused AdamW runs",
        keywords=("fused",),
        note="GPU-only consequence (speed); on CPU with the switch off it changes nothing: an equivalent "
             "mutant for this command, kept to show what a CPU trace cannot see.",
    ),
    # ================================================================ 3. precision branches
    dict(
        id="custom-precision-autocast-on-any-device",
        path="precision", file="custom_impl/model.py",
        find="    if device.type == \"cuda\" and precision == \"bf16\":\n"
             "        return torch.autocast(device_type=\"cuda\", dtype=torch.bfloat16)",
        replace="    if precision == \"bf16\":\n"
                "        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)",
        stage="forward", tool="compare-traces", command=CUSTOM + STEPS3, expect_stage="forward",
        mechanism="bf16 autocast generalised to every device: the CPU run (whose recipe precision is bf16) now "
                  "computes its matmuls in bf16 instead of the documented fp32",
        keywords=("bf16",),
        note="'Make autocast device-agnostic' refactor; on CUDA nothing changes.",
    ),
    dict(
        id="reference-precision-bf16-on-cpu",
        path="precision", file="reference_impl/trainer.py",
        find="    return \"bf16\" if train.precision == \"bf16\" and torch.device(device).type == \"cuda\" else \"fp32\"",
        replace="    return \"bf16\" if train.precision == \"bf16\" else \"fp32\"",
        stage="forward", tool="compare-traces", command=REFERENCE + STEPS3, expect_stage="forward",
        mechanism="the reference's pure-bf16 policy applied on CPU too: weights loaded in bf16 and the "
                  "Trainer's bf16 autocast on, instead of fp32 on CPU",
        keywords=("bf16",),
        note="The device check dropped when 'simplifying' the precision policy.",
    ),
    dict(
        id="custom-precision-lora-adapters-in-base-dtype",
        path="precision", file="custom_impl/model.py",
        find="        model = get_peft_model(model, lora_config(train))",
        replace="        model = get_peft_model(model, lora_config(train), autocast_adapter_dtype=False)",
        stage="forward", tool="compare-traces", command=CUSTOM + STEPS3, expect_stage="step", gpu=True,
        mechanism="LoRA adapters created in the base model's dtype: on CUDA (bf16 frozen base) the trainable "
                  "adapters and their AdamW states are bf16, small updates round away",
        keywords=("bf16",),
        note="CUDA only: on CPU the base is fp32, so the adapters are fp32 either way (equivalent here).",
    ),
    dict(
        id="custom-precision-full-finetune-bf16-weights",
        path="precision", file="custom_impl/model.py",
        find="    if torch.device(device).type == \"cuda\" and train.use_lora and train.precision == \"bf16\":",
        replace="    if torch.device(device).type == \"cuda\" and train.precision == \"bf16\":",
        stage="forward", tool="compare-traces", command=CUSTOM + STEPS3 + ("--full-finetune",), expect_stage="step",
        gpu=True,
        mechanism="full fine-tuning on CUDA loads the trainable weights in bf16 (no fp32 master copy): AdamW "
                  "updates smaller than a bf16 ulp are lost",
        keywords=("bf16",),
        note="CUDA only (CPU always loads fp32).",
    ),
    # ================================================================ 4. settings other than the defaults
    dict(
        id="reference-settings-lora-alpha-flag-ignored",
        path="settings", file="reference_impl/train.py",
        find="                                     lora_r=args.lora_rank, lora_alpha=args.lora_alpha,",
        replace="                                     lora_r=args.lora_rank, lora_alpha=tr.DEFAULT_TRAIN.lora_alpha,",
        stage="backward", tool="check-flags", only="lora-alpha",
        command=REFERENCE + ("--max-steps", "2", "--use-lora"), expect_stage="lora-alpha",
        mechanism="--lora-alpha is parsed but the default alpha (32) is used: the LoRA scaling never follows the flag",
        keywords=("alpha",),
        note="Only visible with --use-lora (LoRA is opt-in in the reference).",
    ),
    dict(
        id="reference-settings-lora-dropout-hard-coded",
        path="settings", file="reference_impl/trainer.py",
        find="        lora_dropout=train.lora_dropout,",
        replace="        lora_dropout=0.1,",
        stage="forward", tool="check-flags", only="lora-dropout",
        command=REFERENCE + ("--max-steps", "2", "--use-lora"), expect_stage="lora-dropout",
        mechanism="LoRA dropout hard-coded to the reference's default 0.1 in the LoraConfig: --lora-dropout "
                  "(and any recipe's dropout) is ignored",
        keywords=("dropout",),
        note="A value copied from the reference script into the config builder.",
    ),
    dict(
        id="reference-settings-lora-rank-hard-coded",
        path="settings", file="reference_impl/trainer.py",
        find="        r=train.lora_r,",
        replace="        r=16,",
        stage="forward", tool="check-flags", only="lora-rank",
        command=REFERENCE + ("--max-steps", "2", "--use-lora"), expect_stage="lora-rank",
        mechanism="LoRA rank hard-coded to the default 16: --lora-rank is ignored",
        keywords=("rank",),
        note="Same pattern as the dropout one, for the rank.",
    ),
    dict(
        id="custom-settings-weight-decay-hard-coded",
        path="settings", file="custom_impl/stages.py",
        find="                                  eps=train.adam_eps, weight_decay=train.weight_decay)",
        replace="                                  eps=train.adam_eps, weight_decay=0.01)",
        stage="step", tool="compare", command=(), expect_stage="step",
        mechanism="AdamW weight decay hard-coded to the custom default 0.01: a recipe with another weight decay "
                  "(the harness's common configuration: 0.0) still decays",
        keywords=("weight_decay",),
        note="Invisible to the custom CLI (no weight-decay flag, default 0.01); the stage replay runs the "
             "common configuration (weight decay 0.0) and sees it.",
    ),
    dict(
        id="custom-settings-constant-schedule-warmup-dropped",
        path="settings", file="custom_impl/stages.py",
        find="        scheduler = get_constant_schedule_with_warmup(optimizer, train.warmup_steps)",
        replace="        scheduler = get_constant_schedule_with_warmup(optimizer, 0)",
        stage="step", tool="compare", command=(), expect_stage="step",
        mechanism="the constant schedule ignores warmup_steps: a constant-with-warmup recipe starts at the full "
                  "learning rate",
        keywords=("warmup",),
        note="Reachable only through a TrainConfig with schedule='constant' and warmup > 0: the custom CLI always "
             "runs cosine, and the harness's common configuration is constant with warmup 0.",
    ),
    dict(
        id="custom-settings-linear-schedule-total-steps-wrong",
        path="settings", file="custom_impl/stages.py",
        find="        scheduler = get_linear_schedule_with_warmup(optimizer, train.warmup_steps, train.max_steps)",
        replace="        scheduler = get_linear_schedule_with_warmup(optimizer, train.warmup_steps, train.max_steps * 10)",
        stage="step", tool="compare", command=(), expect_stage="step",
        mechanism="the linear schedule decays over 10x max_steps (a per-micro-batch step count): the learning "
                  "rate barely decays",
        keywords=("schedule",),
        note="Reachable only with schedule='linear', which neither the custom CLI nor the common configuration uses.",
    ),
]
