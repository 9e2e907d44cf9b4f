"""The GPU path: the layer, its hand-written backward, autocast, contributions and the trainer
on CUDA. Skipped without a CUDA device (CI has none); ``benchmarks/gpu_check.sh`` runs them on
a GPU machine."""

import pytest
import torch

import coda
from coda import dau as F_dau
from coda.data import ImageDataset
from coda.train import TrainConfig, train
from tests.test_dau import conv_params, oracle_conv

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("norm", F_dau.NORMS)
def test_layer_on_cuda_matches_the_float64_oracle(bias, norm):
    A, B, b = conv_params(c_in=3, c_out=4, k=3, r=5, bias=bias)
    x = torch.rand(2, 3, 9, 9, dtype=torch.float64)
    expected = oracle_conv(x, A, B, b, 2, 1, norm)
    on_gpu = [t if t is None else t.to(CUDA) for t in (x, A, B, b)]
    torch.testing.assert_close(F_dau.dau_conv2d(*on_gpu[:3], on_gpu[3], 2, 1, norm).cpu(), expected)
    single = [t if t is None else t.float() for t in on_gpu]
    torch.testing.assert_close(F_dau.dau_conv2d(*single[:3], single[3], 2, 1, norm).double().cpu(), expected,
                               rtol=1e-4, atol=1e-5)


def test_gradcheck_on_cuda():
    A, B, b = (t.to(CUDA).requires_grad_() for t in conv_params(c_in=2, c_out=3, k=3, r=4))
    x = torch.rand(1, 2, 5, 5, dtype=torch.float64, device=CUDA, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: F_dau.dau_conv2d(*a, 1, 1, "squash"), (x, A, B, b))
    # On CUDA the double backward is not bit-reproducible (overlapping patches are summed by
    # kernels that accumulate in no fixed order): on an H200 (session 13) gradgradcheck failed
    # only its reentrancy check, at the default tolerance of 0, with the analytical gradient
    # matching the numerical one.
    assert torch.autograd.gradgradcheck(lambda *a: F_dau.dau_conv2d(*a, 1, 1, "squash"), (x, A, B, b),
                                        nondet_tol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_custom_backward_under_cuda_autocast_is_close_to_float32(dtype):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    model = coda.build_model("cifar10-tiny").to(CUDA)
    x = torch.rand(8, 3, 16, 16, device=CUDA)
    grads = {}
    for name, enabled in (("fp32", False), ("mixed", True)):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype, enabled=enabled):
            logits = model(x)
        logits.float().sum().backward()
        grads[name] = torch.cat([p.grad.flatten().float() for p in model.parameters()])
        assert torch.isfinite(grads[name]).all()
    cosine = torch.nn.functional.cosine_similarity(grads["fp32"], grads["mixed"], dim=0)
    assert cosine > 0.99, f"mixed-precision gradients point elsewhere (cosine {cosine:.4f})"


def test_contributions_on_cuda_sum_to_the_logit():
    model = coda.build_model("cifar10-tiny").to(CUDA).eval()
    images = torch.rand(3, 3, 16, 16, device=CUDA)
    contribs = coda.contributions(model, images, target=2)
    assert contribs.device.type == "cuda"
    with torch.no_grad():
        logits = model(images)
    torch.testing.assert_close(contribs.sum((1, 2, 3)), logits[:, 2] - model.logit_bias, rtol=1e-4, atol=1e-4)


def _synthetic(n: int, size: int = 16) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    return ImageDataset(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                        torch.arange(n) % 10, tuple(f"class{i}" for i in range(10)))


def test_auto_precision_trains_on_cuda_and_records_it():
    cfg = TrainConfig(model="cifar10-tiny", epochs=1, batch_size=16, precision="auto")
    model, history = train(cfg, device=CUDA, train_data=_synthetic(64), test_data=_synthetic(32), progress=False)
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert history[0]["precision"] == expected
    assert next(model.parameters()).device.type == "cuda"
    assert torch.isfinite(torch.tensor(history[0]["train_loss"]))


def test_fp16_trains_with_a_gradient_scaler():
    cfg = TrainConfig(model="cifar10-tiny", epochs=1, batch_size=16, precision="fp16")
    _, history = train(cfg, device=CUDA, train_data=_synthetic(64), test_data=_synthetic(32), progress=False)
    assert history[0]["precision"] == "fp16" and torch.isfinite(torch.tensor(history[0]["train_loss"]))


def test_training_steps_do_not_synchronise_with_the_host(monkeypatch):
    """Between checkpoints a bf16 step queues work and never waits for the GPU (no .item(),
    no blocking copy): from the first step's learning rate on, CUDA's sync debug mode turns
    any synchronisation into an error (the run stops mid-epoch without a checkpoint)."""
    import coda.train as T

    if not torch.cuda.is_bf16_supported():
        pytest.skip("fp16 steps synchronise by design (the gradient scaler checks for inf)")
    learning_rate = T.learning_rate

    def strict_learning_rate(*args):
        torch.cuda.set_sync_debug_mode("error")
        return learning_rate(*args)

    cfg = TrainConfig(model="cifar10-tiny", epochs=1, batch_size=16, precision="bf16")
    data = _synthetic(160)
    monkeypatch.setattr(T, "learning_rate", strict_learning_rate)
    try:
        train(cfg, device=CUDA, train_data=data, test_data=data, progress=False, stop_after_steps=5)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_augmentation_is_the_same_on_cpu_and_cuda():
    from coda.data import augment

    images = torch.rand(4, 3, 8, 8)
    on_cpu = augment(images, torch.Generator().manual_seed(3))
    on_gpu = augment(images.to(CUDA), torch.Generator().manual_seed(3))
    torch.testing.assert_close(on_gpu.cpu(), on_cpu)


def test_local_occlusion_on_cuda_is_the_cpu_result():
    from coda import occlusion

    torch.manual_seed(0)
    model = coda.build_model("cifar10-tiny").double().eval()
    image, classes = torch.rand(1, 3, 16, 16, dtype=torch.float64), torch.tensor([1, 4])
    expected = occlusion.occlusion_classes(model, image, classes, 5, 2)
    got = occlusion.occlusion_classes(model.to(CUDA), image.to(CUDA), classes.to(CUDA), 5, 2)
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), expected)
