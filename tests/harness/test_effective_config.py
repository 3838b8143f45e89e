"""Both pipelines describe their settings in the same sections, so the configuration diff lines up."""

from harness.semantics.configdiff import config_diff
from higgs_common.stages import EFFECTIVE_CONFIG_SECTIONS
from custom_impl import stages as custom
from reference_impl import stages as reference


def test_both_sides_report_the_declared_sections(ctx):
    ref = reference.effective_config(ctx, reference.DEFAULT_TRAIN)
    cus = custom.effective_config(ctx, custom.DEFAULT_TRAIN)
    for section in EFFECTIVE_CONFIG_SECTIONS:
        assert section in ref and section in cus, section
    rows = {r["setting"]: r for r in config_diff(ref, cus)}
    # The differences the seed report tabulated must show up, generated from the code.
    assert rows["collator.mask_audio_out_token_label"]["same"] is False
    assert rows["collator.use_delay_pattern"] == {"setting": "collator.use_delay_pattern", "reference": False,
                                                  "custom": True, "same": False}
    assert rows["collator.return_audio_in_tokens"]["same"] is True
    assert rows["optimizer.betas"]["custom"] == [0.9, 0.95]
