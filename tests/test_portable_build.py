"""The portable llama.cpp build and the check that a build runs on this CPU before it is used."""

import os
import shutil
import subprocess
import sys

import pytest

from coa import ConfigError
from coa.models import llamabuild, probe
from coa.models.llamacpp import embedded_model_path
from conftest import EXAMPLE_PLAY

SEGFAULT = "import ctypes; ctypes.string_at(0)"  # a real SIGSEGV, as a bad build dies


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COA_CACHE_DIR", str(tmp_path))
    probe.verdict.cache_clear()
    yield tmp_path
    probe.verdict.cache_clear()


def test_wheels_are_kept_apart_by_flags_and_version(fresh_cache):
    portable = llamabuild.wheel_dir(llamabuild.PORTABLE)
    assert portable.parent == fresh_cache / "wheels"
    assert llamabuild.wheel_dir(" ".join(llamabuild.PORTABLE.split()) + "  ") == portable  # spacing is not a flag
    assert llamabuild.wheel_dir(llamabuild.PROFILES["native"]) != portable
    assert llamabuild.wheel_dir(llamabuild.PORTABLE, version="0.0.1") != portable


def test_the_portable_flags_turn_native_tuning_and_amx_off():
    flags = set(llamabuild.PORTABLE.split())
    assert {"-DGGML_NATIVE=OFF", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON"} <= flags
    assert {"-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF", "-DGGML_AVX512=OFF"} <= flags
    assert "-DGGML_AMX_TILE=OFF" in llamabuild.PROFILES["avx512"] and "-DGGML_AVX512=ON" in llamabuild.PROFILES["avx512"]
    assert llamabuild.PORTABLE in llamabuild.REBUILD_HINT


@pytest.mark.skipif(not shutil.which("objdump"), reason="objdump (binutils) is not installed")
def test_the_installed_build_uses_no_amx():
    library = llamabuild.cpu_library()
    assert library is not None, "llama_cpp/lib/libggml-cpu.so not found"
    used = llamabuild.instruction_sets(library)
    assert "AMX" not in used
    if not os.environ.get("CMAKE_ARGS"):  # the default install is the portable build
        assert used == set(), f"{library} uses {used}"


def test_the_instruction_check_sees_amx_and_avx512(tmp_path):
    if not (shutil.which("as") and shutil.which("objdump")):
        pytest.skip("binutils (as, objdump) is not installed")
    source = tmp_path / "k.s"
    source.write_text(".text\nldtilecfg (%rax)\nvpaddd %zmm0, %zmm1, %zmm2\nret\n")
    subprocess.run(["as", str(source), "-o", str(tmp_path / "k.o")], check=True)
    assert llamabuild.instruction_sets(tmp_path / "k.o") == {"AMX", "AVX-512"}


def test_a_build_that_crashes_is_one_error_naming_the_signal_and_the_fix(fresh_cache, monkeypatch):
    monkeypatch.setattr(probe, "CHILD", SEGFAULT)
    with pytest.raises(ConfigError) as caught:
        probe.check_runs(embedded_model_path())
    message = str(caught.value)
    assert "crashed on this CPU (SIGSEGV" in message and "CMAKE_ARGS=" in message and "\n" not in message
    assert not (fresh_cache / "probe").exists()  # a crash is never remembered as a pass

    def no_child(*args, **kwargs):
        raise AssertionError("a second child was started")

    monkeypatch.setattr(probe.subprocess, "run", no_child)
    with pytest.raises(ConfigError, match="SIGSEGV"):  # the same process is told again, without a child
        probe.check_runs(embedded_model_path())


def test_the_cli_reports_a_crashing_build_in_one_line_and_keeps_nothing_half_done(fresh_cache, tmp_path):
    trace = tmp_path / "trace.json"
    code = f"import coa.models.probe as p; p.CHILD = {SEGFAULT!r}; from coa.cli import main; main()"
    run = subprocess.run(
        [sys.executable, "-c", code, "ask", str(EXAMPLE_PLAY), "Who is Macbeth?", "--trace", str(trace)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "COA_CACHE_DIR": str(fresh_cache), "OPENAI_BASE_URL": "", "OPENAI_API_KEY": ""},
    )
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the llama.cpp build crashed on this CPU (SIGSEGV")
    assert run.stdout == "" and not trace.exists()


@pytest.mark.model
def test_a_working_build_passes_once_and_is_remembered(fresh_cache, monkeypatch):
    model = embedded_model_path()
    probe.check_runs(model)
    assert len(list((fresh_cache / "probe").glob("*.json"))) == 1
    probe.verdict.cache_clear()

    def no_child(*args, **kwargs):
        raise AssertionError("the verdict was not reused")

    monkeypatch.setattr(probe.subprocess, "run", no_child)
    probe.check_runs(model)
