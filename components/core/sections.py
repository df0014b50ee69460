"""The configuration's sections: one pydantic model per stage (`ingest:`, `memory:`, `s3:`, `replay:`, `train:`,
`evaluate:`, `gate:`, `mlflow:` in params.yaml), each key with its default, bounds and a description.

components.core.config puts them together in `Settings` and loads them (params file, AMR_* environment, CLI flags);
import them from there. A new key goes here, with its description, and in params.yaml.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

BUILT_IN_MODELS = ("gpt2-tiny", "llama-tiny")  # built from a config with random weights; anything else is pretrained


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class IngestConfig(Section):
    context_length: int = Field(
        128, ge=8, le=4096, description="Tokens per packed training sequence (at most 4096: see evaluate's memory)."
    )
    holdout_fraction: float = Field(
        0.1, gt=0.0, lt=0.5, description="Share of each drop's tokens held out (whole documents, hash order)."
    )
    min_holdout_sequences: int = Field(
        2, ge=1, description="Each drop keeps at least this many held-out sequences, adding its smallest documents."
    )
    clusters_per_drop: int = Field(4, ge=1, le=1024, description="k of the per-drop k-means (the replay arms).")
    max_document_bytes: int = Field(
        1_000_000, ge=16, description="Largest document (a JSONL line, a parquet cell or a text file) accepted."
    )
    tokenizer: str = Field(
        "byte",
        description="'byte' (ByT5 byte-level, no download), a model imported by `amr model import` (its name) or a "
        "local Hugging Face tokenizer directory.",
    )
    seed: int = Field(0, description="Seed of the k-means clustering.")
    workers: int = Field(
        0,
        ge=0,
        le=256,
        description="Processes that read, check, hash and tokenize a drop's files in parallel (0: one per CPU "
        "core; 1: in process, no pool). Drops under 16 MB or of one file scan in process (components.ingest.parallel). "
        "Engine ray: the most Ray tasks at once (0: as many as the cluster's CPUs and memory hold).",
    )
    max_memory_mb: int = Field(
        2048,
        ge=64,
        description="Bound on an ingest's peak RSS (workers included); batch sizes and workers are derived from it "
        "and a bound too small to ingest at all is refused (components.ingest.limits). Engine ray: also each Ray "
        "task's memory, reserved from Ray's scheduler (components.ingest.engine_ray).",
    )
    engine: Literal["local", "ray"] = Field(
        "local",
        description="'local': this process reads, tokenizes and writes. 'ray': Ray Data workers read and tokenize "
        "the files, build, cluster and write the rows as Lance fragments; this process plans and commits once "
        "(README: Scaling ingest with Ray). Needs the [ray] extra.",
    )
    ray_address: str = Field(
        "",
        description="Ray cluster for engine 'ray': '' starts a local Ray on this machine's CPUs; else an address "
        "such as 'head:6379' or 'auto' (the cluster this machine belongs to); a 'ray://head:10001' client address "
        "needs the ray[client] extra installed as well.",
    )


class MemoryConfig(Section):
    uri: str = Field("", description="LanceDB location: a directory or s3://bucket/prefix. Empty: $AMR_HOME/memory.")
    verify_on_refresh: bool = Field(
        True,
        description="Read and check every row (`amr memory --verify`) before a refresh trains. It reads the whole "
        "memory once per refresh: at many GB, turn it off and run `amr memory --verify` on a schedule instead.",
    )
    compact_fragments: int = Field(
        8,
        ge=2,
        description="The refresh compacts the memory (`amr memory compact`) once it has this many fragments smaller "
        "than compact_rows_per_fragment: replay takes stay flat as drops pile up.",
    )
    compact_rows_per_fragment: int = Field(
        4_194_304,
        ge=1024,
        description="Rows per fragment a compaction writes (Lance target_rows_per_fragment); bigger fragments gave "
        "faster random takes (benchmarks/results/scale.md).",
    )


class S3Config(Section):
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto); else AWS_ENDPOINT_URL.")
    region: str | None = Field(None, description="Region; else AWS_REGION / AWS_DEFAULT_REGION, then us-east-1.")
    # Retries ride out an endpoint that restarts for some seconds. The defaults cover ~10 s: boto3's jittered
    # exponential backoff (up to 20 s a wait) needs ~10 attempts to be sure to; LanceDB's object store starts at
    # 0.1 s and grows slowly, so it is bounded by time, with many retries allowed inside that time.
    retry_mode: Literal["standard", "adaptive"] = Field(
        "standard", description="boto3 retry mode (drops and preflight checks); 'adaptive' also rate-limits itself."
    )
    max_attempts: int = Field(10, ge=1, le=50, description="boto3 attempts per request, the first one included.")
    memory_max_retries: int = Field(
        30, ge=0, le=1000, description="LanceDB object-store retries per request (storage option client_max_retries)."
    )
    memory_retry_timeout: int = Field(
        20, ge=1, le=3600, description="Seconds LanceDB keeps retrying one request (client_retry_timeout)."
    )


class ReplayConfig(Section):
    strategy: Literal["none", "uniform", "balanced", "amr", "odm"] = Field("amr", description="Replay strategy.")
    replay_fraction: float = Field(0.25, ge=0.0, lt=1.0, description="Share of every batch filled with replay.")
    arms: Literal["cluster", "drop"] = Field("cluster", description="amr arms: per-drop clusters, or whole drops.")
    alpha: float = Field(0.3, gt=0.0, le=1.0, description="Step size of the arms' exponential moving average.")
    temperature: float = Field(0.1, gt=0.0, description="Boltzmann temperature tau over the arm values Q.")
    epsilon: float = Field(0.1, ge=0.0, le=1.0, description="Probability floor: each arm gets at least eps/K.")
    exploration_bonus: float = Field(
        0.05, ge=0.0, description="Bonus per unpulled step (capped at stale_steps) added to a stale arm's value."
    )
    stale_steps: int = Field(20, ge=1, description="Steps without a pull after which the bonus stops growing.")
    prefetch_batches: int = Field(4, ge=1, description="Replay batches fetched from LanceDB ahead of training.")
    seed: int = Field(0, description="Seed of the sampler's random stream.")
    reference: Literal["best", "last"] = Field(
        "best", description="amr arm reference: each arm's best-ever probe loss, or the last evaluation's."
    )
    uniform_floor: float = Field(
        0.0, ge=0.0, le=1.0, description="amr: share of the replay mass spread as uniform replay would (1 = uniform)."
    )
    odm_smoothing: float = Field(
        0.9, ge=0.0, lt=1.0, description="odm: weight of the old reward estimate in its moving average (ODM's alpha)."
    )


class TrainConfig(Section):
    model: str = Field(
        "gpt2-tiny",
        description="'gpt2-tiny' or 'llama-tiny' (built from a config), a model imported by `amr model import` (its "
        "name) or a local model directory.",
    )
    n_layer: int = Field(2, ge=1, description="Layers of a model built from a config.")
    n_embd: int = Field(128, ge=8, description="Hidden size of a model built from a config.")
    n_head: int = Field(4, ge=1, description="Attention heads of a model built from a config.")
    batch_size: int = Field(16, ge=1, description="Sequences per optimizer step (all ranks, all micro-batches).")
    grad_accum: int = Field(
        1,
        ge=1,
        description="Micro-batches per optimizer step: the batch is split so it fits memory, with the gradient of "
        "the whole batch (each micro-batch's token-loss sum is divided by the whole batch's token count).",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute each layer's activations in the backward pass instead of keeping them (transformers' "
        "activation checkpointing, non-reentrant): about a third more compute for far less activation memory.",
    )
    lr: float = Field(1e-3, gt=0.0, description="Peak learning rate of a built-in model, reached after warm-up.")
    pretrained_lr: float = Field(
        1e-4,
        gt=0.0,
        description="Peak learning rate, re-warmed at every refresh, of a line that continues a pretrained model "
        "(`model` a local directory). Continual pre-training re-warms then re-decays the rate on each new drop "
        "(Ibrahim et al. 2024, 'Simple and scalable strategies to continually pre-train LLMs'): re-warming to the "
        "original pretraining peak (about 3e-4 for models of this size) adapts fastest but forgets most, so the "
        "default is about a third of it. `lr` stays the peak of the built-in models trained from scratch.",
    )
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="Cosine decay floor, as a share of lr.")
    warmup_steps: int = Field(10, ge=0, description="Linear warm-up steps at the start of every refresh.")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0.0, description="Gradient norm clipping.")
    epochs: float = Field(1.0, gt=0.0, description="Passes over the new drop that set the plain fine-tuning budget.")
    max_steps: int | None = Field(None, ge=1, description="Caps the steps per drop, for every strategy alike.")
    checkpoint_every: int = Field(50, ge=1, description="Steps between checkpoints (one more at the end).")
    seed: int = Field(0, description="Seed of model init, data order and dropout.")
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu' or 'cuda[:N]'.")
    nproc: int = Field(1, ge=1, description="Processes for torchrun data parallelism.")

    @model_validator(mode="after")
    def _micro_batches_fit(self) -> TrainConfig:
        per_process = self.batch_size // self.nproc
        if per_process < 1 or self.grad_accum > per_process:
            raise ValueError(
                f"grad_accum = {self.grad_accum} micro-batches cannot split batch_size = {self.batch_size} over "
                f"nproc = {self.nproc} processes ({per_process} sequences each): set grad_accum to at most "
                f"{max(per_process, 1)}, or raise batch_size to at least {self.grad_accum * self.nproc}"
            )
        return self

    @property
    def pretrained(self) -> bool:
        """Whether `model` names weights to continue (a local directory) rather than a built-in model from scratch."""
        return self.model not in BUILT_IN_MODELS

    @property
    def peak_lr(self) -> float:
        """The peak of every refresh's warm-up + cosine schedule: `pretrained_lr` for a pretrained line, else `lr`."""
        return self.pretrained_lr if self.pretrained else self.lr


class EvaluateConfig(Section):
    batch_size: int = Field(32, ge=1, description="Held-out sequences per forward pass.")
    max_sequences_per_drop: int | None = Field(None, ge=1, description="Caps held-out sequences per drop.")
    reference_sequences_per_arm: int = Field(
        32, ge=1, description="Train sequences per arm whose loss becomes the replay sampler's reference."
    )


class GateConfig(Section):
    max_regression: float = Field(
        0.05, ge=0.0, description="Largest relative loss increase on a past drop vs champion."
    )
    max_forgetting: float = Field(0.10, ge=0.0, description="Largest relative forgetting of a past drop vs best-ever.")
    min_gain: float = Field(0.0, description="Smallest relative loss improvement on the new drop vs champion.")


class MlflowConfig(Section):
    tracking_uri: str = Field("", description="Empty: MLFLOW_TRACKING_URI, else SQLite under $AMR_HOME.")
    experiment: str = Field("amr", description="Experiment name.")
    registered_model: str = Field("amr-model", description="Registered model name.")
