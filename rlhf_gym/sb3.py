"""stable-baselines3 on ``rlhf_gym/TextGen-v0``: a transformer policy for SB3's on-policy algorithms, plus helpers.

Users who already train with SB3 can point ``PPO`` or ``A2C`` at the token-level environment (one token per step)
and train a Hugging Face causal LM::

    from stable_baselines3 import PPO
    from rlhf_gym.sb3 import CausalLMPolicy, KLPenaltyCallback, MetricsCallback, make_sb3_env, save_lm

    env = make_sb3_env(n_envs=16, tokenizer=path, model=path, prompts=prompts, reward="sentiment")
    model = PPO(CausalLMPolicy, env, policy_kwargs={"model": path}, n_steps=32, batch_size=128)
    model.learn(20_000, callback=[KLPenaltyCallback(beta=0.05), MetricsCallback(run_dir="runs/sb3")])
    save_lm(model, "trained")

What is here:

* :class:`CausalLMPolicy` — an ``ActorCriticPolicy`` whose features are the LM's final hidden state at the last
  position, whose action logits are the LM head's own logits there (SB3's categorical distribution over the
  head's ``V`` tokens; no new ``Linear(hidden, vocab)``), and whose value is a ``Linear(hidden, 1)`` on the same
  hidden state. Token ids come in as SB3's float tensors and are cast back to ``long``; nothing is one-hot
  encoded. ``"CausalLMPolicy"`` is also accepted as a policy name by ``PPO`` and ``A2C``.
* :class:`KLPenaltyCallback` — the per-token KL penalty ``−β·(log π(a|s) − log π_ref(a|s))`` against a frozen
  reference, added to each step's reward before SB3 stores the transition.
* :class:`MetricsCallback` — logs the metric names of the native algorithms (``objective/scores``,
  ``completions/mean_length``, …) to SB3's logger and, given a run directory, through :class:`RunLogger`.
* :func:`make_sb3_env` — the vectorised environment for SB3: rlhf_gym's batched :class:`TextGenVectorEnv` behind
  SB3's ``VecEnv`` API (default), or SB3's ``DummyVecEnv`` over single :class:`TextGenEnv` copies.
* :func:`save_lm` / :func:`load_lm` — the LM weights (plus tokenizer and value head) as ``save_pretrained``
  safetensors, never SB3's pickled ``.zip``.

The cost model differs from the native algorithms: SB3 stores one transition per token and re-evaluates the whole
context for every one of them (no KV cache, one forward per token and per epoch), where the native algorithms
score a whole completion with one batched forward. ``docs/sb3.md`` gives measured figures.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, MlpExtractor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn
from torch import Tensor, nn

from rlhf_gym.devices import autocast, resolve_dtype
from rlhf_gym.errors import ConfigError
from rlhf_gym.kl import KLController
from rlhf_gym.policy import Policy, ReferenceModel, _split_lm, position_ids_from_mask

#: SB3's training metrics under the native algorithms' names (TRL's where one exists)
SB3_TRAIN_METRICS: dict[str, str] = {
    "train/policy_gradient_loss": "loss/policy_avg",  # PPO
    "train/policy_loss": "loss/policy_avg",  # A2C
    "train/value_loss": "loss/value_avg",
    "train/clip_fraction": "policy/clipfrac_avg",
    "train/approx_kl": "policy/approxkl_avg",
    "train/explained_variance": "val/explained_variance",
}

VECTORIZATIONS = ("native", "dummy")


# ---------------------------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------------------------


def as_token_batch(obs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """``(input_ids, attention_mask)`` as ``long`` from a TextGen observation batch, all-padding columns dropped.

    SB3 hands observations over as float tensors; ids are exact in float32 up to 2**24, so casting back is
    lossless. Rows are right-aligned (the latest token at the last index), so the columns that are padding in
    every row form a left block that can be cut without changing any result: position ids come from the mask.
    """
    input_ids = obs["input_ids"]
    attention_mask = obs["attention_mask"]
    if input_ids.dim() == 1:
        input_ids, attention_mask = input_ids.unsqueeze(0), attention_mask.unsqueeze(0)
    input_ids = input_ids.long()
    attention_mask = attention_mask.long()
    used = attention_mask.any(0)
    if bool(used.any()):
        first = int(used.long().argmax())
        input_ids, attention_mask = input_ids[:, first:], attention_mask[:, first:]
    return input_ids, attention_mask


def _resolve_lm_policy(model: Any, tokenizer: Any = None) -> Policy:
    """An rlhf_gym :class:`Policy` (with a value head) from a path, a Policy, or a Hugging Face causal LM."""
    if model is None:
        raise ConfigError(
            "CausalLMPolicy needs the language model: pass policy_kwargs={'model': <model dir or hub id, "
            "rlhf_gym.Policy, or a transformers *ForCausalLM model>}"
        )
    if isinstance(model, (str, os.PathLike)):
        policy = Policy.from_pretrained(os.fspath(model), tokenizer=tokenizer, value_head=True)
    elif isinstance(model, Policy):
        policy = model
    elif isinstance(model, nn.Module) and hasattr(model, "get_output_embeddings"):
        if tokenizer is None:
            name = getattr(getattr(model, "config", None), "_name_or_path", "") or None
            if not name:
                raise ConfigError(
                    "a bare transformers model needs its tokenizer too: policy_kwargs={'model': model, "
                    "'tokenizer': tokenizer}"
                )
            tokenizer = name
        if isinstance(tokenizer, (str, os.PathLike)):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer))
        policy = Policy(model, tokenizer, value_head=True)
    else:
        raise ConfigError(
            f"policy_kwargs['model'] must be a model dir/hub id, an rlhf_gym.Policy or a transformers causal LM; "
            f"got {type(model).__name__}"
        )
    if policy.value_head is None:
        policy.add_value_head()
    return policy


class CausalLMExtractor(BaseFeaturesExtractor):
    """SB3 features extractor: the causal LM trunk's final hidden state at the last (latest-token) position.

    Args:
        observation_space: the TextGen ``Dict(input_ids, attention_mask)`` space.
        lm_policy: the rlhf_gym :class:`Policy` whose trunk computes the features.
    """

    def __init__(self, observation_space: spaces.Dict, lm_policy: Policy) -> None:
        trunk, head = _split_lm(lm_policy.model)
        super().__init__(observation_space, features_dim=int(head.weight.shape[1]))
        self.trunk = trunk
        object.__setattr__(self, "_lm_policy", lm_policy)  # for its precision; its modules are registered elsewhere

    def forward(self, observations: Mapping[str, Tensor]) -> Tensor:
        """``(B, hidden)`` float32 final hidden states where the next token is predicted (the trunk runs in the
        policy's precision)."""
        input_ids, attention_mask = as_token_batch(observations)
        with autocast(input_ids.device, self._lm_policy.compute_dtype):
            out = self.trunk(
                input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask),
            )
        return out.last_hidden_state[:, -1].float()


class _TemperedHead(nn.Module):
    """The LM head, its logits divided by a sampling temperature (no parameters of its own)."""

    def __init__(self, head: nn.Module, temperature: float) -> None:
        super().__init__()
        self.head = head
        self.temperature = temperature

    def forward(self, hidden: Tensor) -> Tensor:
        logits = self.head(hidden).float()
        return logits / self.temperature if self.temperature != 1.0 else logits


class CausalLMPolicy(ActorCriticPolicy):
    """SB3 actor-critic policy backed by a Hugging Face causal LM (for ``PPO``, ``A2C``).

    Pass the model through ``policy_kwargs``: ``PPO(CausalLMPolicy, env, policy_kwargs={"model": path})``.

    * features: the LM trunk's final hidden state at the last position of the observation window;
    * ``action_net``: the LM head itself, so the action logits are exactly the LM's next-token logits (divided by
      ``temperature``) — SB3 builds no ``Linear(hidden, vocab)`` and no MLP;
    * ``value_net``: a ``Linear(hidden, 1)`` on the same hidden state (the rlhf_gym :class:`Policy`'s value head,
      so ``save_pretrained`` keeps it);
    * :attr:`lm` is the Hugging Face model and :attr:`lm_policy` the rlhf_gym :class:`Policy` around it.

    Args:
        observation_space: the TextGen ``Dict(input_ids, attention_mask)`` space.
        action_space: ``Discrete(V)`` with ``V`` the LM head's size.
        lr_schedule: SB3's learning-rate schedule.
        model: a model directory or hub id, an rlhf_gym :class:`Policy`, or a transformers causal LM.
        tokenizer: the tokenizer (object or path), needed only with a bare transformers model.
        temperature: divide the action logits by this (sampling temperature).
        dtype: precision of the trunk's forward: ``"float32"`` or ``"bfloat16"`` (autocast; the weights SB3's
            optimizer updates stay float32). float16 is refused: SB3's update has no loss scaler. The device is
            the SB3 algorithm's own ``device=`` argument.
        **kwargs: other ``ActorCriticPolicy`` options (``optimizer_class``, ``optimizer_kwargs``, …). Options
            that would put SB3's own networks over the vocabulary (``net_arch``, ``use_sde``, a different
            ``features_extractor_class``) are refused.
    """

    lm: nn.Module
    lm_policy: Policy

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Callable[[float], float],
        model: Any = None,
        tokenizer: Any = None,
        temperature: float = 1.0,
        dtype: str | torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(observation_space, spaces.Dict) or set(observation_space.spaces) != {
            "input_ids",
            "attention_mask",
        }:
            raise ConfigError(
                f"CausalLMPolicy reads rlhf_gym/TextGen-v0 observations (Dict with input_ids and attention_mask), "
                f"got {observation_space}; build the env with rlhf_gym.sb3.make_sb3_env"
            )
        if not isinstance(action_space, spaces.Discrete):
            raise ConfigError(f"CausalLMPolicy needs a Discrete(V) token action space, got {action_space}")
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        for key in ("net_arch", "features_extractor_class", "features_extractor_kwargs"):
            if key in kwargs:
                raise ConfigError(
                    f"CausalLMPolicy builds its networks from the language model; remove {key!r} from policy_kwargs"
                )
        if kwargs.pop("share_features_extractor", True) is False:
            raise ConfigError("CausalLMPolicy shares one trunk between actor and critic; remove share_features_extractor")
        if kwargs.pop("use_sde", False):
            raise ConfigError("CausalLMPolicy has a categorical token distribution; use_sde is not supported")
        kwargs.pop("ortho_init", None)  # orthogonal re-initialisation would erase the pre-trained weights
        lm_policy = _resolve_lm_policy(model, tokenizer)
        if dtype is not None:
            if resolve_dtype(dtype) == torch.float16:
                raise ConfigError("SB3's update has no loss scaler, so float16 would underflow its gradients; use "
                                  "dtype='bfloat16' or 'float32'")
            lm_policy.place(dtype=dtype)
        if int(action_space.n) != lm_policy.vocab_size:
            raise ConfigError(
                f"the LM head has {lm_policy.vocab_size} tokens but the action space has {int(action_space.n)}; make "
                f"the env with model=<the policy's path> or vocab_size={lm_policy.vocab_size}"
            )
        self.temperature = float(temperature)
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=[],
            ortho_init=False,
            features_extractor_class=CausalLMExtractor,
            features_extractor_kwargs={"lm_policy": lm_policy},
            share_features_extractor=True,
            **kwargs,
        )

    def _build(self, lr_schedule: Callable[[float], float]) -> None:
        lm_policy: Policy = self.features_extractor_kwargs["lm_policy"]
        # A plain attribute: its model and value head are registered below, once each.
        object.__setattr__(self, "lm_policy", lm_policy)
        self.lm = lm_policy.model
        # An empty net_arch makes SB3's extractor the identity: latent = features = the hidden state.
        self.mlp_extractor = MlpExtractor(self.features_dim, net_arch=[], activation_fn=nn.Identity, device=self.device)
        _, head = _split_lm(lm_policy.model)
        self.action_net = _TemperedHead(head, self.temperature)
        assert lm_policy.value_head is not None
        self.value_net = lm_policy.value_head
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        for key in ("net_arch", "ortho_init", "features_extractor_class", "features_extractor_kwargs", "use_sde"):
            data.pop(key, None)
        data.update(model=self.lm_policy, temperature=self.temperature, dtype=self.lm_policy.compute_dtype)
        return data

    def action_logits(self, obs: Mapping[str, Tensor]) -> Tensor:
        """``(B, V)`` logits of the action distribution for an observation batch (a dict of tensors)."""
        return self.action_net(self.extract_features(obs))  # type: ignore[arg-type]


def _add_policy_aliases() -> None:
    """Let ``PPO("CausalLMPolicy", env, ...)`` and ``A2C("CausalLMPolicy", env, ...)`` find the class by name."""
    from stable_baselines3 import A2C, PPO

    for algo in (PPO, A2C):
        algo.policy_aliases.setdefault("CausalLMPolicy", CausalLMPolicy)


_add_policy_aliases()


def _sb3_policy(model: Any) -> CausalLMPolicy:
    policy = getattr(model, "policy", model)
    if not isinstance(policy, CausalLMPolicy):
        raise TypeError(
            f"expected an SB3 algorithm using CausalLMPolicy or the policy itself, got {type(model).__name__}"
        )
    return policy


# ---------------------------------------------------------------------------------------------------------
# KL penalty
# ---------------------------------------------------------------------------------------------------------


class KLPenaltyCallback(BaseCallback):
    """Per-token KL penalty against a frozen reference: ``reward −= β·(log π(a|s) − log π_ref(a|s))``.

    A callback rather than an environment wrapper because the penalty needs ``log π(a|s)``, which SB3 has just
    computed for the sampled action: an env wrapper would see only the action and would have to run the policy a
    second time. At every step the callback reads the step's observations, actions and log-probs, runs the
    reference once on the batch, and subtracts the penalty from the rewards in place — before SB3 stores the
    transition, so returns and advantages include it. Each finished episode's summed KL is put in its ``info``
    under ``"kl"``, where :class:`MetricsCallback` (listed after this one) reports it as ``objective/kl``.

    With a ``controller`` (:func:`rlhf_gym.kl.make_kl_controller` with a ``target``), β follows the KL budget as
    in the native algorithms: at the end of each rollout the mean summed KL of the episodes that finished in it
    updates the controller, and the next rollout is penalised with its new β.

    Args:
        beta: the KL coefficient β (0 disables the penalty and builds no reference); with a ``controller``, ignored
            in favour of the controller's value.
        reference: a :class:`~rlhf_gym.policy.ReferenceModel`; default: a frozen copy of the policy's LM as it is
            when training starts (for a LoRA policy, the base with the adapter off: no copy).
        verbose: SB3 verbosity.
        controller: a :class:`~rlhf_gym.kl.KLController` that steers β (None: β stays fixed).
    """

    def __init__(self, beta: float = 0.05, reference: ReferenceModel | None = None, verbose: int = 0,
                 controller: KLController | None = None) -> None:
        super().__init__(verbose)
        if not beta >= 0:
            raise ConfigError(f"beta must be >= 0, got {beta}")
        self.controller = controller
        self._beta = float(beta)
        self.reference = reference
        self._episode_kl: np.ndarray | None = None
        self._finished_kl: list[float] = []

    @property
    def beta(self) -> float:
        """The β the next step is penalised with (the controller's, when one steers it)."""
        return float(self.controller.value) if self.controller is not None else self._beta

    def _init_callback(self) -> None:
        if self.reference is None and self.beta > 0:
            self.reference = _sb3_policy(self.model).lm_policy.reference()

    def penalty_terms(self, obs: Mapping[str, Tensor], actions: Any, log_probs: Tensor) -> np.ndarray:
        """``(B,)`` per-token KL estimate ``log π(a|s) − log π_ref(a|s)`` for a batch of transitions."""
        if self.reference is None:
            raise RuntimeError("KLPenaltyCallback has no reference model yet; it is built when training starts")
        input_ids, attention_mask = as_token_batch(obs)
        temperature = getattr(getattr(self.model, "policy", None), "temperature", 1.0)
        tokens = torch.as_tensor(np.asarray(actions), device=input_ids.device).long().reshape(-1, 1)
        ref = self.reference.logprobs(
            input_ids, attention_mask, tokens, torch.ones_like(tokens), temperature=temperature
        )[:, 0]
        return (log_probs.detach().float().reshape(-1) - ref.float()).cpu().numpy()

    def _on_step(self) -> bool:
        if self.beta == 0:
            return True
        kl = self.penalty_terms(self.locals["obs_tensor"], self.locals["actions"], self.locals["log_probs"])
        rewards = self.locals["rewards"]
        rewards -= (self.beta * kl).astype(rewards.dtype)
        if self._episode_kl is None or len(self._episode_kl) != len(kl):
            self._episode_kl = np.zeros(len(kl), dtype=np.float64)
        self._episode_kl += kl
        for i in np.flatnonzero(self.locals["dones"]):
            self.locals["infos"][i]["kl"] = float(self._episode_kl[i])
            self.locals["infos"][i]["beta"] = self.beta
            self._finished_kl.append(float(self._episode_kl[i]))
            self._episode_kl[i] = 0.0
        return True

    def _on_rollout_end(self) -> None:
        finished, self._finished_kl = self._finished_kl, []
        if self.controller is not None and self.beta > 0 and finished:
            self.controller.update(float(np.mean(finished)), len(finished))


# ---------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------


class MetricsCallback(BaseCallback):
    """Logs one row per SB3 rollout/update iteration with the native algorithms' metric names.

    From the episodes that finished during the rollout: ``objective/scores`` (mean provider score),
    ``objective/scored_fraction``, ``completions/mean_length`` (tokens, EOS included),
    ``completions/eos_fraction``, ``objective/true_scores`` (a simulated human's ground truth, when given);
    with :class:`KLPenaltyCallback` before it: ``objective/kl`` (per sequence), ``objective/non_score_reward`` and
    ``objective/rlhf_reward``. From the update: ``loss/policy_avg``, ``loss/value_avg``, ``objective/entropy``,
    ``policy/clipfrac_avg``, ``policy/approxkl_avg``. Timing: ``timing/generation`` (the rollout),
    ``timing/update`` and ``perf/tokens_per_s`` (transitions, i.e. tokens, per second of rollout).

    The rollout metrics go to SB3's logger as they are known; the full row (after the update) to
    :class:`~rlhf_gym.run_logger.RunLogger` when ``run_dir`` is given, with sample completions in
    ``samples.jsonl``. :attr:`last_metrics` and :attr:`last_samples` hold the latest row and samples.

    Args:
        run_dir: run directory for ``metrics.csv``, TensorBoard, samples and the reward curve (None: none).
        config: written to the run directory's ``config.json``.
        tensorboard: also write TensorBoard event files in the run directory.
        sample_every: write samples every N iterations (0: never).
        num_logged_samples: samples written each time.
        verbose: SB3 verbosity.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str] | None = None,
        config: Mapping[str, Any] | None = None,
        *,
        tensorboard: bool = True,
        sample_every: int = 10,
        num_logged_samples: int = 4,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.config = dict(config or {})
        self.tensorboard = tensorboard
        self.sample_every = sample_every
        self.num_logged_samples = num_logged_samples
        self.run_logger: Any = None
        self.num_updates = 0
        self.last_metrics: dict[str, float] = {}
        self.last_samples: list[dict[str, Any]] = []
        self.history: list[dict[str, float]] = []
        self._episodes: list[dict[str, Any]] = []
        self._pending: dict[str, float] | None = None
        self._rollout_start = 0.0
        self._rollout_end = 0.0
        self._rollout_steps = 0

    def _on_training_start(self) -> None:
        if self.run_dir is not None and self.run_logger is None:
            from rlhf_gym.run_logger import RunLogger

            self.run_logger = RunLogger(self.run_dir, config=self.config or None, tensorboard=self.tensorboard)

    def _on_rollout_start(self) -> None:
        self._flush()
        self._episodes = []
        self._rollout_steps = 0
        self._rollout_start = time.perf_counter()

    def _on_step(self) -> bool:
        self._rollout_steps += 1
        infos = self.locals["infos"]
        for i in np.flatnonzero(self.locals["dones"]):
            info = infos[i]
            if "completion" in info:
                self._episodes.append(info)
        return True

    def _on_rollout_end(self) -> None:
        self._rollout_end = time.perf_counter()
        elapsed = self._rollout_end - self._rollout_start
        transitions = self._rollout_steps * self.training_env.num_envs
        episodes = self._episodes
        metrics: dict[str, float] = {
            "objective/episodes": float(len(episodes)),
            "timing/generation": elapsed,
            "perf/tokens_per_s": transitions / max(elapsed, 1e-9),
        }
        if episodes:
            scores = [e["score"] for e in episodes if e.get("score") is not None]
            metrics["objective/scores"] = float(np.mean(scores)) if scores else float("nan")
            metrics["objective/scored_fraction"] = len(scores) / len(episodes)
            metrics["completions/mean_length"] = float(np.mean([_episode_tokens(e) for e in episodes]))
            if all("ended_with_eos" in e for e in episodes):
                metrics["completions/eos_fraction"] = float(np.mean([bool(e["ended_with_eos"]) for e in episodes]))
            truth = [e["true_score"] for e in episodes if e.get("true_score") is not None]
            if truth:
                metrics["objective/true_scores"] = float(np.mean(truth))
            kls = [e["kl"] for e in episodes if "kl" in e]
            if kls:
                beta = float(episodes[0].get("beta", 0.0))
                metrics["objective/kl"] = float(np.mean(kls))
                metrics["objective/beta"] = beta
                metrics["objective/non_score_reward"] = -beta * metrics["objective/kl"]
                rlhf = [e["score"] - beta * e["kl"] for e in episodes if "kl" in e and e.get("score") is not None]
                if rlhf:
                    metrics["objective/rlhf_reward"] = float(np.mean(rlhf))
        for key, value in metrics.items():
            self.logger.record(key, value)
        self.last_samples = [
            {"prompt": e.get("prompt"), "completion": e.get("completion"), "score": e.get("score")}
            for e in episodes
        ]
        self._pending = metrics
        self.num_updates += 1

    def _on_training_end(self) -> None:
        self._flush()
        if self.run_logger is not None:
            self.run_logger.plot()

    def _flush(self) -> None:
        """Complete the pending row with the update's metrics (SB3 records them after the rollout) and log it."""
        if self._pending is None:
            return
        metrics = self._pending
        self._pending = None
        recorded = self.logger.name_to_value
        for sb3_key, key in SB3_TRAIN_METRICS.items():
            if sb3_key in recorded:
                metrics[key] = float(recorded[sb3_key])
        if "train/entropy_loss" in recorded:
            metrics["objective/entropy"] = -float(recorded["train/entropy_loss"])
        metrics["timing/update"] = time.perf_counter() - self._rollout_end
        self.last_metrics = metrics
        self.history.append(metrics)
        if self.run_logger is not None:
            self.run_logger.log(self.num_updates, {k: v for k, v in metrics.items() if np.isfinite(v)})
            if self.sample_every and self.num_updates % self.sample_every == 0 and self.last_samples:
                self.run_logger.log_samples(self.num_updates, self.last_samples[: self.num_logged_samples])

    def close(self) -> None:
        """Close the run logger (writes ``reward_curve.png``)."""
        self._flush()
        if self.run_logger is not None:
            self.run_logger.close()
            self.run_logger = None


def _episode_tokens(info: Mapping[str, Any]) -> float:
    """Tokens an episode generated, EOS included (the native ``completions/mean_length``)."""
    episode = info.get("episode")
    if isinstance(episode, Mapping) and "l" in episode:
        return float(episode["l"])
    return float(info.get("completion_length", 0)) + float(bool(info.get("ended_with_eos", False)))


# ---------------------------------------------------------------------------------------------------------
# Environments
# ---------------------------------------------------------------------------------------------------------


class TextGenSB3VecEnv(VecEnv):
    """rlhf_gym's batched :class:`~rlhf_gym.envs.textgen.TextGenVectorEnv` behind SB3's ``VecEnv`` API.

    All sub-environments step together in numpy and every episode that ends in a step is scored in one provider
    call. An ended episode restarts in the same step (SB3's convention); its info holds ``prompt``,
    ``completion``, ``completion_length``, ``score``, ``score_valid``, the provider's extras, ``ended_with_eos``,
    ``terminal_observation`` and an ``episode`` record (``r``, ``l``, ``t``) like SB3's ``Monitor`` writes.
    ``TimeLimit.truncated`` is False for every ended episode: the provider's score is the whole return, so SB3
    must not add a bootstrapped value to it when ``max_new_tokens`` cuts a completion off.

    Args:
        venv: the native vector env.
    """

    def __init__(self, venv: Any) -> None:
        self.venv = venv
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self._actions: np.ndarray | None = None
        self._returns = np.zeros(self.num_envs, dtype=np.float64)
        self._steps = np.zeros(self.num_envs, dtype=np.int64)
        self._start = time.perf_counter()

    def reset(self) -> dict[str, np.ndarray]:
        """Start new episodes everywhere; a seed set with :meth:`seed` makes the prompt stream reproducible."""
        seed = self._seeds[0]
        obs, info = self.venv.reset(seed=seed)
        self._reset_seeds()
        self._reset_options()
        self._returns[:] = 0.0
        self._steps[:] = 0
        self.reset_infos = [{"prompt_index": int(info["prompt_index"][i])} for i in range(self.num_envs)]
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs).astype(np.int64, copy=False)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async()")
        obs, rewards, terminated, truncated, info = self.venv.step(self._actions)
        self._actions = None
        rewards = np.asarray(rewards, dtype=np.float32)
        dones = np.asarray(terminated | truncated, dtype=bool)
        self._returns += rewards
        self._steps += 1
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if dones.any():
            now = round(time.perf_counter() - self._start, 6)
            keys = [k for k in info if not k.startswith("_")]
            for i in np.flatnonzero(dones):
                entry = infos[i]
                for key in keys:
                    if info[f"_{key}"][i]:
                        entry[key] = info[key][i]
                entry["terminal_observation"] = entry.pop("final_obs")
                entry["ended_with_eos"] = bool(terminated[i])
                entry["TimeLimit.truncated"] = False
                entry["episode"] = {"r": float(self._returns[i]), "l": int(self._steps[i]), "t": now}
                self._returns[i] = 0.0
                self._steps[i] = 0
        return obs, rewards, dones, infos

    def close(self) -> None:
        self.venv.close()

    def _indices(self, indices: VecEnvIndices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        if isinstance(indices, int):
            return [indices]
        return list(indices)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The attribute of the (single, shared) native env, once per index."""
        value = getattr(self.venv, attr_name)
        return [value for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute on the shared native env (affects every sub-environment)."""
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any) -> list[Any]:
        """Call a method of the shared native env once and return its result for each index."""
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._indices(indices)]


class ScoredEndIsTerminal(VecEnvWrapper):
    """For ``DummyVecEnv`` over single TextGen envs: an episode cut off at ``max_new_tokens`` is a real end.

    ``DummyVecEnv`` marks such an episode ``TimeLimit.truncated``, and SB3 then adds ``γ·V(terminal obs)`` to its
    reward. In TextGen the provider's score already is the whole return, so the flag is cleared; whether the
    completion ended with EOS is kept in ``info["ended_with_eos"]``.
    """

    def reset(self) -> Any:
        return self.venv.reset()

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        for i in np.flatnonzero(dones):
            infos[i]["ended_with_eos"] = not infos[i].get("TimeLimit.truncated", False)
            infos[i]["TimeLimit.truncated"] = False
        return obs, rewards, dones, infos


def make_sb3_env(
    n_envs: int = 8, *, vectorization: str = "native", seed: int | None = None, **env_kwargs: Any
) -> VecEnv:
    """The vectorised ``rlhf_gym/TextGen-v0`` environment for SB3.

    Args:
        n_envs: episodes stepped together.
        vectorization: ``"native"`` (default): rlhf_gym's batched :class:`TextGenVectorEnv` behind SB3's ``VecEnv``
            API — one numpy step and one provider call per step for all sub-environments; ``"dummy"``: SB3's
            ``DummyVecEnv`` over ``n_envs`` :class:`TextGenEnv` (each in SB3's ``Monitor``), sharing one provider.
        seed: seed of the prompt order (applied at the first reset); SB3's ``seed=`` does the same.
        **env_kwargs: TextGen keyword arguments (``tokenizer``, ``prompts``, ``reward``, ``reward_kwargs``,
            ``max_prompt_tokens``, ``max_new_tokens``, ``model`` or ``vocab_size``, ``shuffle``).

    Example:
        >>> env = make_sb3_env(16, tokenizer=path, model=path, prompts=["The movie was"], reward="sentiment")  # doctest: +SKIP
        >>> model = PPO(CausalLMPolicy, env, policy_kwargs={"model": path})  # doctest: +SKIP
    """
    from rlhf_gym.envs.common import load_tokenizer
    from rlhf_gym.envs.textgen import TextGenEnv, TextGenVectorEnv
    from rlhf_gym.providers import as_provider

    if isinstance(n_envs, bool) or not isinstance(n_envs, (int, np.integer)) or n_envs < 1:
        raise ConfigError(f"n_envs must be a positive integer, got {n_envs!r}")
    env_kwargs.pop("render_mode", None)
    if vectorization == "native":
        env: VecEnv = TextGenSB3VecEnv(TextGenVectorEnv(num_envs=int(n_envs), **env_kwargs))
    elif vectorization == "dummy":
        from stable_baselines3.common.monitor import Monitor

        kwargs = dict(env_kwargs)
        if "reward" in kwargs:  # one provider object for every copy (never n copies of a reward model)
            kwargs["reward"] = as_provider(kwargs["reward"], kwargs.pop("reward_kwargs", None))
        if kwargs.get("tokenizer") is not None:  # load once, not once per copy
            kwargs["tokenizer"] = load_tokenizer(kwargs["tokenizer"])
        env = ScoredEndIsTerminal(DummyVecEnv([lambda: Monitor(TextGenEnv(**kwargs)) for _ in range(int(n_envs))]))
    else:
        raise ConfigError(f"vectorization must be one of {VECTORIZATIONS}, got {vectorization!r}")
    if seed is not None:
        env.seed(seed)
    return env


# ---------------------------------------------------------------------------------------------------------
# Saving and loading the language model
# ---------------------------------------------------------------------------------------------------------


def save_lm(model: Any, path: str | os.PathLike[str]) -> Path:
    """Write the LM (safetensors), tokenizer and value head of an SB3 model with ``save_pretrained``.

    Args:
        model: an SB3 algorithm using :class:`CausalLMPolicy`, the policy itself, or an rlhf_gym :class:`Policy`.
        path: the directory; ``Policy.from_pretrained(path)``, :func:`load_lm` and
            ``AutoModelForCausalLM.from_pretrained(path)`` read it back.
    """
    lm_policy = model if isinstance(model, Policy) else _sb3_policy(model).lm_policy
    lm_policy.save_pretrained(path)
    return Path(path)


def load_lm(path: str | os.PathLike[str], into: Any = None) -> Policy:
    """Read a directory written by :func:`save_lm` (or any ``save_pretrained`` causal LM).

    Args:
        path: the directory.
        into: an SB3 algorithm using :class:`CausalLMPolicy` (or the policy): its LM and value head get the saved
            weights in place. Without it a new :class:`Policy` is returned, ready for
            ``policy_kwargs={"model": policy}``.

    Returns:
        The rlhf_gym :class:`Policy` holding the weights.
    """
    loaded = Policy.from_pretrained(os.fspath(path), value_head=True)
    if into is None:
        return loaded
    target = _sb3_policy(into).lm_policy
    if target.vocab_size != loaded.vocab_size:
        raise ConfigError(
            f"{os.fspath(path)!r} has a {loaded.vocab_size}-token head but the model has {target.vocab_size}"
        )
    with torch.no_grad():
        target.model.load_state_dict(loaded.model.state_dict())
        if target.value_head is not None and loaded.value_head is not None:
            target.value_head.load_state_dict(loaded.value_head.state_dict())
    return target


def lm_parameter_count(model: Any) -> dict[str, int]:
    """Unique parameters of an SB3 :class:`CausalLMPolicy` split into LM, value head and anything else.

    ``other`` is 0 when SB3 built no networks of its own (no ``Linear(hidden, vocab)``, no MLP).
    """
    policy = _sb3_policy(model)
    lm_ids = {id(p) for p in policy.lm.parameters()}
    value_ids = {id(p) for p in policy.value_net.parameters()}
    counts = {"lm": 0, "value_head": 0, "other": 0}
    for p in policy.parameters():
        key = "lm" if id(p) in lm_ids else "value_head" if id(p) in value_ids else "other"
        counts[key] += p.numel()
    return counts


__all__: Sequence[str] = [
    "CausalLMExtractor",
    "CausalLMPolicy",
    "KLPenaltyCallback",
    "MetricsCallback",
    "ScoredEndIsTerminal",
    "TextGenSB3VecEnv",
    "as_token_batch",
    "load_lm",
    "lm_parameter_count",
    "make_sb3_env",
    "save_lm",
]
