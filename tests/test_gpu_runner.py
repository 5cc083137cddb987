"""The GPU runner's own tools (tests/gpu_runner/README.md): background jobs of run.sh, the tables record.py
writes from vllm_offline.py's results, and the T4 view (t4view/sitecustomize.py). They run on the runner only,
so their logic is checked here."""

import importlib.util
import subprocess
from pathlib import Path

import pytest

RUNNER = Path(__file__).parent / "gpu_runner"
REPO = Path(__file__).parents[1]


def _module_at(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _module(name: str):
    return _module_at(RUNNER / f"{name}.py")


def _run_sh(*args: str, jobs: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(RUNNER / "run.sh"), *args], cwd=REPO, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "QUANTLAB_JOBS": str(jobs), "OUT": str(jobs / "out"),
                               "QUANTLAB_STAGE": str(jobs / "stage")},
                          timeout=timeout)


def test_a_background_job_runs_once_from_its_own_copy_and_wait_returns_its_status(tmp_path):
    jobs = tmp_path / "jobs"
    # the job's step waits for a job that does not exist: it ends at once with status 3
    first = _run_sh("background", "j1", "wait", "no-such-job", jobs=jobs)
    assert "started in the background" in first.stdout, first.stdout + first.stderr
    again = _run_sh("background", "j1", "wait", "no-such-job", jobs=jobs)
    assert "started on this machine already" in again.stdout
    waited = _run_sh("wait", "j1", "60", jobs=jobs)
    assert waited.returncode == 3 and "job j1 rc=3" in waited.stdout, waited.stdout
    assert (jobs / "j1.checkout" / "tests" / "gpu_runner" / "run.sh").is_file()
    assert not (jobs / "j1.checkout" / ".git").exists()
    assert "no job no-such-job on this machine" in (jobs / "j1.log").read_text()


def test_starting_a_background_job_returns_at_once_when_its_output_is_a_pipe(tmp_path):
    """`run.sh background ... | tail` must not wait for the job (capture_output reads through pipes)."""
    jobs = tmp_path / "jobs"
    (jobs / "hold.lock").mkdir(parents=True)  # a job "hold" that never ends, for j2's step to wait on
    try:
        started = _run_sh("background", "j2", "wait", "hold", "60", jobs=jobs, timeout=20)
        assert "started in the background" in started.stdout
    finally:
        pid = (jobs / "j2.pid").read_text().strip()
        subprocess.run(["kill", "--", f"-{pid}"], capture_output=True)


def test_waiting_for_a_job_never_started_says_so(tmp_path):
    result = _run_sh("wait", "never", jobs=tmp_path / "jobs")
    assert result.returncode == 3 and "no job never on this machine" in result.stdout


@pytest.mark.parametrize("line, ms", [("Self CUDA time total: 567.890us", 0.56789),
                                      ("Self CUDA time total: 12.5ms", 12.5), ("Self CUDA time total: 1.5s", 1500.0),
                                      ("Self CPU time total: 3ms", None)])
def test_the_profilers_cuda_total_is_read_in_ms(line, ms):
    assert _module("vllm_offline")._cuda_ms_total(f"table\n{line}\n") == ms


def test_offline_table_puts_the_kernel_share_on_the_profiled_batch_and_names_errors():
    row = {"label": "fp16", "profile": {"batch": 1, "cuda_kernel_ms_per_step": 0.6},
           "points": [{"batch": b, "decode_ms_per_step": ms, "min_ms": ms, "max_ms": ms, "output_tok_s": b / ms * 1e3,
                       "prefill_ms": 5.0} for b, ms in ((1, 1.2), (64, 2.4))]}
    lines = _module("record").offline_table([row, {"label": "GPTQ", "error": "Traceback\nValueError: no kernel"}])
    body = lines.splitlines()[2:]
    assert "| 0.60 | 50% |" in body[0] and "%" not in body[1]
    assert body[2].startswith("| GPTQ |") and "ValueError: no kernel" in body[2]


def _fake_h200():
    from types import SimpleNamespace

    props = SimpleNamespace(major=9, minor=0, total_memory=141 * 10**9, name="NVIDIA H200", multi_processor_count=132)
    return SimpleNamespace(get_device_capability=lambda device=None: (9, 0),
                           get_device_properties=lambda device=None: props,
                           mem_get_info=lambda device=None: (100 * 10**9, 141 * 10**9),
                           is_bf16_supported=lambda including_emulation=True: True)


def test_the_t4_view_answers_the_libraries_as_a_t4_and_the_compilers_as_the_real_gpu():
    view, cuda = _module_at(RUNNER / "t4view" / "sitecustomize.py"), _fake_h200()
    view.install(cuda)
    props = cuda.get_device_properties(0)
    assert cuda.get_device_capability() == (7, 5) and (props.major, props.minor) == (7, 5)
    assert props.total_memory == 15 * 10**9 and props.multi_processor_count == 132  # the rest is the real GPU's
    assert cuda.is_bf16_supported() is True and cuda.is_bf16_supported(including_emulation=False) is False
    assert cuda.mem_get_info() == (15 * 10**9, 15 * 10**9)
    compiler = {"__name__": "torch._inductor.codecache", "cuda": cuda}
    exec("capability = cuda.get_device_capability()", compiler)  # noqa: S102
    assert compiler["capability"] == (9, 0)
    view.install(cuda)  # twice: still one layer of patching
    assert cuda.get_device_capability() == (7, 5)


def test_a_run_with_the_t4_view_says_so_in_its_heading_rows_and_tables(tmp_path):
    import tarfile

    record = _module("record")
    (tmp_path / "gpu.txt").write_text("NVIDIA H100 80GB HBM3, 580, 81559 MiB")
    (tmp_path / "env.txt").write_text("torch 2.11.0\n")
    (tmp_path / "steps.txt").write_text("notebooks-13 rc=0 seconds=9\nnotebooks-t4 rc=0 seconds=8\n")
    case = '<testsuite><testcase classname="notebooks.13_fp8_hqq_kv_cache.ipynb" time="{}"/></testsuite>'
    (tmp_path / "notebooks-13.xml").write_text(case.format(9))
    (tmp_path / "notebooks-t4.xml").write_text(case.format(8))
    results = tmp_path / "results" / "13"
    results.mkdir(parents=True)
    (results / "results.md").write_text("# title\n\n| method | ... |\n| fp8-wo | skipped: needs 8.9 |\n")
    with tarfile.open(tmp_path / "notebook-results-t4.tgz", "w:gz") as tar:
        tar.add(results / "results.md", arcname="results/13/results.md")
    later = tmp_path / "later"  # a later step's archive on the same machine holds the same file again
    later.mkdir()
    (later / "notebook-results-t4-07.tgz").write_bytes((tmp_path / "notebook-results-t4.tgz").read_bytes())
    text = record.section([tmp_path, later])
    assert text.count("What notebook 13 (T4 view) wrote") == 1
    assert text.splitlines()[0].endswith("with the T4 view (run.sh t4-notebooks)")
    assert "| 13_fp8_hqq_kv_cache.ipynb | 9 | pass |" in text
    assert "| 13_fp8_hqq_kv_cache.ipynb (T4 view) | 8 | pass |" in text
    assert "What notebook 13 (T4 view) wrote" in text and "| fp8-wo | skipped: needs 8.9 |" in text
    assert "# title" not in text
