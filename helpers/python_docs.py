"""The lab's offline default dataset: instruction/response pairs built from the documentation that ships
with Python itself (the pydoc reference topics and standard-library docstrings).

Nothing is downloaded and nothing is random: the same Python version gives the same examples, in the same
order, in every process (template choices and split decisions use hashlib, never the salted hash()).
"""

from __future__ import annotations

import enum
import hashlib
import importlib
import inspect
import os
import re
import sys
import sysconfig
import warnings
from collections import Counter
from typing import Any, Callable

# Always available, importable without side effects (no GUI, no terminal changes, no easter eggs, no
# deprecation warnings), in the order examples are produced. "builtins" comes first: its names are the
# ones a student asks about most, and the first copy of a duplicated docstring is the one kept.
MODULES = (
    "builtins", "abc", "argparse", "array", "ast", "base64", "binascii", "bisect", "bz2", "calendar",
    "cmath", "codecs", "collections", "collections.abc", "colorsys", "configparser", "contextlib", "copy",
    "csv", "dataclasses", "datetime", "decimal", "difflib", "dis", "email.message", "email.utils", "enum",
    "filecmp", "fnmatch", "fractions", "functools", "getopt", "gettext", "glob", "graphlib", "gzip",
    "hashlib", "heapq", "hmac", "html", "html.parser", "http", "http.client", "inspect", "io", "ipaddress",
    "itertools", "json", "keyword", "linecache", "locale", "logging", "lzma", "math", "mimetypes",
    "numbers", "operator", "os", "os.path", "pathlib", "pickle", "platform", "pprint", "queue", "quopri",
    "random", "re", "reprlib", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "socket",
    "sqlite3", "ssl", "stat", "statistics", "string", "struct", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "time", "timeit", "tokenize", "traceback", "types", "typing", "unicodedata",
    "urllib.parse", "uuid", "warnings", "weakref", "xml.etree.ElementTree", "zipfile", "zlib", "zoneinfo",
)

# C or platform modules whose objects a listed module re-exports as its own (os.listdir comes from posix).
IMPLEMENTATION_MODULES = {"os": {"posix", "nt"}, "os.path": {"genericpath"}}
# Jupyter kernels replace builtins.input with their own: its example would exist in `make sweep` and the tests but not
# in the notebooks, and the two would train on different samples. Left out everywhere.
REPLACED_BY_KERNELS = {("builtins", "input")}

TOPIC_TEMPLATES = (
    "Explain {title} in Python.",
    "What does the Python reference manual say about {title}?",
    "Describe {title} in Python.",
)
SECTION_TEMPLATES = (
    "In Python's reference documentation on {topic}, what does the section {section} say?",
    "Summarize the section {section} of the Python documentation on {topic}.",
    "What does the Python language reference explain under {section} (part of {topic})?",
)
MODULE_TEMPLATES = (
    "What is the Python module \"{name}\" for?",
    "What does the Python module \"{name}\" do?",
    "Describe the Python standard library module \"{name}\".",
)
FUNCTION_TEMPLATES = (
    "What does {name} do in Python?",
    "Explain the Python function {name}.",
    "How is {name} used in Python?",
    "Describe {name} from the Python standard library.",
)
CLASS_TEMPLATES = (
    "What is the class {name} in Python?",
    "Describe the Python class {name}.",
    "What is {name} used for in Python?",
)
METHOD_TEMPLATES = (
    "What does the method {name} do in Python?",
    "Explain the Python method {name}.",
    "What is {name} used for in Python?",
)

# Words kept capitalised when a Title Case heading is turned into a phrase ("The Ellipsis Object").
PROPER_WORDS = {"Python", "Unicode", "Ellipsis", "None", "NotImplemented", "True", "False", "ASCII"}
UNDERLINE = re.compile(r"([*=\-])\1*")
STDLIB_DIR = os.path.join(os.path.realpath(sysconfig.get_paths()["stdlib"]), "")
LEAK_MIN_CHARS = 32  # shorter outputs leak only as exact copies (see split_by_group)
ADDRESS = re.compile(r" at 0x[0-9A-Fa-f]+")  # object addresses change every process


def build_examples(max_output_chars: int = 600, min_output_chars: int = 80) -> list[dict[str, str]]:
    """Each example: {"instruction": str, "input": str, "output": str, "group": str}.

    Groups are "topic:<pydoc topic>" and "module:<module>". Outputs are cleaned, cut at a paragraph or
    sentence boundary to at most max_output_chars, at least min_output_chars long, and unique: a text met
    twice (a section repeated in two topics, a function re-exported by two modules) is kept once, under
    the most specific source, so it can never land on both sides of a split.
    """
    examples: list[dict[str, str]] = []
    seen: set[str] = set()
    for candidate in [*_topic_examples(), *_docstring_examples()]:
        output = _truncate(candidate["output"], max_output_chars)
        if len(output) < min_output_chars:
            continue
        key = _normalise(output)
        if key in seen:
            continue
        seen.add(key)
        examples.append({**candidate, "output": output})
    return examples


def split_by_group(rows: list[dict], eval_fraction: float, seed: int,
                   group_key: str = "group") -> tuple[list[dict], list[dict]]:
    """(train, eval): whole groups go to one side, chosen deterministically from (seed, group name) by a
    stable hash (hashlib, not hash()). Then remove from train any row whose output contains, or is
    contained in, an eval output (after whitespace normalisation), so no eval text appears in train.

    Groups are taken in the order of sha256(f"{seed}:{group}") while they fit in eval_fraction of the rows,
    so the eval side is close to the asked size whatever the group sizes. The leak check is wider than
    output against output: an eval output may not appear anywhere in a train row's instruction, input or
    output, nor a train output anywhere in an eval row. Outputs shorter than LEAK_MIN_CHARS count only
    when equal: a short reply such as "Yes." occurs inside many unrelated answers.
    """
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    sizes = Counter(str(r[group_key]) for r in rows)
    order = sorted(sizes, key=lambda g: (hashlib.sha256(f"{seed}:{g}".encode()).hexdigest(), g))
    target = eval_fraction * len(rows)
    eval_groups: set[str] = set()
    count = 0
    for g in order:
        if count + sizes[g] <= target:
            eval_groups.add(g)
            count += sizes[g]
    if not eval_groups and eval_fraction > 0 and len(order) > 1:
        # Every group is larger than the target (tiny data): the smallest one still gives an eval side.
        eval_groups.add(min(order, key=lambda g: (sizes[g], order.index(g))))
    train = [r for r in rows if str(r[group_key]) not in eval_groups]
    evals = [r for r in rows if str(r[group_key]) in eval_groups]

    train_out, train_all = zip(*map(_leak_texts, train)) if train else ((), ())
    eval_out, eval_all = zip(*map(_leak_texts, evals)) if evals else ((), ())
    _, train_hit = _containment(list(eval_out), list(train_all))  # eval text inside a train row
    outs_hit, _ = _containment(list(train_out), list(eval_all))  # train output inside an eval row
    eval_set = set(eval_out) - {""}
    equal = {i for i, text in enumerate(train_out) if text in eval_set}  # short outputs too
    leaked = train_hit | outs_hit | equal
    return [r for i, r in enumerate(train) if i not in leaked], evals


# ---------- pydoc topics ----------

def _topic_examples() -> list[dict[str, str]]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions package it separately; the docstrings still make a dataset
        return []
    parsed = {name: _sections(text) for name, text in topics.items()}
    parsed = {name: sections for name, sections in parsed.items() if sections}

    def specificity(name: str) -> tuple:
        # A topic about one thing ("for") before an aggregate that repeats it ("compound"), so the
        # repeated section is kept under the topic whose title a student would ask about.
        title = parsed[name][0][1]
        return len(parsed[name]), f'"{name}"' not in title, name

    out = []
    for name in sorted(parsed, key=specificity):
        topic_title = parsed[name][0][1]
        for level, title, body in parsed[name]:
            if not _has_prose(body):
                continue
            key = f"topic:{name}:{title}"
            if level == "*":
                instruction = _pick(TOPIC_TEMPLATES, key).format(title=_phrase(title))
            else:
                instruction = _pick(SECTION_TEMPLATES, key).format(topic=_phrase(topic_title), section=_quote(title))
            out.append({"instruction": instruction, "input": "", "output": _clean(body), "group": f"topic:{name}"})
    return out


def _sections(text: str) -> list[tuple[str, str, str]]:
    """(underline character, heading, body) for each heading: a line underlined by *, = or - of its length."""
    lines = text.splitlines()
    heads = [i for i in range(len(lines) - 1)
             if lines[i].strip() and not lines[i].startswith(" ")
             and UNDERLINE.fullmatch(lines[i + 1]) and len(lines[i + 1]) == len(lines[i])]
    sections = []
    for n, i in enumerate(heads):
        end = heads[n + 1] if n + 1 < len(heads) else len(lines)
        sections.append((lines[i + 1][0], lines[i].strip(), "\n".join(lines[i + 2:end])))
    return sections


def _has_prose(body: str) -> bool:
    """False for an empty body or one that is only grammar productions ("for_stmt ::= ...")."""
    paragraphs = [p for p in re.split(r"\n\s*\n", body) if p.strip()]
    return any(not (p.startswith(" ") and "::=" in p) for p in paragraphs)


def _quote(title: str) -> str:
    return f"'{title}'" if '"' in title else f'"{title}"'


def _phrase(title: str) -> str:
    """A heading as a phrase inside a sentence: 'The "for" statement' -> 'the "for" statement'."""
    words = title.split(" ")
    return " ".join(w.lower() if re.fullmatch(r"[A-Z][a-z]+(-[A-Z]?[a-z]+)*[,;:]?", w) and w not in PROPER_WORDS
                    else w for w in words)


# ---------- docstrings ----------

def _docstring_examples() -> list[dict[str, str]]:
    out = []
    for module_name in MODULES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(module_name)
        except Exception:  # absent on this platform or build (ssl without OpenSSL, ...): skip it
            continue
        group = f"module:{module_name}"
        prefix = "" if module_name == "builtins" else f"{module_name}."
        owners = _owners(module_name, module)

        found = [(MODULE_TEMPLATES, module_name, module.__doc__, "")]
        for attr, obj in _public_members(module, owners):
            name = prefix + attr
            if inspect.isclass(obj):
                found.append((CLASS_TEMPLATES, name, obj.__dict__.get("__doc__"), _signature(name, obj)))
                for method_name, method in sorted(vars(obj).items()):
                    function = _method_function(obj, method_name, method)
                    if function is not None:
                        qualified = f"{name}.{method_name}"
                        found.append((METHOD_TEMPLATES, qualified, function.__doc__, _signature(qualified, function)))
            else:
                found.append((FUNCTION_TEMPLATES, name, obj.__doc__, _signature(name, obj)))
        for templates, name, doc, signature in found:
            if isinstance(doc, str) and doc.strip():
                out.append(_docstring_example(templates, group, name, doc, signature))
    return out


def _docstring_example(templates: tuple[str, ...], group: str, name: str, doc: str, signature: str) -> dict[str, str]:
    text = _clean(inspect.cleandoc(doc))
    # Old C docstrings open with their own signature ("listen([backlog])"): it belongs in input. Several
    # such lines in a row (super, dict) list the ways to call it, and stay in the text.
    short = name.rsplit(".", 1)[-1]
    pattern = rf"(?:[\w.]+\.)?({re.escape(short)}\(.*\)(?: *-> *.+)?)"  # "Decimal.adjusted() -> int" too
    first, _, rest = text.partition("\n")
    match = re.fullmatch(pattern, first.strip())
    if match and not re.fullmatch(pattern, rest.partition("\n")[0].strip()):
        signature = signature or name[:len(name) - len(short)] + match.group(1)
        text = rest.strip()
    instruction = _pick(templates, f"{group}:{name}").format(name=name)
    return {"instruction": instruction, "input": signature, "output": text, "group": group}


def _defined_in(obj: Any, owners: set[str]) -> bool:
    """Classes and functions of the module itself or of its C part (_heapq for heapq), so a re-export
    (email.message's BytesIO, typing's aliases) is not repeated under another module."""
    if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
        return False
    return getattr(obj, "__module__", None) in owners and (inspect.isclass(obj) or _stdlib_code(obj))


def _owners(module_name: str, module: Any) -> set[str]:
    last = module_name.rsplit(".", 1)[-1].lower()
    return {module.__name__, f"_{last}", "_" + module_name.replace(".", "_").lower()} \
        | IMPLEMENTATION_MODULES.get(module_name, set())


def _public_members(module: Any, owners: set[str]) -> list[tuple[str, Any]]:
    """(name, object) sorted by name, each object once: under its own __name__ when the module also
    binds it under an alias (array.ArrayType is array.array), else under its first name."""
    chosen: dict[int, tuple[str, Any]] = {}
    for attr, obj in sorted(vars(module).items()):
        if attr.startswith("_") or not _defined_in(obj, owners) or (module.__name__, attr) in REPLACED_BY_KERNELS:
            continue
        if id(obj) not in chosen or attr == getattr(obj, "__name__", None):
            chosen[id(obj)] = (attr, obj)
    return sorted(chosen.values(), key=lambda item: item[0])


def _method_function(cls: type, name: str, member: Any) -> Callable | None:
    """The function behind a public method defined in the class body itself (not inherited, not patched
    in later by a library, as transformers adds Logger.warning_once), else None."""
    if name.startswith("_"):
        return None
    if isinstance(member, (classmethod, staticmethod)):
        member = member.__func__
    if inspect.isfunction(member):
        defined_here = member.__qualname__.startswith(cls.__qualname__ + ".") and member.__module__ == cls.__module__
        return member if defined_here and _stdlib_code(member) else None
    if inspect.ismethoddescriptor(member) and inspect.isroutine(member) and getattr(member, "__objclass__", None) is cls:
        return member
    return None


def _stdlib_code(function: Any) -> bool:
    """True for C functions and for Python code in the standard library's own files: a library that
    replaces a stdlib function (functools.wraps copies its name and module) would otherwise make the
    dataset depend on what the process imported before."""
    code = getattr(function, "__code__", None)
    if code is None:
        return True
    path = code.co_filename
    if path.startswith("<frozen "):
        return True
    path = os.path.realpath(path)
    return path.startswith(STDLIB_DIR) and not any(part in path for part in ("site-packages", "dist-packages"))


def _signature(name: str, obj: Any) -> str:
    """'json.dumps(obj, *, skipkeys=False, ...)', or '' when Python knows no signature."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return ""
    parameters = [p.replace(default=_StableRepr(p.default)) if p.default is not p.empty else p
                  for p in signature.parameters.values()]
    try:
        return name + str(signature.replace(parameters=parameters))
    except (TypeError, ValueError):
        return ""


class _StableRepr:
    """A default value printed the same in every process: literals as Python writes them (sets sorted),
    containers of anything else elided (logging.shutdown's default lists the live handlers), other
    objects without their address."""

    def __init__(self, value: Any) -> None:
        self.text = _stable_repr(value)

    def __repr__(self) -> str:
        return self.text


def _stable_repr(value: Any) -> str:
    if isinstance(value, enum.Enum):  # before int: IntEnum members are ints
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, str) and (where := _machine_path(value)):
        return where
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return repr(value)
    if isinstance(value, (tuple, list, set, frozenset, dict)):
        if not _is_literal(value):
            return {tuple: "(...)", list: "[...]", dict: "{...}"}.get(type(value), f"{type(value).__name__}(...)")
        if isinstance(value, dict):
            return "{" + ", ".join(f"{_stable_repr(k)}: {_stable_repr(v)}" for k, v in value.items()) + "}"
        parts = [_stable_repr(v) for v in value]
        if isinstance(value, (set, frozenset)):
            inner = "{" + ", ".join(sorted(parts)) + "}"
            return inner if isinstance(value, set) and value else f"{type(value).__name__}({inner if value else ''})"
        if isinstance(value, tuple):
            return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"
        return "[" + ", ".join(parts) + "]"
    return ADDRESS.sub("", repr(value))


def _machine_path(value: str) -> str | None:
    """A default that is this interpreter's own path (platform.architecture's executable=sys.executable) named, not
    printed: printed, the training data would depend on where the lab was cloned and its virtual environment made."""
    for name in ("executable", "prefix", "exec_prefix", "base_prefix", "base_exec_prefix"):
        path = getattr(sys, name, "")
        if path and (value == path or value.startswith(path + os.sep)):
            return f"sys.{name}" + (f" + {value[len(path):]!r}" if value != path else "")
    return None


def _is_literal(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return True
    if isinstance(value, (tuple, list, set, frozenset)):
        return all(map(_is_literal, value))
    if isinstance(value, dict):
        return all(_is_literal(k) and _is_literal(v) for k, v in value.items())
    return False


# ---------- text ----------

def _pick(templates: tuple[str, ...], key: str) -> str:
    return templates[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(templates)]


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _clean(text: str) -> str:
    """Trailing spaces off every line, runs of blank lines collapsed to one, outer whitespace stripped."""
    lines = [line.rstrip() for line in text.expandtabs(4).splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _truncate(text: str, max_chars: int) -> str:
    """At most max_chars: at the last paragraph break that fits (not one right after a line ending in ':',
    which would promise an example that was cut off), else at the last sentence end, else between words."""
    if len(text) <= max_chars:
        return text
    paragraph = ""
    for match in re.finditer(r"\n\n", text[:max_chars + 1]):
        head = text[:match.start()].rstrip()
        if head and not head.endswith(":"):
            paragraph = head
    sentence = ""
    for match in re.finditer(r"[.!?](?=\s)", text[:max_chars + 1]):
        sentence = text[:match.end()]
    best = paragraph if len(paragraph) >= max_chars // 2 or len(paragraph) >= len(sentence) else sentence
    if best:
        return best
    cut = max(text.rfind(" ", 0, max_chars + 1), text.rfind("\n", 0, max_chars + 1))
    return text[:cut].rstrip() if cut > 0 else ""


# ---------- leak check ----------

def _leak_texts(row: dict) -> tuple[str, str]:
    """(normalised output, normalised text of all fields): the output is what may leak, the whole row is
    where it may show up. Chat and text rows have no "output"; their answer text stands in for it."""
    output = row.get("output")
    if not isinstance(output, str):
        output = row.get("text")
    if not isinstance(output, str):
        messages = row.get("messages") or []
        output = messages[-1].get("content", "") if messages and isinstance(messages[-1], dict) else ""
    fields = [row.get(k) for k in ("instruction", "input")] + [output]
    if isinstance(row.get("messages"), list):
        fields += [m.get("content") for m in row["messages"] if isinstance(m, dict)]
    # \x00 never occurs in a needle, so a match cannot straddle two fields.
    return _normalise(output), "\x00".join(_normalise(f) for f in fields if isinstance(f, str))


def _containment(needles: list[str], haystacks: list[str]) -> tuple[set[int], set[int]]:
    """(needles found in some haystack, haystacks containing some needle), by index. Needles shorter than
    LEAK_MIN_CHARS are left out: "Yes." inside a long answer is no leak, and would empty a train side.

    Not needles x haystacks (minutes on a Hub dataset of tens of thousands of rows): every needle is
    indexed by its K-character pieces at offsets 0..STRIDE-1, so looking up the haystack's pieces at every
    STRIDE-th position meets any occurrence, which is then checked in full.
    """
    k, stride = 16, 16  # an occurrence is always met when a needle has at least k + stride - 1 characters
    found_needles: set[int] = set()
    found_haystacks: set[int] = set()
    index: dict[str, list[tuple[int, int]]] = {}
    for i, needle in enumerate(needles):
        if len(needle) >= LEAK_MIN_CHARS:
            for offset in range(stride):
                index.setdefault(needle[offset:offset + k], []).append((i, offset))
    if not index:
        return found_needles, found_haystacks
    for j, hay in enumerate(haystacks):
        for pos in range(0, len(hay) - k + 1, stride):
            for i, offset in index.get(hay[pos:pos + k], ()):
                if pos >= offset and hay.startswith(needles[i], pos - offset):
                    found_needles.add(i)
                    found_haystacks.add(j)
    return found_needles, found_haystacks
