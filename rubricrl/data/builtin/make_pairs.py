"""Write the shipped preference pairs (``pairs.jsonl``, ``pairs_heldout.jsonl``).

    python -m rubricrl.data.builtin.make_pairs          # rewrite both files next to this one
    python -m rubricrl.data.builtin.make_pairs --check  # exit 1 if the files differ from what it writes

Every pair asks for a short text about a topic under one instruction that a rule check
decides (contains a word, avoids a word, starts with a word, at most N words, a bulleted
list, a JSON object). The chosen response meets the instruction and the rejected one
does not; both are otherwise about the same topic, in the same words where possible. The
check is stored in the row's ``rubrics``, so the preference is exact and tested
(tests/test_patarm_pairs.py). All text is original. The split is fixed by ``SEED``:
``HELDOUT`` pairs go to ``pairs_heldout.jsonl`` (the pairwise-accuracy benchmark never
trains on them), the rest to ``pairs.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

from rubricrl.data.jsonl import write_jsonl

__all__ = ["HELDOUT", "SEED", "build_pairs", "main"]

SEED = 15
HELDOUT = 24
_HERE = Path(__file__).resolve().parent
TRAIN_FILE = "pairs.jsonl"
HELDOUT_FILE = "pairs_heldout.jsonl"

# topic, keyword (absent from `short` and `long`), short sentence (<= 6 words),
# long sentence (>= 10 words), two list points.
_TOPICS: tuple[tuple[str, str, str, str, tuple[str, str]], ...] = (
    ("the sea", "salt", "The sea looks calm today.", "The sea stretches out to the horizon and looks calm and grey today.", ("It covers most of the planet.", "Its tides follow the moon.")),
    ("a forest", "moss", "The forest is quiet now.", "The forest is quiet now, with tall trees standing close together in the shade.", ("Trees give shade and shelter.", "Birds nest in the branches.")),
    ("bread", "crust", "Fresh bread smells wonderful.", "Fresh bread smells wonderful when it comes out of a hot oven in the morning.", ("It needs flour and water.", "Yeast makes the dough rise.")),
    ("rain", "puddle", "Rain fell all afternoon.", "Rain fell all afternoon and the streets of the town turned dark and shiny.", ("It waters the fields.", "Clouds bring it from the sea.")),
    ("trains", "rails", "Trains leave the station hourly.", "Trains leave the station every hour and carry people to the towns along the coast.", ("They move many people at once.", "They run on fixed timetables.")),
    ("music", "rhythm", "Music lifts my mood.", "Music lifts my mood on slow days and makes long walks feel much shorter.", ("It can be played or sung.", "People share it at festivals.")),
    ("winter", "frost", "Winter days are short.", "Winter days are short and cold, and the sun sets long before the evening meal.", ("Snow may cover the ground.", "Many animals sleep through it.")),
    ("coffee", "bitter", "Coffee wakes me up.", "Coffee wakes me up in the morning and helps me start the working day calmly.", ("It is brewed from roasted beans.", "Many people drink it hot.")),
    ("mountains", "summit", "Mountains rise above the valley.", "Mountains rise high above the green valley and catch the first light of the day.", ("They are formed over ages.", "Their tops are often cold.")),
    ("a cat", "whiskers", "The cat sleeps by the fire.", "The cat sleeps by the warm fire all evening and wakes only when dinner is served.", ("Cats like warm places.", "They clean their fur often.")),
    ("the moon", "crater", "The moon is bright tonight.", "The moon is bright and full tonight and lights the whole garden in pale silver.", ("It circles the earth.", "Its phases repeat each month.")),
    ("a garden", "tulips", "The garden needs water.", "The garden needs water after a dry week, and the young plants are starting to droop.", ("It needs sun and care.", "Weeds must be pulled often.")),
    ("bicycles", "pedal", "Bicycles are cheap to run.", "Bicycles are cheap to run, quiet on the road and good for health over the years.", ("They need no fuel.", "They fit in small spaces.")),
    ("libraries", "shelves", "Libraries lend books for free.", "Libraries lend books for free and offer a quiet place to read and study all day.", ("They keep old records safe.", "Anyone can join one.")),
    ("tea", "kettle", "Tea is calming in the evening.", "Tea is calming in the evening, especially when it is made slowly and served warm.", ("It comes from dried leaves.", "It is popular around the world.")),
    ("the desert", "dunes", "The desert is hot by day.", "The desert is hot by day and surprisingly cold at night, with very little water anywhere.", ("Few plants grow there.", "It gets little rain each year.")),
)

_FORBIDDEN = "really"  # absent from every sentence above
_OPENER = "Honestly"
_MAX_WORDS = 6


def _lower_first(text: str) -> str:
    return text[0].lower() + text[1:]


def _with_keyword(short: str, keyword: str) -> str:
    return f"{short[:-1]}, with a hint of {keyword}."


def _pair(kind: str, topic: str, keyword: str, short: str, long: str, points: tuple[str, str]) -> dict[str, Any]:
    """(instruction, chosen, rejected, rubric item with its check) for one constraint kind."""
    if kind == "contains":
        instruction = f"Write one short sentence about {topic} that uses the word '{keyword}'."
        chosen, rejected = _with_keyword(short, keyword), short
        check = {"type": "contains", "text": keyword, "ignore_case": True}
        criterion = f"Uses the word '{keyword}'."
    elif kind == "not_contains":
        instruction = f"Write one short sentence about {topic} without the word '{_FORBIDDEN}'."
        chosen, rejected = short, f"{short[:-1]}, {_FORBIDDEN}."
        check = {"type": "not_contains", "text": _FORBIDDEN, "ignore_case": True}
        criterion = f"Does not use the word '{_FORBIDDEN}'."
    elif kind == "starts_with":
        instruction = f"Write one short sentence about {topic} that starts with the word '{_OPENER}'."
        chosen, rejected = f"{_OPENER}, {_lower_first(short)}", short
        check = {"type": "starts_with", "text": _OPENER}
        criterion = f"Starts with '{_OPENER}'."
    elif kind == "length":
        instruction = f"Describe {topic} in at most {_MAX_WORDS} words."
        chosen, rejected = short, long
        check = {"type": "length", "unit": "words", "max": _MAX_WORDS}
        criterion = f"At most {_MAX_WORDS} words."
    elif kind == "list":
        instruction = f"Give two facts about {topic} as a bulleted list."
        chosen, rejected = f"- {points[0]}\n- {points[1]}", f"{points[0]} {points[1]}"
        check = {"type": "list", "style": "bullet", "min_items": 2}
        criterion = "A bulleted list of at least two items."
    elif kind == "json":
        instruction = f'Describe {topic} as a JSON object with one key, "text".'
        chosen, rejected = json.dumps({"text": short}), f"text: {short}"
        check = {"type": "json"}
        criterion = "The whole response is valid JSON."
    else:  # pragma: no cover - the kinds are the fixed list below
        raise ValueError(kind)
    return {
        "instruction": instruction,
        "chosen": chosen,
        "rejected": rejected,
        "rubric": {"criterion": criterion, "points": 1, "tags": [f"rule:{kind}"], "check": check},
    }


KINDS = ("contains", "not_contains", "starts_with", "length", "list", "json")


def build_pairs() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(train rows, held-out rows)``: every (topic, kind), split by ``SEED``."""
    rows = []
    for t, (topic, keyword, short, long, points) in enumerate(_TOPICS):
        for kind in KINDS:
            p = _pair(kind, topic, keyword, short, long, points)
            rows.append(
                {
                    "pair_id": f"if-{t:02d}-{kind}",
                    "prompt": [{"role": "user", "content": p["instruction"]}],
                    "chosen": p["chosen"],
                    "rejected": p["rejected"],
                    "task": "instruction_following",
                    "rubrics": [p["rubric"]],
                }
            )
    order = list(range(len(rows)))
    random.Random(SEED).shuffle(order)
    heldout = sorted(order[:HELDOUT])
    train = sorted(order[HELDOUT:])
    return [rows[i] for i in train], [rows[i] for i in heldout]


def _text(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the shipped files instead of writing")
    parser.add_argument("--out-dir", default=str(_HERE), help="where to write (default: next to this script)")
    args = parser.parse_args(argv)
    train, heldout = build_pairs()
    out = Path(args.out_dir)
    for name, rows in ((TRAIN_FILE, train), (HELDOUT_FILE, heldout)):
        path = out / name
        text = _text(rows)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                print(f"{path}: differs from what make_pairs writes; rerun python -m rubricrl.data.builtin.make_pairs", file=sys.stderr)
                return 1
            continue
        write_jsonl(path, rows)  # the same text as _text(rows), written atomically
        print(f"wrote {len(rows)} pairs to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
