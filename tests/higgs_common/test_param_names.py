"""Canonical parameter names and peft-style LoRA target matching."""

from higgs_common.param_names import canonical_name, common_prefix_alignment, lora_target_matches


def test_wrappers_and_adapter_keys_are_removed():
    raw = "module._orig_mod.base_model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert canonical_name(raw) == "layers.0.self_attn.q_proj.lora_A.weight"
    assert canonical_name("base_model.model.layers.0.mlp.up_proj.base_layer.weight") == "layers.0.mlp.up_proj.weight"
    assert canonical_name(canonical_name(raw)) == canonical_name(raw)


def test_other_adapter_key_kept_when_asked_for_one():
    assert canonical_name("x.q_proj.lora_B.other.weight", adapter_name="default") == "x.q_proj.lora_B.other.weight"


def test_wrapper_attribute_found_by_alignment():
    a = ["model.layers.0.q.weight", "model.layers.1.q.weight"]
    b = ["module.layers.0.q.weight", "module.layers.1.q.weight"]
    assert common_prefix_alignment(a, b) == ("model.", "")


def test_lora_targets_match_as_peft_does():
    assert lora_target_matches("base_model.model.layers.0.self_attn.q_proj", ["self_attn.q_proj"])
    assert lora_target_matches("layers.0.self_attn.q_proj", ["q_proj"])
    assert not lora_target_matches("layers.0.self_attn.q_proj_x", ["q_proj"])
    assert lora_target_matches("layers.0.self_attn.q_proj", r".*\.(q|k)_proj")
    assert not lora_target_matches("layers.0.self_attn.o_proj", r".*\.(q|k)_proj")
