"""stable-baselines3's PPO and A2C on the token-level env, reachable by name like the native algorithms.

``rlhf_gym.make_algorithm("sb3-ppo", env=env, policy=path, n_envs=16)`` builds an SB3 model around
:class:`rlhf_gym.sb3.CausalLMPolicy` on a vectorised ``rlhf_gym/TextGen-v0`` made from ``env``'s settings (a
TextGen-v0 or Completion-v0 env made with ``gym.make``; the reward provider object is shared, not rebuilt), or on
an SB3 ``VecEnv`` given directly. One update is one SB3 iteration: ``n_steps`` tokens from each of ``n_envs``
episodes, then SB3's own update. Metrics carry the native names (``objective/scores``, ``objective/kl``,
``loss/policy_avg``, …); checkpoints are the base class's: LM weights via ``save_pretrained`` (safetensors), the
optimizer state in safetensors + JSON, never SB3's pickled ``.zip``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

import rlhf_gym
from rlhf_gym.algorithm import Algorithm
from rlhf_gym.config import hp
from rlhf_gym.distributed import data_parallel as dp
from rlhf_gym.errors import ConfigError
from rlhf_gym.online import KLBudgetConfig


@dataclass
class SB3Config(KLBudgetConfig):
    """Hyper-parameters shared by the SB3 on-policy algorithms (β, a per-token penalty, follows the KL budget after
    each rollout)."""

    n_envs: int = hp(16, "episodes generated side by side (SB3's n_envs)")
    n_steps: int = hp(16, "tokens each episode stream generates per update (SB3's n_steps)")
    gamma: float = hp(1.0, "discount per token")
    gae_lambda: float = hp(0.95, "GAE λ")
    ent_coef: float = hp(0.0, "weight of the entropy bonus")
    vf_coef: float = hp(0.5, "weight of the value loss")
    normalize_advantage: bool = hp(True, "standardise advantages over each (mini)batch")
    vectorization: str = hp("native", "'native' (rlhf_gym's batched vector env) or 'dummy' (SB3's DummyVecEnv)")


@dataclass
class SB3PPOConfig(SB3Config):
    batch_size: int = hp(64, "transitions (tokens) per minibatch")
    n_epochs: int = hp(4, "passes over each rollout")
    clip_range: float = hp(0.2, "policy ratio clip ε")
    target_kl: float | None = hp(None, "stop an update's epochs early past this approximate KL (None: never)")


@dataclass
class SB3A2CConfig(SB3Config):
    normalize_advantage: bool = hp(False, "standardise advantages over each batch")


def _sb3_env(env: Any, vocab_size: int, n_envs: int, vectorization: str) -> Any:
    """The SB3 vector env for an rlhf_gym env: its loaded setup (prompts, tokenizer, live provider) shared where
    the native vector env accepts one, else rebuilt from the keyword arguments it was made with."""
    from rlhf_gym.envs.textgen import TextGenEnv, TextGenVectorEnv
    from rlhf_gym.sb3 import TextGenSB3VecEnv, make_sb3_env

    base = getattr(env, "unwrapped", env)
    setup = getattr(base, "setup", None)
    if vectorization == "native" and setup is not None and "setup" in inspect.signature(TextGenVectorEnv).parameters:
        if setup.vocab_size != vocab_size:  # the policy's head is the action space
            setup = dataclasses.replace(setup, vocab_size=vocab_size)
        return TextGenSB3VecEnv(TextGenVectorEnv(num_envs=n_envs, setup=setup))
    spec = getattr(env, "spec", None)
    if spec is None or not isinstance(getattr(spec, "kwargs", None), dict):
        raise ConfigError(
            f"cannot read the settings of {type(env).__name__}; pass an env made with "
            f"gym.make('rlhf_gym/TextGen-v0', ...) (or Completion-v0), or an SB3 VecEnv from rlhf_gym.sb3.make_sb3_env"
        )
    accepted = set(inspect.signature(TextGenEnv).parameters) - {"render_mode"}
    settings = {k: v for k, v in spec.kwargs.items() if k in accepted}
    provider = getattr(base, "provider", None)
    if provider is not None:  # share the live provider object rather than building a second one
        settings["reward"] = provider
        settings.pop("reward_kwargs", None)
    settings.pop("model", None)
    settings["vocab_size"] = vocab_size
    return make_sb3_env(n_envs, vectorization=vectorization, **settings)


class SB3Algorithm(Algorithm):
    """Base of the SB3 adapters: an SB3 on-policy model over :class:`~rlhf_gym.sb3.CausalLMPolicy`.

    Attributes:
        model: the stable-baselines3 algorithm object (``model.policy.lm`` is the Hugging Face model).
        venv: the SB3 ``VecEnv`` it trains on.
    """

    Config: Any = SB3Config
    config: SB3Config
    name = "sb3"
    needs_value_head = True
    #: the stable-baselines3 class this adapter drives
    sb3_class: ClassVar[Any] = None

    def sb3_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the SB3 class beyond those every on-policy algorithm takes."""
        return {}

    def setup(self) -> None:
        from stable_baselines3.common.vec_env import VecEnv

        from rlhf_gym.sb3 import CausalLMPolicy, KLPenaltyCallback, MetricsCallback

        cfg = self.config
        if dp.world_size() > 1:
            raise ConfigError(f"{self.name} trains through stable-baselines3's own loop, which has no data-parallel "
                              f"learners; run it with one learner (or use the native ppo)")
        if cfg.top_k or cfg.top_p != 1.0:
            raise ConfigError(
                f"{self.name} samples from the full token distribution; top_k/top_p filtering is not supported "
                f"(leave top_k=0 and top_p=1.0)"
            )
        if cfg.n_envs < 1 or cfg.n_steps < 1:
            raise ConfigError(f"n_envs and n_steps must be >= 1, got n_envs={cfg.n_envs}, n_steps={cfg.n_steps}")
        if isinstance(self.env, VecEnv):
            self.venv = self.env
        else:
            self.venv = _sb3_env(self.env, self.policy.vocab_size, cfg.n_envs, cfg.vectorization)
        self.model = self.sb3_class(
            CausalLMPolicy,
            self.venv,
            learning_rate=cfg.learning_rate,
            n_steps=cfg.n_steps,
            gamma=cfg.gamma,
            gae_lambda=cfg.gae_lambda,
            ent_coef=cfg.ent_coef,
            vf_coef=cfg.vf_coef,
            max_grad_norm=cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf,
            normalize_advantage=cfg.normalize_advantage,
            policy_kwargs={
                "model": self.policy,
                "temperature": cfg.temperature,
                "dtype": self.dtype,
                "optimizer_class": torch.optim.AdamW,
                "optimizer_kwargs": {"eps": cfg.adam_eps, "weight_decay": cfg.weight_decay},
            },
            seed=cfg.seed,
            device=self.device,
            verbose=0,
            **self.sb3_kwargs(),
        )
        # SB3 steps its own optimizer over the same parameters; checkpoints save that one.
        self.optimizer = self.model.policy.optimizer
        # The reference is the policy as it is now (before any update); skipped entirely when β = 0.
        self.reference = self.policy.reference() if cfg.beta > 0 else None
        # β follows the KL budget after each rollout; the base class checkpoints kl_ctl like the native algorithms'
        self.kl_ctl = cfg.kl_controller()
        self.kl_callback = KLPenaltyCallback(cfg.beta, reference=self.reference, controller=self.kl_ctl)
        self.metrics_callback = MetricsCallback()

    def train_step(self) -> dict[str, float]:
        # One SB3 iteration: n_steps tokens from every episode stream (with the KL penalty folded into each
        # token's reward before it is stored), GAE, then SB3's update.
        self.model.learn(
            total_timesteps=self.config.n_steps * self.venv.num_envs,
            callback=[self.kl_callback, self.metrics_callback],
            reset_num_timesteps=False,
            progress_bar=False,
        )
        metrics = dict(self.metrics_callback.last_metrics)
        samples = self.metrics_callback.last_samples
        if "objective/true_scores" not in metrics and samples:
            truth = self.true_scores([s["prompt"] for s in samples], [s["completion"] for s in samples])
            if truth:
                metrics["objective/true_scores"] = float(sum(truth) / len(truth))
        self.last_samples = samples
        return metrics

    # -- checkpoints -------------------------------------------------------------------------------------------
    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {}, {"num_timesteps": int(self.model.num_timesteps)}

    def load_extra_state(self, tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
        self.model.num_timesteps = int(values.get("num_timesteps", 0))

    def save_files(self, path: Path) -> None:
        # The reference must stay the *initial* policy across resumes: keep its weights with the checkpoint.
        self.policy.save_reference(path / "reference")

    def load_files(self, path: Path) -> None:
        if self.reference is not None:
            self.reference = self.kl_callback.reference = self.policy.load_reference(path / "reference")


class SB3PPO(SB3Algorithm):
    """stable-baselines3 PPO on TextGen-v0 (one token per step) with a causal-LM policy and a per-token KL penalty."""

    Config: Any = SB3PPOConfig
    config: SB3PPOConfig
    name = "sb3-ppo"

    @property
    def sb3_class(self) -> Any:  # type: ignore[override]
        from stable_baselines3 import PPO

        return PPO

    def sb3_kwargs(self) -> dict[str, Any]:
        cfg = self.config
        return {"batch_size": cfg.batch_size, "n_epochs": cfg.n_epochs, "clip_range": cfg.clip_range,
                "target_kl": cfg.target_kl}


class SB3A2C(SB3Algorithm):
    """stable-baselines3 A2C on TextGen-v0 (one token per step) with a causal-LM policy and a per-token KL penalty."""

    Config: Any = SB3A2CConfig
    config: SB3A2CConfig
    name = "sb3-a2c"

    @property
    def sb3_class(self) -> Any:  # type: ignore[override]
        from stable_baselines3 import A2C

        return A2C


@rlhf_gym.hookimpl
def register_algorithms(register):
    register("sb3-ppo", SB3PPO)
    register("sb3-a2c", SB3A2C)
