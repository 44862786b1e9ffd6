"""Partial U-Net steps (DeepCache) through diffusers ModelHooks on stock modules."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import UNet2DModel

from flexnas.engine.partial import PartialUNet, list_branches
from flexnas.errors import FlexnasError

EMBEDDED_BRANCHES = ['conv_in', 'down_blocks.0.resnets.0', 'down_blocks.0.downsamplers.0',
                     'down_blocks.1.resnets.0', 'down_blocks.1.downsamplers.0', 'down_blocks.2.resnets.0']


def expected_num_branches(unet) -> int:
    return 1 + sum(len(b.resnets) + len(getattr(b, "downsamplers", None) or []) for b in unet.down_blocks)


def expected_names(unet) -> list[str]:
    names = ["conv_in"]
    for i, b in enumerate(unet.down_blocks):
        names += [f"down_blocks.{i}.resnets.{j}" for j in range(len(b.resnets))]
        names += [f"down_blocks.{i}.downsamplers.{j}" for j in range(len(getattr(b, "downsamplers", None) or []))]
    return names


def deep_unet():
    """A different layout: 4 resolution levels, 2 resnets per down block, attention in two."""
    torch.manual_seed(1)
    return UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=2,
                       block_out_channels=(16, 16, 32, 32), norm_num_groups=8, attention_head_dim=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")).eval()


def inputs_for(unet, seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    x = torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
    kw = {}
    if getattr(cfg, "cross_attention_dim", None):
        kw["encoder_hidden_states"] = torch.randn(batch, 5, cfg.cross_attention_dim, generator=g)
    return x, kw


def run(unet, x, t, kw):
    with torch.no_grad():
        return unet(x, t, **kw, return_dict=False)[0]


# ----------------------------------------------------------------------------- branches
def test_embedded_branches(embedded_unet):
    branches = list_branches(embedded_unet)
    assert [b.name for b in branches] == EMBEDDED_BRANCHES
    assert [b.index for b in branches] == list(range(6))
    for b in branches:  # each name is a real module of the model
        assert embedded_unet.get_submodule(b.name) is not None


def test_other_layout_branches():
    unet = deep_unet()
    branches = list_branches(unet)
    assert len(branches) == expected_num_branches(unet) == 1 + 4 * 2 + 3
    assert [b.name for b in branches] == expected_names(unet)
    assert branches[-1].name == "down_blocks.3.resnets.1"


def test_condition_unet_branches(cond_unet):
    branches = list_branches(cond_unet)
    assert len(branches) == expected_num_branches(cond_unet) == 4
    assert [b.name for b in branches] == ["conv_in", "down_blocks.0.resnets.0", "down_blocks.0.downsamplers.0",
                                          "down_blocks.1.resnets.0"]
    assert PartialUNet(cond_unet).num_branches == 4


def test_not_a_unet():
    from diffusers import DiTTransformer2DModel

    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=1,
                                sample_size=8, patch_size=2, num_embeds_ada_norm=10)
    with pytest.raises(FlexnasError, match="DiTTransformer2DModel is not a supported denoiser"):
        list_branches(dit)
    with pytest.raises(FlexnasError, match="not a supported denoiser"):
        PartialUNet(dit)
    with pytest.raises(FlexnasError, match="Linear is not a supported denoiser"):
        list_branches(torch.nn.Linear(2, 2))


# ----------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("which", ["embedded", "deep", "cond"])
def test_partial_right_after_full_equals_full(which, embedded_unet, cond_unet):
    unet = {"embedded": embedded_unet, "deep": deep_unet(), "cond": cond_unet}[which]
    x, kw = inputs_for(unet)
    t = torch.tensor(500)
    with PartialUNet(unet) as pu:
        assert pu.num_branches == expected_num_branches(unet)
        pu.full()
        ref = run(unet, x, t, kw)
        for b in range(pu.num_branches):
            pu.partial(b)
            out = run(unet, x, t, kw)
            assert (out - ref).abs().max().item() <= 1e-5, f"branch {b}"


@pytest.mark.parametrize("which", ["embedded", "cond"])
def test_partial_serves_the_cache(which, embedded_unet, cond_unet):
    """At another input, a PARTIAL step reuses deep features of the last FULL step: it differs from FULL."""
    unet = {"embedded": embedded_unet, "cond": cond_unet}[which]
    x, kw = inputs_for(unet, seed=0)
    x2, kw2 = inputs_for(unet, seed=1)
    with PartialUNet(unet) as pu:
        pu.full()
        run(unet, x, torch.tensor(700), kw)
        pu.off()
        fresh = run(unet, x2, torch.tensor(600), kw2)
        for b in range(pu.num_branches):
            pu.partial(b)
            out = run(unet, x2, torch.tensor(600), kw2)
            assert (out - fresh).abs().max().item() > 1e-4, f"branch {b} did not use the cache"
        # "off" mode is the plain forward, even with a cache filled
        pu.off()
        assert torch.equal(run(unet, x2, torch.tensor(600), kw2), fresh)


def test_partial_before_full_raises(embedded_unet):
    x, kw = inputs_for(embedded_unet)
    with PartialUNet(embedded_unet) as pu:
        pu.partial(2)
        with pytest.raises(FlexnasError, match="PARTIAL step ran before any FULL step"):
            run(embedded_unet, x, torch.tensor(10), kw)
        # clear() empties the cache again
        pu.full()
        run(embedded_unet, x, torch.tensor(10), kw)
        pu.clear()
        pu.partial(0)
        with pytest.raises(FlexnasError, match="before any FULL step"):
            run(embedded_unet, x, torch.tensor(10), kw)


def test_partial_branch_out_of_range(embedded_unet):
    with PartialUNet(embedded_unet) as pu:
        with pytest.raises(FlexnasError, match=r"branch 6 does not exist.*0\.\.5"):
            pu.partial(6)
        with pytest.raises(FlexnasError, match="branch -1 does not exist"):
            pu.partial(-1)


def test_double_hooking_raises(embedded_unet):
    pu = PartialUNet(embedded_unet)
    with pytest.raises(FlexnasError, match="already has flexnas hooks"):
        PartialUNet(embedded_unet)
    pu.remove()
    PartialUNet(embedded_unet).remove()  # hooking again after remove() is fine


@pytest.mark.parametrize("which", ["embedded", "cond"])
def test_remove_restores_stock_forward(which, embedded_unet, cond_unet):
    unet = {"embedded": embedded_unet, "cond": cond_unet}[which]
    clone = copy.deepcopy(unet)
    x, kw = inputs_for(unet)
    x2, kw2 = inputs_for(unet, seed=3)
    pu = PartialUNet(unet)
    pu.full()
    run(unet, x, torch.tensor(900), kw)
    pu.partial(1)  # leave it in partial mode with a filled cache, then remove
    pu.remove()
    for t in (900, 400):
        assert torch.equal(run(unet, x2, torch.tensor(t), kw2), run(clone, x2, torch.tensor(t), kw2))
    assert not pu.state.cache


# ----------------------------------------------------------------------------- deep blocks are skipped
def test_partial_skips_deep_blocks(embedded_unet, count_calls):
    unet = embedded_unet
    # branch 1 = down_blocks.0.resnets.0; up_blocks.2 consumes skips 1 and 0, up_blocks.0/1 are deeper
    counts = count_calls({
        "conv_in": unet.conv_in,
        "down0.resnet.conv1": unet.down_blocks[0].resnets[0].conv1,
        "down0.downsampler.conv": unet.down_blocks[0].downsamplers[0].conv,
        "down1.resnet.conv1": unet.down_blocks[1].resnets[0].conv1,
        "mid.resnet.conv1": unet.mid_block.resnets[0].conv1,
        "up0.resnet.conv1": unet.up_blocks[0].resnets[0].conv1,
        "up1.resnet1.conv1": unet.up_blocks[1].resnets[1].conv1,
        "up1.upsampler.conv": unet.up_blocks[1].upsamplers[0].conv,
        "up2.resnet0.conv1": unet.up_blocks[2].resnets[0].conv1,
        "up2.resnet1.conv1": unet.up_blocks[2].resnets[1].conv1,
        "conv_out": unet.conv_out,
    })
    x, kw = inputs_for(unet)
    with PartialUNet(unet) as pu:
        pu.full()
        run(unet, x, torch.tensor(500), kw)
        assert all(v == 1 for v in counts.values()), counts
        for k in counts:
            counts[k] = 0
        pu.partial(1)
        run(unet, x, torch.tensor(400), kw)
    shallow = ["conv_in", "down0.resnet.conv1", "up2.resnet0.conv1", "up2.resnet1.conv1", "conv_out"]
    assert {k: v for k, v in counts.items() if k in shallow} == dict.fromkeys(shallow, 1)
    assert {k: v for k, v in counts.items() if k not in shallow} == {k: 0 for k in counts if k not in shallow}


def test_partial_at_shallowest_branch_runs_only_outer_layers(embedded_unet, count_calls):
    unet = embedded_unet
    deep = {f"{n}": m for n, m in unet.named_modules()
            if isinstance(m, torch.nn.Conv2d) and n not in ("conv_in", "conv_out", "up_blocks.2.resnets.1.conv1",
                                                           "up_blocks.2.resnets.1.conv2",
                                                           "up_blocks.2.resnets.1.conv_shortcut")}
    counts = count_calls({"conv_in": unet.conv_in, "conv_out": unet.conv_out, **deep})
    x, kw = inputs_for(unet)
    with PartialUNet(unet) as pu:
        pu.full()
        run(unet, x, torch.tensor(500), kw)
        for k in counts:
            counts[k] = 0
        pu.partial(0)
        run(unet, x, torch.tensor(400), kw)
    assert counts.pop("conv_in") == 1 and counts.pop("conv_out") == 1
    assert len(counts) > 10 and not any(counts.values()), {k: v for k, v in counts.items() if v}


def test_cond_unet_partial_skips_deep_blocks(cond_unet, count_calls):
    unet = cond_unet
    counts = count_calls({
        "conv_in": unet.conv_in,
        "down0.attn.proj_in": unet.down_blocks[0].attentions[0].proj_in,
        "down1.resnet.conv1": unet.down_blocks[1].resnets[0].conv1,
        "mid.resnet.conv1": unet.mid_block.resnets[0].conv1,
        "up0.resnet0.conv1": unet.up_blocks[0].resnets[0].conv1,
        "up0.resnet1.conv1": unet.up_blocks[0].resnets[1].conv1,
        "up0.upsampler.conv": unet.up_blocks[0].upsamplers[0].conv,
        "up1.resnet0.conv1": unet.up_blocks[1].resnets[0].conv1,
        "up1.attn0.proj_in": unet.up_blocks[1].attentions[0].proj_in,
        "up1.attn1.proj_in": unet.up_blocks[1].attentions[1].proj_in,
    })
    x, kw = inputs_for(unet)
    with PartialUNet(unet) as pu:
        pu.full()
        run(unet, x, torch.tensor(500), kw)
        for k in counts:
            counts[k] = 0
        pu.partial(1)  # down_blocks.0.resnets.0 (+ its attention)
        run(unet, x, torch.tensor(400), kw)
    # skips: 0 conv_in, 1 down0.resnet0, 2 down0.downsampler, 3 down1.resnet0; up_blocks.0's resnets
    # consume skips 3 and 2 (deep, and so is its upsampler), up_blocks.1's consume 1 and 0 (shallow)
    assert counts == {"conv_in": 1, "down0.attn.proj_in": 1, "down1.resnet.conv1": 0, "mid.resnet.conv1": 0,
                      "up0.resnet0.conv1": 0, "up0.resnet1.conv1": 0, "up0.upsampler.conv": 0,
                      "up1.resnet0.conv1": 1, "up1.attn0.proj_in": 1, "up1.attn1.proj_in": 1}


# --------------------------------------------------------------------------- an independent PARTIAL step
def composed(unet, x, t, b=None, deep=None):
    """UNet2DModel's forward written out block by block from its stock modules.

    Returns (output, h_in): ``h_in[s]`` is the hidden state entering the up-path consumer of skip
    ``s``. With ``b`` and ``deep``, the up path starts at the consumer of skip ``b`` from ``deep``
    (a stored FULL step's ``h_in[b]``): the shallow path of a PARTIAL step, composed by hand.
    """
    emb = unet.time_embedding(unet.time_proj(t.expand(x.shape[0])).to(x.dtype))
    skips = [unet.conv_in(x)]
    h = skips[0]
    for block in unet.down_blocks:
        attns = getattr(block, "attentions", None)
        for j, res in enumerate(block.resnets):
            h = res(h, emb)
            h = attns[j](h) if attns else h
            skips.append(h)
        for down in block.downsamplers or []:
            h = down(h)
            skips.append(h)
    h_in, s = {}, len(skips)
    h = unet.mid_block(h, emb) if b is None else deep
    for block in unet.up_blocks:
        attns = getattr(block, "attentions", None)
        for j, res in enumerate(block.resnets):
            s -= 1
            if b is not None and s > b:
                continue  # deep: its output is what ``deep`` already holds
            h_in[s] = h
            h = res(torch.cat([h, skips[s]], dim=1), emb)
            h = attns[j](h) if attns else h
        if b is None or s <= b:
            for up in block.upsamplers or []:
                h = up(h)
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(h))), h_in


@torch.no_grad()
def test_hooked_partial_equals_a_hand_composed_shallow_path(embedded_unet):
    """PARTIAL(b) at a fresh input equals the stock blocks composed by hand: shallow down path and
    up path from the input, with the deep up-path input taken from the FULL step before."""
    unet = embedded_unet
    g = torch.Generator().manual_seed(2)
    x1, x2 = torch.randn(2, 1, 28, 28, generator=g), torch.randn(2, 1, 28, 28, generator=g)
    t1, t2 = torch.tensor(600), torch.tensor(540)
    full, h_in = composed(unet, x1, t1)
    assert (full - unet(x1, t1).sample).abs().max() <= 1e-5  # the composition is the stock forward
    with PartialUNet(unet) as pu:
        for b in range(pu.num_branches):
            pu.full()
            unet(x1, t1)
            pu.partial(b)
            hooked = unet(x2, t2).sample
            pu.off()
            by_hand = composed(unet, x2, t2, b, h_in[b])[0]
            assert (hooked - by_hand).abs().max() <= 1e-5, b
            assert (hooked - unet(x2, t2).sample).abs().max() > 1e-4, b  # and it is not the FULL output
