"""Generator and discriminator: shapes, dtypes, conditioning paths and the attention map."""

import pytest
import torch

from napari_cdal.engine.config import PRESETS, ModelConfig
from napari_cdal.engine.method.networks import (
    AdaptiveGroupNorm,
    Discriminator,
    Generator,
    LatentMapping,
)

TINY = dict(PRESETS["tiny"])


@pytest.mark.parametrize("image_channels,encoding", [(3, "foreground_core"), (1, "foreground"), (3, "foreground")])
def test_generator_shapes_and_range(image_channels: int, encoding: str) -> None:
    mean = (142.0, 98.0, 133.0)[:image_channels]
    std = (65.0, 57.0, 58.0)[:image_channels]
    cfg = ModelConfig(**TINY, image_channels=image_channels, label_encoding=encoding, image_mean=mean, image_std=std)
    torch.manual_seed(0)
    g = Generator(cfg)
    image = torch.randn(1, image_channels, 32, 48)
    x = torch.randn(3, cfg.label_channels, 32, 48)
    out = g(x, torch.tensor([0, 1, 3]), g.encode_image(image), torch.randn(3, cfg.latent_dim))
    assert out.shape == (3, cfg.label_channels, 32, 48)
    assert out.dtype == torch.float32
    assert out.abs().max() <= 1.0


def test_adaptive_groupnorm_starts_as_plain_groupnorm() -> None:
    # gamma = 1, beta = 0 at initialisation, whatever the latent: the norm is unchanged.
    norm = AdaptiveGroupNorm(8, 4, 16)
    x = torch.randn(2, 8, 5, 5)
    expected = torch.nn.functional.group_norm(x, 4)
    assert torch.allclose(norm(x, torch.randn(2, 16)), expected, atol=1e-6)


def test_latent_mapping_normalises_z() -> None:
    # z / rms(z): scaling z does not change the embedding.
    mapping = LatentMapping(10, 16, 4)
    z = torch.randn(3, 10)
    assert torch.allclose(mapping(z), mapping(5.0 * z), atol=1e-5)
    assert sum(isinstance(m, torch.nn.Linear) for m in mapping.modules()) == 4


def test_latent_changes_the_output_once_styles_are_trained() -> None:
    cfg = ModelConfig(**TINY)
    torch.manual_seed(0)
    g = Generator(cfg)
    for module in g.modules():
        if isinstance(module, AdaptiveGroupNorm):
            torch.nn.init.normal_(module.style.weight, std=0.1)
    image, x, t = torch.randn(1, 3, 16, 16), torch.randn(1, 2, 16, 16), torch.tensor([2])
    feats = g.encode_image(image)
    a = g(x, t, feats, torch.randn(1, cfg.latent_dim))
    b = g(x, t, feats, torch.randn(1, cfg.latent_dim))
    assert not torch.allclose(a, b)


def test_time_changes_the_output() -> None:
    cfg = ModelConfig(**TINY)
    torch.manual_seed(0)
    g = Generator(cfg)
    image, x, z = torch.randn(1, 3, 16, 16), torch.randn(1, 2, 16, 16), torch.randn(1, cfg.latent_dim)
    feats = g.encode_image(image)
    assert not torch.allclose(g(x, torch.tensor([0]), feats, z), g(x, torch.tensor([3]), feats, z))


def test_image_features_broadcast_over_samples() -> None:
    # One encoded image serves K samples: same result as repeating the features.
    cfg = ModelConfig(**TINY)
    torch.manual_seed(0)
    g = Generator(cfg)
    feats = g.encode_image(torch.randn(1, 3, 16, 16))
    x, z, t = torch.randn(4, 2, 16, 16), torch.randn(4, cfg.latent_dim), torch.tensor([1, 1, 1, 1])
    assert torch.allclose(g(x, t, feats, z), g(x, t, feats.repeat(4, 1, 1, 1), z), atol=1e-6)


def test_discriminator_score_and_attention() -> None:
    cfg = ModelConfig(**PRESETS["small"])
    torch.manual_seed(0)
    d = Discriminator(cfg)
    x_t, x_next, t = torch.randn(2, 2, 64, 64), torch.randn(2, 2, 64, 64), torch.tensor([0, 3])
    assert d(x_t, x_next, t).shape == (2,)
    _, tap = d.features(x_t, x_next, t)
    assert tap.shape[-2:] == (8, 8)  # level 3 of a 64 input: 64 / 2**3
    att = d.attention(x_t, x_next, t)
    assert att.shape == (2, 1, 64, 64)
    assert att.min() >= 0.0 and att.max() <= 1.0
    assert torch.isclose(att.amax(dim=(1, 2, 3)), torch.ones(2)).all()


def test_config_round_trip_and_errors() -> None:
    cfg = ModelConfig(**PRESETS["medium"])
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="image_channels"):
        ModelConfig(image_channels=2)
    with pytest.raises(ValueError, match="label_encoding"):
        ModelConfig(label_encoding="three-class")


def test_initialise_depends_on_the_seed_alone_and_leaves_the_global_generator() -> None:
    from napari_cdal.engine.method.model import CdalModel

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = CdalModel.initialise(ModelConfig(**TINY), seed=7)
    assert torch.equal(torch.rand(3), expected_next), "the caller's random stream is untouched"
    again = CdalModel.initialise(ModelConfig(**TINY), seed=7)
    other = CdalModel.initialise(ModelConfig(**TINY), seed=8)
    weights = [next(m.generator.parameters()) for m in (first, again, other)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def _tiny_and_inputs() -> tuple:
    """A tiny model's networks and a seeded batch of their inputs."""
    from napari_cdal.engine.method.model import CdalModel

    model = CdalModel.initialise(ModelConfig(**TINY), seed=3).eval()
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, 16, 16, generator=g)
    x_t, x_next = torch.randn(2, 2, 16, 16, generator=g), torch.randn(2, 2, 16, 16, generator=g)
    z = torch.randn(2, model.config.latent_dim, generator=g)
    return model.generator, model.discriminator, (image, x_t, x_next, torch.tensor([0, 3]), z)


def test_the_cancel_token_stops_a_pass_between_two_blocks() -> None:
    # set from a hook as level 0 of D's trunk ends: level 1 never runs and RunCancelled comes out
    import threading

    from napari_cdal.engine.events import RunCancelled, stop_on_cancel

    _, d, (_, x_t, x_next, t, _) = _tiny_and_inputs()
    token = threading.Event()
    ran: list[int] = []
    for level, block in enumerate(d.blocks):
        block.register_forward_hook(lambda *_, level=level: ran.append(level))
    d.blocks[0].register_forward_hook(lambda *_: token.set())
    with stop_on_cancel(token, d), pytest.raises(RunCancelled):
        d.attention(x_t, x_next, t)
    assert len(d.blocks) == 2 and ran == [0]


def test_unset_cancel_checks_change_no_output_and_end_with_the_run() -> None:
    # no token set: the same bits from G and every map of D; a copy made during the run stops with it;
    # after the run neither checks anything, and with no token nothing is installed
    import copy
    import threading

    from napari_cdal.engine.config import DISC_KINDS
    from napari_cdal.engine.events import RunCancelled, stop_on_cancel

    g, d, (image, x_t, x_next, t, z) = _tiny_and_inputs()

    def outputs(g: Generator, d: Discriminator) -> list[torch.Tensor]:
        with torch.no_grad():
            made = [g(x_next, t, g.encode_image(image), z), d(x_t, x_next, t)]
        return made + [d.suspicion(kind, x_t, x_next, t) for kind in DISC_KINDS["trunk"]]

    plain = outputs(g, d)
    token = threading.Event()
    with stop_on_cancel(token, g, d):
        checked = outputs(g, d)
        g_copy, d_copy = copy.deepcopy(g), copy.deepcopy(d)
        token.set()
        with pytest.raises(RunCancelled):
            outputs(g_copy, d_copy)
    assert all(torch.equal(a, b) for a, b in zip(plain, checked, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(plain, outputs(g_copy, d_copy), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(plain, outputs(g, d), strict=True))
    with stop_on_cancel(None, g, d):
        assert not any(module._forward_pre_hooks for network in (g, d) for module in network.modules())


def test_a_cancel_stops_only_its_own_run_of_shared_networks() -> None:
    # two runs on one loaded model (a Segment and a Fine-tune): the set token stops its own run,
    # not the one another thread runs on the same networks at the same time
    import threading

    from napari_cdal.engine.events import RunCancelled, stop_on_cancel

    g, d, (image, x_t, x_next, t, z) = _tiny_and_inputs()
    with torch.no_grad():
        plain = g(x_next, t, g.encode_image(image), z)
    mine, theirs = threading.Event(), threading.Event()
    theirs_out: list[torch.Tensor] = []

    def their_run() -> None:
        with stop_on_cancel(theirs, g, d), torch.no_grad():
            theirs_out.append(g(x_next, t, g.encode_image(image), z))

    with stop_on_cancel(mine, g, d):
        mine.set()
        other = threading.Thread(target=their_run)
        other.start()
        other.join(60)
        with pytest.raises(RunCancelled):
            g(x_next, t, g.encode_image(image), z)
    assert len(theirs_out) == 1 and torch.equal(theirs_out[0], plain)
