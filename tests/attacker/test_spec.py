"""AttackSpec validation, defaults and the study presets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.attacker.attacks import ATTACKS
from services.attacker.spec import AttackSpec, study_presets


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"method": "pgd", "eps": -1}, "greater than or equal to 0"),
        ({"method": "nope", "eps": 4}, "unknown attack method 'nope'"),
        ({"method": "pgd", "eps": 4, "steps": 0}, "greater than 0"),
        ({"method": "pgd", "eps": 4, "steps": -3}, "greater than 0"),
        ({"method": "fgsm", "eps": 4, "norm": "l2"}, "fgsm supports norm ['linf']"),
        ({"method": "cw", "eps": 0, "budget_space": "normalized"}, "cw supports norm"),
        ({"method": "square", "eps": 4, "budget_space": "normalized"}, "square supports budget_space ['pixel']"),
        ({"method": "pgd", "eps": 0}, "pgd needs eps > 0"),
        ({"method": "pgd", "eps": 4, "colour": 1}, "Extra inputs are not permitted"),
        # a param the method never reads is an error, not a silent no-op
        ({"method": "pgd", "eps": 4, "cw_steps": 3}, "pgd does not use params cw_steps .its params: targeted, random_start"),
        ({"method": "fgsm", "eps": 4, "decay": 0.5}, "fgsm does not use params decay"),
        ({"method": "cw", "eps": 0, "norm": "l2", "queries": 5, "decay": 0.5}, "cw does not use params decay, queries"),
        ({"method": "score", "eps": 4, "targeted": False}, "score does not use params targeted .its params: random_start"),
    ],
)
def test_bad_specs_fail_with_clear_messages(fields, message):
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        AttackSpec(**fields)


def test_params_a_method_reads_or_pins_are_accepted():
    assert AttackSpec(method="pgd", eps=4, random_start=False, targeted=False).random_start is False
    assert AttackSpec(method="bim", eps=4, random_start=False).method == "bim"  # BIM never starts randomly
    # a default stated explicitly is harmless (dumps of every field round-trip)
    assert AttackSpec(method="fgsm", eps=4, queries=None, cw_steps=1000, random_start=True).method == "fgsm"
    assert AttackSpec(method="mifgsm", eps=4, decay=0.5).decay == 0.5


def test_defaults_follow_the_study():
    pgd = AttackSpec(method="pgd", eps=6)
    assert pgd.resolved_steps == 10 and pgd.resolved_step == pytest.approx(1 / 255)  # eps/6
    assert AttackSpec(method="fgsm", eps=4).resolved_step == pytest.approx(4 / 255)
    assert AttackSpec(method="mifgsm", eps=5, steps=5).resolved_step == pytest.approx(1 / 255)  # eps/T
    assert AttackSpec(method="pgd", eps=6, step_size=2).resolved_step == pytest.approx(2 / 255)
    assert AttackSpec(method="square", eps=4).resolved_queries == 1000


def test_study_presets():
    assert {k: (s.method, s.eps) for k, s in study_presets().items()} == {
        "fgsm_eps4": ("fgsm", 4), "fgsm_eps8": ("fgsm", 8), "pgd_eps4": ("pgd", 4), "pgd_eps8": ("pgd", 8), "cw": ("cw", 0),
    }
    cw = study_presets()["cw"]
    assert (cw.cw_binary_steps, cw.cw_c, cw.cw_confidence, cw.cw_steps, cw.cw_lr) == (5, 1e-2, 0, 1000, 5e-3)
    assert study_presets()["pgd_eps8"].resolved_steps == 10 and study_presets()["pgd_eps8"].random_start


def test_registry_has_the_required_attacks():
    assert {"fgsm", "bim", "pgd", "mifgsm", "cw", "apgd", "square", "spsa", "feature_match", "score"} <= set(ATTACKS)
    assert all(cls.name == name for name, cls in ATTACKS.items())


def test_spec_round_trips_through_json():
    spec = AttackSpec(method="pgd", eps=8, norm="l2", budget_space="normalized", seed=3)
    assert AttackSpec.model_validate_json(spec.model_dump_json()) == spec


def test_registry_and_spec_data_name_the_same_methods():
    """The attack spec is pure data; the registry of attack classes must cover exactly its methods."""
    from services.attacker.attacks import ATTACKS
    from services.attacker.spec import METHODS

    assert set(ATTACKS) == set(METHODS)
    assert all(cls.info() is METHODS[name] for name, cls in ATTACKS.items())


def test_spec_module_imports_without_torch():
    import subprocess
    import sys

    code = "import sys, services.attacker.spec; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
