"""Replay samplers: arms from an index table, baseline proportions, the amr bandit math, resumable state."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from components.core.config import ReplayConfig
from components.core.replay import REGISTRY, AdaptiveReplay, Arms, build_arms, build_sampler, softmax
from components.core.replay.odm import odm_epsilon


def make_arms(sizes: dict[str, int]) -> Arms:
    """Arms keyed 'drop/cluster' with consecutive row ids, in the given order."""
    keys, drops, rows, start = [], [], [], 0
    for key, n in sizes.items():
        keys.append(key)
        drops.append(key.split("/")[0])
        rows.append(np.arange(start, start + n, dtype=np.uint64))
        start += n
    return Arms(keys, drops, rows)


def amr(arms: Arms, seed: int = 0, **overrides) -> AdaptiveReplay:
    return build_sampler(ReplayConfig(strategy="amr", **overrides), arms, seed=seed)


ARMS3 = {"a/0": 10, "a/1": 20, "b/0": 30}


# --- build_arms -------------------------------------------------------------------------------------------------


def index_table() -> pa.Table:
    return pa.table(
        {
            "_rowid": pa.array([9, 1, 5, 7, 3, 2, 8, 4, 6, 0], pa.uint64()),
            "drop_id": ["d1", "d1", "d2", "d1", "d2", "d3", "d2", "d1", "d1", "d2"],
            "split": ["train", "train", "train", "holdout", "train", "train", "train", "train", "train", "holdout"],
            "cluster": pa.array([1, 0, 0, 0, 1, 0, 0, 1, 0, 1], pa.int32()),
        }
    )


def test_build_arms_by_cluster_orders_by_past_drops_then_cluster_and_skips_holdout():
    arms = build_arms(index_table(), ["d2", "d1"], "cluster")
    assert arms.keys == ["d2/0", "d2/1", "d1/0", "d1/1"]
    assert arms.drop_ids == ["d2", "d2", "d1", "d1"]
    assert [r.tolist() for r in arms.row_ids] == [[5, 8], [3], [1, 6], [4, 9]]  # holdout rows 7 and 0 excluded
    assert all(r.dtype == np.uint64 for r in arms.row_ids)


def test_build_arms_by_drop_and_unknown_or_empty_input():
    arms = build_arms(index_table(), ["d1", "d3"], "drop")
    assert arms.keys == ["d1", "d3"]
    assert [r.tolist() for r in arms.row_ids] == [[1, 4, 6, 9], [2]]
    assert len(build_arms(index_table(), [], "cluster")) == 0
    assert len(build_arms(index_table(), ["nope"], "cluster")) == 0
    with pytest.raises(ValueError, match="duplicates"):
        build_arms(index_table(), ["d1", "d1"], "drop")
    with pytest.raises(ValueError, match="lacks columns"):
        build_arms(index_table().drop_columns(["cluster"]), ["d1"], "drop")


def test_build_arms_on_a_million_rows_partitions_every_train_row():
    rng = np.random.default_rng(0)
    n = 1_000_000
    table = pa.table(
        {
            "_rowid": pa.array(rng.permutation(n).astype(np.uint64)),
            "drop_id": pa.array(rng.choice(["a", "b", "c"], n)).dictionary_encode(),
            "split": rng.choice(["train", "holdout"], n, p=[0.9, 0.1]),
            "cluster": pa.array(rng.integers(0, 8, n), pa.int32()),
        }
    )
    arms = build_arms(table, ["b", "a"], "cluster")
    assert len(arms) == 16 and arms.keys[0] == "b/0" and arms.keys[-1] == "a/7"
    split = table["split"].to_numpy(zero_copy_only=False)
    drop = table["drop_id"].cast(pa.string()).to_numpy(zero_copy_only=False)
    assert arms.sizes.sum() == np.sum((split == "train") & (drop != "c"))
    assert all(np.all(np.diff(r.astype(np.int64)) > 0) for r in arms.row_ids)


# --- baselines --------------------------------------------------------------------------------------------------


def test_registry_and_none_samples_nothing():
    assert set(REGISTRY) == {"none", "uniform", "balanced", "amr", "odm"}
    sampler = build_sampler(ReplayConfig(strategy="none"), make_arms(ARMS3))
    assert not sampler.replays  # the loop gives every slot to new data
    assert all(build_sampler(ReplayConfig(strategy=s), make_arms(ARMS3)).replays for s in ("uniform", "amr"))
    assert not build_sampler(ReplayConfig(strategy="amr"), Arms([], [], [])).replays  # no past data yet
    rows, arm = sampler.sample(64)
    assert rows.size == 0 and arm.size == 0 and rows.dtype == np.uint64 and arm.dtype == np.int64
    assert np.all(sampler.probabilities() == 0)


@pytest.mark.parametrize("strategy", ["uniform", "balanced", "amr", "odm"])
def test_no_arms_and_zero_draws_return_empty(strategy):
    empty = build_sampler(ReplayConfig(strategy=strategy), Arms([], [], []))
    assert empty.sample(8)[0].size == 0 and empty.probabilities().size == 0
    empty.set_reference({"a/0": 1.0})
    empty.update(np.empty(0, np.int64), np.empty(0))
    assert empty.step == 1
    assert build_sampler(ReplayConfig(strategy=strategy), make_arms(ARMS3)).sample(0)[0].size == 0


def chi_square(observed: np.ndarray, expected_p: np.ndarray) -> float:
    expected = expected_p * observed.sum()
    return float(((observed - expected) ** 2 / expected).sum())


def test_uniform_weights_arms_by_size_and_balanced_weights_drops_equally():
    arms = make_arms({"a/0": 100, "a/1": 300, "b/0": 50, "c/0": 550})
    n = 20_000
    uniform = build_sampler(ReplayConfig(strategy="uniform"), arms, seed=1)
    balanced = build_sampler(ReplayConfig(strategy="balanced"), arms, seed=1)
    np.testing.assert_allclose(uniform.probabilities(), [0.1, 0.3, 0.05, 0.55])
    np.testing.assert_allclose(balanced.probabilities(), [1 / 12, 3 / 12, 1 / 3, 1 / 3])
    for sampler in (uniform, balanced):
        rows, arm = sampler.sample(n)
        counts = np.bincount(arm, minlength=4)
        assert chi_square(counts, sampler.probabilities()) < 16.3  # chi2(3 dof) 99.9th percentile
        # each row lies inside the arm it is reported with
        assert all(np.isin(rows[arm == i], arms.row_ids[i]).all() for i in range(4))
    _, arm = balanced.sample(n)
    drop_share = np.bincount([0, 0, 1, 2], weights=np.bincount(arm, minlength=4)) / n
    np.testing.assert_allclose(drop_share, [1 / 3] * 3, atol=0.02)


def test_rows_inside_an_arm_are_uniform():
    arms = make_arms({"a/0": 5})
    rows, _ = build_sampler(ReplayConfig(strategy="uniform"), arms, seed=3).sample(10_000)
    assert chi_square(np.bincount(rows.astype(np.int64), minlength=5), np.full(5, 0.2)) < 18.5  # chi2(4) 99.9%


# --- amr math ---------------------------------------------------------------------------------------------------


def test_softmax_is_stable_and_epsilon_floor_holds():
    assert np.allclose(softmax(np.array([1000.0, 1000.0])), [0.5, 0.5])
    sampler = amr(make_arms(ARMS3), epsilon=0.2, temperature=0.01)
    sampler.q[:] = [50.0, -3.0, 0.0]
    p = sampler.probabilities()
    assert np.isfinite(p).all() and p.sum() == pytest.approx(1.0)
    assert np.all(p >= 0.2 / 3 - 1e-12)
    assert p[0] == pytest.approx(0.8 + 0.2 / 3)


def test_temperature_limits():
    q = np.array([0.3, 0.1, 0.2])
    cold = amr(make_arms(ARMS3), epsilon=0.0, temperature=1e-6)
    hot = amr(make_arms(ARMS3), epsilon=0.0, temperature=1e6)
    cold.q[:], hot.q[:] = q, q
    np.testing.assert_allclose(cold.probabilities(), [1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(hot.probabilities(), [1 / 3] * 3, atol=1e-6)
    mid = amr(make_arms(ARMS3), epsilon=0.0, temperature=0.1)
    mid.q[:] = q
    expected = np.exp(q / 0.1) / np.exp(q / 0.1).sum()
    np.testing.assert_allclose(mid.probabilities(), expected)


def test_ema_reward_against_hand_computed_values():
    sampler = amr(make_arms(ARMS3), alpha=0.5)
    sampler.set_reference({"a/0": 2.0, "a/1": 1.0})  # b/0 has no reference: 0; a/* have their own
    np.testing.assert_allclose(sampler.reference, [2.0, 1.0, 0.0])
    sampler.update(np.array([0, 0, 1]), np.array([3.0, 2.0, 1.5]))
    # arm 0: mean(3-2, 2-2) = 0.5 -> Q = 0.5 * 0.5 = 0.25; arm 1: 0.5 -> 0.25; arm 2 not pulled
    np.testing.assert_allclose(sampler.q, [0.25, 0.25, 0.0])
    sampler.update(np.array([0, 2]), np.array([4.0, 0.5]))
    # arm 0: r = 2 -> Q = 0.5*0.25 + 0.5*2 = 1.125; arm 2: r = 0.5 -> 0.25; arm 1 untouched
    np.testing.assert_allclose(sampler.q, [1.125, 0.25, 0.25])
    assert sampler.pulls.tolist() == [3, 1, 1] and sampler.last_pull.tolist() == [2, 1, 2] and sampler.step == 2


def test_missing_reference_falls_back_to_drop_mean_then_drop_loss_then_zero():
    arms = make_arms({"a/0": 2, "a/1": 2, "a/2": 2, "b/0": 2, "c/0": 2})
    sampler = amr(arms)
    sampler.set_reference({"a/0": 2.0, "a/1": 4.0, "b": 5.0, "a/2": float("nan"), "zzz": 9.0})
    np.testing.assert_allclose(sampler.reference, [2.0, 4.0, 3.0, 5.0, 0.0])


def test_stats_split_and_summed_like_ddp_equal_a_single_update():
    losses, arm = np.array([1.0, 2.0, 3.0, 4.0, np.nan]), np.array([0, 2, 2, 1, 1])
    single, ddp = amr(make_arms(ARMS3)), amr(make_arms(ARMS3))
    single.update(arm, losses)
    s1, c1 = ddp.arm_stats(arm[:2], losses[:2])
    s2, c2 = ddp.arm_stats(arm[2:], losses[2:])
    ddp.update_from_stats(s1 + s2, c1 + c2)
    np.testing.assert_allclose(single.q, ddp.q)
    assert c2.tolist() == [0, 1, 1]  # the NaN loss is not counted
    with pytest.raises(ValueError, match="out of range"):
        ddp.update(np.array([3]), np.array([1.0]))


def test_exploration_bonus_grows_then_caps():
    sampler = amr(make_arms(ARMS3), exploration_bonus=0.1, stale_steps=5)
    for step in range(1, 9):
        sampler.update(np.array([0]), np.array([0.0]))
        expected = 0.1 * min(step, 5)
        np.testing.assert_allclose(sampler.exploration_bonus(), [0.0, expected, expected])
    p = sampler.probabilities()
    assert p[1] == p[2] > p[0]  # Q all 0: the stale arms are favoured by their bonus alone


def test_amr_shifts_replay_toward_the_arm_being_forgotten():
    arms = make_arms({"a/0": 50, "a/1": 50, "b/0": 50, "b/1": 50})
    sampler = amr(arms, seed=7)
    sampler.set_reference({k: 2.0 for k in arms.keys})
    sim = np.random.default_rng(11)
    start = sampler.probabilities()
    np.testing.assert_allclose(start, 0.25)
    share = []
    for step in range(200):
        rows, arm = sampler.sample(16)
        drift = np.where(arm == 2, 0.01 * step, 0.0)  # b/0 is forgotten a bit more at every step
        sampler.update(arm, 2.0 + drift + sim.normal(0.0, 0.05, arm.size))
        share.append(np.mean(arm == 2))
    p = sampler.probabilities()
    assert p.argmax() == 2 and p[2] > 0.7
    assert np.mean(share[-50:]) > 2 * np.mean(share[:20])
    assert np.all(p >= sampler.cfg.epsilon / 4 - 1e-12)


def test_same_seed_same_draws_different_seed_different_draws():
    a, b, c = amr(make_arms(ARMS3), seed=5), amr(make_arms(ARMS3), seed=5), amr(make_arms(ARMS3), seed=6)
    ra, rb, rc = a.sample(100), b.sample(100), c.sample(100)
    assert np.array_equal(ra[0], rb[0]) and np.array_equal(ra[1], rb[1])
    assert ra[0].dtype == np.uint64 and ra[1].dtype == np.int64 and ra[0].shape == ra[1].shape == (100,)
    assert not np.array_equal(ra[0], rc[0])
    assert amr(make_arms(ARMS3)).seed == ReplayConfig().seed


# --- state ------------------------------------------------------------------------------------------------------


def drive(sampler, steps: int, seed: int = 0) -> list[np.ndarray]:
    """Sample and update for `steps` steps with deterministic fake losses; returns the drawn rows."""
    losses = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        rows, arm = sampler.sample(8)
        sampler.update(arm, losses.normal(2.0 + 0.1 * arm, 0.1))
        out.append(rows)
    return out


@pytest.mark.parametrize("strategy", ["uniform", "balanced", "amr", "odm"])
def test_state_dict_json_round_trip_reproduces_future_samples(strategy):
    cfg = ReplayConfig(strategy=strategy)
    original = build_sampler(cfg, make_arms(ARMS3), seed=1)
    original.set_reference({"a/0": 2.0, "b": 2.5})
    drive(original, 10)
    state = json.loads(json.dumps(original.state_dict()))
    assert state["name"] == strategy and state["step"] == 10 and len(state["q"]) == 3
    restored = build_sampler(cfg, make_arms(ARMS3), seed=999)
    restored.load_state_dict(state)
    np.testing.assert_array_equal(restored.reference, original.reference)
    for rows_a, rows_b in zip(drive(original, 10, seed=4), drive(restored, 10, seed=4), strict=True):
        np.testing.assert_array_equal(rows_a, rows_b)
    np.testing.assert_allclose(restored.q, original.q)
    with pytest.raises(ValueError, match="sampler"):
        build_sampler(ReplayConfig(strategy="none"), make_arms(ARMS3)).load_state_dict(state)


def test_load_state_into_a_grown_arm_set():
    old = amr(make_arms({"a/0": 4, "a/1": 4}))
    drive(old, 6)
    old.q[:] = [0.2, 0.4]
    state = json.loads(json.dumps(old.state_dict()))
    grown = amr(make_arms({"a/0": 4, "a/1": 4, "b/0": 6, "b/1": 6}))
    grown.load_state_dict(state)
    np.testing.assert_allclose(grown.q, [0.2, 0.4, 0.3, 0.3])  # new arms start at the known arms' mean
    assert grown.step == 6
    assert grown.last_pull[2:].tolist() == [6, 6] and grown.pulls[2:].tolist() == [0, 0]
    assert grown.pulls[:2].tolist() == old.pulls.tolist()
    assert grown.rng.bit_generator.state == old.rng.bit_generator.state
    assert grown.probabilities().sum() == pytest.approx(1.0)


@pytest.mark.parametrize("strategy", sorted(REGISTRY))
def test_arms_held_as_ranges_draw_exactly_what_arrays_draw(strategy):
    """Planning from the drops' indexes holds each arm as a RowRange (O(arms)); the draws must not change."""
    from components.core.replay import RowRange

    bounds = [(0, 1000), (1000, 1003), (5000, 70000)]
    ranges = Arms(["a", "b", "c"], ["a", "b", "c"], [RowRange(a, b) for a, b in bounds])
    arrays = Arms(["a", "b", "c"], ["a", "b", "c"], [np.arange(a, b, dtype=np.uint64) for a, b in bounds])
    cfg = ReplayConfig(strategy=strategy)
    s1, s2 = build_sampler(cfg, ranges, seed=3), build_sampler(cfg, arrays, seed=3)
    assert s1.sizes.tolist() == s2.sizes.tolist() == [1000, 3, 65000]
    for _ in range(5):
        (r1, a1), (r2, a2) = s1.sample(64), s2.sample(64)
        assert r1.dtype == r2.dtype == np.uint64 and r1.tolist() == r2.tolist() and a1.tolist() == a2.tolist()
        losses = np.linspace(1, 2, a1.size)
        s1.update(a1, losses)
        s2.update(a2, losses)
    assert s1.state_dict() == s2.state_dict()


# --- issue 12: uniform floor and odm ----------------------------------------------------------------------------


def test_uniform_floor_mixes_in_uniform_replay_by_hand():
    # sizes 10, 20, 30 -> uniform mix [1/6, 1/3, 1/2]; the bandit alone (eps 0, cold) puts everything on arm 2
    sampler = amr(make_arms(ARMS3), epsilon=0.0, temperature=1e-6, uniform_floor=0.3)
    sampler.q[:] = [0.0, 0.0, 1.0]
    np.testing.assert_allclose(sampler.probabilities(), [0.3 / 6, 0.3 / 3, 0.7 + 0.3 / 2])
    sampler.q[:] = [1.0, 0.0, 0.0]  # the bandit starves arm 2: the floor still gives it 0.3 x uniform's share
    np.testing.assert_allclose(sampler.probabilities(), [0.7 + 0.05, 0.1, 0.15])
    full = amr(make_arms(ARMS3), uniform_floor=1.0)
    full.q[:] = [5.0, 0.0, 0.0]
    np.testing.assert_allclose(full.probabilities(), [1 / 6, 1 / 3, 1 / 2])  # floor 1 is uniform replay


def test_odm_epsilon_schedule():
    assert odm_epsilon(4, 1) == pytest.approx(0.25)  # sqrt(ln 4 / 4) = 0.589 > 1/K: capped at 1/K
    assert odm_epsilon(4, 100) == pytest.approx(np.sqrt(np.log(4) / 400))
    assert odm_epsilon(4, 0) == odm_epsilon(4, 1) and odm_epsilon(1, 5) == 1.0


def test_odm_probabilities_and_importance_weighted_reward_by_hand():
    sampler = build_sampler(ReplayConfig(strategy="odm", odm_smoothing=0.5), make_arms(ARMS3))
    np.testing.assert_allclose(sampler.probabilities(), [1 / 3] * 3)  # R = 0: uniform over arms
    sampler.set_reference({"a/0": 1.0, "a/1": 1.0, "b/0": 1.0})
    # step 1 draws from p = 1/3 each; 4 rows: arm 0 twice (losses 3, 1), arm 2 twice (2, 2); arm 1 none
    sampler.update(np.array([0, 0, 2, 2]), np.array([3.0, 1.0, 2.0, 2.0]))
    # Rhat_0 = (3 + 1) / (4 * 1/3) = 3; R_0 = 0.5 * 0 + 0.5 * 3 = 1.5; same for arm 2; arm 1 untouched
    np.testing.assert_allclose(sampler.reward, [1.5, 0.0, 1.5])
    # step 2: eps_2 = min(1/3, sqrt(ln 3 / 6) = 0.428) = 1/3, so 1 - K eps = 0: still uniform whatever R is
    np.testing.assert_allclose(sampler.probabilities(), [1 / 3] * 3)
    for _ in range(9):  # ten updates in all; arm 1 is never pulled so its R stays 0
        sampler.update(np.array([0, 2]), np.array([2.0, 2.0]))
    k, t = 3, 11
    eps, lr = np.sqrt(np.log(k) / (k * t)), np.sqrt(np.log(k) / (k * (t - 1)))
    expected = (1 - k * eps) * softmax(lr * sampler.reward) + eps
    np.testing.assert_allclose(sampler.probabilities(), expected)
    assert sampler.probabilities()[1] < 1 / 3 < sampler.probabilities()[0]  # rewarded arms gain, the idle one loses
    assert sampler.probabilities()[1] >= eps  # never below EXP3's exploration rate


def test_odm_rewards_raw_loss_not_forgetting():
    """Two arms forgotten alike (loss - ref = 0.5) but one inherently harder: odm favours the hard one, amr
    sees no difference."""
    arms = make_arms({"a/0": 10, "b/0": 10})
    odm = build_sampler(ReplayConfig(strategy="odm"), arms)
    bandit = amr(arms, epsilon=0.0)
    for s in (odm, bandit):
        s.set_reference({"a/0": 1.0, "b/0": 3.0})
        for _ in range(50):
            s.update(np.array([0, 1]), np.array([1.5, 3.5]))
    assert odm.probabilities()[1] > odm.probabilities()[0]
    np.testing.assert_allclose(bandit.probabilities(), [0.5, 0.5])


def test_odm_state_carries_reward_and_new_arms_start_at_the_mean():
    old = build_sampler(ReplayConfig(strategy="odm"), make_arms({"a/0": 4, "a/1": 4}))
    old.reward[:] = [2.0, 4.0]
    state = json.loads(json.dumps(old.state_dict()))
    grown = build_sampler(ReplayConfig(strategy="odm"), make_arms({"a/0": 4, "b/0": 4, "a/1": 4}))
    grown.load_state_dict(state)
    np.testing.assert_allclose(grown.reward, [2.0, 3.0, 4.0])
