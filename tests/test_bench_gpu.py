"""``python -m bench.gpu``, the GPU matrix, on a CPU: its arguments and plan, its refusal without
CUDA, and its harness (``--allow-cpu``: CUDA sections skip, the rest run tiny; a section that
raises is recorded and the run goes on; the JSON is written after every section). Nothing here
times anything; the GPU figures themselves need a GPU."""

import asyncio
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from bench import gpu
from bench.gpu_checks import (
    DATASET_MINUTES,
    FULL_BUDGET_MINUTES,
    PIECE_BUDGET_MINUTES,
    QUICK_BUDGET_MINUTES,
    SECTIONS,
    piece,
)
from twinfer.samples import encode, sample_array


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def names(argv):
    return [s.name for s in gpu.selected_sections(gpu.parse_args(argv))]


def test_default_is_the_quick_matrix_and_selections_keep_run_order():
    quick = ["env", "agreement", "backfill", "serve", "compile"]
    assert names([]) == quick == names(["--piece", "1"])
    assert names(["--sections", "serve,env"]) == ["env", "serve"]
    assert names(["--skip", "compile,serve"]) == ["env", "agreement", "backfill"]
    assert names(["--sections", "compile,env,backfill"]) == ["env", "backfill", "compile"]
    assert names(["--full"]) == [s.name for s in SECTIONS]
    assert names(["--piece", "2", "--skip", "cudnn"]) == ["model", "recompile", "threads", "nvjpeg"]
    assert gpu.budget_minutes(gpu.parse_args([])) == QUICK_BUDGET_MINUTES
    assert gpu.budget_minutes(gpu.parse_args(["--full"])) == FULL_BUDGET_MINUTES
    assert gpu.budget_minutes(gpu.parse_args(["--piece", "3"])) == PIECE_BUDGET_MINUTES
    assert gpu.budget_minutes(gpu.parse_args(["--sections", "env", "--budget-minutes", "2"])) == 2


@pytest.mark.parametrize(
    "argv", [["--sections", "env,nope"], ["--skip", "nope"], ["--piece", "1", "--full"], ["--piece", "4"]]
)
def test_unknown_sections_and_conflicting_choices_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu.parse_args(argv)
    assert exit_.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_the_plan_fits_its_budgets_and_runs_nothing(capsys, no_cuda):
    quick = sum(s.minutes for s in piece(1)) + DATASET_MINUTES
    assert quick <= QUICK_BUDGET_MINUTES
    assert sum(s.minutes for s in SECTIONS) + 3 * DATASET_MINUTES <= FULL_BUDGET_MINUTES  # in three pieces
    assert all(sum(s.minutes for s in piece(n)) + DATASET_MINUTES <= PIECE_BUDGET_MINUTES for n in (1, 2, 3))
    assert {s.piece for s in SECTIONS} == {1, 2, 3}
    assert gpu.main(["--plan"]) == 0  # no CUDA needed to plan
    out = capsys.readouterr().out
    assert all(s.name in out for s in SECTIONS)
    assert "python -m bench.gpu --piece 2 --merge" in out


def test_without_cuda_it_refuses_with_what_it_checked(tmp_path, capsys, no_cuda):
    out = tmp_path / "gpu.json"
    assert gpu.main(["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "torch.cuda.is_available(): False" in err
    assert f"torch {torch.__version__} is built for" in err
    assert "NVIDIA driver (nvidia-smi):" in err and "--allow-cpu" in err
    assert not out.exists()


@pytest.mark.process
def test_allow_cpu_runs_the_harness_tiny_and_skips_cuda_sections(tmp_path, capsys, no_cuda):
    out = tmp_path / "gpu.json"
    argv = [
        "--allow-cpu",
        "--sections",
        "env,agreement,threads,race,fuzz,backfill,serve",
        "--n",
        "4",
        "--data",
        str(tmp_path / "images"),
        "--out",
        str(out),
    ]
    assert gpu.main(argv) == 0
    result = json.loads(out.read_text())
    sections = result["sections"]
    assert result["tiny"] is True and result["cuda"]["available"] is False
    assert result["machine"]["cores"] and result["versions"]["torch"] == torch.__version__
    assert result["commands"] == ["python -m bench.gpu " + " ".join(argv)]
    assert result["dataset"]["images"] == 4
    for name in ("race", "fuzz", "backfill", "serve"):
        assert (sections[name]["status"], sections[name]["reason"]) == ("skipped", "needs CUDA")
    assert sections["env"]["status"] == "ok"
    assert {f["figure"] for f in sections["env"]["figures"]} >= {
        "NVIDIA driver",
        "torch.cuda.is_available()",
        "/dev/shm",
    }
    (agreement,) = sections["agreement"]["figures"]
    assert agreement["value"] == "4/4 (100.00%)"  # fp32 against itself: the path, not a measurement
    assert sections["threads"]["status"] == "ok"
    assert sections["threads"]["figures"][0]["pass"] is True  # 4 threads gave the one-thread answers
    table = capsys.readouterr().out
    assert "skipped: needs CUDA" in table and "tiny sizes" in table.splitlines()[0]
    assert any(line.startswith("section") and line.endswith("check") for line in table.splitlines())


@pytest.fixture
def fake_sections(monkeypatch, tmp_path):
    """env raises; threads checks that the JSON already holds env's error, then adds a figure."""
    from bench.gpu_checks import environment, threads

    out = tmp_path / "gpu.json"
    seen = {}

    def broken(ctx, report):
        report.add("measured before the error", 1)
        raise RuntimeError("boom")

    def reads_the_json(ctx, report):
        seen.update(json.loads(out.read_text())["sections"])
        report.add("ran after the error", "yes", passed=True)

    monkeypatch.setattr(environment, "run", broken)
    monkeypatch.setattr(threads, "run", reads_the_json)
    return out, seen


@pytest.mark.process
def test_a_section_that_raises_is_recorded_and_the_run_goes_on(no_cuda, fake_sections):
    out, seen = fake_sections
    assert gpu.main(["--allow-cpu", "--sections", "env,threads", "--out", str(out)]) == 1
    assert seen["env"]["status"] == "error"  # written before the next section started
    sections = json.loads(out.read_text())["sections"]
    assert sections["env"]["status"] == "error" and "RuntimeError: boom" in sections["env"]["error"]
    assert sections["env"]["figures"][0]["figure"] == "measured before the error"  # kept
    assert sections["threads"]["status"] == "ok" and sections["threads"]["figures"][0]["value"] == "yes"


@pytest.mark.process
def test_budget_skips_what_would_not_fit_and_merge_adds_to_the_json(no_cuda, fake_sections):
    out, _ = fake_sections
    gpu.main(["--allow-cpu", "--sections", "env", "--out", str(out)])
    assert (
        gpu.main(["--allow-cpu", "--sections", "threads", "--merge", "--budget-minutes", "0.5", "--out", str(out)]) == 0
    )
    result = json.loads(out.read_text())
    assert result["sections"]["env"]["status"] == "error"  # from the first run
    assert (
        result["sections"]["threads"]["status"] == "skipped"
        and "would not fit" in result["sections"]["threads"]["reason"]
    )
    assert len(result["commands"]) == 2


@pytest.mark.process
def test_without_a_dataset_the_sections_that_need_none_still_run(tmp_path, monkeypatch, no_cuda, fake_sections):
    import bench.dataset

    def no_photos(root, n):
        raise ModuleNotFoundError("No module named 'skimage'")

    monkeypatch.setattr(bench.dataset, "make_dataset", no_photos)
    out, _ = fake_sections
    argv = ["--allow-cpu", "--sections", "env,threads", "--data", str(tmp_path / "none"), "--out", str(out)]
    assert gpu.main(argv) == 1
    result = json.loads(out.read_text())
    assert "skimage" in result["dataset"]["error"]
    assert result["sections"]["threads"]["status"] == "error" and "skimage" in result["sections"]["threads"]["error"]
    assert result["sections"]["env"]["status"] == "error"  # the fake env raised: it ran


@pytest.mark.process
def test_an_isolated_section_runs_in_a_child_process(tmp_path, monkeypatch, no_cuda):
    """On CUDA, threads, nvjpeg and race run in a child ``bench.gpu``; here env stands in for them."""
    monkeypatch.setattr(gpu, "runs_isolated", lambda section, cuda, args: section.name == "env" and not args.in_child)
    out = tmp_path / "gpu.json"
    assert gpu.main(["--allow-cpu", "--sections", "env", "--out", str(out)]) == 0
    entry = json.loads(out.read_text())["sections"]["env"]
    assert entry["status"] == "ok" and entry["child"]["rc"] == 0
    assert {f["figure"] for f in entry["figures"]} >= {"NVIDIA driver", "/dev/shm"}


def test_a_callers_ray_is_left_running(ray_session, tmp_path, no_cuda):
    """In-process callers (this test session) keep their Ray: the harness stops only what it started."""
    cpus = ray_session.cluster_resources()["CPU"]
    assert gpu.main(["--allow-cpu", "--sections", "env", "--out", str(tmp_path / "gpu.json")]) == 0
    assert ray_session.is_initialized() and ray_session.cluster_resources()["CPU"] == cpus


@pytest.mark.slow
def test_model_alone_runs_tiny(tmp_path, no_cuda):
    out = tmp_path / "gpu.json"
    assert gpu.main(["--allow-cpu", "--sections", "model", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["sections"]["model"]["details"]["efficientnet_lite0"]
    assert rows[0]["b1"] > 0 and rows[0]["top1_agree"] == "5/5"


# ---- the pieces sections are built from -------------------------------------------------------
def jpeg(**save) -> bytes:
    return encode(sample_array("coffee")[:200, :300], **save)


def test_fuzzed_jpegs_keep_their_header_and_end_marker():
    from bench.gpu_checks.fuzz import bit_flipped, entropy_span

    data = jpeg()
    start, end = entropy_span(data)
    assert data[:2] == b"\xff\xd8" and data[start - 14 : start - 12] == b"\xff\xda" and end == len(data) - 2
    flipped = bit_flipped(data, np.random.default_rng(0), 8)
    assert flipped != data and len(flipped) == len(data)
    assert flipped[:start] == data[:start] and flipped[end:] == b"\xff\xd9"
    assert Image.open(io.BytesIO(flipped)).size == (300, 200)  # the header still reads
    with pytest.raises(ValueError):
        entropy_span(data[:-2])


def test_the_nvjpeg_kinds_are_what_the_device_routing_sees():
    from bench.gpu_checks.nvjpeg import resave
    from shared.device_decode import Encoded, encoded_if_device_decodable

    def routed(data):
        return encoded_if_device_decodable(Image.open(io.BytesIO(data)), data)

    assert isinstance(routed(resave(jpeg(), "baseline")), Encoded)
    assert routed(resave(jpeg(), "progressive")) is None
    gray = resave(jpeg(), "grayscale")
    assert Image.open(io.BytesIO(gray)).mode == "L" and routed(gray) is None


def test_the_race_control_stubs_only_the_drain():
    from bench.gpu_checks.race import differs, drain_stubbed
    from shared import device_decode
    from shared.device_decode import decode_jpegs, encoded_if_device_decodable

    data = jpeg()
    item = encoded_if_device_decodable(Image.open(io.BytesIO(data)), data)
    with drain_stubbed():
        assert device_decode.torch.cuda.current_stream("cuda").synchronize() is None  # no CUDA needed: stubbed
        assert device_decode.torch.frombuffer is torch.frombuffer
        (decoded,) = decode_jpegs([item], torch.device("cpu"))
    assert device_decode.torch is torch
    assert decoded.shape == (3, 200, 300)
    top = [{"index": 3, "score": 0.5}, {"index": 1, "score": 0.2}]
    assert not differs(top, [dict(p) for p in top])
    assert differs(top, [top[1], top[0]])
    assert differs(top, [top[0], {"index": 1, "score": 0.21}])


def test_the_load_client_falls_back_to_the_standard_library():
    from bench.load import closed_loop

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        row = asyncio.run(closed_loop(f"http://127.0.0.1:{server.server_port}/x", [b"abc"], 2, 0.3, 0.0, "stdlib"))
    finally:
        server.shutdown()
    assert row["client"] == "stdlib" and row["ok"] > 0 and row["errors"] == 0
    assert row["first50_p99_ms"] is not None


def test_ray_datas_throughput_is_read_from_its_stats():
    from bench.run import ray_data_throughput

    stats = (
        "Operator 1 ...\n\nDataset throughput:\n\t* Ray Data throughput: 5123.4 rows/s\n"
        "\t* Estimated single node throughput: 9 rows/s\n"
    )
    assert ray_data_throughput(stats) == 5123.4
    assert ray_data_throughput("") is None
    # a backfill: the model operator's own figure wins over the (absent or zero) dataset one
    operators = (
        "Operator 2 MapBatches(decode_batch): 4 tasks executed\n* Operator throughput:\n"
        "\t* Ray Data throughput: 900.0 rows/s\n"
        "Operator 3 MapBatches(Predictor): 2 tasks executed\n* Operator throughput:\n"
        "\t* Ray Data throughput: 77.7 rows/s\n"
    )
    assert ray_data_throughput(operators + stats) == 77.7


def test_the_sampler_reports_how_busy_the_machine_was():
    from bench.memory import MemorySampler

    with MemorySampler(interval_s=0.01) as sampler:
        sum(i * i for i in range(200_000))
    summary = sampler.summary()
    assert 0 <= summary["cpu_busy_pct"] <= 100  # all of the machine's CPUs, over the block
    if not sampler._nvidia_smi:
        assert summary["gpu_util_pct"] is None and summary["gpu_start_gib"] is None
