"""What a new user reads first: the README's opening install lines."""

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _first_code_block() -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index("```bash\n") + len("```bash\n")
    return text[start:text.index("```", start)].splitlines()


def test_cpu_wheels_come_before_the_editable_install():
    lines = _first_code_block()
    cpu = next(i for i, line in enumerate(lines) if line.startswith("pip install torch "))
    assert lines[cpu] == ("pip install torch torchvision --index-url "
                          "https://download.pytorch.org/whl/cpu")
    editable = next(i for i, line in enumerate(lines) if line.startswith("pip install -e . "))
    assert cpu < editable
    assert "without a CUDA GPU" in lines[cpu - 1]


def test_the_test_command_says_how_long_it_takes():
    line = next(x for x in _first_code_block() if "python -m pytest" in x)
    assert "~4-8 minutes on an idle 2-core machine, ~15 on a loaded one" in line
    tests = README.read_text(encoding="utf-8").split("## Tests", 1)[1]
    line = next(x for x in tests.splitlines() if x.startswith("python -m pytest"))
    assert "~4-8 minutes on an idle 2-core machine, ~15 on a loaded one" in line
