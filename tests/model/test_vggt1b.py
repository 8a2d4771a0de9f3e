"""The VGGT-1B port: shapes, checkpoint compatibility, strict loading, RoPE and export.

Reference-size checks build the model on the meta device (no 5 GB allocation); all
forward passes use the tiny config.
"""

from __future__ import annotations

import collections
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vggt_deploy.errors import UserError
from vggt_deploy.model.vggt1b import (
    OUTPUT_NAMES,
    VGGT1B,
    create_vggt1b,
    get_vggt1b_config,
    list_vggt1b_configs,
    load_vggt1b_weights,
    pose_encoding_to_extri_intri,
)
from vggt_deploy.model.vggt1b.dino import aa_bicubic_matrix
from vggt_deploy.model.vggt1b.dpt_head import uv_pos_embed_np
from vggt_deploy.model.vggt1b.layers import Attention
from vggt_deploy.model.vggt1b.rope import RotaryEmbedding2D, apply_rope, token_positions

# Parameters of the reference VGGT() without its track head, counted by hand in
# test_reference_parameter_count_matches_the_reference_definitions. The public checkpoint
# (~1.26e9 tensors' worth) also holds the track head, which the port does not build.
VGGT_1B_PARAMS_WITHOUT_TRACK_HEAD = 1_190_596_120


@pytest.fixture(scope="module")
def tiny() -> VGGT1B:
    torch.manual_seed(0)
    model = create_vggt1b("vggt_1b_tiny")
    with torch.no_grad():  # move LayerScale, tokens and norms off their init values
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def meta_reference() -> VGGT1B:
    with torch.device("meta"):
        return VGGT1B(get_vggt1b_config("vggt_1b"))


def test_registry_names_and_errors():
    assert list_vggt1b_configs() == ["vggt_1b", "vggt_1b_tiny"]
    assert get_vggt1b_config("vggt_1b").img_size == 518
    assert get_vggt1b_config("vggt_1b_tiny", depth=4).depth == 4
    with pytest.raises(UserError, match="did you mean 'vggt_1b'"):
        get_vggt1b_config("vggt_1c")
    with pytest.raises(UserError, match="aa_order"):
        get_vggt1b_config("vggt_1b_tiny", aa_order=("frame", "frame"))
    with pytest.raises(UserError, match="unknown VGGT1BConfig field"):
        get_vggt1b_config("vggt_1b_tiny", depht=3)


@pytest.mark.parametrize("frames", [2, 3])
def test_tiny_forward_outputs(tiny, frames):
    h, w = 42, 56  # non-square: exercises the DINO position-embedding resize
    with torch.no_grad():
        outs = tiny(torch.rand(frames, 3, h, w))
    assert len(outs) == len(OUTPUT_NAMES) == 5
    shapes = dict(zip(OUTPUT_NAMES, (tuple(o.shape) for o in outs)))
    assert shapes == {
        "pose_enc": (1, frames, 9), "depth": (1, frames, h, w, 1), "depth_conf": (1, frames, h, w),
        "world_points": (1, frames, h, w, 3), "world_points_conf": (1, frames, h, w),
    }
    assert all(torch.isfinite(o).all() for o in outs)
    assert (outs[1] > 0).all() and (outs[2] >= 1).all() and (outs[4] >= 1).all()


def test_batched_input_equals_per_scene_runs(tiny):
    scenes = torch.rand(2, 3, 3, 56, 56)
    with torch.no_grad():
        batched = tiny(scenes)
        single = tiny(scenes[1])
    for b, s in zip(batched, single):
        assert torch.allclose(b[1:2], s, atol=1e-5)


def test_dpt_frame_chunking_does_not_change_results(tiny):
    images = torch.rand(5, 3, 28, 42)
    chunked = VGGT1B(get_vggt1b_config("vggt_1b_tiny", dpt_frames_chunk_size=2)).eval()
    chunked.load_state_dict(tiny.state_dict())
    with torch.no_grad():
        for a, b in zip(tiny(images), chunked(images)):
            assert torch.allclose(a, b, atol=1e-6)


def _block(dim: int, hidden: int, qk_head_dim: int = 0) -> int:
    """norm1, qkv, [q/k-norm], proj, ls1, norm2, fc1, fc2, ls2 (all with biases)."""
    return (2 * dim + 3 * dim * dim + 3 * dim + 4 * qk_head_dim + dim * dim + dim + dim + 2 * dim
            + dim * hidden + hidden + hidden * dim + dim + dim)


def _dpt(dim_in: int, out_dim: int, oc=(256, 512, 1024, 1024), f: int = 256) -> int:
    n = 2 * dim_in + sum(dim_in * o + o for o in oc)  # norm, 1x1 projects
    n += oc[0] * oc[0] * 16 + oc[0] + oc[1] * oc[1] * 4 + oc[1] + oc[3] * oc[3] * 9 + oc[3]  # resize_layers
    n += sum(o * f * 9 for o in oc)  # layerN_rn, bias-free
    rcu = 2 * (f * f * 9 + f)
    n += 3 * (2 * rcu + f * f + f) + (rcu + f * f + f)  # refinenet1-3, refinenet4 (no residual unit)
    return n + f * (f // 2) * 9 + f // 2 + (f // 2) * 32 * 9 + 32 + 32 * out_dim + out_dim  # output convs


def test_reference_parameter_count_matches_the_reference_definitions(meta_reference):
    c, d = 1024, 2048
    dino = 3 * c * 14 * 14 + c + c + 1370 * c + 4 * c + c + 24 * _block(c, 4 * c) + 2 * c
    aggregator = dino + 48 * _block(c, 4 * c, qk_head_dim=64) + 2 * c + 2 * 4 * c
    camera = (4 * _block(d, 4 * d) + 4 * d + 9 + 9 * d + d + d * 3 * d + 3 * d
              + d * (d // 2) + d // 2 + (d // 2) * 9 + 9)
    expected = aggregator + camera + _dpt(d, 4) + _dpt(d, 2)
    assert expected == VGGT_1B_PARAMS_WITHOUT_TRACK_HEAD
    assert sum(p.numel() for p in meta_reference.parameters()) == expected
    assert sum(p.numel() for p in meta_reference.aggregator.patch_embed.parameters()) == dino  # ViT-L/14 + 4 reg


def test_reference_state_dict_keys_and_shapes(meta_reference):
    sd = meta_reference.state_dict()
    assert {k.split(".")[0] for k in sd} == {"aggregator", "camera_head", "depth_head", "point_head"}
    assert not any("_resnet_" in k for k in sd)  # ImageNet mean/std are non-persistent buffers
    expected = {
        "aggregator.camera_token": (1, 2, 1, 1024),
        "aggregator.register_token": (1, 2, 4, 1024),
        "aggregator.patch_embed.pos_embed": (1, 1370, 1024),
        "aggregator.patch_embed.cls_token": (1, 1, 1024),
        "aggregator.patch_embed.register_tokens": (1, 4, 1024),
        "aggregator.patch_embed.mask_token": (1, 1024),
        "aggregator.patch_embed.patch_embed.proj.weight": (1024, 3, 14, 14),
        "aggregator.patch_embed.blocks.23.ls2.gamma": (1024,),
        "aggregator.patch_embed.norm.bias": (1024,),
        "aggregator.frame_blocks.0.attn.qkv.weight": (3072, 1024),
        "aggregator.frame_blocks.0.attn.q_norm.weight": (64,),
        "aggregator.global_blocks.23.attn.k_norm.bias": (64,),
        "aggregator.frame_blocks.5.ls1.gamma": (1024,),
        "aggregator.global_blocks.11.mlp.fc1.weight": (4096, 1024),
        "camera_head.trunk.3.attn.qkv.weight": (6144, 2048),
        "camera_head.empty_pose_tokens": (1, 1, 9),
        "camera_head.embed_pose.weight": (2048, 9),
        "camera_head.poseLN_modulation.1.weight": (6144, 2048),
        "camera_head.pose_branch.fc2.weight": (9, 1024),
        "depth_head.projects.2.weight": (1024, 2048, 1, 1),
        "depth_head.resize_layers.0.weight": (256, 256, 4, 4),
        "depth_head.resize_layers.3.weight": (1024, 1024, 3, 3),
        "depth_head.scratch.layer4_rn.weight": (256, 1024, 3, 3),
        "depth_head.scratch.refinenet1.resConfUnit1.conv1.weight": (256, 256, 3, 3),
        "depth_head.scratch.output_conv1.weight": (128, 256, 3, 3),
        "depth_head.scratch.output_conv2.2.weight": (2, 32, 1, 1),
        "point_head.scratch.output_conv2.2.weight": (4, 32, 1, 1),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    for absent in ("aggregator.patch_embed.head.weight", "aggregator.frame_blocks.0.attn.qkv.q_norm",
                   "depth_head.scratch.refinenet4.resConfUnit1.conv1.weight", "camera_head.adaln_norm.weight",
                   "aggregator.patch_embed.blocks.0.attn.q_norm.weight", "depth_head.resize_layers.2.weight"):
        assert absent not in sd
    assert len(sd) == 1403


def test_safetensors_roundtrip_is_strict_and_exact(tiny, tmp_path):
    path = tmp_path / "model.safetensors"
    sd = {k: v.contiguous() for k, v in tiny.state_dict().items()}
    save_file({**sd, "track_head.tracker.fmap_norm.weight": torch.ones(8)}, str(path))
    fresh = create_vggt1b("vggt_1b_tiny")
    report = load_vggt1b_weights(fresh, path)
    assert report.dropped_track_head_keys == 1 and report.num_loaded == len(sd)
    images = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        for a, b in zip(tiny(images), fresh(images)):
            assert torch.equal(a, b)


def test_pt_checkpoint_wrapped_under_model_loads(tiny, tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": tiny.state_dict(), "epoch": 3}, path)
    fresh = create_vggt1b("vggt_1b_tiny")
    load_vggt1b_weights(fresh, path)
    assert all(torch.equal(a, b) for a, b in zip(tiny.state_dict().values(), fresh.state_dict().values()))


@pytest.mark.parametrize("damage, message", [
    (lambda sd: sd.pop("aggregator.camera_token"), "1 missing: aggregator.camera_token"),
    (lambda sd: sd.update({"aggregator.extra": torch.zeros(1)}), "1 unexpected: aggregator.extra"),
    (lambda sd: sd.update({"camera_head.empty_pose_tokens": torch.zeros(1, 1, 7)}), "another shape"),
])
def test_wrong_keys_raise_a_user_error_naming_them(tiny, tmp_path, damage, message):
    sd = {k: v.clone() for k, v in tiny.state_dict().items()}
    damage(sd)
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    with pytest.raises(UserError, match=message) as info:
        load_vggt1b_weights(create_vggt1b("vggt_1b_tiny"), path)
    assert "get_vggt1b_config('vggt_1b')" in str(info.value)


def test_reference_size_config_rejects_tiny_weights(tiny, tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file(tiny.state_dict(), str(path))
    with torch.device("meta"):
        big = VGGT1B(get_vggt1b_config("vggt_1b"))
    with pytest.raises(UserError, match="missing: .*another shape"):
        load_vggt1b_weights(big, path)


class _NotTensors:
    pass


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": _NotTensors()}, path)
    with pytest.raises(UserError, match="weights-only"):
        load_vggt1b_weights(create_vggt1b("vggt_1b_tiny"), path)
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\0" * 16)
    with pytest.raises(UserError, match="unsupported weights format"):
        load_vggt1b_weights(create_vggt1b("vggt_1b_tiny"), other)


def test_forward_never_calls_cartesian_prod(tiny):
    called = set()

    class Record(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            called.add(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Record():
        tiny(torch.rand(2, 3, 42, 56))
    assert "cartesian_prod" not in called and "embedding" not in called
    assert "scaled_dot_product_attention" in called  # the recorder did see the forward


def test_rope_positions_match_a_loop():
    h, w, special = 3, 5, 5
    expected = [(0, 0)] * special + [(y + 1, x + 1) for y in range(h) for x in range(w)]
    assert token_positions(h, w, special).tolist() == [list(p) for p in expected]


def test_rope_tables_and_rotation_match_the_reference_math():
    h, w, special, head_dim, freq = 3, 4, 5, 16, 100.0
    cos, sin = RotaryEmbedding2D(freq).tables(h, w, special, head_dim, torch.device("cpu"), torch.float64)
    positions = [(0, 0)] * special + [(y + 1, x + 1) for y in range(h) for x in range(w)]
    half = head_dim // 2  # one half per axis; frequencies freq ** (-2k / half), each used twice
    for t, (py, px) in enumerate(positions):
        for axis, p in enumerate((py, px)):
            for j in range(half):
                angle = p * freq ** (-(2 * (j % (half // 2))) / half)
                assert cos[t, axis * half + j].item() == pytest.approx(math.cos(angle), abs=2e-6)
                assert sin[t, axis * half + j].item() == pytest.approx(math.sin(angle), abs=2e-6)
    # Rotating a (B, heads, S*P, D) tensor == rotating each token's axis halves as 2D pairs (t, t + D/4).
    torch.manual_seed(0)
    frames = 2
    x = torch.randn(1, 2, frames * len(positions), head_dim, dtype=torch.float64)
    got = apply_rope(x, cos, sin)
    want = torch.empty_like(x)
    quarter = head_dim // 4
    for n in range(x.shape[2]):
        py, px = positions[n % len(positions)]
        for axis, p in enumerate((py, px)):
            for j in range(quarter):
                angle = p * freq ** (-(2 * j) / half)
                a, b = axis * half + j, axis * half + j + quarter
                want[..., n, a] = x[..., n, a] * math.cos(angle) - x[..., n, b] * math.sin(angle)
                want[..., n, b] = x[..., n, b] * math.cos(angle) + x[..., n, a] * math.sin(angle)
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("size_in, size_out", [(37, 25), (37, 37), (37, 12), (4, 3), (4, 7), (5, 13)])
def test_position_resize_matrix_matches_antialiased_bicubic(size_in, size_out):
    torch.manual_seed(0)
    grid = torch.randn(1, 3, size_in, size_in, dtype=torch.float64)
    want = F.interpolate(grid, size=(size_out, size_in), mode="bicubic", antialias=True)
    mat = torch.from_numpy(aa_bicubic_matrix(size_in, size_out).copy())
    assert torch.allclose(mat @ grid, want, atol=1e-9)


def test_dino_position_embedding_matches_torch_interpolate(tiny):
    dino = tiny.aggregator.patch_embed
    pos = dino.pos_embed.detach()
    m, c = dino.grid, pos.shape[-1]
    for gh, gw in [(3, 4), (5, 2), (4, 4)]:
        grid = pos[:, 1:].reshape(1, m, m, c).permute(0, 3, 1, 2)
        resized = F.interpolate(grid, size=(gh, gw), mode="bicubic", antialias=True)
        want = torch.cat([pos[:, :1], resized.permute(0, 2, 3, 1).reshape(1, -1, c)], dim=1)
        assert torch.allclose(dino.position_embedding(gh, gw).detach(), want, atol=1e-6)


def test_dpt_uv_embedding_matches_the_reference_math():
    height, width, channels, aspect = 3, 5, 8, 70 / 42
    table = uv_pos_embed_np(height, width, channels, aspect)
    diag = math.sqrt(aspect**2 + 1)
    quarter = channels // 4
    for i in range(height):
        for j in range(width):
            u = (aspect / diag) * (width - 1) / width * (2 * j / (width - 1) - 1)
            v = (1 / diag) * (height - 1) / height * (2 * i / (height - 1) - 1)
            for half, coord in enumerate((u, v)):
                for k in range(quarter):
                    angle = coord / 100.0 ** (k / quarter)
                    base = half * 2 * quarter
                    assert table[base + k, i, j] == pytest.approx(0.1 * math.sin(angle), abs=1e-7)
                    assert table[base + quarter + k, i, j] == pytest.approx(0.1 * math.cos(angle), abs=1e-7)


def test_pose_encoding_decodes_to_cameras():
    enc = torch.tensor([[[1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 2.0, math.pi / 2, math.pi / 3]]])
    extrinsics, intrinsics = pose_encoding_to_extri_intri(enc, (100, 200))
    assert torch.allclose(extrinsics[0, 0], torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 2], [0, 0, 1, 3]]))
    assert intrinsics[0, 0, 1, 1].item() == pytest.approx(50.0)
    assert intrinsics[0, 0, 0, 0].item() == pytest.approx(100.0 / math.tan(math.pi / 6))
    assert intrinsics[0, 0, :2, 2].tolist() == [100.0, 50.0]


def test_onnx_export_with_dynamic_frames_matches_pytorch(tiny):
    """The dynamo export (as vggt_deploy.export.onnx_export uses it) runs at S=2 and S=3 in ONNX Runtime."""
    import onnxruntime as ort

    frames = torch.export.Dim("frames", min=1, max=64)
    previous, Attention.fused_attn = Attention.fused_attn, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                tiny, (torch.rand(2, 3, 42, 56),), dynamo=True, opset_version=18, verbose=False,
                input_names=["images"], output_names=list(OUTPUT_NAMES), dynamic_shapes=({0: frames},))
    finally:
        Attention.fused_attn = previous
    proto = program.model_proto
    ops = collections.Counter(node.op_type for node in proto.graph.node)
    forbidden = {"If", "Loop", "Scan", "SequenceConstruct", "SequenceAt", "SequenceInsert", "SplitToSequence",
                 "ConcatFromSequence", "Range", "NonZero"}
    assert not forbidden & set(ops), ops
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for s in (2, 3):
        images = torch.rand(s, 3, 42, 56)
        with torch.no_grad():
            want = tiny(images)
        got = session.run(None, {"images": images.numpy()})
        for name, g, w in zip(OUTPUT_NAMES, got, want):
            assert g.shape == tuple(w.shape), name
            assert np.abs(g - w.numpy()).max() < 1e-4, name
