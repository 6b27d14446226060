"""t_i as the teacher's instance weights (``metakd/meta_teacher/transferability.py``): the clamp, the
rescaling, the refusals, the per-domain summary and the datamodule checks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers import ToyMultiDomainDataModule

from metakd.errors import ConfigError
from metakd.meta_teacher.transferability import (
    TransferabilityWeights,
    fit_datamodule,
    transferability_summary,
)

T = torch.tensor([0.2, -0.3, 0.5, 0.1, float("nan")])
IDS = torch.tensor([0, 1, 2, 3])


def part(scale: str = "none", enabled: bool = True) -> TransferabilityWeights:
    return TransferabilityWeights(enabled, "domain", "masked_mean", scale, use_cache=False)


def test_weights_are_the_clamped_scores() -> None:
    assert part().weights(T, IDS, "s").tolist() == pytest.approx([0.2, 0.0, 0.5, 0.1])
    assert part().weights(T, torch.tensor([1]), "s").tolist() == [0.0]


def test_mean1_divides_by_the_mean_of_the_clamped_scores() -> None:
    # clamped 0.2, 0, 0.5, 0.1 (NaN left out): mean 0.2
    weights = part("mean1")
    assert weights.weights(T, IDS, "s").tolist() == pytest.approx([1.0, 0.0, 2.5, 0.5])
    assert weights.rescaled(T) is weights.rescaled(T)  # made once per scores tensor
    other = T * 2
    assert weights.rescaled(other) is not weights.rescaled(T)


def test_refusals() -> None:
    with pytest.raises(
        RuntimeError, match=r"no transferability score for example_ids \[4\].*split_fingerprint 's'"
    ):
        part().weights(T, torch.tensor([0, 4]), "s")
    with pytest.raises(IndexError, match="example_ids up to 5 but transferability has 5 entries"):
        part().weights(T, torch.tensor([5]), "s")
    with pytest.raises(RuntimeError, match="computed in on_fit_start"):
        part().weights(torch.ones(0), IDS, "s")
    with pytest.raises(ValueError, match="transferability_scale must be"):
        part("loud")


def test_options_and_disabled_scores() -> None:
    assert part(enabled=False).options() == {"prototypes": False}
    assert part().options() == {"prototypes": True, "granularity": "domain", "pooling": "masked_mean"}
    data = ToyMultiDomainDataModule()
    data.setup("fit")
    t, prototypes = part(enabled=False).compute(data, None, None, None, torch.device("cpu"))
    assert torch.equal(t, torch.ones(36)) and prototypes.numel() == 0


def test_a_restored_random_encoder_cannot_give_scores_for_new_data() -> None:
    data = ToyMultiDomainDataModule()
    data.setup("fit")
    hparams = SimpleNamespace(encoder_config={"hidden_size": 32}, backbone="x")
    with pytest.raises(
        ConfigError, match=r"fresh random initialisation.*'old', not '" + data.split_fingerprint
    ):
        part().compute(data, None, hparams, "old", torch.device("cpu"))


def test_summary_per_domain() -> None:
    data = ToyMultiDomainDataModule()  # example ids 0-11 are dom0, 12-23 dom1, 24-35 dom2
    data.setup("fit")
    t = torch.arange(36, dtype=torch.float)
    t[35] = float("nan")
    summary = transferability_summary(t, data, data.domain_names)
    assert summary["transferability/dom0_mean"] == pytest.approx(5.5)
    assert (summary["transferability/dom1_min"], summary["transferability/dom1_max"]) == (12.0, 23.0)
    assert (
        summary["transferability/dom2_mean"] == pytest.approx(29.0)
        and summary["transferability/dom2_max"] == 34
    )


def test_fit_datamodule_checks_the_contract() -> None:
    data = ToyMultiDomainDataModule()
    data.setup("fit")
    assert fit_datamodule(SimpleNamespace(datamodule=data)) is data
    with pytest.raises(ConfigError, match="MetaTeacher needs a LightningDataModule"):
        fit_datamodule(SimpleNamespace(datamodule=None))
    data.num_train_ids = data.num_pooled_train + 4  # augmented examples
    with pytest.raises(ConfigError, match="data.init_args.augment"):
        fit_datamodule(SimpleNamespace(datamodule=data))
