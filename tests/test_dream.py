"""Deep Dream on a seeded random GoogLeNet and VGG19 (tiny images, CPU)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from augment.engines.dream import DreamOptions, activation_objective, dream, guide_features, octave_sizes
from augment.engines.googlenet import GoogLeNetFeatures
from augment.engines.vgg import VGG19Features


@pytest.fixture(scope="module")
def net() -> GoogLeNetFeatures:
    model = GoogLeNetFeatures(["inception4c"])
    model.init_random(0)
    return model


def _images(n: int = 1, h: int = 48, w: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_objective_rises_step_by_step(net: GoogLeNetFeatures) -> None:
    options = DreamOptions(octaves=1, jitter=0, step=0.005)
    values = [dream(net, _images(), dataclasses.replace(options, iterations=n), seeds=[0])[1][0] for n in range(1, 6)]
    assert all(b > a for a, b in zip(values, values[1:])), values


def test_octaves_keep_the_shape_and_never_go_below_what_the_net_accepts(net: GoogLeNetFeatures) -> None:
    options = DreamOptions(octaves=4, octave_scale=1.5, min_side=32)
    assert octave_sizes(100, 80, options) == [(44, 36), (67, 53), (100, 80)]  # 30x24 dropped
    assert octave_sizes(20, 12, options) == [(20, 12)]  # tiny: just the full size, no error
    out, _ = dream(net, _images(h=50, w=36), dataclasses.replace(options, iterations=1), seeds=[0])
    assert out.shape == (1, 3, 50, 36) and 0 <= out.min() and out.max() <= 1


def test_same_seed_same_dream_other_seed_other_jitter(net: GoogLeNetFeatures, one_thread: None) -> None:
    options = DreamOptions(octaves=2, iterations=2, jitter=8)
    a, _ = dream(net, _images(), options, seeds=[3])
    b, _ = dream(net, _images(), options, seeds=[3])
    c, _ = dream(net, _images(), options, seeds=[4])
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_an_image_dreams_the_same_alone_or_batched(net: GoogLeNetFeatures) -> None:
    options = DreamOptions(octaves=2, iterations=2)
    images = _images(3)
    together, _ = dream(net, images, options, seeds=[1, 2, 3])
    alone, _ = dream(net, images[1:2], options, seeds=[2])
    assert torch.allclose(together[1:2], alone, atol=1e-4)


def test_blend_zero_returns_the_source(net: GoogLeNetFeatures) -> None:
    images = _images()
    out, _ = dream(net, images, DreamOptions(iterations=2, blend=0.0), seeds=[0])
    assert torch.allclose(out, images, atol=1e-6)


def _closeness(net: GoogLeNetFeatures, image: torch.Tensor, guide: torch.Tensor) -> float:
    """Mean over positions of the best cosine similarity to a guide position (scale-free, so
    plain dreaming, which only makes activations bigger, does not score)."""
    x = torch.nn.functional.normalize(net(image)["inception4c"].flatten(2)[0], dim=0)
    y = torch.nn.functional.normalize(net(guide)["inception4c"].flatten(2)[0], dim=0)
    return (x.T @ y).max(dim=1).values.mean().item()


def test_guided_dream_moves_activations_toward_the_guide(net: GoogLeNetFeatures) -> None:
    layers = ("inception4c",)
    image, guide = _images(seed=1), _images(seed=2).pow(4)
    options = DreamOptions(octaves=1, iterations=5, jitter=0)
    guides = {layer: [value] for layer, value in guide_features(net, guide, layers).items()}
    guided, _ = dream(net, image, options, seeds=[0], guides=guides)
    plain, _ = dream(net, image, options, seeds=[0])
    before = _closeness(net, image, guide)
    assert _closeness(net, guided, guide) > before
    assert _closeness(net, guided, guide) > _closeness(net, plain, guide)


def test_vgg19_layers_work_as_the_dream_network() -> None:
    vgg = VGG19Features(["conv4_2"])
    vgg.init_random(0)
    options = DreamOptions(layers=("conv4_2",), octaves=2, iterations=2, min_side=16)
    image = _images(h=40, w=32)
    out, _ = dream(vgg, image, options, seeds=[0])
    assert (
        activation_objective(vgg(out), options.layers).item() > activation_objective(vgg(image), options.layers).item()
    )


def test_the_dream_stage_of_gatys_dream_runs_in_batches_and_matches_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # --engine gatys+dream dreams on top of the stylized images in batches of one shape (it used
    # to dream one image at a time); each image's dream is still its own (seed, normalisation).
    from types import SimpleNamespace

    import augment.pipeline.drivers as drivers
    from augment.config import RunConfig
    from augment.engines.precision import Precision
    from augment.io.weights import resolve_weights

    config = RunConfig(engine="gatys+dream", batch_size=2, octaves=2, dream_iterations=2, size=48)
    no_sources = lambda groups: iter(())  # noqa: E731  (the dream stage is handed stylized images)
    driver = drivers.DreamDriver(
        config, torch.device("cpu"), Precision.FP32, resolve_weights("googlenet", "random"), no_sources
    )
    assert driver.options.iterations == 2  # --dream-iterations, whichever engine
    sizes: list[int] = []
    real_dream = drivers.DreamBatcher._dream
    monkeypatch.setattr(
        drivers.DreamBatcher, "_dream", lambda self, batch: sizes.append(len(batch)) or real_dream(self, batch)
    )
    shapes = [(48, 40), (48, 40), (48, 40), (40, 48)]
    stylized = [
        (SimpleNamespace(seed=10 + i), _images(h=h, w=w, seed=i), f"extra{i}") for i, (h, w) in enumerate(shapes)
    ]
    out = [r for task, image, extra in stylized for r in driver.batcher.add(driver.dream_job(task, image, extra))]
    out += driver.batcher.flush()
    assert sizes == [2, 1, 1]
    assert [r.key[1] for r in out] == ["extra0", "extra1", "extra2", "extra3"]
    for (task, image, _), dreamed in zip(stylized, [r.image for r in out]):
        alone, _ = dream(driver.net, image, driver.options, seeds=[task.seed])
        assert torch.allclose(dreamed, alone, atol=1e-4)  # as test_an_image_dreams_the_same_alone_or_batched
        assert (dreamed - image).abs().max() > 1e-3  # it did dream


def test_out_of_memory_halves_the_dream_batch_and_loses_no_image(
    net: GoogLeNetFeatures, monkeypatch: pytest.MonkeyPatch
) -> None:
    import augment.engines.dream as dream_module
    from augment.engines.dream import DreamBatcher, DreamJob

    options = DreamOptions(octaves=1, iterations=1)
    jobs = [DreamJob(key=i, image=_images(seed=i), seed=i) for i in range(5)]
    real = dream_module.dream
    sizes: list[int] = []

    def small_device(net, images, *args, **kwargs):  # type: ignore[no-untyped-def]
        sizes.append(len(images))
        if len(images) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(net, images, *args, **kwargs)

    monkeypatch.setattr(dream_module, "dream", small_device)
    batcher = DreamBatcher(net, options, batch_size=5)
    results = list(batcher.run(jobs))
    assert [r.key for r in results] == [0, 1, 2, 3, 4] and batcher.oom_events == 1
    assert sizes == [5, 2, 2, 1] and batcher.batch_size == 2  # halved once, and stays halved
    for job, result in zip(jobs, results):
        alone, _ = real(net, job.image, options, seeds=[job.seed])
        assert torch.allclose(result.image, alone, atol=1e-4)


def test_a_dream_that_is_not_finite_is_a_failed_row_not_black_pixels() -> None:
    # uint8 has no NaN: a NaN image would be written as black. A source whose pixels are NaN
    # (as a diverged half-precision pass would leave) dreams to NaN; the other is unaffected.
    from pathlib import Path

    import augment.pipeline.drivers as drivers
    from augment.config import RunConfig
    from augment.engines.precision import Precision
    from augment.io.sources import SourceRow
    from augment.io.styles import Style
    from augment.io.weights import resolve_weights
    from augment.pipeline.plan import plan_tasks

    config = RunConfig(engine="dream", size=32, octaves=1, dream_iterations=2)
    rows = [SourceRow(row=i, source=f"{i}.png", path=Path(f"/x/{i}.png"), label="a") for i in range(2)]
    tasks = plan_tasks(rows, [Style("s", Path("s.png"), "s")], per_image=1, seed=0)
    contents = {rows[0]: torch.full((1, 3, 32, 32), float("nan")), rows[1]: _images(h=32, w=32, seed=1)}

    def decode(groups):  # type: ignore[no-untyped-def]
        for group in groups:
            yield group, [contents[group[0].source]]

    weights = resolve_weights("googlenet", "random")
    driver = drivers.DreamDriver(config, torch.device("cpu"), Precision.FP32, weights, decode)
    outcomes = list(driver.run([[t] for t in tasks]))
    failed = [o for o in outcomes if isinstance(o, drivers.Failed)]
    made = [o for o in outcomes if isinstance(o, drivers.Made)]
    assert [(f.source.row, f.reason) for f in failed] == [(0, "non_finite")]
    assert [m.task.source.row for m in made] == [1] and torch.isfinite(made[0].image).all()
