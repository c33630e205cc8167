import pytest
import torch
import torch.nn.functional as F

from d2sfm.features.network import CONV4_3_INDEX, D2Net, backbone_gflop, onednn_layers, winograd_layers
from d2sfm.features.pyramid import level_size, pyramid_gflop

OFFICIAL_CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21]


def _random_model(seed=0, **kwargs) -> D2Net:
    torch.manual_seed(seed)
    model = D2Net(**kwargs)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.05)
    return model.eval()


def test_state_dict_has_the_official_checkpoint_layout():
    expected = {f"dense_feature_extraction.model.{i}.{p}" for i in OFFICIAL_CONV_INDICES for p in ("weight", "bias")}
    assert set(D2Net().state_dict()) == expected


def test_output_strides_of_the_two_variants():
    model = _random_model()
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert model(image).shape == (1, 512, 8, 12)  # training variant: stride 8
        assert model.forward_test(image).shape == (1, 512, 15, 23)  # test variant: stride 4, minus 1 (2x2 avg pool)


def test_variants_share_parameters_and_frozen_copy_matches():
    model = _random_model()
    image = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        before_train, before_test = model(image), model.forward_test(image)
        assert torch.allclose(model.test_time_layers()(image), before_test, atol=1e-5)
        model.layers[CONV4_3_INDEX].bias += 1.0
        assert not torch.allclose(model(image), before_train)
        assert not torch.allclose(model.forward_test(image), before_test)


def test_only_conv4_3_is_trainable_by_default():
    model = D2Net()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"dense_feature_extraction.model.{CONV4_3_INDEX}.weight",
                         f"dense_feature_extraction.model.{CONV4_3_INDEX}.bias"}
    model.set_trainable_layers(3)
    assert sum(p.requires_grad for p in model.parameters()) == 6
    with pytest.raises(ValueError):
        model.set_trainable_layers(11)


def test_final_relu_is_optional():
    image = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert _random_model(use_relu=True).forward_test(image).min() >= 0
        assert _random_model(use_relu=False).forward_test(image).min() < 0


@pytest.mark.parametrize("shape", [(1, 3, 57, 83), (1, 3, 121, 90), (2, 3, 64, 64)])
def test_onednn_backbone_is_bitwise_the_plain_one(shape):
    layers = _random_model().test_time_layers()
    image = torch.randn(*shape) * 50
    with torch.no_grad():
        assert torch.equal(onednn_layers(layers)(image), layers(image))


def test_winograd_backbone_is_close_to_the_plain_one():
    layers = _random_model().test_time_layers()
    image = torch.randn(2, 3, 57, 83) * 50  # odd sizes exercise the polyphase split of the dilated convs
    with torch.no_grad():
        exact, fast = layers(image), winograd_layers(layers)(image)
    assert fast.shape == exact.shape
    assert (fast - exact).abs().max() <= 1e-4 * exact.abs().max()


@pytest.mark.parametrize("shape", [(45, 61), (64, 96)])
def test_flop_count_matches_the_convolutions_that_run(shape):
    layers = D2Net().test_time_layers()
    counted = []

    def count(conv, inputs, output):
        counted.append(2 * conv.in_channels * conv.out_channels * 9 * output.shape[2] * output.shape[3])

    for layer in layers:
        if isinstance(layer, torch.nn.Conv2d):
            layer.register_forward_hook(count)
    with torch.no_grad():
        layers(torch.zeros(1, 3, *shape))
    assert backbone_gflop(*shape) == pytest.approx(sum(counted) / 1e9, rel=1e-12)


@pytest.mark.parametrize("size", [(469, 640), (413, 641), (37, 53)])
@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0, 0.3])
def test_pyramid_level_sizes_are_those_of_interpolate(size, scale):
    image = torch.zeros(1, 1, *size)
    expected = image if scale == 1 else F.interpolate(image, scale_factor=scale, mode="bilinear",
                                                       align_corners=True)
    assert level_size(*size, scale) == tuple(expected.shape[2:])
    assert pyramid_gflop(*size, (scale, 1.0)) == pytest.approx(
        backbone_gflop(*expected.shape[2:]) + backbone_gflop(*size))
