from weakpaste.core.errors import reason


def test_reason_first_line_and_first_sentence_of_long_lines():
    assert reason(ValueError("bad thing\n  details\n")) == "bad thing"
    long = "Weights only load failed. " + "In PyTorch 2.6, we changed the default. " * 5
    assert reason(RuntimeError(long)) == "Weights only load failed"
    short = "A short one. Two sentences."
    assert reason(OSError(short)) == short
    assert reason(KeyError()) == "KeyError"
    assert reason(RuntimeError("x" * 200)) == "x" * 200  # no sentence to cut at
