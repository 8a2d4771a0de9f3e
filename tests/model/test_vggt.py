import pytest
import torch

from vggt_deploy.errors import UserError
from vggt_deploy.model.config import VGGTConfig, get_config, list_models
from vggt_deploy.model.grounding import grid_boxes
from vggt_deploy.model.vggt import create_model


def _tiny(**overrides):
    torch.manual_seed(0)
    return create_model(get_config("vggt_tiny", **overrides)).eval()


def test_output_shapes_follow_the_contract():
    model = _tiny()
    cfg = model.cfg
    images = torch.randn(3, 3, cfg.image_size, cfg.image_size)
    queries = torch.randn(5, cfg.ground_dim)
    boxes, logits, class_logits = model(images, queries)
    assert boxes.shape == (3, cfg.num_grounding_tokens, 4)
    assert logits.shape == (3, cfg.num_grounding_tokens, 5)
    assert class_logits.shape == (3, cfg.num_classes)


def test_untrained_tokens_predict_their_reference_boxes():
    model = _tiny(num_grounding_tokens=9)
    boxes, _, _ = model(torch.randn(2, 3, 32, 32), torch.randn(1, model.cfg.ground_dim))
    expected = grid_boxes(3).expand(2, -1, -1)
    assert torch.allclose(boxes, expected, atol=1e-6)


def test_same_seed_same_model_and_outputs():
    a, b = _tiny(), _tiny()
    x = torch.randn(2, 3, 32, 32)
    q = torch.randn(4, a.cfg.ground_dim)
    with torch.no_grad():
        for ya, yb in zip(a(x, q), b(x, q)):
            assert torch.equal(ya, yb)


def test_batch_items_are_independent():
    model = _tiny()
    x = torch.randn(3, 3, 32, 32)
    q = torch.randn(4, model.cfg.ground_dim)
    with torch.no_grad():
        full = model(x, q)
        single = model(x[1:2], q)
    for f, s in zip(full, single):
        assert torch.allclose(f[1:2], s, atol=1e-5)


def test_grounding_token_count_and_placement_are_config_fields():
    model = _tiny(num_grounding_tokens=16, grounding_layers=(2,))
    boxes, logits, _ = model(torch.randn(1, 3, 32, 32), torch.randn(2, model.cfg.ground_dim))
    assert boxes.shape[1] == 16 and logits.shape[1] == 16
    assert len(model.grounding) == 1


def test_query_encoder_ignores_padding_and_normalises():
    model = _tiny()
    ids = torch.tensor([[3, 4, 0, 0], [3, 4, 0, 0]])
    longer = torch.tensor([[3, 4, 0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        e = model.encode_queries(ids)
        e_long = model.encode_queries(longer)
    assert torch.allclose(e.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(e[0], e_long[0], atol=1e-5)


def test_registry_has_tiny_and_small_and_refuses_unknown_names():
    assert {"vggt_tiny", "vggt_small"} <= set(list_models())
    small = get_config("vggt_small")
    assert small.embed_dim >= 256 and small.embed_dim // small.num_heads == 64
    with pytest.raises(UserError, match="unknown model name 'vggt_huge'.*vggt_small"):
        get_config("vggt_huge")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_grounding_tokens": 5}, "perfect square"),
        ({"grounding_layers": (3,)}, "grounding_layers"),
        ({"num_heads": 3}, "divisible"),
    ],
)
def test_bad_configs_are_refused_with_the_field_named(overrides, message):
    with pytest.raises(UserError, match=message):
        get_config("vggt_tiny", **overrides)


def test_config_round_trip_and_hash():
    cfg = get_config("vggt_tiny")
    again = VGGTConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.config_hash() == cfg.config_hash()
    assert get_config("vggt_tiny", depth=3).config_hash() != cfg.config_hash()
    with pytest.raises(UserError, match="unknown config field"):
        VGGTConfig.from_dict({**cfg.to_dict(), "depht": 3})
