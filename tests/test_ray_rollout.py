"""Ray rollout and reward actors: the same samples as in-process sampling, sharding in the learner's prompt order,
policy lag, and faults — rollout actors, the reward server and the learner itself SIGKILLed mid-run.

All tests share one local Ray cluster (a module fixture); actors cost seconds each to start on two cores, so the
fault cases are kill points inside one run, compared batch by batch with an unbroken run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlhf_gym
from rlhf_gym import tiny
from rlhf_gym.errors import ConfigError
from rlhf_gym.plugins import algorithm_class
from rlhf_gym.policy import Policy

ray = pytest.importorskip("ray")

NUM_PROMPTS, GROUP, UPDATES = 4, 2, 5
#: the two-worker runs: one-step asynchronous, so kills between updates land on a call in flight
TWO_WORKERS = {"num_prompts": NUM_PROMPTS, "group_size": GROUP, "seed": 5, "rollout_workers": 2,
               "async_rollouts": True, "max_policy_lag": 1, "learning_rate": 3e-4}


@pytest.fixture(scope="module")
def ray_address():
    ray.init(num_cpus=8, _node_ip_address="127.0.0.1", include_dashboard=False, object_store_memory=200 * 2**20,
             logging_level="error")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def make_env(policy: Policy, reward: object = "simulated-human", reward_kwargs: dict | None = None):
    return gym.make("rlhf_gym/Completion-v0", tokenizer=policy.tokenizer, prompts=tiny.review_prompts(),
                    reward=reward, reward_kwargs=reward_kwargs, max_new_tokens=12, max_prompt_tokens=16,
                    vocab_size=policy.vocab_size)


def record_batches(algo) -> list[dict]:
    """Every batch the algorithm takes: prompt indices, completions, scores and the source's metrics."""
    batches: list[dict] = []
    collect = algo.rollouts.collect

    def recording(*args, **kwargs):
        rollout = collect(*args, **kwargs)
        batches.append({"prompt_index": [int(i) for i in rollout.extras["prompt_index"]],
                        "completions": list(rollout.completions), "scores": rollout.scores.tolist(),
                        "metrics": dict(rollout.metrics)})
        return rollout

    algo.rollouts.collect = recording
    return batches


def weights(policy: Policy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert x["prompt_index"] == y["prompt_index"], f"batch {i}: other prompts"
        assert x["completions"] == y["completions"], f"batch {i}: other samples"
        np.testing.assert_allclose(x["scores"], y["scores"], atol=1e-6, err_msg=f"batch {i}")


# -- one worker is the in-process worker ------------------------------------------------------------------------


@pytest.mark.parametrize("name,updates,extra", [("rloo", 3, {"group_size": 2}),
                                                ("ppo", 2, {"minibatch_size": 4, "ppo_epochs": 2})])
def test_one_ray_worker_samples_and_trains_exactly_like_the_in_process_worker(name, updates, extra, tiny_kit,
                                                                              ray_address):
    runs = []
    for workers in (0, 1):
        policy = Policy.from_pretrained(tiny_kit.path, value_head=name == "ppo")
        algo = rlhf_gym.make_algorithm(name, env=make_env(policy), policy=policy, num_prompts=4, seed=3,
                                       rollout_workers=workers, **extra)
        batches = record_batches(algo)
        algo.learn(updates, progress_bar=False)
        runs.append((batches, weights(policy), algo.last_metrics))
        algo.close()
    (local, local_weights, _), (remote, remote_weights, metrics) = runs
    same_batches(local, remote)
    assert len({tuple(b["completions"]) for b in remote}) == updates  # fresh samples every update
    assert_same_weights(local_weights, remote_weights)  # PPO's minibatch order shares the sampler's generator
    assert [b["metrics"]["perf/policy_lag"] for b in remote] == [0.0] * updates
    assert [b["metrics"]["perf/policy_version"] for b in remote] == list(range(updates))
    assert metrics["perf/policy_lag"] == 0.0


def test_k_step_off_policy_reuses_published_weights_for_at_most_k_updates(tiny_kit, ray_address):
    policy = Policy.from_pretrained(tiny_kit.path, value_head=False)
    algo = rlhf_gym.make_algorithm("rloo", env=make_env(policy), policy=policy, num_prompts=2, group_size=2, seed=3,
                                   rollout_workers=1, max_policy_lag=2)
    batches = record_batches(algo)
    algo.learn(5, progress_bar=False)
    algo.close()
    assert [b["metrics"]["perf/policy_version"] for b in batches] == [0.0, 0.0, 0.0, 3.0, 3.0]
    assert [b["metrics"]["perf/policy_lag"] for b in batches] == [0.0, 1.0, 2.0, 0.0, 1.0]


# -- two workers: sharding, lag, faults --------------------------------------------------------------------------


def two_worker_run(kit_path: str, updates: int = UPDATES, callback=None, **overrides):
    policy = Policy.from_pretrained(kit_path, value_head=False)
    reward = overrides.pop("reward", "simulated-human")
    reward_kwargs = overrides.pop("reward_kwargs", None)
    algo = rlhf_gym.make_algorithm("rloo", env=make_env(policy, reward, reward_kwargs), policy=policy,
                                   **{**TWO_WORKERS, **overrides})
    batches = record_batches(algo)
    algo.learn(updates, callback=callback, progress_bar=False)
    return algo, batches, weights(policy)


@pytest.fixture(scope="module")
def unbroken(tiny_kit, ray_address):
    """The two-worker asynchronous run every fault case must reproduce."""
    algo, batches, final = two_worker_run(tiny_kit.path)
    algo.close()
    return batches, final


def test_two_workers_shard_each_batch_in_the_learners_prompt_order_with_one_step_lag(unbroken, tiny_kit):
    from rlhf_gym.rollout import RolloutWorker

    batches, _ = unbroken
    # The in-process prompt stream with the same seed: the Ray batches walk exactly it, every group once.
    policy = Policy.from_pretrained(tiny_kit.path, value_head=False)
    stream = RolloutWorker(make_env(policy), policy, num_prompts=NUM_PROMPTS, group_size=GROUP, seed=5)
    for batch in batches:
        expected = stream.next_prompts().tolist()
        assert batch["prompt_index"] == expected
        groups = np.asarray(batch["prompt_index"]).reshape(NUM_PROMPTS, GROUP)
        assert (groups == groups[:, :1]).all() and len(set(groups[:, 0])) == NUM_PROMPTS
    # Update t trains on samples of weights t-1 (sampled while update t-1 trained); the first has none older.
    assert [b["metrics"]["perf/policy_lag"] for b in batches] == [0.0] + [1.0] * (UPDATES - 1)
    assert [b["metrics"]["perf/policy_version"] for b in batches] == [0.0] + list(range(UPDATES - 1))


#: after which update to SIGKILL what: a worker whose next call is in flight, the reward server, both workers
KILL_PLAN = {1: ["worker1"], 2: ["reward"], 3: ["worker0", "worker1"]}


def test_killed_rollout_and_reward_actors_restart_and_no_batch_is_lost_or_repeated(unbroken, tiny_kit):
    """The reward runs on its own actor here (the unbroken run scores inside each worker): placing it changes no
    score either, since each worker's copy of the provider state travels with its calls."""
    before: dict[int, tuple[list[int], int]] = {}

    def kill(algo, metrics):
        plan = KILL_PLAN.get(algo.num_updates)
        if plan:
            pids, server_pid = algo.rollouts.worker_pids(), algo.rollouts.provider.server_pid()
            for target in plan:
                os.kill(server_pid if target == "reward" else pids[int(target[-1])], signal.SIGKILL)
            before[algo.num_updates] = (pids, server_pid)

    algo, batches, final = two_worker_run(tiny_kit.path, reward_kwargs={"placement": {"num_cpus": 1}},
                                          callback=kill)
    try:
        assert sorted(before) == sorted(KILL_PLAN)
        pids, server_pid = algo.rollouts.worker_pids(), algo.rollouts.provider.server_pid()
        assert pids[0] != before[3][0][0] and pids[1] not in (before[1][0][1], before[3][0][1])  # restarted
        assert server_pid != before[2][1]
    finally:
        algo.env.close()
        algo.close()
    same_batches(batches, unbroken[0])
    assert_same_weights(final, unbroken[1])


LEARNER = textwrap.dedent("""
    import sys, torch, gymnasium as gym, rlhf_gym
    from rlhf_gym import tiny
    from rlhf_gym.policy import Policy
    torch.set_num_threads(1)
    kit_path, run_dir, address, config = sys.argv[1], sys.argv[2], sys.argv[3], eval(sys.argv[4])
    policy = Policy.from_pretrained(kit_path, value_head=False)
    env = gym.make("rlhf_gym/Completion-v0", tokenizer=policy.tokenizer, prompts=tiny.review_prompts(),
                   reward="simulated-human", max_new_tokens=12, max_prompt_tokens=16, vocab_size=policy.vocab_size)
    algo = rlhf_gym.make_algorithm("rloo", env=env, policy=policy, ray_address=address, save_every=1,
                                   run_dir=run_dir, tensorboard=False, **config)
    algo.learn(1000, progress_bar=False)
""")


def test_killed_learner_resumes_from_its_checkpoint_with_the_unbroken_result(unbroken, tiny_kit, ray_address,
                                                                             tmp_path):
    script = tmp_path / "learner.py"
    script.write_text(LEARNER)
    run_dir = tmp_path / "run"
    log = tmp_path / "learner.log"  # a file, not a pipe: Ray's logging must never block the learner
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, str(script), tiny_kit.path, str(run_dir), ray_address,
                                 repr(TWO_WORKERS)], stdout=out, stderr=subprocess.STDOUT)
    resume_at = 3
    checkpoint = run_dir / "checkpoints" / f"step-{resume_at}"
    deadline = time.monotonic() + 180
    try:
        while not (checkpoint / "trainer_state.json").exists():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the learner wrote no checkpoint in time"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    policy = Policy.from_pretrained(str(checkpoint / "policy"), value_head=False)
    algo = algorithm_class("rloo").load(checkpoint, env=make_env(policy), policy=policy, run_dir=str(run_dir))
    assert algo.num_updates == resume_at and algo.config.rollout_workers == 2
    batches = record_batches(algo)
    algo.learn(UPDATES, progress_bar=False)
    algo.close()
    # The checkpoint held the prefetched batch, both workers' RNG positions and the prompt stream.
    same_batches(batches, unbroken[0][resume_at:])
    assert_same_weights(weights(policy), unbroken[1])


# -- configuration errors (no actor is started) ------------------------------------------------------------------


@pytest.mark.parametrize("config,message", [
    ({"rollout_workers": 2, "async_rollouts": True}, "max_policy_lag"),
    ({"rollout_workers": 5, "num_prompts": 4}, "cannot be split"),
    ({"rollout_workers": 1, "max_policy_lag": -1}, "max_policy_lag must be"),
    ({"rollout_workers": 2, "rollout_num_gpus": 1}, "GPU .* lower rollout_workers"),
    ({"rollout_workers": 3, "rollout_num_cpus": 4}, "12 CPU .* free"),
])
def test_bad_ray_configs_fail_with_one_clear_error(config, message, tiny_kit, ray_address):
    policy = Policy.from_pretrained(tiny_kit.path, value_head=False)
    with pytest.raises(ConfigError, match=message):
        rlhf_gym.make_algorithm("rloo", env=make_env(policy), policy=policy, **config)


def test_live_human_is_never_copied_onto_rollout_workers(tiny_kit, tmp_path):
    from rlhf_gym.live import LiveHuman

    policy = Policy.from_pretrained(tiny_kit.path, value_head=False)
    human = LiveHuman(tmp_path / "store.sqlite", ui="queue")
    composite = rlhf_gym.providers.CompositeReward([(human, 1.0), ("sentiment", 0.5)])
    for reward in (human, composite):
        with pytest.raises(ConfigError, match="single writer.*placement"):
            rlhf_gym.make_algorithm("rloo", env=make_env(policy, reward), policy=policy, rollout_workers=1)


def test_a_placed_live_human_is_one_writer_every_worker_may_call(ray_address, tmp_path):
    from rlhf_gym.distributed.ray_reward import RemoteReward, check_replicable

    human = rlhf_gym.make_reward("live-human", store=str(tmp_path / "store.sqlite"), ui="queue",
                                 placement={"num_cpus": 0.5})
    try:
        assert isinstance(human, RemoteReward) and human.deterministic is False
        assert human.server_pid() != os.getpid()  # the store's one writer is the server process
        check_replicable(human, 4)  # copies of the proxy all call that one server
    finally:
        human.close()


def test_reward_placement_keys_are_checked(ray_address):
    with pytest.raises(ConfigError, match="unknown placement keys"):
        rlhf_gym.make_reward("sentiment", placement={"gpus": 1})


def test_train_cli_maps_ray_flags_to_the_config_and_needs_the_extra(monkeypatch):
    from rlhf_gym.cli import build_parser
    from rlhf_gym.train import resolve_options

    def options(argv):
        args, extra = build_parser("train").parse_known_args(["train", *argv])
        return resolve_options(args, extra).algo_config

    assert options(["--ray", "10.0.0.1:6379", "--rollout-workers", "4"]) == {"rollout_workers": 4,
                                                                             "ray_address": "10.0.0.1:6379"}
    assert options(["--ray"]) == {"ray_address": None}  # one worker is added when the run starts
    assert options(["--rollout-workers", "2"]) == {"rollout_workers": 2}
    with pytest.raises(ConfigError, match="≥ 1"):
        options(["--rollout-workers", "0"])
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    with pytest.raises(ConfigError, match=r"pip install 'rlhf-gym\[ray\]'"):
        options(["--ray"])


# -- learning ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_ray_workers_learn_as_much_as_in_process_sampling(tiny_kit, ray_address):
    from rlhf_gym.rollout import evaluate

    gains = []
    for workers in (0, 2):
        policy = Policy.from_pretrained(tiny_kit.path, value_head=False)
        env = make_env(policy, "sentiment")
        start = evaluate(policy, env, num_samples=128, seed=99)["mean"]
        algo = rlhf_gym.make_algorithm("rloo", env=env, policy=policy, num_prompts=16, group_size=4, seed=0,
                                       learning_rate=1e-4, beta=0.05, rollout_workers=workers)
        algo.learn(30, progress_bar=False)
        algo.close()
        gains.append(evaluate(policy, env, num_samples=128, seed=99)["mean"] - start)
    local, remote = gains
    assert local > 0.15 and remote > 0.15, gains
    assert abs(local - remote) < 0.12, gains


def test_published_weights_round_trip_in_every_dtype():
    from rlhf_gym.distributed.ray_rollout import load_published_state, publishable_state

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        source = torch.nn.Linear(3, 2).to(dtype)
        target = torch.nn.Linear(3, 2).to(dtype)
        load_published_state(target, publishable_state(source))
        for a, b in zip(source.state_dict().values(), target.state_dict().values()):
            assert a.dtype == b.dtype == dtype and torch.equal(a, b)
