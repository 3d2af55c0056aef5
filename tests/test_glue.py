import pytest

from cgar_src.book.glue import glue_many


def test_glue_many_rounds_floats_and_prefixes(monkeypatch):
    seen = []
    import myst_nb

    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=True: seen.append((name, value, display)))
    out = glue_many({"acc": 0.123456, "n": 300, "ok": True, "word": "real"}, prefix="ch08_", digits=3)
    assert out == {"ch08_acc": 0.123, "ch08_n": 300, "ch08_ok": True, "ch08_word": "real"}
    assert seen == [("ch08_acc", 0.123, False), ("ch08_n", 300, False), ("ch08_ok", True, False),
                    ("ch08_word", "real", False)]


@pytest.mark.parametrize("values, digits, match", [([1, 2], None, "values"), ({"": 1}, None, "name"),
                                                   ({"a": 1.0}, -1, "digits"), ({"a": 1.0}, 2.5, "digits")])
def test_glue_many_rejects_bad_input(values, digits, match):
    with pytest.raises(ValueError, match=match):
        glue_many(values, digits=digits)
