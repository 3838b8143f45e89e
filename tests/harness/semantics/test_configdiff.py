from harness.semantics.configdiff import config_diff, flatten


def test_flatten_and_rows():
    rows = config_diff({"lora": {"r": 16, "targets": ("q", "k")}, "lr": 5e-5},
                       {"lora": {"r": 32, "targets": ["q", "k"]}, "betas": [0.9, 0.95]})
    by = {r["setting"]: r for r in rows}
    assert by["lora.r"] == {"setting": "lora.r", "reference": 16, "custom": 32, "same": False}
    assert by["lora.targets"]["same"] is True
    assert by["lr"]["custom"] == "—" and by["betas"]["reference"] == "—"
    assert [r["setting"] for r in rows] == sorted(by)
    assert flatten({"a": {"b": {"c": 1}}}) == {"a.b.c": 1}
