"""The backfill's typed config, validated at start-up.

It embeds the shared ``ModelConfig`` (the same vocabulary the online path uses for the model)
and adds what only a batch job has: where to read and write, and how Ray Data runs it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from batch.uris import S3Options, is_within, parse_uri
from shared import auto
from shared.config import ModelConfig, StrictModel, check_gpu_request
from shared.devices import planned_device_type
from shared.tasks import DEFAULT_TOP_K, MAX_TOP_K, TASKS


class BackfillConfig(StrictModel):
    model_config = ConfigDict(hide_input_in_errors=True)  # the input holds the S3 secret key

    model: ModelConfig = ModelConfig()
    input: str | None = Field(
        None,
        description="s3://bucket/prefix, s3://anonymous@bucket/prefix, file:// or a local directory, "
        "listed by Ray tasks (one per sub-prefix); or give input_manifest",
    )
    input_manifest: str | None = Field(
        None,
        description="the inputs as a manifest instead of a listing: an S3 Inventory manifest.json, or a Parquet/CSV "
        "file or folder with a uri column and optional size and label columns (batch/manifest.py)",
    )
    output: str = Field(description="directory URI for the Parquet files")
    top_k: int = Field(DEFAULT_TOP_K, ge=1, le=MAX_TOP_K, description="classification: predictions kept per image")
    batch_size: Annotated[int, Field(gt=0)] | Literal["auto"] = Field(
        "auto", description="images per model call; auto = small on a CPU, large on a GPU (shared/auto.py)"
    )
    rows_per_call: int | None = Field(
        None,
        gt=0,
        description="rows Ray Data hands a model actor per call, run batch_size at a time; "
        "None = max(batch_size, 256): fewer, larger calls cut Ray Data's per-call cost (bench/RESULTS.md)",
    )
    actor_pool_size: int = Field(1, ge=1, description="model actors (one model copy each)")
    num_gpus_per_actor: float = Field(0.0, ge=0, description="0 on CPU")
    num_cpus_per_actor: float = Field(1.0, gt=0, description="CPUs Ray reserves per model actor (fractions are fine)")
    resources_per_actor: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        description='custom Ray resources per model actor, e.g. {"worker": 1} pins '
        "the actors to nodes started with that resource (ray start --resources)",
    )
    decode_cpus: float = Field(1.0, gt=0, description="CPUs reserved per decode task")
    decode_parallelism: int | None = Field(
        None, ge=1, description="most decode tasks at once; None = as resources allow"
    )
    shard_rows: int = Field(10_000, ge=1, description="inputs per shard of the plan (one read task each)")
    shards_per_dataset: int = Field(
        64, ge=1, description="shards run by one Ray Dataset; each group starts a fresh one (bounded driver memory)"
    )
    max_shards: int | None = Field(
        None, ge=1, description="run at most this many unfinished shards, then stop (a re-run goes on); None = all"
    )
    block_rows: int = Field(256, ge=1, description="rows per block a shard's read task yields")
    fetch_threads: int = Field(16, ge=1, le=256, description="concurrent GETs per read task")
    list_tasks: int = Field(64, ge=1, description="sub-prefixes (Ray tasks) a listed input is split into, at least")
    replan: bool = Field(
        False, description="plan a changed manifest anew; the output's results of the old plan are deleted"
    )
    lease_timeout_s: float = Field(
        120.0, gt=0, description="a lease without a heartbeat for this long belongs to a dead run and is taken over"
    )
    progress_interval_s: float = Field(10.0, ge=0, description="seconds between progress lines")
    min_rows_per_file: int | None = Field(1024, ge=1, description="rows gathered before a Parquet file is written")
    extensions: tuple[str, ...] | None = Field(None, description="only read these file extensions; None = every file")
    s3: S3Options = S3Options()
    address: str | None = Field(None, description="join this Ray cluster; None = the current or a new local one")
    progress: bool = Field(True, description="Ray Data progress bars (the CLI shows them with --verbose)")
    evaluate: bool = Field(False, description="compute accuracy against the label column after the run")
    evaluation_output: str | None = Field(
        None, description="where evaluate writes its JSON report; None = <output>.evaluation.json"
    )

    @property
    def actor_call_rows(self) -> int:
        return self.rows_per_call or max(self.resolved_batch_size, 256)

    @property
    def device_type(self) -> str:
        """Where the model actors will run: CUDA exactly when they reserve a GPU (or ask for it)."""
        return planned_device_type(self.model.device, self.num_gpus_per_actor)

    @property
    def resolved_batch_size(self) -> int:
        return self.settled().batch_size

    def settled(self, images: int | None = None, node_cpus: float | None = None) -> auto.Settled:
        """``shared.auto.settle`` for a run of ``images`` files, the model actors sharing
        ``node_cpus`` cores (None: a remote cluster, where the reservation decides)."""
        workload = auto.Workload(
            online=False, batch_size=self.batch_size, images=images, node_cpus=node_cpus, actors=self.actor_pool_size
        )
        return auto.settle(self.model, self.device_type, workload)

    def resolved(self, images: int, node_cpus: float | None) -> "BackfillConfig":
        """This config with every ``auto`` settled (``settled``): what the model actors build."""
        settled = self.settled(images, node_cpus)
        model = self.model.model_copy(update={"compile": settled.compile, "cpu_threads": settled.cpu_threads})
        return self.model_copy(update={"batch_size": settled.batch_size, "model": model})

    def settings(self) -> dict:
        """What a run uses for the choices ``auto`` makes (after ``resolved``)."""
        settled = self.settled()
        return {
            "device": settled.device,
            "batch_size": settled.batch_size,
            "compile": settled.compile,
            "cpu_threads": settled.cpu_threads,
            "actors": self.actor_pool_size,
        }

    @property
    def source_uri(self) -> str:
        """The input or the manifest, whichever was given."""
        return self.input if self.input is not None else self.input_manifest

    @field_validator("input", "input_manifest", "output", "evaluation_output")
    @classmethod
    def _parsable(cls, uri: str | None) -> str | None:
        if uri is not None:
            parse_uri(uri)
        return uri

    @model_validator(mode="after")
    def _consistent(self) -> "BackfillConfig":
        check_gpu_request(self.model, self.num_gpus_per_actor)
        if {"CPU", "GPU"} & set(self.resources_per_actor):
            raise ValueError("resources_per_actor is for custom resources: use the CPU / GPU per-actor settings")
        if self.num_gpus_per_actor > 1 and not float(self.num_gpus_per_actor).is_integer():
            raise ValueError("num_gpus_per_actor above 1 must be a whole number")
        if (self.input is None) == (self.input_manifest is None):
            raise ValueError("give input (a folder or prefix to list) or input_manifest, not both or neither")
        source, sink = parse_uri(self.source_uri), parse_uri(self.output)
        if is_within(sink, source):
            raise ValueError("output must not be inside the input: the next run would read its own Parquet files")
        if is_within(source, sink):
            raise ValueError("input must not be inside the output: the output folder holds only twinfer's files")
        if self.evaluation_output is not None and is_within(parse_uri(self.evaluation_output), sink):
            raise ValueError("evaluation_output must not be inside the output folder, which holds only twinfer's files")
        if self.rows_per_call is not None and self.rows_per_call < self.resolved_batch_size:
            raise ValueError(
                f"rows_per_call ({self.rows_per_call}) must be at least batch_size ({self.resolved_batch_size})"
            )
        if self.evaluate and not TASKS[self.model.resolved_task].evaluable:
            raise ValueError(
                f"evaluate needs a classification model; task {self.model.resolved_task!r} has no top-k to score"
            )
        return self
