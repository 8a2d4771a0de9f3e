import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from vggt_deploy.errors import UserError
from vggt_deploy.quant.plan import PlanError, parse_plan

LAYERS = ["patch_embed.stem.0", "blocks.0.attn.q", "blocks.0.mlp.fc1", "blocks.7.mlp.fc2", "grounding.0.token_to_image.q", "heads.box.mlp.0"]

GOOD = """\
version: 1
target: tensorrt
calibration: {method: percentile, percentile: 99.9, images: calib_data, num_images: 16}
default: {precision: int8, weight_granularity: per-channel}
rules:
  - match: "patch_embed*"
    weight_granularity: per-channel
  - match: "blocks.[6-7].*"
    weight_granularity: per-tensor
  - match: "grounding.*"
    precision: fp16
  - match: "re:heads\\\\..*"
    precision: fp32
"""


def test_first_matching_rule_wins_and_defaults_fill_the_rest():
    plan = parse_plan(GOOD, "good.yaml")
    resolved = plan.resolve(LAYERS)
    assert resolved["blocks.0.attn.q"].rule is None and resolved["blocks.0.attn.q"].spec.precision == "int8"
    assert resolved["blocks.7.mlp.fc2"].spec.weight_granularity == "per-tensor"
    assert resolved["grounding.0.token_to_image.q"].spec.precision == "fp16"
    assert resolved["heads.box.mlp.0"].spec.precision == "fp32" and resolved["heads.box.mlp.0"].rule == 3
    assert plan.calibration.percentile == 99.9 and plan.calibration.num_images == 16


def test_calibration_key_ignores_rules():
    a = parse_plan(GOOD)
    b = parse_plan(GOOD.replace("precision: fp16", "precision: fp32"))
    assert a.calibration.cache_key() == b.calibration.cache_key()
    assert a.plan_hash() != b.plan_hash()


@pytest.mark.parametrize(
    "text, message",
    [
        ("version: 1\ntarget: tensorrt\ndefault: {precision: int16}\n", "good.yaml:3: default.precision: int16 cannot run on target tensorrt"),
        ("version: 1\ndefualt: {}\n", "good.yaml:2: defualt: unknown key (did you mean 'default'?)"),
        ("version: 2\n", "good.yaml:1: version: unsupported version 2"),
        ("target: tensorrt\n", "version: missing"),
        ("version: 1\ncalibration: {num_images: many}\n", "good.yaml:2: calibration.num_images: expected int, got 'many'"),
        ("version: 1\nrules:\n  - precision: fp16\n", "good.yaml:3: rules[0]: missing 'match'"),
        ("version: 1\nrules:\n  - match: x\n    precison: fp16\n", "good.yaml:4: rules[0].precison: unknown key (did you mean 'precision'?)"),
        ("version: 1\ntarget: tensorrt\nrules:\n  - match: x\n    activations: dynamic\n", "dynamic activations are not available on target tensorrt"),
        ("version: 1\ndefault: {precision: int4}\n", "int4 is weight-only: it needs weight_granularity: per-block and activations: off"),
        ("version: 1\n  bad: [\n", "good.yaml:2: malformed YAML"),
    ],
)
def test_bad_plans_name_file_line_and_field(text, message):
    with pytest.raises(PlanError) as err:
        parse_plan(text, "good.yaml")
    assert message in str(err.value)


def test_rule_matching_nothing_suggests_names():
    plan = parse_plan("version: 1\nrules:\n  - match: blocks.0.attn.qq\n    precision: fp32\n", "p.yaml")
    with pytest.raises(PlanError, match=r"p.yaml:3: rules\[0\].match 'blocks.0.attn.qq' matches no layer; did you mean: blocks.0.attn.q"):
        plan.resolve(LAYERS)


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 300) | st.floats(allow_nan=True) | st.text(max_size=12)
    | st.sampled_from(["int8", "fp16", "per-tensor", "static", "dynamic", "tensorrt", "percentile", "blocks.*"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["version", "target", "calibration", "default", "rules", "match", "precision", "method",
                         "num_images", "weight_granularity", "activations", "input", "size", "mean", "junk"]),
        inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_random_documents_load_or_raise_a_plan_error(doc):
    text = yaml.safe_dump(doc)
    try:
        plan = parse_plan(text, "fuzz.yaml")
    except UserError:
        return
    plan.resolve(["blocks.0.attn.q"]) if not plan.rules else None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_random_text_loads_or_raises_a_plan_error(text):
    try:
        parse_plan(text, "fuzz.yaml")
    except UserError:
        pass
