"""What the notebooks' text names exists: a glossary pointer names a section of that notebook, and every `helpers.…`
or `lab.…` name an exercise or cell uses resolves (an exercise that raises AttributeError after a whole extra training
run teaches nothing)."""

import inspect
import re
from pathlib import Path

import nbformat
import pytest

import helpers
from helpers.profiles import Profile

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
GLOSSARY = (ROOT / "notebooks" / "GLOSSARY.md").read_text()
# What a Lab holds: its class attributes and what __init__ assigns (lab.env, lab.profile, ...).
LAB_NAMES = set(dir(helpers.Lab)) | set(re.findall(r"self\.(\w+)\s*[:=]", inspect.getsource(helpers.Lab.__init__)))


def headings(path: Path) -> set[str]:
    cells = nbformat.read(path, as_version=4).cells
    return {m.group(1).strip() for c in cells if c.cell_type == "markdown"
            for m in re.finditer(r"^#{2,3} (.+)$", c.source, re.MULTILINE)}


def test_every_glossary_pointer_names_a_section_of_that_notebook():
    sections = {p.name[:2]: headings(p) for p in NOTEBOOKS}
    pointers = re.findall(r"\*(0\d) · ([^*]+?)\*", " ".join(GLOSSARY.split()))
    assert len(pointers) > 20
    missing = [f"{nb} · {title}" for nb, title in pointers if title not in sections[nb]]
    assert not missing, f"GLOSSARY.md points to sections that do not exist: {missing}"


def texts() -> list[tuple[str, str]]:
    found = [(p.name, c.source) for p in NOTEBOOKS for c in nbformat.read(p, as_version=4).cells]
    return found + [("GLOSSARY.md", GLOSSARY)]


@pytest.mark.parametrize("where, text", texts(), ids=lambda v: v if v.endswith((".ipynb", ".md")) else "")
def test_every_helpers_and_lab_name_in_the_text_exists(where, text):
    wrong = []
    for dotted in re.findall(r"\bhelpers((?:\.\w+)+)", text):
        obj = helpers
        for part in dotted.strip(".").split("."):
            if not hasattr(obj, part):
                wrong.append(f"helpers{dotted}")
                break
            obj = getattr(obj, part)
    for name in re.findall(r"(?<![\w.])lab\.(\w+)", text):
        if name not in LAB_NAMES:
            wrong.append(f"lab.{name}")
    for name in re.findall(r"\blab\.profile\.(\w+)", text):
        if not hasattr(Profile, name) and name not in Profile.__dataclass_fields__:
            wrong.append(f"lab.profile.{name}")
    assert not wrong, f"{where} names what does not exist: {sorted(set(wrong))}"
