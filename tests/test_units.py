"""The unit toolkit: UnitKey, the seeding scheme, the settings guard, checkpoint_units, and
``awp certify``'s units as thin calls of the tested CERTIFY / PREDICT."""

import dataclasses
import json

import pytest
import torch

from analysis.certify import certify, noise_correct, predict
from analysis.certify_units import CertifyConfig, compute_unit, unit_index, unit_keys
from analysis.curvature import eigs_key, layer_key, power_key, slq_key, trace_key
from analysis.flatness import expected_key
from analysis.store import SampleStore, StoreMismatch, UnitKey, checkpoint_units
from analysis.worst_case import WorstCaseConfig, worst_key
from awp.config import SettingsMismatch, check_same_settings
from awp.hessian import batch_seed
from awp.seeds import SEED_SCHEME, SEED_SCHEME_KEY, derive_seed, generator_for
from awp.train import TrainConfig, train
from landscape.surface import awp_seed, direction_seed, fixed_seed, hessian_seed, point_seed
from tests.helpers import synthetic_bundle, tiny_batch, tiny_model
from tests.test_train import tiny_config

# ----------------------------------------------------------------------------- UnitKey


def test_unit_keys_keep_their_stored_format_and_round_trip():
    """Stores on disk hold these exact strings: the key format may not change."""
    keys = {
        expected_key(0.1, 3): "expected|alpha=0.1|k=3",
        worst_key(0.01, 2, WorstCaseConfig()): (
            "worst|gamma=0.01|r=2|steps=5|fraction=0.5|per_batch=0"
        ),
        eigs_key(5, 1e-4): "eigs|k=5|tol=0.0001|ncv=0",
        power_key(5): "power|k=5|tol=0.001|iters=100",
        layer_key("conv1.weight", 1e-4, 30): "layer|name=conv1.weight|tol=0.0001|ncv=30",
        slq_key(50, 2): "slq|steps=50|r=2",
        trace_key(7): "trace|i=7",
    }
    for made, stored in keys.items():
        assert made == stored
        assert str(UnitKey.parse(made)) == made
    cert = unit_keys(CertifyConfig(sigmas=(0.25,), predict=True), [3])
    assert cert == {
        "certify": ["sigma=0.25|i=3"],
        "predict": ["predict|sigma=0.25|i=3"],
        "noise": ["noise|i=3"],
    }
    assert [unit_index(k[0]) for k in cert.values()] == [3, 3, 3]


def test_unit_key_reads_typed_fields():
    key = UnitKey.parse("worst|gamma=0.01|r=2|per_batch=1")
    assert (key.kind, key.float("gamma"), key.int("r"), key.flag("per_batch")) == (
        "worst",
        0.01,
        2,
        True,
    )
    assert UnitKey.parse("base") == UnitKey("base")
    kindless = UnitKey.parse("sigma=0.5|i=12")
    assert kindless.kind == "" and kindless.float("sigma") == 0.5
    # floats are written exactly (repr), also numpy floats; bools as 0/1
    import numpy as np

    assert str(UnitKey.of("x", a=np.float64(0.1) * 3, b=False)) == f"x|a={0.1 * 3!r}|b=0"
    assert UnitKey.parse(str(UnitKey.of("x", a=1 / 3))).float("a") == 1 / 3


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", "empty"),
        ("expected|alpha=0.1|k", "'k' is not name=value"),
        ("expected|=3", "'=3' is not name=value"),
        ("trace|i=1|i=2", "repeat"),
    ],
)
def test_unit_key_refuses_a_malformed_key(key, problem):
    with pytest.raises(ValueError, match=problem):
        UnitKey.parse(key)


def test_unit_key_names_a_missing_or_mistyped_field():
    key = UnitKey.parse("trace|i=x")
    with pytest.raises(ValueError, match=r"'trace\|i=x' has no field 'k' \(it has: i\)"):
        key.int("k")
    with pytest.raises(ValueError, match="i='x' is not a int"):
        key.int("i")
    with pytest.raises(ValueError, match="may not contain"):
        UnitKey.of("layer", name="a|b")
    with pytest.raises(TypeError, match="give an int, float, bool or str"):
        UnitKey.of("x", a=[1])


def test_units_refuse_keys_of_another_measure():
    model = tiny_model()
    x, y = tiny_batch(n=1)
    cfg = CertifyConfig(sigmas=(0.25,), n0=10, n=20, noise_draws=0)
    with pytest.raises(ValueError, match=r"unknown certify unit key 'trace\|i=0'"):
        compute_unit(model, x[0], int(y[0]), "trace|i=0", cfg=cfg)


# ----------------------------------------------------------------------------- seeds


def test_seeding_scheme_is_stable():
    """Every stored noise draw, probe and start vector derives from these values: a change of
    scheme fails here before it silently changes (and mixes) stored results."""
    assert derive_seed(0, "noise", 1) == 204593350586738189
    assert derive_seed(0, "eigs") == 762942636155961126
    assert derive_seed(3, "certify", 17) == 834890221260776629
    assert derive_seed(0, "noise", 1) != derive_seed(0, "noise", 2) != derive_seed(1, "noise", 2)
    assert generator_for(0, "noise", 1).initial_seed() == 204593350586738189
    a = torch.randn(3, generator=generator_for(0, "noise", 1))
    assert torch.equal(a, torch.randn(3, generator=generator_for(0, "noise", 1)))


def test_every_point_batch_direction_and_training_draw_uses_derive_seed(tmp_path):
    """One scheme: the landscape's points and directions, the Hessian's batch attacks, the
    evaluation's attacks and training's generators are derive_seed of parts naming them."""
    assert point_seed(3, 5, "test") == derive_seed(3, "point", 5, "test")
    assert point_seed(3, 5, "test") != point_seed(3, 5, "train") != point_seed(3, 6, "test")
    assert fixed_seed(2, "train") == derive_seed(2, "fixed", "train")
    assert awp_seed(2) == derive_seed(2, "awp direction")
    assert hessian_seed(2) == derive_seed(2, "hessian direction")
    assert direction_seed(4, 1) == derive_seed(4, "direction", 1)
    assert batch_seed(7, 2) == derive_seed(7, "hessian batch", 2)
    # training: the data order of epoch 1 is a permutation drawn from (seed, "train", "order")
    cfg = tiny_config(tmp_path / "run", epochs=1, seed=5, augment=False)
    train(cfg, progress=False, data=synthetic_bundle())
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved[SEED_SCHEME_KEY] == SEED_SCHEME
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    order = generator_for(5, "train", "order")
    torch.randperm(96, generator=order)  # what one epoch of the 96 training images draws
    assert torch.equal(state["rng_data"], order.get_state())


def test_results_of_the_older_seeding_are_read_but_never_continued(tmp_path):
    """A run folder or a unit store written before the one scheme (no seed_scheme) is refused
    with the reason, not mixed with draws made differently."""
    cfg, data = tiny_config(tmp_path / "run", epochs=2), synthetic_bundle()
    train(dataclasses.replace(cfg, epochs=1), progress=False, data=data)
    config = tmp_path / "run" / "config.json"
    old = json.loads(config.read_text())
    del old[SEED_SCHEME_KEY]
    config.write_text(json.dumps(old))
    with pytest.raises(SettingsMismatch, match=r"seed_scheme: None in the run.*before every seed"):
        train(cfg, resume=True, progress=False, data=data)
    assert TrainConfig.migrate(dict(old)) == old  # the config itself still reads
    store = SampleStore(tmp_path / "units", meta={"n": 1})
    store.add("k", {"v": 1.0})
    path = tmp_path / "units" / "samples.rank0.json"
    written = json.loads(path.read_text())
    assert written["meta"] == {"n": 1, SEED_SCHEME_KEY: SEED_SCHEME}
    del written["meta"][SEED_SCHEME_KEY]
    path.write_text(json.dumps(written))
    with pytest.raises(StoreMismatch, match="seed_scheme: None on disk"):
        SampleStore(tmp_path / "units", meta={"n": 1}).load()


# ----------------------------------------------------------------------------- settings guard


def test_settings_guard_names_the_difference_the_place_and_the_fix():
    saved = {"a": 1, "attack": {"steps": 10, "device": "cpu"}, "flatness": {"alphas": [0.1]}}
    same = {"a": 1, "attack": {"steps": 10, "device": "cuda"}, "flatness": {"alphas": [0.2]}}
    # bare names are ignored at any depth, dotted paths at that place
    check_same_settings(saved, same, where="w", fix="f", ignore=("device", "flatness.alphas"))
    with pytest.raises(SettingsMismatch) as err:
        check_same_settings(saved, same, where="cannot resume runs/x", fix="Do this.")
    text = str(err.value)
    assert text.startswith("cannot resume runs/x (")
    assert "attack.device: 'cpu' on disk, 'cuda' now" in text
    assert "flatness.alphas: [0.1] on disk, [0.2] now" in text
    assert text.endswith("). Do this.")
    # a dotted path ignores that place only
    other = {"alphas": [0.1], "flatness": {"alphas": [0.1]}}
    with pytest.raises(SettingsMismatch, match=r"^w \(alphas: \[0\.1\] in the file, 2 now\)"):
        check_same_settings(
            other,
            {"alphas": 2, "flatness": {"alphas": 3}},
            where="w",
            fix="f",
            ignore=("flatness.alphas",),
            saved_as="in the file",
        )


def test_settings_guard_adds_the_callers_problems_and_shortens_long_lists():
    saved = {f"k{i}": i for i in range(5)}
    now = {f"k{i}": i + 1 for i in range(5)}
    with pytest.raises(KeyError, match="and 3 more"):
        check_same_settings(saved, now, where="w", fix="f", shown=2, error=KeyError)
    with pytest.raises(SettingsMismatch, match=r"w \(the checkpoint changed\)\. f"):
        check_same_settings({}, {}, where="w", fix="f", problems=["the checkpoint changed"])


# ----------------------------------------------------------------------------- checkpoint_units


def test_checkpoint_units_resume_and_refuse(tmp_path):
    calls = []

    def compute(key):
        calls.append(key)
        return {"v": UnitKey.parse(key).int("i") ** 2}

    def measure(run_keys):
        records = run_keys([f"sq|i={i}" for i in range(3)], "squares")
        return {"total": sum(r["v"] for r in records.values())}

    meta = {"seed": 1, "cfg": {"samples": 3}}
    run = dict(compute=compute, measure=measure, ignore=("cfg.samples",))
    first = checkpoint_units(tmp_path / "ck", stores={"samples": meta}, **run)
    assert first == {"total": 5} and len(calls) == 3
    # resumed: nothing recomputed; an ignored setting may change
    again = checkpoint_units(
        tmp_path / "ck", stores={"samples": {"seed": 1, "cfg": {"samples": 9}}}, **run
    )
    assert again == first and len(calls) == 3
    with pytest.raises(StoreMismatch, match="seed: 1 on disk, 2 now"):
        checkpoint_units(tmp_path / "ck", stores={"samples": {**meta, "seed": 2}}, **run)
    assert len(calls) == 3


def test_checkpoint_units_with_several_stores_need_the_store_named(tmp_path):
    def measure(run_keys):
        return run_keys(["a|i=1"], "x")

    with pytest.raises(ValueError, match=r"name the store .* \['one', 'two'\]"):
        checkpoint_units(
            tmp_path,
            stores={"one": {}, "two": {}},
            compute=lambda k: {},
            measure=measure,
        )
    out = checkpoint_units(
        tmp_path,
        stores={"one": {}, "two": {}},
        compute=lambda k: {"k": k},
        measure=lambda run_keys: run_keys(["a|i=1"], "x", "two"),
    )
    assert out == {"a|i=1": {"k": "a|i=1"}}
    assert (tmp_path / "two.rank0.json").exists() and not (tmp_path / "one.rank0.json").exists()


# ----------------------------------------------------------------------------- certify


def test_certify_units_are_the_tested_certify_predict_and_noise_curve():
    """``awp certify``'s units give the counts of analysis.certify's functions for the image's
    seed: one implementation of CERTIFY, the one checked against the analytic oracle."""
    torch.manual_seed(0)
    model = tiny_model().eval()
    x, y = tiny_batch(n=1)
    cfg = CertifyConfig(sigmas=(0.25,), n0=30, n=70, batch_size=16, predict=True, noise_draws=5)
    seed = derive_seed(cfg.seed, "certify", 4)
    _, counts0, counts = certify(model, x[0], sigma=0.25, n0=30, n=70, seed=seed, batch_size=7)
    rec = compute_unit(model, x[0], int(y[0]), "sigma=0.25|i=4", cfg=cfg)
    assert rec["counts0"] == counts0.tolist() and rec["counts"] == counts.tolist()
    assert (rec["index"], rec["label"], rec["sigma"]) == (4, int(y[0]), 0.25)
    _, pcounts = predict(model, x[0], sigma=0.25, n=70, seed=seed, batch_size=9)
    rec = compute_unit(model, x[0], int(y[0]), "predict|sigma=0.25|i=4", cfg=cfg)
    assert rec["counts"] == pcounts.tolist() and "counts0" not in rec
    correct = noise_correct(
        model,
        x[0],
        int(y[0]),
        levels=cfg.noise_levels,
        draws=5,
        seed=derive_seed(cfg.seed, "noise", 4),
    )
    assert compute_unit(model, x[0], int(y[0]), "noise|i=4", cfg=cfg)["correct"] == correct


def test_stores_written_before_the_guard_are_still_resumed(tmp_path):
    """Flatness and curvature stores used to keep their settings without the ones that only
    add or summarize units; the measures' UNIT_MUTABLE paths read those files unchanged,
    and still refuse a setting that changes what a unit computes."""
    from analysis.curvature import HessianConfig
    from analysis.flatness import FlatnessConfig
    from analysis.store import SampleStore
    from awp.config import to_dict
    from awp.data import DataConfig
    from awp_landscape.measures import curvature, flatness

    for name, cmd, cfg in (
        ("flatness", flatness, FlatnessConfig()),
        ("hessian", curvature, HessianConfig(trace=True)),
    ):
        now = cmd.unit_settings(cfg, DataConfig(), "ab" * 32, 100)
        dropped = {p.split(".", 1)[1] for p in cmd.UNIT_MUTABLE}
        old = {**now, name: {k: v for k, v in to_dict(cfg).items() if k not in dropped}}
        folder = tmp_path / name
        SampleStore(folder, meta=old).add("base", {"v": 1})
        store = SampleStore(folder, meta=now, ignore=cmd.UNIT_MUTABLE)
        assert store.load() == {"base": {"v": 1}}
        changed = {**now, name: {**now[name], "subset_seed": 5}}
        with pytest.raises(StoreMismatch, match=f"{name}.subset_seed: 0 on disk, 5 now"):
            SampleStore(folder, meta=changed, ignore=cmd.UNIT_MUTABLE).load()
